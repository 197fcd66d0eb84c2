/*!
A site's `handle`: a Handle Server REST API credential, written in the YAML or imported
from the credentials JSON that pyhandle and b2handle users already have.

```yaml
handle: { username: "300:foo/bar", password_file: hs.pw }    # password_encoding: raw | percent
handle: { client_cert: true }                                # with tls.client_cert/client_key
handle: { credentials_file: creds.json }                     # pyhandle / b2handle JSON
```

The JSON is read as pyhandle's `PIDClientCredentials.load_from_JSON`
(`pyhandle/clientcredentials.py`) and b2handle's (`b2handle/clientcredentials.py`) read
it: `handle_server_url` (b2handle: `baseuri`), `username` + `password`, `private_key` +
`certificate_only` or `certificate_and_key` (paths relative to the JSON file, as
pyhandle resolves them), and `HTTPS_verify` (`true`, `false`, or a CA file; the
strings `"True"`/`"False"` too, as pyhandle's `get_valid_https_verify`). The fields
those libraries keep for the client itself (`prefix`, `handleowner`, `reverselookup_*`,
...) are accepted with a warning; any other field is an error, with the JSON's line.
Fields that contradict each other, or the YAML site, are errors naming both lines.

The site's `match` decides where the credential goes, not the JSON's server URL: the URL
must be one the match covers (else an error names both), and an `https://` URL turns on
`tls.upgrade` for the site, since tools send `http://` URLs to the proxy.
*/

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::Value as Json;

use super::Cx;
use crate::auth::handle::check_username;
use crate::config::yaml::locate::{show_key, site_path};
use crate::config::yaml::raw::{RawHandle, RawPasswordEncoding};
use crate::config::yaml::{read_capped_text, SiteTls};
use crate::config::{Diagnostic, Origin};
use crate::rule::{HandleCredential, HandleMethod, PasswordEncoding, Pattern, SchemePattern};
use crate::secret::Secret;
use crate::target::{Scheme, Target};

/// Credentials files larger than this are refused.
const MAX_CREDENTIALS_FILE: u64 = 1 << 20;

/// The JSON fields authproxy acts on.
const USED: &[&str] = &[
    "handle_server_url",
    "baseuri",
    "username",
    "password",
    "private_key",
    "certificate_only",
    "certificate_and_key",
    "HTTPS_verify",
];

/// Fields pyhandle and b2handle know that concern the client library, not the
/// credential a request carries: accepted, with a warning.
const CLIENT_ONLY: &[&str] = &[
    "client",
    "prefix",
    "handleowner",
    "reverselookup_username",
    "reverselookup_password",
    "reverselookup_baseuri",
    "REST_API_url_extension",
    "passphrase",
    "db_host",
    "db_user",
    "db_password",
    "db_name",
];

/// `HTTPS_verify`.
enum Verify {
    On(bool),
    Ca(PathBuf),
}

/// One credentials JSON file and what its fields say.
struct JsonFile<'t> {
    path: PathBuf,
    text: &'t str,
}

impl JsonFile<'_> {
    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// A path in the file: absolute, or relative to the file's directory (pyhandle's
    /// `util.get_absolute_path(path, credentials_filename)`).
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir().join(p)
        }
    }

    fn line(&self, key: &str) -> usize {
        json_key_line(self.text, Some(key)).map_or(0, |(l, _)| l)
    }

    fn origin(&self, key: &str) -> Origin {
        Origin::new(&self.path, self.line(key))
    }
}

