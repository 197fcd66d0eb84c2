/*!
The per-request phases of a proxied HTTP request, plugged into pingora's `ProxyHttp`.

`request_filter` parses the absolute-form target and takes the current snapshot;
`upstream_peer` resolves the host without blocking and picks the next address;
`upstream_request_filter` turns the request into origin-form with the URL's Host;
`fail_to_proxy` answers failures with a [`Failure`]; `logging` writes the one line per
request. Bodies stream through pingora untouched.
*/

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::config::{Snapshot, SnapshotHandle};
use crate::failure::{Failure, ERROR_HEADER};
use crate::redact;
use crate::resolve;
use crate::target::{Scheme, Target, TargetError};

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

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
    snapshot: Option<Arc<Snapshot>>,
    target: Option<Target>,
    addrs: Vec<SocketAddr>,
    next_addr: usize,
    /// A failure classified by our own code, preferred over pingora's error kind.
    failure: Option<Failure>,
    /// The code of the failure answered, for the log line.
    error_code: Option<&'static str>,
}

impl RequestCtx {
    fn target(&self) -> Result<&Target> {
        self.target
            .as_ref()
            .ok_or_else(|| Error::explain(InternalError, "no target"))
    }

    fn fail(&mut self, failure: Failure) -> Box<Error> {
        let e = Error::explain(ErrorType::Custom("authproxy"), failure.code);
        self.failure = Some(failure);
        e
    }
}

#[async_trait]
impl ProxyHttp for Forwarder {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            snapshot: None,
            target: None,
            addrs: Vec::new(),
            next_addr: 0,
            failure: None,
            error_code: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        match Target::from_absolute(session.req_header().raw_path()) {
            Ok(target) => {
                ctx.target = Some(target);
                ctx.snapshot = Some(self.snapshots.load_full());
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
        if ctx.addrs.is_empty() {
            let target = ctx.target()?;
            match resolve::resolve(&target.host, target.port).await {
                Ok(addrs) => ctx.addrs = addrs,
                Err(e) => {
                    let f = Failure::dns(&target.host, &e);
                    return Err(ctx.fail(f));
                }
            }
        }
        let target = ctx.target()?;
        let addr = ctx.addrs[ctx.next_addr.min(ctx.addrs.len() - 1)];
        let tls = target.scheme == Scheme::Https;
        let mut peer = HttpPeer::new(addr, tls, target.host.clone());
        let timeouts = ctx
            .snapshot
            .as_ref()
            .map(|s| s.timeouts)
            .unwrap_or_default();
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(timeouts.read);
        peer.options.write_timeout = Some(timeouts.read);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE);
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
        upstream: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let target = ctx.target()?;
        upstream.set_raw_path(target.path_and_query.as_bytes())?;
        upstream.insert_header(header::HOST, target.host_header())?;
        // pingora strips the standard hop-by-hop headers; these two are proxy-specific.
        upstream.remove_header("proxy-connection");
        upstream.remove_header(&header::PROXY_AUTHORIZATION);
        Ok(())
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
        match &ctx.target {
            Some(t) => format!(
                "{} {}://{}{}",
                req.method,
                t.scheme.as_str(),
                t.host_header(),
                redact::path_and_query(&t.path_and_query)
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
        let timeouts = ctx
            .snapshot
            .as_ref()
            .map(|s| s.timeouts)
            .unwrap_or_default();
        let failure = ctx
            .failure
            .take()
            .or_else(|| Failure::from_pingora(e, ctx.target.as_ref(), &timeouts));
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
        let method = &session.req_header().method;
        let elapsed = ctx.started.elapsed();
        let (host, path) = match &ctx.target {
            Some(t) => (t.host_header(), redact::path_and_query(&t.path_and_query)),
            None => (String::new(), "-".into()),
        };
        let bytes = session.body_bytes_sent();
        match (ctx.error_code, e) {
            (Some(code), _) => tracing::warn!(
                target: "authproxy::access",
                %method, %host, %path, status, bytes, ms = elapsed.as_micros() as f64 / 1e3, error = code,
                "request failed"
            ),
            (None, Some(e)) => tracing::warn!(
                target: "authproxy::access",
                %method, %host, %path, status, bytes, ms = elapsed.as_micros() as f64 / 1e3,
                error = e.etype().as_str(),
                "request aborted"
            ),
            (None, None) => tracing::info!(
                target: "authproxy::access",
                %method, %host, %path, status, bytes, ms = elapsed.as_micros() as f64 / 1e3,
                "request"
            ),
        }
    }
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
