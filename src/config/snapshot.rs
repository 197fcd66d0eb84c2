/*!
The immutable value the proxy consults per request.

A [`Snapshot`] holds the rules of every source, each source's rules sorted most specific
first, plus the global settings. [`Snapshot::resolve`] picks, for one request target, the
YAML rule, the rc rule and the `.netrc` entry that apply; [`Resolved`] answers each
question (credentials, TLS, proxy, timeouts) from the most authoritative source that has
an answer: YAML, then rc files, then `.netrc`. Nothing here reads a file or allocates
much: everything was loaded when the snapshot was built.
*/

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::netrc::{Netrc, NetrcEntry};
pub use crate::config::yaml::AccessMode;
pub use crate::config::yaml::InterceptEntry;
use crate::config::{Diagnostic, Origin, Sourced};
use crate::failure::Timeouts;
use crate::rule::{CaSet, HandleCredential, Identity, ProxyChoice, Rule, UpstreamProxy, Value};
use crate::secret::Secret;
use crate::target::{Scheme, Target};

/// How long SIGTERM waits for requests in flight unless YAML `shutdown.drain` says.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(10);

/// Everything a request needs to know, built once per (re)load.
#[derive(Debug)]
pub struct Snapshot {
    pub timeouts: Timeouts,
    /// YAML `limits:` (client-side bounds: head deadline and size, connections, tunnels).
    pub limits: crate::limits::Limits,
    pub listen: Vec<SocketAddr>,
    /// YAML `admin.listen`: the admin listener's loopback address; `None`: off.
    pub admin: Option<SocketAddr>,
    /// YAML `sites`, most specific first (file order among equals).
    pub sites: Vec<Rule>,
    /// rc-file scopes, most specific first.
    pub rc: Vec<Rule>,
    /// The global `.netrc`: YAML `netrc`, else an unscoped rc `HTTP.NETRC`, else
    /// `$NETRC`, else `~/.netrc`. A scoped `HTTP.NETRC` lives in its rc rule instead.
    pub netrc: Option<Netrc>,
    /// The `.netrc` files scoped rc `HTTP.NETRC` lines name; a rule's `netrc` indexes this.
    pub scoped_netrcs: Vec<Arc<Netrc>>,
    /// YAML `netrc_default: true`: the `.netrc` `default` entry answers for hosts that
    /// no `machine` entry names. Off by default: that entry names no host.
    pub netrc_default: bool,
    pub upstream_proxy: Option<Arc<UpstreamProxy>>,
    /// Host names (exact) and suffixes (leading `.`) that bypass the upstream proxy.
    pub no_proxy: Vec<String>,
    pub max_hops: u8,
    /// Names of the query parameters the configuration adds (lowercase, not
    /// percent-encoded): their values are masked in log lines.
    pub secret_query_names: Vec<String>,
    /// YAML `log.level` (a tracing directive), applied at start.
    pub log_level: Option<String>,
    /// YAML `log.format: json`, applied at start.
    pub log_json: Option<bool>,
    /// YAML `shutdown.drain`: how long SIGTERM waits for requests in flight (default
    /// 10 s). Read at start.
    pub shutdown_drain: Duration,
    /// Every file the snapshot was built from.
    pub files: Vec<PathBuf>,
    /// Files that were looked for and may appear later (rc files, config, netrc).
    pub watch: Vec<PathBuf>,
    pub warnings: Vec<Diagnostic>,
    /// TLS files that did not load (`check` reports them as errors; the rules that
    /// need them answer 502 with the reason).
    pub unusable: Vec<TlsProblem>,
    /// rc keys netCDF-C reads that nothing here acts on, as written, with their origin.
    pub unsupported: Vec<Sourced<String>>,
    /// The cookie jar's file: YAML `cookie_jar`, else an unscoped rc `HTTP.COOKIEJAR`
    /// (`None`: the default under `$XDG_STATE_HOME/authproxy/`). Read at start.
    pub cookie_jar: Option<PathBuf>,
    /// Where an rc credential without a `[prefix]` was left unused (`explain` says why).
    pub unscoped_credentials_ignored: Option<Origin>,
    /// Who may use the daemon (YAML `access`), enforced by [`crate::access`].
    pub access: AccessSettings,
    /// YAML `intercept`: the https authorities whose TLS authproxy terminates, in file
    /// order (the first match is the one reported). Empty: every CONNECT is tunnelled.
    pub intercept: Vec<InterceptEntry>,
    /// Where the CA that signs intercepted hosts' certificates lives.
    pub intercept_ca: CaSetting,
}

/// YAML `access`, resolved at load: uids as numbers, the token read.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    pub mode: AccessMode,
    /// `self` is the daemon's own uid; user names were looked up at load.
    pub allow_uids: Vec<u32>,
    pub proxy_token: Option<Secret<String>>,
    pub proxy_token_file: Option<PathBuf>,
    /// The configuration file, so a refusal can say where to allow a user.
    pub config_file: Option<PathBuf>,
}

