/*!
The per-request phases of a proxied HTTP request, plugged into pingora's `ProxyHttp`.

`request_filter` parses the absolute-form target and takes the current snapshot;
`upstream_peer` applies the resolved rules (TLS upgrade, upstream proxy, client
certificate) and resolves the host without blocking; `upstream_request_filter` turns the
request into origin-form (absolute-form towards an upstream proxy) with the URL's Host
and adds the rule's credentials; `upstream_response_filter` follows a same-host
http → https redirect inside; `fail_to_proxy` answers failures with a [`Failure`];
`logging` writes the one line per request. Bodies stream through pingora untouched.
*/

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::auth;
use crate::config::SnapshotHandle;
use crate::failure::{Failure, ERROR_HEADER};
use crate::policy::HopPolicy;
use crate::redact;
use crate::resolve;
use crate::rule::UpstreamProxy;
use crate::target::{Scheme, Target, TargetError};
use crate::upstream;

/// The error type that makes pingora retry with the next hop of a redirect.
const FOLLOW: ErrorType = ErrorType::Custom("follow_redirect");

/// The proxy's request logic. One per daemon; all state per request lives in [`RequestCtx`].
pub struct Forwarder {
    snapshots: SnapshotHandle,
}

impl Forwarder {
    pub fn new(snapshots: SnapshotHandle) -> Self {
        Self { snapshots }
    }
}

/// State of one request, from its header to its log line.
pub struct RequestCtx {
    started: Instant,
    /// The current hop's rules and target, resolved once per hop (`None` until the
    /// request target parsed).
    policy: Option<HopPolicy>,
    via: Option<Arc<UpstreamProxy>>,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    redirects: u8,
    /// The code of the failure answered, for the log line.
    error_code: Option<&'static str>,
    /// What authorization this hop's request carried, for the log line.
    auth: Option<&'static str>,
    /// This hop answered 401 with a Basic challenge, and the request is being sent again
    /// with the credential kept for challenges.
    challenged: bool,
    /// A redirect left the client's origin: its own `Authorization` and `Cookie` stay
    /// behind from then on.
    strip_client_credentials: bool,
}

impl RequestCtx {
    fn policy(&self) -> Result<&HopPolicy> {
        match &self.policy {
            Some(p) => Ok(p),
            None => Error::e_explain(InternalError, "request context incomplete"),
        }
    }

    /// The configured secret query names, for log lines.
    fn secret_names(&self) -> &[String] {
        self.policy
            .as_ref()
            .map_or(&[][..], |p| &p.snapshot().secret_query_names)
    }
}

