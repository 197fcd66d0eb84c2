/*!
netCDF-C rc files (`.daprc`, `.dodsrc`, `.ncrc`) read as a configuration source.

Many users of the tools this proxy fronts already keep their credentials, client
certificates and CA bundles in the rc files netCDF-C reads to configure libcurl per host.
This module reads those files exactly enough to reuse them, without linking netCDF-C and
without reading the process environment (everything comes in through [`RcEnv`]):

* [`candidate_paths`] / [`discover`] decide which files are read, highest precedence first;
* [`parse_bytes`] / [`parse_file`] turn one file into [`RcLine`]s and [`Diagnostic`]s and never
  fail on content (the parser is fuzzed: no input panics);
* [`resolve_in`] (or [`resolve`], without a home directory) merges all files into one
  [`RcRule`] per distinct scope, each already holding everything it inherits, and [`select`]
  picks the single rule for a request.

Decisions worth knowing (each is documented where it is implemented):

* **Which files.** `NCRCENV_IGNORE` (set, any value) reads nothing; otherwise `NCRCENV_RC`
  (netCDF-C ≥ 4.9), else `DAPRCFILE` (the older, documented name) names the only file.
  Otherwise `.daprc`, `.dodsrc`, `.ncrc` in the working directory, then the same names in
  `$NCRCENV_HOME` (else `$HOME`). Precedence is the order listed, which is *not* netCDF-C's
  load order (4.9 lets `.dodsrc` override `.daprc`); it follows the documented wording.
* **Lines.** `KEY=VALUE`, `[host]KEY=VALUE`, `[host:port]KEY=VALUE` and
  `[scheme://host[:port][/path]]KEY=VALUE`. Split at the first `=`, blanks around key and value
  are trimmed (as netCDF-C 4.9.0 does). A line that is not valid UTF-8 is **skipped with a
  warning** (not read lossily: a lossily decoded password would be silently wrong). Comment
  lines and blank lines are skipped before the UTF-8 check. A BOM is skipped with a warning.
  libdap's own keys (`USE_CACHE`, `PROXY_SERVER`, …) are named once per file and dropped;
  obsolete `CURL.*` keys are dropped with a warning each.
* **Path scopes and DAP.** `[http://h/d/ds]` matches `/d/ds`, what is below it, and the DAP
  requests for the dataset (`/d/ds.dds`, `.das`, `.dods`, `.dmr`, `.dap`, … with any `?…`
  constraint): see [`DAP_SUFFIXES`].
* **netCDF-C 4.9 compatibility notes.** Where netCDF-C 4.9 reads a file differently from
  authproxy (which follows the documented semantics of seed 002), a warning starting
  "netCDF-C 4.9" says how: `[host]` and `[host:port]` prefixes (4.9 skips them), a path-less
  `[scheme://host:port]` or `[scheme://host:port/]` prefix (4.9 drops it and the rest of the
  file),
  `HTTP.CREDENTIALS.USERNAME` (4.9 reads `USER`), `DAPRCFILE` (4.9 ignores it), `.daprc` and
  `.dodsrc` of one directory disagreeing (4.9.0 uses `.dodsrc`), `USERPASSWORD` disagreeing
  with `USERNAME`/`PASSWORD` (4.9.0, not reading `USERNAME`, uses `USERPASSWORD`; with `USER`
  it agrees with authproxy), leading blanks (4.9.2 and later), `~/` in paths, a BOM. All but
  the leading blanks and `~/` were measured with ncdump 4.9.0 against a loopback DAP2 server.
* **Values are never echoed.** Warnings and errors name the file, line and key, never a value
  nor a `[prefix]` (a URL prefix may carry `user:password@`). [`RcLine`]'s `Debug` hides the
  value.
* **Paths** in values (certificates, cookie jar, netrc, CA files): a leading `~`, `$HOME` or
  `${HOME}` is the daemon's home directory (injected into [`resolve_in`]), with a warning
  (netCDF-C hands the value to libcurl unchanged, which opens `./~/…`). A path that is still
  relative is taken relative to the **rc file's directory**, not the daemon's working directory
  (which is `/` under systemd).
*/

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::config::{Diagnostic, Origin, Sourced};
pub use crate::rule::pattern::DAP_SUFFIXES;
use crate::rule::pattern::{dap_dataset, path_under};
use crate::rule::{HostPattern, Pattern, PortSpec, SchemePattern, Syntax};
use crate::secret::Secret;
use crate::small_file::{self, CONFIG_MAX_BYTES};
use crate::target::Scheme;

// ---------------------------------------------------------------------------------------------
// Which files

/// The rc file names searched in each directory, highest precedence first.
pub const RC_FILE_NAMES: [&str; 3] = [".daprc", ".dodsrc", ".ncrc"];

/// The environment that decides which rc files are read. Injected so that tests (and the
/// reloader) never depend on the real process environment; [`RcEnv::from_process`] is the one
/// place that reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcEnv {
    /// `DAPRCFILE`: the only file to read (netCDF-C before 4.9).
    pub daprcfile: Option<PathBuf>,
    /// `NCRCENV_RC`: the only file to read (netCDF-C ≥ 4.9). Wins over `daprcfile`.
    pub ncrcenv_rc: Option<PathBuf>,
    /// `NCRCENV_IGNORE` is set (to anything): read no rc file at all.
    pub ignore: bool,
    /// `NCRCENV_HOME`, else `HOME`.
    pub home: Option<PathBuf>,
    /// The working directory.
    pub cwd: Option<PathBuf>,
    /// The daemon's uid. rc files found in a working directory other than HOME are read
    /// only when this uid owns them (see [`discover`]); `None` (unknown) reads none.
    pub uid: Option<u32>,
}

impl RcEnv {
    /// Reads `DAPRCFILE`, `NCRCENV_RC`, `NCRCENV_IGNORE`, `NCRCENV_HOME`, `HOME` and the working
    /// directory. Empty variables count as unset, except `NCRCENV_IGNORE`, which counts when set
    /// at all (as in netCDF-C).
    pub fn from_process() -> Self {
        fn nonempty(name: &str) -> Option<PathBuf> {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        }
        RcEnv {
            daprcfile: nonempty("DAPRCFILE"),
            ncrcenv_rc: nonempty("NCRCENV_RC"),
            ignore: std::env::var_os("NCRCENV_IGNORE").is_some(),
            home: nonempty("NCRCENV_HOME").or_else(|| nonempty("HOME")),
            cwd: std::env::current_dir().ok(),
            uid: Some(rustix::process::getuid().as_raw()),
        }
    }
}

/// Relative paths are taken relative to the injected working directory.
fn absolutize(p: &Path, cwd: Option<&Path>) -> PathBuf {
    match cwd {
        Some(c) if p.is_relative() => c.join(p),
        _ => p.to_path_buf(),
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Every path that would be read if it existed, highest precedence first. The reloader watches
/// these so that a file created later is picked up.
///
/// * `ignore` → none;
/// * `ncrcenv_rc`, else `daprcfile` → just that file (relative to `cwd` if relative);
/// * otherwise `cwd/.daprc`, `cwd/.dodsrc`, `cwd/.ncrc`, `home/.daprc`, `home/.dodsrc`,
///   `home/.ncrc`; when `home` and `cwd` are the same directory its files are listed once.
pub fn candidate_paths(env: &RcEnv) -> Vec<PathBuf> {
    if env.ignore {
        return Vec::new();
    }
    let cwd = env.cwd.as_deref();
    if let Some(only) = env.ncrcenv_rc.as_deref().or(env.daprcfile.as_deref()) {
        return vec![absolutize(only, cwd)];
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(c) = cwd {
        dirs.push(c.to_path_buf());
    }
    if let Some(h) = env.home.as_deref() {
        let h = absolutize(h, cwd);
        if !dirs.iter().any(|d| same_dir(d, &h)) {
            dirs.push(h);
        }
    }
    dirs.iter()
        .flat_map(|d| RC_FILE_NAMES.iter().map(move |n| d.join(n)))
        .collect()
}

/// Where netCDF-C 4.9 would pick other files than [`candidate_paths`] does, for `check`: it
/// ignores `DAPRCFILE` (it reads only `NCRCENV_RC`). Messages name the file, never a value.
pub fn discovery_notes(env: &RcEnv) -> Vec<Diagnostic> {
    match (&env.daprcfile, &env.ncrcenv_rc) {
        (Some(only), None) if !env.ignore => vec![Diagnostic::file(
            &absolutize(only, env.cwd.as_deref()),
            "DAPRCFILE names it as the only rc file authproxy reads; netCDF-C 4.9 ignores \
             DAPRCFILE (it reads NCRCENV_RC) and reads .ncrc, .daprc and .dodsrc from $HOME and \
             the working directory instead",
        )],
        _ => Vec::new(),
    }
}

/// The rc files [`discover`] found, and those it skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// The files to read, highest precedence first.
    pub paths: Vec<PathBuf>,
    /// One warning per skipped file, naming its path (never its contents).
    pub warnings: Vec<Diagnostic>,
    /// The working-directory files among `paths`: read them with [`parse_owned_file`],
    /// so that the owner check is made again on the file actually opened.
    pub owner_checked: Vec<PathBuf>,
}

/// The rc files that exist (anything but a directory), highest precedence first (a
/// subset of [`candidate_paths`]).
/// A `NCRCENV_RC`/`DAPRCFILE` naming a missing file yields nothing; compare with
/// [`candidate_paths`] to report it.
///
/// A file found in the working directory (when that is not HOME) is read only when the
/// daemon's uid ([`RcEnv::uid`]) owns it and neither group nor others may write it:
/// a daemon started in `/tmp` must not take another user's `.daprc`. Otherwise it is
/// skipped with a warning. Files in HOME and files named by `NCRCENV_RC`/`DAPRCFILE`
/// are the user's own choice and are not checked here.
pub fn discover(env: &RcEnv) -> Discovered {
    let mut found = Discovered::default();
    let cwd_only = env.cwd.as_deref().filter(|c| {
        env.ncrcenv_rc.is_none()
            && env.daprcfile.is_none()
            && !env
                .home
                .as_deref()
                .is_some_and(|h| same_dir(c, &absolutize(h, env.cwd.as_deref())))
    });
    for path in candidate_paths(env) {
        // Anything but a directory is kept: a FIFO or device named `.daprc` is then
        // refused by [`parse_file`] with an error naming it, rather than skipped unseen.
        if !std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
            continue;
        }
        if let Some(cwd) = cwd_only.filter(|c| path.parent() == Some(*c)) {
            if let Some(why) = untrusted(&path, env.uid) {
                found.warnings.push(Diagnostic::file(
                    &path,
                    format!(
                        "rc file in the working directory {} skipped: {why}",
                        cwd.display()
                    ),
                ));
                continue;
            }
            found.owner_checked.push(path.clone());
        }
        found.paths.push(path);
    }
    found
}

/// Why a working-directory rc file may not be trusted, if it may not.
fn untrusted(path: &Path, uid: Option<u32>) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) => untrusted_meta(&meta, path, uid),
        Err(e) => Some(format!("cannot check its owner ({e})")),
    }
}

fn untrusted_meta(meta: &std::fs::Metadata, path: &Path, uid: Option<u32>) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    match uid {
        None => return Some("the daemon's uid is unknown".to_owned()),
        Some(uid) if meta.uid() != uid => {
            return Some(format!(
                "owned by uid {}, not by the daemon's uid {uid}",
                meta.uid()
            ))
        }
        Some(_) => {}
    }
    if meta.mode() & 0o022 != 0 {
        return Some(format!(
            "group or others may write it; chmod go-w {}",
            path.display()
        ));
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Scopes

/// The `[prefix]` of a line: which requests the line applies to.
///
/// Hosts are stored lowercased, schemes lowercased, paths without trailing `/` (the root is
/// `""`). A missing port means the request scheme's default port (see [`RcScope::pattern`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RcScope {
    /// No prefix: every request.
    Any,
    /// `[host]` or `[host:port]` (the form documented for netCDF-C before 4.9).
    Host { host: String, port: Option<u16> },
    /// `[scheme://host[:port][/path]]` (netCDF-C 4.9's form).
    Url {
        scheme: String,
        host: String,
        port: Option<u16>,
        path: String,
    },
}

/// The scope as separate constraints; `None` means "unconstrained".
struct Parts<'a> {
    scheme: Option<&'a str>,
    host: Option<&'a str>,
    port: PortSpec,
    path: Option<&'a str>,
}

/// Whether every port `inner` covers (for requests of `inner_scheme`, when the scope names
/// one) is covered by `outer` too.
fn port_covers(outer: PortSpec, inner: PortSpec, inner_scheme: Option<&str>) -> bool {
    let inner_default = inner_scheme
        .and_then(Scheme::parse)
        .map(Scheme::default_port);
    match (outer, inner) {
        (PortSpec::Any, _) => true,
        (_, PortSpec::Any) => false,
        (PortSpec::Default, PortSpec::Default) => true,
        (PortSpec::Default, PortSpec::Is(q)) => inner_default == Some(q),
        (PortSpec::Is(p), PortSpec::Is(q)) => p == q,
        // A scheme-less `[host]` covers two ports, never contained in one.
        (PortSpec::Is(p), PortSpec::Default) => inner_default == Some(p),
    }
}

