/*!
Logging: tracing-subscriber to stderr (journald picks it up), plain text or JSON.

The level comes from `--log-level`, else `RUST_LOG`, else the config's `log.level`, else
`info`. pingora's and the other network crates' log records are capped at `warn` whatever
the level, by a filter of their own that no directive can override: pingora's debug
output prints request headers, and `Authorization`, `Proxy-Authorization` and `Cookie`
values must never reach a log line. Lines are written by a background thread so a slow terminal or journald
never stalls a request.
*/

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
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

/// Third-party crates capped at `warn` whatever the level asked for. Targets match by
/// prefix, so `pingora` covers `pingora_core`, `pingora_proxy` and every other
/// `pingora_*` crate, and `hyper` covers `hyper_util`. pingora's and hyper's debug
/// output prints request and response headers; rustls and h2 describe handshakes and
/// frames; mio, notify and tokio_util log every socket and file event at trace. Records
/// of the `log` crate arrive through tracing-log with their module path as target, so
/// the same caps hold for them.
pub const CAPPED: &[&str] = &[
    "pingora",
    "rustls",
    "hyper",
    "h2",
    "want",
    "mio",
    "notify",
    "tokio_util",
    "inotify",
];

/// The caps as a filter of their own. It is combined with the user's filter (both must
/// let an event through, [`FilterExt::and`]), so no directive in `RUST_LOG`, `--log-level` or `log.level`,
/// however specific, can lift them.
pub fn caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED.iter().map(|t| (*t, LevelFilter::WARN)))
}

/// The user's filter: `level` (a tracing directive such as `debug` or `authproxy=debug`)
/// beats `RUST_LOG`, else `info`. An invalid directive falls back to `info`. The caps
/// apply on top of it (see [`caps`]).
pub fn filter(level: Option<&str>) -> EnvFilter {
    let base = level
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The subscriber: the user's filter and the caps, then `format` lines to `writer`.
pub fn subscriber<W>(
    level: Option<&str>,
    format: LogFormat,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = match format {
        LogFormat::Plain => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    // One filter, both halves must agree; its level hint is the lower of the two, so
    // `log` records below the user's level are not even built.
    tracing_subscriber::registry().with(lines.with_filter(filter(level).and(caps())))
}

/// Installs the global subscriber (and the `log` crate bridge). Keep the guard alive
/// until exit: dropping it flushes.
pub fn init(level: Option<&str>, format: LogFormat) -> WorkerGuard {
    // A bounded queue: when the writer falls behind, requests wait for it rather
    // than the queue growing without limit (the default holds 128k lines).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .finish(std::io::stderr());
    let _ = subscriber(level, format, writer).try_init();
    guard
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Lines written by the subscriber, for assertions.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Capture {
        type Writer = Capture;
        fn make_writer(&'w self) -> Capture {
            self.clone()
        }
    }

    /// One event per target at each level; what came out, one line per event.
    fn emitted(level: &str) -> String {
        let out = Capture::default();
        let sub = subscriber(Some(level), LogFormat::Plain, out.clone());
        tracing::subscriber::with_default(sub, || {
            macro_rules! all_levels {
                ($target:literal) => {
                    tracing::trace!(target: $target, "trace-line");
                    tracing::debug!(target: $target, "debug-line");
                    tracing::info!(target: $target, "info-line");
                    tracing::warn!(target: $target, "warn-line");
                };
            }
            all_levels!("authproxy::access");
            all_levels!("pingora_proxy::proxy_h1");
            all_levels!("pingora_core::connectors");
            all_levels!("pingora");
            all_levels!("rustls::client::hs");
            all_levels!("hyper_util::client");
            all_levels!("h2::codec");
            all_levels!("mio::poll");
            all_levels!("notify::inotify");
            all_levels!("tokio_util::codec");
            all_levels!("other_crate");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn has(log: &str, target: &str, message: &str) -> bool {
        log.lines()
            .any(|l| l.contains(&format!(" {target}: {message}")))
    }

    #[test]
    fn caps_hold_against_any_directive() {
        for level in [
            "trace",
            "pingora_proxy::proxy_h1=debug",
            "trace,pingora_proxy::proxy_h1=trace,pingora_core=trace,pingora=trace,\
             rustls=trace,hyper_util=trace,h2=trace,mio=trace,notify=trace,tokio_util=trace",
            "pingora_proxy::proxy_h1[{x}]=trace,trace",
        ] {
            let log = emitted(level);
            for target in [
                "pingora_proxy::proxy_h1",
                "pingora_core::connectors",
                "pingora",
                "rustls::client::hs",
                "hyper_util::client",
                "h2::codec",
                "mio::poll",
                "notify::inotify",
                "tokio_util::codec",
            ] {
                for quiet in ["trace-line", "debug-line", "info-line"] {
                    assert!(
                        !has(&log, target, quiet),
                        "{level}: {target} {quiet}:\n{log}"
                    );
                }
                // Warnings still get through wherever the user's filter lets them.
                if level != "pingora_proxy::proxy_h1=debug" || target == "pingora_proxy::proxy_h1" {
                    assert!(has(&log, target, "warn-line"), "{level}: {target}:\n{log}");
                }
            }
        }
    }

    #[test]
    fn the_level_hint_is_the_users() {
        // The hint sets the `log` crate's max level: pingora's and mio's debug and trace
        // records are not built at all at `info`.
        use tracing::Subscriber;
        let hint =
            |level| subscriber(Some(level), LogFormat::Plain, Capture::default()).max_level_hint();
        assert_eq!(hint("info"), Some(LevelFilter::INFO));
        assert_eq!(hint("warn,authproxy=debug"), Some(LevelFilter::DEBUG));
        assert_eq!(hint("trace"), Some(LevelFilter::TRACE));
    }

    #[test]
    fn the_users_level_still_applies() {
        let log = emitted("trace");
        assert!(has(&log, "authproxy::access", "trace-line"), "{log}");
        assert!(has(&log, "other_crate", "trace-line"), "{log}");
        let log = emitted("warn,authproxy=debug");
        assert!(has(&log, "authproxy::access", "debug-line"), "{log}");
        assert!(!has(&log, "authproxy::access", "trace-line"), "{log}");
        assert!(!has(&log, "other_crate", "info-line"), "{log}");
        assert!(has(&log, "other_crate", "warn-line"), "{log}");
        // A directive that does not parse means `info`.
        let log = emitted("=[");
        assert!(has(&log, "authproxy::access", "info-line"), "{log}");
        assert!(!has(&log, "authproxy::access", "debug-line"), "{log}");
    }
}
