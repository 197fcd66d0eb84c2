//! A site's `query_token` key in the request's query (Handcar's `proxyname`).
//!
//! The key is exactly what its source gave (trimmed), percent-encoded once with the
//! query-component set, so that the service's one decode yields the issued bytes: a key
//! `A+B/C=%2BD` goes out as `A%2BB%2FC%3D%252BD`. Where the key comes from and how it is
//! kept fresh is [`crate::session::keys`]'s business.

use percent_encoding::{percent_decode_str, utf8_percent_encode};

use super::query::COMPONENT;

/// Whether the client's `path_and_query` already has a value for `param` (compared
/// percent-decoded): without `replace`, the client's value is used and no key is needed.
pub fn client_has(path_and_query: &str, param: &str) -> bool {
    path_and_query.split_once('?').is_some_and(|(_, q)| {
        q.split('&').any(|pair| {
            let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
            !pair.is_empty() && percent_decode_str(raw).decode_utf8_lossy() == param
        })
    })
}

/// `path_and_query` with `param=<key>` added, or `None` when it stays as it is: a value
/// of `param` that the client sent is kept, unless `replace`, which removes the client's
/// values first. Names are compared percent-decoded (`proxy%6Eame` is `proxyname`).
pub fn add(path_and_query: &str, param: &str, key: &str, replace: bool) -> Option<String> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let is_param = |pair: &&str| client_has(&format!("?{pair}"), param);
    let pairs: Vec<&str> = query
        .map(|q| q.split('&').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    if !replace && pairs.iter().any(is_param) {
        return None;
    }
    let mut out = path.to_owned();
    let mut sep = '?';
    for pair in pairs.iter().filter(|p| !is_param(p)) {
        out.push(sep);
        out.push_str(pair);
        sep = '&';
    }
    out.push(sep);
    out.extend(utf8_percent_encode(param, COMPONENT));
    out.push('=');
    out.extend(utf8_percent_encode(key, COMPONENT));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_encoded_once() {
        assert_eq!(
            add("/h/learning", "proxyname", "A+B/C=%2BD", false).unwrap(),
            "/h/learning?proxyname=A%2BB%2FC%3D%252BD"
        );
        let sent = add("/d?x=1", "proxyname", "A+B/C=%2BD", false).unwrap();
        assert_eq!(sent, "/d?x=1&proxyname=A%2BB%2FC%3D%252BD");
        let value = sent.rsplit_once('=').unwrap().1;
        assert_eq!(
            percent_decode_str(value).decode_utf8().unwrap(),
            "A+B/C=%2BD"
        );
    }

    #[test]
    fn the_clients_value_is_kept_unless_replace() {
        assert_eq!(add("/d?proxyname=mine&x=1", "proxyname", "K", false), None);
        assert_eq!(add("/d?proxy%6Eame=mine", "proxyname", "K", false), None);
        assert_eq!(
            add(
                "/d?proxyname=mine&x=1&proxyname=again",
                "proxyname",
                "K",
                true
            )
            .unwrap(),
            "/d?x=1&proxyname=K"
        );
        assert_eq!(
            add("/d?proxyname=mine", "proxyname", "K", true).unwrap(),
            "/d?proxyname=K"
        );
        // Another parameter that merely starts with the name is not the client's key.
        assert_eq!(
            add("/d?proxynames=a", "proxyname", "K", false).unwrap(),
            "/d?proxynames=a&proxyname=K"
        );
        assert_eq!(add("/d?", "p", "K", false).unwrap(), "/d?p=K");
    }
}
