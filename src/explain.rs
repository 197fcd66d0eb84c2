/*!
`authproxy check` and `authproxy explain URL`: the configuration as a human reads it.

Both print sources as file:line and never a secret: passwords, tokens and every header
or query value (inline ones too) are shown as `***`, query values in the URL are masked
as in the access log, and only user names, header and parameter names, file paths and
certificate subjects appear. A URL that does not parse is not repeated.
*/

use std::fmt::Write;

use crate::auth::{bearer, handle};
use crate::config::load::{self, ConfigPath, Environment};
use crate::config::snapshot::{CaSetting, Resolved};
use crate::config::{Snapshot, Sourced};
use crate::redact::LogUrl;
use crate::rule::{HandleCredential, HandleMethod, ProxyChoice, QueryToken, Rule, TlsSettings};
use crate::target::{Scheme, Target};

/// The `check` report and whether the configuration loads.
pub fn check(env: &Environment) -> (String, bool) {
    let mut out = String::new();
    match env.config_path() {
        ConfigPath::Named(p) | ConfigPath::Found(p, _) => {
            let _ = writeln!(out, "config: {}", p.display());
        }
        ConfigPath::None(candidates) => {
            let list: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            let _ = writeln!(out, "config: none (looked for {})", list.join(", "));
        }
    }
    match load::load(env) {
        Ok(snapshot) => {
            describe(&mut out, &snapshot);
            if snapshot.unusable.is_empty() {
                (out, true)
            } else {
                let _ = writeln!(
                    out,
                    "errors (the daemon runs, but answers these hosts' https requests with 502):"
                );
                for e in &snapshot.unusable {
                    let _ = writeln!(out, "  {e}");
                }
                (out, false)
            }
        }
        Err(errors) => {
            let _ = writeln!(out, "errors:");
            for e in &errors.0 {
                let _ = writeln!(out, "  {e}");
            }
            (out, false)
        }
    }
}

fn describe(out: &mut String, s: &Snapshot) {
    let _ = writeln!(
        out,
        "listen: {}",
        join(s.listen.iter().map(|a| a.to_string()))
    );
    if let Some(admin) = s.admin {
        let _ = writeln!(out, "admin: {admin} (/healthz, /metrics)");
    }
    let _ = writeln!(out, "files read:");
    for f in &s.files {
        let _ = writeln!(out, "  {}", f.display());
    }
    if let Some(jar) = &s.cookie_jar {
        let _ = writeln!(out, "cookie jar: {}", jar.display());
    }
    if let Some(p) = &s.upstream_proxy {
        let _ = writeln!(out, "upstream proxy: {p:?}");
    }
    if !s.no_proxy.is_empty() {
        let _ = writeln!(out, "no_proxy: {}", s.no_proxy.join(", "));
    }
    let _ = writeln!(
        out,
        "timeouts: connect {:?}, first byte {:?}",
        s.timeouts.connect, s.timeouts.read
    );
    let _ = writeln!(
        out,
        "rules, most specific first (YAML sites, then rc files):"
    );
    if s.sites.is_empty() && s.rc.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for rule in s.sites.iter().chain(&s.rc) {
        describe_rule(out, rule);
    }
    describe_intercept(out, s);
    if let Some(n) = &s.netrc {
        let _ = writeln!(
            out,
            "netrc: {} ({} entries)",
            n.path.display(),
            n.entries.len()
        );
        for e in &n.entries {
            let _ = writeln!(
                out,
                "  {} login {} password {} ({})",
                e.host
                    .as_deref()
                    .map_or("default".to_owned(), |h| format!("machine {h}")),
                e.login.as_deref().unwrap_or("-"),
                if e.password.is_some() { "***" } else { "-" },
                e.origin
            );
        }
    } else {
        let _ = writeln!(out, "netrc: none");
    }
    if !s.unsupported.is_empty() {
        let _ = writeln!(
            out,
            "rc keys netCDF-C reads that authproxy does not act on:"
        );
        for line in unsupported_by_file(&s.unsupported) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(out, "warnings:");
        for w in &s.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
}

/// `intercept` and the CA: which https hosts are intercepted, and what clients trust.
/// Nothing when no host is (the default: every https URL is tunnelled).
fn describe_intercept(out: &mut String, s: &Snapshot) {
    if s.intercept.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "https interception (TLS terminated with the local CA):"
    );
    for e in &s.intercept {
        let _ = writeln!(out, "  {} ({})", e.written, e.origin);
    }
    let _ = match &s.intercept_ca {
        CaSetting::Files { cert, key } => writeln!(
            out,
            "  CA: {} (key {}, never printed)",
            cert.display(),
            key.display()
        ),
        CaSetting::Generated {
            dir: Some(dir),
            name_constraints,
        } => {
            let cert = dir.join(crate::intercept::ca::CERT_FILE);
            let state = if cert.exists() {
                "exists"
            } else {
                "made at first need"
            };
            let constrained = if *name_constraints {
                ", name-constrained to these patterns"
            } else {
                ""
            };
            writeln!(
                out,
                "  CA: {} ({state}{constrained}); clients trust it (see `authproxy ca`)",
                cert.display()
            )
        }
        CaSetting::Generated { dir: None, .. } => writeln!(
            out,
            "  CA: none: neither XDG_DATA_HOME nor HOME is set; name one with intercept_ca"
        ),
    };
}

