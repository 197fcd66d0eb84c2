//! HTTP Basic (RFC 7617): `Authorization: Basic base64(user:password)`.

use base64::Engine;

use crate::secret::Secret;

/// The whole header value.
pub fn header(user: &str, password: &str) -> Secret<String> {
    let raw = format!("{user}:{password}");
    Secret::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc7617_example() {
        assert_eq!(
            super::header("Aladdin", "open sesame").expose(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
