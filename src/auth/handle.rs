/*!
Handle Server REST API credentials (YAML `handle:`), as pyhandle and b2handle send them.

A Handle Server user is a handle value, `index:prefix/suffix` (the HS_SECKEY or HS_PUBKEY
at that index). Reads are public; only the methods that change a record carry the
credential, as in pyhandle's `HandleSystemConnector.__get_headers`
(`pyhandle/handlesystemconnector.py`): `PUT` and `DELETE` get an `Authorization`, `GET`
gets none. Two methods:

* **Password.** `Authorization: Basic base64(quote(username) + ":" + password)`, which is
  pyhandle's `utilhandle.create_authentication_string` (`pyhandle/utilhandle.py`, EUDAT-B2SAFE/PYHANDLE):
  the username goes through Python's `urllib.parse.quote`, which keeps the unreserved
  characters and `/` and percent-encodes the rest, so `300:foo/bar` becomes
  `300%3Afoo/bar` (the Handle Server decodes it; a raw `:` would end the user name).
  The password goes as written. b2handle's version of the same function
  (`b2handle/utilhandle.py`, EUDAT-B2HANDLE/B2HANDLE) quotes the password too; servers
  set up for b2handle need `password_encoding: percent` ([`PasswordEncoding::Percent`]).
* **Client certificate.** The certificate (HS_PUBKEY) goes in the TLS handshake, and the
  write request says so with `Authorization: Handle clientCert="true"` (pyhandle's
  `__get_headers` again). Without TLS there is no certificate, so the header is sent
  over https only.

The Handle Server answers with a JSON `responseCode`; [`diagnosis`] turns the two that
come from a setup problem (the seed's "Common problems") into one line for the log.
*/

use base64::Engine;
use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::rule::{HandleCredential, HandleMethod, PasswordEncoding};
use crate::secret::Secret;

/// What Python's `urllib.parse.quote` (default `safe='/'`) leaves alone: letters,
/// digits, `_.-~` and `/`.
const PY_QUOTE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'_')
    .remove(b'.')
    .remove(b'-')
    .remove(b'~')
    .remove(b'/');

/// The `Authorization` value of a client-certificate write request.
pub const CLIENT_CERT_AUTHORIZATION: &str = "Handle clientCert=\"true\"";

/// `urllib.parse.quote(s)`: UTF-8, percent-encoded except letters, digits, `_.-~/`.
pub fn quote(s: &str) -> String {
    utf8_percent_encode(s, PY_QUOTE).to_string()
}

/// Whether a request with `method` carries the Handle credential: the writes (`PUT`
/// creates or changes a record, `DELETE` removes it or some of its values). Reads go
/// anonymous, as pyhandle sends them.
pub fn needs_auth(method: &Method) -> bool {
    *method == Method::PUT || *method == Method::DELETE
}

/// The whole `Authorization: Basic` value for a Handle username and password.
pub fn basic_header(username: &str, password: &str, encoding: PasswordEncoding) -> Secret<String> {
    let password = match encoding {
        PasswordEncoding::Raw => password.to_owned(),
        PasswordEncoding::Percent => quote(password),
    };
    let raw = Secret::new(format!("{}:{password}", quote(username)));
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw.expose())
    ))
}

/// The `Authorization` a request with `method` gets from `cred`, and its name for the log
/// line: none on reads, and none for a certificate over plain http (there is no
/// certificate there to announce).
pub fn authorization(
    cred: &HandleCredential,
    method: &Method,
    upstream_tls: bool,
) -> Option<(Secret<String>, &'static str)> {
    if !needs_auth(method) {
        return None;
    }
    match &cred.method {
        HandleMethod::Password { password, encoding } => {
            let user = cred.username.as_deref()?;
            Some((
                basic_header(user, password.expose(), *encoding),
                "handle-basic",
            ))
        }
        HandleMethod::ClientCert if upstream_tls => Some((
            Secret::new(CLIENT_CERT_AUTHORIZATION.to_owned()),
            "handle-cert",
        )),
        HandleMethod::ClientCert => None,
    }
}

/// Checks a Handle username as pyhandle's `utilhandle.check_handle_syntax_with_index`
/// does: `index:prefix/suffix`, one colon, an integer index, a non-empty prefix and
/// suffix. The error never repeats the value.
pub fn check_username(s: &str) -> Result<(), &'static str> {
    if s.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    let mut parts = s.split(':');
    let (Some(index), Some(handle), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("must be index:prefix/suffix, with exactly one colon");
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be index:prefix/suffix, with an integer index");
    }
    match handle.split_once('/') {
        Some((prefix, suffix)) if !prefix.is_empty() && !suffix.is_empty() => Ok(()),
        _ => Err("must be index:prefix/suffix, with a prefix and a suffix"),
    }
}

/// The `responseCode` of a Handle Server JSON answer.
pub fn response_code(body: &[u8]) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("responseCode")?.as_i64()
}

