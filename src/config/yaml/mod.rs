/*!
The YAML configuration file: what rc files and `.netrc` cannot say.

```yaml
listen: ["127.0.0.1:3128"]
access: { allow_uids: [self, 1001], proxy_token_file: tok }
rc_files: auto                  # or a list of paths, or [] for none
netrc: auto                     # or a path, or false for none
cookie_jar: auto                # or a path
upstream_proxy: http://proxy.corp:8080   # or { url: ..., username: u, password_file: pw }
no_proxy: [".internal.example", "localhost"]
redirects: { max_hops: 10 }
timeouts: { connect: 10s, first_byte: 60s, idle: 5m }
log: { format: plain, level: info }
sites:
  - match: "esgf-node.example.org"   # host | host:port | *.domain | http(s)://host[:port]/path | "*"
    name: esgf
    tls: { upgrade: true, client_cert: cert.pem, client_key: key.pem, key_password_file: pw }
    basic: { username: alice, password_file: pw }
    headers: { X-Api-Key: { value_file: k }, X-Plain: "v" }
    query: { apikey: { value_file: k }, format: nc }
    upstream_proxy: direct
    redirects: follow
```

Entry points: [`parse_file`], [`parse_str`]. The result is a validated [`YamlConfig`]; every
problem found is returned as a [`Diagnostic`] naming `file:line`, and all of them are
reported, not only the first.

# How errors get their line numbers

`serde_yaml` 0.9 keeps no positions in its `Value` tree, but every error raised while a
node is being deserialized *from text* carries that node's position. This module uses
that in three ways, always through the real YAML parser (never by scanning the text):

1. The whole document is parsed once into a `serde_yaml::Value`; a syntax error stops
   here (nothing more can be trusted).
2. Each top-level key and each `sites[i]` entry is then deserialized separately, straight
   from the text, by a navigating seed that skips every other node. One bad entry
   therefore does not hide the others, and `serde` errors (unknown key, wrong type)
   arrive with the line of the offending key or value. Validation that concerns a single
   value is done inside the visitors, so it gets the value's own line too.
3. The line of a node or key that deserialized fine (a site's start, for its
   [`Origin`]; a key involved in a cross-field check) is found with a *probe*: the
   navigating seed deliberately fails at that node with a marker error, and the
   position serde_yaml attaches to that error is the node's line.

Each step re-parses the document, so the cost is a few parses per site; the number of
sites is capped at [`MAX_SITES`] to keep that bounded.

# Secrets

Values that may be secrets never appear in error or warning text. Messages produced by
serde or serde_yaml can quote the offending value (`invalid type: string "hunter2"`);
they are sanitized: every double-quoted string is dropped, and every back-quoted
fragment is dropped unless it names a field (`unknown field `x``) or belongs to the
list of what was expected. Secret file contents are never put into messages.

`*_file` options: an absolute path is used as is; `$CREDENTIALS_DIRECTORY/name` names a
file in the systemd credentials directory; a relative path is looked up in the
credentials directory first (when [`SecretEnv::credentials_directory`] is set and the
file exists there), else relative to the configuration file's directory. Contents are
read (at most 1 MiB, UTF-8) and trailing whitespace is trimmed; an empty result is an
error.
*/

mod locate;
mod raw;
mod scalar;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde::Deserialize;
use serde_yaml::Value;

use self::locate::{clean_message, option_name, show_key, site_path, Nav, NodeProbe, Seg, PROBE};
use self::raw::{
    HeaderName, NonEmpty, QueryName, RawAccess, RawAddr, RawBasic, RawBearer, RawCookieJar,
    RawHops, RawLog, RawMatch, RawNetrc, RawNoProxy, RawParamValue, RawProxy, RawProxyVia,
    RawRcFiles, RawRedirects, RawSite, RawTimeouts, RawTls,
};
pub use self::scalar::{parse_duration, parse_match};
use super::origin::Origin;
use super::Diagnostic;
use crate::rule::Pattern;
use crate::secret::Secret;

/// More sites than this is an error (each site costs a few parses of the document).
pub const MAX_SITES: usize = 500;

/// Secret files larger than this are refused.
const MAX_SECRET_FILE: u64 = 1 << 20;

/// Configuration files larger than this are refused by [`parse_file`].
const MAX_CONFIG_FILE: u64 = 4 << 20;

const DEFAULT_MAX_HOPS: u8 = 10;

pub use crate::rule::proxy::DEFAULT_PROXY_PORT;

const TOP_KEYS: &[&str] = &[
    "listen",
    "access",
    "rc_files",
    "netrc",
    "netrc_default",
    "cookie_jar",
    "upstream_proxy",
    "no_proxy",
    "rc_unscoped_credentials",
    "redirects",
    "timeouts",
    "log",
    "sites",
];

/// Header names a site's `headers` may not set (compared ignoring case): hop-by-hop
/// and message-framing headers, and those authproxy writes itself. Any `Proxy-*` name
/// is refused too (see [`is_reserved_header`]).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "trailer",
    "keep-alive",
];

/// Whether a site's `headers` may not set `name`: one of [`RESERVED_HEADERS`], or any
/// name starting with `proxy-`.
fn is_reserved_header(name: &str) -> bool {
    RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("proxy-"))
}

/// Site keys of the design that later versions will implement.
const SITE_NOT_YET: &[&str] = &["login", "handle", "query_token"];

// ---------------------------------------------------------------------------------------
// Output types
// ---------------------------------------------------------------------------------------

/// The validated YAML configuration.
#[derive(Debug, Clone)]
pub struct YamlConfig {
    /// The configuration file, as given.
    pub path: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub access: Access,
    pub rc_files: RcFilesSetting,
    pub netrc: NetrcSetting,
    /// `netrc_default: true`: the `.netrc` `default` entry answers for hosts no
    /// `machine` entry names. Off by default: that entry names no host.
    pub netrc_default: bool,
    /// `None`: automatic location.
    pub cookie_jar: Option<PathBuf>,
    pub upstream_proxy: Option<UpstreamProxy>,
    /// Lowercased; a leading `.` or `*.` means "this domain's subdomains".
    pub no_proxy: Vec<String>,
    /// What to do with rc-file credentials that have no `[prefix]`.
    pub rc_unscoped_credentials: UnscopedCredentials,
    pub max_hops: u8,
    pub timeouts: Timeouts,
    pub log: LogSettings,
    pub sites: Vec<Site>,
    pub warnings: Vec<Diagnostic>,
    /// Secret files read, for the reload watcher.
    pub files_read: Vec<PathBuf>,
}

impl YamlConfig {
    fn defaults(path: &Path) -> Self {
        YamlConfig {
            path: path.to_path_buf(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 3128))],
            access: Access::default(),
            rc_files: RcFilesSetting::Auto,
            netrc: NetrcSetting::Auto,
            netrc_default: false,
            cookie_jar: None,
            upstream_proxy: None,
            no_proxy: Vec::new(),
            rc_unscoped_credentials: UnscopedCredentials::Ignore,
            max_hops: DEFAULT_MAX_HOPS,
            timeouts: Timeouts::default(),
            log: LogSettings::default(),
            sites: Vec::new(),
            warnings: Vec::new(),
            files_read: Vec::new(),
        }
    }
}

/// Who may use the proxy (enforced elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Default `[self]`. An empty list is kept as written.
    pub allow_uids: Vec<AllowUid>,
    /// Resolved path of `proxy_token_file`.
    pub proxy_token_file: Option<PathBuf>,
    /// Its trimmed contents.
    pub proxy_token: Option<Secret<String>>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allow_uids: vec![AllowUid::Current],
            proxy_token_file: None,
            proxy_token: None,
        }
    }
}