/// One line per file: `path: KEY (lines 2, 10), other.key (line 11)`, keys as written,
/// in line order.
fn unsupported_by_file(keys: &[Sourced<String>]) -> Vec<String> {
    let mut sorted: Vec<&Sourced<String>> = keys.iter().collect();
    sorted.sort_by(|a, b| (&*a.origin.path, a.origin.line).cmp(&(&*b.origin.path, b.origin.line)));
    type Lines<'a> = Vec<(&'a str, Vec<usize>)>;
    let mut files: Vec<(&std::path::Path, Lines<'_>)> = Vec::new();
    for k in sorted {
        if files.last().is_none_or(|(p, _)| *p != &*k.origin.path) {
            files.push((&k.origin.path, Vec::new()));
        }
        let (_, list) = files.last_mut().expect("pushed above");
        match list
            .iter_mut()
            .find(|(key, _)| key.eq_ignore_ascii_case(&k.value))
        {
            Some((_, lines)) => lines.push(k.origin.line),
            None => list.push((&k.value, vec![k.origin.line])),
        }
    }
    files
        .into_iter()
        .map(|(path, list)| {
            let keys: Vec<String> = list
                .into_iter()
                .map(|(key, lines)| {
                    let word = if lines.len() == 1 { "line" } else { "lines" };
                    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                    format!("{key} ({word} {})", lines.join(", "))
                })
                .collect();
            format!("{}: {}", path.display(), keys.join(", "))
        })
        .collect()
}

