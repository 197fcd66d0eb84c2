/*!
The request target of a proxied request.

A forward proxy receives absolute-form targets (`GET http://host:port/path HTTP/1.1`).
[`Target`] is that URL taken apart once per request: scheme, host (lower-cased, IPv6
without brackets), port (the scheme's default when absent) and the origin-form
path-and-query that goes upstream. Userinfo in the URL is dropped here and never
stored, so it cannot reach a log line or an upstream.
*/

use std::fmt;

/// The two schemes a proxied request may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// `http` or `https`, in any case; `None` for any other scheme.
    pub fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Why a request target cannot be proxied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `GET /path`: the client took the proxy for a web server.
    #[error("origin-form request target")]
    OriginForm,
    #[error("unsupported scheme")]
    UnsupportedScheme,
    #[error("malformed request target")]
    Malformed,
}

/// The URL of one proxied request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// Lower-cased; IPv6 literals without brackets.
    pub host: String,
    pub port: u16,
    /// Origin-form: always starts with `/`.
    pub path_and_query: String,
}

/// Whether the authority's port, if it writes one, is a number from 0 to 65535 (an
/// empty port means the default).
fn port_text_ok(authority: Option<&http::uri::Authority>) -> bool {
    let Some(a) = authority else { return true };
    let text = a.as_str();
    let after_host = match text.rfind(']') {
        Some(i) => &text[i + 1..],
        None => text.rsplit_once('@').map_or(text, |(_, h)| h),
    };
    match after_host.rsplit_once(':') {
        Some((_, p)) => p.is_empty() || p.parse::<u16>().is_ok(),
        None => true,
    }
}

impl Target {
    /// Parses an absolute-form request target (`http://host[:port]/path?query`).
    pub fn from_absolute(raw: &[u8]) -> Result<Target, TargetError> {
        if raw.first() == Some(&b'/') || raw == b"*" {
            return Err(TargetError::OriginForm);
        }
        let uri = http::Uri::try_from(raw).map_err(|_| TargetError::Malformed)?;
        let scheme = match uri.scheme_str() {
            Some(s) => Scheme::parse(s).ok_or(TargetError::UnsupportedScheme)?,
            None => return Err(TargetError::Malformed),
        };
        let host = uri.host().ok_or(TargetError::Malformed)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        // The `http` crate keeps `h[x:bad]` as host `h[x` with no port: a bracket outside
        // an IPv6 literal, or a port that is no u16, is malformed (not port 80 or 443).
        if host.is_empty() || host.contains(['[', ']']) || !port_text_ok(uri.authority()) {
            return Err(TargetError::Malformed);
        }
        let port = match uri.port_u16() {
            Some(0) => return Err(TargetError::Malformed),
            Some(p) => p,
            None => scheme.default_port(),
        };
        let path_and_query = match uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('/') => pq.as_str().to_owned(),
            Some(pq) => format!("/{}", pq.as_str()),
            None => "/".to_owned(),
        };
        Ok(Target {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query,
        })
    }

    /// Parses a CONNECT authority (`host:port`, `[v6]:port`); the port is required.
    pub fn from_authority(raw: &str) -> Result<Target, TargetError> {
        let auth: http::uri::Authority = raw.parse().map_err(|_| TargetError::Malformed)?;
        let port = auth
            .port_u16()
            .filter(|p| *p != 0)
            .ok_or(TargetError::Malformed)?;
        let host = auth.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || auth.as_str().contains('@') {
            return Err(TargetError::Malformed);
        }
        Ok(Target {
            scheme: Scheme::Https,
            host: host.to_ascii_lowercase(),
            port,
            path_and_query: String::new(),
        })
    }

    pub fn is_default_port(&self) -> bool {
        self.port == self.scheme.default_port()
    }

    /// `scheme://host:port`: the key of a data server's logins in flight.
    pub fn origin_key(&self) -> String {
        format!("{}://{}", self.scheme.as_str(), self.authority())
    }

    /// Whether the host is this machine's loopback: `127.0.0.0/8`, `::1` or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.host == "localhost" || self.host.ends_with(".localhost"),
        }
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(&self.path_and_query, |(p, _)| p)
    }

    /// `host[:port]` as the Host header carries it (port omitted when default).
    pub fn host_header(&self) -> String {
        let host = self.bracketed_host();
        if self.is_default_port() {
            host.into_owned()
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// `host:port`, always with the port (CONNECT authority, log lines).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.bracketed_host(), self.port)
    }

    fn bracketed_host(&self) -> std::borrow::Cow<'_, str> {
        if self.host.contains(':') {
            format!("[{}]", self.host).into()
        } else {
            self.host.as_str().into()
        }
    }
}

/// Displays the URL without its query string (queries may hold keys).
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.as_str(),
            self.host_header(),
            self.path()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn brackets_in_a_host_and_bad_ports_are_malformed() {
        // Found by the location fuzz target: this parsed as host `uat.u[s.earthdec`, port 443.
        for bad in [
            &b"https://uat.u[s.earthdec:%2F%2Fdata].example/"[..],
            b"http://h:99999/",
            b"http://h]/",
        ] {
            assert_eq!(
                super::Target::from_absolute(bad),
                Err(super::TargetError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"http://[::1]:8080/"[..],
            b"http://[::1]/",
            b"http://h:/",
            b"http://h:1/",
        ] {
            assert!(super::Target::from_absolute(good).is_ok());
        }
    }

    use super::*;

    #[test]
    fn absolute_form_is_taken_apart() {
        let t = Target::from_absolute(b"http://Data.Example.ORG:8080/a/b?x=1").unwrap();
        assert_eq!(t.scheme, Scheme::Http);
        assert_eq!(t.host, "data.example.org");
        assert_eq!(t.port, 8080);
        assert_eq!(t.path_and_query, "/a/b?x=1");
        assert_eq!(t.path(), "/a/b");
        assert_eq!(t.host_header(), "data.example.org:8080");
    }

    #[test]
    fn default_ports_and_empty_path() {
        let t = Target::from_absolute(b"https://example.org").unwrap();
        assert_eq!((t.port, t.path_and_query.as_str()), (443, "/"));
        assert_eq!(t.host_header(), "example.org");
        let t = Target::from_absolute(b"http://example.org?q").unwrap();
        assert_eq!(t.path_and_query, "/?q");
    }

    #[test]
    fn userinfo_is_dropped() {
        let t = Target::from_absolute(b"http://alice:s3cret@example.org/x").unwrap();
        assert_eq!(t.host, "example.org");
        assert!(!format!("{t:?}{t}").contains("s3cret"));
    }

    #[test]
    fn ipv6_literals() {
        let t = Target::from_absolute(b"http://[::1]:8080/").unwrap();
        assert_eq!(t.host, "::1");
        assert_eq!(t.host_header(), "[::1]:8080");
        let t = Target::from_authority("[::1]:443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            Target::from_absolute(b"/index.html"),
            Err(TargetError::OriginForm)
        );
        assert_eq!(
            Target::from_absolute(b"ftp://example.org/"),
            Err(TargetError::UnsupportedScheme)
        );
        assert_eq!(
            Target::from_absolute(b"http://:80/"),
            Err(TargetError::Malformed)
        );
        assert!(Target::from_authority("example.org").is_err());
        assert!(Target::from_authority("example.org:0").is_err());
        assert!(Target::from_authority("u:p@example.org:443").is_err());
    }

    #[test]
    fn display_hides_the_query() {
        let t = Target::from_absolute(b"http://h/p?token=abc").unwrap();
        assert_eq!(t.to_string(), "http://h/p");
    }
}
