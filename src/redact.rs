/*!
What of a request may be written to a log line.

Paths are logged with the values of secret-bearing query parameters replaced by `***`
(API keys, signatures of presigned URLs, OAuth codes, Handcar's `proxyname`). Userinfo
never gets this far: [`crate::target::Target`] drops it while parsing.
*/

use std::borrow::Cow;
use std::fmt;

use crate::target::Target;

/// A request URL as it may be logged: `scheme://host[:port]/path?query`, with the
/// values of secret parameters masked. Formats without allocating when nothing is
/// masked.
pub struct LogUrl<'a>(pub &'a Target);

impl fmt::Display for LogUrl<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.0;
        f.write_str(t.scheme.as_str())?;
        f.write_str("://")?;
        if t.host.contains(':') {
            write!(f, "[{}]", t.host)?;
        } else {
            f.write_str(&t.host)?;
        }
        if !t.is_default_port() {
            write!(f, ":{}", t.port)?;
        }
        f.write_str(&path_and_query(&t.path_and_query))
    }
}

/// Query parameters whose values are masked in logs (compared case-insensitively).
const SECRET_PARAMS: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "code",
    "key",
    "pass",
    "passwd",
    "password",
    "proxyname",
    "secret",
    "session",
    "sig",
    "signature",
    "token",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
    "x-goog-credential",
    "x-goog-signature",
];

/// Whether the value of query parameter `name` must not be logged.
pub fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

/// `path?query` with the values of secret parameters masked. Borrows when nothing is masked.
pub fn path_and_query(pq: &str) -> Cow<'_, str> {
    let Some((path, query)) = pq.split_once('?') else {
        return Cow::Borrowed(pq);
    };
    let needs_mask = query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        !value.is_empty() && is_secret_param(&decode_name(name))
    });
    if !needs_mask {
        return Cow::Borrowed(pq);
    }
    let mut out = String::with_capacity(pq.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, value)) if !value.is_empty() && is_secret_param(&decode_name(name)) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

fn decode_name(name: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(name).decode_utf8_lossy()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_urls_mask_secrets() {
        let t = Target::from_absolute(b"http://[::1]:8080/a?key=k1&b=2").unwrap();
        assert_eq!(LogUrl(&t).to_string(), "http://[::1]:8080/a?key=***&b=2");
        let t = Target::from_absolute(b"https://h.example/").unwrap();
        assert_eq!(LogUrl(&t).to_string(), "https://h.example/");
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(path_and_query("/a/b?x=1&y=2"), Cow::Borrowed(_)));
        assert!(matches!(path_and_query("/a"), Cow::Borrowed(_)));
    }

    #[test]
    fn secret_values_are_masked() {
        assert_eq!(
            path_and_query("/d?X-Amz-Signature=abc&part=2&ProxyName=k%2Bey"),
            "/d?X-Amz-Signature=***&part=2&ProxyName=***"
        );
        assert_eq!(path_and_query("/d?%74oken=zzz"), "/d?%74oken=***");
        assert_eq!(path_and_query("/d?token="), "/d?token=");
    }
}
