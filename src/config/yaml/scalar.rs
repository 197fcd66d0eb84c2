/*!
Parsers for the scalar values that have a syntax of their own: site `match` patterns and
durations. Error messages never repeat the input (it may be a mistyped secret).
*/

use std::net::Ipv6Addr;
use std::time::Duration;

use crate::rule::{HostPattern, Pattern, PortSpec, SchemePattern, Syntax};
use crate::target::Scheme;

/// Parses a `match:` pattern: `host`, `host:port`, `*.domain[:port]`,
/// `http(s)://host[:port][/path]` or `*`. The host is lowercased; a trailing `/` of the
/// path is dropped. A pattern without a scheme matches any port unless it names one; a URL
/// pattern without a port matches its scheme's default port ([`PortSpec::Default`]); a
/// path prefix matches at a segment boundary. Error messages do not repeat the input.
pub fn parse_match(s: &str) -> Result<Pattern, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the match pattern is empty".into());
    }
    let port_spec = |port: Option<u16>, default: PortSpec| port.map_or(default, PortSpec::Is);
    if s == "*" {
        return Ok(Pattern::any(Syntax::Yaml));
    }
    if let Some(idx) = s.find("://") {
        let Some(scheme) = Scheme::parse(&s[..idx]) else {
            return Err("a match URL must start with http:// or https://".into());
        };
        let rest = &s[idx + 3..];
        if rest.contains(['?', '#']) {
            return Err("a match URL must not have a query or fragment".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(p) => (&rest[..p], &rest[p..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err("a match URL must not contain user information".into());
        }
        let (host, port) = parse_host_port(authority)?;
        if host == HostPattern::Any {
            return Err("a match URL needs a host (a lone * matches every site)".into());
        }
        let path = path.trim_end_matches('/');
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the match path must not contain spaces or control characters".into());
        }
        Ok(Pattern {
            scheme: SchemePattern::Is(scheme),
            host,
            port: port_spec(port, PortSpec::Default),
            path: (!path.is_empty()).then(|| path.to_string()),
            syntax: Syntax::Yaml,
        })
    } else {
        if s.contains('/') {
            return Err("a pattern with a path needs the URL form, e.g. https://host/path".into());
        }
        let (host, port) = parse_host_port(s)?;
        Ok(Pattern {
            scheme: SchemePattern::Any,
            host,
            port: port_spec(port, PortSpec::Any),
            path: None,
            syntax: Syntax::Yaml,
        })
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port must be a number".into());
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be between 1 and 65535".into()),
        Ok(n) => Ok(n),
    }
}

fn parse_host_port(s: &str) -> Result<(HostPattern, Option<u16>), String> {
    if let Some(r) = s.strip_prefix('[') {
        let end = r.find(']').ok_or("unterminated '[' in the host")?;
        let (h, after) = (&r[..end], &r[end + 1..]);
        let port = if after.is_empty() {
            None
        } else if let Some(p) = after.strip_prefix(':') {
            Some(parse_port(p)?)
        } else {
            return Err("unexpected text after the IPv6 address".into());
        };
        if h.parse::<Ipv6Addr>().is_err() {
            return Err("invalid IPv6 address".into());
        }
        return Ok((HostPattern::Exact(h.to_ascii_lowercase()), port));
    }
    let (h, port) = match s.rfind(':') {
        Some(i) => (&s[..i], Some(parse_port(&s[i + 1..])?)),
        None => (s, None),
    };
    if h.contains(':') {
        return Err("an IPv6 address must be written in brackets, e.g. [::1]:8080".into());
    }
    if h == "*" {
        return Ok((HostPattern::Any, port));
    }
    if let Some(domain) = h.strip_prefix("*.").or_else(|| h.strip_prefix('.')) {
        let d = validate_hostname(domain)?;
        return Ok((HostPattern::Suffix(format!(".{d}")), port));
    }
    Ok((HostPattern::Exact(validate_hostname(h)?), port))
}

/// Lowercases and checks a host name; drops one trailing dot.
fn validate_hostname(h: &str) -> Result<String, String> {
    let h = h.strip_suffix('.').unwrap_or(h);
    if h.is_empty() {
        return Err("the host is empty".into());
    }
    if h.contains('*') {
        return Err("a wildcard is only allowed as a leading '*.'".into());
    }
    if !h.is_ascii() {
        return Err("the host must be ASCII (use the xn-- form of international names)".into());
    }
    if h.split('.').any(str::is_empty) {
        return Err("the host has an empty label".into());
    }
    if !h
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err("the host contains a character not allowed in host names".into());
    }
    Ok(h.to_ascii_lowercase())
}

// ---------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------

