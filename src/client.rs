/*!
The side client: requests the daemon makes on its own account, not a client's.

Login POSTs to a certificate-plus-login servlet, their logouts at shutdown, and key
fetches (`query_token.from_url`) are small request/response exchanges that no proxied
request carries. They must still look exactly like a proxied request to the same URL:
the same rules (client certificate, CA, verification, TLS upgrade), the same upstream
proxy (absolute-form for http, `CONNECT` for https), the same timeouts, the same cookie
jar, and the same explained [`Failure`]s when they go wrong. So this module resolves the
URL against the [`Snapshot`] as [`crate::proxy`] does, builds the pingora peer with
[`crate::upstream::peer`], and speaks HTTP/1.1 over pingora's own connector: one TLS
stack for both paths.

It buffers the whole response (at most [`BODY_LIMIT`]): these answers are a session
cookie, a status or a key, never data. It follows no redirect (the caller sees the 3xx).
Connections are not pooled: side requests are rare, and a pooled connection would
outlive the runtime that made it in tests. Nothing secret is logged: the URL is logged
with its query masked, never a header or a body.
*/

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;

use crate::auth::basic;
use crate::config::snapshot::Resolved;
use crate::config::Snapshot;
use crate::failure::{Failure, Timeouts};
use crate::redact;
use crate::redirect;
use crate::resolve;
use crate::rule::UpstreamProxy;
use crate::session::{Jar, State};
use crate::target::{Scheme, Target};
use crate::upstream;

/// The most of a response body the side client reads: a login answer or a key is
/// small; anything larger is a misconfigured URL.
pub const BODY_LIMIT: usize = 1024 * 1024;

/// One request the daemon makes for itself. Its `Debug` shows header names only.
#[derive(Clone)]
pub struct SideRequest {
    pub method: Method,
    pub url: url::Url,
    /// Extra headers (never logged). `Host`, `Content-Length` and the jar's cookies are
    /// added here; a `Cookie` given is merged with the jar's, the given pairs winning.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Send the rule's Basic credential: the preemptive one (YAML `basic`, a scoped rc
    /// line), else, if the host answers 401 with a Basic challenge, the one kept for
    /// challenges (an exact `.netrc` entry over verified TLS), once.
    pub basic: bool,
}

impl SideRequest {
    /// A `GET` of `url` with no extra headers and no credential beyond the TLS identity.
    pub fn get(url: url::Url) -> SideRequest {
        SideRequest {
            method: Method::GET,
            url,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            basic: false,
        }
    }

    /// A `POST` of `body` to `url`.
    pub fn post(url: url::Url, body: Bytes) -> SideRequest {
        SideRequest {
            method: Method::POST,
            body,
            ..SideRequest::get(url)
        }
    }
}

/// The whole answer to a [`SideRequest`]. Its `Debug` shows header names only.
#[derive(Clone)]
pub struct SideResponse {
    pub status: StatusCode,
    /// As received, `Set-Cookie` included (its cookies are already in the jar).
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for SideRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideRequest")
            .field("method", &self.method)
            .field("url", &self.url.origin().ascii_serialization())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .field("basic", &self.basic)
            .finish()
    }
}

