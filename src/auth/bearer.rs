//! Bearer tokens (RFC 6750), e.g. NASA Earthdata Login user tokens.
//!
//! A token is never added to a presigned URL: such a URL carries its own signature in
//! the query, and object stores refuse (or worse, log) a second credential.

/// The whole header value.
pub fn header(token: &str) -> String {
    format!("Bearer {}", token.trim())
}

/// Query parameters that mark a presigned URL (S3 SigV4 and SigV2, Google Cloud
/// Storage, Azure SAS, CloudFront).
const SIGNATURE_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "awsaccesskeyid",
    "x-goog-signature",
    "x-goog-credential",
    "googleaccessid",
    "sig",
    "signature",
];

/// Whether the query of `path_and_query` carries a signature. Names are compared
/// percent-decoded, as the object store reads them: `X%2DAmz%2DSignature` is
/// `X-Amz-Signature`.
pub fn is_presigned(path_and_query: &str) -> bool {
    let Some((_, query)) = path_and_query.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let raw = pair.split_once('=').map_or(pair, |(n, _)| n);
        let name = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
        SIGNATURE_PARAMS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_are_recognised() {
        assert!(is_presigned("/b/k?X-Amz-Algorithm=AWS4&X-Amz-Signature=ab"));
        assert!(is_presigned("/b/k?AWSAccessKeyId=A&Expires=1&Signature=x"));
        assert!(is_presigned("/c/b?sv=2020&sig=abc"));
        assert!(!is_presigned("/data/file.nc"));
        assert!(!is_presigned("/data?signed=1"));
    }

    #[test]
    fn percent_encoded_signature_names_are_recognised() {
        assert!(is_presigned("/b/k?X%2DAmz%2DSignature=ab"));
        assert!(is_presigned("/b/k?a=1&x%2damz%2dcredential=c"));
        assert!(is_presigned("/c/b?%73ig=abc"));
        assert!(is_presigned("/b/k?AWSAccessKey%49d=A"));
        // Decoding does not invent names: a stray `%` or an encoded `=` stays harmless.
        assert!(!is_presigned("/d?x%2Damz%2Dsig=1&%=2&sig%3D=3"));
    }

    #[test]
    fn header_trims_the_file_newline() {
        assert_eq!(header("tok\n"), "Bearer tok");
    }
}