fn describe_rule(out: &mut String, rule: &Rule) {
    let _ = writeln!(out, "  {} ({})", rule.id, rule.origin);
    if let Some(b) = &rule.basic {
        let when = if b.only_on_challenge {
            " — only in answer to a 401 Basic challenge, over TLS or to a loopback host"
        } else if may_go_over_http(rule) {
            " — sent in cleartext over http"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    basic: user {:?}, password *** ({}){when}",
            b.user, b.origin
        );
    }
    if rule.bearer.is_some() {
        let _ = writeln!(out, "    bearer: ***");
    }
    if let Some(h) = &rule.handle {
        let _ = writeln!(
            out,
            "    handle: {}",
            handle_text(h, may_go_over_http(rule))
        );
    }
    // Values are never shown, inline ones included: only the names.
    for (name, _) in &rule.headers {
        let _ = writeln!(out, "    header: {name}: ***");
    }
    for (name, _) in &rule.query {
        let _ = writeln!(out, "    query: {name}=***");
    }
    if let Some(q) = &rule.query_token {
        let _ = writeln!(out, "    {}", query_token_text(q));
    }
    let tls = tls_text(&rule.tls);
    if !tls.is_empty() {
        let _ = writeln!(out, "    tls: {tls}");
    }
    if let Some(l) = &rule.login {
        let _ = writeln!(out, "    login: {}", login_text(l));
    }
    match &rule.proxy {
        ProxyChoice::Inherit => {}
        ProxyChoice::Direct => {
            let _ = writeln!(out, "    upstream proxy: direct");
        }
        ProxyChoice::Via(p) => {
            let _ = writeln!(out, "    upstream proxy: {p:?}");
        }
    }
    if let Some(t) = rule.connect_timeout {
        let _ = writeln!(out, "    connect timeout: {t:?}");
    }
    if let Some(t) = rule.read_timeout {
        let _ = writeln!(out, "    timeout: {t:?}");
    }
}

/// A Handle Server credential for `check` and `explain`: user, method, what is sent when.
fn handle_text(h: &HandleCredential, cleartext: bool) -> String {
    let user = h.username.as_deref().map_or(String::new(), |u| {
        format!("user {u:?} (sent as {:?}), ", handle::quote(u))
    });
    let from = h
        .credentials_file
        .as_ref()
        .map_or(String::new(), |p| format!(", from {}", p.display()));
    match &h.method {
        HandleMethod::Password { encoding, .. } => format!(
            "Basic, {user}password *** ({} encoding){from}, on PUT and DELETE only \
             (GET and other reads go anonymous){}",
            encoding.as_str(),
            if cleartext {
                " — sent in cleartext over http"
            } else {
                ""
            }
        ),
        HandleMethod::ClientCert => format!(
            "client certificate, {user}Authorization: {}{from}, on PUT and DELETE over \
             https only (GET and other reads go anonymous)",
            handle::CLIENT_CERT_AUTHORIZATION
        ),
    }
}

/// A `query_token` for `check` and `explain`: the parameter and the source, never the key.
fn query_token_text(q: &QueryToken) -> String {
    let mut s = format!(
        "query_token: {}=*** ({}), {}",
        q.param,
        q.origin,
        q.source.shown()
    );
    if q.source.is_fetched() {
        let _ = write!(
            s,
            ", each key used for {} and replaced {} before that",
            duration_text(q.lifetime),
            duration_text(q.refresh_before)
        );
        if let Some(c) = &q.cache_file {
            let _ = write!(s, ", kept in {}", c.display());
        }
    } else {
        s.push_str(", read again when the file changes");
    }
    s.push_str(if q.replace {
        "; replaces a value the client sends"
    } else {
        "; a value the client sends is kept"
    });
    s
}

/// A duration as the configuration writes it: `1h`, `5m`, `4s`, `500ms`.
fn duration_text(d: std::time::Duration) -> String {
    let (s, ms) = (d.as_secs(), d.subsec_millis());
    match (s, ms) {
        (0, ms) => format!("{ms}ms"),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        _ => format!("{}ms", d.as_millis()),
    }
}

/// Whether a rule's requests may go upstream as plain http: it matches http URLs and does
/// not upgrade them.
fn may_go_over_http(rule: &Rule) -> bool {
    rule.pattern.may_match_http() && !rule.tls.upgrade
}

fn tls_text(t: &TlsSettings) -> String {
    let mut parts = Vec::new();
    if t.upgrade {
        parts.push("upgrade http to https".to_owned());
    }
    if let Some(i) = &t.identity {
        parts.push(format!(
            "client certificate {} from {} (expires {})",
            i.subject, i.source, i.not_after
        ));
    }
    if let Some(c) = &t.ca {
        parts.push(format!(
            "trust {} CA certificates from {}",
            c.certs.len(),
            c.source
        ));
    }
    if t.verify_peer == Some(false) {
        parts.push("peer verification OFF".to_owned());
    }
    if t.verify_host == Some(false) {
        parts.push("host name verification OFF".to_owned());
    }
    parts.join("; ")
}

