/*!
The daemon's counters, gauges and histograms, served as Prometheus text by the admin
listener's `/metrics` (see [`crate::admin`]).

One [`Metrics`] lives in [`crate::session::State`], so it outlives configuration
snapshots: a reload does not reset a count. The request path only touches atomics: a
request's counter is found by indexing a fixed table (method × status class) and
created in the registry on first use; failures, logins and reloads are rare enough to
look their label set up. Histograms take one uncontended lock per observation.

Labels never carry what a client sent beyond a fixed vocabulary: the method is one of
[`METHODS`] or `other`, the status a class (`2xx`), a failure its `X-Authproxy-Error`
code, a login's site the rule's id from the configuration (`name:` or `sites[N]`, or
`rc`/`netrc`/`none`), never a URL, a query or a user name.
*/

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::config::snapshot::Resolved;

/// The `Content-Type` of `/metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The methods counted by name; any other is `other` (a client may send any token).
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Status classes; `none` is a request that ended before a response was written.
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// How a login ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// The login came back to the data.
    Ok,
    /// The login host refused the credential (`login_refused`).
    Refused,
    /// The login needs a person at a browser (`login_needs_browser`).
    NeedsBrowser,
    /// Anything else: a failure on the way, or the request ended mid-login.
    Failed,
}

impl LoginOutcome {
    /// The outcome of a login that did not come back, from the failure answered.
    pub fn from_code(code: Option<&str>) -> LoginOutcome {
        match code {
            Some("login_refused") => LoginOutcome::Refused,
            Some("login_needs_browser") => LoginOutcome::NeedsBrowser,
            _ => LoginOutcome::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            LoginOutcome::Ok => "ok",
            LoginOutcome::Refused => "refused",
            LoginOutcome::NeedsBrowser => "needs_browser",
            LoginOutcome::Failed => "failed",
        }
    }
}

/// How a configuration reload ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new snapshot serves.
    Ok,
    /// It built, but was refused (TLS files that loaded before do not now).
    Rejected,
    /// It did not build (errors with file:line in the log).
    Failed,
}

impl ReloadOutcome {
    fn label(self) -> &'static str {
        match self {
            ReloadOutcome::Ok => "ok",
            ReloadOutcome::Rejected => "rejected",
            ReloadOutcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    site: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Counters for one method: one per status class, made on first use.
type ClassRow = [OnceLock<Counter>; CLASSES.len()];

/// Every metric of one daemon. Cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    draining: AtomicBool,
    requests: Family<RequestLabels, Counter>,
    /// Handles into `requests`, indexed by method (then `other`) and status class.
    request_table: [ClassRow; METHODS.len() + 1],
    failures: Family<CodeLabels, Counter>,
    logins: Family<LoginLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    connect: Histogram,
    first_byte: Histogram,
    cookies: Gauge,
    connections: Gauge,
    tunnels: Gauge,
    uptime: Gauge<f64, AtomicU64>,
    draining_gauge: Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("authproxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let failures = Family::<CodeLabels, Counter>::default();
        let logins = Family::<LoginLabels, Counter>::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        // 0.5 ms to 12 s: loopback connects to a slow TLS handshake.
        let connect = Histogram::new(exponential_buckets(0.0005, 2.5, 12));
        // 1 ms to 60 s: `timeouts.first_byte` defaults to 60 s.
        let first_byte = Histogram::new(exponential_buckets(0.001, 2.5, 13));
        let cookies = Gauge::default();
        let connections = Gauge::default();
        let tunnels = Gauge::default();
        let uptime = Gauge::<f64, AtomicU64>::default();
        let draining_gauge = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by method and status class",
            requests.clone(),
        );
        registry.register(
            "failures",
            "Failures answered by authproxy, by X-Authproxy-Error code",
            failures.clone(),
        );
        registry.register(
            "logins",
            "Logins run, by the login host's rule and how they ended",
            logins.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to open a new upstream connection for a proxied request (TCP, TLS, upstream-proxy CONNECT; not tunnels)",
            connect.clone(),
        );
        registry.register(
            "upstream_first_byte_seconds",
            "Time from a request's first upstream connection to its first response header",
            first_byte.clone(),
        );
        registry.register(
            "reloads",
            "Configuration reloads, by outcome",
            reloads.clone(),
        );
        registry.register("jar_cookies", "Cookies in the jar", cookies.clone());
        registry.register(
            "client_connections",
            "Open client connections (tunnels included)",
            connections.clone(),
        );
        registry.register("tunnels", "Open CONNECT tunnels", tunnels.clone());
        registry.register(
            "uptime_seconds",
            "Seconds since the daemon started",
            uptime.clone(),
        );
        registry.register(
            "draining",
            "1 while the daemon drains requests in flight before it stops",
            draining_gauge.clone(),
        );
        Metrics {
            registry,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            requests,
            request_table: Default::default(),
            failures,
            logins,
            reloads,
            connect,
            first_byte,
            cookies,
            connections,
            tunnels,
            uptime,
            draining_gauge,
        }
    }

