/*!
Building a [`Snapshot`] from the sources: the YAML file, netCDF-C rc files and `.netrc`.

Everything the process environment contributes comes in through [`Environment`], so
tests never touch `HOME`. Every problem found is collected (file:line, never a value)
and the build fails as a whole if there is any: a reload that fails keeps the old
snapshot serving.
*/

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use crate::config::netrc::{self, Netrc};
use crate::config::rcfile::{self, RcEnv, RcRule, RcScope};
use crate::config::snapshot::{AccessSettings, CaSetting, TlsProblem};
use crate::config::yaml::{
    self, NetrcSetting, ProxyChoice as YamlProxy, RcFilesSetting, SecretEnv, Site,
    UnscopedCredentials, YamlConfig,
};
use crate::config::{Diagnostic, Origin, Snapshot, Sourced};
use crate::rule::{BasicCredential, CaSet, Identity, ProxyChoice, Rule, UpstreamProxy, Value};
use crate::secret::Secret;
use crate::tls;

/// What the process environment says, injected.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `--config`.
    pub config_flag: Option<PathBuf>,
    /// `$AUTHPROXY_CONFIG`.
    pub authproxy_config: Option<PathBuf>,
    /// `$XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `$HOME`.
    pub home: Option<PathBuf>,
    /// `$XDG_DATA_HOME` (the generated interception CA lives under it).
    pub xdg_data_home: Option<PathBuf>,
    /// `$NETRC`.
    pub netrc: Option<OsString>,
    /// The system-wide config path (`/etc/authproxy/config.yaml`).
    pub system_config: Option<PathBuf>,
    pub secrets: SecretEnv,
    pub rc: RcEnv,
}

impl Environment {
    pub fn from_process(config_flag: Option<PathBuf>) -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Environment {
            config_flag,
            authproxy_config: var("AUTHPROXY_CONFIG").map(PathBuf::from),
            xdg_config_home: var("XDG_CONFIG_HOME").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
            xdg_data_home: var("XDG_DATA_HOME").map(PathBuf::from),
            netrc: var("NETRC"),
            system_config: Some(PathBuf::from("/etc/authproxy/config.yaml")),
            secrets: SecretEnv::from_process_env(),
            rc: RcEnv::from_process(),
        }
    }

    /// An environment whose HOME and working directory are both `dir`, with nothing
    /// taken from the process (tests, and anyone checking a directory's files alone).
    pub fn isolated(dir: &Path, config: Option<&Path>) -> Self {
        Environment {
            config_flag: config.map(Path::to_path_buf),
            home: Some(dir.to_path_buf()),
            rc: RcEnv {
                home: Some(dir.to_path_buf()),
                cwd: Some(dir.to_path_buf()),
                ..RcEnv::default()
            },
            ..Environment::default()
        }
    }

    /// The config file: `--config`, else `$AUTHPROXY_CONFIG` (both must exist), else the
    /// first existing of `$XDG_CONFIG_HOME/authproxy/config.yaml` (default
    /// `~/.config`) and `/etc/authproxy/config.yaml`; else none.
    pub fn config_path(&self) -> ConfigPath {
        if let Some(p) = self.config_flag.as_ref().or(self.authproxy_config.as_ref()) {
            return ConfigPath::Named(p.clone());
        }
        let xdg = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|h| h.join(".config")))
            .map(|d| d.join("authproxy").join("config.yaml"));
        let candidates: Vec<PathBuf> = xdg.into_iter().chain(self.system_config.clone()).collect();
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => ConfigPath::Found(p.clone(), candidates),
            None => ConfigPath::None(candidates),
        }
    }
}

/// Which config file applies.
#[derive(Clone, Debug)]
pub enum ConfigPath {
    /// Named explicitly: it must exist.
    Named(PathBuf),
    /// Found by search; the candidates are watched.
    Found(PathBuf, Vec<PathBuf>),
    /// None exists; the candidates are watched.
    None(Vec<PathBuf>),
}