#[async_trait]
impl ProxyHttp for Forwarder {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            policy: None,
            via: None,
            addrs: Vec::new(),
            next_addr: 0,
            redirects: 0,
            error_code: None,
            auth: None,
            challenged: false,
            strip_client_credentials: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        match Target::from_absolute(session.req_header().raw_path()) {
            Ok(target) => {
                ctx.policy = Some(HopPolicy::new(self.snapshots.load_full(), target));
                Ok(false)
            }
            Err(e) => {
                let failure = match e {
                    TargetError::OriginForm => Failure::not_a_proxy_request(),
                    TargetError::UnsupportedScheme => Failure::bad_target("unsupported URL scheme"),
                    TargetError::Malformed => Failure::bad_target("malformed URL"),
                };
                respond(session, &failure).await?;
                ctx.error_code = Some(failure.code);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.policy()?;
        // Disjoint borrows: the hop's policy is read while the address list changes.
        let RequestCtx {
            policy,
            addrs,
            next_addr,
            via: ctx_via,
            ..
        } = ctx;
        let policy = policy.as_ref().expect("checked above");
        let resolved = policy.rules();
        let target = &policy.upstream;
        if target.scheme == Scheme::Https {
            if let Some(reason) = resolved.tls_unusable() {
                let f = Failure::tls_unusable(&target.authority(), reason);
                return Err(f.into_error());
            }
        }
        let via = resolved.proxy(&target.host).cloned();
        let timeouts = resolved.timeouts();
        if addrs.is_empty() {
            let (host, port) = match &via {
                Some(p) => (p.host.as_str(), p.port),
                None => (target.host.as_str(), target.port),
            };
            match resolve::resolve(host, port).await {
                Ok(found) => *addrs = found,
                Err(e) => {
                    let f = match &via {
                        Some(p) => Failure::proxy_unreachable(&p.authority(), &e),
                        None => Failure::dns(host, &e),
                    };
                    return Err(f.into_error());
                }
            }
        }
        let addr = addrs[(*next_addr).min(addrs.len() - 1)];
        let mut peer = upstream::peer(target, addr, &resolved, via.as_ref(), timeouts);
        if via.is_some() && target.scheme == Scheme::Https {
            peer.options.custom_l4 = Some(Arc::new(upstream::ConnectVia::new(
                addr,
                target.authority(),
                via.as_deref(),
                timeouts.connect,
            )));
        }
        *ctx_via = via;
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Try the next resolved address, as curl does.
        if ctx.next_addr + 1 < ctx.addrs.len() {
            ctx.next_addr += 1;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let policy = ctx.policy()?;
        let resolved = policy.rules();
        let target = &policy.upstream;
        // pingora strips the standard hop-by-hop headers; these two are proxy-specific.
        req.remove_header("proxy-connection");
        req.remove_header(&header::PROXY_AUTHORIZATION);
        if ctx.strip_client_credentials {
            req.remove_header(&header::AUTHORIZATION);
            req.remove_header(&header::COOKIE);
        }
        let (applied, new_pq) = auth::apply(&resolved, target, req, ctx.challenged)?;
        let pq = new_pq.as_deref().unwrap_or(&target.path_and_query);
        match &ctx.via {
            Some(proxy) if target.scheme == Scheme::Http => {
                // Absolute-form towards the upstream proxy.
                let url = format!("http://{}{}", target.host_header(), pq);
                req.set_raw_path(url.as_bytes())?;
                if let Some(a) = &proxy.authorization {
                    req.insert_header(header::PROXY_AUTHORIZATION, a.expose().as_str())?;
                }
            }
            _ => req.set_raw_path(pq.as_bytes())?,
        }
        req.insert_header(header::HOST, target.host_header())?;
        ctx.auth = applied.authorization;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let policy = ctx.policy()?;
        let (hop, target) = (&policy.hop, &policy.upstream);
        if response.status.as_u16() == 407 && target.scheme == Scheme::Http {
            // The upstream proxy refused our credentials; a 407 passed on would ask
            // the client for credentials to authproxy itself.
            if let Some(via) = ctx.via.clone() {
                let f = Failure::proxy_refused(&via.authority(), &target.authority(), Some(407));
                return Err(f.into_error());
            }
        }
        let replayable = !session.as_ref().retry_buffer_truncated();
        let answer_challenge = response.status.as_u16() == 401
            && !ctx.challenged
            && replayable
            && ctx.auth.is_none()
            && (ctx.strip_client_credentials
                || !session
                    .req_header()
                    .headers
                    .contains_key(header::AUTHORIZATION))
            && is_basic_challenge(response)
            && policy.rules().challenge_basic(target).is_some();
        if answer_challenge {
            // Answer the host's own challenge with the credential kept for it: the same
            // request, once more, with Basic.
            ctx.challenged = true;
            ctx.auth = None;
            let mut e = Error::explain(FOLLOW, "answering a 401 Basic challenge");
            e.set_retry(true);
            return Err(e);
        }
        let max = policy.snapshot().max_hops;
        let method = &session.req_header().method;
        if let Some(next) = same_host_https_redirect(hop, response, method) {
            if ctx.redirects < max && replayable {
                let strip = !auth::client_credentials_may_follow(hop, &next);
                let next = policy.next(next);
                ctx.strip_client_credentials |= strip;
                ctx.redirects += 1;
                // Each hop logs and earns its own authorization.
                ctx.auth = None;
                ctx.challenged = false;
                ctx.policy = Some(next);
                ctx.addrs.clear();
                ctx.next_addr = 0;
                let mut e = Error::explain(FOLLOW, "same-host redirect to https");
                e.set_retry(true);
                return Err(e);
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.etype() == &FOLLOW {
            return e;
        }
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        error: &Error,
        _context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        error.etype() == &FOLLOW
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.remove_header("proxy-connection");
        response.remove_header(&header::PROXY_AUTHENTICATE);
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // `logging` writes one redacted line per request, failures included.
        true
    }

    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        match &ctx.policy {
            Some(p) => format!(
                "{} {}",
                req.method,
                redact::LogUrl(&p.hop, ctx.secret_names())
            ),
            None => format!("{} <unparsed target>", req.method),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (timeouts, has_identity) = match &ctx.policy {
            Some(p) => {
                let rules = p.rules();
                (rules.timeouts(), rules.identity().is_some())
            }
            None => Default::default(),
        };
        let upstream = ctx.policy.as_ref().map(|p| &p.upstream);
        let failure = Failure::carried(e)
            .cloned()
            .or_else(|| Failure::from_pingora(e, upstream, &timeouts, has_identity));
        let Some(failure) = failure else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        ctx.error_code = Some(failure.code);
        if session.response_written().is_some() {
            // Too late for an error response: the header went out, the connection closes.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let code = match respond(session, &failure).await {
            Ok(()) => failure.status,
            Err(_) => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let method = session.req_header().method.as_str();
        let ms = ctx.started.elapsed().as_micros() as f64 / 1e3;
        let url = ctx
            .policy
            .as_ref()
            .map(|p| redact::LogUrl(&p.hop, ctx.secret_names()));
        let url =
            tracing::field::display(url.as_ref().map_or(&"-" as &dyn std::fmt::Display, |u| {
                u as &dyn std::fmt::Display
            }));
        let bytes = session.body_bytes_sent();
        let auth = ctx.auth.unwrap_or("-");
        match (ctx.error_code, e) {
            (Some(code), _) => tracing::warn!(
                target: "authproxy::access",
                method, url, status, bytes, ms, auth, error = code,
                "request failed"
            ),
            (None, Some(e)) => tracing::warn!(
                target: "authproxy::access",
                method, url, status, bytes, ms, auth, error = e.etype().as_str(),
                "request aborted"
            ),
            (None, None) => tracing::info!(
                target: "authproxy::access",
                method, url, status, bytes, ms, auth,
                "request"
            ),
        }
    }
}

/// The next hop when `response` redirects `hop` from http to https on the same host
/// and the request can be replayed as it is: 307 and 308 keep the method and body;
/// 301 and 302 are followed for GET and HEAD only (browsers turn a POST into a GET
/// there, and 303 always means GET), so those go back to the client.
fn same_host_https_redirect(
    hop: &Target,
    response: &ResponseHeader,
    method: &http::Method,
) -> Option<Target> {
    let replayable = match response.status.as_u16() {
        307 | 308 => true,
        301 | 302 => method == http::Method::GET || method == http::Method::HEAD,
        _ => false,
    };
    if hop.scheme != Scheme::Http || !replayable {
        return None;
    }
    let location = response.headers.get(header::LOCATION)?;
    let next = Target::from_absolute(location.as_bytes()).ok()?;
    (next.scheme == Scheme::Https && next.host == hop.host).then_some(next)
}

/// Whether a 401 offers HTTP Basic among its `WWW-Authenticate` challenges.
fn is_basic_challenge(response: &ResponseHeader) -> bool {
    response
        .headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|challenge| {
            let scheme = challenge
                .trim_start()
                .split([' ', '\t'])
                .next()
                .unwrap_or("");
            scheme.eq_ignore_ascii_case("basic")
        })
}

/// Writes `failure` as the whole response.
async fn respond(session: &mut Session, failure: &Failure) -> Result<()> {
    let body = Bytes::from(failure.body());
    let mut resp = ResponseHeader::build(failure.status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(ERROR_HEADER, failure.code)?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    session.finish_body().await?;
    Ok(())
}