/// What would happen to `url`.
pub fn explain(env: &Environment, url: &str) -> Result<String, String> {
    // The URL is not repeated: what does not parse may still hold `user:pass@` or a token.
    let target = Target::from_absolute(url.as_bytes()).map_err(|_| {
        "the URL is not an http:// or https:// URL with a host (it is not repeated here, \
         as it may hold a password or token)"
            .to_owned()
    })?;
    let snapshot = load::load(env).map_err(|e| format!("the configuration has errors:\n{e}"))?;
    let resolved = snapshot.resolve(&target);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "url: {}",
        LogUrl(&target, &snapshot.secret_query_names)
    );
    let _ = writeln!(out, "rules: {}", resolved.describe());
    let upstream = resolved
        .upstream_target(&target)
        .unwrap_or_else(|| target.clone());
    let tls = upstream.scheme == Scheme::Https;
    if let Some(entry) = (target.scheme == Scheme::Https)
        .then(|| snapshot.intercepted(&target))
        .flatten()
    {
        // An intercepted https:// URL: served like an http one, over TLS both ways.
        let _ = writeln!(
            out,
            "intercepted: the intercept pattern {} ({}) names {}: authproxy answers the \
             client's CONNECT with a certificate from its local CA and serves the requests \
             inside as below",
            entry.written,
            entry.origin,
            target.authority()
        );
        fetched(&mut out, &resolved, &target, &upstream, tls);
    } else if target.scheme == Scheme::Https {
        // What happens to a client's https:// request: a tunnel, nothing added.
        let _ = writeln!(
            out,
            "tunnelled: a client sends https:// URLs as CONNECT {}, which authproxy passes \
             through untouched: no credential, header or certificate is added ({})",
            target.authority(),
            if snapshot.intercept.is_empty() {
                "YAML intercept names no host"
            } else {
                "no intercept pattern names this authority"
            }
        );
        let _ = match resolved.proxy(&target.host) {
            Some(p) => writeln!(out, "via: upstream proxy {p:?} (CONNECT)"),
            None => writeln!(out, "via: direct"),
        };
        let _ = writeln!(
            out,
            "when authproxy fetches this URL itself (following a redirect from an http:// URL):"
        );
        let mut inner = String::new();
        fetched(&mut inner, &resolved, &target, &upstream, tls);
        for line in inner.lines() {
            let _ = writeln!(out, "  {line}");
        }
    } else {
        fetched(&mut out, &resolved, &target, &upstream, tls);
    }
    Ok(out)
}

/// What authproxy sends when it makes the request for `target` itself.
fn fetched(
    out: &mut String,
    resolved: &Resolved<'_>,
    target: &Target,
    upstream: &Target,
    tls: bool,
) {
    if upstream != target {
        let _ = writeln!(
            out,
            "upstream: https://{} (TLS upgrade)",
            upstream.host_header()
        );
    } else {
        let _ = writeln!(
            out,
            "upstream: {}://{}",
            upstream.scheme.as_str(),
            upstream.host_header()
        );
    }
    match resolved.proxy(&target.host) {
        Some(p) => {
            let _ = writeln!(out, "via: upstream proxy {p:?}");
        }
        None => {
            let _ = writeln!(out, "via: direct");
        }
    }
    if tls {
        match resolved.tls_unusable() {
            Some(reason) => {
                let _ = writeln!(out, "tls: UNUSABLE, requests get 502: {reason}");
            }
            None => {
                let _ = writeln!(out, "tls: {}", tls_summary(resolved));
            }
        }
    }
    let _ = writeln!(
        out,
        "authorization: {}",
        auth_summary(resolved, upstream, tls)
    );
    for (name, _) in resolved.headers() {
        let _ = writeln!(out, "header: {name}: ***");
    }
    for (name, _) in resolved.query() {
        let _ = writeln!(out, "query: {name}=***");
    }
    if let Some(l) = crate::auth::login::step(resolved, target) {
        let _ = writeln!(out, "login: {}", login_text(l));
        // The login is a request of its own, with its own URL's rules.
        let identity = Target::from_absolute(l.url.as_str().as_bytes())
            .ok()
            .and_then(|t| {
                let r = resolved.snapshot.resolve(&t);
                r.identity().map(|i| i.subject.clone())
            });
        let _ = match identity {
            Some(subject) => writeln!(out, "login certificate: {subject}"),
            None => writeln!(out, "login certificate: none configured for the login URL"),
        };
    }
    if let Some(q) = resolved.query_token() {
        let _ = writeln!(out, "{}", query_token_text(q));
    }
    let (connect, read) = resolved.timeout_pair();
    let _ = writeln!(out, "timeouts: connect {connect:?}, first byte {read:?}");
}