/// Every problem that stopped a snapshot from building.
#[derive(Debug, Default)]
pub struct LoadErrors(pub Vec<Diagnostic>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Where the generated interception CA lives: `$XDG_DATA_HOME/authproxy/ca`, else
/// `~/.local/share/authproxy/ca`. A relative `XDG_DATA_HOME` is ignored, as the XDG
/// spec says.
pub fn default_ca_dir(env: &Environment) -> Option<PathBuf> {
    let base = match &env.xdg_data_home {
        Some(x) if x.is_absolute() => x.clone(),
        _ => env
            .home
            .as_ref()
            .filter(|h| !h.as_os_str().is_empty())?
            .join(".local/share"),
    };
    Some(base.join("authproxy").join("ca"))
}

/// Builds the snapshot, or reports every error found.
pub fn load(env: &Environment) -> Result<Snapshot, LoadErrors> {
    let mut b = Builder::default();
    let yaml = b.yaml(env);
    let mut snap = Snapshot {
        intercept_ca: CaSetting::Generated {
            dir: default_ca_dir(env),
            name_constraints: false,
        },
        ..Snapshot::default()
    };
    if let Some(y) = &yaml {
        snap.intercept = y.intercept.clone();
        snap.intercept_ca = match (&y.intercept_ca.cert, &y.intercept_ca.key) {
            (Some(cert), Some(key)) => CaSetting::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CaSetting::Generated {
                dir: default_ca_dir(env),
                name_constraints: y.intercept_ca.name_constraints,
            },
        };
        snap.listen = y.listen.clone();
        snap.admin = y.admin;
        snap.max_hops = y.max_hops;
        snap.limits = y.limits;
        snap.netrc_default = y.netrc_default;
        snap.log_level = y.log.level.map(|l| format!("{l:?}").to_ascii_lowercase());
        snap.log_json = y.log.format.map(|f| f == yaml::LogFormat::Json);
        if let Some(d) = y.shutdown_drain {
            snap.shutdown_drain = d;
        }
        snap.no_proxy = y
            .no_proxy
            .iter()
            .map(String::as_str)
            .map(no_proxy_entry)
            .collect();
        if let Some(c) = y.timeouts.connect {
            snap.timeouts.connect = c;
        }
        if let Some(r) = y.timeouts.first_byte.or(y.timeouts.idle) {
            snap.timeouts.read = r;
        }
        snap.upstream_proxy = y
            .upstream_proxy
            .as_ref()
            .map(|p| Arc::new(proxy_from_yaml(p)));
        b.warnings.extend(y.warnings.iter().cloned());
        snap.access = access_settings(y);
        snap.cookie_jar = y.cookie_jar.clone();
        for f in &y.files_read {
            b.files.push(f.clone());
        }
        for (i, site) in y.sites.iter().enumerate() {
            if let Some(rule) = b.site_rule(i, site) {
                snap.sites.push(rule);
            }
        }
        let names = y.sites.iter().flat_map(|s| &s.query).map(|(n, _)| n);
        let keys = y.sites.iter().filter_map(|s| s.query_token.as_ref());
        let names = names.chain(keys.map(|q| &q.param));
        snap.secret_query_names = names.map(|n| n.to_lowercase()).collect();
        snap.secret_query_names.sort();
        snap.secret_query_names.dedup();
    }

    // rc files
    let mut owner_checked = Vec::new();
    let rc_paths = match yaml.as_ref().map(|y| &y.rc_files) {
        Some(RcFilesSetting::List(list)) => {
            b.watch.extend(list.iter().cloned());
            list.clone()
        }
        _ => {
            b.watch.extend(rcfile::candidate_paths(&env.rc));
            b.warnings.extend(rcfile::discovery_notes(&env.rc));
            let found = rcfile::discover(&env.rc);
            b.warnings.extend(found.warnings);
            owner_checked = found.owner_checked;
            found.paths
        }
    };
    let mut rc_files = Vec::new();
    for path in &rc_paths {
        let parsed = if owner_checked.contains(path) {
            rcfile::parse_owned_file(path, env.rc.uid)
        } else {
            rcfile::parse_file(path)
        };
        match parsed {
            Ok(f) => {
                b.files.push(path.clone());
                rc_files.push(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if matches!(
                    yaml.as_ref().map(|y| &y.rc_files),
                    Some(RcFilesSetting::List(_))
                ) {
                    b.errors.push(Diagnostic::file(
                        path,
                        "rc file listed in rc_files does not exist",
                    ));
                }
            }
            Err(e) => b
                .errors
                .push(Diagnostic::file(path, format!("cannot read rc file: {e}"))),
        }
    }
    b.unscoped = yaml
        .as_ref()
        .map_or(UnscopedCredentials::Ignore, |y| y.rc_unscoped_credentials);
    let home = env.home.as_deref().or(env.rc.home.as_deref());
    let (rc_rules, rc_warnings, rc_errors) = rcfile::resolve_in(&rc_files, home);
    b.warnings.extend(rc_warnings);
    b.errors.extend(rc_errors.iter().map(Diagnostic::from));
    // Only an unscoped HTTP.NETRC chooses the global .netrc. A scoped one applies to its
    // scope alone (a rule that merely inherits the unscoped one holds the same origin).
    let netrc_from_rc = rc_rules
        .iter()
        .find(|r| r.scope == rcfile::RcScope::Any)
        .and_then(|r| r.settings.netrc.clone());
    let mut scoped_netrcs: HashMap<PathBuf, usize> = HashMap::new();
    // `netrc: false` turns every .netrc off, scoped ones included.
    let netrc_off = matches!(yaml.as_ref().map(|y| &y.netrc), Some(NetrcSetting::Off));
    for rr in &rc_rules {
        // Keys netCDF-C reads that nothing here acts on (unknown keys have a warning).
        let known = |key: &str| {
            rcfile::UNSUPPORTED_KEYS
                .iter()
                .any(|k| k.eq_ignore_ascii_case(key))
        };
        for u in rr.settings.unsupported.iter().filter(|u| known(&u.value)) {
            if !snap.unsupported.contains(u) {
                snap.unsupported.push(u.clone());
            }
        }
        if let Some(jar) = &rr.settings.cookiejar {
            let inherited = rr.scope != rcfile::RcScope::Any
                && rc_rules.iter().any(|r| {
                    r.scope == rcfile::RcScope::Any
                        && r.settings.cookiejar.as_ref().map(|j| &j.origin) == Some(&jar.origin)
                });
            if inherited {
                // The unscoped line, seen again through a rule that inherits it.
            } else if rr.scope == rcfile::RcScope::Any {
                // One jar for the daemon: an unscoped HTTP.COOKIEJAR names it (YAML
                // cookie_jar wins), as it names libcurl's for netCDF-C.
                snap.cookie_jar.get_or_insert_with(|| jar.value.clone());
            } else {
                b.warn_once(
                    &jar.origin,
                    "HTTP.COOKIEJAR with a [prefix]: authproxy keeps one jar for every \
                     host, named by an unscoped HTTP.COOKIEJAR or YAML cookie_jar; this \
                     line is not used",
                );
            }
        }
        let scoped_netrc = rr.settings.netrc.as_ref().filter(|n| {
            !netrc_off
                && rr.scope != rcfile::RcScope::Any
                && netrc_from_rc.as_ref().map(|u| &u.origin) != Some(&n.origin)
        });
        let rule = b.rc_rule(rr).or_else(|| {
            // A scope that sets nothing else still needs a rule to carry its .netrc.
            scoped_netrc.map(|n| {
                let mut rule =
                    Rule::new(rr.scope.to_string(), n.origin.clone(), rr.scope.pattern());
                rule.tls.verify_host = rr.settings.ssl_verifyhost.as_ref().map(|v| v.value);
                rule
            })
        });
        if let Some(mut rule) = rule {
            if let Some(n) = scoped_netrc {
                let index = *scoped_netrcs.entry(n.value.clone()).or_insert_with(|| {
                    snap.scoped_netrcs
                        .push(b.scoped_netrc(n, snap.netrc_default));
                    snap.scoped_netrcs.len() - 1
                });
                rule.netrc = Some(index);
            }
            snap.rc.push(rule);
        }
    }
    // Where the .netrc path was named, if it was: a missing file is then worth a word.
    let netrc_named = match yaml.as_ref().map(|y| &y.netrc) {
        Some(NetrcSetting::Path(_)) => yaml.as_ref().map(|y| Origin::new(&y.path, 0)),
        _ => netrc_from_rc.as_ref().map(|n| n.origin.clone()),
    };
    let netrc_from_rc = netrc_from_rc.map(|n| n.value);

    // .netrc
    let netrc_path = match yaml.as_ref().map(|y| &y.netrc) {
        Some(NetrcSetting::Off) => None,
        Some(NetrcSetting::Path(p)) => Some(p.clone()),
        _ => netrc::default_path(
            netrc_from_rc.as_deref(),
            env.netrc.as_deref(),
            env.home.as_deref(),
        ),
    };
    if let Some(path) = netrc_path {
        b.watch.push(path.clone());
        match Netrc::parse_file(&path) {
            Ok(n) => {
                b.files.push(path.clone());
                b.warnings.extend(n.warnings.iter().cloned());
                if !snap.netrc_default {
                    b.warnings.extend(default_entry_warnings(&n));
                }
                snap.netrc = Some(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(w) = missing_netrc_warning(&path, netrc_named.as_ref(), env) {
                    b.warnings.push(w);
                }
            }
            Err(e) => b
                .errors
                .push(Diagnostic::file(&path, format!("cannot read .netrc: {e}"))),
        }
    }

    if !b.errors.is_empty() {
        return Err(LoadErrors(b.errors));
    }
    Snapshot::sort_rules(&mut snap.sites);
    Snapshot::sort_rules(&mut snap.rc);
    b.files.sort();
    b.files.dedup();
    b.watch.extend(b.files.iter().cloned());
    b.watch.sort();
    b.watch.dedup();
    snap.files = b.files;
    snap.watch = b.watch;
    // In file:line order, each once (a file read twice, as when a scoped HTTP.NETRC
    // names the global .netrc, warns once).
    Diagnostic::sort_and_dedup(&mut b.warnings);
    snap.warnings = b.warnings;
    snap.unusable = b.unusable;
    snap.unscoped_credentials_ignored = b.unscoped_ignored;
    Ok(snap)
}

#[derive(Default)]
struct Builder {
    errors: Vec<Diagnostic>,
    /// TLS material that did not load; the rules that need it answer with the reason.
    unusable: Vec<TlsProblem>,
    warnings: Vec<Diagnostic>,
    files: Vec<PathBuf>,
    watch: Vec<PathBuf>,
    identities: HashMap<(PathBuf, Option<PathBuf>, bool), Arc<Identity>>,
    /// YAML `rc_unscoped_credentials`.
    unscoped: UnscopedCredentials,
    /// Where an unscoped rc credential was left unused.
    unscoped_ignored: Option<Origin>,
    cas: HashMap<(Option<PathBuf>, Option<PathBuf>), Arc<CaSet>>,
}

impl Builder {
    fn yaml(&mut self, env: &Environment) -> Option<YamlConfig> {
        let path = match env.config_path() {
            yaml_path @ (ConfigPath::Named(_) | ConfigPath::Found(..)) => {
                let (p, candidates) = match yaml_path {
                    ConfigPath::Named(p) => (p, vec![]),
                    ConfigPath::Found(p, c) => (p, c),
                    ConfigPath::None(_) => unreachable!(),
                };
                self.watch.extend(candidates);
                p
            }
            ConfigPath::None(candidates) => {
                self.watch.extend(candidates);
                return None;
            }
        };
        self.watch.push(path.clone());
        match yaml::parse_file(&path, &env.secrets) {
            Ok(y) => {
                self.files.push(path);
                Some(y)
            }
            Err(errors) => {
                self.errors.extend(errors);
                None
            }
        }
    }

    /// Loads the `.netrc` a scoped rc `HTTP.NETRC` names (watched for reload like the
    /// others). It replaces the global one for its scope even when it is missing (a
    /// warning; no credentials for that scope) or unreadable (an error).
    fn scoped_netrc(&mut self, setting: &Sourced<PathBuf>, netrc_default: bool) -> Arc<Netrc> {
        let path = &setting.value;
        self.watch.push(path.clone());
        match Netrc::parse_file(path) {
            Ok(n) => {
                self.files.push(path.clone());
                self.warnings.extend(n.warnings.iter().cloned());
                if !netrc_default {
                    self.warnings.extend(default_entry_warnings(&n));
                }
                return Arc::new(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.warnings.push(Diagnostic::new(
                    setting.origin.clone(),
                    format!(
                        "HTTP.NETRC names {}, which does not exist; \
                         no .netrc credentials for this scope",
                        path.display()
                    ),
                ));
            }
            Err(e) => {
                self.errors.push(Diagnostic::file(
                    path,
                    format!(
                        "cannot read .netrc: {e} (named by HTTP.NETRC at {})",
                        setting.origin
                    ),
                ));
            }
        }
        Arc::new(Netrc::parse_bytes(path, b""))
    }

    fn site_rule(&mut self, index: usize, site: &Site) -> Option<Rule> {
        let id = if site.id.starts_with("sites[") {
            site.id.clone()
        } else {
            format!("sites[{index}] {}", site.id)
        };
        let mut rule = Rule::new(id, site.origin.clone(), site.pattern.clone());
        rule.basic = site.basic.as_ref().map(|(user, pw)| BasicCredential {
            user: user.clone(),
            password: pw.clone(),
            origin: site.origin.clone(),
            only_on_challenge: !site.basic_preemptive,
        });
        rule.bearer = site.bearer.clone().map(Value::Secret);
        rule.pass_redirects = site.redirects == Some(yaml::RedirectMode::Pass);
        rule.handle = site.handle.clone();
        rule.login = site.login.clone().map(Arc::new);
        rule.query_token = site.query_token.as_ref().map(query_token);
        for (name, value) in &site.headers {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => rule.headers.push((n, param(value))),
                Err(_) => self.errors.push(
                    Diagnostic::new(site.origin.clone(), format!("invalid header name {name:?}"))
                        .for_rule(rule.id.as_str()),
                ),
            }
        }
        rule.query = site
            .query
            .iter()
            .map(|(k, v)| (k.clone(), param(v)))
            .collect();
        let t = &site.tls;
        rule.tls.upgrade = t.upgrade;
        rule.tls.verify_peer = t.verify;
        rule.tls.verify_host = t.verify;
        if let Some(p12) = &t.pkcs12 {
            let id = self.identity(
                &site.origin,
                "tls.pkcs12",
                p12,
                None,
                t.key_password.as_ref(),
                true,
            );
            rule.tls.identity = self.usable(&mut rule.tls.unusable, id);
        } else if let Some(cert) = &t.client_cert {
            let id = self.identity(
                &site.origin,
                "tls.client_cert",
                cert,
                t.client_key.as_deref(),
                t.key_password.as_ref(),
                false,
            );
            rule.tls.identity = self.usable(&mut rule.tls.unusable, id);
        }
        if t.ca.is_some() || t.ca_dir.is_some() {
            let ca = self.ca(&site.origin, t.ca.as_deref(), t.ca_dir.as_deref());
            rule.tls.ca = self.usable(&mut rule.tls.unusable, ca);
        }
        rule.proxy = match &site.upstream_proxy {
            YamlProxy::Inherit => ProxyChoice::Inherit,
            YamlProxy::Direct => ProxyChoice::Direct,
            YamlProxy::Via(p) => ProxyChoice::Via(Arc::new(proxy_from_yaml(p))),
        };
        Some(rule)
    }

    fn rc_rule(&mut self, rr: &RcRule) -> Option<Rule> {
        let scope_id = rr.scope.to_string();
        let s = &rr.settings;
        let origin = [
            s.username.as_ref().map(|v| &v.origin),
            s.password.as_ref().map(|v| &v.origin),
            s.ssl_certificate.as_ref().map(|v| &v.origin),
            s.ssl_key.as_ref().map(|v| &v.origin),
            s.ssl_keypassword.as_ref().map(|v| &v.origin),
            s.ssl_cainfo.as_ref().map(|v| &v.origin),
            s.ssl_capath.as_ref().map(|v| &v.origin),
            s.ssl_verifypeer.as_ref().map(|v| &v.origin),
            s.ssl_verifyhost.as_ref().map(|v| &v.origin),
            s.proxy_server.as_ref().map(|v| &v.origin),
            s.timeout.as_ref().map(|v| &v.origin),
            s.connect_timeout.as_ref().map(|v| &v.origin),
        ]
        .into_iter()
        .flatten()
        .next()?
        .clone();
        let mut rule = Rule::new(rr.scope.to_string(), origin, rr.scope.pattern());
        if let (Some(user), Some(password)) = (&s.username, &s.password) {
            let unscoped = s.credentials_unscoped;
            if unscoped && self.unscoped == UnscopedCredentials::Ignore {
                self.unscoped_ignored
                    .get_or_insert_with(|| password.origin.clone());
                self.warn_rule(
                    &password.origin,
                    &scope_id,
                    "HTTP.CREDENTIALS.* without a [prefix] names no host, so authproxy \
                     sends it to none; put the host in front, as in \
                     [data.example.org:443]HTTP.CREDENTIALS.USERPASSWORD=..., or set \
                     `rc_unscoped_credentials: challenge` in the YAML config to answer 401 \
                     Basic challenges over TLS or from loopback hosts with it",
                );
            } else {
                rule.basic = Some(BasicCredential {
                    user: user.value.clone(),
                    password: password.value.clone(),
                    origin: password.origin.clone(),
                    only_on_challenge: unscoped,
                });
            }
        }
        if let Some(cert) = &s.ssl_certificate {
            let key = s.ssl_key.as_ref().map(|k| k.value.clone());
            let pw = s.ssl_keypassword.as_ref().map(|p| &p.value);
            let id = self.identity(
                &cert.origin,
                "HTTP.SSL.CERTIFICATE",
                &cert.value,
                key.as_deref(),
                pw,
                false,
            );
            rule.tls.identity = self.usable(&mut rule.tls.unusable, id);
        } else if let Some(key) = &s.ssl_key {
            self.errors.push(Diagnostic::new(
                key.origin.clone(),
                "HTTP.SSL.KEY is set but HTTP.SSL.CERTIFICATE is not; set both",
            ));
        } else if let Some(pw) = &s.ssl_keypassword {
            self.warn_rule(
                &pw.origin,
                &scope_id,
                "HTTP.SSL.KEYPASSWORD is set but no HTTP.SSL.CERTIFICATE applies to the \
                 hosts of this line; it is not used",
            );
        }
        if rr.scope == RcScope::Any {
            if let Some(ca) = s.ssl_cainfo.as_ref().or(s.ssl_capath.as_ref()) {
                self.warn_rule(
                    &ca.origin,
                    &scope_id,
                    "this CA setting has no [prefix]: it replaces the system CA roots for \
                     every https host, so public servers will fail verification; put the host \
                     in front, as in [data.example.org]HTTP.SSL.CAINFO=...",
                );
            }
        }
        if s.ssl_cainfo.is_some() || s.ssl_capath.is_some() {
            let origin = s
                .ssl_cainfo
                .as_ref()
                .or(s.ssl_capath.as_ref())
                .map(|v| v.origin.clone())
                .unwrap();
            let mut file = s.ssl_cainfo.as_ref().map(|v| v.value.as_path());
            let mut dir = s.ssl_capath.as_ref().map(|v| v.value.as_path());
            // The ESGF user guide points HTTP.SSL.CAPATH at a bundle file: read it as one.
            if let Some(capath) = s.ssl_capath.as_ref().filter(|v| v.value.is_file()) {
                dir = None;
                let what = if file.is_none() {
                    file = Some(capath.value.as_path());
                    "read as a CA file (as HTTP.SSL.CAINFO would be)"
                } else {
                    "ignored: HTTP.SSL.CAINFO names the CA file"
                };
                self.warn_rule(
                    &capath.origin,
                    &scope_id,
                    &format!(
                        "HTTP.SSL.CAPATH names a file, not a directory of certificates; {what}"
                    ),
                );
            }
            let ca = self.ca(&origin, file, dir);
            // A CA matters only to verification: while it is off, a CA that does not load
            // is a warning, not a reason to refuse this scope's https requests.
            match ca {
                Err(problem) if s.ssl_verifypeer.as_ref().is_some_and(|v| !v.value) => {
                    let prefix = format!("{origin}: ");
                    let cause = problem
                        .message
                        .strip_prefix(&prefix)
                        .unwrap_or(&problem.message);
                    self.warn_rule(
                        &origin,
                        &scope_id,
                        &format!("{cause} (not used: TLS verification is off there)"),
                    );
                }
                ca => rule.tls.ca = self.usable(&mut rule.tls.unusable, ca),
            }
        }
        rule.tls.verify_peer = s.ssl_verifypeer.as_ref().map(|v| v.value);
        rule.tls.verify_host = s.ssl_verifyhost.as_ref().map(|v| v.value);
        for v in [&s.ssl_verifypeer, &s.ssl_verifyhost].into_iter().flatten() {
            if !v.value {
                self.warn_rule(
                    &v.origin,
                    &scope_id,
                    "TLS verification is off for the hosts of this line; anyone on the path \
                     can impersonate the server",
                );
            }
        }
        if let Some(p) = &s.proxy_server {
            match proxy_from_url(p.value.expose(), &p.origin) {
                Ok(proxy) => rule.proxy = ProxyChoice::Via(Arc::new(proxy)),
                Err(msg) => self.errors.push(Diagnostic::new(
                    p.origin.clone(),
                    format!("HTTP.PROXY.SERVER: {msg}"),
                )),
            }
        }
        rule.read_timeout = s.timeout.as_ref().map(|t| t.value).filter(|d| !d.is_zero());
        rule.connect_timeout = s
            .connect_timeout
            .as_ref()
            .map(|t| t.value)
            .filter(|d| !d.is_zero());
        Some(rule)
    }

    /// A warning, once however many rules inherit the line it is about.
    fn warn_once(&mut self, origin: &Origin, message: &str) {
        let warning = Diagnostic::new(origin.clone(), message);
        if !self
            .warnings
            .iter()
            .any(|w| w.origin == warning.origin && w.message == warning.message)
        {
            self.warnings.push(warning);
        }
    }

    /// A warning about a line of an rc rule, once. Rules come most specific first, and
    /// every rule that inherits a line is inside the line's own scope, so the last rule to
    /// meet the line (the one it is written for) is the one that stays.
    fn warn_rule(&mut self, origin: &Origin, rule: &str, message: &str) {
        self.warn_once(origin, message);
        if let Some(w) = self
            .warnings
            .iter_mut()
            .find(|w| w.origin == *origin && w.message == message)
        {
            w.rule = Some(rule.into());
        }
    }

    /// Keeps a loaded TLS item, or records why the rule's TLS settings are unusable:
    /// such a rule stays in the snapshot and answers its requests with that reason.
    fn usable<T>(
        &mut self,
        unusable: &mut Option<Arc<str>>,
        loaded: Result<T, TlsProblem>,
    ) -> Option<T> {
        match loaded {
            Ok(v) => Some(v),
            Err(problem) => {
                unusable.get_or_insert_with(|| Arc::from(problem.message.as_str()));
                if !self.unusable.contains(&problem) {
                    self.unusable.push(problem);
                }
                None
            }
        }
    }

    fn identity(
        &mut self,
        origin: &Origin,
        option: &str,
        cert: &Path,
        key: Option<&Path>,
        password: Option<&Secret<String>>,
        pkcs12: bool,
    ) -> Result<Arc<Identity>, TlsProblem> {
        let cache_key = (cert.to_path_buf(), key.map(Path::to_path_buf), pkcs12);
        if let Some(i) = self.identities.get(&cache_key) {
            return Ok(i.clone());
        }
        // Watched even when loading fails, so that fixing the file reloads.
        self.watch.push(cert.to_path_buf());
        self.watch.extend(key.map(Path::to_path_buf));
        let loaded = if pkcs12 {
            tls::load_pkcs12(cert, password)
        } else {
            tls::load_identity(cert, key, password)
        };
        match loaded {
            Ok(id) => {
                self.files.push(cert.to_path_buf());
                if let Some(k) = key {
                    self.files.push(k.to_path_buf());
                }
                let mut h = std::collections::hash_map::DefaultHasher::new();
                id.chain.hash(&mut h);
                let source = match key {
                    Some(k) if k != cert => format!("{} + {}", cert.display(), k.display()),
                    _ => cert.display().to_string(),
                };
                let identity = Arc::new(Identity {
                    cert_key: Arc::new(CertKey::new(id.chain.clone(), id.key.expose().clone())),
                    subject: id.subject.clone(),
                    not_after: id.not_after.clone(),
                    source,
                    fingerprint: h.finish(),
                });
                self.identities.insert(cache_key, identity.clone());
                Ok(identity)
            }
            Err(e) => Err(TlsProblem {
                what: format!(
                    "{option} {} {}",
                    cert.display(),
                    key.map_or(String::new(), |k| k.display().to_string())
                ),
                message: format!("{origin}: {option}: {e}"),
            }),
        }
    }

    fn ca(
        &mut self,
        origin: &Origin,
        file: Option<&Path>,
        dir: Option<&Path>,
    ) -> Result<Arc<CaSet>, TlsProblem> {
        let cache_key = (file.map(Path::to_path_buf), dir.map(Path::to_path_buf));
        if let Some(c) = self.cas.get(&cache_key) {
            return Ok(c.clone());
        }
        self.watch.extend(file.map(Path::to_path_buf));
        match tls::load_ca(file, dir) {
            Ok(ders) => {
                self.files.extend(file.map(Path::to_path_buf));
                self.watch.extend(dir.map(Path::to_path_buf));
                let mut h = std::collections::hash_map::DefaultHasher::new();
                ders.hash(&mut h);
                let certs: Vec<WrappedX509> = ders
                    .into_iter()
                    .map(|der| WrappedX509::new(der, parse_x509))
                    .collect();
                let source = [file, dir]
                    .into_iter()
                    .flatten()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" + ");
                let set = Arc::new(CaSet {
                    certs: Arc::from(certs),
                    source,
                    fingerprint: h.finish(),
                });
                self.cas.insert(cache_key, set.clone());
                Ok(set)
            }
            Err(e) => Err(TlsProblem {
                what: format!("CA {:?} {:?}", file, dir),
                message: format!("{origin}: CA: {e}"),
            }),
        }
    }
}

/// A YAML `no_proxy` entry as [`Snapshot`] matches it: `*` stays `*` (every host),
/// `*.example.org` becomes the suffix `.example.org`, anything else is kept.
/// YAML `access` as the connection and request checks use it: `self` made the daemon's
/// uid, duplicates dropped.
fn access_settings(y: &yaml::YamlConfig) -> AccessSettings {
    let me = rustix::process::getuid().as_raw();
    let mut allow_uids: Vec<u32> = Vec::new();
    for u in &y.access.allow_uids {
        let uid = match u {
            yaml::AllowUid::Current => me,
            yaml::AllowUid::Uid(n) => *n,
        };
        if !allow_uids.contains(&uid) {
            allow_uids.push(uid);
        }
    }
    AccessSettings {
        mode: y.access.mode,
        allow_uids,
        proxy_token: y.access.proxy_token.clone(),
        proxy_token_file: y.access.proxy_token_file.clone(),
        config_file: Some(y.path.clone()),
    }
}

fn no_proxy_entry(p: &str) -> String {
    match p.strip_prefix("*.") {
        Some(domain) => format!(".{domain}"),
        None => p.to_owned(),
    }
}

/// The `.netrc` `default` entries that carry credentials, which are not sent unless
/// `netrc_default: true` opts in: each gets a warning with its file:line.
fn default_entry_warnings(n: &Netrc) -> impl Iterator<Item = Diagnostic> + '_ {
    n.entries
        .iter()
        .filter(|e| e.host.is_none() && e.has_credentials())
        .map(|e| {
            Diagnostic::new(
                e.origin.clone(),
                "the `default` entry is not sent to any host (it names none); \
                 name each host with a `machine` entry, or set `netrc_default: true` \
                 in the YAML config to send it to every https host no entry names",
            )
        })
}

/// The word for a `.netrc` that was named (by `HTTP.NETRC`, `$NETRC` or YAML `netrc:`)
/// but does not exist: without it, netrc would be off without a sound. Says whether
/// `~/.netrc` exists, which is then not read either.
fn missing_netrc_warning(
    path: &Path,
    named_at: Option<&Origin>,
    env: &Environment,
) -> Option<Diagnostic> {
    let home_netrc = env.home.as_ref().map(|h| h.join(".netrc"));
    if home_netrc.as_deref() == Some(path) {
        return None; // the default path: having none is normal
    }
    let by = match named_at {
        Some(o) => format!("named at {o}"),
        None => "named by $NETRC".to_owned(),
    };
    let home = match home_netrc.as_deref().map(Netrc::parse_file) {
        Some(Ok(n)) => format!(
            "; {} exists, with {} entries, and is not read instead",
            n.path.display(),
            n.entries.len()
        ),
        Some(Err(_)) | None => "; there is no ~/.netrc either".to_owned(),
    };
    Some(Diagnostic::file(
        path,
        format!("this .netrc ({by}) does not exist, so no .netrc credentials are used{home}"),
    ))
}

fn param(v: &yaml::ParamValue) -> Value {
    match v {
        yaml::ParamValue::Plain(s) => Value::Plain(s.clone()),
        yaml::ParamValue::Secret(s) => Value::Secret(s.clone()),
    }
}

fn query_token(q: &yaml::SiteQueryToken) -> Arc<crate::rule::QueryToken> {
    use crate::rule::KeySource;
    use yaml::KeySourceSetting as S;
    Arc::new(crate::rule::QueryToken {
        param: q.param.clone(),
        source: match &q.source {
            S::Url(u) => KeySource::Url(u.clone()),
            S::File { path, key } => KeySource::File {
                path: path.clone(),
                key: key.clone(),
            },
            S::Command { argv, timeout } => KeySource::Command {
                argv: argv.clone(),
                timeout: *timeout,
            },
        },
        lifetime: q.lifetime,
        refresh_before: q.refresh_before,
        replace: q.replace,
        cache_file: q.cache_file.clone(),
        origin: q.origin.clone(),
    })
}

fn proxy_from_yaml(p: &yaml::UpstreamProxy) -> UpstreamProxy {
    UpstreamProxy {
        host: p.host.clone(),
        port: p.port,
        user: p.credentials.as_ref().map(|(u, _)| u.clone()),
        authorization: p
            .credentials
            .as_ref()
            .map(|(u, pw)| crate::auth::basic::header(u, pw.expose())),
        origin: p.origin.clone(),
    }
}

/// Parses an rc file's `HTTP.PROXY.SERVER`: `[http://][user:pass@]host[:port]` (see
/// [`crate::rule::proxy::parse_proxy_url`]; a path is ignored, and so is a password without
/// a user name). Messages never repeat the value.
pub fn proxy_from_url(value: &str, origin: &Origin) -> Result<UpstreamProxy, String> {
    use crate::rule::proxy::{parse_proxy_url, ProxyUrlError};
    let url = parse_proxy_url(value, true).map_err(|e| {
        match e {
            ProxyUrlError::Invalid(_) => "not a valid proxy URL",
            ProxyUrlError::Https | ProxyUrlError::NotHttp => {
                "only http:// upstream proxies are supported"
            }
            ProxyUrlError::NoHost => "the proxy URL has no host",
            ProxyUrlError::CredentialsNotUtf8 => {
                "the proxy URL credentials are not UTF-8 after %-decoding"
            }
        }
        .to_owned()
    })?;
    let (user, authorization) = match url.credentials {
        Some((user, pw)) if !user.is_empty() => {
            let header = crate::auth::basic::header(&user, &pw);
            (Some(user), Some(header))
        }
        _ => (None, None),
    };
    Ok(UpstreamProxy {
        host: url.host,
        port: url.port,
        user,
        authorization,
        origin: origin.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    fn basic_user(snap: &Snapshot, url: &str) -> Option<String> {
        let t = Target::from_absolute(url.as_bytes()).unwrap();
        let r = snap.resolve(&t);
        // A .netrc password answers the host's 401 challenge.
        r.basic()
            .or_else(|| r.challenge_basic(&t))
            .map(|b| b.user.to_owned())
    }

    /// The `.netrc` `default` entry answers only with `netrc_default: true`; a partial
    /// `machine` entry answers nothing, and the lookup does not go on past it.
    #[test]
    fn netrc_default_and_partial_entries() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(
            h.join(".netrc"),
            "machine lonely.example login lonely\n\
             machine lonely.example login later password later-SECRET\n\
             machine pw-only.example password alone-SECRET\n\
             machine full.example login fu password fp-SECRET\n\
             default login anon password guest-SECRET\n",
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, None)).unwrap();
        assert!(!snap.netrc_default);
        assert_eq!(
            basic_user(&snap, "https://full.example/").as_deref(),
            Some("fu")
        );
        for host in ["lonely.example", "pw-only.example", "nobody.example"] {
            let url = format!("https://{host}/");
            assert_eq!(basic_user(&snap, &url), None, "{host}");
            let t = Target::from_absolute(url.as_bytes()).unwrap();
            assert!(snap.resolve(&t).netrc_basic().is_none(), "{host}");
        }
        let netrc = h.join(".netrc");
        let at = |line: usize| format!("{}:{line}: ", netrc.display());
        let has = |line: usize, text: &str| {
            snap.warnings
                .iter()
                .any(|w| w.to_string().starts_with(&at(line)) && w.to_string().contains(text))
        };
        assert!(
            has(1, "has a `login` but no `password`"),
            "{:?}",
            snap.warnings
        );
        assert!(
            has(3, "has a `password` but no `login`"),
            "{:?}",
            snap.warnings
        );
        assert!(has(5, "`netrc_default: true`"), "{:?}", snap.warnings);
        assert!(!format!("{:?}", snap.warnings).contains("SECRET"));

        // Opted in: the default answers for unnamed hosts, but still not in place of a
        // partial entry.
        let config = h.join("config.yaml");
        std::fs::write(&config, "netrc_default: true\n").unwrap();
        let snap = load(&Environment::isolated(h, Some(&config))).unwrap();
        assert!(snap.netrc_default);
        assert_eq!(
            basic_user(&snap, "https://nobody.example/").as_deref(),
            Some("anon")
        );
        assert_eq!(basic_user(&snap, "https://lonely.example/"), None);
        assert_eq!(basic_user(&snap, "https://pw-only.example/"), None);
        assert!(!snap
            .warnings
            .iter()
            .any(|w| w.to_string().contains("`netrc_default: true`")));
    }

    /// A scoped `HTTP.NETRC` answers for its scope only (even when its file is
    /// missing); the global `.netrc` comes from an unscoped one, else `~/.netrc`.
    #[test]
    fn scoped_http_netrc_applies_to_its_scope_only() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let scoped = h.join("scoped.netrc");
        let missing = h.join("missing.netrc");
        std::fs::write(
            &scoped,
            "machine scoped.example login scoped password s\n\
             machine other.example login leaked password l\n",
        )
        .unwrap();
        std::fs::write(
            h.join(".netrc"),
            "machine other.example login global password g\n\
             machine scoped.example login global password g\n\
             machine missing.example login global password g\n",
        )
        .unwrap();
        std::fs::write(
            h.join(".daprc"),
            format!(
                "[scoped.example]HTTP.NETRC={}\n[missing.example]HTTP.NETRC={}\n",
                scoped.display(),
                missing.display()
            ),
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, None)).unwrap();
        let user = |host: &str| basic_user(&snap, &format!("https://{host}/"));
        assert_eq!(user("scoped.example").as_deref(), Some("scoped"));
        assert_eq!(user("other.example").as_deref(), Some("global"));
        assert_eq!(user("missing.example"), None);
        assert!(snap.files.contains(&scoped), "{:?}", snap.files);
        assert!(snap.watch.contains(&scoped) && snap.watch.contains(&missing));
        assert_eq!(snap.netrc.as_ref().unwrap().path, h.join(".netrc"));
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.to_string().starts_with(&format!(
                    "{}:2: HTTP.NETRC names",
                    h.join(".daprc").display()
                ))),
            "{:?}",
            snap.warnings
        );

        // Unscoped, the same line chooses the global file, which scoped rules inherit.
        std::fs::write(
            h.join(".daprc"),
            format!(
                "HTTP.NETRC={}\n[other.example]HTTP.TIMEOUT=5\n",
                scoped.display()
            ),
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, None)).unwrap();
        assert_eq!(snap.netrc.as_ref().unwrap().path, scoped);
        assert!(snap.rc.iter().all(|r| r.netrc.is_none()));
        let user = |host: &str| basic_user(&snap, &format!("https://{host}/"));
        assert_eq!(user("other.example").as_deref(), Some("leaked"));
        assert_eq!(user("scoped.example").as_deref(), Some("scoped"));

        // Scoped and global naming the same file: its warnings are shown once.
        std::fs::write(&scoped, "machine scoped.example login lonely\n").unwrap();
        std::fs::write(
            h.join(".daprc"),
            format!(
                "HTTP.NETRC={0}\n[scoped.example]HTTP.NETRC={0}\n",
                scoped.display()
            ),
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, None)).unwrap();
        let partial: Vec<_> = snap
            .warnings
            .iter()
            .filter(|w| w.to_string().contains("no `password`"))
            .collect();
        assert_eq!(partial.len(), 1, "{:?}", snap.warnings);
    }

    #[test]
    fn no_proxy_star_and_suffix_entries() {
        assert_eq!(no_proxy_entry("*"), "*");
        assert_eq!(no_proxy_entry("*.example.org"), ".example.org");
        assert_eq!(no_proxy_entry(".example.org"), ".example.org");
        assert_eq!(no_proxy_entry("host.example"), "host.example");
    }

    /// Which source answers "who am I here?" for each URL, with all three sources
    /// present: YAML beats the rc file beats .netrc; more specific beats less specific
    /// within a source; .netrc only over TLS.
    #[test]
    fn sources_take_precedence_in_order() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(
            h.join(".daprc"),
            "[data.example.org]HTTP.CREDENTIALS.USERNAME=rc-host\n\
             [data.example.org]HTTP.CREDENTIALS.PASSWORD=x\n\
             [https://data.example.org/deep]HTTP.CREDENTIALS.USERNAME=rc-url\n\
             [https://data.example.org/deep]HTTP.CREDENTIALS.PASSWORD=x\n\
             [only-rc.example.org]HTTP.CREDENTIALS.USERNAME=rc-only\n\
             [only-rc.example.org]HTTP.CREDENTIALS.PASSWORD=x\n",
        )
        .unwrap();
        std::fs::write(
            h.join(".netrc"),
            "machine data.example.org login netrc-user password x\n\
             machine netrc.example.org login netrc-only password x\n",
        )
        .unwrap();
        let config = h.join("config.yaml");
        std::fs::write(
            &config,
            "sites:\n\
             \x20 - match: \"http://data.example.org/yaml\"\n\
             \x20   basic: { username: yaml-path, password: x }\n\
             \x20 - match: \"*.example.org\"\n\
             \x20   headers: { X-Suffix: \"1\" }\n",
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, Some(&config))).unwrap();
        let table = [
            (
                "http://data.example.org/yaml/f",
                true,
                Some(("yaml-path", "yaml")),
            ),
            (
                "http://data.example.org/other",
                true,
                Some(("rc-host", "rc")),
            ),
            (
                "https://data.example.org/deep/f",
                true,
                Some(("rc-url", "rc")),
            ),
            (
                "http://only-rc.example.org/",
                false,
                Some(("rc-only", "rc")),
            ),
            (
                "https://netrc.example.org/",
                true,
                Some(("netrc-only", "netrc")),
            ),
            ("http://netrc.example.org/", false, None),
            ("http://nobody.example.org/", true, None),
        ];
        // The middle column says whether the hop is TLS; the target's scheme tells it.
        for (url, _tls, want) in table {
            let t = Target::from_absolute(url.as_bytes()).unwrap();
            let r = snap.resolve(&t);
            // Preemptive credentials, else the one kept for the host's 401 challenge
            // (where .netrc answers).
            let got = r
                .basic()
                .or_else(|| r.challenge_basic(&t))
                .map(|b| (b.user, b.source));
            assert_eq!(got, want, "{url}");
        }
        // The suffix site applies where no more specific YAML site does.
        let t = Target::from_absolute(b"http://other.example.org/").unwrap();
        assert_eq!(snap.resolve(&t).headers().len(), 1);
        let t = Target::from_absolute(b"http://data.example.org/yaml").unwrap();
        assert_eq!(snap.resolve(&t).headers().len(), 0);
    }

    /// A finding about a rule's line names the rule: the key `check` orders by, beside
    /// file and line.
    #[test]
    fn rule_findings_carry_their_rule() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(
            h.join(".daprc"),
            "[a.example]HTTP.SSL.VERIFYPEER=0\nHTTP.CREDENTIALS.USERPASSWORD=u:p\n",
        )
        .unwrap();
        let snap = load(&Environment::isolated(h, None)).unwrap();
        let rule_of = |line: usize| {
            snap.warnings
                .iter()
                .find(|w| w.origin.line == line && w.rule.is_some())
                .and_then(|w| w.rule.as_deref().map(str::to_owned))
        };
        assert_eq!(
            rule_of(1).as_deref(),
            Some("[a.example]"),
            "{:?}",
            snap.warnings
        );
        assert_eq!(
            rule_of(2).as_deref(),
            Some("(unscoped)"),
            "{:?}",
            snap.warnings
        );
    }

    /// A credential kept for 401 challenges goes only over TLS or to a loopback host, and
    /// never when another credential is sent preemptively.
    #[test]
    fn challenge_credentials_need_tls_or_loopback() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::write(
            h.join(".daprc"),
            "HTTP.CREDENTIALS.USERPASSWORD=u:p\n\
             [scoped.example.org]HTTP.CREDENTIALS.USERPASSWORD=s:q\n",
        )
        .unwrap();
        let config = h.join("config.yaml");
        std::fs::write(&config, "rc_unscoped_credentials: challenge\n").unwrap();
        let snap = load(&Environment::isolated(h, Some(&config))).unwrap();
        let table = [
            ("http://data.example.org/f", None),
            ("https://data.example.org/f", Some("u")),
            ("http://127.0.0.1:8080/f", Some("u")),
            ("http://127.9.9.9/f", Some("u")),
            ("http://[::1]:8080/f", Some("u")),
            ("http://localhost:8080/f", Some("u")),
            ("https://scoped.example.org/f", None),
        ];
        for (url, want) in table {
            let t = Target::from_absolute(url.as_bytes()).unwrap();
            let r = snap.resolve(&t);
            assert_eq!(r.challenge_basic(&t).map(|b| b.user), want, "{url}");
            // Never preemptively.
            if want.is_some() {
                assert!(r.basic().is_none());
            }
        }
        let t = Target::from_absolute(b"https://scoped.example.org/f").unwrap();
        assert_eq!(snap.resolve(&t).basic().map(|b| b.user), Some("s"));
    }

    #[test]
    fn rc_proxy_server_forms() {
        let o = Origin::new("/h/.daprc", 3);
        let p = proxy_from_url("proxy.corp", &o).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user),
            ("proxy.corp", 1080, None)
        );
        let p = proxy_from_url("http://u%40x:p%3Aw@[::1]:3128/", &o).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 3128));
        assert_eq!(p.authority(), "[::1]:3128");
        assert_eq!(p.user.as_deref(), Some("u@x"));
        assert_eq!(
            p.authorization.as_ref().map(|a| a.expose().clone()),
            Some(crate::auth::basic::header("u@x", "p:w").expose().clone())
        );
        for (bad, msg) in [
            ("https://u:Pr0xy-S3cret@proxy.corp", "only http://"),
            ("socks5://u:Pr0xy-S3cret@proxy.corp", "only http://"),
            ("http://u:Pr0xy-S3cret@", "not a valid proxy URL"),
            ("http://u:Pr0xy-S3cret%ff@h", "not UTF-8"),
        ] {
            let e = proxy_from_url(bad, &o).unwrap_err();
            assert!(e.contains(msg), "{bad}: {e}");
            assert!(!e.contains("Pr0xy-S3cret"), "{e}");
        }
    }
}