/// Parses `500ms`, `4s`, `5m`, `1h`, or a sum of those written together (`1m30s`).
/// The error message does not repeat the input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HELP: &str = "a duration is a number followed by ms, s, m or h, e.g. 10s";
    let s = s.trim();
    if s.is_empty() {
        return Err(format!("empty duration; {HELP}"));
    }
    let mut rest = s;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration; {HELP}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "the duration is too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "" => return Err(format!("the duration needs a unit; {HELP}")),
            _ => return Err(format!("unknown duration unit; {HELP}")),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| "the duration is too large".to_string())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_match_parse() {
        let m = parse_match("Example.ORG").unwrap();
        assert_eq!(m.host, HostPattern::Exact("example.org".into()));
        // No scheme, no port, no path: any port.
        assert_eq!(
            (m.scheme, m.port, m.path.as_deref()),
            (SchemePattern::Any, PortSpec::Any, None)
        );
        assert_eq!(m.syntax, Syntax::Yaml);
        let m = parse_match("example.org:8443").unwrap();
        assert_eq!(m.port, PortSpec::Is(8443));
        let m = parse_match("*.Example.org").unwrap();
        assert_eq!(m.host, HostPattern::Suffix(".example.org".into()));
        let m = parse_match("HTTPS://h.example/data/").unwrap();
        assert_eq!(m.scheme, SchemePattern::Is(Scheme::Https));
        // A URL pattern without a port: its scheme's default port.
        assert_eq!(m.port, PortSpec::Default);
        assert_eq!(m.path.as_deref(), Some("/data"));
        let m = parse_match("http://h.example:8000").unwrap();
        assert_eq!((m.port, m.path.as_deref()), (PortSpec::Is(8000), None));
        let m = parse_match("[::1]:8080").unwrap();
        assert_eq!(
            (m.host.clone(), m.port),
            (HostPattern::Exact("::1".into()), PortSpec::Is(8080))
        );
        assert_eq!(parse_match("*").unwrap().host, HostPattern::Any);
        for bad in [
            "",
            "h:0",
            "h:65536",
            "h:x",
            "a.*.b",
            "ftp://h",
            "https://",
            "https://u:p@h/",
            "h/path",
            "https://h/p?q",
            "::1",
            "[::1",
            "[zz]:1",
            "a..b",
            "bad host",
            "é.example",
            "https://*/x",
            "*.",
            "h:",
        ] {
            assert!(parse_match(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn site_match_matches() {
        // (pattern, scheme, host, port, path, expected)
        let table: &[(&str, &str, &str, u16, &str, bool)] = &[
            ("example.org", "https", "EXAMPLE.org", 443, "/", true),
            ("example.org", "http", "example.org", 8080, "/x", true),
            ("example.org", "https", "a.example.org", 443, "/", false),
            ("example.org", "https", "example.org.", 443, "/", true),
            ("*.example.org", "https", "a.example.org", 443, "/", true),
            ("*.example.org", "https", "a.b.Example.ORG", 443, "/", true),
            ("*.example.org", "https", "example.org", 443, "/", false),
            ("*.example.org", "https", "badexample.org", 443, "/", false),
            ("example.org:8443", "https", "example.org", 8443, "/", true),
            ("example.org:8443", "https", "example.org", 443, "/", false),
            (
                "https://example.org",
                "https",
                "example.org",
                443,
                "/",
                true,
            ),
            (
                "https://example.org",
                "https",
                "example.org",
                8443,
                "/",
                false,
            ),
            (
                "https://example.org",
                "http",
                "example.org",
                443,
                "/",
                false,
            ),
            ("http://example.org", "HTTP", "example.org", 80, "/", true),
            (
                "https://example.org:8443/data",
                "https",
                "example.org",
                8443,
                "/data",
                true,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/data",
                true,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/data/",
                true,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/data/x",
                true,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/data?q=1",
                true,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/database",
                false,
            ),
            (
                "https://example.org/data",
                "https",
                "example.org",
                443,
                "/",
                false,
            ),
            (
                "https://example.org/data/",
                "https",
                "example.org",
                443,
                "/data",
                true,
            ),
            ("*", "http", "anything", 1, "/", true),
            ("[::1]:8080", "http", "[::1]", 8080, "/", true),
            ("[::1]:8080", "http", "::1", 8080, "/", true),
        ];
        for &(pat, scheme, host, port, path, want) in table {
            let m = parse_match(pat).unwrap();
            assert_eq!(
                m.matches_parts(scheme, host, port, path),
                want,
                "{pat} vs {scheme}://{host}:{port}{path}"
            );
        }
    }

    #[test]
    fn site_match_specificity_orders_patterns() {
        let ordered = [
            "*",
            "*.org",
            "*.example.org",
            "*.example.org:8443",
            "a.example.org",
            "a.example.org:8443",
            "https://a.example.org/d",
            "https://a.example.org/data/x",
        ];
        for pair in ordered.windows(2) {
            let a = parse_match(pair[0]).unwrap().specificity();
            let b = parse_match(pair[1]).unwrap().specificity();
            assert!(
                a < b,
                "{} {a:?} should be less specific than {} {b:?}",
                pair[0],
                pair[1]
            );
        }
        assert_eq!(
            parse_match("https://a.example.org").unwrap().specificity(),
            parse_match("a.example.org:443").unwrap().specificity()
        );
    }

    #[test]
    fn durations() {
        let ok = [
            ("4s", Duration::from_secs(4)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            (" 1m30s ", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
        ];
        for (s, d) in ok {
            assert_eq!(parse_duration(s), Ok(d), "{s}");
        }
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "10 s",
            "-1s",
            "1d",
            "1hx",
            "99999999999999999999s",
            "18446744073709551615h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
