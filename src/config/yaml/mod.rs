/*!
The YAML configuration file: what rc files and `.netrc` cannot say.

```yaml
listen: ["127.0.0.1:3128"]
admin: { listen: "127.0.0.1:9129" }    # /healthz and /metrics; off when absent
access: { allow_uids: [self, 1001], proxy_token_file: tok }
rc_files: auto                  # or a list of paths, or [] for none
netrc: auto                     # or a path, or false for none
cookie_jar: auto                # or a path
upstream_proxy: http://proxy.corp:8080   # or { url: ..., username: u, password_file: pw }
no_proxy: [".internal.example", "localhost"]
redirects: { max_hops: 10 }
timeouts: { connect: 10s, first_byte: 60s, idle: 5m }
log: { format: plain, level: info }
shutdown: { drain: 10s }        # how long SIGTERM waits for requests in flight
intercept: ["*.earthdata.nasa.gov"]  # https hosts whose TLS authproxy terminates
intercept_ca: { cert: ca.pem, key: ca-key.pem }  # or { name_constraints: true }; default: generated
sites:
  - match: "esgf-node.example.org"   # host | host:port | *.domain | http(s)://host[:port]/path | "*"
    name: esgf
    tls: { upgrade: true, client_cert: cert.pem, client_key: key.pem, key_password_file: pw }
    basic: { username: alice, password_file: pw }
    headers: { X-Api-Key: { value_file: k }, X-Plain: "v" }
    query: { apikey: { value_file: k }, format: nc }
    upstream_proxy: direct
    redirects: follow
  - match: "hdl.example.org:8000"
    handle: { username: "300:foo/bar", password_file: hs.pw }   # or { client_cert: true },
                                          # or { credentials_file: creds.json }
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
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use self::scalar::{parse_duration, parse_match};
use super::origin::Origin;
use super::Diagnostic;
use crate::rule::Pattern;
use crate::secret::Secret;

/// More sites than this is an error (each site costs a few parses of the document).
pub const MAX_SITES: usize = 500;

/// Configuration files larger than this are refused by [`parse_file`].
const MAX_CONFIG_FILE: u64 = 4 << 20;

const DEFAULT_MAX_HOPS: u8 = 10;

pub use crate::rule::proxy::DEFAULT_PROXY_PORT;

// ---------------------------------------------------------------------------------------
// Output types
// ---------------------------------------------------------------------------------------

/// The validated YAML configuration.
#[derive(Debug, Clone)]
pub struct YamlConfig {
    /// The configuration file, as given.
    pub path: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// `admin.listen`: the loopback address of `/healthz` and `/metrics` (off if `None`).
    pub admin: Option<SocketAddr>,
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
    /// `limits:`; what is not written keeps its default.
    pub limits: crate::limits::Limits,
    pub log: LogSettings,
    /// `shutdown.drain`: how long SIGTERM waits for requests in flight (`None`: the
    /// daemon's default).
    pub shutdown_drain: Option<Duration>,
    /// `intercept`: the https authorities whose TLS authproxy terminates (file order).
    pub intercept: Vec<InterceptEntry>,
    /// `intercept_ca`.
    pub intercept_ca: InterceptCa,
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
            admin: None,
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
            limits: crate::limits::Limits::default(),
            log: LogSettings::default(),
            shutdown_drain: None,
            intercept: Vec::new(),
            intercept_ca: InterceptCa::default(),
            sites: Vec::new(),
            warnings: Vec::new(),
            files_read: Vec::new(),
        }
    }
}

/// One `intercept` entry: a `sites[].match` pattern without a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptEntry {
    pub pattern: Pattern,
    /// As written, for `check` and `explain`.
    pub written: String,
    pub origin: Origin,
}

/// `intercept_ca`: the CA's files, or (both `None`) the generated one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterceptCa {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The generated CA carries permitted-subtree name constraints for `intercept`.
    pub name_constraints: bool,
}

/// Who may use the proxy (enforced by `crate::access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Default `[self]`. An empty list is kept as written. User names are resolved to
    /// uids at load.
    pub allow_uids: Vec<AllowUid>,
    /// `mode` (default `uid`).
    pub mode: AccessMode,
    /// Resolved path of `proxy_token_file`.
    pub proxy_token_file: Option<PathBuf>,
    /// Its trimmed contents.
    pub proxy_token: Option<Secret<String>>,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            allow_uids: vec![AllowUid::Current],
            mode: AccessMode::Uid,
            proxy_token_file: None,
            proxy_token: None,
        }
    }
}

/// `access.mode`: what admits a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// The client's socket must belong to an allowed uid; a configured proxy token is
    /// required as well.
    #[default]
    Uid,
    /// The proxy token alone admits a request (needs `proxy_token_file`): for clients
    /// whose sockets the kernel cannot attribute (other hosts, other namespaces).
    Token,
    /// No uid check (a configured token is still required). For benchmarks: refused on
    /// a non-loopback listener, and loudly warned about.
    Open,
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
    /// `basic.preemptive` (default true): send it with every request; `false` only in
    /// answer to the host's 401 Basic challenge.
    pub basic_preemptive: bool,
    pub bearer: Option<Secret<String>>,
    /// In file order, names as written.
    pub headers: Vec<(String, HeaderValue)>,
    /// In file order, not percent-encoded.
    pub query: Vec<(String, QueryValue)>,
    pub upstream_proxy: ProxyChoice,
    pub redirects: Option<RedirectMode>,
    /// `handle`: a Handle Server credential, from the YAML or its credentials JSON (whose
    /// certificate, CA and verification settings are in `tls`).
    pub handle: Option<crate::rule::HandleCredential>,
    /// `login`: a certificate-plus-login servlet's session step.
    pub login: Option<crate::rule::LoginStep>,
    pub query_token: Option<SiteQueryToken>,
}

/// A site's `query_token`, checked; a `token_file` is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteQueryToken {
    /// Not percent-encoded.
    pub param: String,
    pub source: KeySourceSetting,
    pub lifetime: Duration,
    pub refresh_before: Duration,
    pub replace: bool,
    pub cache_file: Option<PathBuf>,
    /// The line of the `query_token` key.
    pub origin: Origin,
}

/// Where a `query_token` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySourceSetting {
    Url(url::Url),
    File {
        path: PathBuf,
        key: Secret<String>,
    },
    /// The program (resolved against the config directory when it is a relative path
    /// with a `/`) and its arguments.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
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

/// Parses and validates `text` as the configuration file `path` (used for messages and
/// to resolve relative paths).
pub fn parse_str(path: &Path, text: &str, env: &SecretEnv) -> Result<YamlConfig, Vec<Diagnostic>> {
    validate::Cx::new(path, text, env).run(path)
}

/// Reads `path` and parses it with [`parse_str`].
pub fn parse_file(path: &Path, env: &SecretEnv) -> Result<YamlConfig, Vec<Diagnostic>> {
    let text = read_capped_text(path, MAX_CONFIG_FILE);
    match text {
        Ok(text) => parse_str(path, &text, env),
        Err(e) => Err(vec![Diagnostic::new(
            Origin::new(path, 0),
            format!("cannot read the configuration file: {e}"),
        )]),
    }
}

#[cfg(test)]
mod tests;
