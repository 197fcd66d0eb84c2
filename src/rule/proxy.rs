/*!
The one upstream-proxy URL parser, for the rc `HTTP.PROXY.SERVER` and the YAML
`upstream_proxy`: `http://[user[:password]@]host[:port][/]`.

Errors never repeat the value (a proxy URL may hold `user:password@`); each caller words
them for its own syntax from [`ProxyUrlError`].
*/

use std::fmt;

/// Port used for a proxy URL without one (libcurl's default proxy port).
pub const DEFAULT_PROXY_PORT: u16 = 1080;

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// Lowercase; IPv6 without brackets.
    pub host: String,
    pub port: u16,
    /// User name and password, percent-decoded, when the URL has either.
    pub credentials: Option<(String, String)>,
    /// The URL has a path other than `/`, a query or a fragment.
    pub has_path: bool,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("has_path", &self.has_path)
            .finish_non_exhaustive()
    }
}

/// Why a proxy URL cannot be used. Holds nothing of the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyUrlError {
    /// Not a URL at all (the parser's reason, which does not quote the input).
    Invalid(url::ParseError),
    Https,
    /// A scheme other than http and https.
    NotHttp,
    NoHost,
    /// The user name or password is not UTF-8 after %-decoding.
    CredentialsNotUtf8,
}

/// Parses a proxy URL (blanks around it ignored). With `bare_authority`, a value without
/// `://` is taken as `http://` + value (the rc form `[user:pass@]host[:port]`).
pub fn parse_proxy_url(value: &str, bare_authority: bool) -> Result<ProxyUrl, ProxyUrlError> {
    let value = value.trim();
    let with_scheme;
    let value = if bare_authority && !value.contains("://") {
        with_scheme = format!("http://{value}");
        &with_scheme
    } else {
        value
    };
    let url = url::Url::parse(value).map_err(ProxyUrlError::Invalid)?;
    match url.scheme() {
        "http" => {}
        "https" => return Err(ProxyUrlError::Https),
        _ => return Err(ProxyUrlError::NotHttp),
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) if !d.is_empty() => d.to_ascii_lowercase(),
        Some(url::Host::Ipv4(a)) => a.to_string(),
        Some(url::Host::Ipv6(a)) => a.to_string(),
        _ => return Err(ProxyUrlError::NoHost),
    };
    let has_path =
        !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some();
    let port = url.port().unwrap_or(DEFAULT_PROXY_PORT);
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| ProxyUrlError::CredentialsNotUtf8)
    };
    let credentials = if !url.username().is_empty() || url.password().is_some() {
        Some((
            decode(url.username())?,
            decode(url.password().unwrap_or(""))?,
        ))
    } else {
        None
    };
    Ok(ProxyUrl {
        host,
        port,
        credentials,
        has_path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = parse_proxy_url(" http://u%40x:p%3Aw@Proxy.Corp:8080/ ", false).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 8080));
        assert_eq!(p.credentials, Some(("u@x".into(), "p:w".into())));
        assert!(!p.has_path);
        let p = parse_proxy_url("http://[::1]", false).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.credentials),
            ("::1", 1080, None)
        );
        let p = parse_proxy_url("u:pw@10.0.0.1:3128", true).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 3128));
        assert!(parse_proxy_url("http://h/x?y", false).unwrap().has_path);
        assert!(!format!("{p:?}").contains("pw"));
    }

    #[test]
    fn refusals_hold_no_value() {
        assert_eq!(
            parse_proxy_url("https://h", false),
            Err(ProxyUrlError::Https)
        );
        assert_eq!(
            parse_proxy_url("socks5://h", true),
            Err(ProxyUrlError::NotHttp)
        );
        assert_eq!(
            parse_proxy_url("h:8080", false),
            Err(ProxyUrlError::NotHttp)
        );
        assert!(matches!(
            parse_proxy_url("http://u:pw@", false),
            Err(ProxyUrlError::Invalid(_))
        ));
        assert_eq!(
            parse_proxy_url("http://u:%ff@h", false),
            Err(ProxyUrlError::CredentialsNotUtf8)
        );
        let e = parse_proxy_url("http://s3cret@:80", false).unwrap_err();
        assert!(!format!("{e:?}").contains("s3cret"));
    }
}