/// An entry of `access.allow_uids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowUid {
    /// `self`: the uid the daemon runs as.
    Current,
    Uid(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcFilesSetting {
    /// netCDF-C's own search.
    Auto,
    /// Exactly these files (resolved against the config directory); empty = none.
    List(Vec<PathBuf>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetrcSetting {
    Auto,
    Path(PathBuf),
    Off,
}

/// An HTTP proxy to reach origins through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamProxy {
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Username and password for `Proxy-Authorization: Basic`.
    pub credentials: Option<(String, Secret<String>)>,
    pub origin: Origin,
}

/// A site's `upstream_proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChoice {
    /// Not set: use the global setting.
    Inherit,
    /// `direct`: no proxy for this site.
    Direct,
    Via(UpstreamProxy),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub idle: Option<Duration>,
}

/// `rc_unscoped_credentials`: rc-file `HTTP.CREDENTIALS.*` lines without a `[prefix]`
/// name no host, so by default they go nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnscopedCredentials {
    /// Never sent (a warning says how to scope them).
    #[default]
    Ignore,
    /// netCDF-C's behaviour, made safer: sent only in answer to a 401 Basic challenge,
    /// never preemptively, and only over TLS or to a loopback host.
    Challenge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSettings {
    pub format: Option<LogFormat>,
    pub level: Option<LogLevel>,
}

/// A site's `redirects`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    /// Hand redirects to the client.
    Pass,
    /// Follow them in the proxy.
    Follow,
}

/// A header or query value: written inline, or read from a `value_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    Plain(String),
    Secret(Secret<String>),
}

pub type HeaderValue = ParamValue;
pub type QueryValue = ParamValue;

/// One entry of `sites`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// `name`, else `sites[i]`.
    pub id: String,
    /// The line where the entry starts.
    pub origin: Origin,
    pub pattern: Pattern,
    /// `match` as written.
    pub pattern_text: String,
    pub tls: SiteTls,
    pub basic: Option<(String, Secret<String>)>,
    pub bearer: Option<Secret<String>>,
    /// In file order, names as written.
    pub headers: Vec<(String, HeaderValue)>,
    /// In file order, not percent-encoded.
    pub query: Vec<(String, QueryValue)>,
    pub upstream_proxy: ProxyChoice,
    pub redirects: Option<RedirectMode>,
}

/// A site's `tls`. Paths are resolved against the config directory but not read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteTls {
    pub upgrade: bool,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub key_password: Option<Secret<String>>,
    pub pkcs12: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub ca_dir: Option<PathBuf>,
    pub verify: Option<bool>,
}

/// What the process environment says about secret files, injected by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretEnv {
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
}

