/*!
Logging: tracing-subscriber to stderr (journald picks it up), plain text or JSON.

The level comes from `--log-level`, else `RUST_LOG`, else `info`. pingora's own log
records are capped at `warn` whatever the level: its debug output prints request
headers, and `Authorization`, `Proxy-Authorization` and `Cookie` values must never reach
a log line. Lines are written by a background thread so a slow terminal or journald
never stalls a request.
*/

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Log lines queued for the writer thread at most.
const LOG_QUEUE_LINES: usize = 4096;

/// Directives appended to every filter: third-party crates that may print headers.
const CAPS: &[&str] = &[
    "pingora=warn",
    "pingora_core=warn",
    "pingora_proxy=warn",
    "pingora_pool=warn",
    "rustls=warn",
    "hyper=warn",
];

/// Builds the filter: `level` (a tracing directive such as `debug` or
/// `authproxy=debug`) beats `RUST_LOG`; both lose to the caps above.
pub fn filter(level: Option<&str>) -> EnvFilter {
    let base = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let mut filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in CAPS {
        if let Ok(d) = cap.parse() {
            filter = filter.add_directive(d);
        }
    }
    filter
}

/// Installs the global subscriber. Keep the guard alive until exit: dropping it flushes.
pub fn init(level: Option<&str>, format: LogFormat) -> WorkerGuard {
    // A bounded queue: when the writer falls behind, requests wait for it rather
    // than the queue growing without limit (the default holds 128k lines).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    guard
}
