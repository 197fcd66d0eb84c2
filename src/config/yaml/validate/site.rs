/*!
The `sites` entries: each one extracted on its own (so one bad entry does not hide the
others) and checked: credentials, TLS options, headers, query parameters.
*/

use std::collections::HashMap;

use serde_yaml::Value;

use super::Cx;
use crate::config::yaml::locate::{show_key, site_path, Seg};
use crate::config::yaml::raw::{
    HeaderName, QueryName, RawBasic, RawBearer, RawLogin, RawMatch, RawParamValue, RawProxy,
    RawSite, RawTls,
};
use crate::config::yaml::{ParamValue, ProxyChoice, Site, SiteTls, YamlConfig, MAX_SITES};
use crate::rule::login::DEFAULT_WHEN;
use crate::rule::LoginStep;
use crate::secret::Secret;

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

impl Cx<'_> {
    pub(super) fn sites(&mut self, value: &Value, cfg: &mut YamlConfig) {
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
        for i in 0..items.len() {
            let line = self.node_line(&[Seg::Key("sites"), Seg::Index(i)]);
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
        let mut tls = self.site_tls(i, raw.tls.unwrap_or_default(), &pattern_text);
        let handle = raw
            .handle
            .and_then(|h| self.site_handle(i, h, &mut tls, &pattern, &pattern_text));
        if handle.is_some() && (raw.basic.is_some() || raw.bearer.is_some()) {
            let l = self.key_line(&site_path(i, &["handle"]));
            self.error(
                l,
                format!("sites[{i}]: give handle or basic/bearer, not both"),
            );
        }

        if raw.basic.is_some() && raw.bearer.is_some() {
            let l = self.key_line(&site_path(i, &["bearer"]));
            self.error(l, format!("sites[{i}]: give basic or bearer, not both"));
        }
        let basic_preemptive = raw
            .basic
            .as_ref()
            .and_then(|b| b.preemptive)
            .unwrap_or(true);
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
            if handle.is_some() && name.eq_ignore_ascii_case("authorization") {
                let l = self.key_line(&site_path(i, &["headers", name]));
                self.error(
                    l,
                    format!(
                        "sites[{i}].headers: `{name}` cannot be set on a handle site: \
                         the handle credential is its Authorization"
                    ),
                );
            }
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

        let login = raw.login.and_then(|l| self.site_login(i, l));
        let query_token = raw.query_token.and_then(|q| self.site_query_token(i, q));
        if let Some(q) = query_token.as_ref() {
            if query.iter().any(|(name, _)| *name == q.param) {
                let l = self.key_line(&site_path(i, &["query", &q.param]));
                self.error(
                    l,
                    format!(
                        "sites[{i}]: query and query_token both add `{}`; keep one",
                        q.param
                    ),
                );
            }
        }

        Site {
            id,
            origin: self.origin(line),
            pattern,
            pattern_text,
            tls,
            basic,
            basic_preemptive,
            bearer,
            headers,
            query,
            upstream_proxy,
            redirects: raw.redirects,
            handle,
            login,
            query_token,
        }
    }

    /// `sites[i].login`: absolute http(s) URLs without userinfo (http only with a
    /// warning: the session cookie would travel in cleartext), POST or GET, statuses
    /// that are client or server errors.
    fn site_login(&mut self, i: usize, l: RawLogin) -> Option<LoginStep> {
        let url = self.login_url(i, "url", &l.url.0);
        let logout_url = l
            .logout_url
            .and_then(|u| self.login_url(i, "logout_url", &u.0));
        let method = match l.method.as_ref().map(|m| m.0.trim().to_ascii_uppercase()) {
            None => Some(http::Method::POST),
            Some(m) if m == "POST" => Some(http::Method::POST),
            Some(m) if m == "GET" => Some(http::Method::GET),
            Some(_) => {
                let at = self.key_line(&site_path(i, &["login", "method"]));
                self.error(at, format!("sites[{i}].login.method: must be POST or GET"));
                None
            }
        };
        let when = match l.when {
            None => DEFAULT_WHEN.to_vec(),
            Some(list) => {
                if list.is_empty() || list.iter().any(|s| !(400..=599).contains(s)) {
                    let at = self.key_line(&site_path(i, &["login", "when"]));
                    self.error(
                        at,
                        format!(
                            "sites[{i}].login.when: a non-empty list of statuses from 400 to \
                             599 (the answers that mean \"log in first\"), such as [401]"
                        ),
                    );
                    return None;
                }
                list
            }
        };
        let body = match (l.body, l.body_file) {
            (Some(_), Some(_)) => {
                let at = self.key_line(&site_path(i, &["login", "body_file"]));
                self.error(
                    at,
                    format!("sites[{i}].login: give body or body_file, not both"),
                );
                return None;
            }
            (Some(b), None) => Some(Secret::new(b)),
            (None, Some(f)) => {
                Some(self.read_secret(&f.0, &site_path(i, &["login", "body_file"]))?)
            }
            (None, None) => None,
        };
        Some(LoginStep {
            url: url?,
            method: method?,
            body,
            logout_url,
            when,
        })
    }

    fn login_url(&mut self, i: usize, key: &str, text: &str) -> Option<url::Url> {
        let at = self.key_line(&site_path(i, &["login", key]));
        let url = match url::Url::parse(text.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
            _ => {
                self.error(
                    at,
                    format!(
                        "sites[{i}].login.{key}: must be an absolute URL such as \
                         https://host:8443/s2dr/login"
                    ),
                );
                return None;
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.error(
                at,
                format!(
                    "sites[{i}].login.{key}: must not hold a user or password; the client \
                     certificate (tls.client_cert) or basic proves who logs in"
                ),
            );
            return None;
        }
        if url.scheme() == "http" {
            self.warn(
                at,
                format!(
                    "sites[{i}].login.{key} is plain http: the session cookie travels in \
                     cleartext and no client certificate can be presented"
                ),
            );
        }
        Some(url)
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