impl Cx<'_> {
    /// Validates a site's `handle`; the credential, or `None` after recording why. A
    /// credentials file may fill in `tls` (certificate, CA, verification, upgrade).
    pub(super) fn site_handle(
        &mut self,
        i: usize,
        h: RawHandle,
        tls: &mut SiteTls,
        pattern: &Pattern,
        pattern_text: &str,
    ) -> Option<HandleCredential> {
        let encoding = match h.password_encoding {
            Some(RawPasswordEncoding::Percent) => PasswordEncoding::Percent,
            Some(RawPasswordEncoding::Raw) | None => PasswordEncoding::Raw,
        };
        if let Some(file) = h.credentials_file {
            let mut alone = true;
            for (k, given) in [
                ("username", h.username.is_some()),
                ("password", h.password.is_some()),
                ("password_file", h.password_file.is_some()),
                ("client_cert", h.client_cert.is_some()),
            ] {
                if given {
                    let l = self.key_line(&site_path(i, &["handle", k]));
                    self.error(
                        l,
                        format!(
                            "sites[{i}].handle: {k} and credentials_file do not go together: \
                             the file holds the credential"
                        ),
                    );
                    alone = false;
                }
            }
            if !alone {
                return None;
            }
            let given = h.password_encoding.is_some();
            return self.import_handle_json(
                i,
                &file.0,
                (encoding, given),
                tls,
                pattern,
                pattern_text,
            );
        }
        let username = match h.username {
            Some(u) => match check_username(&u) {
                Ok(()) => Some(u),
                Err(why) => {
                    let l = self.key_line(&site_path(i, &["handle", "username"]));
                    self.error(l, format!("sites[{i}].handle.username {why}"));
                    return None;
                }
            },
            None => None,
        };
        if h.client_cert == Some(true) {
            let mut ok = true;
            for (k, given) in [
                ("password", h.password.is_some()),
                ("password_file", h.password_file.is_some()),
                ("password_encoding", h.password_encoding.is_some()),
            ] {
                if given {
                    let l = self.key_line(&site_path(i, &["handle", k]));
                    self.error(
                        l,
                        format!("sites[{i}].handle: client_cert: true takes no {k}"),
                    );
                    ok = false;
                }
            }
            let line = self.key_line(&site_path(i, &["handle", "client_cert"]));
            if tls.client_cert.is_none() && tls.pkcs12.is_none() {
                self.error(
                    line,
                    format!(
                        "sites[{i}].handle: client_cert: true needs the certificate: \
                         tls.client_cert and tls.client_key (or tls.pkcs12)"
                    ),
                );
                ok = false;
            }
            ok &= self.handle_cert_over_https(i, line, tls, pattern);
            return ok.then_some(HandleCredential {
                username,
                method: HandleMethod::ClientCert,
                credentials_file: None,
            });
        }
        let Some(username) = username else {
            let l = self.key_line(&site_path(i, &["handle"]));
            self.error(
                l,
                format!(
                    "sites[{i}].handle: needs username and password_file (or password), \
                     client_cert: true, or credentials_file"
                ),
            );
            return None;
        };
        let password = match (h.password, h.password_file) {
            (Some(_), Some(_)) => {
                let l = self.key_line(&site_path(i, &["handle", "password"]));
                self.error(
                    l,
                    format!("sites[{i}].handle: give password or password_file, not both"),
                );
                None
            }
            (None, None) => {
                let l = self.key_line(&site_path(i, &["handle", "username"]));
                self.error(
                    l,
                    format!("sites[{i}].handle: username needs password_file (or password)"),
                );
                None
            }
            (Some(pw), None) => {
                self.warn_inline(&site_path(i, &["handle", "password"]), "password_file");
                Some(Secret::new(pw))
            }
            (None, Some(f)) => self.read_secret(&f.0, &site_path(i, &["handle", "password_file"])),
        }?;
        Some(HandleCredential {
            username: Some(username),
            method: HandleMethod::Password { password, encoding },
            credentials_file: None,
        })
    }

    /// A client certificate is presented over https only: a site that can only be plain
    /// http (an `http://` match without `tls.upgrade`) would send the claim without it.
    fn handle_cert_over_https(
        &mut self,
        i: usize,
        line: usize,
        tls: &SiteTls,
        pattern: &Pattern,
    ) -> bool {
        let http_only = matches!(pattern.scheme, SchemePattern::Is(Scheme::Http));
        if http_only && !tls.upgrade {
            self.error(
                line,
                format!(
                    "sites[{i}].handle: a client certificate goes over https only, and this \
                     site matches only http:// URLs; add `tls: {{ upgrade: true }}` or match \
                     the https URL"
                ),
            );
            return false;
        }
        if pattern.may_match_http() && !tls.upgrade {
            // Tools send http:// URLs to a proxy (https ones are tunnelled untouched),
            // so only a redirect to https would reach the server with the certificate.
            self.warn(
                line,
                format!(
                    "sites[{i}].handle: a client certificate goes over https only, so this \
                     site's http:// requests carry no Handle credential; add \
                     `tls: {{ upgrade: true }}`"
                ),
            );
        }
        true
    }

    fn json_error(&mut self, origin: Origin, message: impl Into<String>) {
        self.errors.push(Diagnostic::new(origin, message));
    }

    /// Reads `handle.credentials_file` (see the module documentation).
    fn import_handle_json(
        &mut self,
        i: usize,
        raw: &str,
        (encoding, encoding_given): (PasswordEncoding, bool),
        tls: &mut SiteTls,
        pattern: &Pattern,
        pattern_text: &str,
    ) -> Option<HandleCredential> {
        let at = site_path(i, &["handle", "credentials_file"]);
        let yaml_line = self.key_line(&at);
        let path = match self.resolve_secret_path(raw) {
            Ok(p) => p,
            Err(msg) => {
                self.error(
                    yaml_line,
                    format!("sites[{i}].handle.credentials_file: {msg}"),
                );
                return None;
            }
        };
        let text = match read_capped_text(&path, MAX_CREDENTIALS_FILE) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    yaml_line,
                    format!(
                        "sites[{i}].handle.credentials_file: cannot read {}: {e}",
                        path.display()
                    ),
                );
                return None;
            }
        };
        if !self.files_read.contains(&path) {
            self.files_read.push(path.clone());
        }
        let file = JsonFile { path, text: &text };
        let errors_before = self.errors.len();
        let whose = format!("(the Handle credentials of sites[{i}])");
        let map = match serde_json::from_str::<Json>(file.text) {
            Ok(Json::Object(m)) => m,
            Ok(_) => {
                self.json_error(
                    Origin::new(&file.path, 1),
                    format!("must be a JSON object {whose}"),
                );
                return None;
            }
            Err(e) => {
                // serde_json's syntax messages name what was expected, never the input.
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or("syntax error");
                self.json_error(
                    Origin::new(&file.path, e.line()),
                    format!("not valid JSON: {msg} {whose}"),
                );
                return None;
            }
        };
        if let Some((line, key)) = json_key_line(file.text, None) {
            self.json_error(
                Origin::new(&file.path, line),
                format!("`{}` is given twice {whose}", show_key(&key)),
            );
        }
        let mut strings: Vec<(&str, String)> = Vec::new();
        let mut verify = None;
        for (key, value) in &map {
            if key == "HTTPS_verify" {
                verify = match value {
                    Json::Bool(b) => Some(Verify::On(*b)),
                    Json::String(s) if s.eq_ignore_ascii_case("true") => Some(Verify::On(true)),
                    Json::String(s) if s.eq_ignore_ascii_case("false") => Some(Verify::On(false)),
                    Json::String(s) if !s.trim().is_empty() => Some(Verify::Ca(file.resolve(s))),
                    _ => {
                        self.json_error(
                            file.origin(key),
                            format!("`HTTPS_verify` must be true, false or the path of a CA file {whose}"),
                        );
                        None
                    }
                };
            } else if let Some(&k) = USED.iter().find(|k| *k == key) {
                match value {
                    // pyhandle treats an empty value as not given.
                    Json::String(s) if s.is_empty() => {}
                    Json::String(s) => strings.push((k, s.clone())),
                    Json::Null => {}
                    _ => {
                        self.json_error(file.origin(key), format!("`{k}` must be a string {whose}"))
                    }
                }
            } else if CLIENT_ONLY.contains(&key.as_str()) {
                let what = if key == "passphrase" {
                    "; an encrypted private key's password goes in tls.key_password_file"
                } else {
                    ""
                };
                self.warnings.push(Diagnostic::new(
                    file.origin(key),
                    format!(
                        "`{key}` is for the Handle client library; authproxy does not use it{what}"
                    ),
                ));
            } else {
                let expected = USED
                    .iter()
                    .chain(CLIENT_ONLY)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.json_error(
                    file.origin(key),
                    format!(
                        "unknown field `{}` {whose}, expected one of {expected}",
                        show_key(key)
                    ),
                );
            }
        }
        let get = |k: &str| {
            strings
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.clone())
        };
        let (server_url, baseuri) = (get("handle_server_url"), get("baseuri"));
        let (username, password) = (get("username"), get("password"));
        let (cert_only, key, cert_and_key) = (
            get("certificate_only"),
            get("private_key"),
            get("certificate_and_key"),
        );

        // The server: one URL, covered by the site's match.
        if let (Some(a), Some(b)) = (&server_url, &baseuri) {
            if a.trim_end_matches('/') != b.trim_end_matches('/') {
                let first = file.line("handle_server_url");
                self.json_error(
                    file.origin("baseuri"),
                    format!(
                        "`baseuri` and `handle_server_url` (line {first}) name different \
                         servers; keep one {whose}"
                    ),
                );
            }
        }
        if let Some((k, url)) = server_url
            .map(|u| ("handle_server_url", u))
            .or(baseuri.map(|u| ("baseuri", u)))
        {
            match Target::from_absolute(url.as_bytes()) {
                Err(_) => self.json_error(
                    file.origin(k),
                    format!("`{k}` is not an http:// or https:// URL {whose}"),
                ),
                Ok(t) => {
                    let mut plain = t.clone();
                    plain.scheme = Scheme::Http;
                    if plain.port == 443 {
                        plain.port = 80;
                    }
                    if pattern.matches(&t) || pattern.matches(&plain) {
                        if t.scheme == Scheme::Https {
                            tls.upgrade = true;
                        }
                    } else {
                        let m = self.origin(self.key_line(&site_path(i, &["match"])));
                        self.json_error(
                            file.origin(k),
                            format!(
                                "`{k}` names {}://{}, which the match `{}` of sites[{i}] ({m}) \
                                 does not cover; the match decides where the credential goes, \
                                 so make them agree",
                                t.scheme.as_str(),
                                t.host_header(),
                                show_key(pattern_text)
                            ),
                        );
                    }
                }
            }
        }

        // The credential: a password, or a certificate, not both.
        if cert_and_key.is_some() && (cert_only.is_some() || key.is_some()) {
            self.json_error(
                file.origin("certificate_and_key"),
                format!(
                    "give `certificate_and_key`, or `certificate_only` with `private_key`, \
                     not both {whose}"
                ),
            );
        } else if cert_and_key.is_none() && cert_only.is_some() != key.is_some() {
            let (given, missing) = if cert_only.is_some() {
                ("certificate_only", "private_key")
            } else {
                ("private_key", "certificate_only")
            };
            self.json_error(
                file.origin(given),
                format!("`{given}` needs `{missing}` {whose}"),
            );
        }
        let cert = cert_and_key
            .as_ref()
            .map(|c| (file.resolve(c), None))
            .or_else(|| {
                Some((
                    file.resolve(cert_only.as_ref()?),
                    Some(file.resolve(key.as_ref()?)),
                ))
            });
        let cert_key = if cert_and_key.is_some() {
            "certificate_and_key"
        } else {
            "certificate_only"
        };
        if cert.is_some() {
            if password.is_some() {
                let l = file.line(cert_key);
                self.json_error(
                    file.origin("password"),
                    format!(
                        "`password` and the client certificate `{cert_key}` (line {l}) do not go \
                         together; pyhandle would use the certificate: remove one {whose}"
                    ),
                );
            }
            let yaml_cert = ["client_cert", "pkcs12"].into_iter().find(|k| match *k {
                "client_cert" => tls.client_cert.is_some(),
                _ => tls.pkcs12.is_some(),
            });
            if let Some(k) = yaml_cert {
                let m = self.origin(self.key_line(&site_path(i, &["tls", k])));
                self.json_error(
                    file.origin(cert_key),
                    format!(
                        "`{cert_key}` and the site's tls.{k} ({m}) both name a client \
                         certificate; keep one {whose}"
                    ),
                );
            }
            if encoding_given {
                let l = self.key_line(&site_path(i, &["handle", "password_encoding"]));
                self.error(
                    l,
                    format!(
                        "sites[{i}].handle: password_encoding applies to a password, and {} \
                         holds a client certificate",
                        file.path.display()
                    ),
                );
            }
        } else if password.is_some() && username.is_none() {
            self.json_error(
                file.origin("password"),
                format!("`password` needs `username` {whose}"),
            );
        } else if username.is_some() && password.is_none() {
            self.json_error(
                file.origin("username"),
                format!(
                    "`username` needs `password` (or `certificate_only` and `private_key`) {whose}"
                ),
            );
        } else if username.is_none() && self.errors.len() == errors_before {
            self.json_error(
                Origin::new(&file.path, 1),
                format!(
                    "holds no credential for writing: give `username` and `password`, or \
                     `certificate_only` and `private_key`, or `certificate_and_key` {whose}"
                ),
            );
        }
        if let Some(u) = &username {
            if let Err(why) = check_username(u) {
                self.json_error(file.origin("username"), format!("`username` {why} {whose}"));
            }
        }

        // HTTPS_verify mirrors tls.verify and tls.ca; the two must not disagree.
        if let Some(v) = verify {
            let clash = match &v {
                Verify::On(true) => tls.verify == Some(false),
                Verify::On(false) => tls.verify == Some(true) || tls.ca.is_some(),
                Verify::Ca(p) => {
                    tls.verify == Some(false) || tls.ca.as_ref().is_some_and(|c| c != p)
                }
            };
            if clash {
                let k = if tls.ca.is_some() { "ca" } else { "verify" };
                let m = self.origin(self.key_line(&site_path(i, &["tls", k])));
                self.json_error(
                    file.origin("HTTPS_verify"),
                    format!(
                        "`HTTPS_verify` disagrees with the site's tls.{k} ({m}); keep one {whose}"
                    ),
                );
            } else {
                match v {
                    Verify::On(true) => {}
                    Verify::On(false) => {
                        tls.verify = Some(false);
                        self.warnings.push(Diagnostic::new(
                            file.origin("HTTPS_verify"),
                            format!(
                                "TLS verification is off for {} (HTTPS_verify)",
                                show_key(pattern_text)
                            ),
                        ));
                    }
                    Verify::Ca(p) => tls.ca = Some(p),
                }
            }
        }

        let method = match &cert {
            Some(_) => {
                let ok = self.handle_cert_over_https(i, yaml_line, tls, pattern);
                if !ok {
                    return None;
                }
                HandleMethod::ClientCert
            }
            None => HandleMethod::Password {
                password: Secret::new(password.unwrap_or_default()),
                encoding,
            },
        };
        if self.errors.len() != errors_before {
            return None;
        }
        if let Some((c, k)) = cert {
            tls.client_cert = Some(c);
            tls.client_key = k;
        }
        Some(HandleCredential {
            username,
            method,
            credentials_file: Some(file.path),
        })
    }
}

