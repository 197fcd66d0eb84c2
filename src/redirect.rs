/*!
Redirects the proxy follows itself, and the login hops among them.

A data server that wants a login answers `302` to its login host (NASA Earthdata Login,
an OAuth2 authorize URL); the login host challenges, takes a password, and redirects
back with a code; the data server exchanges it, sets its session cookie and redirects
to the original URL. The client, which cannot log in, sees none of it: [`follow`]
decides each next hop and its method (browser rules), and [`is_login_hop`] tells the
hops that belong to a login, which go as plain `GET`s without the client's `Range` or
conditional headers, so that `HEAD` and `Range` apply to the data alone.
*/

use http::Method;
use percent_encoding::percent_decode_str;

use crate::target::Target;

/// The next hop of a redirect, and the method to use there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Follow {
    pub next: Target,
    pub method: Method,
    /// The method changed from one that carries a body (a `POST` turned into a `GET`).
    pub drops_body: bool,
}

/// Where `status` with `location` sends a request for `from` made with `method`, or
/// `None` when it is not a redirect the proxy can follow (not 301/302/303/307/308, no or
/// an unusable `Location`, another scheme than http or https).
///
/// Browser method rules: 303 becomes `GET` (`HEAD` stays `HEAD`); 301 and 302 turn a
/// `POST` into a `GET`; 307 and 308 keep the method (and body). A relative `Location` is
/// resolved against `from`.
pub fn follow(from: &Target, status: u16, location: &[u8], method: &Method) -> Option<Follow> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = std::str::from_utf8(location).ok()?.trim();
    let next = match Target::from_absolute(location.as_bytes()) {
        Ok(t) => t,
        Err(_) => {
            let base = url::Url::parse(&full_url(from)).ok()?;
            let joined = base.join(location).ok()?;
            Target::from_absolute(joined.as_str().as_bytes()).ok()?
        }
    };
    let new_method = match status {
        303 if method == Method::HEAD => Method::HEAD,
        303 => Method::GET,
        301 | 302 if method == Method::POST => Method::GET,
        _ => method.clone(),
    };
    let drops_body = new_method != *method && !matches!(*method, Method::GET | Method::HEAD);
    Some(Follow {
        next,
        method: new_method,
        drops_body,
    })
}

/// `scheme://host[:port]/path?query`, the whole URL (secrets included: never log it).
pub fn full_url(t: &Target) -> String {
    format!(
        "{}://{}{}",
        t.scheme.as_str(),
        t.host_header(),
        t.path_and_query
    )
}

/// Whether `t` is a hop of a login rather than the data: an OAuth2 authorize request
/// (`client_id` with `redirect_uri` or `response_type`), the callback that brings the
/// code or error back (`code` or `error` with `state`), or a path ending in
/// `/oauth/authorize`.
pub fn is_login_hop(t: &Target) -> bool {
    let path = t.path().trim_end_matches('/');
    if path.ends_with("/oauth/authorize") {
        return true;
    }
    let has = |name: &str| query_names(t).any(|n| n.eq_ignore_ascii_case(name));
    (has("client_id") && (has("redirect_uri") || has("response_type")))
        || ((has("code") || has("error")) && has("state"))
}

/// Whether a redirect's target says the login was refused for want of approval: an
/// OAuth2 `error=access_denied` (the user never approved the application or a EULA).
pub fn is_access_denied(t: &Target) -> bool {
    query_pairs(t).any(|(n, v)| n.eq_ignore_ascii_case("error") && v == "access_denied")
}

fn query_pairs(t: &Target) -> impl Iterator<Item = (String, String)> + '_ {
    let query = t.path_and_query.split_once('?').map_or("", |(_, q)| q);
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        (decode(n), decode(v))
    })
}

fn query_names(t: &Target) -> impl Iterator<Item = String> + '_ {
    query_pairs(t).map(|(n, _)| n)
}