    /// Counts one answered request: `status` 0 when no response was written; `code`, the
    /// `X-Authproxy-Error` code, when authproxy answered a failure.
    pub fn request(&self, method: &str, status: u16, code: Option<&'static str>) {
        let m = METHODS
            .iter()
            .position(|k| *k == method)
            .unwrap_or(METHODS.len());
        let c = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.request_table[m][c]
            .get_or_init(|| {
                let labels = RequestLabels {
                    method: METHODS.get(m).copied().unwrap_or("other"),
                    status: CLASSES[c],
                };
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
        if let Some(code) = code {
            self.failures.get_or_create(&CodeLabels { code }).inc();
        }
    }

    /// Counts a login that ended, at the site named by [`site_label`].
    pub fn login(&self, site: &str, outcome: LoginOutcome) {
        let labels = LoginLabels {
            site: site.to_owned(),
            outcome: outcome.label(),
        };
        self.logins.get_or_create(&labels).inc();
    }

    pub fn reload(&self, outcome: ReloadOutcome) {
        let labels = OutcomeLabels {
            outcome: outcome.label(),
        };
        self.reloads.get_or_create(&labels).inc();
    }

    /// A new upstream connection took `took` to open.
    pub fn upstream_connected(&self, took: Duration) {
        self.connect.observe(took.as_secs_f64());
    }

    /// A request's first upstream response header came `took` after its connection.
    pub fn first_byte(&self, took: Duration) {
        self.first_byte.observe(took.as_secs_f64());
    }

    /// Counts an open client connection until the guard drops.
    pub fn client_connection(&self) -> Open<'_> {
        Open::new(&self.connections)
    }

    /// Counts an open tunnel until the guard drops.
    pub fn tunnel(&self) -> Open<'_> {
        Open::new(&self.tunnels)
    }

    /// The daemon has begun to stop: `/healthz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.draining_gauge.set(1);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The Prometheus text of every metric, with the jar's cookie count and the uptime
    /// taken now.
    pub fn render(&self, cookies: usize) -> String {
        self.cookies.set(i64::try_from(cookies).unwrap_or(i64::MAX));
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Holds one count of an open-things gauge (connections, tunnels).
#[must_use = "the count drops with the guard"]
pub struct Open<'a>(&'a Gauge);

impl<'a> Open<'a> {
    fn new(gauge: &'a Gauge) -> Open<'a> {
        gauge.inc();
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The `site` label of a login: the YAML rule's id (its `name:`, else `sites[N]`), else
/// `rc` or `netrc` for the source that answers for the host, else `none`. An rc rule's
/// id is its scope, which may be a URL with a path: it is never a label.
pub fn site_label(rules: &Resolved<'_>) -> String {
    if let Some(site) = rules.site {
        site.id.clone()
    } else if rules.rc.is_some() {
        "rc".to_owned()
    } else if rules.netrc.is_some() {
        "netrc".to_owned()
    } else {
        "none".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_class_and_failures_by_code() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.request("GET", 200, None);
        }
        m.request("POST", 404, None);
        m.request("BREW", 502, Some("connect_refused"));
        m.request("GET", 0, None);
        let text = m.render(2);
        for line in [
            "authproxy_requests_total{method=\"GET\",status=\"2xx\"} 3\n",
            "authproxy_requests_total{method=\"POST\",status=\"4xx\"} 1\n",
            "authproxy_requests_total{method=\"other\",status=\"5xx\"} 1\n",
            "authproxy_requests_total{method=\"GET\",status=\"none\"} 1\n",
            "authproxy_failures_total{code=\"connect_refused\"} 1\n",
            "authproxy_jar_cookies 2\n",
            "authproxy_draining 0\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        assert!(!text.contains("BREW"), "{text}");
    }

    #[test]
    fn gauges_follow_their_guards_and_draining_is_sticky() {
        let m = Metrics::new();
        let a = m.client_connection();
        let b = m.client_connection();
        let t = m.tunnel();
        assert!(m.render(0).contains("authproxy_client_connections 2\n"));
        assert!(m.render(0).contains("authproxy_tunnels 1\n"));
        drop((a, b, t));
        let text = m.render(0);
        assert!(text.contains("authproxy_client_connections 0\n"), "{text}");
        assert!(text.contains("authproxy_tunnels 0\n"), "{text}");
        assert!(!m.is_draining());
        m.set_draining();
        assert!(m.is_draining());
        assert!(m.render(0).contains("authproxy_draining 1\n"));
    }

    #[test]
    fn logins_reloads_and_latencies() {
        let m = Metrics::new();
        m.login("edl", LoginOutcome::Ok);
        m.login("edl", LoginOutcome::from_code(Some("login_refused")));
        m.reload(ReloadOutcome::Ok);
        m.reload(ReloadOutcome::Failed);
        m.upstream_connected(Duration::from_millis(2));
        m.first_byte(Duration::from_millis(20));
        let text = m.render(0);
        for line in [
            "authproxy_logins_total{site=\"edl\",outcome=\"ok\"} 1\n",
            "authproxy_logins_total{site=\"edl\",outcome=\"refused\"} 1\n",
            "authproxy_reloads_total{outcome=\"ok\"} 1\n",
            "authproxy_reloads_total{outcome=\"failed\"} 1\n",
            "authproxy_upstream_connect_seconds_count 1\n",
            "authproxy_upstream_first_byte_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
    }
}