/// The line of `key` at the top level of a JSON object (with `None`: the line and name of
/// the first key given twice), found as the YAML side finds its lines: the real parser
/// walks the text and a visitor stops at the key with a marker error, which serde_json
/// gives the position it reached.
fn json_key_line(text: &str, key: Option<&str>) -> Option<(usize, String)> {
    struct Probe<'k> {
        want: Option<&'k str>,
        hit: &'k RefCell<Option<String>>,
    }
    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                let hit = match self.want {
                    Some(want) => k == want,
                    None => !seen.insert(k.clone()),
                };
                if hit {
                    *self.hit.borrow_mut() = Some(k);
                    return Err(de::Error::custom("probe"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let hit = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let probe = Probe {
        want: key,
        hit: &hit,
    };
    let e = serde::Deserializer::deserialize_map(&mut de, probe).err()?;
    let name = hit.into_inner()?;
    Some((e.line(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_and_repeated_keys_are_found_by_the_parser() {
        let text = "{\n  \"username\": \"300:foo/bar\",\n  \"a\": {\"username\": 1},\n  \"password\": \"x\",\n  \"username\": \"again\"\n}\n";
        assert_eq!(
            json_key_line(text, Some("password")),
            Some((4, "password".into()))
        );
        assert_eq!(
            json_key_line(text, Some("username")),
            Some((2, "username".into()))
        );
        assert_eq!(json_key_line(text, None), Some((5, "username".into())));
        assert_eq!(json_key_line(text, Some("missing")), None);
    }
}
