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
use authproxy::install;
use authproxy::lifecycle::{self, Pulse, Signals};
use authproxy::reload::Reloader;
use authproxy::session::{self, Jar, State};
use authproxy::telemetry::{self, LogFormat};
use authproxy::{Daemon, Tuning};

/// Exit status for a configuration that does not load (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

/// How long shutdown waits for servlets to answer their logouts.
const LOGOUT_LIMIT: Duration = Duration::from_secs(3);

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
    /// Install the daemon as a systemd service running this binary: write the unit,
    /// then `systemctl daemon-reload` and `enable --now` (when systemctl exists).
    Install(InstallArgs),
    /// Ask the running daemon's admin listener how it is doing, and say it in words.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
        /// The admin listener's address (default: the config's `admin.listen`).
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
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
#[command(group(clap::ArgGroup::new("scope").required(true).args(["user", "system"])))]
struct InstallArgs {
    /// A user service (`systemctl --user`), in $XDG_CONFIG_HOME/systemd/user/.
    #[arg(long)]
    user: bool,
    /// A system service (run as root), in /etc/systemd/system/.
    #[arg(long)]
    system: bool,
    /// Print the unit; write and start nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    config: ConfigArgs,
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
    /// How long SIGTERM waits for requests in flight (default: the config's
    /// `shutdown.drain`, else 10).
    #[arg(long, value_name = "SECONDS")]
    drain_seconds: Option<u64>,
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
        Command::Install(args) => install(args),
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
        Command::Status { config, admin } => status(config, admin),
    }
}

/// `authproxy status`: the admin listener's report, or why there is none.
fn status(config: ConfigArgs, admin: Option<SocketAddr>) -> ExitCode {
    let addr = match admin {
        Some(a) => a,
        None => match load::load(&Environment::from_process(config.config)) {
            Ok(snapshot) => match snapshot.admin {
                Some(a) => a,
                None => {
                    eprintln!(
                        "authproxy status: the admin listener is off: the configuration has no \
                         `admin: {{ listen: \"{}\" }}`; add it and restart the daemon, or pass \
                         --admin ADDR",
                        authproxy::admin::DEFAULT_ADDR
                    );
                    return ExitCode::FAILURE;
                }
            },
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("authproxy: {e}");
                }
                eprintln!(
                    "authproxy status: the configuration does not load (run `authproxy check`), \
                     so the admin address is unknown; pass --admin ADDR"
                );
                return ExitCode::FAILURE;
            }
        },
    };
    match authproxy::status::report(addr) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("authproxy status: {e}");
            ExitCode::FAILURE
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
    // Sockets systemd bound for us (socket activation) replace `listen`.
    let inherited = lifecycle::inherited_listeners().context("socket activation")?;
    let drain = args
        .drain_seconds
        .map_or(snapshot.shutdown_drain, Duration::from_secs);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(tuning.threads)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let code = runtime.block_on(async move {
        // Caught before anything can be connected to: a SIGHUP (reload) that arrives
        // once the port answers must not kill the daemon.
        let signals = Signals::install().context("catching signals")?;
        let listeners = listeners(&listen, inherited).await?;
        let rules = snapshot.sites.len() + snapshot.rc.len();
        tracing::info!(rules, files = snapshot.files.len(), "configuration loaded");
        let jar = open_jar(&snapshot);
        let admin = snapshot.admin;
        let snapshots = snapshot.into_handle();
        let state = Arc::new(State::with_jar(jar.clone()));
        if let Some(addr) = admin {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            tracing::info!(%addr, "admin listening: /healthz, /metrics");
            tokio::spawn(authproxy::admin::serve(l, state.clone()));
        }
        // The watchdog vouches for every accept loop and the reloader (lifecycle.rs).
        let watchdog = lifecycle::watchdog_timeout();
        let pulse = Pulse::new(watchdog);
        let hearts = listeners
            .iter()
            .map(|l| match l.local_addr() {
                Ok(a) => pulse.heart(format!("accept loop on {a}")),
                Err(_) => pulse.heart("accept loop"),
            })
            .collect();
        let reloader = Reloader::start_watched(
            env,
            snapshots.clone(),
            Some(state.clone()),
            pulse.heart("configuration reloader"),
        );
        let current = snapshots.clone();
        let daemon = Daemon::with_state(snapshots, state.clone(), &tuning);
        let (stop_tx, stop_rx) = watch::channel(false);
        // The jar writer stops after the drain: responses still streaming set cookies.
        let (flush_tx, flush_rx) = watch::channel(false);
        let writer = session::spawn_writer(jar, flush_rx);

        tokio::spawn(async move {
            let signal = signals.stop(|| reloader.trigger()).await;
            lifecycle::notify_stopping();
            tracing::info!(
                "{signal}: shutting down; waiting up to {drain:?} for requests in flight"
            );
            let _ = stop_tx.send(true);
        });
        lifecycle::notify_ready();
        if let Some(timeout) = watchdog {
            lifecycle::spawn_watchdog(pulse, timeout, stop_rx.clone());
        }
        daemon.run_watched(listeners, hearts, stop_rx, drain).await;
        // Servlet sessions end with a logout (bounded): after the drain (no request
        // still needs a session), before the jar's last save (a logout's Set-Cookie
        // clears the session cookie).
        state.logout_all(&current.load_full(), LOGOUT_LIMIT).await;

        // The writer saves the jar once more as it stops.
        let _ = flush_tx.send(true);
        let _ = writer.await;
        tracing::info!("stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    });
    // Tasks still running (connections past the drain, a blocking save) must not hold
    // the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// The sockets systemd passed (socket activation), else `listen` bound here.
async fn listeners(
    listen: &[SocketAddr],
    inherited: Vec<std::net::TcpListener>,
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut listeners = Vec::new();
    if inherited.is_empty() {
        for addr in listen {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "listening");
            listeners.push(l);
        }
        return Ok(listeners);
    }
    let not_bound = listen.iter().map(ToString::to_string).collect::<Vec<_>>();
    for l in inherited {
        let l = tokio::net::TcpListener::from_std(l).context("socket activation")?;
        match l.local_addr() {
            Ok(addr) => tracing::info!(
                %addr,
                "listening on a socket from the service manager (LISTEN_FDS); \
                 `listen` ({}) is not bound",
                not_bound.join(", ")
            ),
            Err(e) => tracing::warn!(error = %e, "an inherited socket has no address"),
        }
        listeners.push(l);
    }
    Ok(listeners)
}

/// `authproxy install`: see `authproxy::install`.
fn install(args: InstallArgs) -> ExitCode {
    let scope = if args.system {
        install::Scope::System
    } else {
        install::Scope::User
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("authproxy: cannot tell where this binary is: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Environment::from_process(args.config.config);
    let proxy = load::load(&env)
        .ok()
        .and_then(|s| s.listen.first().copied())
        .map_or("127.0.0.1:3128".to_owned(), |a| a.to_string());
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let job = install::Install {
        scope,
        exe,
        xdg_config_home: var("XDG_CONFIG_HOME"),
        home: var("HOME"),
        proxy,
    };
    if args.dry_run {
        print!("{}", job.unit());
        return ExitCode::SUCCESS;
    }
    match job.run() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(text) => {
            eprintln!("authproxy: {text}");
            ExitCode::FAILURE
        }
    }
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
