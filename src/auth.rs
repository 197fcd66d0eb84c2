/*!
Auth methods: what a resolved rule adds to an upstream request.

Each method is a small unit ([`basic`], [`bearer`], [`handle`], [`query`]); [`apply`]
runs them in order for one request. Nothing here decides *which* rule applies (that is
the snapshot's job) or how to reach the host (the upstream module's).
Each method is a small unit ([`basic`], [`bearer`], [`query`]); [`apply`] runs them in
order for one request. A `query_token` key is added by [`query_token`] (the proxy gets
the key first: fetching it may wait). Nothing here decides *which* rule applies (that is the snapshot's
job) or how to reach the host (the upstream module's).
*/

pub mod basic;
pub mod bearer;
pub mod handle;
pub mod login;
pub mod query;
pub mod query_token;

use http::header;
use pingora::http::RequestHeader;

use crate::config::snapshot::Resolved;
use crate::target::{Scheme, Target};

/// Whether the client's own `Authorization` and `Cookie` may follow a redirect from `from`
/// to `to`: python-requests' `should_strip_auth`. They are dropped on a change of host, of
/// port or of scheme, except http → https on the default ports.
pub fn client_credentials_may_follow(from: &Target, to: &Target) -> bool {
    if from.host != to.host {
        return false;
    }
    if from.scheme == Scheme::Http
        && from.port == 80
        && to.scheme == Scheme::Https
        && to.port == 443
    {
        return true;
    }
    from.scheme == to.scheme && from.port == to.port
}

/// What [`apply`] did, for the log line and for tests of `explain`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub authorization: Option<&'static str>,
    pub headers: usize,
    pub query: usize,
}

/// Adds the rule's credentials, headers and query parameters to `req`, whose target is
/// `target` (after any TLS upgrade). `challenged`: the host answered this request with a
/// 401 Basic challenge, so a credential kept for challenges may answer it. Returns the new
/// path-and-query when parameters were added.
pub fn apply(
    resolved: &Resolved<'_>,
    target: &Target,
    req: &mut RequestHeader,
    challenged: bool,
) -> pingora::Result<(Applied, Option<String>)> {
    let mut applied = Applied::default();
    let presigned = bearer::is_presigned(&target.path_and_query);
    // A client that sends its own Authorization keeps it; a presigned URL carries its own.
    let may_authorize = !req.headers.contains_key(header::AUTHORIZATION) && !presigned;
    let configured_header = resolved
        .headers()
        .iter()
        .any(|(name, _)| name == header::AUTHORIZATION);
    if let Some(cred) = resolved.handle() {
        // A Handle Server site decides its Authorization alone: writes carry the handle
        // credential, reads go anonymous (no rc or .netrc password is added to them).
        let tls = target.scheme == Scheme::Https;
        if let Some((value, name)) = handle::authorization(cred, &req.method, tls)
            .filter(|_| may_authorize && !configured_header)
        {
            req.insert_header(header::AUTHORIZATION, value.expose())?;
            applied.authorization = Some(name);
            tracing::debug!(
                target: "authproxy::handle",
                method = %req.method, user = cred.username.as_deref().unwrap_or("-"), auth = name,
                "Handle Server credential added to a write request"
            );
        }
    } else if may_authorize && !configured_header {
        if let Some(token) = resolved.bearer() {
            req.insert_header(header::AUTHORIZATION, bearer::header(token.expose()))?;
            applied.authorization = Some("bearer");
        } else if let Some(cred) = resolved.basic() {
            req.insert_header(
                header::AUTHORIZATION,
                basic::header(cred.user, cred.password.expose()).expose(),
            )?;
            applied.authorization = Some("basic");
        } else if let Some(cred) = challenged
            .then(|| resolved.challenge_basic(target))
            .flatten()
        {
            req.insert_header(
                header::AUTHORIZATION,
                basic::header(cred.user, cred.password.expose()).expose(),
            )?;
            applied.authorization = Some("basic-on-challenge");
        }
    }
    for (name, value) in resolved.headers() {
        if name == header::AUTHORIZATION {
            if !may_authorize {
                continue;
            }
            applied.authorization = Some("header");
        }
        req.insert_header(name.clone(), value.expose())?;
        applied.headers += 1;
    }
    let params = resolved.query();
    // Extra parameters would break a presigned URL's signature.
    let new_pq = if params.is_empty() || presigned {
        None
    } else {
        applied.query = params.len();
        Some(query::append(&target.path_and_query, params))
    };
    Ok((applied, new_pq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(url: &str) -> Target {
        Target::from_absolute(url.as_bytes()).unwrap()
    }

    #[test]
    fn client_credentials_follow_only_within_one_origin_or_to_https_on_default_ports() {
        let cases = [
            ("http://h/a", "https://h/b", true),
            ("http://h:80/a", "https://h:443/b", true),
            ("http://h/a", "http://h/b", true),
            ("https://h:8443/a", "https://h:8443/b", true),
            ("http://h:8080/a", "https://h:8443/b", false),
            ("http://h/a", "https://h:8443/b", false),
            ("http://h:8080/a", "http://h:8081/b", false),
            ("https://h/a", "http://h/b", false),
            ("http://h/a", "https://other/b", false),
            ("http://h/a", "http://H.example/b", false),
        ];
        for (from, to, want) in cases {
            assert_eq!(
                client_credentials_may_follow(&t(from), &t(to)),
                want,
                "{from} -> {to}"
            );
        }
    }
}
