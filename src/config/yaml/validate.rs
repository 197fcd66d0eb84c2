/*!
Turning the raw values into the validated [`YamlConfig`]: the context [`Cx`] collects
errors and warnings as it goes, each with its line (found through [`super::locate`]).

The top-level settings and upstream proxies are here; the `sites` entries are in
[`site`] (their `handle` and its pyhandle credentials JSON in [`handle`]), and paths and
`*_file` secrets in [`secret_file`].
*/

mod handle;
mod query_token;
mod secret_file;
mod site;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, DeserializeSeed};
use serde_yaml::Value;

use super::locate::{clean_message, option_name, show_key, Nav, NodeProbe, Seg, PROBE};
use super::raw::RawUid;
use super::raw::{
    NonEmpty, RawAccess, RawAddr, RawAdmin, RawCookieJar, RawHops, RawInterceptCa, RawLimits,
    RawLog, RawMatch, RawNetrc, RawNoProxy, RawProxy, RawProxyVia, RawRcFiles, RawRedirects,
    RawShutdown, RawTimeouts,
};
use super::{
    AccessMode, AllowUid, InterceptCa, InterceptEntry, LogSettings, NetrcSetting, RcFilesSetting,
    SecretEnv, Timeouts, UnscopedCredentials, UpstreamProxy, YamlConfig,
};
use crate::config::{Diagnostic, Origin};
use crate::secret::Secret;

const TOP_KEYS: &[&str] = &[
    "listen",
    "admin",
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
    "limits",
    "log",
    "shutdown",
    "intercept",
    "intercept_ca",
    "sites",
];