impl RcScope {
    fn parts(&self) -> Parts<'_> {
        let spec = |port: &Option<u16>| port.map_or(PortSpec::Default, PortSpec::Is);
        match self {
            RcScope::Any => Parts {
                scheme: None,
                host: None,
                port: PortSpec::Any,
                path: None,
            },
            RcScope::Host { host, port } => Parts {
                scheme: None,
                host: Some(host),
                port: spec(port),
                path: None,
            },
            RcScope::Url {
                scheme,
                host,
                port,
                path,
            } => Parts {
                scheme: Some(scheme),
                host: Some(host),
                port: spec(port),
                path: Some(path),
            },
        }
    }

    fn from_parts(p: Parts<'_>) -> Option<RcScope> {
        let port = match p.port {
            PortSpec::Any => None,
            PortSpec::Default => Some(None),
            PortSpec::Is(n) => Some(Some(n)),
        };
        match (p.scheme, p.host, p.path, port) {
            (None, None, None, None) => Some(RcScope::Any),
            (None, Some(h), None, Some(port)) => Some(RcScope::Host {
                host: h.to_string(),
                port,
            }),
            (Some(s), Some(h), path, Some(port)) => Some(RcScope::Url {
                scheme: s.to_string(),
                host: h.to_string(),
                port,
                path: path.unwrap_or("").to_string(),
            }),
            _ => None,
        }
    }

    /// The host this scope is tied to, if any.
    pub fn host(&self) -> Option<&str> {
        self.parts().host
    }

    /// The pattern the request path matches this scope with (see [`crate::rule::pattern`]):
    /// `[host]` is that host on the request scheme's default port, `[host:port]` that port,
    /// `[scheme://host/path]` without a port the scheme's default port, and a path prefix
    /// covers the DAP requests for the dataset it names. Brackets around an IPv6 literal and
    /// a trailing dot of the host are dropped.
    pub fn pattern(&self) -> Pattern {
        let p = self.parts();
        let scheme = match p.scheme {
            None => SchemePattern::Any,
            Some(s) => Scheme::parse(s).map_or(SchemePattern::Other, SchemePattern::Is),
        };
        let host = match p.host {
            None => HostPattern::Any,
            Some(h) => HostPattern::Exact(crate::rule::pattern::normalize_host(h).to_owned()),
        };
        Pattern {
            scheme,
            host,
            port: p.port,
            path: p.path.filter(|p| !p.is_empty()).map(str::to_owned),
            syntax: Syntax::Rc,
        }
    }

    /// Does a request for `scheme://host:port/path` fall under this scope? `port` is the
    /// request's effective port (the scheme's default applied). As in netCDF-C, which
    /// compares `host:port` exactly: `[host]` matches that host on the request scheme's
    /// default port only (80 for http, 443 for https), `[host:port]` that port, and
    /// `[scheme://host/path]` without a port the scheme's default port. Host and scheme
    /// compare case-insensitively (brackets around an IPv6 literal and a trailing dot of the
    /// request host are ignored), a path prefix matches itself and what is below it (`/data`
    /// matches `/data` and `/data/x`, not `/database`) and the DAP requests for the dataset.
    /// A query or fragment on `path` is ignored. The matching is [`Pattern::matches_parts`].
    pub fn matches(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        self.pattern().matches_parts(scheme, host, port, path)
    }

    /// Orders scopes from least to most specific: unscoped `(0,0)` < `[host]` `(1,0)` <
    /// `[host:port]` `(2,0)` < `[scheme://host…]` `(3, n)`, where `n` grows with the path length
    /// (and by one for an explicit port). A scope strictly inside another always has a strictly
    /// greater specificity. See [`Pattern::specificity`].
    pub fn specificity(&self) -> (u8, usize) {
        self.pattern().specificity()
    }

    /// True when every request `other` matches, `self` matches too.
    pub fn contains(&self, other: &RcScope) -> bool {
        let a = self.parts();
        let b = other.parts();
        let eq = |x: Option<&str>, y: Option<&str>| x.is_none() || x == y;
        eq(a.scheme, b.scheme)
            && eq(a.host, b.host)
            && port_covers(a.port, b.port, b.scheme)
            && match (a.path, b.path) {
                (None, _) => true,
                (Some(x), Some(y)) => path_under(x, y),
                (Some(_), None) => false,
            }
    }

    /// Every scope that [contains](Self::contains) `self`, `self` included, least specific
    /// first.
    pub fn ancestors(&self) -> Vec<RcScope> {
        let mut out = vec![RcScope::Any];
        let p = self.parts();
        let Some(host) = p.host else {
            return out;
        };
        // Every port a containing scope could name: this one's, and its scheme's default.
        let mut ports: Vec<Option<u16>> = vec![None];
        if let PortSpec::Is(n) = p.port {
            ports.push(Some(n));
        }
        if let Some(d) = p.scheme.and_then(Scheme::parse).map(Scheme::default_port) {
            ports.push(Some(d));
        }
        let mut candidates = Vec::new();
        for port in &ports {
            candidates.push(RcScope::Host {
                host: host.to_string(),
                port: *port,
            });
        }
        if let (Some(scheme), Some(path)) = (p.scheme, p.path) {
            let mut prefixes = vec![""];
            prefixes.extend(
                path.char_indices()
                    .filter(|&(i, c)| c == '/' && i > 0)
                    .map(|(i, _)| &path[..i]),
            );
            // `/d/ds.dds` is under the dataset scope `/d/ds` too (see [`path_under`]).
            prefixes.extend(dap_dataset(path));
            if !path.is_empty() {
                prefixes.push(path);
            }
            for prefix in prefixes {
                for port in &ports {
                    candidates.push(RcScope::Url {
                        scheme: scheme.to_string(),
                        host: host.to_string(),
                        port: *port,
                        path: prefix.to_string(),
                    });
                }
            }
        }
        out.extend(candidates.into_iter().filter(|c| c.contains(self)));
        out.sort_by_key(|s| s.specificity());
        out.dedup();
        out
    }

    /// The scope of the requests both match, or `None` when no request matches both.
    pub fn intersect(&self, other: &RcScope) -> Option<RcScope> {
        let a = self.parts();
        let b = other.parts();
        fn both<T: PartialEq>(x: Option<T>, y: Option<T>) -> Result<Option<T>, ()> {
            match (x, y) {
                (Some(x), Some(y)) if x != y => Err(()),
                (Some(x), _) => Ok(Some(x)),
                (None, y) => Ok(y),
            }
        }
        let path = match (a.path, b.path) {
            (Some(x), Some(y)) if path_under(x, y) => Some(y),
            (Some(x), Some(y)) if path_under(y, x) => Some(x),
            (Some(_), Some(_)) => return None,
            (x, y) => x.or(y),
        };
        let mut scheme = both(a.scheme, b.scheme).ok()?;
        let port = match (a.port, b.port) {
            (PortSpec::Any, x) | (x, PortSpec::Any) => x,
            (PortSpec::Default, PortSpec::Default) => PortSpec::Default,
            (PortSpec::Is(x), PortSpec::Is(y)) if x == y => PortSpec::Is(x),
            (PortSpec::Is(_), PortSpec::Is(_)) => return None,
            (PortSpec::Default, PortSpec::Is(n)) | (PortSpec::Is(n), PortSpec::Default) => {
                match scheme {
                    Some(s) if Scheme::parse(s).map(Scheme::default_port) == Some(n) => {
                        PortSpec::Is(n)
                    }
                    Some(_) => return None,
                    // `[host]` and `[host:80]` share exactly the http requests on port 80.
                    None => {
                        scheme = Some(match n {
                            80 => "http",
                            443 => "https",
                            _ => return None,
                        });
                        PortSpec::Is(n)
                    }
                }
            }
        };
        RcScope::from_parts(Parts {
            scheme,
            host: both(a.host, b.host).ok()?,
            port,
            path,
        })
    }
}

impl fmt::Display for RcScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RcScope::Any => f.write_str("(unscoped)"),
            RcScope::Host { host, port: None } => write!(f, "[{host}]"),
            RcScope::Host {
                host,
                port: Some(p),
            } => write!(f, "[{host}:{p}]"),
            RcScope::Url {
                scheme,
                host,
                port,
                path,
            } => {
                write!(f, "[{scheme}://{host}")?;
                if let Some(p) = port {
                    write!(f, ":{p}")?;
                }
                write!(f, "{path}]")
            }
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → lowercased host and port.
fn parse_host_port(s: &str) -> Result<(String, Option<u16>), &'static str> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']').ok_or("unclosed IPv6 literal in the [prefix]")?;
        let rest = &s[close + 1..];
        let port = if rest.is_empty() {
            None
        } else {
            Some(
                rest.strip_prefix(':')
                    .ok_or("junk after the host in the [prefix]")?,
            )
        };
        (&s[..=close], port)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err("no host in the [prefix]");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "/?#@\\".contains(c))
    {
        return Err("the [prefix] holds an invalid host");
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(
            p.parse::<u16>()
                .map_err(|_| "the port in the [prefix] is out of range")?,
        ),
        Some(_) => return Err("the port in the [prefix] is not a number"),
    };
    Ok((host.to_ascii_lowercase(), port))
}

/// What [`parse_scope`] noticed besides the scope.
#[derive(Default)]
struct ScopeNotes {
    /// User info (`user:pass@`) was dropped.
    userinfo: bool,
    /// A `scheme://host[:port]` prefix without a path (nothing, or just `/`, after the
    /// authority).
    pathless: bool,
}

/// Parses the inside of `[...]`.
fn parse_scope(s: &str) -> Result<(RcScope, ScopeNotes), &'static str> {
    let s = s.trim_matches(is_blank);
    if s.is_empty() {
        return Err("empty [prefix]");
    }
    if let Some(idx) = s.find("://") {
        let scheme = &s[..idx];
        let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !valid_scheme {
            return Err("the [prefix] has an invalid scheme");
        }
        let rest = &s[idx + 3..];
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (authority, had_userinfo) = match authority.rfind('@') {
            Some(i) => (&authority[i + 1..], true),
            None => (authority, false),
        };
        let (host, port) = parse_host_port(authority)?;
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the path in the [prefix] holds blanks or control characters");
        }
        Ok((
            RcScope::Url {
                scheme: scheme.to_ascii_lowercase(),
                host,
                port,
                path: path.trim_end_matches('/').to_string(),
            },
            ScopeNotes {
                userinfo: had_userinfo,
                pathless: path.trim_end_matches('/').is_empty(),
            },
        ))
    } else if s.contains('/') {
        Err("a path in a [prefix] needs a scheme ([scheme://host/path])")
    } else {
        let (host, port) = parse_host_port(s)?;
        Ok((RcScope::Host { host, port }, ScopeNotes::default()))
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// One `KEY=VALUE` line.
#[derive(Clone, PartialEq, Eq)]
pub struct RcLine {
    pub scope: RcScope,
    /// Uppercased, as written otherwise (aliases are not rewritten here).
    pub key: String,
    /// The key exactly as the user wrote it, for messages.
    pub written: String,
    /// Trimmed; may be empty. May be a secret: never log it.
    pub value: String,
    pub origin: Origin,
}

impl fmt::Debug for RcLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcLine")
            .field("scope", &self.scope)
            .field("key", &self.key)
            .field("value", &"***")
            .field("origin", &self.origin)
            .finish()
    }
}

/// One parsed rc file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcFile {
    pub path: PathBuf,
    /// In file order.
    pub lines: Vec<RcLine>,
    pub warnings: Vec<Diagnostic>,
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

fn is_blank_byte(b: &u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

/// Index of the `]` closing the `[` at index 0, counting nested brackets (IPv6 literals).
fn closing_bracket(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'[' => depth += 1,
            b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Keys netCDF-C reads that this module types (canonical name after aliasing).
const TYPED_KEYS: &[&str] = &[
    "HTTP.COOKIEJAR",
    "HTTP.CREDENTIALS.USERPASSWORD",
    "HTTP.CREDENTIALS.USERNAME",
    "HTTP.CREDENTIALS.PASSWORD",
    "HTTP.NETRC",
    "HTTP.SSL.VALIDATE",
    "HTTP.SSL.CERTIFICATE",
    "HTTP.SSL.KEY",
    "HTTP.SSL.KEYPASSWORD",
    "HTTP.SSL.CAINFO",
    "HTTP.SSL.CAPATH",
    "HTTP.SSL.VERIFYPEER",
    "HTTP.SSL.VERIFYHOST",
    "HTTP.TIMEOUT",
    "HTTP.CONNECTTIMEOUT",
    "HTTP.PROXY.SERVER",
];

/// Keys netCDF-C reads that the proxy cannot act on; accepted and reported as unsupported.
pub const UNSUPPORTED_KEYS: &[&str] = &[
    "HTTP.VERBOSE",
    "HTTP.DEFLATE",
    "HTTP.ENCODE",
    "HTTP.USERAGENT",
    "HTTP.READ.BUFFERSIZE",
    "HTTP.KEEPALIVE",
];

/// Keys of libdap's `.dodsrc` (read by libdap clients such as the OPeNDAP C++ tools, not by
/// netCDF-C). Recognised so that `check` lists them once per file instead of calling each one
/// accepted; they are not kept as lines.
pub const LIBDAP_KEYS: &[&str] = &[
    "USE_CACHE",
    "MAX_CACHE_SIZE",
    "MAX_CACHED_OBJ",
    "IGNORE_EXPIRES",
    "CACHE_ROOT",
    "DEFAULT_EXPIRES",
    "ALWAYS_VALIDATE",
    "DEFLATE",
    "VALIDATE_SSL",
    "PROXY_SERVER",
    "PROXY_FOR",
    "NO_PROXY_FOR",
    "AIS_DATABASE",
    "COOKIE_JAR",
];

/// Where a value holds what looks like another setting, `HTTP.<KEY>=` (two lines glued
/// together): the key's name when it is one netCDF-C knows, else `None` inside `Some`.
fn glued_key(value: &str) -> Option<Option<&'static str>> {
    let upper = value.to_ascii_uppercase();
    let mut from = 0;
    while let Some(i) = upper[from..].find("HTTP.") {
        let start = from + i;
        let rest = &upper[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .unwrap_or(rest.len());
        if end > "HTTP.".len() && rest[end..].starts_with('=') {
            let key = &rest[..end];
            let known = TYPED_KEYS
                .iter()
                .chain(UNSUPPORTED_KEYS)
                .chain(&["HTTP.COOKIE_JAR", "HTTP.COOKIEFILE", "HTTP.COOKIE_FILE"])
                .chain(&["HTTP.CREDENTIALS.USER", "HTTP.PROXY_SERVER"])
                .find(|k| **k == key)
                .copied();
            return Some(known);
        }
        from = start + 1;
    }
    None
}

/// The setting a key writes: aliases collapse to one name. Input must be uppercased.
fn canonical_key(key: &str) -> &str {
    match key {
        "HTTP.COOKIE_JAR" | "HTTP.COOKIEFILE" | "HTTP.COOKIE_FILE" => "HTTP.COOKIEJAR",
        "HTTP.CREDENTIALS.USER" => "HTTP.CREDENTIALS.USERNAME",
        "HTTP.PROXY_SERVER" => "HTTP.PROXY.SERVER",
        other => other,
    }
}

/// Parses one rc file's bytes. Never fails: malformed lines become warnings.
///
/// Lines end at `\n` (a `\r` before it is dropped); a UTF-8 byte-order mark is skipped with a
/// warning. Blank lines and lines whose first non-blank is `#` are skipped. A line that is not
/// valid UTF-8 is skipped with a warning. Keys are uppercased (ASCII). libdap's keys
/// ([`LIBDAP_KEYS`]) are dropped and named in one warning per file.
///
/// Where netCDF-C 4.9 reads a line differently from authproxy, a warning that starts
/// "netCDF-C 4.9" says how, for people who share the file with ncdump: `[host]` and
/// `[host:port]` prefixes and path-less `[scheme://host:port]` prefixes (one warning per file
/// each, listing the lines), `HTTP.CREDENTIALS.USERNAME`, leading blanks (4.9.2 and later), a
/// BOM.
pub fn parse_bytes(path: &Path, bytes: &[u8]) -> RcFile {
    let shared: Arc<Path> = Arc::from(path);
    let mut file = RcFile {
        path: path.to_path_buf(),
        lines: Vec::new(),
        warnings: Vec::new(),
    };
    let mut notes = FileNotes::default();
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => {
            file.warnings.push(Diagnostic::new(
                Origin {
                    path: Arc::clone(&shared),
                    line: 1,
                },
                "the file starts with a UTF-8 byte-order mark (BOM, bytes EF BB BF); \
                          skipped (netCDF-C 4.9 reads it as part of the first line)"
                    .to_owned(),
            ));
            rest
        }
        None => bytes,
    };
    for (idx, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let origin = Origin {
            path: Arc::clone(&shared),
            line: idx + 1,
        };
        let first = raw.iter().find(|b| !is_blank_byte(b));
        if first.is_none() || first == Some(&b'#') {
            continue;
        }
        match std::str::from_utf8(raw) {
            Ok(text) => parse_line(text, origin, &mut file, &mut notes),
            Err(_) => file.warnings.push(Diagnostic::new(
                origin,
                "line is not valid UTF-8; skipped".to_owned(),
            )),
        }
    }
    let at = |line: usize| Origin {
        path: Arc::clone(&shared),
        line,
    };
    let lines = |ls: &[usize]| {
        ls.iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(&first) = notes.host_prefix.first() {
        file.warnings.push(Diagnostic::new(
            at(first),
            format!(
                "netCDF-C 4.9 logs \"Malformed [url]\" for a [host] or [host:port] prefix and \
                 skips the line (authproxy reads it); write [http://host:port/path] to share this \
                 file with ncdump. Lines: {}",
                lines(&notes.host_prefix)
            ),
        ));
    }
    if let Some(&first) = notes.pathless.first() {
        file.warnings.push(Diagnostic::new(
            at(first),
            format!(
                "netCDF-C 4.9 drops a line with a [scheme://host:port] prefix without a path and \
                 every line after it (here from line {first} to the end of the file), where \
                 authproxy reads them all; give the prefix the dataset's path to share this file \
                 with ncdump. Path-less prefixes at lines: {}",
                lines(&notes.pathless)
            ),
        ));
    }
    let libdap = &notes.libdap;
    if let Some((_, first)) = libdap.first() {
        let list: Vec<String> = libdap
            .iter()
            .map(|(key, line)| format!("{key} (line {line})"))
            .collect();
        file.warnings.push(Diagnostic::new(
            Origin {
                path: Arc::clone(&shared),
                line: *first,
            },
            format!(
                "libdap keys, read by libdap clients and not by netCDF-C or authproxy; ignored: {}",
                list.join(", ")
            ),
        ));
    }
    file.warnings.sort_by_key(|w| w.origin.line);
    file
}

/// What [`parse_line`] collects for the warnings [`parse_bytes`] gives once per file.
#[derive(Default)]
struct FileNotes {
    /// libdap keys as written, with their lines.
    libdap: Vec<(String, usize)>,
    /// Lines with a `[host]` or `[host:port]` prefix.
    host_prefix: Vec<usize>,
    /// Lines with a path-less `[scheme://host:port]` prefix.
    pathless: Vec<usize>,
}

fn parse_line(text: &str, origin: Origin, file: &mut RcFile, notes: &mut FileNotes) {
    let warn = |file: &mut RcFile, message: String| {
        file.warnings.push(Diagnostic::new(origin.clone(), message))
    };
    let body = text.trim_matches(is_blank);
    // netCDF-C 4.9.0 trims blanks around the key and the value as authproxy does; 4.9.2 and
    // later mangle a line that starts with blanks.
    let leading_blanks = text.starts_with(is_blank);
    let mut pathless = false;
    let (scope, rest) = if body.starts_with('[') {
        let Some(close) = closing_bracket(body) else {
            warn(file, "`[` without a matching `]`; line skipped".into());
            return;
        };
        match parse_scope(&body[1..close]) {
            Ok((scope, found)) => {
                pathless = found.pathless;
                if found.userinfo {
                    warn(
                        file,
                        "user info in a [prefix] is ignored (put credentials in \
                         HTTP.CREDENTIALS.* keys)"
                            .into(),
                    );
                }
                (scope, &body[close + 1..])
            }
            Err(why) => {
                warn(file, format!("{why}; line skipped"));
                return;
            }
        }
    } else {
        (RcScope::Any, body)
    };
    let Some(eq) = rest.find('=') else {
        warn(file, "no `=` in this line; skipped".into());
        return;
    };
    let key_raw = &rest[..eq];
    let value_raw = &rest[eq + 1..];
    let key = key_raw.trim_matches(is_blank);
    if key.is_empty() {
        warn(file, "no key before `=`; line skipped".into());
        return;
    }
    let written = key.to_string();
    let key = key.to_ascii_uppercase();
    if LIBDAP_KEYS.contains(&key.as_str()) {
        notes
            .libdap
            .push((key_raw.trim_matches(is_blank).to_string(), origin.line));
        return;
    }
    // Measured with ncdump 4.9.0: `[host]` is refused just like `[host:port]`.
    if let RcScope::Host { .. } = scope {
        notes.host_prefix.push(origin.line);
    }
    if pathless {
        notes.pathless.push(origin.line);
    }
    if leading_blanks {
        warn(
            file,
            format!(
                "{key}: the line starts with blanks; netCDF-C 4.9.2 and later misread such a \
                 line (4.9.0 and authproxy trim them); remove them to share this file with ncdump"
            ),
        );
    }
    if key == "HTTP.PROXY_SERVER" {
        warn(
            file,
            "HTTP.PROXY_SERVER is deprecated; use HTTP.PROXY.SERVER".into(),
        );
    }
    if key == "HTTP.CREDENTIALS.USERNAME" {
        warn(
            file,
            "netCDF-C 4.9 reads HTTP.CREDENTIALS.USER and ignores HTTP.CREDENTIALS.USERNAME \
             (authproxy reads both); write HTTP.CREDENTIALS.USER to share this file with ncdump"
                .into(),
        );
    }
    if key.starts_with("CURL.") {
        warn(
            file,
            format!(
                "{key}: CURL.* keys are obsolete; netCDF-C 4.9 and authproxy ignore them (use \
                 the HTTP.* key of the same name)"
            ),
        );
        // Said once, here: not also listed as accepted.
        return;
    }
    let value = value_raw.trim_matches(is_blank);
    if let Some(glued) = glued_key(value) {
        // Not even a key name from a value that may be a secret.
        let secret = matches!(
            canonical_key(&key),
            "HTTP.CREDENTIALS.PASSWORD"
                | "HTTP.CREDENTIALS.USERPASSWORD"
                | "HTTP.SSL.KEYPASSWORD"
                | "HTTP.PROXY.SERVER"
        );
        let what = match glued {
            Some(k) if !secret => format!("{k}="),
            _ => "HTTP.<KEY>=".to_string(),
        };
        warn(
            file,
            format!(
                "{key}: the value contains `{what}`: two settings glued on one line? Both \
                 authproxy and netCDF-C 4.9 read it as one value; put each setting on its own line"
            ),
        );
    }
    let canon = canonical_key(&key);
    if canon.starts_with("HTTP.")
        && !TYPED_KEYS.contains(&canon)
        && !UNSUPPORTED_KEYS.contains(&canon)
    {
        warn(
            file,
            format!("{written}: not a key netCDF-C knows (misspelt?); ignored"),
        );
    }
    file.lines.push(RcLine {
        scope,
        key,
        written,
        value: value.to_string(),
        origin,
    });
}

/// Reads and parses one rc file. Only I/O fails: a FIFO, device or directory, or a file
/// over [`CONFIG_MAX_BYTES`], is refused without blocking (see [`crate::small_file`]).
/// As for a `.netrc`, a file other users may change (group- or world-writable), or may read
/// while it holds a password, gets a warning that says `chmod 600`; it is still used.
pub fn parse_file(path: &Path) -> std::io::Result<RcFile> {
    let (bytes, meta) = small_file::read(path, CONFIG_MAX_BYTES)?;
    Ok(parse_read(path, &bytes, &meta))
}

/// [`parse_file`] for a file [`discover`] found in the working directory: the file
/// opened must still be owned by `uid` and not writable by others (it may have been
/// replaced since), else the read fails with `PermissionDenied` saying why.
pub fn parse_owned_file(path: &Path, uid: Option<u32>) -> std::io::Result<RcFile> {
    let (bytes, meta) = small_file::read(path, CONFIG_MAX_BYTES)?;
    if let Some(why) = untrusted_meta(&meta, path, uid) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("not read: {why}"),
        ));
    }
    Ok(parse_read(path, &bytes, &meta))
}

