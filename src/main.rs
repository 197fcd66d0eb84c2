//! The `authproxy` command line: a thin layer over the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use authproxy::config::Snapshot;
use authproxy::telemetry::{self, LogFormat};
use authproxy::{Daemon, Tuning};

/// A local authenticating forward proxy for tools that cannot log in by themselves.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; repeat for several.
    #[arg(long = "listen", value_name = "ADDR", default_value = "127.0.0.1:3128")]
    listen: Vec<SocketAddr>,
    /// Log level or tracing directive (overrides RUST_LOG), e.g. `debug`.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// How long SIGTERM waits for requests in flight.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    drain_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("authproxy: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let _log = telemetry::init(args.log_level.as_deref(), args.log_format);
    let mut tuning = Tuning::default();
    if let Some(n) = args.threads {
        tuning.threads = n.max(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tuning.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for addr in &args.listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "listening");
            listeners.push(l);
        }
        let snapshots = Snapshot::default().into_handle();
        let daemon = Daemon::new(snapshots, &tuning);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        daemon
            .run(listeners, stop_rx, Duration::from_secs(args.drain_seconds))
            .await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