pub(super) struct Cx<'a> {
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
    pub(super) fn new(path: &Path, text: &'a str, env: &'a SecretEnv) -> Self {
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
        self.errors.push(Diagnostic::new(origin, message));
    }

    fn warn(&mut self, line: usize, message: impl Into<String>) {
        let origin = self.origin(line);
        self.warnings.push(Diagnostic::new(origin, message));
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

    /// `access.allow_uids`, with user names resolved through the password database
    /// (an unknown name is an error at its line; the name is not repeated, as values
    /// never are).
    fn allow_uids(&mut self, raw: Vec<RawUid>) -> Vec<AllowUid> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, uid) in raw.into_iter().enumerate() {
            match uid {
                RawUid::Id(id) => out.push(id),
                RawUid::Name(name) => match nix::unistd::User::from_name(&name) {
                    Ok(Some(user)) => out.push(AllowUid::Uid(user.uid.as_raw())),
                    found => {
                        let at = [Seg::Key("access"), Seg::Key("allow_uids"), Seg::Index(i)];
                        let line = self.node_line(&at);
                        let why = match found {
                            Err(e) => format!("the password database could not be read ({e})"),
                            _ => "no such user in the password database".to_owned(),
                        };
                        self.error(
                            line,
                            format!(
                                "access.allow_uids: {why}; give a uid or an existing user name"
                            ),
                        );
                    }
                },
            }
        }
        out
    }

    pub(super) fn run(mut self, path: &Path) -> Result<YamlConfig, Vec<Diagnostic>> {
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
            "admin" => {
                let listen = self.extract::<Option<RawAdmin>>(&at).flatten();
                if let Some(addr) = listen.and_then(|a| a.listen).map(|a| a.0) {
                    if addr.ip().is_loopback() {
                        cfg.admin = Some(addr);
                    } else {
                        let line = self.key_line(&[Seg::Key("admin"), Seg::Key("listen")]);
                        self.error(
                            line,
                            format!(
                                "admin.listen: {addr} is not a loopback address; the admin \
                                 listener answers on 127.0.0.1 or [::1] only"
                            ),
                        );
                    }
                }
            }
            "access" => {
                if let Some(raw) = self.extract::<Option<RawAccess>>(&at).flatten() {
                    if let Some(uids) = raw.allow_uids {
                        cfg.access.allow_uids = self.allow_uids(uids);
                    }
                    let has_token_file = raw.proxy_token_file.is_some();
                    if let Some(f) = raw.proxy_token_file {
                        let at = [Seg::Key("access"), Seg::Key("proxy_token_file")];
                        cfg.access.proxy_token = self.read_secret(&f.0, &at);
                        cfg.access.proxy_token_file = self.resolve_secret_path(&f.0).ok();
                    }
                    if let Some(mode) = raw.mode {
                        cfg.access.mode = mode;
                        if mode == AccessMode::Token && !has_token_file {
                            let line = self.key_line(&[Seg::Key("access"), Seg::Key("mode")]);
                            self.error(
                                line,
                                "access.mode: token needs access.proxy_token_file \
                                 (the token is then the only way in)",
                            );
                        }
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
            "limits" => {
                if let Some(raw) = self.extract::<Option<RawLimits>>(&at).flatten() {
                    let l = &mut cfg.limits;
                    if let Some(d) = raw.head_timeout {
                        l.head_timeout = d.0;
                    }
                    if let Some(n) = raw.max_head_bytes {
                        l.max_head_bytes = n.0;
                    }
                    if let Some(n) = raw.max_headers {
                        if n.0 > crate::limits::PINGORA_MAX_HEADERS {
                            let line =
                                self.key_line(&[Seg::Key("limits"), Seg::Key("max_headers")]);
                            self.error(
                                line,
                                format!(
                                    "limits.max_headers: at most {} (the HTTP engine's own cap)",
                                    crate::limits::PINGORA_MAX_HEADERS
                                ),
                            );
                        } else {
                            l.max_headers = n.0;
                        }
                    }
                    if let Some(n) = raw.max_connections {
                        l.max_connections = n.0;
                    }
                    if let Some(d) = raw.tunnel_idle {
                        l.tunnel_idle = d.0;
                    }
                    if let Some(d) = raw.write_timeout {
                        l.write_timeout = d.0;
                    }
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
            "shutdown" => {
                if let Some(raw) = self.extract::<Option<RawShutdown>>(&at).flatten() {
                    cfg.shutdown_drain = raw.drain.map(|d| d.0);
                }
            }
            "intercept" => self.intercept(value, cfg),
            "intercept_ca" => {
                if let Some(raw) = self.extract::<Option<RawInterceptCa>>(&at).flatten() {
                    self.intercept_ca(raw, cfg);
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

    /// `intercept: [pattern, ...]`: each entry is read on its own, so every bad one is
    /// reported with its line. A pattern with a path or an `http://` scheme names no
    /// TLS connection and is refused.
    fn intercept(&mut self, value: &Value, cfg: &mut YamlConfig) {
        let at = [Seg::Key("intercept")];
        let items = match value {
            Value::Null => return,
            Value::Sequence(items) => items.len(),
            _ => {
                let line = self.node_line(&at);
                self.error(line, "intercept: expected a list of host patterns");
                return;
            }
        };
        for i in 0..items {
            let at = [Seg::Key("intercept"), Seg::Index(i)];
            let Some(RawMatch(pattern, written)) = self.extract::<Option<RawMatch>>(&at).flatten()
            else {
                continue;
            };
            let line = self.node_line(&at);
            if pattern.path.is_some() {
                self.error(
                    line,
                    "intercept: a pattern names hosts, not paths (TLS is terminated per connection)",
                );
            } else if pattern.scheme == crate::rule::SchemePattern::Is(crate::target::Scheme::Http)
            {
                self.error(
                    line,
                    "intercept: an http:// pattern names no TLS connection",
                );
            } else {
                cfg.intercept.push(InterceptEntry {
                    pattern,
                    written,
                    origin: self.origin(line),
                });
            }
        }
    }

    fn intercept_ca(&mut self, raw: RawInterceptCa, cfg: &mut YamlConfig) {
        let at = [Seg::Key("intercept_ca")];
        let line = self.key_line(&at);
        let name_constraints = raw.name_constraints.unwrap_or(false);
        match (&raw.cert, &raw.key) {
            (Some(_), None) | (None, Some(_)) => {
                self.error(line, "intercept_ca: give both cert and key, or neither");
                return;
            }
            (Some(_), Some(_)) if name_constraints => {
                self.error(
                    line,
                    "intercept_ca: name_constraints applies to the generated CA only; \
                     remove it or remove cert and key",
                );
                return;
            }
            _ => {}
        }
        let cert = self.path_option(raw.cert, &[Seg::Key("intercept_ca"), Seg::Key("cert")]);
        let key = self.path_option(raw.key, &[Seg::Key("intercept_ca"), Seg::Key("key")]);
        cfg.intercept_ca = InterceptCa {
            cert,
            key,
            name_constraints,
        };
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
}
