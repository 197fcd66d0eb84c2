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
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::access;
use crate::auth;
use crate::config::SnapshotHandle;
use crate::failure::{Failure, ERROR_HEADER};
use crate::metrics::{self, LoginOutcome};
use crate::policy::HopPolicy;
use crate::redact;
use crate::redirect;
use crate::resolve;
use crate::rule::UpstreamProxy;
use crate::secret::Secret;
use crate::session::{logins, Jar, LoginGuard, State, Turn};
use crate::target::{Scheme, Target, TargetError};
use crate::upstream;

/// The error type that makes pingora retry with the next hop of a redirect.
const FOLLOW: ErrorType = ErrorType::Custom("follow_redirect");

/// How long a request waits for another request's login at the same data server.
const LOGIN_WAIT: Duration = Duration::from_secs(60);

/// The proxy's request logic. One per daemon; all state per request lives in
/// [`RequestCtx`], and what outlives a snapshot (the cookie jar, logins in flight) in
/// [`State`].
pub struct Forwarder {
    snapshots: SnapshotHandle,
    state: Arc<State>,
}

impl Forwarder {
    pub fn new(snapshots: SnapshotHandle, state: Arc<State>) -> Self {
        Self { snapshots, state }
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
    /// The method the data is asked for with: the client's, or what a 303 made of it.
    data_method: Option<http::Method>,
    /// The current hop belongs to a login: a plain `GET` without the data's headers.
    login_hop: bool,
    /// The URL of every hop so far (with their queries: never log them), to end loops.
    visited: Vec<String>,
    /// The authority of every hop so far, for messages.
    hosts: Vec<String>,
    /// The request came back to its own URL after a login.
    returned: bool,
    /// This request waited for another's login once (it leads the next one itself).
    waited: bool,
    /// This request runs the login at its data server; the requests waiting for it go
    /// when this is dropped.
    login: Option<LoginGuard>,
    /// The last login hop (an authorize URL): what a person opens when the login needs
    /// a browser.
    login_url: Option<Target>,
    /// A login host's 403 with a JSON body is being read, to name its `resolution_url`
    /// in the answer that replaces it.
    needs_browser: Option<NeedsBrowser>,
    /// A Handle Server's 401 or 403 being passed to the client, its JSON body copied
    /// aside to log the likely cause of its `responseCode`.
    handle_refusal: Option<HandleRefusal>,
    /// The generation of the servlet session this hop is sent under (YAML `login`).
    servlet: Option<u64>,
    /// The servlet said the session was over once already: the request was replayed
    /// after a fresh login, and a second refusal is explained.
    servlet_replayed: bool,
    /// The key this hop's `query_token` adds, fetched in `upstream_peer`.
    query_key: Option<Secret<String>>,
    /// When the current hop's peer was chosen: a new connection's latency runs from here.
    connecting: Option<Instant>,
    /// When the request's upstream connection was ready, until its first response
    /// header is counted.
    awaiting_first_byte: Option<Instant>,
    /// The first response header was counted: later hops (redirects, logins) are not.
    first_byte_done: bool,
    /// A login this request runs, by its site label, until it comes back to the data
    /// (counted `ok`) or the request ends (counted by its failure).
    login_site: Option<String>,
}

/// A Handle Server refusal on its way to the client, unchanged.
struct HandleRefusal {
    host: String,
    status: u16,
    body: Vec<u8>,
}

/// A login host's refusal being turned into a `login_needs_browser` answer.
struct NeedsBrowser {
    host: String,
    /// The URL to name when the body has no `resolution_url`.
    fallback: String,
    body: Vec<u8>,
}

/// At most this much of a login host's refusal is read for its `resolution_url`.
const REFUSAL_BODY_LIMIT: usize = 64 * 1024;

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
            data_method: None,
            login_hop: false,
            visited: Vec::new(),
            hosts: Vec::new(),
            returned: false,
            waited: false,
            login: None,
            login_url: None,
            needs_browser: None,
            handle_refusal: None,
            servlet: None,
            servlet_replayed: false,
            query_key: None,
            connecting: None,
            awaiting_first_byte: None,
            first_byte_done: false,
            login_site: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        let snapshot = self.snapshots.load_full();
        // The proxy token, when one is configured (the uid was checked per connection).
        // A request inside an intercepted CONNECT was admitted with that CONNECT, which
        // carried the token: clients send Proxy-Authorization to the proxy only there.
        // Then TRACE, which would echo the credentials added.
        let intercepted = crate::intercept::origin_of(session.stream()).is_some();
        let req = session.req_header();
        let proxy_auth = req.headers.get_all(header::PROXY_AUTHORIZATION);
        let token = match intercepted {
            true => Ok(()),
            false => access::check_token(&snapshot.access, proxy_auth.iter().map(|v| v.as_bytes())),
        };
        // (TRACE never gets here: `head::read` answers it.)
        if let Err(failure) = token {
            respond(session, &failure).await?;
            ctx.error_code = Some(failure.code);
            return Ok(true);
        }
        // Inside an intercepted CONNECT the request is origin-form: make it the absolute
        // https URL of the tunnel's authority (or refuse another authority with 421).
        if let Err(failure) = crate::intercept::make_absolute(session) {
            respond(session, &failure).await?;
            ctx.error_code = Some(failure.code);
            return Ok(true);
        }
        match Target::from_absolute(session.req_header().raw_path()) {
            Ok(target) => {
                ctx.data_method = Some(session.req_header().method.clone());
                ctx.policy = Some(HopPolicy::new(snapshot, target));
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
        // A servlet's session first (YAML `login`): one login, however many requests.
        let policy = ctx.policy()?;
        ctx.servlet = match auth::login::step(&policy.rules(), &policy.hop).cloned() {
            Some(step) => {
                let policy = policy.clone();
                let g = auth::login::ensure(policy.snapshot(), &self.state, &step, &policy.hop)
                    .await
                    .map_err(Failure::into_error)?;
                Some(g)
            }
            None => None,
        };
        // The hop's query key, before connecting: without it the request is not sent
        // (the service would take it for a guest's).
        let key = {
            let policy = ctx.policy()?;
            let pq = &policy.upstream.path_and_query;
            let presigned = auth::bearer::is_presigned(pq);
            let needed = |q: &&Arc<crate::rule::QueryToken>| {
                !presigned && (q.replace || !auth::query_token::client_has(pq, &q.param))
            };
            match policy.rules().query_token().filter(needed) {
                Some(spec) => {
                    let host = policy.upstream.authority();
                    let got = self
                        .state
                        .query_key(&self.snapshots, policy.snapshot(), spec, &host);
                    Some(got.await.map_err(|f| f.into_error())?)
                }
                None => None,
            }
        };
        ctx.query_key = key;
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
            match resolve::resolve_within(host, port, timeouts.connect).await {
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
        ctx.connecting = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let now = Instant::now();
        if let (false, Some(at)) = (reused, ctx.connecting.take()) {
            self.state.metrics.upstream_connected(now - at);
        }
        if !ctx.first_byte_done {
            ctx.awaiting_first_byte = Some(now);
        }
        Ok(())
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
        if ctx.login_hop {
            // A login hop is a plain GET: HEAD and Range belong to the data.
            req.set_method(http::Method::GET);
            let data_only: Vec<http::HeaderName> = req
                .headers
                .keys()
                .filter(|n| !redirect::LOGIN_HOP_HEADERS.contains(&n.as_str()))
                .cloned()
                .collect();
            for name in &data_only {
                req.remove_header(name);
            }
            let browser = req
                .headers
                .get(header::USER_AGENT)
                .is_some_and(|ua| redirect::is_browser_agent(ua.as_bytes()));
            if browser {
                req.insert_header(header::USER_AGENT, redirect::LOGIN_USER_AGENT)?;
            }
        } else if let Some(m) = ctx.data_method.as_ref().filter(|m| **m != req.method) {
            req.set_method(m.clone());
        }
        // The jar's cookies for this hop; the client's own win on a name.
        let jar = &self.state.jar;
        if jar.may_have_cookies() {
            if let Ok(url) = url::Url::parse(&redirect::full_url(target)) {
                let client = req
                    .headers
                    .get(header::COOKIE)
                    .and_then(|v| v.to_str().ok());
                if let Some(c) = Jar::merge(client, jar.cookie_header(&url)) {
                    req.insert_header(header::COOKIE, c)?;
                }
            }
        }
        let (applied, new_pq) = auth::apply(&resolved, target, req, ctx.challenged)?;
        let pq = new_pq.as_deref().unwrap_or(&target.path_and_query);
        let keyed = ctx
            .query_key
            .as_ref()
            .zip(resolved.query_token())
            .and_then(|(key, q)| auth::query_token::add(pq, &q.param, key.expose(), q.replace));
        let pq = keyed.as_deref().unwrap_or(pq);
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
        let status = response.status.as_u16();
        // A Handle Server's refusal of a write that carried the handle credential is
        // passed on unchanged; its body is read on the way (response_body_filter) for the
        // seed's "Common problems" diagnosis.
        let handle_refusal = {
            let p = ctx.policy()?;
            let sent_handle = ctx.auth.is_some_and(|a| a.starts_with("handle-"));
            let refused = matches!(status, 401 | 403) && !ctx.login_hop;
            (refused && sent_handle && p.rules().handle().is_some()).then(|| HandleRefusal {
                host: p.upstream.authority(),
                status,
                body: Vec::new(),
            })
        };
        ctx.handle_refusal = handle_refusal;
        if let Some(at) = ctx.awaiting_first_byte.take() {
            self.state.metrics.first_byte(at.elapsed());
            ctx.first_byte_done = true;
        }
        let policy = ctx.policy()?;
        let (hop, target) = (&policy.hop, &policy.upstream);
        // Every response's cookies go to the jar; a login hop's never reach the client.
        if response.headers.contains_key(header::SET_COOKIE) {
            if let Ok(url) = url::Url::parse(&redirect::full_url(target)) {
                let values = response.headers.get_all(header::SET_COOKIE);
                self.state
                    .jar
                    .store(&url, values.iter().filter_map(|v| v.to_str().ok()));
            }
        }
        if response.status.as_u16() == 407 && target.scheme == Scheme::Http {
            // The upstream proxy refused our credentials; a 407 passed on would ask
            // the client for credentials to authproxy itself.
            if let Some(via) = ctx.via.clone() {
                let f = Failure::proxy_refused(&via.authority(), &target.authority(), Some(407));
                return Err(f.into_error());
            }
        }
        let replayable = !session.as_ref().retry_buffer_truncated();
        let servlet = auth::login::step(&policy.rules(), hop)
            .filter(|step| auth::login::no_session(step, status))
            .cloned()
            .zip(ctx.servlet);
        if let Some((step, generation)) = servlet {
            // The servlet has no session for this request: that one is over.
            self.state
                .servlets
                .expired(auth::login::key(&step), generation)
                .await;
            if ctx.servlet_replayed {
                let login = crate::rule::login::shown(&step.url);
                let f = auth::login::session_refused(hop, status, &login);
                return Err(f.into_error());
            }
            if !replayable {
                return Err(auth::login::expired_body_too_large(hop).into_error());
            }
            // Log in once more (upstream_peer) and send the request again.
            ctx.servlet_replayed = true;
            ctx.auth = None;
            let mut e = Error::explain(FOLLOW, "logging in to a servlet again");
            e.set_retry(true);
            return Err(e);
        }
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
        if status == 401 && ctx.challenged {
            // The credential we answered with was refused: say which, once, no loop.
            if let Some(b) = policy.rules().challenge_basic(target) {
                let f = Failure::login_refused(
                    &target.authority(),
                    b.user,
                    b.source,
                    &b.origin.to_string(),
                );
                return Err(f.into_error());
            }
        }
        if ctx.login_hop && status == 403 && is_json(response) {
            // Earthdata Login's "EULA Acceptance Failure": its body says where to go.
            // Read it (response_body_filter) and answer in its place.
            let fallback = redirect::full_url(ctx.login_url.as_ref().unwrap_or(hop));
            ctx.needs_browser = Some(NeedsBrowser {
                host: hop.authority(),
                fallback: redact_url(&fallback),
                body: Vec::new(),
            });
            return Ok(());
        }
        if ctx.login_hop && (status == 403 || (status == 200 && is_html(response))) {
            // A page for a person (approve the application, accept a licence): never
            // hand it to the client as its data.
            let open = redirect::full_url(ctx.login_url.as_ref().unwrap_or(hop));
            let f = Failure::login_needs_browser(&hop.authority(), &redact_url(&open));
            return Err(f.into_error());
        }
        let location = response.headers.get(header::LOCATION);
        let Some(location) = location.filter(|_| !policy.rules().pass_redirects()) else {
            return Ok(());
        };
        let data_method = ctx.data_method.clone().unwrap_or(http::Method::GET);
        let Some(follow) = redirect::follow(hop, status, location.as_bytes(), &data_method) else {
            return Ok(());
        };
        // Following: the hop's policy is needed beside changes to the context.
        let policy = policy.clone();
        let hop = &policy.hop;
        let has_body = has_body(session.req_header());
        if has_body && follow.drops_body {
            // A POST turned into a GET by a 301/302/303: the client's business.
            return Ok(());
        }
        if has_body && !replayable {
            return Err(Failure::redirect_body_too_large(&hop.authority()).into_error());
        }
        if redirect::is_access_denied(&follow.next) {
            let open = redirect::full_url(ctx.login_url.as_ref().unwrap_or(hop));
            let f = Failure::login_needs_browser(&hop.authority(), &redact_url(&open));
            return Err(f.into_error());
        }
        let max = policy.snapshot().max_hops;
        if ctx.hosts.is_empty() {
            ctx.hosts.push(hop.authority());
            ctx.visited.push(redirect::full_url(hop));
        }
        if ctx.redirects >= max {
            let f = Failure::too_many_redirects(max, &hosts_text(&ctx.hosts));
            return Err(f.into_error());
        }
        let next_url = redirect::full_url(&follow.next);
        let original = ctx.visited.first().cloned().unwrap_or_default();
        let back_home = next_url == original;
        let next_is_login = redirect::is_login_hop(&follow.next);
        if next_is_login && !ctx.login_hop {
            if ctx.returned {
                // A second login in one request: the first did not stick.
                let f = Failure::login_did_not_stick(&hop.authority(), &follow.next.authority());
                return Err(f.into_error());
            }
            if ctx.login.is_none() {
                // Keyed by the data server the request started at (a decoy hop may
                // stand between it and the login).
                let key = ctx
                    .hosts
                    .first()
                    .map_or_else(|| hop.origin_key(), Clone::clone);
                match self.state.logins.begin(&key) {
                    Turn::Lead(guard) => ctx.login = Some(guard),
                    Turn::Wait(rx) if !ctx.waited => {
                        // Another request is logging in at this data server: wait for
                        // its cookies, then ask again.
                        ctx.waited = true;
                        logins::wait(rx, LOGIN_WAIT).await;
                        ctx.auth = None;
                        let mut e = Error::explain(FOLLOW, "replaying after another login");
                        e.set_retry(true);
                        return Err(e);
                    }
                    Turn::Wait(_) => {}
                }
            }
        }
        // The first return to the client's URL after a login is expected; any other
        // URL seen before is a loop.
        let expected_return = back_home && !ctx.returned;
        if !expected_return && ctx.visited.contains(&next_url) {
            ctx.hosts.push(follow.next.authority());
            let f = Failure::redirect_loop(&hosts_text(&ctx.hosts));
            return Err(f.into_error());
        }
        if back_home {
            // The login is done: the requests waiting for it may replay.
            ctx.returned = true;
            ctx.login = None;
            if let Some(site) = ctx.login_site.take() {
                self.state.metrics.login(&site, LoginOutcome::Ok);
            }
        }
        let strip = !auth::client_credentials_may_follow(hop, &follow.next);
        if next_is_login {
            ctx.login_url = Some(follow.next.clone());
        } else {
            ctx.data_method = Some(follow.method.clone());
        }
        ctx.visited.push(next_url);
        ctx.hosts.push(follow.next.authority());
        let next = policy.next(follow.next);
        if next_is_login && !ctx.login_hop && ctx.login_site.is_none() {
            // The request enters a login: counted by the login host's rule.
            ctx.login_site = Some(metrics::site_label(&next.rules()));
        }
        ctx.strip_client_credentials |= strip;
        ctx.login_hop = next_is_login;
        ctx.redirects += 1;
        // Each hop logs and earns its own authorization.
        ctx.auth = None;
        ctx.challenged = false;
        ctx.policy = Some(next);
        ctx.addrs.clear();
        ctx.next_addr = 0;
        let mut e = Error::explain(FOLLOW, "following a redirect");
        e.set_retry(true);
        Err(e)
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
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.remove_header("proxy-connection");
        response.remove_header(&header::PROXY_AUTHENTICATE);
        if ctx.needs_browser.is_some() {
            // The login host's refusal is replaced by our sentence (its cookies stay
            // in the daemon's jar); the body is written by response_body_filter.
            for name in [
                header::CONTENT_LENGTH,
                header::CONTENT_TYPE,
                header::SET_COOKIE,
                header::CONTENT_ENCODING,
            ] {
                response.remove_header(&name);
            }
            response.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
            response.insert_header(ERROR_HEADER, "login_needs_browser")?;
            response.insert_header(header::CACHE_CONTROL, "no-store")?;
            ctx.error_code = Some("login_needs_browser");
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(r) = ctx.handle_refusal.as_mut() {
            if let Some(chunk) = body.as_ref() {
                let room = REFUSAL_BODY_LIMIT.saturating_sub(r.body.len());
                r.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if end_of_stream {
                let r = ctx.handle_refusal.take().expect("checked above");
                log_handle_refusal(&r, ctx.policy.as_ref());
            }
            return Ok(None);
        }
        let Some(nb) = ctx.needs_browser.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            let room = REFUSAL_BODY_LIMIT.saturating_sub(nb.body.len());
            nb.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if end_of_stream {
            let open = resolution_url(&nb.body).unwrap_or_else(|| nb.fallback.clone());
            *body = Some(Bytes::from(
                Failure::login_needs_browser(&nb.host, &open).body(),
            ));
        }
        Ok(None)
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
        linger(session).await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let method = session.req_header().method.as_str();
        let metrics = &self.state.metrics;
        metrics.request(method, status, ctx.error_code);
        if let Some(site) = ctx.login_site.take() {
            metrics.login(&site, LoginOutcome::from_code(ctx.error_code));
        }
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

/// Whether the client's request carries a body.
/// How long, and how many body bytes, an error answer given before the client finished
/// sending waits for the rest of the body.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 16 << 20;

/// Reads and drops what is left of the request body (bounded), after an error answer
/// given before the client finished sending it. Closing with unread bytes would make the
/// kernel reset the connection, and a reset can destroy the answer before the client
/// reads it: the lingering close of Apache and nginx.
async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0;
        while !session.is_body_done() && read < LINGER_BYTES {
            match session.read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// One log line naming the likely cause of a Handle Server's refusal, when its JSON
/// `responseCode` is one the seed's "Common problems" explain.
fn log_handle_refusal(r: &HandleRefusal, policy: Option<&HopPolicy>) {
    let Some(cred) = policy.and_then(|p| p.rules().handle()) else {
        return;
    };
    let Some(code) = auth::handle::response_code(&r.body) else {
        return;
    };
    if let Some(why) = auth::handle::diagnosis(r.status, code, cred) {
        tracing::warn!(
            target: "authproxy::handle",
            host = %r.host, status = r.status, response_code = code,
            "{why}"
        );
    }
}

/// Whether a response is JSON.
fn is_json(response: &ResponseHeader) -> bool {
    response.headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes().to_ascii_lowercase();
        v.starts_with(b"application/json") || v.ends_with(b"+json")
    })
}

/// The `resolution_url` of a login host's JSON refusal, if it names an http(s) URL.
fn resolution_url(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let url = v.get("resolution_url")?.as_str()?;
    Target::from_absolute(url.as_bytes()).ok()?;
    Some(redact_url(url))
}

/// Whether a response is an HTML page.
fn is_html(response: &ResponseHeader) -> bool {
    response
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().to_ascii_lowercase().starts_with(b"text/html"))
}

/// A URL for a message: secret query values masked.
fn redact_url(url: &str) -> String {
    match Target::from_absolute(url.as_bytes()) {
        Ok(t) => redact::LogUrl(&t, &[]).to_string(),
        Err(_) => "the login page".to_owned(),
    }
}

/// The hosts of a redirect chain, in order, each once: `a:80 -> b:443 -> a:80`.
fn hosts_text(hosts: &[String]) -> String {
    let mut out: Vec<&str> = Vec::new();
    for h in hosts {
        if out.last() != Some(&h.as_str()) {
            out.push(h);
        }
    }
    out.join(" -> ")
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
    for (name, value) in failure.status_headers() {
        resp.insert_header(*name, *value)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    session.set_keepalive(None);
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    session.finish_body().await?;
    Ok(())
}