/// The likely cause of a Handle Server refusal, for one log line: responseCode 402 with
/// HTTP 401 and responseCode 400 with HTTP 403 (the seed's "Common problems"). `None` for
/// any other answer. Never holds a secret: only the username (which `check` shows too).
pub fn diagnosis(status: u16, code: i64, cred: &HandleCredential) -> Option<String> {
    let user = cred.username.as_deref().unwrap_or("the certificate's user");
    match (status, code) {
        (401, 402) => Some(match cred.method {
            HandleMethod::ClientCert => "Handle Server responseCode 402 (authentication \
                needed): the client certificate did not reach the handle server. A front \
                that terminates TLS and forwards to another port (e.g. httpd ProxyPass) \
                loses it; ask the handle server's administrator, or try the handle \
                server's own port directly"
                .to_owned(),
            HandleMethod::Password { .. } => format!(
                "Handle Server responseCode 402 (authentication needed): the server \
                 accepted no credential for {user}; check the index:prefix/suffix \
                 username, that the password is the HS_SECKEY at that index, and \
                 password_encoding (raw as pyhandle, percent as b2handle)"
            ),
        }),
        (403, 400) => Some(format!(
            "Handle Server responseCode 400 (other authentication errors): {user} has no \
             admin permission for this handle: it must be named in an HS_ADMIN entry with \
             write permission, directly or through an HS_VLIST that has admin permissions, \
             in this handle's record"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(method: HandleMethod) -> HandleCredential {
        HandleCredential {
            username: Some("300:foo/bar".to_owned()),
            method,
            credentials_file: None,
        }
    }

    fn decoded(header: &Secret<String>) -> String {
        let b64 = header.expose().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        String::from_utf8(raw).unwrap()
    }

    #[test]
    fn quote_is_pythons() {
        // urllib.parse.quote(...) in Python 3.
        assert_eq!(quote("300:foo/bar"), "300%3Afoo/bar");
        assert_eq!(quote("a b+c&d=e~f_g.h-i"), "a%20b%2Bc%26d%3De~f_g.h-i");
        assert_eq!(quote("p@ss:w/rd%"), "p%40ss%3Aw/rd%25");
        assert_eq!(quote("é"), "%C3%A9");
    }

    #[test]
    fn basic_header_encodes_as_pyhandle_or_b2handle() {
        let raw = basic_header("300:foo/bar", "p@ss:w/rd", PasswordEncoding::Raw);
        assert_eq!(decoded(&raw), "300%3Afoo/bar:p@ss:w/rd");
        let pct = basic_header("300:foo/bar", "p@ss:w/rd", PasswordEncoding::Percent);
        assert_eq!(decoded(&pct), "300%3Afoo/bar:p%40ss%3Aw/rd");
        assert_eq!(
            basic_header("300:foo/bar", "pw", PasswordEncoding::Raw).expose(),
            "Basic MzAwJTNBZm9vL2Jhcjpwdw=="
        );
    }

    #[test]
    fn only_writes_are_authorized_and_a_certificate_only_over_tls() {
        let pw = cred(HandleMethod::Password {
            password: Secret::new("pw".to_owned()),
            encoding: PasswordEncoding::Raw,
        });
        for (m, want) in [
            (Method::PUT, true),
            (Method::DELETE, true),
            (Method::GET, false),
            (Method::HEAD, false),
            (Method::POST, false),
        ] {
            assert_eq!(authorization(&pw, &m, false).is_some(), want, "{m}");
        }
        let cert = cred(HandleMethod::ClientCert);
        let (h, name) = authorization(&cert, &Method::PUT, true).unwrap();
        assert_eq!(
            (h.expose().as_str(), name),
            (CLIENT_CERT_AUTHORIZATION, "handle-cert")
        );
        assert!(authorization(&cert, &Method::PUT, false).is_none());
        assert!(authorization(&cert, &Method::GET, true).is_none());
    }

    #[test]
    fn usernames_are_checked_as_pyhandle_does() {
        assert!(check_username("300:foo/bar").is_ok());
        assert!(check_username("300:0.NA/foo.bar/baz").is_ok());
        for bad in [
            "foo/bar",
            "x:foo/bar",
            ":foo/bar",
            "300:foo",
            "300:/bar",
            "300:foo/",
            "1:2:a/b",
            "3:a/b\n",
        ] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_two_common_problems_are_diagnosed() {
        let cert = cred(HandleMethod::ClientCert);
        let d = diagnosis(401, 402, &cert).unwrap();
        assert!(d.contains("ProxyPass"), "{d}");
        let d = diagnosis(403, 400, &cert).unwrap();
        assert!(
            d.contains("300:foo/bar") && d.contains("HS_ADMIN") && d.contains("HS_VLIST"),
            "{d}"
        );
        assert!(diagnosis(200, 1, &cert).is_none());
        assert!(diagnosis(404, 100, &cert).is_none());
        assert_eq!(
            response_code(br#"{"responseCode":402,"handle":"p/1"}"#),
            Some(402)
        );
        assert_eq!(response_code(b"<html>"), None);
    }
}
