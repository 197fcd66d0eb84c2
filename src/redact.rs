/*!
What of a request may be written to a log line.

Paths are logged with the values of secret-bearing query parameters replaced by `***`
(API keys, signatures of presigned URLs, OAuth codes, Handcar's `proxyname`). Userinfo
never gets this far: [`crate::target::Target`] drops it while parsing.
*/

use std::borrow::Cow;

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