impl Default for AccessSettings {
    /// The daemon's own user only, no token.
    fn default() -> Self {
        AccessSettings {
            mode: AccessMode::Uid,
            allow_uids: vec![rustix::process::getuid().as_raw()],
            proxy_token: None,
            proxy_token_file: None,
            config_file: None,
        }
    }
}

/// The local CA for interception: YAML `intercept_ca: { cert, key }`, else generated on
/// first need in `dir` (`$XDG_DATA_HOME/authproxy/ca`, default
/// `~/.local/share/authproxy/ca`; `None` when neither is known).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSetting {
    Generated {
        dir: Option<PathBuf>,
        name_constraints: bool,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Default for CaSetting {
    fn default() -> Self {
        CaSetting::Generated {
            dir: None,
            name_constraints: false,
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            timeouts: Timeouts::default(),
            limits: crate::limits::Limits::default(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            admin: None,
            sites: Vec::new(),
            rc: Vec::new(),
            netrc: None,
            scoped_netrcs: Vec::new(),
            netrc_default: false,
            upstream_proxy: None,
            no_proxy: Vec::new(),
            max_hops: 10,
            secret_query_names: Vec::new(),
            log_level: None,
            log_json: None,
            shutdown_drain: DEFAULT_DRAIN,
            files: Vec::new(),
            watch: Vec::new(),
            warnings: Vec::new(),
            unusable: Vec::new(),
            unsupported: Vec::new(),
            unscoped_credentials_ignored: None,
            cookie_jar: None,
            access: AccessSettings::default(),
            intercept: Vec::new(),
            intercept_ca: CaSetting::default(),
        }
    }
}

/// TLS material of a rule that could not be loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    /// What failed, independent of where it is written: the option and the files it
    /// names. A reload compares these, so a line moving above a still-broken
    /// certificate is not a new problem.
    pub what: String,
    /// `file:line: option: cause`, never a secret.
    pub message: String,
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The current snapshot, swapped atomically on reload. A request loads it once and
/// finishes on the snapshot it started with.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn into_handle(self) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// The `intercept` entry that names this CONNECT target, if any: its TLS is then
    /// terminated here instead of tunnelled.
    pub fn intercepted(&self, target: &Target) -> Option<&InterceptEntry> {
        self.intercept.iter().find(|e| {
            e.pattern
                .matches_parts("https", &target.host, target.port, "/")
        })
    }

    /// The rules that apply to `target` (as the client asked for it).
    pub fn resolve(&self, target: &Target) -> Resolved<'_> {
        self.resolved(&self.select(target))
    }

    /// Which rules apply to `target`, as positions in this snapshot: the matching is done
    /// once per request hop, and [`Snapshot::resolved`] answers from it without matching
    /// again.
    pub fn select(&self, target: &Target) -> Selection {
        let site = self.sites.iter().position(|r| r.pattern.matches(target));
        let rc = self.rc.iter().position(|r| r.pattern.matches(target));
        // A scoped rc `HTTP.NETRC` answers for its scope alone; elsewhere the global one.
        let scoped = rc
            .and_then(|i| self.rc[i].netrc)
            .and_then(|i| self.scoped_netrcs.get(i))
            .map(|n| &**n);
        let netrc_file = scoped.or(self.netrc.as_ref());
        let netrc = netrc_file.and_then(|n| {
            let found = n.lookup(&target.host)?;
            n.entries
                .iter()
                .position(|e| std::ptr::eq(e, found))
                .filter(|&i| self.netrc_gives_credential(&n.entries[i]))
        });
        Selection {
            site,
            rc,
            netrc,
            netrc_scoped: scoped.is_some(),
        }
    }

    /// The rules of a [`Selection`] made on this snapshot.
    pub fn resolved(&self, sel: &Selection) -> Resolved<'_> {
        let rc = sel.rc.map(|i| &self.rc[i]);
        let netrc_file = if sel.netrc_scoped {
            rc.and_then(|r| r.netrc)
                .and_then(|i| self.scoped_netrcs.get(i))
                .map(|n| &**n)
        } else {
            self.netrc.as_ref()
        };
        Resolved {
            snapshot: self,
            site: sel.site.map(|i| &self.sites[i]),
            rc,
            netrc: sel
                .netrc
                .and_then(|i| netrc_file.and_then(|n| n.entries.get(i))),
        }
    }

    /// Whether the entry [`Netrc::lookup`] picked may be sent: only a complete entry
    /// (a partial one is never completed from a later entry or `default`), and a
    /// `default` entry only when `netrc_default` opts in.
    fn netrc_gives_credential(&self, e: &NetrcEntry) -> bool {
        e.is_complete() && (e.host.is_some() || self.netrc_default)
    }

    /// Sorts rules most specific first; equal rules keep their order (first wins).
    pub fn sort_rules(rules: &mut [Rule]) {
        rules.sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
    }

    fn bypasses_proxy(&self, host: &str) -> bool {
        self.no_proxy.iter().any(|p| {
            if p == "*" {
                true
            } else if let Some(suffix) = p.strip_prefix('.') {
                host.len() > suffix.len()
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    || host.eq_ignore_ascii_case(suffix)
            } else {
                host.eq_ignore_ascii_case(p)
            }
        })
    }
}