impl SecretEnv {
    /// Reads `$CREDENTIALS_DIRECTORY` from the process environment (empty = unset).
    pub fn from_process_env() -> Self {
        SecretEnv {
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The loader
// ---------------------------------------------------------------------------------------

struct Cx<'a> {
    base: Origin,
    text: &'a str,
    env: &'a SecretEnv,
    /// The config file's directory, made absolute if possible.
    dir: PathBuf,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    files_read: Vec<PathBuf>,
}

impl<'a> Cx<'a> {
    fn new(path: &Path, text: &'a str, env: &'a SecretEnv) -> Self {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Cx {
            base: Origin::new(path, 0),
            text,
            env,
            dir,
            errors: Vec::new(),
            warnings: Vec::new(),
            files_read: Vec::new(),
        }
    }

    fn origin(&self, line: usize) -> Origin {
        Origin {
            path: self.base.path.clone(),
            line,
        }
    }

    fn error(&mut self, line: usize, message: impl Into<String>) {
        let origin = self.origin(line);
        self.errors.push(Diagnostic {
            origin,
            message: message.into(),
        });
    }

    fn warn(&mut self, line: usize, message: impl Into<String>) {
        let origin = self.origin(line);
        self.warnings.push(Diagnostic {
            origin,
            message: message.into(),
        });
    }

    fn serde_error(&mut self, e: &serde_yaml::Error) {
        let line = e.location().map_or(0, |l| l.line());
        self.error(line, clean_message(&e.to_string()));
    }

    /// Deserializes the node at `path` straight from the text; `None` if it is absent
    /// or an error was recorded.
    fn extract<T: DeserializeOwned>(&mut self, path: &[Seg<'_>]) -> Option<T> {
        let nav = Nav {
            path,
            leaf: PhantomData::<T>,
            key_probe: false,
        };
        match nav.deserialize(serde_yaml::Deserializer::from_str(self.text)) {
            Ok(v) => v,
            Err(e) => {
                self.serde_error(&e);
                None
            }
        }
    }

    fn probe(&self, path: &[Seg<'_>], key_probe: bool) -> usize {
        let nav = Nav {
            path,
            leaf: NodeProbe,
            key_probe,
        };
        match nav.deserialize(serde_yaml::Deserializer::from_str(self.text)) {
            Err(e) if e.to_string().contains(PROBE) => e.location().map_or(0, |l| l.line()),
            _ => 0,
        }
    }

    /// Line where the node at `path` starts (0 if not found).
    fn node_line(&self, path: &[Seg<'_>]) -> usize {
        self.probe(path, false)
    }

    /// Line of the last key of `path` (0 if not found).
    fn key_line(&self, path: &[Seg<'_>]) -> usize {
        self.probe(path, true)
    }

    /// A non-secret path: `$CREDENTIALS_DIRECTORY/x`, absolute, or relative to the
    /// config directory.
    fn resolve_path(&self, raw: &str) -> Result<PathBuf, String> {
        for prefix in ["$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/"] {
            if let Some(rest) = raw.strip_prefix(prefix) {
                return match &self.env.credentials_directory {
                    Some(d) => Ok(d.join(rest)),
                    None => Err("$CREDENTIALS_DIRECTORY is not set".into()),
                };
            }
        }
        let p = Path::new(raw);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        })
    }

    /// A `*_file` path: like [`Self::resolve_path`], but a relative name that exists in
    /// the credentials directory is taken from there.
    fn resolve_secret_path(&self, raw: &str) -> Result<PathBuf, String> {
        let p = Path::new(raw);
        if p.is_relative() && !raw.starts_with('$') {
            if let Some(d) = &self.env.credentials_directory {
                let candidate = d.join(p);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
        self.resolve_path(raw)
    }

    /// Resolves a path option, reporting at the option's key.
    fn path_option(&mut self, raw: Option<NonEmpty>, at: &[Seg<'_>]) -> Option<PathBuf> {
        let raw = raw?;
        match self.resolve_path(&raw.0) {
            Ok(p) => Some(p),
            Err(msg) => {
                let line = self.key_line(at);
                self.error(line, format!("{}: {msg}", option_name(at)));
                None
            }
        }
    }

    /// Reads a `*_file` secret; errors name the option, its line and the path.
    fn read_secret(&mut self, raw: &str, at: &[Seg<'_>]) -> Option<Secret<String>> {
        let path = match self.resolve_secret_path(raw) {
            Ok(p) => p,
            Err(msg) => {
                let line = self.key_line(at);
                self.error(line, format!("{}: {msg}", option_name(at)));
                return None;
            }
        };
        match read_small_text(&path) {
            Ok(s) => {
                let trimmed = s.trim_end();
                if trimmed.is_empty() {
                    let line = self.key_line(at);
                    self.error(
                        line,
                        format!("{}: {} is empty", option_name(at), path.display()),
                    );
                    return None;
                }
                if !self.files_read.contains(&path) {
                    self.files_read.push(path);
                }
                Some(Secret::new(trimmed.to_string()))
            }
            Err(e) => {
                let line = self.key_line(at);
                self.error(
                    line,
                    format!("{}: cannot read {}: {e}", option_name(at), path.display()),
                );
                None
            }
        }
    }

    fn warn_inline(&mut self, at: &[Seg<'_>], file_form: &str) {
        let line = self.key_line(at);
        self.warn(
            line,
            format!(
                "{} is written inline; {file_form} is recommended, to keep secrets out of the configuration file",
                option_name(at)
            ),
        );
    }

    // --- top level -----------------------------------------------------------------

    fn run(mut self, path: &Path) -> Result<YamlConfig, Vec<Diagnostic>> {
        let mut cfg = YamlConfig::defaults(path);
        let root: Value = match serde_yaml::from_str(self.text) {
            Ok(v) => v,
            Err(e) => {
                self.serde_error(&e);
                return Err(self.errors);
            }
        };
        match &root {
            Value::Null => {}
            Value::Mapping(map) => {
                for (k, v) in map {
                    match k.as_str() {
                        Some(key) => self.top_key(key, v, &mut cfg),
                        None => self.error(0, "setting names must be strings"),
                    }
                }
            }
            _ => {
                let line = self.node_line(&[]);
                self.error(line, "the configuration must be a map of settings");
            }
        }
        self.finish(cfg)
    }

    fn finish(mut self, mut cfg: YamlConfig) -> Result<YamlConfig, Vec<Diagnostic>> {
        if self.errors.is_empty() {
            self.warnings
                .sort_by_key(|w| (w.origin.line == 0, w.origin.line));
            cfg.warnings = self.warnings;
            cfg.files_read = self.files_read;
            Ok(cfg)
        } else {
            self.errors
                .sort_by_key(|e| (e.origin.line == 0, e.origin.line));
            Err(self.errors)
        }
    }

    fn top_key(&mut self, key: &str, value: &Value, cfg: &mut YamlConfig) {
        let at = [Seg::Key(key)];
        match key {
            "listen" => {
                if let Some(list) = self.extract::<Option<Vec<RawAddr>>>(&at).flatten() {
                    if list.is_empty() {
                        let line = self.key_line(&at);
                        self.error(line, "listen: give at least one address");
                    } else {
                        cfg.listen = list.into_iter().map(|a| a.0).collect();
                    }
                }
            }
            "access" => {
                if let Some(raw) = self.extract::<Option<RawAccess>>(&at).flatten() {
                    if let Some(uids) = raw.allow_uids {
                        cfg.access.allow_uids = uids.into_iter().map(|u| u.0).collect();
                    }
                    if let Some(f) = raw.proxy_token_file {
                        let at = [Seg::Key("access"), Seg::Key("proxy_token_file")];
                        cfg.access.proxy_token = self.read_secret(&f.0, &at);
                        cfg.access.proxy_token_file = self.resolve_secret_path(&f.0).ok();
                    }
                }
            }
            "rc_files" => {
                if let Some(RawRcFiles(list)) = self.extract::<Option<RawRcFiles>>(&at).flatten() {
                    cfg.rc_files = match list {
                        None => RcFilesSetting::Auto,
                        Some(list) => RcFilesSetting::List(
                            list.into_iter()
                                .filter_map(|p| self.path_option(Some(NonEmpty(p)), &at))
                                .collect(),
                        ),
                    };
                }
            }
            "netrc" => {
                if let Some(raw) = self.extract::<Option<RawNetrc>>(&at).flatten() {
                    cfg.netrc = match raw {
                        RawNetrc::Auto => NetrcSetting::Auto,
                        RawNetrc::Off => NetrcSetting::Off,
                        RawNetrc::Path(p) => self
                            .path_option(Some(NonEmpty(p)), &at)
                            .map_or(NetrcSetting::Auto, NetrcSetting::Path),
                    };
                }
            }
            "netrc_default" => {
                if let Some(on) = self.extract::<Option<bool>>(&at).flatten() {
                    cfg.netrc_default = on;
                }
            }
            "cookie_jar" => {
                if let Some(RawCookieJar(p)) = self.extract::<Option<RawCookieJar>>(&at).flatten() {
                    cfg.cookie_jar = self.path_option(p.map(NonEmpty), &at);
                }
            }
            "upstream_proxy" => {
                if let Some(raw) = self.extract::<Option<RawProxy>>(&at).flatten() {
                    cfg.upstream_proxy = match raw {
                        RawProxy::Direct | RawProxy::Inherit => None,
                        RawProxy::Via(via) => self.proxy(via, &at),
                    };
                }
            }
            "no_proxy" => {
                if let Some(RawNoProxy(list)) = self.extract::<Option<RawNoProxy>>(&at).flatten() {
                    cfg.no_proxy = list;
                }
            }
            "redirects" => {
                if let Some(raw) = self.extract::<Option<RawRedirects>>(&at).flatten() {
                    if let Some(RawHops(n)) = raw.max_hops {
                        cfg.max_hops = n;
                    }
                }
            }
            "timeouts" => {
                if let Some(raw) = self.extract::<Option<RawTimeouts>>(&at).flatten() {
                    cfg.timeouts = Timeouts {
                        connect: raw.connect.map(|d| d.0),
                        first_byte: raw.first_byte.map(|d| d.0),
                        idle: raw.idle.map(|d| d.0),
                    };
                }
            }
            "rc_unscoped_credentials" => {
                if let Some(mode) = self.extract::<Option<UnscopedCredentials>>(&at).flatten() {
                    cfg.rc_unscoped_credentials = mode;
                }
            }
            "log" => {
                if let Some(raw) = self.extract::<Option<RawLog>>(&at).flatten() {
                    cfg.log = LogSettings {
                        format: raw.format,
                        level: raw.level,
                    };
                }
            }
            "sites" => self.sites(value, cfg),
            _ => {
                let line = self.key_line(&at);
                let valid = TOP_KEYS
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    line,
                    format!(
                        "unknown setting `{}`, expected one of {valid}",
                        show_key(key)
                    ),
                );
            }
        }
    }

    fn proxy(&mut self, via: RawProxyVia, at: &[Seg<'_>]) -> Option<UpstreamProxy> {
        let line = self.key_line(at);
        let credentials = if let Some((user, pass)) = via.url_credentials {
            if !pass.is_empty() {
                let line = self.key_line(at);
                self.warn(
                    line,
                    format!(
                        "{} has a password in its URL; {{ url, username, password_file }} is recommended, to keep secrets out of the configuration file",
                        option_name(at)
                    ),
                );
            }
            Some((user, Secret::new(pass)))
        } else if let Some(user) = via.username {
            let mut sub: Vec<Seg<'_>> = at.to_vec();
            if let Some(pass) = via.password {
                sub.push(Seg::Key("password"));
                self.warn_inline(&sub, "password_file");
                Some((user, Secret::new(pass)))
            } else {
                sub.push(Seg::Key("password_file"));
                let file = via.password_file.unwrap_or_default();
                Some((user, self.read_secret(&file, &sub)?))
            }
        } else {
            None
        };
        Some(UpstreamProxy {
            host: via.host,
            port: via.port,
            credentials,
            origin: self.origin(line),
        })
    }

    // --- sites ---------------------------------------------------------------------

    fn sites(&mut self, value: &Value, cfg: &mut YamlConfig) {
        let items = match value {
            Value::Null => return,
            Value::Sequence(items) => items,
            _ => {
                let line = self.key_line(&[Seg::Key("sites")]);
                self.error(line, "sites must be a list");
                return;
            }
        };
        if items.len() > MAX_SITES {
            let line = self.key_line(&[Seg::Key("sites")]);
            self.error(line, format!("sites: more than {MAX_SITES} entries"));
            return;
        }
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let line = self.node_line(&[Seg::Key("sites"), Seg::Index(i)]);
            if let Value::Mapping(m) = item {
                for &k in SITE_NOT_YET {
                    if m.contains_key(k) {
                        let kl = self.key_line(&site_path(i, &[k]));
                        self.error(kl, format!("`{k}` is not supported by this version yet"));
                    }
                }
            }
            let Some(raw) = self.extract::<RawSite>(&[Seg::Key("sites"), Seg::Index(i)]) else {
                continue;
            };
            let site = self.site(i, line, raw);
            if let Some(&first) = ids.get(&site.id) {
                self.error(
                    line,
                    format!("sites[{i}]: the name is also used by the site at line {first}"),
                );
            } else {
                ids.insert(site.id.clone(), line);
            }
            if let Some(other) = cfg.sites.iter().find(|s| s.pattern == site.pattern) {
                let msg = format!(
                    "sites[{i}]: the same match pattern as {} (line {}); only one can apply",
                    other.id, other.origin.line
                );
                self.error(line, msg);
            }
            cfg.sites.push(site);
        }
    }

    fn site(&mut self, i: usize, line: usize, raw: RawSite) -> Site {
        let RawMatch(pattern, pattern_text) = raw.pattern;
        let id = match raw.name {
            Some(n) => n.0.trim().to_string(),
            None => format!("sites[{i}]"),
        };
        let tls = self.site_tls(i, raw.tls.unwrap_or_default(), &pattern_text);

        if raw.basic.is_some() && raw.bearer.is_some() {
            let l = self.key_line(&site_path(i, &["bearer"]));
            self.error(l, format!("sites[{i}]: give basic or bearer, not both"));
        }
        let basic = raw.basic.and_then(|b| self.site_basic(i, b));
        let bearer = raw.bearer.and_then(|b| self.site_bearer(i, b));

        let headers = raw.headers.map_or_else(Vec::new, |h| {
            h.0.into_iter()
                .filter_map(|(HeaderName(name), v)| {
                    let value = self.param_value(i, "headers", &name, v, true)?;
                    Some((name, value))
                })
                .collect()
        });
        let mut seen: Vec<&str> = Vec::new();
        for (name, _) in &headers {
            if is_reserved_header(name) {
                let l = self.key_line(&site_path(i, &["headers", name]));
                self.error(
                    l,
                    format!(
                        "sites[{i}].headers: `{name}` cannot be set: hop-by-hop, \
                         message-framing and proxy headers are authproxy's own"
                    ),
                );
            }
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                let l = self.key_line(&site_path(i, &["headers", name]));
                self.error(l, format!("sites[{i}].headers: `{name}` is given twice"));
            }
            seen.push(name);
        }
        let query = raw.query.map_or_else(Vec::new, |q| {
            q.0.into_iter()
                .filter_map(|(QueryName(name), v)| {
                    let value = self.param_value(i, "query", &name, v, false)?;
                    Some((name, value))
                })
                .collect()
        });

        let upstream_proxy = match raw.upstream_proxy {
            None | Some(RawProxy::Inherit) => ProxyChoice::Inherit,
            Some(RawProxy::Direct) => ProxyChoice::Direct,
            Some(RawProxy::Via(via)) => match self.proxy(via, &site_path(i, &["upstream_proxy"])) {
                Some(p) => ProxyChoice::Via(p),
                None => ProxyChoice::Inherit,
            },
        };

        Site {
            id,
            origin: self.origin(line),
            pattern,
            pattern_text,
            tls,
            basic,
            bearer,
            headers,
            query,
            upstream_proxy,
            redirects: raw.redirects,
        }
    }

    fn site_tls(&mut self, i: usize, t: RawTls, pattern_text: &str) -> SiteTls {
        let has_cert = t.client_cert.is_some();
        if t.client_key.is_some() && !has_cert {
            let l = self.key_line(&site_path(i, &["tls", "client_key"]));
            self.error(l, format!("sites[{i}].tls: client_key needs client_cert"));
        }
        if t.pkcs12.is_some() && has_cert {
            let l = self.key_line(&site_path(i, &["tls", "pkcs12"]));
            self.error(
                l,
                format!("sites[{i}].tls: give pkcs12 or client_cert/client_key, not both"),
            );
        }
        let has_pw = t.key_password.is_some() || t.key_password_file.is_some();
        if has_pw && !has_cert && t.pkcs12.is_none() {
            let k = if t.key_password.is_some() {
                "key_password"
            } else {
                "key_password_file"
            };
            let l = self.key_line(&site_path(i, &["tls", k]));
            self.error(
                l,
                format!("sites[{i}].tls: {k} needs client_cert/client_key or pkcs12"),
            );
        }
        let key_password = match (t.key_password, t.key_password_file) {
            (Some(_), Some(_)) => {
                let l = self.key_line(&site_path(i, &["tls", "key_password"]));
                self.error(
                    l,
                    format!("sites[{i}].tls: give key_password or key_password_file, not both"),
                );
                None
            }
            (Some(pw), None) => {
                self.warn_inline(&site_path(i, &["tls", "key_password"]), "key_password_file");
                Some(Secret::new(pw))
            }
            (None, Some(f)) => self.read_secret(&f.0, &site_path(i, &["tls", "key_password_file"])),
            (None, None) => None,
        };
        if t.verify == Some(false) {
            let l = self.key_line(&site_path(i, &["tls", "verify"]));
            self.warn(
                l,
                format!("TLS verification is off for {}", show_key(pattern_text)),
            );
        }
        SiteTls {
            upgrade: t.upgrade.unwrap_or(false),
            client_cert: self.path_option(t.client_cert, &site_path(i, &["tls", "client_cert"])),
            client_key: self.path_option(t.client_key, &site_path(i, &["tls", "client_key"])),
            key_password,
            pkcs12: self.path_option(t.pkcs12, &site_path(i, &["tls", "pkcs12"])),
            ca: self.path_option(t.ca, &site_path(i, &["tls", "ca"])),
            ca_dir: self.path_option(t.ca_dir, &site_path(i, &["tls", "ca_dir"])),
            verify: t.verify,
        }
    }

    fn site_basic(&mut self, i: usize, b: RawBasic) -> Option<(String, Secret<String>)> {
        if b.username.is_empty()
            || b.username.contains(':')
            || b.username.chars().any(char::is_control)
        {
            let l = self.key_line(&site_path(i, &["basic", "username"]));
            self.error(
                l,
                format!("sites[{i}].basic: the username must be non-empty, without ':' or control characters"),
            );
            return None;
        }
        let password = match (b.password, b.password_file) {
            (Some(_), Some(_)) => {
                let l = self.key_line(&site_path(i, &["basic", "password"]));
                self.error(
                    l,
                    format!("sites[{i}].basic: give password or password_file, not both"),
                );
                None
            }
            (None, None) => {
                let l = self.key_line(&site_path(i, &["basic"]));
                self.error(
                    l,
                    format!("sites[{i}].basic: needs password_file (or password)"),
                );
                None
            }
            (Some(pw), None) => {
                self.warn_inline(&site_path(i, &["basic", "password"]), "password_file");
                Some(Secret::new(pw))
            }
            (None, Some(f)) => self.read_secret(&f.0, &site_path(i, &["basic", "password_file"])),
        }?;
        Some((b.username, password))
    }

    fn site_bearer(&mut self, i: usize, b: RawBearer) -> Option<Secret<String>> {
        let (token, key) = match (b.token, b.token_file) {
            (Some(_), Some(_)) => {
                let l = self.key_line(&site_path(i, &["bearer", "token"]));
                self.error(
                    l,
                    format!("sites[{i}].bearer: give token or token_file, not both"),
                );
                return None;
            }
            (None, None) => {
                let l = self.key_line(&site_path(i, &["bearer"]));
                self.error(l, format!("sites[{i}].bearer: needs token_file (or token)"));
                return None;
            }
            (Some(t), None) => {
                self.warn_inline(&site_path(i, &["bearer", "token"]), "token_file");
                (Secret::new(t), "token")
            }
            (None, Some(f)) => (
                self.read_secret(&f.0, &site_path(i, &["bearer", "token_file"]))?,
                "token_file",
            ),
        };
        let t = token.expose();
        if t.is_empty() || t.chars().any(|c| c.is_control() || c == ' ') {
            let l = self.key_line(&site_path(i, &["bearer", key]));
            self.error(
                l,
                format!("sites[{i}].bearer: the token must be non-empty, without spaces or control characters"),
            );
            return None;
        }
        Some(token)
    }

    fn param_value(
        &mut self,
        i: usize,
        section: &str,
        name: &str,
        v: RawParamValue,
        is_header: bool,
    ) -> Option<ParamValue> {
        let bad = |s: &str| is_header && s.chars().any(|c| c.is_control() && c != '\t');
        match v {
            RawParamValue::Plain(s) => {
                if bad(&s) {
                    let l = self.key_line(&site_path(i, &[section, name]));
                    self.error(
                        l,
                        format!("sites[{i}].{section}.{name}: the value must not contain line breaks or control characters"),
                    );
                    return None;
                }
                // `check` shows every value as `***`; say where a secret may sit in the clear.
                self.warn_inline(&site_path(i, &[section, name]), "value_file");
                Some(ParamValue::Plain(s))
            }
            RawParamValue::File(f) => {
                let at = site_path(i, &[section, name, "value_file"]);
                let secret = self.read_secret(&f, &at)?;
                if bad(secret.expose()) {
                    let l = self.key_line(&at);
                    self.error(
                        l,
                        format!("sites[{i}].{section}.{name}.value_file: the file must hold one line without control characters"),
                    );
                    return None;
                }
                Some(ParamValue::Secret(secret))
            }
        }
    }
}

/// Reads a regular file of at most `max` bytes as UTF-8 (a FIFO or device is refused
/// without blocking: see [`crate::small_file`]).
fn read_capped_text(path: &Path, max: u64) -> std::io::Result<String> {
    let buf = match crate::small_file::read(path, max) {
        Ok((buf, _)) => buf,
        Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "file too large",
            ))
        }
        Err(e) => return Err(e),
    };
    String::from_utf8(buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not valid UTF-8"))
}

fn read_small_text(path: &Path) -> std::io::Result<String> {
    read_capped_text(path, MAX_SECRET_FILE)
}

/// Parses and validates `text` as the configuration file `path` (used for messages and
/// to resolve relative paths).
pub fn parse_str(path: &Path, text: &str, env: &SecretEnv) -> Result<YamlConfig, Vec<Diagnostic>> {
    Cx::new(path, text, env).run(path)
}

/// Reads `path` and parses it with [`parse_str`].
pub fn parse_file(path: &Path, env: &SecretEnv) -> Result<YamlConfig, Vec<Diagnostic>> {
    let text = read_capped_text(path, MAX_CONFIG_FILE);
    match text {
        Ok(text) => parse_str(path, &text, env),
        Err(e) => Err(vec![Diagnostic {
            origin: Origin::new(path, 0),
            message: format!("cannot read the configuration file: {e}"),
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{HostPattern, SchemePattern};
    use crate::target::Scheme;
    use std::fs;

    const SECRET: &str = "S3CRET-VALUE";

    fn no_env() -> SecretEnv {
        SecretEnv::default()
    }

    fn parse(text: &str) -> Result<YamlConfig, Vec<Diagnostic>> {
        parse_str(Path::new("/etc/authproxy/config.yaml"), text, &no_env())
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(es) => es.iter().map(ToString::to_string).collect(),
        }
    }

    /// A temporary config directory holding the given files.
    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            fs::write(d.path().join(name), contents).unwrap();
        }
        d
    }

    const FULL: &str = r#"# full example
listen: ["127.0.0.1:3128", "[::1]:3129"]
access: { allow_uids: [self, 1001], proxy_token_file: tok }
rc_files: auto
netrc: auto
cookie_jar: auto
upstream_proxy: http://user:pass@proxy.corp:8080
no_proxy: [".internal.example", "LocalHost", "10.0.0.0/8"]
redirects: { max_hops: 12 }
timeouts: { connect: 10s, first_byte: 60s, idle: 5m }
log: { format: json, level: info }
sites:
  - match: "esgf-node.example.org"
    name: esgf
    tls: { upgrade: true, client_cert: cert.pem, client_key: key.pem, key_password_file: pw, ca: ca.pem, ca_dir: /etc/ssl/x, verify: true }
  - match: "https://Data.Example.org/thredds/"
    basic: { username: alice, password_file: pw }
    headers: { X-Api-Key: {value_file: k}, X-Plain: "v" }
    query: { apikey: { value_file: k }, format: "nc", version: 2 }
    upstream_proxy: direct
    redirects: follow
  - match: "*.example.net:8443"
    bearer: { token_file: edl.token }
    upstream_proxy: { url: "http://proxy2:3128", username: u, password_file: pw }
    redirects: pass
  - match: "*"
    tls:
      pkcs12: id.p12
      key_password_file: pw
      verify: false
"#;

    #[test]
    fn full_example_parses() {
        let d = dir_with(&[
            ("tok", "proxy-token\n"),
            ("pw", "pa ss\n\n"),
            ("k", "key-1 \n"),
            ("edl.token", "tok123"),
        ]);
        let path = d.path().join("config.yaml");
        let c = parse_str(&path, FULL, &no_env()).unwrap_or_else(|e| panic!("{e:?}"));
        let dir = d.path();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[1], "[::1]:3129".parse().unwrap());
        assert_eq!(
            c.access.allow_uids,
            vec![AllowUid::Current, AllowUid::Uid(1001)]
        );
        assert_eq!(
            c.access.proxy_token.as_ref().unwrap().expose(),
            "proxy-token"
        );
        assert_eq!(
            c.access.proxy_token_file.as_deref(),
            Some(dir.join("tok").as_path())
        );
        assert_eq!(c.rc_files, RcFilesSetting::Auto);
        assert_eq!(c.netrc, NetrcSetting::Auto);
        assert_eq!(c.cookie_jar, None);
        let up = c.upstream_proxy.as_ref().unwrap();
        assert_eq!((up.host.as_str(), up.port), ("proxy.corp", 8080));
        let (u, p) = up.credentials.as_ref().unwrap();
        assert_eq!((u.as_str(), p.expose().as_str()), ("user", "pass"));
        assert_eq!(up.origin.line, 7);
        assert!(!format!("{up:?}").contains("pass\""));
        assert_eq!(
            c.no_proxy,
            vec![".internal.example", "localhost", "10.0.0.0/8"]
        );
        assert_eq!(c.max_hops, 12);
        assert_eq!(c.timeouts.connect, Some(Duration::from_secs(10)));
        assert_eq!(c.timeouts.idle, Some(Duration::from_secs(300)));
        assert_eq!(c.log.format, Some(LogFormat::Json));
        assert_eq!(c.log.level, Some(LogLevel::Info));

        assert_eq!(c.sites.len(), 4);
        let s0 = &c.sites[0];
        assert_eq!(s0.id, "esgf");
        assert_eq!(s0.origin.line, 13);
        assert_eq!(
            s0.pattern.host,
            HostPattern::Exact("esgf-node.example.org".into())
        );
        assert!(s0.tls.upgrade);
        assert_eq!(
            s0.tls.client_cert.as_deref(),
            Some(dir.join("cert.pem").as_path())
        );
        assert_eq!(
            s0.tls.client_key.as_deref(),
            Some(dir.join("key.pem").as_path())
        );
        assert_eq!(s0.tls.key_password.as_ref().unwrap().expose(), "pa ss");
        assert_eq!(s0.tls.ca_dir.as_deref(), Some(Path::new("/etc/ssl/x")));
        assert_eq!(s0.tls.verify, Some(true));
        assert_eq!(s0.upstream_proxy, ProxyChoice::Inherit);

        let s1 = &c.sites[1];
        assert_eq!(s1.id, "sites[1]");
        assert_eq!(s1.origin.line, 16);
        assert_eq!(s1.pattern_text, "https://Data.Example.org/thredds/");
        assert_eq!(s1.pattern.scheme, SchemePattern::Is(Scheme::Https));
        assert_eq!(s1.pattern.path.as_deref(), Some("/thredds"));
        let (u, p) = s1.basic.as_ref().unwrap();
        assert_eq!((u.as_str(), p.expose().as_str()), ("alice", "pa ss"));
        assert_eq!(s1.headers[0].0, "X-Api-Key");
        assert_eq!(
            s1.headers[0].1,
            ParamValue::Secret(Secret::new("key-1".into()))
        );
        assert_eq!(
            s1.headers[1],
            ("X-Plain".into(), ParamValue::Plain("v".into()))
        );
        assert_eq!(s1.query.len(), 3);
        assert_eq!(
            s1.query[2],
            ("version".into(), ParamValue::Plain("2".into()))
        );
        assert_eq!(s1.upstream_proxy, ProxyChoice::Direct);
        assert_eq!(s1.redirects, Some(RedirectMode::Follow));

        let s2 = &c.sites[2];
        assert_eq!(s2.bearer.as_ref().unwrap().expose(), "tok123");
        match &s2.upstream_proxy {
            ProxyChoice::Via(p) => {
                assert_eq!((p.host.as_str(), p.port), ("proxy2", 3128));
                assert_eq!(p.credentials.as_ref().unwrap().1.expose(), "pa ss");
                assert_eq!(p.origin.line, 24);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s2.redirects, Some(RedirectMode::Pass));

        let s3 = &c.sites[3];
        assert_eq!(s3.pattern.host, HostPattern::Any);
        assert_eq!(s3.origin.line, 26);
        assert_eq!(s3.tls.pkcs12.as_deref(), Some(dir.join("id.p12").as_path()));
        assert_eq!(s3.tls.verify, Some(false));

        let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        let (inline, warnings): (Vec<String>, Vec<String>) = warnings
            .into_iter()
            .partition(|w| w.contains("is written inline; value_file is recommended"));
        assert_eq!(inline.len(), 3, "{inline:?}");
        assert!(
            inline[0].contains(":18: sites[1].headers.X-Plain "),
            "{inline:?}"
        );
        assert!(
            inline[1].contains(":19: sites[1].query.format "),
            "{inline:?}"
        );
        assert!(
            inline[2].contains(":19: sites[1].query.version "),
            "{inline:?}"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains(":7: upstream_proxy has a password in its URL"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains(":30: TLS verification is off for *"),
            "{warnings:?}"
        );
        assert!(!warnings
            .iter()
            .any(|w| w.contains("pass@") || w.contains(":pass")));

        let mut read = c.files_read.clone();
        read.sort();
        let mut want: Vec<PathBuf> = ["edl.token", "k", "pw", "tok"]
            .iter()
            .map(|f| dir.join(f))
            .collect();
        want.sort();
        assert_eq!(read, want);
    }

    #[test]
    fn empty_and_comment_only_files_give_defaults() {
        for text in [
            "",
            "\n\n",
            "# just a comment\n  # another\n",
            "---\n",
            "sites:\n",
        ] {
            let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(c.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
            assert_eq!(c.max_hops, 10);
            assert_eq!(c.access.allow_uids, vec![AllowUid::Current]);
            assert_eq!(c.rc_files, RcFilesSetting::Auto);
            assert_eq!(c.netrc, NetrcSetting::Auto);
            assert!(c.sites.is_empty() && c.warnings.is_empty() && c.upstream_proxy.is_none());
        }
    }

    #[test]
    fn misspelt_key_in_a_site_names_line_key_and_valid_keys() {
        let text =
            "sites:\n  - match: a.example\n    basic:\n      username: a\n      pasword_file: pw\n";
        let es = errors(text);
        assert_eq!(es.len(), 1, "{es:?}");
        assert!(
            es[0].starts_with("/etc/authproxy/config.yaml:5: "),
            "{es:?}"
        );
        assert!(es[0].contains("`pasword_file`"), "{es:?}");
        assert!(es[0].contains("password_file"), "{es:?}");
    }

    #[test]
    fn every_bad_site_is_reported() {
        let text = "\
sites:
  - match: a.example
    bsic: {}
  - match: b.example
  - match: c.example
    tls: { verfy: true }
listen: [nonsense]
bogus: 1
";
        let es = errors(text);
        assert_eq!(es.len(), 4, "{es:?}");
        assert!(es[0].contains(":3: ") && es[0].contains("`bsic`"), "{es:?}");
        assert!(
            es[1].contains(":6: ") && es[1].contains("`verfy`"),
            "{es:?}"
        );
        assert!(
            es[2].contains(":7: ") && es[2].contains("not a socket address"),
            "{es:?}"
        );
        assert!(es[3].contains(":8: unknown setting `bogus`"), "{es:?}");
    }

    #[test]
    fn later_features_are_rejected_with_their_own_message() {
        let text = "\
sites:
  - match: a.example
    login: { url: \"https://a.example/login\", method: POST }
  - match: b.example
    handle:
      username: x
  - match: c.example
    query_token: { param: p }
";
        let es = errors(text);
        assert_eq!(
            es,
            vec![
                "/etc/authproxy/config.yaml:3: `login` is not supported by this version yet",
                "/etc/authproxy/config.yaml:5: `handle` is not supported by this version yet",
                "/etc/authproxy/config.yaml:8: `query_token` is not supported by this version yet",
            ]
        );
    }

    #[test]
    fn secret_values_never_appear_in_messages() {
        let cases = [
            "sites:\n  - match: a\n    basic: { username: a, password: [S3CRET-VALUE] }\n",
            "sites:\n  - match: a\n    basic: { username: a, password: { x: S3CRET-VALUE } }\n",
            "listen: S3CRET-VALUE\n",
            "listen: [S3CRET-VALUE]\n",
            "listen: [\"S3CRET-VALUE:80\"]\n",
            "redirects: { max_hops: S3CRET-VALUE }\n",
            "redirects: S3CRET-VALUE\n",
            "timeouts: { connect: S3CRET-VALUE }\n",
            "log: { format: S3CRET-VALUE }\n",
            "log: { level: S3CRET-VALUE }\n",
            "access: { allow_uids: [S3CRET-VALUE] }\n",
            "access: S3CRET-VALUE\n",
            "netrc: [S3CRET-VALUE]\n",
            "rc_files: S3CRET-VALUE\n",
            "no_proxy: { a: S3CRET-VALUE }\n",
            "upstream_proxy: https://u:S3CRET-VALUE@proxy:8080\n",
            "upstream_proxy: socks5://u:S3CRET-VALUE@proxy:8080\n",
            "upstream_proxy: \"http://u:S3CRET-VALUE@\"\n",
            "upstream_proxy: \"http://u:S3CRET-VALUE@proxy:99999\"\n",
            "upstream_proxy: \"S3CRET-VALUE\"\n",
            "upstream_proxy: { url: \"http://u:S3CRET-VALUE@p\", username: x, password: y }\n",
            "sites: S3CRET-VALUE\n",
            "sites:\n  - match: a\n    bearer: S3CRET-VALUE\n",
            "sites:\n  - match: a\n    bearer: { token: \"S3CRET-VALUE with space\" }\n",
            "sites:\n  - match: a\n    redirects: S3CRET-VALUE\n",
            "sites:\n  - match: a\n    tls: { verify: S3CRET-VALUE }\n",
            "sites:\n  - match: a\n    tls: { upgrade: S3CRET-VALUE }\n",
            "sites:\n  - match: a\n    headers: { X-A: \"S3CRET-VALUE\\r\\nX-B: 1\" }\n",
            "sites:\n  - match: a\n    headers: { X-A: 1.5 }\n",
            "sites:\n  - match: a\n    headers: { X-A: [S3CRET-VALUE] }\n",
            "sites:\n  - match: a\n    headers: { X-A: { value: S3CRET-VALUE, value_file: f } }\n",
            "sites:\n  - match: \"S3CRET-VALUE:99999\"\n",
            "sites:\n  - match: \"https://u:S3CRET-VALUE@h/\"\n",
            "sites:\n  - match: a\n    name: [S3CRET-VALUE]\n",
            "sites:\n  - match: a\n    tls: { key_password: S3CRET-VALUE }\n",
            "sites:\n  - match: a\n    basic: { username: a, password: 'S3CRET-VALUE', password: x }\n",
            "sites:\n  - match: a\n    basic: { username: \"S3CRET-VALUE:x\", password: x }\n",
            "password: \"S3CRET-VALUE\n",
            "a: &x S3CRET-VALUE\nb: *y\n",
            "redirects: { max_hops: 123456789123456789123456789 }\n",
            "S3CRET-VALUE",
            "[S3CRET-VALUE]",
            "!tag S3CRET-VALUE",
            "listen: !tag S3CRET-VALUE\n",
        ];
        for text in cases {
            let (msgs, ok) = match parse(text) {
                Ok(c) => (
                    c.warnings
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>(),
                    true,
                ),
                Err(es) => (es.iter().map(ToString::to_string).collect(), false),
            };
            assert!(!msgs.is_empty(), "no message for {text:?} (ok = {ok})");
            for m in &msgs {
                assert!(!m.contains("S3CRET"), "leak for {text:?}: {m}");
                assert!(!m.contains(PROBE), "probe marker leaked for {text:?}: {m}");
            }
        }
    }

    #[test]
    fn secret_files_resolve_against_config_dir_or_credentials_directory() {
        let conf = dir_with(&[("pw", "from-config-dir\n"), ("only-here", "config-only\n")]);
        let creds = dir_with(&[("pw", "from-creds\n"), ("cred-only", "cred-only\n")]);
        let path = conf.path().join("c.yaml");
        let text = "\
sites:
  - match: a
    basic: { username: u, password_file: pw }
  - match: b
    bearer: { token_file: only-here }
  - match: c
    bearer: { token_file: $CREDENTIALS_DIRECTORY/cred-only }
  - match: d
    bearer: { token_file: ABSOLUTE }
";
        let abs = conf.path().join("only-here");
        let text = text.replace("ABSOLUTE", abs.to_str().unwrap());

        // Without CREDENTIALS_DIRECTORY: relative to the config file; the explicit
        // prefix is an error naming the option and line.
        let es = parse_str(&path, &text, &no_env()).unwrap_err();
        assert_eq!(es.len(), 1, "{es:?}");
        assert_eq!(es[0].origin.line, 7);
        assert!(
            es[0].message.contains("sites[2].bearer.token_file"),
            "{es:?}"
        );
        assert!(
            es[0].message.contains("CREDENTIALS_DIRECTORY is not set"),
            "{es:?}"
        );

        let env = SecretEnv {
            credentials_directory: Some(creds.path().to_path_buf()),
        };
        let c = parse_str(&path, &text, &env).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.sites[0].basic.as_ref().unwrap().1.expose(), "from-creds");
        assert_eq!(c.sites[1].bearer.as_ref().unwrap().expose(), "config-only");
        assert_eq!(c.sites[2].bearer.as_ref().unwrap().expose(), "cred-only");
        assert_eq!(c.sites[3].bearer.as_ref().unwrap().expose(), "config-only");
        assert!(c.files_read.contains(&creds.path().join("pw")));
        assert!(c.files_read.contains(&conf.path().join("only-here")));
        assert!(c.files_read.contains(&creds.path().join("cred-only")));
        assert_eq!(c.files_read.len(), 3);

        // Without CREDENTIALS_DIRECTORY, `pw` comes from the config directory.
        let text2 = "sites:\n  - match: a\n    basic: { username: u, password_file: pw }\n";
        let c = parse_str(&path, text2, &no_env()).unwrap();
        assert_eq!(
            c.sites[0].basic.as_ref().unwrap().1.expose(),
            "from-config-dir"
        );
    }

    #[test]
    fn missing_or_bad_secret_file_names_option_line_and_path() {
        let conf = dir_with(&[("empty", " \n\n"), ("multi", "S3CRET-VALUE\nsecond line\n")]);
        let path = conf.path().join("c.yaml");
        let text = "\
access: { proxy_token_file: nope.tok }
sites:
  - match: a
    tls:
      client_cert: c.pem
      key_password_file: missing-pw
  - match: b
    bearer: { token_file: empty }
  - match: c
    headers: { X-Key: { value_file: multi } }
";
        let es = parse_str(&path, text, &no_env()).unwrap_err();
        assert_eq!(es.len(), 4, "{es:?}");
        let want_path = conf.path().join("nope.tok");
        assert_eq!(es[0].origin.line, 1);
        assert!(es[0].message.contains("access.proxy_token_file"), "{es:?}");
        assert!(
            es[0].message.contains(&*want_path.to_string_lossy()),
            "{es:?}"
        );
        assert_eq!(es[1].origin.line, 6);
        assert!(
            es[1].message.contains("sites[0].tls.key_password_file"),
            "{es:?}"
        );
        assert!(es[1].message.contains("missing-pw"), "{es:?}");
        assert_eq!(es[2].origin.line, 8);
        assert!(es[2].message.contains("is empty"), "{es:?}");
        assert_eq!(es[3].origin.line, 10);
        assert!(es[3].message.contains("one line"), "{es:?}");
        for e in &es {
            assert!(!e.to_string().contains("S3CRET"), "{e}");
        }
    }

    #[test]
    fn validation_errors_carry_their_lines() {
        let text = "\
listen: [\"127.0.0.1:3128\", \"localhost:80\"]
redirects: { max_hops: 0 }
timeouts: { connect: 10, idle: 0s }
upstream_proxy: https://proxy:8080
sites:
  - match: a.example
    tls: { client_key: k.pem }
  - match: b.example
    tls: { client_cert: c.pem, pkcs12: p.p12 }
  - match: c.example
    basic: { username: u, password: p }
    bearer: { token: t }
  - match: \"a.*.example\"
  - match: d.example
    headers: { \"Bad Name\": x }
  - match: e.example
    redirects: sometimes
  - match: a.example
  - match: f.example
    upstream_proxy: { url: \"http://p:1\", username: u }
";
        let es = errors(text);
        let got: Vec<(usize, &str)> = es
            .iter()
            .map(|e| {
                let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
                (line, e.as_str())
            })
            .collect();
        let expect: &[(usize, &str)] = &[
            (1, "not a socket address"),
            (2, "redirects.max_hops: must be between 1 and 50"),
            (3, "needs a unit"),
            (4, "https:// upstream proxies are not supported"),
            (7, "client_key needs client_cert"),
            (9, "give pkcs12 or client_cert/client_key, not both"),
            (12, "give basic or bearer, not both"),
            (13, "wildcard"),
            (15, "invalid HTTP header name"),
            (17, "unknown variant, expected `pass` or `follow`"),
            (18, "same match pattern as sites[0] (line 6)"),
            (20, "username needs password_file"),
        ];
        assert_eq!(got.len(), expect.len(), "{es:#?}");
        for ((line, msg), (want_line, want)) in got.iter().zip(expect) {
            assert_eq!(line, want_line, "{msg}");
            assert!(msg.contains(want), "{msg} should contain {want}");
        }
        // The second timeout problem is in the same mapping: serde stops at the first.
        let es = errors("timeouts: { idle: 0s }\n");
        assert!(
            es[0].contains(":1: ") && es[0].contains("longer than zero"),
            "{es:?}"
        );
        let es = errors("redirects: { max_hops: 51 }\n");
        assert!(es[0].contains("between 1 and 50"), "{es:?}");
    }

    #[test]
    fn inline_secrets_warn_without_values() {
        let text = "\
sites:
  - match: a
    basic: { username: u, password: S3CRET-VALUE }
  - match: b
    bearer:
      token: S3CRET-VALUE
  - match: c
    tls: { client_cert: c.pem, key_password: S3CRET-VALUE }
upstream_proxy: { url: \"http://proxy:3128\", username: u, password: S3CRET-VALUE }
";
        let c = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(
            w[0].contains(":3: sites[0].basic.password is written inline; password_file"),
            "{w:?}"
        );
        assert!(
            w[1].contains(":6: sites[1].bearer.token is written inline"),
            "{w:?}"
        );
        assert!(
            w[2].contains(":8: sites[2].tls.key_password is written inline"),
            "{w:?}"
        );
        assert!(
            w[3].contains(":9: upstream_proxy.password is written inline"),
            "{w:?}"
        );
        assert!(!w.iter().any(|m| m.contains("S3CRET")));
        assert_eq!(c.sites[0].basic.as_ref().unwrap().1.expose(), SECRET);
        assert_eq!(c.upstream_proxy.unwrap().port, 3128);
    }

    #[test]
    fn reserved_header_names_are_refused_with_their_line() {
        let names = [
            "Host",
            "content-length",
            "Transfer-Encoding",
            "CONNECTION",
            "TE",
            "Upgrade",
            "Trailer",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "Proxy-Anything",
        ];
        for name in names {
            let text = format!(
                "sites:\n  - match: a.example\n    headers:\n      X-Ok: fine\n      \
                 {name}: S3CRET-VALUE\n"
            );
            let es = errors(&text);
            assert_eq!(es.len(), 1, "{name}: {es:?}");
            assert!(es[0].contains(":5: "), "{name}: {es:?}");
            assert!(es[0].contains(&format!("`{name}` cannot be set")), "{es:?}");
            assert!(!es[0].contains("S3CRET"), "{es:?}");
        }
        for name in ["X-Proxy-Id", "Proxy", "Hostname", "TEs", "Authorization"] {
            let text = format!("sites:\n  - match: a.example\n    headers: {{ {name}: v }}\n");
            assert!(parse(&text).is_ok(), "{name}");
        }
    }

    #[test]
    fn netrc_default_is_off_unless_set_true() {
        assert!(!parse("listen: [\"127.0.0.1:1\"]\n").unwrap().netrc_default);
        assert!(parse("netrc_default: true\n").unwrap().netrc_default);
        assert!(!parse("netrc_default: false\n").unwrap().netrc_default);
        let es = errors("\nnetrc_default: S3CRET-VALUE\n");
        assert_eq!(es.len(), 1, "{es:?}");
        assert!(es[0].contains(":2:"), "{es:?}");
        assert!(!es[0].contains("S3CRET"), "{es:?}");
    }

    #[test]
    fn top_level_settings_forms() {
        let c = parse("listen: []\n").unwrap_err();
        assert!(c[0]
            .to_string()
            .contains(":1: listen: give at least one address"));
        let c = parse(
            "rc_files: [a.rc, /abs/b.rc]\nnetrc: false\ncookie_jar: jar.txt\nno_proxy: \"a.example, .B.example\"\nupstream_proxy: http://[::1]\n",
        )
        .unwrap();
        assert_eq!(
            c.rc_files,
            RcFilesSetting::List(vec!["/etc/authproxy/a.rc".into(), "/abs/b.rc".into()])
        );
        assert_eq!(c.netrc, NetrcSetting::Off);
        assert_eq!(c.cookie_jar, Some("/etc/authproxy/jar.txt".into()));
        assert_eq!(c.no_proxy, vec!["a.example", ".b.example"]);
        let up = c.upstream_proxy.unwrap();
        assert_eq!((up.host.as_str(), up.port), ("::1", DEFAULT_PROXY_PORT));
        assert!(up.credentials.is_none());
        let c = parse("rc_files: []\nnetrc: .netrc\nupstream_proxy: direct\n").unwrap();
        assert_eq!(c.rc_files, RcFilesSetting::List(vec![]));
        assert_eq!(c.netrc, NetrcSetting::Path("/etc/authproxy/.netrc".into()));
        assert!(c.upstream_proxy.is_none());
        let es = errors("listen: [\"127.0.0.1:1\"]\nlisten: [\"127.0.0.1:2\"]\n");
        assert_eq!(es.len(), 1, "{es:?}");
        let es = errors("upstream_proxy: http://proxy/some/path\n");
        assert!(es[0].contains("must not have a path"), "{es:?}");
        let es = errors("- a\n- b\n");
        assert!(
            es[0].contains(":1: the configuration must be a map"),
            "{es:?}"
        );
        let es = errors("sites:\n  - name: x\n");
        assert!(
            es[0].contains(":2: ") && es[0].contains("missing field `match`"),
            "{es:?}"
        );
    }

    #[test]
    fn site_names_must_be_unique() {
        let es = errors("sites:\n  - { match: a, name: x }\n  - { match: b, name: x }\n");
        assert_eq!(es.len(), 1, "{es:?}");
        assert!(es[0].contains(":3: ") && es[0].contains("line 2"), "{es:?}");
    }

    #[test]
    fn error_display_format() {
        let e = Diagnostic {
            origin: Origin::new("/x/c.yaml", 4),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/x/c.yaml:4: bad");
        let e = Diagnostic {
            origin: Origin::new("/x/c.yaml", 0),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/x/c.yaml: bad");
    }

    #[test]
    fn config_or_secret_file_that_is_a_fifo_is_refused_promptly() {
        let d = dir_with(&[(
            "c.yaml",
            "sites:\n  - match: a.example\n    bearer: { token_file: tok }\n",
        )]);
        let fifo = |name: &str| {
            let p = d.path().join(name);
            rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600))
                .unwrap();
            p
        };
        let start = std::time::Instant::now();
        let tok = fifo("tok");
        let es = parse_file(&d.path().join("c.yaml"), &no_env()).unwrap_err();
        assert_eq!(es.len(), 1, "{es:?}");
        assert!(
            es[0].to_string().contains(&tok.display().to_string()),
            "{es:?}"
        );
        let es = parse_file(&fifo("fifo.yaml"), &no_env()).unwrap_err();
        assert!(es[0].to_string().contains("not a regular file"), "{es:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn parse_file_reads_and_reports_missing_file() {
        let d = dir_with(&[("c.yaml", "listen: [\"127.0.0.1:9999\"]\n")]);
        let c = parse_file(&d.path().join("c.yaml"), &no_env()).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:9999".parse().unwrap()]);
        let es = parse_file(&d.path().join("missing.yaml"), &no_env()).unwrap_err();
        assert_eq!(es.len(), 1);
        assert!(
            es[0].to_string().contains("missing.yaml: cannot read"),
            "{es:?}"
        );
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        // Every prefix of the full example, and single-byte corruptions of it.
        let d = dir_with(&[("tok", "t"), ("pw", "p"), ("k", "k"), ("edl.token", "e")]);
        let path = d.path().join("c.yaml");
        let env = no_env();
        for (i, _) in FULL.char_indices() {
            let _ = parse_str(&path, &FULL[..i], &env);
        }
        let specials = [
            '\n', ':', '-', '[', '{', '&', '*', '!', '"', '\'', ' ', '#', '|', '>', '?',
        ];
        for (n, (i, c)) in FULL.char_indices().enumerate() {
            if n % 3 != 0 {
                continue;
            }
            let r = specials[n % specials.len()];
            let mut s = String::with_capacity(FULL.len());
            s.push_str(&FULL[..i]);
            s.push(r);
            s.push_str(&FULL[i + c.len_utf8()..]);
            let _ = parse_str(&path, &s, &env);
        }
        for text in [
            "\u{feff}listen: [\"127.0.0.1:1\"]",
            "a: &a [*a]",
            "sites: &s [*s]",
            "? [a]\n: b",
            "1: x",
            "sites:\n  - !!map { match: a }\n",
            "sites:\n  - &x { match: a }\n  - *x\n",
            "sites: [~, 1, [], \"\"]",
            "<<: { listen: [] }",
            "---\na: 1\n---\nb: 2\n",
            "\t",
            "%YAML 1.1\n---\nsites: []",
            &"[".repeat(10_000),
            &format!("sites:\n{}", "  - { match: a }\n".repeat(50)),
        ] {
            let _ = parse(text);
        }
    }
}