fn parse_read(path: &Path, bytes: &[u8], meta: &std::fs::Metadata) -> RcFile {
    use std::os::unix::fs::MetadataExt;
    let mut file = parse_bytes(path, bytes);
    let mode = meta.mode();
    let secret = file.lines.iter().any(|l| {
        matches!(
            canonical_key(&l.key),
            "HTTP.CREDENTIALS.PASSWORD" | "HTTP.CREDENTIALS.USERPASSWORD" | "HTTP.SSL.KEYPASSWORD"
        ) || (canonical_key(&l.key) == "HTTP.PROXY.SERVER" && l.value.contains('@'))
    });
    let problem = if mode & 0o022 != 0 {
        Some("writable by other users (they could send your credentials elsewhere)")
    } else if secret && mode & 0o044 != 0 {
        Some("holds a password and is readable by other users")
    } else {
        None
    };
    if let Some(problem) = problem {
        file.warnings.insert(
            0,
            Diagnostic::new(
                Origin::new(path, 0),
                format!("{problem}; chmod 600 {}", path.display()),
            ),
        );
    }
    file
}

// ---------------------------------------------------------------------------------------------
// Resolving

/// A value that cannot be used. Messages name the file, line and key, never the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RcError {
    #[error("{origin}: {key}: not a boolean (use 0/1, true/false, yes/no or on/off)")]
    BadBool { origin: Origin, key: String },
    #[error("{origin}: {key}: not a whole number of seconds")]
    BadNumber { origin: Origin, key: String },
    #[error("{origin}: {key}: {reason}")]
    BadCredentials {
        origin: Origin,
        key: String,
        reason: &'static str,
    },
}

impl From<&RcError> for Diagnostic {
    fn from(e: &RcError) -> Self {
        let text = e.to_string();
        let prefix = format!("{}: ", e.origin());
        let message = text.strip_prefix(&prefix).unwrap_or(&text);
        Diagnostic::new(e.origin().clone(), message)
    }
}

impl RcError {
    pub fn origin(&self) -> &Origin {
        match self {
            RcError::BadBool { origin, .. }
            | RcError::BadNumber { origin, .. }
            | RcError::BadCredentials { origin, .. } => origin,
        }
    }
}

/// What the rc files say for one scope, inherited values included.
#[derive(Default, Clone, Debug)]
pub struct RcSettings {
    /// Resolved credentials; see [`resolve`] for the rule.
    pub username: Option<Sourced<String>>,
    pub password: Option<Sourced<Secret<String>>>,
    /// The password comes from a line without a `[prefix]`: it names no host, so it is not
    /// sent by default (see YAML `rc_unscoped_credentials`).
    pub credentials_unscoped: bool,
    /// `HTTP.COOKIEJAR` (or its aliases `HTTP.COOKIE_JAR`, `HTTP.COOKIEFILE`,
    /// `HTTP.COOKIE_FILE`). Paths have `~`/`$HOME` expanded and are relative to the rc file's
    /// directory (see [`resolve_in`]).
    pub cookiejar: Option<Sourced<PathBuf>>,
    pub netrc: Option<Sourced<PathBuf>>,
    pub ssl_certificate: Option<Sourced<PathBuf>>,
    pub ssl_key: Option<Sourced<PathBuf>>,
    pub ssl_keypassword: Option<Sourced<Secret<String>>>,
    pub ssl_cainfo: Option<Sourced<PathBuf>>,
    pub ssl_capath: Option<Sourced<PathBuf>>,
    /// `HTTP.SSL.VERIFYPEER`, or `HTTP.SSL.VALIDATE` (which sets both). Within one scope the
    /// explicit key beats `VALIDATE`; across scopes the more specific scope wins.
    pub ssl_verifypeer: Option<Sourced<bool>>,
    /// `HTTP.SSL.VERIFYHOST` (curl's `2` reads as true), or `HTTP.SSL.VALIDATE`.
    pub ssl_verifyhost: Option<Sourced<bool>>,
    /// `HTTP.TIMEOUT`, whole seconds. `0` is kept: curl reads it as "no timeout" (netCDF-C
    /// ignores a 0 and keeps its default).
    pub timeout: Option<Sourced<Duration>>,
    /// `HTTP.CONNECTTIMEOUT`, whole seconds; `0` as for `timeout`.
    pub connect_timeout: Option<Sourced<Duration>>,
    /// `HTTP.PROXY.SERVER` (or deprecated `HTTP.PROXY_SERVER`), kept as written: a URL that may
    /// hold `user:password@`. Not validated here.
    pub proxy_server: Option<Sourced<Secret<String>>>,
    /// Keys the proxy cannot act on (`HTTP.VERBOSE`, `HTTP.USERAGENT`, unknown keys, …), as
    /// written (uppercased), one per setting.
    pub unsupported: Vec<Sourced<String>>,
}

/// The settings for one scope. Rules from [`resolve`] are self-contained: a request needs only
/// the rule [`select`] returns.
#[derive(Clone, Debug)]
pub struct RcRule {
    pub scope: RcScope,
    pub settings: RcSettings,
}

/// One scope's own values (nothing inherited), credentials still unresolved.
#[derive(Default, Clone)]
struct Layer {
    settings: RcSettings,
    user: Option<Sourced<String>>,
    /// The user came from `HTTP.CREDENTIALS.USERNAME`, which netCDF-C 4.9 does not read (it
    /// reads `HTTP.CREDENTIALS.USER`).
    user_from_username: bool,
    pass: Option<Sourced<Secret<String>>>,
    userpass: Option<(Sourced<String>, Sourced<Secret<String>>)>,
    unsupported: BTreeMap<String, Sourced<String>>,
}

impl Layer {
    /// Lays `top` (more specific) over `self`.
    fn overlay(&mut self, top: &Layer) {
        fn over<T: Clone>(dst: &mut Option<T>, src: &Option<T>) {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        let (d, s) = (&mut self.settings, &top.settings);
        over(&mut d.cookiejar, &s.cookiejar);
        over(&mut d.netrc, &s.netrc);
        over(&mut d.ssl_certificate, &s.ssl_certificate);
        over(&mut d.ssl_key, &s.ssl_key);
        over(&mut d.ssl_keypassword, &s.ssl_keypassword);
        over(&mut d.ssl_cainfo, &s.ssl_cainfo);
        over(&mut d.ssl_capath, &s.ssl_capath);
        over(&mut d.ssl_verifypeer, &s.ssl_verifypeer);
        over(&mut d.ssl_verifyhost, &s.ssl_verifyhost);
        over(&mut d.timeout, &s.timeout);
        over(&mut d.connect_timeout, &s.connect_timeout);
        over(&mut d.proxy_server, &s.proxy_server);
        if top.user.is_some() {
            self.user_from_username = top.user_from_username;
        }
        over(&mut self.user, &top.user);
        over(&mut self.pass, &top.pass);
        over(&mut self.userpass, &top.userpass);
        for (k, v) in &top.unsupported {
            self.unsupported.insert(k.clone(), v.clone());
        }
    }
}

fn parse_bool(v: &str, allow_two: bool) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        "2" if allow_two => Some(true),
        _ => None,
    }
}

fn parse_secs(v: &str) -> Option<Duration> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse::<u64>().ok().map(Duration::from_secs)
}