impl std::fmt::Debug for SideResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Sends `req` as a proxied request to its URL would go, and reads the whole answer.
///
/// The answer's cookies go to `state.jar`; the jar's cookies for the URL go with the
/// request. Any HTTP status is an `Ok`: what a 401 or a 500 means is the caller's
/// business. `Err` is a failure to get an answer at all, with the codes a proxied
/// request would get (`connect_refused`, `tls_untrusted`, `upstream_timeout`, ...).
pub async fn send(
    snapshot: &Snapshot,
    state: &State,
    req: SideRequest,
) -> Result<SideResponse, Failure> {
    let asked = Target::from_absolute(req.url.as_str().as_bytes())
        .map_err(|_| Failure::bad_target("the side request's URL is not http(s)"))?;
    let resolved = snapshot.resolve(&asked);
    let target = resolved
        .upstream_target(&asked)
        .unwrap_or_else(|| asked.clone());
    if target.scheme == Scheme::Https {
        if let Some(reason) = resolved.tls_unusable() {
            return Err(Failure::tls_unusable(&target.authority(), reason));
        }
    }
    let log_url = redact::LogUrl(&target, &snapshot.secret_query_names).to_string();
    let preemptive = req.basic.then(|| resolved.basic()).flatten();
    let mut authorization = if req.headers.contains_key(header::AUTHORIZATION) {
        None
    } else {
        preemptive.map(|b| basic::header(b.user, b.password.expose()))
    };
    let mut challenged = false;
    loop {
        let resp = exchange(&resolved, state, &target, &req, authorization.as_ref()).await;
        let resp = match resp {
            Ok(r) => r,
            Err(f) => {
                tracing::debug!(method = %req.method, url = %log_url, error = f.code, "side request failed");
                return Err(f);
            }
        };
        tracing::debug!(method = %req.method, url = %log_url, status = resp.status.as_u16(), "side request");
        let answer = resp.status == StatusCode::UNAUTHORIZED
            && req.basic
            && !challenged
            && authorization.is_none()
            && !req.headers.contains_key(header::AUTHORIZATION)
            && offers_basic(&resp.headers);
        if answer {
            if let Some(b) = resolved.challenge_basic(&target) {
                challenged = true;
                authorization = Some(basic::header(b.user, b.password.expose()));
                continue;
            }
        }
        return Ok(resp);
    }
}

/// One request and its answer, trying each resolved address in turn for the connection.
async fn exchange(
    resolved: &Resolved<'_>,
    state: &State,
    target: &Target,
    req: &SideRequest,
    authorization: Option<&crate::secret::Secret<String>>,
) -> Result<SideResponse, Failure> {
    let via = resolved.proxy(&target.host).cloned();
    let timeouts = resolved.timeouts();
    let has_identity = resolved.identity().is_some();
    let addrs = addresses(target, via.as_deref()).await?;
    // Per-read timeouts bound each step; this bounds a server that trickles.
    let whole = timeouts.connect * addrs.len() as u32 + timeouts.read * 2;
    let work = async {
        let mut session = connect(resolved, target, &addrs, via.as_ref(), timeouts).await?;
        let header = request_header(state, target, req, authorization, via.as_deref())
            .map_err(|_| Failure::internal())?;
        let classify = |e: Box<pingora::Error>| classify(e, target, &timeouts, has_identity);
        session.read_timeout = Some(timeouts.read);
        session.write_timeout = Some(timeouts.read);
        session
            .write_request_header(Box::new(header))
            .await
            .map_err(classify)?;
        if !req.body.is_empty() {
            session.write_body(&req.body).await.map_err(classify)?;
        }
        session.finish_body().await.map_err(classify)?;
        let head = loop {
            session.read_response().await.map_err(classify)?;
            let head = session
                .resp_header()
                .ok_or_else(|| Failure::bad_upstream_response(&target.authority()))?;
            // 100 Continue and other interim answers precede the real one.
            if !head.status.is_informational() {
                break head.clone();
            }
        };
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_body_bytes().await.map_err(classify)? {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(too_large(target));
            }
            body.extend_from_slice(&chunk);
        }
        session.shutdown().await;
        Ok(SideResponse {
            status: head.status,
            headers: head.headers.clone(),
            body: body.freeze(),
        })
    };
    let resp = match tokio::time::timeout(whole, work).await {
        Ok(r) => r?,
        Err(_) => return Err(Failure::upstream_timeout(&target.authority(), Some(whole))),
    };
    if resp.headers.contains_key(header::SET_COOKIE) {
        if let Ok(url) = url::Url::parse(&redirect::full_url(target)) {
            let values = resp.headers.get_all(header::SET_COOKIE);
            state
                .jar
                .store(&url, values.iter().filter_map(|v| v.to_str().ok()));
        }
    }
    Ok(resp)
}

/// Every address to try: the upstream proxy's when there is one, else the target's.
async fn addresses(
    target: &Target,
    via: Option<&UpstreamProxy>,
) -> Result<Vec<SocketAddr>, Failure> {
    let (host, port) = match via {
        Some(p) => (p.host.as_str(), p.port),
        None => (target.host.as_str(), target.port),
    };
    resolve::resolve(host, port).await.map_err(|e| match via {
        Some(p) => Failure::proxy_unreachable(&p.authority(), &e),
        None => Failure::dns(host, &e),
    })
}