/// A login step in words (the body is never shown).
fn login_text(l: &crate::rule::LoginStep) -> String {
    use crate::rule::login::shown;
    let when = join(l.when.iter().map(u16::to_string));
    let mut text = format!(
        "{} {}{} before the first request, and once more when the site answers {when}",
        l.method,
        shown(&l.url),
        if l.body.is_some() { " (body ***)" } else { "" },
    );
    if let Some(out) = &l.logout_url {
        text.push_str(&format!("; POST {} at shutdown", shown(out)));
    }
    text
}

fn tls_summary(r: &Resolved<'_>) -> String {
    let mut parts = Vec::new();
    match r.identity() {
        Some(i) => parts.push(format!(
            "client certificate {} from {}",
            i.subject, i.source
        )),
        None => parts.push("no client certificate".to_owned()),
    }
    match r.ca() {
        Some(c) => parts.push(format!(
            "trusts the {} CA certificates from {} (instead of the system roots)",
            c.certs.len(),
            c.source
        )),
        None => parts.push("system CA roots".to_owned()),
    }
    if !r.verify_peer() {
        parts.push("peer verification OFF".to_owned());
    } else if !r.verify_host() {
        parts.push("host name verification OFF".to_owned());
    }
    parts.join("; ")
}

fn auth_summary(r: &Resolved<'_>, upstream: &Target, tls: bool) -> String {
    if bearer::is_presigned(&upstream.path_and_query) {
        return "none (the URL is presigned; it carries its own signature)".to_owned();
    }
    let cleartext = if tls { "" } else { ", in cleartext over http" };
    if r.headers()
        .iter()
        .any(|(name, _)| name == http::header::AUTHORIZATION)
    {
        let site = r.site.map_or(String::new(), |s| format!(" ({})", s.origin));
        return format!(
            "the Authorization header of the YAML site{site}: ***{cleartext} \
             (a client's own Authorization is kept instead)"
        );
    }
    if let Some(h) = r.handle() {
        let over = match (&h.method, tls) {
            (HandleMethod::ClientCert, false) => {
                " — this URL goes over plain http, where no certificate is presented, so \
                 nothing is added; use tls: { upgrade: true }"
            }
            _ => cleartext,
        };
        return format!("Handle Server {}{over}", handle_text(h, false));
    }
    if r.bearer().is_some() {
        return format!("Bearer ***{cleartext}");
    }
    if let Some(b) = r.basic() {
        return format!(
            "Basic, user {:?}, password *** from {} ({}){cleartext}",
            b.user, b.source, b.origin
        );
    }
    if let Some(b) = r.challenge_basic(upstream) {
        let from = if b.source == "netrc" {
            "the .netrc entry"
        } else if b.source == "yaml" {
            "the YAML site (basic.preemptive: false)"
        } else {
            "the rc credentials without a [prefix] (rc_unscoped_credentials: challenge)"
        };
        return format!(
            "Basic, user {:?}, password *** from {from} ({}), only if the host answers 401 \
             with a Basic challenge{cleartext}",
            b.user, b.origin
        );
    }
    if let Some(b) = r.netrc_basic() {
        return if tls {
            format!(
                "none: the .netrc entry for this host ({}) is sent only over TLS whose \
                 certificate is verified, and verification is off for this host",
                b.origin
            )
        } else {
            format!(
                "none: the .netrc entry for this host ({}) is sent only over https; \
                 add `tls: {{ upgrade: true }}` for this host to use it",
                b.origin
            )
        };
    }
    if let Some(b) = r.challenge_basic_any() {
        return format!(
            "none: the rc credentials without a [prefix] ({}) answer 401 challenges only \
             over TLS or from loopback hosts, and this is plain http to another host",
            b.origin
        );
    }
    if let Some(origin) = &r.snapshot.unscoped_credentials_ignored {
        return format!(
            "none: the rc file's HTTP.CREDENTIALS.* at {origin} has no [prefix], so it is sent \
             to no host; put this host in front of it ([host:port]HTTP.CREDENTIALS...), or set \
             `rc_unscoped_credentials: challenge`"
        );
    }
    "none".to_owned()
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(config: &str) -> (tempfile::TempDir, Environment) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config).unwrap();
        std::fs::write(dir.path().join("k"), "FileValue-2b\n").unwrap();
        let env = Environment::isolated(dir.path(), Some(&path));
        (dir, env)
    }

    const CONFIG: &str = "sites:\n\
                          \x20 - match: data.example.org\n\
                          \x20   headers: { X-Api-Key: InlineValue-1a, X-File: { value_file: k } }\n\
                          \x20   query: { format: nc, ticket: { value_file: k } }\n";

    #[test]
    fn check_shows_names_but_no_value_and_warns_about_inline_ones() {
        let (_dir, env) = env_with(CONFIG);
        let (out, ok) = check(&env);
        assert!(ok, "{out}");
        for shown in [
            "header: x-api-key: ***",
            "header: x-file: ***",
            "query: format=***",
            "query: ticket=***",
        ] {
            assert!(out.contains(shown), "{shown} not in\n{out}");
        }
        assert!(
            !out.contains("InlineValue-1a")
                && !out.contains("FileValue-2b")
                && !out.contains("=nc"),
            "{out}"
        );
        let config = env.config_flag.as_ref().unwrap().display().to_string();
        for warned in [
            format!("{config}:3: sites[0].headers.X-Api-Key is written inline; value_file"),
            format!("{config}:4: sites[0].query.format is written inline; value_file"),
        ] {
            assert!(out.contains(&warned), "{warned} not in\n{out}");
        }
        assert!(!out.contains("X-File is written inline"), "{out}");
    }

    #[test]
    fn explain_masks_values_and_never_echoes_a_bad_url() {
        let (_dir, env) = env_with(CONFIG);
        let out = explain(
            &env,
            "http://data.example.org/d?ticket=T1ck3t&token=T0k3n&x=1",
        )
        .unwrap();
        assert!(
            out.contains("url: http://data.example.org/d?ticket=***&token=***&x=1"),
            "{out}"
        );
        assert!(
            out.contains("header: x-api-key: ***") && out.contains("query: format=***"),
            "{out}"
        );
        for secret in ["InlineValue-1a", "FileValue-2b", "T1ck3t", "T0k3n"] {
            assert!(!out.contains(secret), "{secret} in\n{out}");
        }
        for bad in [
            "ftp://u:Pa55w0rd@host/",
            "http://u:Pa55w0rd@[::1/",
            "Pa55w0rd",
        ] {
            let e = explain(&env, bad).unwrap_err();
            assert!(e.contains("not an http:// or https:// URL"), "{e}");
            assert!(!e.contains("Pa55w0rd"), "{e}");
        }
    }
}