/// The client's request headers a login hop keeps: the rest (`Range`, conditionals,
/// the tool's own headers) belong to the data and go only to the data hops. The jar's
/// cookies and the hop's own credentials are added after.
pub const LOGIN_HOP_HEADERS: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-language",
    "accept-encoding",
    "cookie",
];

/// The User-Agent a login hop is sent with instead of a browser's: Earthdata Login's
/// clients (TEA) ask for a 401 challenge (`app_type=401`) only when the User-Agent does
/// not start with `Mozilla`; a browser's gets the interactive login page.
pub const LOGIN_USER_AGENT: &str = concat!("authproxy/", env!("CARGO_PKG_VERSION"));

/// Whether a client's User-Agent would make a login host answer with a browser page.
pub fn is_browser_agent(ua: &[u8]) -> bool {
    ua.starts_with(b"Mozilla")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::from_absolute(url.as_bytes()).unwrap()
    }

    #[test]
    fn browser_method_rules_and_relative_locations() {
        let from = t("http://data.example/dir/granule.nc?x=1");
        type Case<'a> = (u16, &'a str, Method, Option<(&'a str, Method, bool)>);
        let cases: &[Case] = &[
            (
                302,
                "https://urs.example/oauth/authorize?client_id=c",
                Method::GET,
                Some((
                    "https://urs.example/oauth/authorize?client_id=c",
                    Method::GET,
                    false,
                )),
            ),
            (
                303,
                "/s3/obj?X-Amz-Signature=s",
                Method::HEAD,
                Some((
                    "http://data.example/s3/obj?X-Amz-Signature=s",
                    Method::HEAD,
                    false,
                )),
            ),
            (
                303,
                "other.nc",
                Method::POST,
                Some(("http://data.example/dir/other.nc", Method::GET, true)),
            ),
            (
                301,
                "../up",
                Method::POST,
                Some(("http://data.example/up", Method::GET, true)),
            ),
            (
                307,
                "https://data.example:8443/p",
                Method::PUT,
                Some(("https://data.example:8443/p", Method::PUT, false)),
            ),
            (
                308,
                "//mirror.example/f",
                Method::GET,
                Some(("http://mirror.example/f", Method::GET, false)),
            ),
            (302, "ftp://x.example/f", Method::GET, None),
            (304, "/cached", Method::GET, None),
            (200, "/x", Method::GET, None),
        ];
        for (status, loc, method, want) in cases {
            let got = follow(&from, *status, loc.as_bytes(), method)
                .map(|f| (full_url(&f.next), f.method, f.drops_body));
            let want = want
                .as_ref()
                .map(|(u, m, d)| (u.to_string(), m.clone(), *d));
            assert_eq!(got, want, "{status} {loc}");
        }
    }

    #[test]
    fn login_hops_are_told_from_data() {
        for (url, login) in [
            ("https://urs.example/oauth/authorize?client_id=c&response_type=code&redirect_uri=x&state=s", true),
            ("https://urs.example/oauth/authorize/", true),
            ("https://login.example/authorize?client_id=c&redirect_uri=x", true),
            ("http://data.example/redirect?code=abc&state=%2Fgranule.nc", true),
            ("http://data.example/redirect?error=access_denied&state=s", true),
            ("http://data.example/granule.nc", false),
            ("http://data.example/granule.nc?code=3", false),
            ("https://bucket.example/k?X-Amz-Signature=s", false),
        ] {
            assert_eq!(is_login_hop(&t(url)), login, "{url}");
        }
        assert!(is_access_denied(&t(
            "http://d.example/cb?error=access_denied&state=s"
        )));
        assert!(!is_access_denied(&t("http://d.example/cb?code=1&state=s")));
    }

    #[test]
    fn browsers_are_recognised_by_their_user_agent() {
        assert!(is_browser_agent(b"Mozilla/5.0 (X11; Linux x86_64)"));
        assert!(!is_browser_agent(b"curl/7.88.1"));
        assert!(!is_browser_agent(LOGIN_USER_AGENT.as_bytes()));
    }
}