/// A fresh HTTP/1.1 session to the first address that takes the connection (TCP, the
/// proxy's `CONNECT`, TLS with the rule's identity), as the proxy path tries them.
async fn connect(
    resolved: &Resolved<'_>,
    target: &Target,
    addrs: &[SocketAddr],
    via: Option<&Arc<UpstreamProxy>>,
    timeouts: Timeouts,
) -> Result<HttpSession, Failure> {
    let has_identity = resolved.identity().is_some();
    let mut last = None;
    for &addr in addrs {
        let mut peer = upstream::peer(target, addr, resolved, via, timeouts);
        if via.is_some() && target.scheme == Scheme::Https {
            peer.options.custom_l4 = Some(Arc::new(upstream::ConnectVia::new(
                addr,
                target.authority(),
                via.map(|v| v.as_ref()),
                timeouts.connect,
            )));
        }
        match connector().get_http_session(&peer).await {
            Ok((session, _reused)) => return Ok(session),
            Err(e) => last = Some(classify(e, target, &timeouts, has_identity)),
        }
    }
    Err(last.unwrap_or_else(|| Failure::connect_refused(&target.authority())))
}

/// The request head: origin-form (absolute-form towards an http upstream proxy), the
/// URL's Host, the given headers, the jar's cookies and the credential.
fn request_header(
    state: &State,
    target: &Target,
    req: &SideRequest,
    authorization: Option<&crate::secret::Secret<String>>,
    via: Option<&UpstreamProxy>,
) -> pingora::Result<RequestHeader> {
    let absolute = via.is_some() && target.scheme == Scheme::Http;
    let path = if absolute {
        redirect::full_url(target)
    } else {
        target.path_and_query.clone()
    };
    let mut head = RequestHeader::build(req.method.clone(), path.as_bytes(), None)?;
    head.insert_header(header::HOST, target.host_header())?;
    for (name, value) in &req.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH && name != header::COOKIE {
            head.append_header(name.clone(), value.clone())?;
        }
    }
    if !req.headers.contains_key(header::USER_AGENT) {
        head.insert_header(
            header::USER_AGENT,
            concat!("authproxy/", env!("CARGO_PKG_VERSION")),
        )?;
    }
    if let Some(a) = authorization {
        head.insert_header(header::AUTHORIZATION, a.expose().as_str())?;
    }
    let given = req
        .headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok());
    let jar = url::Url::parse(&redirect::full_url(target))
        .ok()
        .and_then(|u| state.jar.cookie_header(&u));
    if let Some(c) = Jar::merge(given, jar) {
        head.insert_header(header::COOKIE, c)?;
    }
    if absolute {
        if let Some(a) = via.and_then(|v| v.authorization.as_ref()) {
            head.insert_header(header::PROXY_AUTHORIZATION, a.expose().as_str())?;
        }
    }
    let sends_body =
        !req.body.is_empty() || matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    if sends_body {
        head.insert_header(header::CONTENT_LENGTH, req.body.len())?;
    }
    // One exchange per connection: nothing is pooled (see the module's comment).
    head.insert_header(header::CONNECTION, HeaderValue::from_static("close"))?;
    Ok(head)
}

/// The one connector of every side request. Built once: it reads the system's roots.
fn connector() -> &'static Connector {
    static CONNECTOR: OnceLock<Connector> = OnceLock::new();
    CONNECTOR.get_or_init(|| Connector::new(None))
}

/// The failure a client would see for the same pingora error on a proxied request.
fn classify(
    e: Box<pingora::Error>,
    target: &Target,
    timeouts: &Timeouts,
    has_identity: bool,
) -> Failure {
    if let Some(f) = Failure::carried(&e) {
        return f.clone();
    }
    let e = e.into_up();
    Failure::from_pingora(&e, Some(target), timeouts, has_identity)
        .unwrap_or_else(Failure::internal)
}

/// A body beyond [`BODY_LIMIT`].
fn too_large(target: &Target) -> Failure {
    Failure::new(
        502,
        "side_response_too_large",
        format!(
            "{} answered authproxy's own request with more than {} KiB; a login or key \
             URL answers with a few bytes. Check the URL in the configuration.",
            target.authority(),
            BODY_LIMIT / 1024
        ),
    )
}

/// Whether a 401 offers HTTP Basic among its challenges.
fn offers_basic(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|c| {
            c.trim_start()
                .split([' ', '\t'])
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("basic"))
        })
}
