/*!
Auth methods: what a resolved rule adds to an upstream request.

Each method is a small unit ([`basic`], [`bearer`], [`query`]); [`apply`] runs them in
order for one request. Nothing here decides *which* rule applies (that is the snapshot's
job) or how to reach the host (the upstream module's).
*/

pub mod basic;
pub mod bearer;
pub mod query;

use http::header;
use pingora::http::RequestHeader;

use crate::config::snapshot::Resolved;
use crate::target::{Scheme, Target};

/// What [`apply`] did, for the log line and for tests of `explain`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub authorization: Option<&'static str>,
    pub headers: usize,
    pub query: usize,
}

/// Adds the rule's credentials, headers and query parameters to `req`, whose target is
/// `target` (after any TLS upgrade). Returns the new path-and-query when parameters were
/// added.
pub fn apply(
    resolved: &Resolved<'_>,
    target: &Target,
    req: &mut RequestHeader,
) -> pingora::Result<(Applied, Option<String>)> {
    let mut applied = Applied::default();
    let presigned = bearer::is_presigned(&target.path_and_query);
    // A client that sends its own Authorization keeps it.
    if !req.headers.contains_key(header::AUTHORIZATION) && !presigned {
        let upstream_tls = target.scheme == Scheme::Https;
        if let Some(token) = resolved.bearer() {
            req.insert_header(header::AUTHORIZATION, bearer::header(token.expose()))?;
            applied.authorization = Some("bearer");
        } else if let Some(cred) = resolved.basic(upstream_tls) {
            req.insert_header(
                header::AUTHORIZATION,
                basic::header(cred.user, cred.password.expose()).expose(),
            )?;
            applied.authorization = Some("basic");
        }
    }
    for (name, value) in resolved.headers() {
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