fn decode(part: &str) -> Option<String> {
    percent_decode_str(part)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// A path value as authproxy opens it. A leading `~`, `$HOME` or `${HOME}` (alone or before a
/// `/`) is `home`, the daemon's home directory, with a warning (netCDF-C hands the value to
/// libcurl as written, which opens `./~/…`); a path that is still relative is taken relative to
/// the directory of the rc file it was read from (the daemon's working directory is `/` under
/// systemd). The warning names the key, never the value.
fn rc_path(line: &RcLine, home: Option<&Path>, warnings: &mut Vec<Diagnostic>) -> PathBuf {
    let v = line.value.as_str();
    let forms: [(&str, &str); 3] = [
        (
            "~",
            "netCDF-C 4.9 opens `./~/…` relative to its working directory instead",
        ),
        (
            "${HOME}",
            "netCDF-C 4.9 does not expand `${HOME}` and opens the path as written",
        ),
        (
            "$HOME",
            "netCDF-C 4.9 does not expand `$HOME` and opens the path as written",
        ),
    ];
    let mut out = PathBuf::from(v);
    for (form, netcdf) in forms {
        let Some(rest) = v.strip_prefix(form) else {
            continue;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            continue;
        }
        let rest = rest.trim_start_matches('/');
        let message = match home {
            Some(h) => {
                out = if rest.is_empty() {
                    h.to_path_buf()
                } else {
                    h.join(rest)
                };
                format!(
                    "{}: `{form}` is the daemon's home directory here; {netcdf}",
                    line.key
                )
            }
            None => format!(
                "{}: `{form}` cannot be expanded (the daemon has no HOME); read relative to the \
                 rc file's directory",
                line.key
            ),
        };
        warnings.push(Diagnostic::new(line.origin.clone(), message));
        break;
    }
    if out.is_relative() {
        if let Some(dir) = line.origin.path.parent() {
            out = dir.join(out);
        }
    }
    out
}

/// Builds one scope's own layer from its winning lines (keyed by canonical key).
fn build_layer(
    slots: &BTreeMap<String, &RcLine>,
    home: Option<&Path>,
    warnings: &mut Vec<Diagnostic>,
    errors: &mut Vec<RcError>,
) -> Layer {
    let mut l = Layer::default();
    let mut validate: Option<Sourced<bool>> = None;
    for (slot, line) in slots {
        let o = || line.origin.clone();
        let v = line.value.as_str();
        let key = || line.key.clone();
        let bad_bool = || RcError::BadBool {
            origin: o(),
            key: key(),
        };
        let mut path = |dst: &mut Option<Sourced<PathBuf>>| {
            *dst = Some(Sourced::new(rc_path(line, home, warnings), o()));
        };
        let s = &mut l.settings;
        match slot.as_str() {
            "HTTP.COOKIEJAR" => path(&mut s.cookiejar),
            "HTTP.NETRC" => path(&mut s.netrc),
            "HTTP.SSL.CERTIFICATE" => path(&mut s.ssl_certificate),
            "HTTP.SSL.KEY" => path(&mut s.ssl_key),
            "HTTP.SSL.CAINFO" => path(&mut s.ssl_cainfo),
            "HTTP.SSL.CAPATH" => path(&mut s.ssl_capath),
            "HTTP.SSL.KEYPASSWORD" => {
                s.ssl_keypassword = Some(Sourced::new(Secret::new(v.to_string()), o()))
            }
            "HTTP.PROXY.SERVER" => {
                s.proxy_server = Some(Sourced::new(Secret::new(v.to_string()), o()))
            }
            "HTTP.SSL.VALIDATE" => match parse_bool(v, false) {
                Some(b) => validate = Some(Sourced::new(b, o())),
                None => errors.push(bad_bool()),
            },
            "HTTP.SSL.VERIFYPEER" => match parse_bool(v, false) {
                Some(b) => s.ssl_verifypeer = Some(Sourced::new(b, o())),
                None => errors.push(bad_bool()),
            },
            "HTTP.SSL.VERIFYHOST" => match parse_bool(v, true) {
                Some(b) => s.ssl_verifyhost = Some(Sourced::new(b, o())),
                None => errors.push(bad_bool()),
            },
            "HTTP.TIMEOUT" | "HTTP.CONNECTTIMEOUT" => match parse_secs(v) {
                Some(d) if slot == "HTTP.TIMEOUT" => s.timeout = Some(Sourced::new(d, o())),
                Some(d) => s.connect_timeout = Some(Sourced::new(d, o())),
                None => errors.push(RcError::BadNumber {
                    origin: o(),
                    key: key(),
                }),
            },
            "HTTP.CREDENTIALS.USERNAME" => {
                l.user = Some(Sourced::new(v.to_string(), o()));
                l.user_from_username = line.key == "HTTP.CREDENTIALS.USERNAME";
            }
            "HTTP.CREDENTIALS.PASSWORD" => {
                l.pass = Some(Sourced::new(Secret::new(v.to_string()), o()))
            }
            "HTTP.CREDENTIALS.USERPASSWORD" => {
                let bad = |reason| RcError::BadCredentials {
                    origin: o(),
                    key: key(),
                    reason,
                };
                match v.split_once(':') {
                    None => errors.push(bad("expected user:password (escape `:` as %3A)")),
                    Some((u, p)) => match (decode(u), decode(p)) {
                        (Some(u), Some(p)) => {
                            l.userpass =
                                Some((Sourced::new(u, o()), Sourced::new(Secret::new(p), o())))
                        }
                        _ => errors.push(bad("%XX escapes do not decode to UTF-8")),
                    },
                }
            }
            _ => {
                l.unsupported
                    .insert(slot.clone(), Sourced::new(line.written.clone(), o()));
            }
        }
    }
    if let Some(val) = validate {
        let s = &mut l.settings;
        if s.ssl_verifypeer.is_none() {
            s.ssl_verifypeer = Some(val.clone());
        }
        if s.ssl_verifyhost.is_none() {
            s.ssl_verifyhost = Some(val);
        }
    }
    l
}

/// Keys whose empty value (`KEY=`) is ignored, as if the line were not there.
const NEED_VALUE: &[&str] = &[
    "HTTP.COOKIEJAR",
    "HTTP.NETRC",
    "HTTP.SSL.CERTIFICATE",
    "HTTP.SSL.KEY",
    "HTTP.SSL.CAINFO",
    "HTTP.SSL.CAPATH",
    "HTTP.PROXY.SERVER",
];

/// Above this many scopes for one host, no intersection scopes are added (fuzz guard).
const MAX_SCOPES_PER_HOST: usize = 512;
/// Intersection scopes stop being added past this many scopes for one host.
const MAX_SCOPES_WITH_INTERSECTIONS: usize = 4096;

/// Merges parsed files (highest precedence first, as [`discover`] returns them) into rules.
///
/// * **Same key, same scope**: the earlier file in `files` wins; within one file the last line
///   wins (as in netCDF-C; the earlier line gets a warning). Aliases count as the same key.
/// * **Different scopes**: the more specific scope wins, whatever file it is in.
/// * **One rule per distinct scope**, plus, where two scopes overlap without one containing the
///   other (`[host:8080]` and `[http://host/data]`), a rule for their intersection, so that the
///   most specific matching rule always contains everything that applies. Every rule's settings
///   include what it inherits from the scopes that contain it. Sorted most specific first.
/// * **Credentials**, per rule, after inheritance: if both `HTTP.CREDENTIALS.USERNAME` (or
///   `.USER`) and `HTTP.CREDENTIALS.PASSWORD` apply (each from the most specific scope that sets
///   it; they may come from different scopes), that literal pair is used and any
///   `HTTP.CREDENTIALS.USERPASSWORD` is ignored, at whatever scope it is (a warning says so).
///   Otherwise the most specific `USERPASSWORD` is used: split at the first `:`, each half
///   `%XX`-decoded. Otherwise whichever of username/password is set alone is reported alone.
///   This is netCDF-C's rule.
/// * **Empty values** (`KEY=`) of path keys and `HTTP.PROXY.SERVER` are ignored with a
///   warning, as if the line were absent. Other keys keep the empty string (an empty password
///   is a password); an empty boolean or number is an error.
/// * **Errors** (bad boolean, bad number, bad `USERPASSWORD`) are reported for the lines that
///   take effect, each once; the setting is then left unset.
pub fn resolve(files: &[RcFile]) -> (Vec<RcRule>, Vec<Diagnostic>, Vec<RcError>) {
    resolve_in(files, None)
}

/// The rc files' netCDF-C 4.9 compatibility notes that need more than one line: the same key
/// for the same scope in a `.daprc` and a `.dodsrc` of one directory, with different values
/// (authproxy, as documented, uses `.daprc`; 4.9.0 loads `.dodsrc` last and uses it).
fn daprc_dodsrc_notes(files: &[RcFile], warnings: &mut Vec<Diagnostic>) {
    let name = |f: &RcFile| {
        f.path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
    };
    // The line that takes effect per (scope, canonical key) in one file: the last one.
    let last = |f: &'_ RcFile| {
        let mut m: BTreeMap<(RcScope, String), usize> = BTreeMap::new();
        for (i, l) in f.lines.iter().enumerate() {
            let canon = canonical_key(&l.key);
            if l.value.is_empty() && NEED_VALUE.contains(&canon) {
                continue;
            }
            m.insert((l.scope.clone(), canon.to_string()), i);
        }
        m
    };
    for daprc in files
        .iter()
        .filter(|f| name(f).as_deref() == Some(".daprc"))
    {
        let Some(dir) = daprc.path.parent() else {
            continue;
        };
        let Some(dodsrc) = files.iter().find(|f| {
            name(f).as_deref() == Some(".dodsrc")
                && f.path.parent().is_some_and(|d| same_dir(d, dir))
        }) else {
            continue;
        };
        let theirs = last(dodsrc);
        for (slot, i) in last(daprc) {
            let Some(j) = theirs.get(&slot) else {
                continue;
            };
            let (a, b) = (&daprc.lines[i], &dodsrc.lines[*j]);
            if a.value != b.value {
                warnings.push(Diagnostic::new(
                    a.origin.clone(),
                    format!(
                        "{}: {} sets it for the same [prefix] to another value; authproxy uses \
                         this line (.daprc over .dodsrc, as documented) but netCDF-C 4.9.0 loads \
                         .dodsrc last and uses that one",
                        a.key, b.origin
                    ),
                ));
            }
        }
    }
}

/// [`resolve`], with `home` (the daemon's home directory) for a leading `~`, `$HOME` or
/// `${HOME}` in path values (relative paths are relative to the rc file's directory).
pub fn resolve_in(
    files: &[RcFile],
    home: Option<&Path>,
) -> (Vec<RcRule>, Vec<Diagnostic>, Vec<RcError>) {
    let mut warnings: Vec<Diagnostic> = files.iter().flat_map(|f| f.warnings.clone()).collect();
    let mut errors = Vec::new();

    // Winning line per (scope, canonical key): lowest precedence first, later lines overwrite.
    let mut by_scope: BTreeMap<RcScope, BTreeMap<String, &RcLine>> = BTreeMap::new();
    for file in files.iter().rev() {
        let mut seen: BTreeMap<(&RcScope, &str), &RcLine> = BTreeMap::new();
        for line in &file.lines {
            let canon = canonical_key(&line.key);
            if line.value.is_empty() && NEED_VALUE.contains(&canon) {
                warnings.push(Diagnostic::new(
                    line.origin.clone(),
                    format!("{}: empty value; line ignored", line.key),
                ));
                continue;
            }
            if let Some(prev) = seen.insert((&line.scope, canon), line) {
                warnings.push(Diagnostic::new(
                    prev.origin.clone(),
                    format!(
                        "{}: set again for the same scope at line {}; this line is ignored",
                        prev.key, line.origin.line
                    ),
                ));
            }
            by_scope
                .entry(line.scope.clone())
                .or_default()
                .insert(canon.to_string(), line);
        }
    }

    let layers: BTreeMap<RcScope, Layer> = by_scope
        .iter()
        .map(|(scope, slots)| {
            let layer = build_layer(slots, home, &mut warnings, &mut errors);
            (scope.clone(), layer)
        })
        .collect();

    // Group scopes by host; close each group under intersection.
    let any_layer = layers.get(&RcScope::Any);
    let mut groups: BTreeMap<String, BTreeSet<RcScope>> = BTreeMap::new();
    for scope in layers.keys() {
        if let Some(h) = scope.host() {
            groups
                .entry(h.to_string())
                .or_default()
                .insert(scope.clone());
        }
    }
    // Credentials written without a `[prefix]`, wherever a rule inherits them.
    let unscoped: Vec<Origin> = any_layer
        .map(|l| {
            let pass = l.pass.iter().map(|p| p.origin.clone());
            pass.chain(l.userpass.iter().map(|(_, p)| p.origin.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut rules = Vec::new();
    if let Some(l) = any_layer {
        rules.push(finish(RcScope::Any, l.clone(), &unscoped, &mut warnings));
    }
    for (host, mut set) in groups {
        // Close the group under intersection (bounded: a fuzz guard, far above real files).
        let mut complete = set.len() <= MAX_SCOPES_PER_HOST;
        if complete {
            'closure: loop {
                let list: Vec<RcScope> = set.iter().cloned().collect();
                let mut added = false;
                for (i, a) in list.iter().enumerate() {
                    for b in &list[i + 1..] {
                        if a.contains(b) || b.contains(a) {
                            continue;
                        }
                        if let Some(x) = a.intersect(b) {
                            added |= set.insert(x);
                        }
                        if set.len() > MAX_SCOPES_WITH_INTERSECTIONS {
                            complete = false;
                            break 'closure;
                        }
                    }
                }
                if !added {
                    break;
                }
            }
        }
        if !complete {
            if let Some(origin) = set
                .iter()
                .find_map(|s| by_scope.get(s))
                .and_then(|slots| slots.values().next())
                .map(|l| l.origin.clone())
            {
                warnings.push(Diagnostic::new(
                    origin,
                    format!(
                        "too many [prefixes] for host {host}; overlapping prefixes may not combine"
                    ),
                ));
            }
        }
        for target in set {
            let mut eff = Layer::default();
            for a in target.ancestors() {
                if let Some(l) = layers.get(&a) {
                    eff.overlay(l);
                }
            }
            rules.push(finish(target, eff, &unscoped, &mut warnings));
        }
    }
    rules.sort_by(|a, b| {
        (Reverse(a.scope.specificity()), &a.scope).cmp(&(Reverse(b.scope.specificity()), &b.scope))
    });

    daprc_dodsrc_notes(files, &mut warnings);

    let order: BTreeMap<&Path, usize> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_path(), i))
        .collect();
    let rank = |o: &Origin| (order.get(&*o.path).copied().unwrap_or(usize::MAX), o.line);
    let mut seen = HashSet::new();
    warnings.retain(|w| seen.insert((w.origin.to_string(), w.message.clone())));
    warnings.sort_by_key(|w| rank(&w.origin));
    errors.sort_by_key(|e| rank(e.origin()));
    (rules, warnings, errors)
}

/// Resolves credentials and flattens a fully inherited layer into a rule. `unscoped` are the
/// origins of the credential lines without a `[prefix]`.
fn finish(
    scope: RcScope,
    eff: Layer,
    unscoped: &[Origin],
    warnings: &mut Vec<Diagnostic>,
) -> RcRule {
    let Layer {
        mut settings,
        user,
        user_from_username,
        pass,
        userpass,
        unsupported,
    } = eff;
    // A scoped USERPASSWORD beats an unscoped USERNAME/PASSWORD pair: the pair names no
    // host, so by default it goes nowhere, and the user named this host.
    let pair_unscoped = pass.as_ref().is_some_and(|p| unscoped.contains(&p.origin));
    let up_scoped = userpass
        .as_ref()
        .is_some_and(|(_, p)| !unscoped.contains(&p.origin));
    let (user, pass) = if pair_unscoped && up_scoped && user.is_some() {
        if let Some(p) = &pass {
            warnings.push(Diagnostic::new(
                p.origin.clone(),
                format!(
                    "HTTP.CREDENTIALS.USERNAME and PASSWORD without a [prefix] are not used for \
                     {scope}: its HTTP.CREDENTIALS.USERPASSWORD applies there"
                ),
            ));
        }
        (None, None)
    } else {
        (user, pass)
    };
    match (user, pass, userpass) {
        (Some(u), Some(p), up) => {
            // Seed 002: the literal pair wins. So it does in netCDF-C 4.9.0 when the user is
            // written `USER`; written `USERNAME` (which 4.9 does not read), 4.9.0 sends
            // USERPASSWORD (both measured with ncdump 4.9.0). Say so where the two disagree.
            if let Some((upu, upp)) = up.filter(|_| user_from_username) {
                let differs = if upu.value != u.value {
                    Some("a different user")
                } else if upp.value.expose() != p.value.expose() {
                    Some("the same user with a different password")
                } else {
                    None
                };
                if let Some(differs) = differs {
                    warnings.push(Diagnostic::new(
                        upu.origin,
                        format!(
                            "HTTP.CREDENTIALS.USERPASSWORD names {differs} than \
                             HTTP.CREDENTIALS.USERNAME/PASSWORD ({}, {}); authproxy sends \
                             USERNAME/PASSWORD (as documented) but netCDF-C 4.9.0, which does \
                             not read USERNAME, sends USERPASSWORD",
                            u.origin, p.origin
                        ),
                    ));
                }
            }
            settings.username = Some(u);
            settings.password = Some(p);
        }
        (u, p, Some((up_user, up_pass))) => {
            // A lone USERNAME or PASSWORD is never completed from a USERPASSWORD line.
            if let Some(lone) = u
                .as_ref()
                .map(|u| &u.origin)
                .or(p.as_ref().map(|p| &p.origin))
            {
                warnings.push(Diagnostic::new(
                    lone.clone(),
                    format!(
                        "{} without {} for the same hosts is not used; \
                         HTTP.CREDENTIALS.USERPASSWORD applies there",
                        if u.is_some() {
                            "HTTP.CREDENTIALS.USERNAME"
                        } else {
                            "HTTP.CREDENTIALS.PASSWORD"
                        },
                        if u.is_some() {
                            "HTTP.CREDENTIALS.PASSWORD"
                        } else {
                            "HTTP.CREDENTIALS.USERNAME"
                        },
                    ),
                ));
            }
            settings.username = Some(up_user);
            settings.password = Some(up_pass);
        }
        (Some(u), None, None) => {
            warnings.push(Diagnostic::new(
                u.origin,
                "HTTP.CREDENTIALS.USERNAME without HTTP.CREDENTIALS.PASSWORD for the \
                          same hosts; no credentials are sent"
                    .to_owned(),
            ));
        }
        (None, Some(p), None) => {
            warnings.push(Diagnostic::new(
                p.origin,
                "HTTP.CREDENTIALS.PASSWORD without HTTP.CREDENTIALS.USERNAME for the \
                          same hosts; no credentials are sent"
                    .to_owned(),
            ));
        }
        (None, None, None) => {}
    }
    settings.credentials_unscoped = settings
        .password
        .as_ref()
        .is_some_and(|p| unscoped.contains(&p.origin));
    settings.unsupported = unsupported.into_values().collect();
    RcRule { scope, settings }
}

/// The rule for a request: the most specific one whose scope matches. `port` is the effective
/// port (scheme default applied). Expects `rules` as [`resolve`] returns them.
pub fn select<'a>(
    rules: &'a [RcRule],
    scheme: &str,
    host: &str,
    port: u16,
    path: &str,
) -> Option<&'a RcRule> {
    rules
        .iter()
        .filter(|r| r.scope.matches(scheme, host, port, path))
        .max_by_key(|r| r.scope.specificity())
}

