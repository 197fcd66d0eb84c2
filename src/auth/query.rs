//! Query parameters a rule adds (API keys and the like), percent-encoded.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::rule::Value;

/// Everything but the unreserved characters of RFC 3986.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `path_and_query` with `params` appended. A parameter the client already sent is
/// left as the client sent it.
pub fn append(path_and_query: &str, params: &[(String, Value)]) -> String {
    let existing: Vec<&str> = path_and_query
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .map(|p| p.split_once('=').map_or(p, |(n, _)| n))
                .collect()
        })
        .unwrap_or_default();
    let mut out = path_and_query.to_owned();
    for (name, value) in params {
        let enc_name = utf8_percent_encode(name, COMPONENT).to_string();
        if existing.iter().any(|e| *e == enc_name || *e == name) {
            continue;
        }
        out.push(if out.contains('?') { '&' } else { '?' });
        out.push_str(&enc_name);
        out.push('=');
        out.extend(utf8_percent_encode(value.expose(), COMPONENT));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn appends_encoded_and_keeps_client_values() {
        let params = vec![
            (
                "apikey".to_owned(),
                Value::Secret(Secret::new("a+b/c=".to_owned())),
            ),
            ("format".to_owned(), Value::Plain("nc".to_owned())),
        ];
        assert_eq!(append("/d", &params), "/d?apikey=a%2Bb%2Fc%3D&format=nc");
        assert_eq!(
            append("/d?format=csv", &params),
            "/d?format=csv&apikey=a%2Bb%2Fc%3D"
        );
    }
}