/// The rules that apply to one URL, as positions in the snapshot they were picked from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    site: Option<usize>,
    rc: Option<usize>,
    /// The `.netrc` entry, in the rc rule's scoped file or else the global one.
    netrc: Option<usize>,
    netrc_scoped: bool,
}

/// A Basic credential and where it came from.
#[derive(Clone, Copy, Debug)]
pub struct BasicRef<'a> {
    pub user: &'a str,
    pub password: &'a Secret<String>,
    pub origin: &'a Origin,
    /// `yaml`, `rc` or `netrc`.
    pub source: &'static str,
}

/// The rules for one request target.
#[derive(Clone, Copy, Debug)]
pub struct Resolved<'a> {
    pub snapshot: &'a Snapshot,
    pub site: Option<&'a Rule>,
    pub rc: Option<&'a Rule>,
    pub netrc: Option<&'a NetrcEntry>,
}

impl<'a> Resolved<'a> {
    fn rules(&self) -> impl Iterator<Item = &'a Rule> {
        self.site.into_iter().chain(self.rc)
    }

    fn first<T>(&self, f: impl Fn(&'a Rule) -> Option<T>) -> Option<T> {
        self.rules().find_map(f)
    }

    /// Whether the client's `http://` request goes upstream over https.
    pub fn upgrade(&self) -> bool {
        self.rules().any(|r| r.tls.upgrade)
    }

    /// The target as it goes upstream: `http` becomes `https` (port 80 becomes 443)
    /// when a rule says `tls.upgrade`.
    pub fn upstream_target(&self, target: &Target) -> Option<Target> {
        if target.scheme == Scheme::Http && self.upgrade() {
            let mut t = target.clone();
            t.scheme = Scheme::Https;
            if t.port == 80 {
                t.port = 443;
            }
            Some(t)
        } else {
            None
        }
    }

    pub fn bearer(&self) -> Option<&'a Value> {
        self.first(|r| r.bearer.as_ref())
    }

    /// The Basic credential sent with every request to this host: a YAML site's or a
    /// scoped rc line's. `.netrc` passwords and the other credentials kept for a 401
    /// challenge are not among these (see [`Resolved::challenge_basic`]).
    pub fn basic(&self) -> Option<BasicRef<'a>> {
        self.first(|r| {
            r.basic
                .as_ref()
                .filter(|b| !b.only_on_challenge)
                .map(|b| rule_basic(r, b))
        })
    }

    /// Whether a `.netrc` password may go to this host: over TLS, verified.
    pub fn netrc_allowed(&self, upstream_tls: bool) -> bool {
        upstream_tls && self.verify_peer() && self.verify_host()
    }

    /// The credential that answers the host's 401 Basic challenge, if `upstream` may have
    /// it, and never when a credential is sent preemptively:
    /// * the host's exact `.netrc` entry, over TLS whose certificate is verified (as
    ///   earthaccess does: a `.netrc` password goes only where it is asked for);
    /// * else an rc line without a `[prefix]` under `rc_unscoped_credentials: challenge`,
    ///   over TLS or to a loopback host.
    pub fn challenge_basic(&self, upstream: &Target) -> Option<BasicRef<'a>> {
        let tls = upstream.scheme == Scheme::Https;
        if self.basic().is_some() || self.handle().is_some() {
            return None;
        }
        // A YAML site's `basic: { preemptive: false }`: the user named the host.
        if let Some(site) = self.site {
            if let Some(b) = site.basic.as_ref().filter(|b| b.only_on_challenge) {
                return Some(rule_basic(site, b));
            }
        }
        if let Some(n) = self.netrc_basic().filter(|_| self.netrc_allowed(tls)) {
            return Some(n);
        }
        let rule = self.rc?;
        let b = rule.basic.as_ref().filter(|b| b.only_on_challenge)?;
        (tls || upstream.is_loopback()).then(|| rule_basic(rule, b))
    }

    /// The credential kept for a 401 challenge, whether or not this URL may have it (for
    /// `explain`).
    pub fn challenge_basic_any(&self) -> Option<BasicRef<'a>> {
        let rule = self.rc?;
        let b = rule.basic.as_ref().filter(|b| b.only_on_challenge)?;
        Some(rule_basic(rule, b))
    }

    /// The `.netrc` entry as a Basic credential, whatever the scheme. Only a complete
    /// entry (login and password) is one: [`Snapshot::resolve`] keeps no other.
    pub fn netrc_basic(&self) -> Option<BasicRef<'a>> {
        let e = self.netrc?;
        Some(BasicRef {
            user: e.login.as_deref()?,
            password: e.password.as_ref()?,
            origin: &e.origin,
            source: "netrc",
        })
    }

    /// The YAML site's Handle Server credential: when there is one, it alone decides
    /// the `Authorization` of this URL's requests.
    pub fn handle(&self) -> Option<&'a HandleCredential> {
        self.site.and_then(|r| r.handle.as_ref())
    }

    /// Whether this URL's redirects go to the client (YAML `redirects: pass`).
    pub fn pass_redirects(&self) -> bool {
        self.site.is_some_and(|r| r.pass_redirects)
    }

    pub fn headers(&self) -> &'a [(http::HeaderName, Value)] {
        self.site.map_or(&[], |r| &r.headers)
    }

    pub fn query(&self) -> &'a [(String, Value)] {
        self.site.map_or(&[], |r| &r.query)
    }

    /// The YAML site's `query_token`, if it has one.
    pub fn query_token(&self) -> Option<&'a Arc<crate::rule::QueryToken>> {
        self.site.and_then(|r| r.query_token.as_ref())
    }

    /// Why this request's TLS settings cannot be used, if they cannot: the first rule
    /// that says anything about the client certificate or CA decides.
    pub fn tls_unusable(&self) -> Option<&'a str> {
        self.rules()
            .find(|r| r.tls.unusable.is_some() || r.tls.identity.is_some() || r.tls.ca.is_some())
            .and_then(|r| r.tls.unusable.as_deref())
    }

    pub fn identity(&self) -> Option<&'a Arc<Identity>> {
        self.first(|r| r.tls.identity.as_ref())
    }

    pub fn ca(&self) -> Option<&'a Arc<CaSet>> {
        self.first(|r| r.tls.ca.as_ref())
    }

    pub fn verify_peer(&self) -> bool {
        self.first(|r| r.tls.verify_peer).unwrap_or(true)
    }

    pub fn verify_host(&self) -> bool {
        self.first(|r| r.tls.verify_host).unwrap_or(true)
    }

    /// The upstream proxy for `host`, if any: a rule's own choice, else the global one
    /// unless `no_proxy` exempts the host.
    pub fn proxy(&self, host: &str) -> Option<&'a Arc<UpstreamProxy>> {
        for rule in self.rules() {
            match &rule.proxy {
                ProxyChoice::Inherit => continue,
                ProxyChoice::Direct => return None,
                ProxyChoice::Via(p) if rule.is_site() => return Some(p),
                ProxyChoice::Via(p) => {
                    return (!self.snapshot.bypasses_proxy(host)).then_some(p);
                }
            }
        }
        self.snapshot
            .upstream_proxy
            .as_ref()
            .filter(|_| !self.snapshot.bypasses_proxy(host))
    }

    pub fn timeouts(&self) -> Timeouts {
        let d = self.snapshot.timeouts;
        Timeouts {
            connect: self.first(|r| r.connect_timeout).unwrap_or(d.connect),
            read: self.first(|r| r.read_timeout).unwrap_or(d.read),
        }
    }

    /// Hash of everything that makes a pooled upstream connection specific to this
    /// policy: client certificate, trusted CAs, verification, upstream proxy.
    pub fn pool_key(&self, proxy: Option<&UpstreamProxy>) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.identity().map(|i| i.fingerprint).hash(&mut h);
        self.ca().map(|c| c.fingerprint).hash(&mut h);
        self.verify_peer().hash(&mut h);
        self.verify_host().hash(&mut h);
        proxy.map(UpstreamProxy::fingerprint).hash(&mut h);
        h.finish()
    }

    /// The rule ids, for logs and `explain`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(r) = self.site {
            parts.push(format!("{} ({})", r.id, r.origin));
        }
        if let Some(r) = self.rc {
            parts.push(format!("rc {} ({})", r.id, r.origin));
        }
        if let Some(e) = self.netrc {
            parts.push(format!("netrc ({})", e.origin));
        }
        if parts.is_empty() {
            "no rule".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Effective timeouts as durations, for `explain`.
    pub fn timeout_pair(&self) -> (Duration, Duration) {
        let t = self.timeouts();
        (t.connect, t.read)
    }
}

fn rule_basic<'a>(rule: &'a Rule, b: &'a crate::rule::BasicCredential) -> BasicRef<'a> {
    BasicRef {
        user: &b.user,
        password: &b.password,
        origin: &b.origin,
        source: if rule.is_site() { "yaml" } else { "rc" },
    }
}
