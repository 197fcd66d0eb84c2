//! The `authproxy` command line: a thin layer over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use authproxy::config::load::{self, Environment};
use authproxy::explain;
use authproxy::reload::Reloader;
use authproxy::session::{self, Jar, State};
use authproxy::telemetry::{self, LogFormat};
use authproxy::{Daemon, Tuning};

/// Exit status for a configuration that does not load (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

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
    /// Load the configuration, print every rule with its source (secrets redacted) and
    /// every warning; exit 1 on any error.
    Check(ConfigArgs),
    /// Show what would happen to a URL: rule, credentials (redacted), TLS, upstream proxy.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// The URL a client would request.
        url: String,
    },
    /// Print the path of the local CA certificate (PEM) that https interception signs
    /// with, creating the CA if needed: the file clients must trust.
    Ca {
        #[command(flatten)]
        config: ConfigArgs,
        /// Write the system's trusted roots plus the CA into one PEM file and print its
        /// path instead (for tools that take a single CA file).
        #[arg(long)]
        bundle: bool,
    },
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// YAML config file (default: $AUTHPROXY_CONFIG, then
    /// $XDG_CONFIG_HOME/authproxy/config.yaml, then /etc/authproxy/config.yaml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to listen on; repeat for several (default: the config's `listen`,
    /// else 127.0.0.1:3128).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Log level or tracing directive (overrides RUST_LOG), e.g. `debug`.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log line format (default: the config's `log.format`, else plain).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
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
            Ok(code) => code,
            Err(e) => {
                eprintln!("authproxy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check(args) => {
            let env = Environment::from_process(args.config);
            let (text, ok) = explain::check(&env);
            print!("{text}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Ca { config, bundle } => ca(config.config, bundle),
        Command::Explain { config, url } => {
            let env = Environment::from_process(config.config);
            match explain::explain(&env, &url) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("authproxy: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `authproxy ca [--bundle]`: the path first on stdout, notes on stderr.
fn ca(config: Option<PathBuf>, bundle: bool) -> ExitCode {
    use authproxy::intercept::ca;
    let env = Environment::from_process(config);
    let snapshot = match load::load(&env) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("authproxy: the configuration has errors; run `authproxy check` for details");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let loaded = ca::load_or_create(&snapshot.intercept_ca, &snapshot.intercept);
    let ca = match loaded {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("authproxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !bundle {
        println!("{}", ca.cert_path.display());
        return ExitCode::SUCCESS;
    }
    let Some(dir) = load::default_ca_dir(&env) else {
        eprintln!("authproxy: {}", ca::CaError::NoDir);
        return ExitCode::FAILURE;
    };
    match ca::write_bundle(&ca, &dir) {
        Ok((path, roots)) => {
            println!("{}", path.display());
            eprintln!("{roots} system roots and the authproxy CA");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let env = Environment::from_process(args.config.config.clone());
    // Load first: the config may set the log level and format. Flags and RUST_LOG win.
    let loaded = load::load(&env);
    let yaml_log = loaded.as_ref().ok();
    let level = args.log_level.clone().or_else(|| {
        std::env::var("RUST_LOG")
            .ok()
            .or_else(|| yaml_log.and_then(|s| s.log_level.clone()))
    });
    let format = args
        .log_format
        .unwrap_or(match yaml_log.and_then(|s| s.log_json) {
            Some(true) => LogFormat::Json,
            _ => LogFormat::Plain,
        });
    let _log = telemetry::init(level.as_deref(), format);
    let snapshot = match loaded {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!("{e}");
            }
            tracing::error!("the configuration has errors; run `authproxy check` for details");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for w in &snapshot.warnings {
        tracing::warn!("{w}");
    }
    for e in &snapshot.unusable {
        tracing::error!("{e}; https requests for this host get 502 until it is fixed");
    }
    let listen = if args.listen.is_empty() {
        snapshot.listen.clone()
    } else {
        args.listen.clone()
    };
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
        for addr in &listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "listening");
            listeners.push(l);
        }
        let rules = snapshot.sites.len() + snapshot.rc.len();
        tracing::info!(rules, files = snapshot.files.len(), "configuration loaded");
        let jar = open_jar(&snapshot);
        let snapshots = snapshot.into_handle();
        let state = Arc::new(State::with_jar(jar.clone()));
        let reloader = Reloader::start_with_state(env, snapshots.clone(), Some(state.clone()));
        let daemon = Daemon::with_state(snapshots, state, &tuning);
        let (stop_tx, stop_rx) = watch::channel(false);
        let writer = session::spawn_writer(jar, stop_rx.clone());
        tokio::spawn(async move {
            signals(&reloader).await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        });
        daemon
            .run(listeners, stop_rx, Duration::from_secs(args.drain_seconds))
            .await;
        // The writer saves the jar once more at shutdown.
        let _ = writer.await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// The cookie jar: the configured file, else the default under `$XDG_STATE_HOME`, else
/// (no HOME) in memory. Problems with the file are logged, never fatal.
fn open_jar(snapshot: &authproxy::config::Snapshot) -> Arc<Jar> {
    let path = snapshot.cookie_jar.clone().or_else(|| {
        session::default_path(
            std::env::var_os("XDG_STATE_HOME").as_deref(),
            std::env::var_os("HOME")
                .as_deref()
                .map(std::path::Path::new),
        )
    });
    let Some(path) = path else {
        tracing::warn!("no HOME: the cookie jar is kept in memory only");
        return Arc::new(Jar::new());
    };
    let (jar, problems) = Jar::open(&path);
    for p in &problems {
        tracing::warn!("{p}");
    }
    tracing::info!(path = %path.display(), cookies = jar.len(), "cookie jar");
    Arc::new(jar)
}

/// Returns on SIGTERM or SIGINT; SIGHUP reloads the configuration.
async fn signals(reloader: &Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                reloader.trigger();
            }
        }
    }
}
