/*!
What of a request may be written to a log line.

Paths are logged with the values of secret-bearing query parameters replaced by `***`
(API keys, signatures of presigned URLs, OAuth codes, Handcar's `proxyname`, and every
parameter the configuration adds). Userinfo
never gets this far: [`crate::target::Target`] drops it while parsing.
*/

use std::borrow::Cow;
use std::fmt;

use crate::target::Target;

/// A request URL as it may be logged: `scheme://host[:port]/path?query`, with the
/// values of secret parameters masked; the second field names the parameters the
/// configuration adds (lowercase), masked too. Formats without allocating when nothing
/// is masked.
pub struct LogUrl<'a>(pub &'a Target, pub &'a [String]);

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
        f.write_str(&path_and_query(&t.path_and_query, self.1))
    }
}

/// A parameter whose name contains one of these (ASCII case-insensitively, after
/// percent-decoding) has its value masked: `client_secret`, `refresh_token`, `api-key`,
/// `X-Amz-Signature`, `X-Amz-Credential`, `passwd`, `auth_code` and `JSESSIONID` all
/// do. Masking a harmless `postcode` now and then is the price of never logging a key.
pub const SECRET_PARTS: &[&str] = &[
    "token",
    "secret",
    "key",
    "pass",
    "sig",
    "auth",
    "session",
    "credential",
    "code",
];

/// Secret parameters that contain none of [`SECRET_PARTS`] (Handcar's key).
const SECRET_NAMES: &[&str] = &["proxyname"];

/// Whether the value of query parameter `name` (as written in the URL, percent-encoded)
/// must not be logged; `configured` holds the lowercase names of the parameters the
/// configuration adds.
pub fn is_secret_param(name: &str, configured: &[String]) -> bool {
    let name = decode_name(name);
    SECRET_PARTS
        .iter()
        .any(|p| contains_ignore_ascii_case(&name, p))
        || SECRET_NAMES.iter().any(|p| p.eq_ignore_ascii_case(&name))
        || configured.iter().any(|c| c.eq_ignore_ascii_case(&name))
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether `segment` (`name=value`) has a non-empty value that must be masked.
fn masks(segment: &str, configured: &[String]) -> bool {
    match segment.split_once('=') {
        Some((name, value)) => !value.is_empty() && is_secret_param(name, configured),
        None => false,
    }
}

/// `path?query` with the values of secret parameters masked. Borrows when nothing is
/// masked. Parameters are separated by `&`, and by `;` as some servers accept; a masked
/// value runs to the next `&`, so a `;` inside it reveals nothing.
pub fn path_and_query<'a>(pq: &'a str, configured: &[String]) -> Cow<'a, str> {
    let Some((path, query)) = pq.split_once('?') else {
        return Cow::Borrowed(pq);
    };
    if !query.split(['&', ';']).any(|s| masks(s, configured)) {
        return Cow::Borrowed(pq);
    }
    let mut out = String::with_capacity(pq.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        for (j, segment) in pair.split(';').enumerate() {
            if j > 0 {
                out.push(';');
            }
            if masks(segment, configured) {
                let name = segment.split_once('=').map_or(segment, |(n, _)| n);
                out.push_str(name);
                out.push_str("=***");
                break;
            }
            out.push_str(segment);
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

    fn masked(pq: &str) -> Cow<'_, str> {
        path_and_query(pq, &[])
    }

    #[test]
    fn log_urls_mask_secrets() {
        let t = Target::from_absolute(b"http://[::1]:8080/a?key=k1&b=2").unwrap();
        assert_eq!(
            LogUrl(&t, &[]).to_string(),
            "http://[::1]:8080/a?key=***&b=2"
        );
        let t = Target::from_absolute(b"https://h.example/").unwrap();
        assert_eq!(LogUrl(&t, &[]).to_string(), "https://h.example/");
        let t = Target::from_absolute(b"http://h.example/a?ticket=t1&b=2").unwrap();
        let configured = ["ticket".to_owned()];
        assert_eq!(
            LogUrl(&t, &configured).to_string(),
            "http://h.example/a?ticket=***&b=2"
        );
        assert_eq!(
            LogUrl(&t, &[]).to_string(),
            "http://h.example/a?ticket=t1&b=2"
        );
    }

    #[test]
    fn plain_paths_are_borrowed() {
        let configured = ["ticket".to_owned()];
        for pq in [
            "/a/b?x=1&y=2",
            "/a",
            "/a?token=",
            "/a?format=nc;lat=1",
            "/a?ticketing=1",
        ] {
            assert!(matches!(masked(pq), Cow::Borrowed(_)), "{pq}");
            assert!(
                matches!(path_and_query(pq, &configured), Cow::Borrowed(_)),
                "{pq}"
            );
        }
    }

    #[test]
    fn secret_values_are_masked() {
        assert_eq!(
            masked("/d?X-Amz-Signature=abc&part=2&ProxyName=k%2Bey"),
            "/d?X-Amz-Signature=***&part=2&ProxyName=***"
        );
        assert_eq!(masked("/d?%74oken=zzz"), "/d?%74oken=***");
        assert_eq!(masked("/d?token="), "/d?token=");
    }

    #[test]
    fn names_containing_a_secret_word_are_masked() {
        for name in [
            "client_secret",
            "refresh_token",
            "access_token",
            "id_token",
            "api-key",
            "X-Api-Key",
            "apikey",
            "X%2DAmz%2DSignature",
            "X-Amz-Credential",
            "X-Goog-Signature",
            "sig",
            "password",
            "passwd",
            "auth",
            "oauth_verifier",
            "Authorization",
            "session_id",
            "JSESSIONID",
            "credential",
            "code",
            "auth_code",
            "%63ode",
            "proxyname",
        ] {
            let pq = format!("/p?a=1&{name}=S3cr3t&b=2");
            assert_eq!(masked(&pq), format!("/p?a=1&{name}=***&b=2"), "{name}");
        }
        for name in ["format", "lat", "variable", "time", "bbox", "page"] {
            let pq = format!("/p?{name}=visible");
            assert_eq!(masked(&pq), pq, "{name}");
        }
    }

    #[test]
    fn configured_names_are_masked_case_insensitively_after_decoding() {
        let configured = ["ticket".to_owned(), "user id".to_owned()];
        assert_eq!(
            path_and_query(
                "/p?Ticket=S3cr3t&T%69cket=S3cr3t&user%20id=S3cr3t&x=1",
                &configured
            ),
            "/p?Ticket=***&T%69cket=***&user%20id=***&x=1"
        );
    }

    #[test]
    fn semicolons_separate_parameters_too() {
        assert_eq!(masked("/p?a=1;token=S3cr3t&b=2"), "/p?a=1;token=***&b=2");
        // The masked value runs to the next `&`: nothing after a `;` in it shows.
        assert_eq!(masked("/p?token=S3c;r3t&b=2"), "/p?token=***&b=2");
    }
}