/// [`select`] for a parsed URL (default ports applied; no port and no known default → 0).
pub fn select_url<'a>(rules: &'a [RcRule], url: &url::Url) -> Option<&'a RcRule> {
    let host = url.host_str()?;
    let port = url.port_or_known_default().unwrap_or(0);
    select(rules, url.scheme(), host, port, url.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> RcFile {
        parse_bytes(Path::new("/rc/.daprc"), text.as_bytes())
    }

    fn res(texts: &[(&str, &str)]) -> (Vec<RcRule>, Vec<Diagnostic>, Vec<RcError>) {
        let files: Vec<RcFile> = texts
            .iter()
            .map(|(path, text)| parse_bytes(Path::new(path), text.as_bytes()))
            .collect();
        resolve(&files)
    }

    fn host(h: &str, port: Option<u16>) -> RcScope {
        RcScope::Host {
            host: h.into(),
            port,
        }
    }

    fn url(scheme: &str, h: &str, port: Option<u16>, path: &str) -> RcScope {
        RcScope::Url {
            scheme: scheme.into(),
            host: h.into(),
            port,
            path: path.into(),
        }
    }

    /// The warnings that are not netCDF-C 4.9 compatibility notes.
    fn own(warnings: &[Diagnostic]) -> Vec<&Diagnostic> {
        warnings
            .iter()
            .filter(|w| !w.message.starts_with("netCDF-C 4.9"))
            .collect()
    }

    fn pw(s: &Option<Sourced<Secret<String>>>) -> Option<&str> {
        s.as_ref().map(|s| s.value.expose().as_str())
    }

    fn unsupported(r: &RcRule) -> Vec<(&str, usize)> {
        r.settings
            .unsupported
            .iter()
            .map(|u| (u.value.as_str(), u.origin.line))
            .collect()
    }

    // --- seed 002 (netCDF-C docs/auth.md) examples -------------------------------------------

    #[test]
    fn seed_host_and_host_port_examples() {
        let f =
            p("[remotetest.unidata.ucar.edu]HTTP.VERBOSE=1\n[fake.ucar.edu:9090]HTTP.VERBOSE=0\n");
        // authproxy reads the documented [host] and [host:port] forms; netCDF-C 4.9 (measured:
        // 4.9.0) skips them, and one warning per file says so.
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert_eq!(f.warnings[0].origin.line, 1);
        let m = &f.warnings[0].message;
        assert!(
            m.starts_with("netCDF-C 4.9 logs \"Malformed [url]\""),
            "{m}"
        );
        assert!(m.ends_with("Lines: 1, 2"), "{m}");
        assert_eq!(f.lines[0].scope, host("remotetest.unidata.ucar.edu", None));
        assert_eq!(f.lines[0].key, "HTTP.VERBOSE");
        assert_eq!(f.lines[0].value, "1");
        assert_eq!(f.lines[1].scope, host("fake.ucar.edu", Some(9090)));
        assert_eq!(f.lines[1].value, "0");

        let (rules, _, errors) = resolve(&[f]);
        assert!(errors.is_empty());
        let r = select(
            &rules,
            "http",
            "remotetest.unidata.ucar.edu",
            80,
            "/thredds/dodsC/testdata/testData.nc",
        )
        .unwrap();
        assert_eq!(unsupported(r), vec![("HTTP.VERBOSE", 1)]);
        let u = url::Url::parse("http://fake.ucar.edu:9090/dts/test.01").unwrap();
        let r = select_url(&rules, &u).unwrap();
        assert_eq!(unsupported(r), vec![("HTTP.VERBOSE", 2)]);
        // [fake.ucar.edu:9090] does not apply to another port; nothing else does either.
        assert!(select(&rules, "http", "fake.ucar.edu", 80, "/").is_none());
    }

    #[test]
    fn seed_esg_client_certificate_example() {
        let f = p("HTTP.COOKIEJAR=~/.dods_cookies\n\
                   HTTP.NETRC=~/.netrc\n\
                   HTTP.SSL.CERTIFICATE=~/esgkeystore\n\
                   HTTP.SSL.KEY=~/esgkeystore\n\
                   HTTP.SSL.CAPATH=~/.globus\n\
                   HTTP.SSL.VALIDATE=1\n");
        assert!(f.warnings.is_empty());
        let (rules, warnings, errors) = resolve_in(&[f], Some(Path::new("/home/esg")));
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 1);
        let s = &select(&rules, "https", "esgf.example.org", 443, "/")
            .unwrap()
            .settings;
        // `~/` is the daemon's home, as the user meant (netCDF-C would open `./~/…`).
        let v = |p: &Option<Sourced<PathBuf>>| p.as_ref().unwrap().value.clone();
        assert_eq!(v(&s.cookiejar), Path::new("/home/esg/.dods_cookies"));
        assert_eq!(v(&s.netrc), Path::new("/home/esg/.netrc"));
        assert_eq!(v(&s.ssl_certificate), Path::new("/home/esg/esgkeystore"));
        assert_eq!(v(&s.ssl_key), Path::new("/home/esg/esgkeystore"));
        assert_eq!(v(&s.ssl_capath), Path::new("/home/esg/.globus"));
        let lines: Vec<usize> = warnings.iter().map(|w| w.origin.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5], "{warnings:?}");
        for w in &warnings {
            assert!(
                w.message.contains("`~` is the daemon's home directory"),
                "{w}"
            );
            assert!(w.message.contains("netCDF-C 4.9 opens `./~/…`"), "{w}");
        }
        assert!(warnings[1].message.starts_with("HTTP.NETRC: "));
        assert!(s.ssl_verifypeer.as_ref().unwrap().value);
        assert!(s.ssl_verifyhost.as_ref().unwrap().value);
        assert_eq!(s.ssl_verifyhost.as_ref().unwrap().origin.line, 6);
        assert_eq!(
            s.cookiejar.as_ref().unwrap().origin.to_string(),
            "/rc/.daprc:1"
        );
    }

    #[test]
    fn home_forms_and_relative_paths_in_path_values() {
        let home = Some(Path::new("/home/u"));
        let f = parse_bytes(
            Path::new("/etc/esg/.dodsrc"),
            b"HTTP.NETRC=$HOME/.netrc\n\
              HTTP.COOKIEJAR=${HOME}/.urs_cookies\n\
              HTTP.SSL.CAPATH=~\n\
              HTTP.SSL.CAINFO=certs/ca.pem\n\
              HTTP.SSL.CERTIFICATE=/abs/cert.pem\n\
              HTTP.SSL.KEY=~other/key.pem\n\
              [h]HTTP.NETRC=$HOMEDIR/x\n",
        );
        let (rules, warnings, errors) = resolve_in(std::slice::from_ref(&f), home);
        assert!(errors.is_empty());
        let any = rules.iter().find(|r| r.scope == RcScope::Any).unwrap();
        let s = &any.settings;
        let v = |p: &Option<Sourced<PathBuf>>| p.as_ref().unwrap().value.clone();
        assert_eq!(v(&s.netrc), Path::new("/home/u/.netrc"));
        assert_eq!(v(&s.cookiejar), Path::new("/home/u/.urs_cookies"));
        assert_eq!(v(&s.ssl_capath), Path::new("/home/u"));
        // Relative: against the rc file's directory, not the working directory.
        assert_eq!(v(&s.ssl_cainfo), Path::new("/etc/esg/certs/ca.pem"));
        assert_eq!(v(&s.ssl_certificate), Path::new("/abs/cert.pem"));
        // `~user` and `$HOMEDIR` are not the home forms: plain relative paths.
        assert_eq!(v(&s.ssl_key), Path::new("/etc/esg/~other/key.pem"));
        let h = select(&rules, "http", "h", 80, "/").unwrap();
        assert_eq!(v(&h.settings.netrc), Path::new("/etc/esg/$HOMEDIR/x"));
        let notes: Vec<(usize, &str)> = warnings
            .iter()
            .filter(|w| !w.message.contains("Malformed [url]"))
            .map(|w| (w.origin.line, w.message.as_str()))
            .collect();
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert_eq!(notes[0].0, 1);
        assert!(notes[0].1.contains("does not expand `$HOME`"));
        assert_eq!(notes[1].0, 2);
        assert!(notes[1].1.contains("does not expand `${HOME}`"));
        assert_eq!(notes[2].0, 3);
        assert!(notes[2].1.contains("./~/"));
        // No home known: not expanded, said so, read against the rc file's directory.
        let (rules, warnings, _) = resolve_in(&[f], None);
        let any = rules.iter().find(|r| r.scope == RcScope::Any).unwrap();
        assert_eq!(v(&any.settings.netrc), Path::new("/etc/esg/$HOME/.netrc"));
        assert!(warnings[0].message.contains("cannot be expanded"));
    }

    #[test]
    fn daprc_beside_dodsrc_warns_only_where_they_disagree() {
        let (rules, warnings, _) = res(&[
            (
                "/home/u/.daprc",
                "[http://h/d]HTTP.CREDENTIALS.USER=alice\n\
                 [http://h/d]HTTP.CREDENTIALS.PASSWORD=pw\n\
                 HTTP.TIMEOUT=30\n\
                 HTTP.NETRC=/n\n",
            ),
            (
                "/home/u/.dodsrc",
                "[http://h/d]HTTP.CREDENTIALS.USER=bob\n\
                 [http://h/d]HTTP.CREDENTIALS.PASSWORD=pw\n\
                 [http://h/e]HTTP.CREDENTIALS.USER=carol\n\
                 HTTP.TIMEOUT=10\n\
                 HTTP.TIMEOUT=30\n\
                 HTTP.NETRC=/n\n",
            ),
            // Another directory: 4.9 loads it in the same order authproxy ranks it.
            ("/work/.dodsrc", "[http://h/d]HTTP.CREDENTIALS.USER=dave\n"),
        ]);
        let s = &select(&rules, "http", "h", 80, "/d").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "alice");
        let notes: Vec<&Diagnostic> = warnings
            .iter()
            .filter(|w| w.message.contains("netCDF-C 4.9.0 loads .dodsrc last"))
            .collect();
        // Only the user differs for the same key and scope (TIMEOUT ends up equal).
        assert_eq!(notes.len(), 1, "{warnings:?}");
        assert_eq!(notes[0].origin.to_string(), "/home/u/.daprc:1");
        assert!(notes[0].message.contains("/home/u/.dodsrc:1"));
        assert!(!notes[0].message.contains("alice") && !notes[0].message.contains("bob"));
    }

    #[test]
    fn userpassword_beside_username_password_warns_only_when_they_differ() {
        let note = |w: &Diagnostic| w.message.contains("netCDF-C 4.9.0, which does not read");
        // The same credentials: nothing to say.
        let (_, warnings, _) = resolve(&[p("[http://h/d]HTTP.CREDENTIALS.USERPASSWORD=me:pw\n\
             [http://h/d]HTTP.CREDENTIALS.USERNAME=me\n\
             [http://h/d]HTTP.CREDENTIALS.PASSWORD=pw\n")]);
        assert!(!warnings.iter().any(note), "{warnings:?}");
        // Written USER, netCDF-C 4.9.0 also sends the pair (measured): nothing to say.
        let (_, warnings, _) = resolve(&[p("[http://h/d]HTTP.CREDENTIALS.USERPASSWORD=old:pw\n\
             [http://h/d]HTTP.CREDENTIALS.USER=new\n\
             [http://h/d]HTTP.CREDENTIALS.PASSWORD=pw\n")]);
        assert!(!warnings.iter().any(note), "{warnings:?}");
        // Written USERNAME, which 4.9 does not read: 4.9.0 sends USERPASSWORD.
        let (rules, warnings, _) =
            resolve(&[p("[http://h/d]HTTP.CREDENTIALS.USERPASSWORD=old:pw\n\
             [http://h/d]HTTP.CREDENTIALS.USERNAME=new\n\
             [http://h/d]HTTP.CREDENTIALS.PASSWORD=pw\n")]);
        let hits: Vec<_> = warnings.iter().filter(|w| note(w)).collect();
        assert_eq!(hits.len(), 1, "{warnings:?}");
        assert_eq!(hits[0].origin.line, 1);
        assert!(hits[0].message.contains("a different user"));
        assert!(!hits[0].message.contains("old") && !hits[0].message.contains("new"));
        // authproxy keeps seed 002's rule.
        let s = &select(&rules, "http", "h", 80, "/d").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "new");
        // Inherited from a wider scope, decoded before comparing.
        let (_, warnings, _) = resolve(&[p("HTTP.CREDENTIALS.USERPASSWORD=me:p%3A1\n\
             HTTP.CREDENTIALS.USERNAME=me\n\
             [http://h/d]HTTP.CREDENTIALS.PASSWORD=p:2\n")]);
        let hits: Vec<_> = warnings.iter().filter(|w| note(w)).collect();
        assert_eq!(hits.len(), 1, "{warnings:?}");
        assert!(hits[0]
            .message
            .contains("the same user with a different password"));
        let (_, warnings, _) = resolve(&[p("HTTP.CREDENTIALS.USERPASSWORD=me:p%3A1\n\
             HTTP.CREDENTIALS.USERNAME=me\n\
             HTTP.CREDENTIALS.PASSWORD=p:1\n")]);
        assert!(!warnings.iter().any(note), "{warnings:?}");
    }

    #[test]
    fn seed_netrc_placeholder_and_template_lines() {
        // "HTTP.NETRC=<path to netrc file>" is read literally.
        let f = p("HTTP.NETRC=<path to netrc file>\n");
        assert_eq!(f.lines[0].value, "<path to netrc file>");
        // The format template "[<host:port>]<key>=<value>" is not a valid prefix: a warning.
        let f = p("[<host:port>]<key>=<value>\n");
        assert!(f.lines.is_empty());
        assert_eq!(f.warnings.len(), 1);
        assert!(!f.warnings[0].message.contains("<value>"));
        // A .netrc line pasted into an rc file: a warning that does not echo the password.
        let f = p("machine mmmmmm login xxxxxx password yyyyyy\n");
        assert!(f.lines.is_empty());
        assert_eq!(f.warnings[0].origin.line, 1);
        assert!(!f.warnings[0].message.contains("yyyyyy"));
    }

    #[test]
    fn seed_key_table_aliases_and_deprecation() {
        let f = p("HTTP.COOKIEFILE=/tmp/c1\n\
                   HTTP.PROXY_SERVER=http://u:p@proxy:3128\n\
                   HTTP.CREDENTIALS.USERPASSWORD=user:pwd\n\
                   HTTP.SSL.KEYPASSWORD=kp\n\
                   HTTP.SSL.CAINFO=/etc/ca.pem\n\
                   HTTP.SSL.VERIFYPEER=0\n");
        assert_eq!(f.warnings.len(), 1);
        assert_eq!(f.warnings[0].origin.line, 2);
        assert!(f.warnings[0].message.contains("deprecated"));
        assert!(!f.warnings[0].message.contains("u:p"));
        let (rules, _, errors) = resolve(&[f]);
        assert!(errors.is_empty());
        let s = &rules[0].settings;
        assert_eq!(s.cookiejar.as_ref().unwrap().value, Path::new("/tmp/c1"));
        assert_eq!(pw(&s.proxy_server), Some("http://u:p@proxy:3128"));
        assert_eq!(s.username.as_ref().unwrap().value, "user");
        assert_eq!(pw(&s.password), Some("pwd"));
        assert_eq!(pw(&s.ssl_keypassword), Some("kp"));
        assert_eq!(
            s.ssl_cainfo.as_ref().unwrap().value,
            Path::new("/etc/ca.pem")
        );
        assert!(!s.ssl_verifypeer.as_ref().unwrap().value);
        assert!(s.ssl_verifyhost.is_none());
        assert!(s.unsupported.is_empty());
    }

    #[test]
    fn cookie_aliases_are_one_setting() {
        let f = p("HTTP.COOKIE_JAR=/a\nHTTP.COOKIE_FILE=/b\n");
        let (rules, warnings, _) = resolve(&[f]);
        assert_eq!(
            rules[0].settings.cookiejar.as_ref().unwrap().value,
            Path::new("/b")
        );
        assert!(warnings.iter().any(|w| w.origin.line == 1));
    }

    // --- line forms ------------------------------------------------------------------------

    #[test]
    fn all_line_forms() {
        let f = p("A=1\n\
                   [Host.Example.ORG]B=2\n\
                   [host.example.org:8443]C=3\n\
                   [HTTPS://Host.Example.org/Data/]D=4\n\
                   [https://host.example.org:8443/]E=5\n\
                   [http://[::1]:8080/x]F=6\n\
                   [[::1]]G=7\n\
                   [https://user:pw@h/p]H=8\n");
        let scopes: Vec<_> = f.lines.iter().map(|l| l.scope.clone()).collect();
        assert_eq!(
            scopes,
            vec![
                RcScope::Any,
                host("host.example.org", None),
                host("host.example.org", Some(8443)),
                url("https", "host.example.org", None, "/Data"),
                url("https", "host.example.org", Some(8443), ""),
                url("http", "[::1]", Some(8080), "/x"),
                host("[::1]", None),
                url("https", "h", None, "/p"),
            ]
        );
        let lines: Vec<usize> = f.warnings.iter().map(|w| w.origin.line).collect();
        assert_eq!(lines, vec![2, 5, 8], "{:?}", f.warnings);
        assert!(f.warnings[0].message.ends_with("Lines: 2, 3, 7"));
        assert!(f.warnings[1].message.contains("without a path"));
        assert!(f.warnings[2].message.contains("user info"));
        assert!(!f.warnings[2].message.contains("pw"));
        assert_eq!(scopes[2].to_string(), "[host.example.org:8443]");
        assert_eq!(scopes[3].to_string(), "[https://host.example.org/Data]");
        assert_eq!(scopes[0].to_string(), "(unscoped)");
    }

    #[test]
    fn malformed_lines_are_warnings() {
        let f = p("[host.example.org HTTP.VERBOSE=1\n\
                   HTTP.VERBOSE\n\
                   =1\n\
                   [host:notaport]A=1\n\
                   [host:99999]A=1\n\
                   [host/path]A=1\n\
                   []A=1\n\
                   [1bad://h]A=1\n\
                   [host]\n\
                   GOOD=1\n");
        assert_eq!(f.lines.len(), 1);
        assert_eq!(f.lines[0].key, "GOOD");
        let lines: Vec<usize> = f.warnings.iter().map(|w| w.origin.line).collect();
        assert_eq!(lines, (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn split_at_first_equals_and_empty_values() {
        let f = p("HTTP.CREDENTIALS.PASSWORD=a=b==\nHTTP.USERAGENT=\n");
        assert_eq!(f.lines[0].value, "a=b==");
        assert_eq!(f.lines[1].value, "");
        assert!(f.warnings.is_empty());
    }

    #[test]
    fn keys_are_case_insensitive_and_stored_uppercased() {
        let f = p("http.ssl.cainfo=/ca.pem\n[h]Http.Timeout=5\n");
        assert_eq!(f.lines[0].key, "HTTP.SSL.CAINFO");
        assert_eq!(f.lines[1].key, "HTTP.TIMEOUT");
        let (rules, _, errors) = resolve(&[f]);
        assert!(errors.is_empty());
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(s.timeout.as_ref().unwrap().value, Duration::from_secs(5));
        assert!(s.ssl_cainfo.is_some());
    }

    #[test]
    fn crlf_comments_blank_lines_and_bom() {
        let f = p("# comment\r\n\r\n   \t\r\n  # indented comment\r\nHTTP.SSL.CAINFO=/ca.pem\r\n[h]HTTP.NETRC=/n\r\nlast=x");
        assert!(own(&f.warnings).is_empty(), "{:?}", f.warnings);
        assert_eq!(f.lines.len(), 3);
        assert_eq!(f.lines[0].value, "/ca.pem");
        assert_eq!(f.lines[0].origin.line, 5);
        assert_eq!(f.lines[1].value, "/n");
        assert_eq!(f.lines[2].key, "LAST");
        // '#' that is not the first non-blank is part of the value.
        let f = p("HTTP.CREDENTIALS.PASSWORD=p#ss\n");
        assert_eq!(f.lines[0].value, "p#ss");
    }

    #[test]
    fn blanks_around_key_and_equals_are_trimmed_without_a_warning() {
        // netCDF-C 4.9.0 trims these as authproxy does (measured): no warning.
        for text in [
            "HTTP.SSL.CAINFO = /ca.pem",
            "HTTP.SSL.CAINFO =/ca.pem",
            "HTTP.SSL.CAINFO= /ca.pem",
            "[http://h/d] HTTP.SSL.CAINFO=/ca.pem",
            "[ http://h/d ]HTTP.SSL.CAINFO=/ca.pem",
            "HTTP.SSL.CAINFO\t=\t/ca.pem\t",
        ] {
            let f = p(text);
            assert_eq!(f.lines.len(), 1, "{text}");
            assert_eq!(f.lines[0].key, "HTTP.SSL.CAINFO");
            assert_eq!(f.lines[0].value, "/ca.pem");
            assert!(f.warnings.is_empty(), "{text}: {:?}", f.warnings);
        }
        let f = p("HTTP.USERAGENT=my agent  ");
        assert!(f.warnings.is_empty());
        assert_eq!(f.lines[0].value, "my agent");
    }

    #[test]
    fn leading_blanks_warn_naming_netcdf_4_9_2() {
        for text in [
            "  HTTP.SSL.CAINFO=/ca.pem",
            "\tHTTP.SSL.CAINFO\t=\t/ca.pem\t",
            "   [http://h/d]HTTP.SSL.CAINFO=/ca.pem",
        ] {
            let f = p(text);
            assert_eq!(f.lines.len(), 1, "{text}");
            assert_eq!(f.lines[0].value, "/ca.pem");
            assert_eq!(f.warnings.len(), 1, "{text}");
            let m = &f.warnings[0].message;
            assert!(m.contains("netCDF-C 4.9.2 and later"), "{m}");
            assert!(m.contains("4.9.0 and authproxy trim"), "{m}");
            assert!(!m.contains("/ca.pem"));
        }
    }

    // --- netCDF-C 4.9 compatibility notes ------------------------------------------------

    fn compat(f: &RcFile) -> Vec<(usize, &str)> {
        f.warnings
            .iter()
            .filter(|w| w.message.contains("netCDF-C 4.9"))
            .map(|w| (w.origin.line, w.message.as_str()))
            .collect()
    }

    #[test]
    fn pathless_url_prefix_warns_that_4_9_drops_the_rest() {
        let f = p("HTTP.COOKIEJAR=/tmp/jar\n\
                   [https://urs.earthdata.nasa.gov]HTTP.CREDENTIALS.USER=me\n\
                   [https://urs.earthdata.nasa.gov]HTTP.CREDENTIALS.PASSWORD=Secret1\n\
                   [https://data.example.org/opendap/ds]HTTP.CREDENTIALS.USER=me\n\
                   [https://data.example.org/]HTTP.CREDENTIALS.USER=me\n");
        // One note per file, at the first such line (4.9 reads nothing after it); `/` alone
        // is no path either (measured with ncdump 4.9.0).
        let notes = compat(&f);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, 2);
        assert!(notes[0].1.contains("every line after it (here from line 2"));
        assert!(notes[0].1.ends_with("Path-less prefixes at lines: 2, 3, 5"));
        assert!(!notes[0].1.contains("Secret1"));
        // authproxy reads them all.
        assert_eq!(f.lines.len(), 5);
        assert!(compat(&p("[https://h.org/d]HTTP.CREDENTIALS.USER=me\n")).is_empty());
    }

    #[test]
    fn username_key_warns_that_4_9_reads_user() {
        let f = p("[http://h.org/d]HTTP.CREDENTIALS.USERNAME=alice\n\
                   [http://h.org/d]HTTP.CREDENTIALS.PASSWORD=pw\n\
                   [http://h.org/e]HTTP.CREDENTIALS.USER=bob\n");
        let notes = compat(&f);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, 1);
        assert!(notes[0].1.contains("reads HTTP.CREDENTIALS.USER"));
        assert!(!notes[0].1.contains("alice"));
        let (rules, _, _) = resolve(&[f]);
        let s = &select(&rules, "http", "h.org", 80, "/d").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "alice");
    }

    #[test]
    fn bom_is_skipped_with_a_warning_that_names_it() {
        let f = p("\u{feff}HTTP.NETRC=/home/me/.netrc\r\nHTTP.COOKIEJAR=/home/me/.cookies\r\n");
        assert_eq!(f.lines.len(), 2);
        assert_eq!(f.lines[0].key, "HTTP.NETRC");
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert_eq!(f.warnings[0].origin.line, 1);
        assert!(f.warnings[0].message.contains("byte-order mark (BOM"));
        // A BOM before a comment: the comment is still a comment.
        let f = p("\u{feff}# my rc\nHTTP.NETRC=/n\n");
        assert_eq!(f.lines.len(), 1);
        assert_eq!(f.warnings.len(), 1);
    }

    #[test]
    fn glued_settings_warn_without_the_value() {
        // As NASAPrecipitation.jl writes it.
        let f = p("HTTP.COOKIEJAR=/home/u/.urs_cookiesHTTP.NETRC=/home/u/.netrc\n");
        assert_eq!(f.lines.len(), 1);
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        let m = &f.warnings[0].message;
        assert!(
            m.starts_with("HTTP.COOKIEJAR: the value contains `HTTP.NETRC=`"),
            "{m}"
        );
        assert!(!m.contains("/home/u"), "{m}");
        // In a secret, not even the key name found inside it is echoed.
        let f = p("HTTP.CREDENTIALS.PASSWORD=xHTTP.NETRC=y\nHTTP.CREDENTIALS.USER=u\n");
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].message.contains("`HTTP.<KEY>=`"));
        assert!(!f.warnings[0].message.contains("NETRC"));
        // Not glued: a URL or a password with "http." and no "=" after a key.
        let f =
            p("HTTP.PROXY.SERVER=http://proxy.example:8080\nHTTP.CREDENTIALS.PASSWORD=a=http.b\n");
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
    }

    #[test]
    fn curl_keys_warn_as_obsolete() {
        let f = p("CURL.VERBOSE=1\nCURL.SSL.VALIDATE=1\nHTTP.VERBOSE=1\n");
        let lines: Vec<usize> = f
            .warnings
            .iter()
            .filter(|w| w.message.contains("CURL.* keys are obsolete"))
            .map(|w| w.origin.line)
            .collect();
        assert_eq!(lines, vec![1, 2]);
        assert_eq!(f.warnings.len(), 2);
        // Not kept: the warning is the one place they are reported.
        assert_eq!(f.lines.len(), 1);
        assert_eq!(f.lines[0].key, "HTTP.VERBOSE");
    }

    #[test]
    fn libdap_keys_are_listed_once_per_file_not_accepted() {
        // A .dodsrc as libdap's getdap writes it, with one netCDF-C key.
        let f = p("# OPeNDAP client configuration file. See the OPeNDAP\n\
                   USE_CACHE=0\n\
                   MAX_CACHE_SIZE=20\n\
                   MAX_CACHED_OBJ=5\n\
                   IGNORE_EXPIRES=0\n\
                   CACHE_ROOT=/home/u/.dods_cache/\n\
                   DEFAULT_EXPIRES=86400\n\
                   ALWAYS_VALIDATE=0\n\
                   DEFLATE=0\n\
                   VALIDATE_SSL=1\n\
                   PROXY_SERVER=http,http://u:secret@proxy:3128\n\
                   NO_PROXY_FOR=http,localhost\n\
                   AIS_DATABASE=\n\
                   COOKIE_JAR=.dods_cookies\n\
                   HTTP.NETRC=/home/u/.netrc\n");
        assert_eq!(f.lines.len(), 1);
        assert_eq!(f.lines[0].key, "HTTP.NETRC");
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        let w = &f.warnings[0];
        assert_eq!(w.origin.line, 2);
        assert!(w.message.starts_with("libdap keys"), "{}", w.message);
        assert!(w.message.contains("USE_CACHE (line 2)"));
        assert!(w.message.contains("COOKIE_JAR (line 14)"));
        assert!(!w.message.contains("secret") && !w.message.contains("proxy:3128"));
        let (rules, _, _) = resolve(&[f]);
        assert!(rules[0].settings.unsupported.is_empty());
    }

    #[test]
    fn non_utf8_line_is_skipped_others_still_count() {
        let mut bytes = b"HTTP.SSL.CAINFO=/ca.pem\n".to_vec();
        bytes.extend_from_slice(b"HTTP.CREDENTIALS.PASSWORD=caf\xe9\n");
        bytes.extend_from_slice(b"# comment in latin-1: caf\xe9\n");
        bytes.extend_from_slice(b"HTTP.NETRC=/n\n");
        let f = parse_bytes(Path::new("/rc/.dodsrc"), &bytes);
        assert_eq!(f.lines.len(), 2);
        assert_eq!(f.lines[1].origin.line, 4);
        assert_eq!(f.warnings.len(), 1);
        assert_eq!(f.warnings[0].origin.line, 2);
        assert!(f.warnings[0].message.contains("UTF-8"));
    }

    #[test]
    fn unknown_http_keys_warn_other_keys_do_not() {
        let f = p("HTTP.SSL.VERIFYPER=1\nZARR.DIMENSION_SEPARATOR=/\nHTTP.KEEPALIVE=60/60\n");
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].message.contains("HTTP.SSL.VERIFYPER"));
        let (rules, _, errors) = resolve(&[f]);
        assert!(errors.is_empty());
        let names: Vec<_> = unsupported(&rules[0]).into_iter().map(|u| u.0).collect();
        assert_eq!(
            names,
            vec![
                "HTTP.KEEPALIVE",
                "HTTP.SSL.VERIFYPER",
                "ZARR.DIMENSION_SEPARATOR"
            ]
        );
    }

    #[test]
    fn debug_of_lines_hides_values() {
        let f = p("HTTP.CREDENTIALS.PASSWORD=hunter2\n");
        assert!(!format!("{f:?}").contains("hunter2"));
        let (rules, _, _) = resolve(&[f]);
        assert!(!format!("{rules:?}").contains("hunter2"));
    }

    // --- typed values and errors ------------------------------------------------------------

    #[test]
    fn bad_boolean_names_file_line_and_key_not_value() {
        let f = p("# x\nHTTP.SSL.VERIFYPEER=s3cr3t-maybe\n");
        let (rules, _, errors) = resolve(&[f]);
        assert_eq!(errors.len(), 1);
        let msg = errors[0].to_string();
        assert!(
            msg.starts_with("/rc/.daprc:2: HTTP.SSL.VERIFYPEER: "),
            "{msg}"
        );
        assert!(!msg.contains("s3cr3t"));
        assert!(matches!(errors[0], RcError::BadBool { .. }));
        assert!(rules[0].settings.ssl_verifypeer.is_none());
    }

    #[test]
    fn boolean_spellings() {
        for (v, want) in [
            ("1", true),
            ("0", false),
            ("TRUE", true),
            ("false", false),
            ("Yes", true),
            ("no", false),
            ("on", true),
            ("OFF", false),
        ] {
            let (rules, _, errors) = resolve(&[p(&format!("HTTP.SSL.VERIFYPEER={v}"))]);
            assert!(errors.is_empty(), "{v}");
            assert_eq!(
                rules[0].settings.ssl_verifypeer.as_ref().unwrap().value,
                want
            );
        }
        for v in ["", "2", "maybe", "-1"] {
            let (_, _, errors) = resolve(&[p(&format!("HTTP.SSL.VERIFYPEER={v}"))]);
            assert_eq!(errors.len(), 1, "{v:?}");
        }
        // curl's VERIFYHOST=2 is "verify".
        let (rules, _, errors) = resolve(&[p("HTTP.SSL.VERIFYHOST=2")]);
        assert!(errors.is_empty());
        assert!(rules[0].settings.ssl_verifyhost.as_ref().unwrap().value);
    }

    #[test]
    fn numbers() {
        let (rules, _, errors) = resolve(&[p("HTTP.TIMEOUT=30\nHTTP.CONNECTTIMEOUT=0\n")]);
        assert!(errors.is_empty());
        let s = &rules[0].settings;
        assert_eq!(s.timeout.as_ref().unwrap().value, Duration::from_secs(30));
        assert_eq!(s.connect_timeout.as_ref().unwrap().value, Duration::ZERO);
        let (_, _, errors) = resolve(&[p(
            "HTTP.TIMEOUT=-1\nHTTP.CONNECTTIMEOUT=10s\n[h]HTTP.TIMEOUT=99999999999999999999999\n",
        )]);
        assert_eq!(errors.len(), 3);
        assert_eq!(
            errors[1].to_string(),
            "/rc/.daprc:2: HTTP.CONNECTTIMEOUT: not a whole number of seconds"
        );
    }

    #[test]
    fn validate_sets_both_but_explicit_key_wins_in_same_scope() {
        let (rules, _, _) = resolve(&[p("HTTP.SSL.VALIDATE=1\nHTTP.SSL.VERIFYHOST=0\n")]);
        let s = &rules[0].settings;
        assert!(s.ssl_verifypeer.as_ref().unwrap().value);
        assert!(!s.ssl_verifyhost.as_ref().unwrap().value);
        // A more specific VALIDATE beats a less specific VERIFYPEER.
        let (rules, _, _) = resolve(&[p("HTTP.SSL.VERIFYPEER=1\n[h]HTTP.SSL.VALIDATE=0\n")]);
        let s = &select(&rules, "https", "h", 443, "/").unwrap().settings;
        assert!(!s.ssl_verifypeer.as_ref().unwrap().value);
    }

    #[test]
    fn userpassword_is_percent_decoded() {
        let (rules, _, errors) = resolve(&[p(
            "HTTP.CREDENTIALS.USERPASSWORD=user%40example.org:p%3Ass\n\
             [h]HTTP.CREDENTIALS.USERPASSWORD=a%3ab:c:d%2F%zz\n",
        )]);
        assert!(errors.is_empty());
        let s = &rules
            .iter()
            .find(|r| r.scope == RcScope::Any)
            .unwrap()
            .settings;
        assert_eq!(s.username.as_ref().unwrap().value, "user@example.org");
        assert_eq!(pw(&s.password), Some("p:ss"));
        // Split at the first raw ':', then decode; an invalid escape stays literal.
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "a:b");
        assert_eq!(pw(&s.password), Some("c:d/%zz"));
    }

    #[test]
    fn userpassword_errors_do_not_leak() {
        let (_, _, errors) = resolve(&[p(
            "HTTP.CREDENTIALS.USERPASSWORD=nocolonsecret\n[h]HTTP.CREDENTIALS.USERPASSWORD=u:%ff%fe\n",
        )]);
        assert_eq!(errors.len(), 2);
        for e in &errors {
            let m = e.to_string();
            assert!(m.contains("HTTP.CREDENTIALS.USERPASSWORD"));
            assert!(!m.contains("nocolonsecret") && !m.contains("%ff"));
        }
    }

    #[test]
    fn username_password_beat_userpassword() {
        // Same scope; USER is a synonym of USERNAME; the literal pair is not decoded.
        let (rules, warnings, _) = resolve(&[p("HTTP.CREDENTIALS.USERPASSWORD=enc:oded\n\
             HTTP.CREDENTIALS.USER=lit%40\n\
             HTTP.CREDENTIALS.PASSWORD=pa%3Ass\n")]);
        let s = &rules[0].settings;
        assert_eq!(s.username.as_ref().unwrap().value, "lit%40");
        assert_eq!(pw(&s.password), Some("pa%3Ass"));
        assert_eq!(s.password.as_ref().unwrap().origin.line, 3);
        // netCDF-C 4.9.0 reads the USER/PASSWORD pair the same way: nothing to warn about.
        assert!(!warnings.iter().any(|w| w.origin.line == 1), "{warnings:?}");
        // netCDF-C lets a global literal pair beat a host USERPASSWORD; authproxy sends no
        // unscoped credential by default, so the host's own line wins, with a warning.
        let (rules, warnings, _) = resolve(&[p("HTTP.CREDENTIALS.USERNAME=g\n\
             HTTP.CREDENTIALS.PASSWORD=gp\n\
             [h]HTTP.CREDENTIALS.USERPASSWORD=hu:hp\n")]);
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "hu");
        assert!(!s.credentials_unscoped);
        assert!(warnings
            .iter()
            .any(|w| w.origin.line == 2 && w.message.contains("not used for [h]")));
        let s = &select(&rules, "http", "other", 80, "/").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "g");
        assert!(s.credentials_unscoped);
        // A scoped literal pair beats an unscoped USERPASSWORD, and is scoped.
        let (rules, _, _) = resolve(&[p("HTTP.CREDENTIALS.USERPASSWORD=g:gp\n\
             [h]HTTP.CREDENTIALS.USERNAME=hu\n\
             [h]HTTP.CREDENTIALS.PASSWORD=hp\n")]);
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "hu");
        assert!(!s.credentials_unscoped);
        // A scoped PASSWORD with no USERNAME is not completed from USERPASSWORD: warned.
        let (rules, warnings, _) = resolve(&[p("HTTP.CREDENTIALS.USERPASSWORD=g:gp\n\
             [h]HTTP.CREDENTIALS.PASSWORD=hp\n")]);
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(pw(&s.password), Some("gp"));
        assert!(s.credentials_unscoped);
        assert!(warnings
            .iter()
            .any(|w| w.origin.line == 2
                && w.message.starts_with("HTTP.CREDENTIALS.PASSWORD without")));
        // Half a pair does not beat USERPASSWORD.
        let (rules, _, _) = resolve(&[p("HTTP.CREDENTIALS.USERNAME=only\n\
             [h]HTTP.CREDENTIALS.USERPASSWORD=hu:hp\n")]);
        let s = &select(&rules, "http", "h", 80, "/").unwrap().settings;
        assert_eq!(s.username.as_ref().unwrap().value, "hu");
        assert_eq!(pw(&s.password), Some("hp"));
        let s = &rules
            .iter()
            .find(|r| r.scope == RcScope::Any)
            .unwrap()
            .settings;
        // A lone USERNAME is no credential: nothing is sent, and a warning says so.
        assert!(s.username.is_none() && s.password.is_none());
        let (_, warnings, _) = resolve(&[p("[h]HTTP.CREDENTIALS.USERNAME=only\n")]);
        assert!(
            warnings.iter().any(|w| w
                .message
                .starts_with("HTTP.CREDENTIALS.USERNAME without HTTP.CREDENTIALS.PASSWORD")),
            "{warnings:?}"
        );
    }

    // --- scopes -----------------------------------------------------------------------------

    #[test]
    fn scope_matching_table() {
        type Request<'a> = (&'a str, &'a str, u16, &'a str);
        let cases: &[(RcScope, Request, bool)] = &[
            (RcScope::Any, ("https", "x", 1, "/"), true),
            (host("h.org", None), ("http", "H.ORG", 80, "/a"), true),
            (host("h.org", None), ("https", "h.org", 443, "/"), true),
            // netCDF-C compares host:port exactly: `[host]` is the default port only.
            (host("h.org", None), ("https", "h.org", 8443, "/"), false),
            (host("h.org", None), ("http", "h.org", 8080, "/"), false),
            (host("h.org", None), ("http", "h.org", 443, "/"), false),
            (host("h.org", None), ("https", "x.h.org", 443, "/"), false),
            (host("h.org", Some(443)), ("https", "h.org", 443, "/"), true),
            (host("h.org", Some(80)), ("https", "h.org", 443, "/"), false),
            (host("[::1]", Some(80)), ("http", "::1", 80, "/"), true),
            (
                url("https", "h.org", None, ""),
                ("HTTPS", "h.org", 443, ""),
                true,
            ),
            (
                url("https", "h.org", None, ""),
                ("https", "h.org", 8443, ""),
                false,
            ),
            (
                url("https", "h.org", None, ""),
                ("http", "h.org", 443, "/"),
                false,
            ),
            (
                url("https", "h.org", Some(443), ""),
                ("https", "h.org", 443, "/"),
                true,
            ),
            (
                url("http", "h.org", Some(8080), ""),
                ("http", "h.org", 80, "/"),
                false,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/data"),
                true,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/data/"),
                true,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/data/x"),
                true,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/database"),
                false,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/Data"),
                false,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/"),
                false,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "h.org", 443, "/data?x=1"),
                true,
            ),
            (
                url("https", "h.org", None, "/data"),
                ("https", "other", 443, "/data"),
                false,
            ),
        ];
        for (scope, (s, h, port, path), want) in cases {
            assert_eq!(
                scope.matches(s, h, *port, path),
                *want,
                "{scope} vs {s}://{h}:{port}{path}"
            );
        }
        // Default ports as parsed from the written form of a request URL.
        let f = p("[h.org:443]A=1\n[http://h.org:80]B=1\n");
        let (rules, _, _) = resolve(&[f]);
        for (u, key) in [("https://h.org/x", "A"), ("http://h.org/x", "B")] {
            let r = select_url(&rules, &url::Url::parse(u).unwrap()).unwrap();
            assert_eq!(unsupported(r)[0].0, key, "{u}");
        }
    }

    #[test]
    fn trailing_dot_of_the_host_is_ignored_as_in_yaml() {
        // `h.org.` is the fully qualified spelling of `h.org`: the same host, as a YAML
        // `match: h.org` already treats it.
        let (rules, _, errors) = resolve(&[p("[h.org]HTTP.CREDENTIALS.USERPASSWORD=a:pw\n\
             [http://q.org./data]HTTP.CREDENTIALS.USERPASSWORD=b:pw\n")]);
        assert!(errors.is_empty(), "{errors:?}");
        let user = |host: &str, path: &str| {
            select(&rules, "http", host, 80, path)
                .and_then(|r| r.settings.username.as_ref())
                .map(|u| u.value.clone())
        };
        assert_eq!(user("h.org", "/").as_deref(), Some("a"));
        assert_eq!(user("h.org.", "/").as_deref(), Some("a"));
        assert_eq!(user("q.org", "/data/x").as_deref(), Some("b"));
        assert_eq!(user("q.org.", "/data/x").as_deref(), Some("b"));
        assert_eq!(user("h.org..", "/"), None);
        assert_eq!(user("xh.org", "/"), None);
    }

    #[test]
    fn dataset_url_scope_matches_the_dap_requests() {
        // The rc line a netCDF user writes: the dataset URL they open with ncdump.
        let (rules, warnings, errors) = resolve(&[p(
            "[http://127.0.0.1:8080/protected/ds]HTTP.CREDENTIALS.USERPASSWORD=alice:pw\n",
        )]);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(warnings.iter().all(|w| w.message.contains("netCDF-C")));
        let user = |path: &str| {
            select(&rules, "http", "127.0.0.1", 8080, path)
                .and_then(|r| r.settings.username.as_ref())
                .map(|u| u.value.clone())
        };
        for path in [
            "/protected/ds",
            "/protected/ds.dds",
            "/protected/ds.das",
            "/protected/ds.dods",
            "/protected/ds.dods?temp[0:1:3]",
            "/protected/ds.dds?temp",
            "/protected/ds.dmr",
            "/protected/ds.dap",
            "/protected/ds.dmr.xml",
            "/protected/ds.dap.nc4?dap4.ce=x",
            "/protected/ds.ascii",
            "/protected/ds.info",
            "/protected/ds.html",
            "/protected/ds/below",
        ] {
            assert_eq!(user(path).as_deref(), Some("alice"), "{path}");
        }
        for path in [
            "/protected/dsx",
            "/protected/ds.nc",
            "/protected/ds.ddsx",
            "/protected/ds.xml",
            "/protected/ds.dds/x",
            "/protected/d.dds",
            "/protected",
            "/protected.dds",
        ] {
            assert_eq!(user(path), None, "{path}");
        }
        // A scope for one DAP response inherits from the dataset scope and is inside it.
        let ds = url("http", "h", None, "/p/ds");
        let dds = url("http", "h", None, "/p/ds.dds");
        assert!(ds.contains(&dds) && !dds.contains(&ds));
        assert!(dds.ancestors().contains(&ds));
        let (rules, _, _) = resolve(&[p("[http://h/p/ds]HTTP.CREDENTIALS.USERPASSWORD=u:p\n\
             [http://h/p/ds.dds]HTTP.TIMEOUT=5\n")]);
        let r = select(&rules, "http", "h", 80, "/p/ds.dds").unwrap();
        assert_eq!(r.scope, dds);
        assert_eq!(r.settings.username.as_ref().unwrap().value, "u");
        assert!(r.settings.timeout.is_some());
        let r = select(&rules, "http", "h", 80, "/p/ds.das").unwrap();
        assert_eq!(r.scope, ds);
        assert!(r.settings.timeout.is_none());
    }

    #[test]
    fn specificity_order() {
        let order = [
            RcScope::Any,
            host("h", None),
            host("h", Some(80)),
            url("http", "h", None, ""),
            url("http", "h", Some(80), ""),
            url("http", "h", None, "/a"),
            url("http", "h", Some(80), "/a"),
            url("http", "h", None, "/a/b"),
        ];
        for w in order.windows(2) {
            assert!(
                w[0].specificity() < w[1].specificity(),
                "{} < {}",
                w[0],
                w[1]
            );
        }
        assert!(host("h", None).contains(&url("https", "h", Some(443), "/x")));
        assert!(host("h", None).contains(&url("https", "h", None, "/x")));
        assert!(!host("h", None).contains(&url("https", "h", Some(1), "/x")));
        assert!(!host("h", None).contains(&host("h", Some(80))));
        assert!(host("h", Some(443)).contains(&url("https", "h", None, "/x")));
        assert!(!host("h", Some(80)).contains(&url("https", "h", None, "/x")));
        assert_eq!(
            host("h", None).intersect(&host("h", Some(80))),
            Some(url("http", "h", Some(80), ""))
        );
        assert_eq!(host("h", None).intersect(&host("h", Some(8080))), None);
        assert!(!host("h", Some(1)).contains(&url("https", "h", None, "/x")));
        assert!(url("https", "h", None, "/x").contains(&url("https", "h", Some(443), "/x/y")));
        assert!(!url("https", "h", None, "/x").contains(&url("https", "h", Some(2), "/x/y")));
        assert!(!url("https", "h", None, "/x").contains(&url("https", "h", None, "/xy")));
        assert!(!url("https", "h", None, "").contains(&host("h", None)));
        assert_eq!(
            host("h", Some(8080)).intersect(&url("http", "h", Some(8080), "/d")),
            Some(url("http", "h", Some(8080), "/d"))
        );
        assert_eq!(
            host("h", Some(8080)).intersect(&url("http", "h", None, "/d")),
            None
        );
        assert_eq!(host("h", Some(1)).intersect(&host("h", Some(2))), None);
        let t = url("https", "h", Some(8443), "/a/b");
        let anc: Vec<String> = t.ancestors().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            anc,
            vec![
                "(unscoped)",
                "[h:8443]",
                "[https://h:8443]",
                "[https://h:8443/a]",
                "[https://h:8443/a/b]",
            ]
        );
        assert!(t.ancestors().iter().all(|a| a.contains(&t)));
        let t = url("https", "h", None, "/a");
        let anc: Vec<String> = t.ancestors().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            anc,
            vec![
                "(unscoped)",
                "[h]",
                "[h:443]",
                "[https://h]",
                "[https://h:443]",
                "[https://h/a]",
                "[https://h:443/a]",
            ]
        );
        assert!(t.ancestors().iter().all(|a| a.contains(&t)));
    }

    #[test]
    fn inheritance_host_line_applies_to_url_rule() {
        let (rules, warnings, errors) = resolve(&[p("HTTP.TIMEOUT=10\n\
             [data.example.org]HTTP.SSL.CAINFO=/etc/ca.pem\n\
             [https://data.example.org/thredds]HTTP.CREDENTIALS.USERPASSWORD=u:p\n\
             [https://data.example.org/thredds/private]HTTP.TIMEOUT=20\n")]);
        assert!(own(&warnings).is_empty() && errors.is_empty());
        let scopes: Vec<String> = rules.iter().map(|r| r.scope.to_string()).collect();
        assert_eq!(
            scopes,
            vec![
                "[https://data.example.org/thredds/private]",
                "[https://data.example.org/thredds]",
                "[data.example.org]",
                "(unscoped)",
            ]
        );
        let r = select(
            &rules,
            "https",
            "data.example.org",
            443,
            "/thredds/private/f.nc",
        )
        .unwrap();
        let s = &r.settings;
        assert_eq!(s.ssl_cainfo.as_ref().unwrap().origin.line, 2);
        assert_eq!(s.username.as_ref().unwrap().value, "u");
        assert_eq!(s.timeout.as_ref().unwrap().value, Duration::from_secs(20));
        let s = &select(&rules, "https", "data.example.org", 443, "/thredds/x")
            .unwrap()
            .settings;
        assert_eq!(
            s.ssl_cainfo.as_ref().unwrap().value,
            Path::new("/etc/ca.pem")
        );
        assert_eq!(s.timeout.as_ref().unwrap().value, Duration::from_secs(10));
        let s = &select(&rules, "https", "data.example.org", 443, "/other")
            .unwrap()
            .settings;
        assert!(s.username.is_none());
        assert!(s.ssl_cainfo.is_some());
        let r = select(&rules, "https", "elsewhere.org", 443, "/").unwrap();
        assert_eq!(r.scope, RcScope::Any);
    }

    #[test]
    fn overlapping_scopes_get_an_intersection_rule() {
        // `[h]` is h on its scheme's default port; `[h:80]` is port 80 whatever the scheme:
        // they overlap in http://h:80 only.
        let (rules, _, _) = resolve(&[p("[h:80]HTTP.SSL.CAINFO=/ca\n\
             [h]HTTP.NETRC=/netrc\n")]);
        let r = select(&rules, "http", "h", 80, "/data/x").unwrap();
        assert_eq!(r.scope, url("http", "h", Some(80), ""));
        assert!(r.settings.ssl_cainfo.is_some() && r.settings.netrc.is_some());
        let r = select(&rules, "https", "h", 443, "/data/x").unwrap();
        assert!(r.settings.ssl_cainfo.is_none() && r.settings.netrc.is_some());
        let r = select(&rules, "https", "h", 80, "/data/x").unwrap();
        assert!(r.settings.ssl_cainfo.is_some() && r.settings.netrc.is_none());
        // A port scope and a path scope on another port never combine.
        let (rules, _, _) = resolve(&[p("[h:8080]HTTP.SSL.CAINFO=/ca\n\
             [http://h/data]HTTP.NETRC=/netrc\n")]);
        let r = select(&rules, "http", "h", 8080, "/data/x").unwrap();
        assert!(r.settings.ssl_cainfo.is_some() && r.settings.netrc.is_none());
        let r = select(&rules, "http", "h", 80, "/data/x").unwrap();
        assert!(r.settings.ssl_cainfo.is_none() && r.settings.netrc.is_some());
    }

    // --- merging and discovery --------------------------------------------------------------

    #[test]
    fn same_scope_conflicts_earlier_file_wins_last_line_in_file_wins() {
        let (rules, warnings, _) = res(&[
            ("/cwd/.daprc", "HTTP.NETRC=/cwd-daprc\n"),
            (
                "/home/.daprc",
                "HTTP.NETRC=/home-1\nHTTP.NETRC=/home-2\n[h]HTTP.NETRC=/home-h\n",
            ),
        ]);
        let any = rules.iter().find(|r| r.scope == RcScope::Any).unwrap();
        assert_eq!(
            any.settings.netrc.as_ref().unwrap().value,
            Path::new("/cwd-daprc")
        );
        // A more specific scope wins even from a lower-precedence file.
        let r = select(&rules, "http", "h", 80, "/").unwrap();
        assert_eq!(
            r.settings.netrc.as_ref().unwrap().value,
            Path::new("/home-h")
        );
        let warnings = own(&warnings);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].origin.to_string(), "/home/.daprc:1");
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn discovery_precedence_table() {
        use std::os::unix::fs::MetadataExt;
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        let env = RcEnv {
            home: Some(home.path().to_path_buf()),
            cwd: Some(cwd.path().to_path_buf()),
            // Whoever owns the files this test writes.
            uid: Some(std::fs::metadata(cwd.path()).unwrap().uid()),
            ..RcEnv::default()
        };
        let all: Vec<PathBuf> = [cwd.path(), home.path()]
            .iter()
            .flat_map(|d| [".daprc", ".dodsrc", ".ncrc"].map(|n| d.join(n)))
            .collect();
        assert_eq!(candidate_paths(&env), all);
        assert!(discover(&env).paths.is_empty());
        // Each file sets the same key; remove them from the top, the next one must win.
        for (i, path) in all.iter().enumerate() {
            std::fs::write(path, format!("HTTP.NETRC=/{i}\n")).unwrap();
        }
        assert_eq!(discover(&env).paths, all);
        for (i, path) in all.iter().enumerate() {
            let files: Vec<RcFile> = discover(&env)
                .paths
                .iter()
                .map(|f| parse_file(f).unwrap())
                .collect();
            let (rules, _, _) = resolve(&files);
            let netrc = rules[0].settings.netrc.as_ref().unwrap();
            assert_eq!(netrc.value, PathBuf::from(format!("/{i}")));
            assert_eq!(&*netrc.origin.path, path.as_path());
            std::fs::remove_file(path).unwrap();
        }
    }

    /// A working-directory rc file is read only if the daemon's uid owns it and nobody
    /// else may write it; HOME's files and a file named by DAPRCFILE are not checked.
    #[test]
    fn discovery_skips_working_directory_files_of_other_users() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        write(home.path(), ".daprc", "HTTP.NETRC=/home\n");
        write(cwd.path(), ".daprc", "HTTP.NETRC=/cwd\n");
        let cwd_rc = cwd.path().join(".daprc");
        let owner = std::fs::metadata(&cwd_rc).unwrap().uid();
        let other = owner.wrapping_add(1);
        let env = |uid: Option<u32>| RcEnv {
            home: Some(home.path().to_path_buf()),
            cwd: Some(cwd.path().to_path_buf()),
            uid,
            ..RcEnv::default()
        };
        let home_rc = home.path().join(".daprc");

        let d = discover(&env(Some(owner)));
        assert_eq!(d.paths, [cwd_rc.clone(), home_rc.clone()]);
        assert_eq!(d.owner_checked, vec![cwd_rc.clone()]);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // Read for another uid (the file was swapped after discovery): refused.
        assert!(parse_owned_file(&cwd_rc, Some(owner)).is_ok());
        let e = parse_owned_file(&cwd_rc, Some(other)).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("owned by uid"), "{e}");

        for uid in [Some(other), None] {
            let d = discover(&env(uid));
            assert_eq!(d.paths, vec![home_rc.clone()], "{uid:?}");
            assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
            assert!(
                d.warnings[0]
                    .to_string()
                    .starts_with(&format!("{}: ", cwd_rc.display())),
                "{:?}",
                d.warnings
            );
            assert!(!d.warnings[0].to_string().contains("/cwd\n"));
        }
        assert!(discover(&env(Some(other))).warnings[0]
            .to_string()
            .contains(&format!(
                "owned by uid {owner}, not by the daemon's uid {other}"
            )));

        // Owned, but writable by the group: skipped too.
        std::fs::set_permissions(&cwd_rc, std::fs::Permissions::from_mode(0o664)).unwrap();
        let d = discover(&env(Some(owner)));
        assert_eq!(d.paths, vec![home_rc.clone()]);
        assert!(
            d.warnings[0].to_string().contains("chmod go-w"),
            "{:?}",
            d.warnings
        );

        // The same directory as HOME, or a file named by DAPRCFILE: the user's choice.
        let same = RcEnv {
            home: Some(cwd.path().to_path_buf()),
            cwd: Some(cwd.path().to_path_buf()),
            uid: Some(other),
            ..RcEnv::default()
        };
        assert_eq!(discover(&same).paths, vec![cwd_rc.clone()]);
        let named = RcEnv {
            daprcfile: Some(PathBuf::from(".daprc")),
            ..env(Some(other))
        };
        assert_eq!(discover(&named).paths, vec![cwd_rc.clone()]);
    }

    #[test]
    fn writable_rc_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".daprc", "HTTP.TIMEOUT=5\n");
        let path = dir.path().join(".daprc");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(parse_file(&path).unwrap().warnings.is_empty());
        for mode in [0o664, 0o646] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let f = parse_file(&path).unwrap();
            assert_eq!(f.warnings.len(), 1, "{mode:o}");
            assert_eq!(
                f.warnings[0].to_string(),
                format!(
                    "{}: writable by other users (they could send your credentials elsewhere); chmod 600 {}",
                    path.display(),
                    path.display()
                )
            );
            assert_eq!(f.lines.len(), 1);
        }
    }

    #[test]
    fn rc_file_that_is_a_fifo_or_too_large_is_refused_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join(".daprc");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let start = std::time::Instant::now();
        let e = parse_file(&fifo).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let big = dir.path().join(".dodsrc");
        std::fs::write(&big, vec![b'#'; CONFIG_MAX_BYTES as usize + 1]).unwrap();
        assert_eq!(
            parse_file(&big).unwrap_err().kind(),
            std::io::ErrorKind::FileTooLarge
        );
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        std::fs::write(&big, vec![b'#'; CONFIG_MAX_BYTES as usize]).unwrap();
        assert!(parse_file(&big).is_ok());
    }

    #[test]
    fn daprcfile_gets_a_netcdf_4_9_note_ncrcenv_rc_does_not() {
        let base = RcEnv {
            home: Some(PathBuf::from("/home/u")),
            cwd: Some(PathBuf::from("/work")),
            ..RcEnv::default()
        };
        assert!(discovery_notes(&base).is_empty());
        let dap = RcEnv {
            daprcfile: Some(PathBuf::from("my.rc")),
            ..base.clone()
        };
        let notes = discovery_notes(&dap);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].to_string().starts_with("/work/my.rc: DAPRCFILE"),
            "{}",
            notes[0]
        );
        assert!(notes[0]
            .to_string()
            .contains("netCDF-C 4.9 ignores DAPRCFILE"));
        // Where NCRCENV_RC decides (both read it) or nothing is read, nothing to say.
        let both = RcEnv {
            ncrcenv_rc: Some(PathBuf::from("/etc/rc")),
            ..dap.clone()
        };
        assert!(discovery_notes(&both).is_empty());
        let ignored = RcEnv {
            ignore: true,
            ..dap
        };
        assert!(discovery_notes(&ignored).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn rc_files_others_may_change_or_read_with_a_password_warn_like_a_netrc() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let creds = dir.path().join(".dodsrc");
        std::fs::write(
            &creds,
            "[https://h.org/d]HTTP.CREDENTIALS.USERPASSWORD=u:s3cret\n",
        )
        .unwrap();
        let paths = dir.path().join(".daprc");
        std::fs::write(&paths, "HTTP.NETRC=/home/u/.netrc\n").unwrap();
        let perm = |p: &Path| {
            parse_file(p)
                .unwrap()
                .warnings
                .into_iter()
                .filter(|w| w.message.contains("chmod 600"))
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        };
        chmod(&creds, 0o600);
        assert!(perm(&creds).is_empty());
        chmod(&creds, 0o644);
        let w = perm(&creds);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("holds a password and is readable"),
            "{}",
            w[0]
        );
        assert!(!w[0].contains("s3cret"));
        // Readable is fine without a secret; writable by others is not.
        chmod(&paths, 0o644);
        assert!(perm(&paths).is_empty());
        chmod(&paths, 0o666);
        let w = perm(&paths);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("writable by other users"), "{}", w[0]);
        assert!(w[0].ends_with(&format!("chmod 600 {}", paths.display())));
    }

    #[test]
    fn discovery_home_equal_to_cwd_reads_once() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".dodsrc", "A=1\n");
        let env = RcEnv {
            home: Some(dir.path().to_path_buf()),
            cwd: Some(dir.path().to_path_buf()),
            ..RcEnv::default()
        };
        assert_eq!(candidate_paths(&env).len(), 3);
        assert_eq!(discover(&env).paths, vec![dir.path().join(".dodsrc")]);
        // Same directory spelt differently.
        let env = RcEnv {
            home: Some(dir.path().join(".")),
            ..env
        };
        assert_eq!(candidate_paths(&env).len(), 3);
    }

    #[test]
    fn discovery_only_file_and_ignore() {
        let home = tempfile::tempdir().unwrap();
        write(home.path(), ".daprc", "A=1\n");
        write(home.path(), "custom", "A=2\n");
        write(home.path(), "newer", "A=3\n");
        let base = RcEnv {
            home: Some(home.path().to_path_buf()),
            cwd: Some(home.path().to_path_buf()),
            ..RcEnv::default()
        };
        let env = RcEnv {
            daprcfile: Some(PathBuf::from("custom")),
            ..base.clone()
        };
        assert_eq!(discover(&env).paths, vec![home.path().join("custom")]);
        let env = RcEnv {
            ncrcenv_rc: Some(home.path().join("newer")),
            ..env
        };
        assert_eq!(discover(&env).paths, vec![home.path().join("newer")]);
        let missing = RcEnv {
            ncrcenv_rc: Some(home.path().join("missing")),
            ..base.clone()
        };
        assert_eq!(candidate_paths(&missing), vec![home.path().join("missing")]);
        assert!(discover(&missing).paths.is_empty());
        let ignored = RcEnv {
            ignore: true,
            ..env
        };
        assert!(candidate_paths(&ignored).is_empty());
        assert!(discover(&ignored).paths.is_empty());
        let nohome = RcEnv {
            home: None,
            cwd: None,
            ..RcEnv::default()
        };
        assert!(candidate_paths(&nohome).is_empty());
    }

    // --- robustness -------------------------------------------------------------------------

    /// A small deterministic fuzz: rc-ish garbage never panics, and the selected rule is
    /// contained in every matching scope (the one-lookup invariant).
    #[test]
    fn garbage_never_panics_and_select_is_consistent() {
        let pieces: &[&[u8]] = &[
            b"[",
            b"]",
            b"=",
            b"\n",
            b"\r\n",
            b" ",
            b"#",
            b":",
            b"/",
            b"://",
            b"h",
            b"H",
            b"x",
            b"80",
            b"443",
            b"8080",
            b"99999",
            b"http",
            b"https",
            b"[::1]",
            b"%",
            b"%3a",
            b"%ff",
            b"@",
            b"\xff",
            b"\xe9",
            b"HTTP.SSL.VALIDATE",
            b"HTTP.TIMEOUT",
            b"HTTP.CREDENTIALS.USERPASSWORD",
            b"HTTP.CREDENTIALS.USER",
            b"HTTP.SSL.CAINFO",
            b"HTTP.PROXY_SERVER",
            b"HTTP.VERBOSE",
            b"1",
            b"0",
            b"yes",
            b"/a",
            b"/a/b",
            b"?",
            b"\t",
            b"\0",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let scopes: &[&str] = &[
            "",
            "",
            "[h]",
            "[H:80]",
            "[h:8080]",
            "[h:443]",
            "[http://h]",
            "[https://h]",
            "[http://h/a]",
            "[https://h/a/b]",
            "[http://h/a/b.dds]",
            "[http://h:8080/a]",
            "[https://h:443/a]",
            "[foo://h/a]",
            "[x]",
            "[[::1]]",
            "[https://[::1]/a]",
            "[h",
            "[h/a]",
        ];
        let keys: &[&str] = &[
            "HTTP.SSL.CAINFO",
            "HTTP.VERBOSE",
            "http.verbose",
            "HTTP.SSL.VALIDATE",
            "HTTP.CREDENTIALS.USERPASSWORD",
            "HTTP.CREDENTIALS.USER",
            "HTTP.TIMEOUT",
            " K ",
        ];
        let values: &[&str] = &["", "1", "0", "/ca", "u%40:p%3a", "x y", "=", "yes"];
        let requests = [
            ("http", "h", 80u16, "/"),
            ("https", "h", 443, "/a/b/c"),
            ("http", "h", 8080, "/a"),
            ("https", "::1", 443, "/a"),
            ("http", "x", 80, ""),
            ("foo", "h", 0, "/a/b"),
            ("https", "h", 443, "/a"),
            ("http", "h", 8080, "/a/b"),
            ("http", "h", 80, "/a/b.dds"),
            ("http", "h", 8080, "/a.das?x"),
        ];
        for _ in 0..3000 {
            let mut bytes = Vec::new();
            for _ in 0..(next() % 24) {
                if next() % 4 == 0 {
                    // Unstructured junk.
                    for _ in 0..(next() % 12) {
                        bytes.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
                    }
                } else {
                    // A plausible line.
                    let pick = |n: u64, xs: &[&'static str]| xs[(n % xs.len() as u64) as usize];
                    bytes.extend_from_slice(pick(next(), scopes).as_bytes());
                    bytes.extend_from_slice(pick(next(), keys).as_bytes());
                    bytes.push(b'=');
                    bytes.extend_from_slice(pick(next(), values).as_bytes());
                }
                bytes.extend_from_slice(if next() % 2 == 0 { b"\n" } else { b"\r\n" });
            }
            let f = parse_bytes(Path::new("/f"), &bytes);
            let (rules, _, _) = resolve(std::slice::from_ref(&f));
            for (s, h, port, path) in requests {
                let best = select(&rules, s, h, port, path);
                if let Some(best) = best {
                    for r in rules.iter().filter(|r| r.scope.matches(s, h, port, path)) {
                        assert!(
                            r.scope.contains(&best.scope),
                            "{} !> {}",
                            r.scope,
                            best.scope
                        );
                    }
                }
                // Naive reference: per key, the matching line with the most specific scope,
                // then the last line.
                let winner = |pred: &dyn Fn(&RcLine) -> bool| {
                    f.lines
                        .iter()
                        .filter(|l| l.scope.matches(s, h, port, path) && pred(l))
                        .max_by_key(|l| (l.scope.specificity(), l.origin.line))
                        .map(|l| l.origin.line)
                };
                let cainfo = winner(&|l| l.key == "HTTP.SSL.CAINFO" && !l.value.is_empty());
                let got = best.and_then(|b| b.settings.ssl_cainfo.as_ref().map(|c| c.origin.line));
                assert_eq!(got, cainfo, "{:?}", String::from_utf8_lossy(&bytes));
                let verbose = winner(&|l| l.key == "HTTP.VERBOSE");
                let got = best.and_then(|b| {
                    b.settings
                        .unsupported
                        .iter()
                        .find(|u| u.value.eq_ignore_ascii_case("HTTP.VERBOSE"))
                        .map(|u| u.origin.line)
                });
                assert_eq!(got, verbose);
                if best.is_none() {
                    let ignored = |l: &RcLine| {
                        l.value.is_empty() && NEED_VALUE.contains(&canonical_key(&l.key))
                    };
                    assert!(f
                        .lines
                        .iter()
                        .all(|l| ignored(l) || !l.scope.matches(s, h, port, path)));
                }
            }
        }
    }
}
