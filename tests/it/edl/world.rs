//! A loopback model of NASA's Earthdata Login (EDL) flow, as TEA, Hyrax and GES DISC run
//! it with urs.earthdata.nasa.gov (issue 14, "The flow as the real servers run it"):
//!
//! - **login server** (`https://localhost:L`, a test CA made at start): `/oauth/authorize`
//!   answers 401 + Basic challenge + `_urs-gui_session`, or with the right Basic a 302 back
//!   to `redirect_uri?code=…&state=…`; `/oauth/token` exchanges a code.
//! - **data server** (`http://127.0.0.1:P`, and `https://127.0.0.1:Q`): every path but
//!   `/redirect` needs the `asf-urs` session cookie, else 302 to the login server;
//!   `/redirect` exchanges the code itself (an HTTPS POST to the login server) and answers
//!   301 + `Set-Cookie: asf-urs=<JWT>` back to the original URL.
//! - **storage host** (`http://127.0.0.1:S`): presigned URLs (`X-Amz-Signature`), 400 to
//!   any request that carries `Authorization`.
//! - **decoy host** (`http://127.0.0.1:D`): a hop in the chain that redirects on.
//!
//! Every request any of them receives is recorded ([`Hit`]). The login server is named
//! `localhost` and the others `127.0.0.1`, so a `.netrc` (keyed by host name) can hold a
//! password for the login host only. This file depends on no other test module: the
//! benchmark (`benches/dance.rs`) includes it with `#[path]`.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The Earthdata Login user the login server knows.
pub(crate) const USER: &str = "alice";
/// That user's password.
pub(crate) const PASSWORD: &str = "edl-Secret-9q";
/// The data server's EDL application (TEA's `client_id`).
pub(crate) const CLIENT_ID: &str = "tea-test-app";
const CLIENT_SECRET: &str = "tea-app-secret";
/// EDL's challenge realm, verbatim (earthaccess#1107).
pub(crate) const REALM: &str = "Please enter your Earthdata Login credentials. If you do not have a Earthdata Login, create one at https://urs.earthdata.nasa.gov//users/new";
/// The data server's session cookie (TEA's `JWT_COOKIE_NAME` default).
pub(crate) const SESSION_COOKIE: &str = "asf-urs";
/// The login server's own session cookie.
pub(crate) const LOGIN_COOKIE: &str = "_urs-gui_session";
/// Body of the login server's 401 (what EDL sends).
pub(crate) const ACCESS_DENIED_BODY: &str = "HTTP Basic: Access denied.\n";

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The byte at offset `i` of every data body (the same as `support::pattern`).
pub(crate) fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

/// Bytes `start..end` of the data file.
pub(crate) fn pattern_range(start: u64, end: u64) -> Vec<u8> {
    (start..end).map(pattern).collect()
}

/// Which server saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Login,
    Data,
    Storage,
    Decoy,
}

/// One request a server of the world received, and the status it answered.
#[derive(Clone, Debug)]
pub(crate) struct Hit {
    pub role: Role,
    /// Whether it came over TLS.
    pub tls: bool,
    pub method: String,
    /// The request target as received: origin-form (path and query), or absolute-form
    /// if a client sent that to an origin.
    pub target: String,
    pub headers: HeaderMap,
    /// The status answered (0 while the answer is being made).
    pub status: u16,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The decoded query parameter `name`.
    pub fn query(&self, name: &str) -> Option<String> {
        query_param(&self.target, name)
    }
    pub fn authorization(&self) -> Option<String> {
        self.header("authorization")
    }
    /// The value of cookie `name` in the request's Cookie header(s).
    pub fn cookie(&self, name: &str) -> Option<String> {
        cookie_value(&self.headers, name)
    }
}

/// What the login server does for a user who presents the right credentials but has not
/// approved the data server's application (or accepted its EULA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Approval {
    /// Approved: 302 to `redirect_uri?code=…&state=…`.
    Approved,
    /// 200 with an HTML "authorize this application" page.
    HtmlPage,
    /// 302 to `redirect_uri?error=access_denied&state=…` (the data server then answers,
    /// see [`Options::denied_as_html`]).
    AccessDenied,
    /// 403 JSON with `error_description: "EULA Acceptance Failure"` and `resolution_url`.
    EulaJson,
}

/// How the data server answers a request that carries a valid session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Serve {
    /// The bytes itself: 200, 206 for a `Range`, HEAD with the length.
    Bytes,
    /// A redirect with this status (303 as TEA, or 307) to a presigned URL on the storage
    /// host, `Cache-Control: private, max-age=3540`.
    Presigned(u16),
}

/// The world's behaviour. Every field can be changed while it runs ([`World::set`]).
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Length of every data file (the same pattern bytes on every path).
    pub size: u64,
    pub approval: Approval,
    pub serve: Serve,
    /// The data server's first redirect goes to the decoy, which redirects on to the
    /// login server.
    pub decoy: bool,
    /// false: the data server ignores every session cookie and keeps sending clients to
    /// the login server ("the session does not stick": a loop).
    pub session_sticks: bool,
    /// The login server authorizes a request that carries a logged-in
    /// `_urs-gui_session` cookie without asking for credentials again (EDL's single
    /// sign-on). Such an authorization is not counted as a login.
    pub honour_login_session: bool,
    /// The data server's `Location` after the code exchange is relative (`/granule.nc`)
    /// instead of absolute.
    pub relative_locations: bool,
    /// `/redirect?error=access_denied` answers 200 HTML (GES DISC) instead of TEA's 401.
    pub denied_as_html: bool,
    /// Seconds a data session (`asf-urs`) lives; the cookie's `Expires` says the same.
    pub session_lifetime: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            size: 100_000,
            approval: Approval::Approved,
            serve: Serve::Bytes,
            decoy: false,
            session_sticks: true,
            honour_login_session: true,
            relative_locations: false,
            denied_as_html: false,
            session_lifetime: 3600,
        }
    }
}

/// Counters, beside the request log.
#[derive(Default)]
struct Counters {
    /// Authorize requests with the right Basic credentials.
    logins: AtomicUsize,
    /// Authorize requests with wrong Basic credentials.
    failed_logins: AtomicUsize,
    /// Codes issued (by password or by login session).
    codes: AtomicUsize,
    /// Successful code exchanges.
    exchanges: AtomicUsize,
}

struct State {
    opts: Mutex<Options>,
    hits: Mutex<Vec<Hit>>,
    counters: Counters,
    /// Issued, not yet exchanged codes -> their redirect_uri.
    codes: Mutex<HashMap<String, String>>,
    /// Logged-in `_urs-gui_session` values.
    login_sessions: Mutex<HashSet<String>>,
    /// Valid `asf-urs` values -> expiry.
    data_sessions: Mutex<HashMap<String, SystemTime>>,
    ids: AtomicU64,
    random: RandomState,
    login_port: u16,
    data_port: u16,
    data_tls_port: u16,
    storage_port: u16,
    decoy_port: u16,
    /// How the data server reaches the login server for the code exchange.
    exchange_tls: Arc<rustls::ClientConfig>,
}

impl State {
    fn opts(&self) -> Options {
        self.opts.lock().unwrap().clone()
    }

    fn id(&self) -> String {
        let n = self.ids.fetch_add(1, Ordering::SeqCst);
        format!(
            "{:016x}{:016x}",
            self.random.hash_one(n),
            self.random.hash_one((n, "id"))
        )
    }

    fn login_origin(&self) -> String {
        format!("https://localhost:{}", self.login_port)
    }

    fn data_origin(&self, tls: bool) -> String {
        if tls {
            format!("https://127.0.0.1:{}", self.data_tls_port)
        } else {
            format!("http://127.0.0.1:{}", self.data_port)
        }
    }

    fn signature(&self, path: &str) -> String {
        format!("{:016x}", self.random.hash_one(("presign", path)))
    }
}

/// The running world. Dropping it stops every server.
pub(crate) struct World {
    state: Arc<State>,
    ca_pem: String,
    _stop: watch::Sender<bool>,
}

impl World {
    /// Starts the four servers (and the https data server) on 127.0.0.1:0.
    pub async fn start(opts: Options) -> World {
        let ca = TestCa::new();
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
        let (login, data, data_tls, storage, decoy) = (
            bind().await,
            bind().await,
            bind().await,
            bind().await,
            bind().await,
        );
        let port = |l: &TcpListener| l.local_addr().unwrap().port();
        let state = Arc::new(State {
            opts: Mutex::new(opts),
            hits: Mutex::default(),
            counters: Counters::default(),
            codes: Mutex::default(),
            login_sessions: Mutex::default(),
            data_sessions: Mutex::default(),
            ids: AtomicU64::new(1),
            random: RandomState::new(),
            login_port: port(&login),
            data_port: port(&data),
            data_tls_port: port(&data_tls),
            storage_port: port(&storage),
            decoy_port: port(&decoy),
            exchange_tls: ca.client_config(),
        });
        let (stop, stopped) = watch::channel(false);
        let acceptor = tokio_rustls::TlsAcceptor::from(ca.server_config());
        for (listener, role, tls) in [
            (login, Role::Login, Some(acceptor.clone())),
            (data, Role::Data, None),
            (data_tls, Role::Data, Some(acceptor)),
            (storage, Role::Storage, None),
            (decoy, Role::Decoy, None),
        ] {
            tokio::spawn(serve(listener, tls, role, state.clone(), stopped.clone()));
        }
        World {
            state,
            ca_pem: ca.pem,
            _stop: stop,
        }
    }

    /// Changes the behaviour from now on.
    pub fn set(&self, change: impl FnOnce(&mut Options)) {
        change(&mut self.state.opts.lock().unwrap());
    }

    pub fn options(&self) -> Options {
        self.state.opts()
    }

    /// `http://127.0.0.1:P{path}` on the data server.
    pub fn data_url(&self, path: &str) -> String {
        format!("{}{path}", self.state.data_origin(false))
    }

    /// `https://127.0.0.1:Q{path}` on the data server's TLS listener.
    pub fn data_https_url(&self, path: &str) -> String {
        format!("{}{path}", self.state.data_origin(true))
    }

    /// `https://localhost:L`.
    pub fn login_origin(&self) -> String {
        self.state.login_origin()
    }

    pub fn login_port(&self) -> u16 {
        self.state.login_port
    }
    pub fn data_port(&self) -> u16 {
        self.state.data_port
    }
    pub fn data_tls_port(&self) -> u16 {
        self.state.data_tls_port
    }
    pub fn storage_port(&self) -> u16 {
        self.state.storage_port
    }
    pub fn decoy_port(&self) -> u16 {
        self.state.decoy_port
    }

    /// The URL the EULA answer names for the user to open.
    pub fn resolution_url(&self) -> String {
        format!(
            "{}/approve_app?client_id={CLIENT_ID}",
            self.state.login_origin()
        )
    }

    /// A presigned URL for `path` on the storage host, as the data server makes them.
    pub fn presigned_url(&self, path: &str) -> String {
        presigned(&self.state, path)
    }

    /// The test CA's certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/edl-ca.pem` and returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("edl-ca.pem");
        std::fs::write(&path, &self.ca_pem).unwrap();
        path
    }

    /// Writes `dir/.netrc` (mode 0600) with the login host's entry and the right password.
    pub fn netrc(&self, dir: &Path) -> PathBuf {
        self.netrc_with_password(dir, PASSWORD)
    }

    /// Writes `dir/.netrc` (mode 0600): `machine localhost login alice password <password>`.
    pub fn netrc_with_password(&self, dir: &Path, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(".netrc");
        std::fs::write(
            &path,
            format!("machine localhost login {USER} password {password}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// authproxy's YAML: the login host (and the https data server) trusted through `ca`.
    pub fn proxy_config_yaml(&self, ca: &Path) -> String {
        format!(
            "sites:\n  - match: \"localhost:{}\"\n    tls: {{ ca: \"{}\" }}\n  - match: \"127.0.0.1:{}\"\n    tls: {{ ca: \"{}\" }}\n",
            self.state.login_port,
            ca.display(),
            self.state.data_tls_port,
            ca.display(),
        )
    }

    /// Prepares `home` for `authproxy serve` with HOME=`home` and
    /// XDG_CONFIG_HOME=`home/.config`: `.netrc`, `edl-ca.pem` and
    /// `.config/authproxy/config.yaml`. Returns the config's path.
    pub fn proxy_home(&self, home: &Path) -> PathBuf {
        self.netrc(home);
        let ca = self.write_ca(home);
        let dir = home.join(".config").join("authproxy");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yaml");
        std::fs::write(&config, self.proxy_config_yaml(&ca)).unwrap();
        config
    }

    /// Every request, in the order they arrived.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().unwrap().clone()
    }

    /// The requests one server received.
    pub fn hits_of(&self, role: Role) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.role == role).collect()
    }

    /// How many requests one server received.
    pub fn count(&self, role: Role) -> usize {
        self.state
            .hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.role == role)
            .count()
    }

    /// Requests that carried a credential where none belongs: any `Authorization` at the
    /// data server, the storage host or the decoy; at the login host, one not over TLS;
    /// the user's password or session cookie anywhere but at the login host. Empty when
    /// every credential stayed with its own host.
    pub fn credential_leaks(&self) -> Vec<Hit> {
        let password = basic_header(USER, PASSWORD);
        self.hits()
            .into_iter()
            .filter(|h| match h.role {
                Role::Login => !h.tls && h.authorization().is_some(),
                _ => {
                    h.authorization().is_some()
                        || h.cookie(LOGIN_COOKIE).is_some()
                        || h.headers
                            .iter()
                            .any(|(_, v)| v.as_bytes() == password.as_bytes())
                }
            })
            .collect()
    }

    /// Authorize requests that carried the right password.
    pub fn logins(&self) -> usize {
        self.state.counters.logins.load(Ordering::SeqCst)
    }

    /// Authorize requests that carried a wrong password.
    pub fn failed_logins(&self) -> usize {
        self.state.counters.failed_logins.load(Ordering::SeqCst)
    }

    /// Authorization codes issued.
    pub fn codes_issued(&self) -> usize {
        self.state.counters.codes.load(Ordering::SeqCst)
    }

    /// Codes the data server exchanged successfully.
    pub fn exchanges(&self) -> usize {
        self.state.counters.exchanges.load(Ordering::SeqCst)
    }

    /// Forgets every data session: the next request with an old cookie is sent to log in.
    pub fn expire_sessions(&self) {
        self.state.data_sessions.lock().unwrap().clear();
    }

    /// Forgets every login session too (the login host asks for the password again).
    pub fn expire_login_sessions(&self) {
        self.state.login_sessions.lock().unwrap().clear();
    }

    /// Data sessions currently valid.
    pub fn live_sessions(&self) -> usize {
        self.state.data_sessions.lock().unwrap().len()
    }

    /// A valid data session, as if a login had happened: the cookie value for
    /// `asf-urs`, to go direct to the data server.
    pub fn mint_session(&self) -> String {
        new_data_session(&self.state, "minted")
    }

    /// Empties the request log (counters stay).
    pub fn clear_hits(&self) {
        self.state.hits.lock().unwrap().clear();
    }
}

// ---------------------------------------------------------------------------------------
// Serving and recording.

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    role: Role,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(_) => continue,
            },
            _ = stopped.changed() => return,
        };
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let over_tls = tls.is_some();
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(record(role, over_tls, req, state).await) }
            });
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                None => {
                    let _ = builder.serve_connection(TokioIo::new(sock), svc).await;
                }
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
                    else {
                        return;
                    };
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                }
            }
        });
    }
}

async fn record(
    role: Role,
    tls: bool,
    req: Request<Incoming>,
    state: Arc<State>,
) -> Response<BoxBody> {
    let index = {
        let mut hits = state.hits.lock().unwrap();
        hits.push(Hit {
            role,
            tls,
            method: req.method().to_string(),
            target: req.uri().to_string(),
            headers: req.headers().clone(),
            status: 0,
        });
        hits.len() - 1
    };
    let resp = match role {
        Role::Login => login(req, &state).await,
        Role::Data => data(req, tls, &state).await,
        Role::Storage => storage(&req, &state),
        Role::Decoy => decoy(&req),
    };
    if let Some(hit) = state.hits.lock().unwrap().get_mut(index) {
        hit.status = resp.status().as_u16();
    }
    resp
}

// ---------------------------------------------------------------------------------------
// The login server (EDL).

async fn login(req: Request<Incoming>, state: &State) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET | Method::HEAD, "/oauth/authorize" | "/oauth/authorize/") => {
            authorize(&req, state)
        }
        (Method::POST, "/oauth/token") => token(req, state).await,
        (Method::GET | Method::HEAD, "/approve_app") => html(
            StatusCode::OK,
            "<!DOCTYPE html><html><body><h1>Approve application</h1></body></html>",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn authorize(req: &Request<Incoming>, state: &State) -> Response<BoxBody> {
    let target = req.uri().to_string();
    let q = |name: &str| query_param(&target, name);
    let (Some(client_id), Some(redirect_uri)) = (q("client_id"), q("redirect_uri")) else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_request","error_description":"client_id and redirect_uri are required"}"#,
        );
    };
    if client_id != CLIENT_ID || q("response_type").as_deref() != Some("code") {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_client","error_description":"unknown client_id or response_type"}"#,
        );
    }
    let opts = state.opts();
    let state_param = q("state").unwrap_or_default();
    let by_session = opts.honour_login_session
        && cookie_value(req.headers(), LOGIN_COOKIE)
            .is_some_and(|v| state.login_sessions.lock().unwrap().contains(&v));
    if !by_session {
        match basic_credentials(req.headers()) {
            Some((user, password)) if user == USER && password == PASSWORD => {
                state.counters.logins.fetch_add(1, Ordering::SeqCst);
            }
            Some(_) => {
                state.counters.failed_logins.fetch_add(1, Ordering::SeqCst);
                return challenge(state);
            }
            None if q("app_type").as_deref() == Some("401") => return challenge(state),
            None => {
                // The browser flow: EDL's interactive login form.
                let mut r = html(
                    StatusCode::OK,
                    "<!DOCTYPE html>\n<html><head><title>Earthdata Login</title></head><body>\
                     <form action=\"/login\" method=\"post\"><input name=\"username\">\
                     <input name=\"password\" type=\"password\"></form></body></html>\n",
                );
                set_cookie(&mut r, &login_cookie(state, &state.id()));
                return r;
            }
        }
    }
    // Logged in (by password or by session).
    let session = state.id();
    state.login_sessions.lock().unwrap().insert(session.clone());
    let cookies = [
        login_cookie(state, &session),
        format!(
            "urs_user_already_logged=yes; path=/; expires={}; secure",
            http_date_in(86_400)
        ),
    ];
    let mut resp = match opts.approval {
        Approval::Approved => {
            let code = state.id();
            state
                .codes
                .lock()
                .unwrap()
                .insert(code.clone(), redirect_uri.clone());
            state.counters.codes.fetch_add(1, Ordering::SeqCst);
            redirect(
                StatusCode::FOUND,
                &format!(
                    "{redirect_uri}?code={code}&state={}",
                    utf8_percent_encode(&state_param, NON_ALPHANUMERIC)
                ),
            )
        }
        Approval::HtmlPage => html(
            StatusCode::OK,
            &format!(
                "<!DOCTYPE html>\n<html><head><title>Earthdata Login</title></head><body>\
                 <h1>Authorize application</h1><p>The application {CLIENT_ID} is requesting \
                 access to your Earthdata Login profile.</p><form action=\"/oauth/authorize\" \
                 method=\"post\"><input type=\"submit\" value=\"Authorize\"></form>\
                 </body></html>\n"
            ),
        ),
        Approval::AccessDenied => redirect(
            StatusCode::FOUND,
            &format!(
                "{redirect_uri}?error=access_denied&error_msg={}&state={}",
                utf8_percent_encode("The user has not approved the application", NON_ALPHANUMERIC),
                utf8_percent_encode(&state_param, NON_ALPHANUMERIC)
            ),
        ),
        Approval::EulaJson => json(
            StatusCode::FORBIDDEN,
            &format!(
                "{{\"status_code\":403,\"error\":\"access_denied\",\"error_description\":\"EULA Acceptance Failure\",\"resolution_url\":\"{}/approve_app?client_id={CLIENT_ID}\"}}",
                state.login_origin()
            ),
        ),
    };
    for c in &cookies {
        set_cookie(&mut resp, c);
    }
    resp
}

fn challenge(state: &State) -> Response<BoxBody> {
    let mut r = text(StatusCode::UNAUTHORIZED, ACCESS_DENIED_BODY);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")).unwrap(),
    );
    set_cookie(&mut r, &login_cookie(state, &state.id()));
    r
}

fn login_cookie(_state: &State, value: &str) -> String {
    format!(
        "{LOGIN_COOKIE}={value}; path=/; expires={}; secure; HttpOnly",
        http_date_in(86_400)
    )
}

async fn token(req: Request<Incoming>, state: &State) -> Response<BoxBody> {
    let client_ok =
        basic_credentials(req.headers()).is_some_and(|(u, p)| u == CLIENT_ID && p == CLIENT_SECRET);
    let Ok(Ok(body)) =
        tokio::time::timeout(Duration::from_secs(10), req.into_body().collect()).await
    else {
        return json(StatusCode::BAD_REQUEST, r#"{"error":"invalid_request"}"#);
    };
    if !client_ok {
        return json(StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#);
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let code = form.get("code").cloned().unwrap_or_default();
    let issued_for = state.codes.lock().unwrap().remove(&code);
    if form.get("grant_type").map(String::as_str) != Some("authorization_code")
        || issued_for.is_none()
        || issued_for.as_ref() != form.get("redirect_uri")
    {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant","error_description":"code is invalid, used or for another redirect_uri"}"#,
        );
    }
    state.counters.exchanges.fetch_add(1, Ordering::SeqCst);
    json(
        StatusCode::OK,
        &format!(
            "{{\"access_token\":\"{}\",\"token_type\":\"Bearer\",\"expires_in\":3600,\"refresh_token\":\"{}\",\"endpoint\":\"/api/users/{USER}\"}}",
            state.id(),
            state.id()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// The data server (TEA).

async fn data(req: Request<Incoming>, tls: bool, state: &State) -> Response<BoxBody> {
    let opts = state.opts();
    if req.uri().path() == "/redirect" {
        return data_redirect(&req, tls, state, &opts).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n");
    }
    let session_ok = opts.session_sticks
        && cookie_value(req.headers(), SESSION_COOKIE).is_some_and(|v| {
            state
                .data_sessions
                .lock()
                .unwrap()
                .get(&v)
                .is_some_and(|exp| *exp > SystemTime::now())
        });
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "/".into());
    if !session_ok {
        // TEA's get_urs_url(): app_type=401 only for clients that are not browsers.
        let browser = req
            .headers()
            .get(header::USER_AGENT)
            .is_some_and(|ua| ua.as_bytes().starts_with(b"Mozilla"));
        let redirect_uri = format!("{}/redirect", state.data_origin(tls));
        let mut authorize = format!(
            "{}/oauth/authorize?client_id={CLIENT_ID}&response_type=code&redirect_uri={}&state={}",
            state.login_origin(),
            utf8_percent_encode(&redirect_uri, NON_ALPHANUMERIC),
            utf8_percent_encode(&path_and_query, NON_ALPHANUMERIC),
        );
        if !browser {
            authorize.push_str("&app_type=401");
        }
        let location = if opts.decoy {
            format!(
                "http://127.0.0.1:{}/hop?to={}",
                state.decoy_port,
                utf8_percent_encode(&authorize, NON_ALPHANUMERIC)
            )
        } else {
            authorize
        };
        return redirect(StatusCode::FOUND, &location);
    }
    match opts.serve {
        Serve::Bytes => file(&req, opts.size),
        Serve::Presigned(status) => {
            let mut r = redirect(
                StatusCode::from_u16(status).unwrap(),
                &presigned(state, req.uri().path()),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=3540"),
            );
            r
        }
    }
}

async fn data_redirect(
    req: &Request<Incoming>,
    tls: bool,
    state: &State,
    opts: &Options,
) -> Response<BoxBody> {
    let target = req.uri().to_string();
    if query_param(&target, "error").is_some() {
        return if opts.denied_as_html {
            html(
                StatusCode::OK,
                "<!DOCTYPE html>\n<html><body><h1>Access denied</h1><p>You must approve the \
                 application and accept its EULA in Earthdata Login.</p></body></html>\n",
            )
        } else {
            text(
                StatusCode::UNAUTHORIZED,
                "An error occurred while trying to log into URS. Be sure to agree to the EULA.\n",
            )
        };
    }
    let Some(code) = query_param(&target, "code") else {
        return text(StatusCode::BAD_REQUEST, "no code\n");
    };
    let original = query_param(&target, "state")
        .filter(|s| s.starts_with('/') && !s.starts_with("//"))
        .unwrap_or_else(|| "/".into());
    let redirect_uri = format!("{}/redirect", state.data_origin(tls));
    let access_token = match exchange(state, &code, &redirect_uri).await {
        Ok(t) => t,
        Err(e) => {
            return text(
                StatusCode::UNAUTHORIZED,
                &format!("Could not log in to URS: {e}\n"),
            )
        }
    };
    let jwt = new_data_session(state, &access_token);
    let location = if opts.relative_locations {
        original
    } else {
        format!("{}{original}", state.data_origin(tls))
    };
    // TEA: do_login() answers 301 with the cookie (a permanent redirect that nobody may
    // cache), and no Cache-Control.
    let mut r = redirect(StatusCode::MOVED_PERMANENTLY, &location);
    set_cookie(
        &mut r,
        &format!(
            "{SESSION_COOKIE}={jwt}; Expires={}; Path=/",
            http_date_in(opts.session_lifetime)
        ),
    );
    r
}

fn new_data_session(state: &State, access_token: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let lifetime = state.opts().session_lifetime;
    let exp = SystemTime::now() + Duration::from_secs(lifetime);
    let exp_secs = exp
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = format!(
        "{}.{}.{}",
        b64.encode(r#"{"typ":"JWT","alg":"RS256"}"#),
        b64.encode(format!(
            "{{\"urs-user-id\":\"{USER}\",\"urs-access-token\":\"{access_token}\",\"first_name\":\"Alice\",\"exp\":{exp_secs},\"jti\":\"{}\"}}",
            state.id()
        )),
        b64.encode(state.id()),
    );
    state.data_sessions.lock().unwrap().insert(jwt.clone(), exp);
    jwt
}

/// The data server's code exchange: `POST /oauth/token` to the login server over
/// verified TLS, with the application's own Basic credentials.
async fn exchange(state: &State, code: &str, redirect_uri: &str) -> Result<String, String> {
    let work = async {
        let tcp = TcpStream::connect(("127.0.0.1", state.login_port))
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(state.exchange_tls.clone())
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let body = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            utf8_percent_encode(code, NON_ALPHANUMERIC),
            utf8_percent_encode(redirect_uri, NON_ALPHANUMERIC)
        );
        let req = Request::post("/oauth/token")
            .header(header::HOST, format!("localhost:{}", state.login_port))
            .header(
                header::AUTHORIZATION,
                basic_header(CLIENT_ID, CLIENT_SECRET),
            )
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(full(body))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(format!("token endpoint answered {status}"));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        v["access_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no access_token".to_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(r) => r,
        Err(_) => Err("token endpoint timed out".into()),
    }
}

fn presigned(state: &State, path: &str) -> String {
    let path = format!("/bucket{path}");
    format!(
        "http://127.0.0.1:{}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIATESTKEY%2F20261201%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date=20261201T101500Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={}",
        state.storage_port,
        state.signature(&path)
    )
}

// ---------------------------------------------------------------------------------------
// The storage host (S3) and the decoy.

fn storage(req: &Request<Incoming>, state: &State) -> Response<BoxBody> {
    let xml = |status: StatusCode, code: &str, message: &str| {
        let mut r = Response::new(full(format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        r
    };
    if req.headers().contains_key(header::AUTHORIZATION) {
        return xml(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, \
             Signature query string parameter or the Authorization header should be specified",
        );
    }
    let target = req.uri().to_string();
    let path = req.uri().path();
    if query_param(&target, "X-Amz-Signature").as_deref() != Some(&state.signature(path)) {
        return xml(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return xml(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        );
    }
    file(req, state.opts().size)
}

fn decoy(req: &Request<Incoming>) -> Response<BoxBody> {
    match query_param(&req.uri().to_string(), "to") {
        Some(to) => redirect(StatusCode::FOUND, &to),
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

// ---------------------------------------------------------------------------------------
// A data file: pattern bytes, Range, HEAD.

fn file<B>(req: &Request<B>, size: u64) -> Response<BoxBody> {
    let head = req.method() == Method::HEAD;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, size),
        Some(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(None) => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
            );
            return r;
        }
    };
    let body = if head {
        full(Bytes::new())
    } else {
        PatternBody { offset: start, end }.boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_LENGTH, (end - start).into());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-netcdf"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)).unwrap(),
        );
    }
    r
}

/// One `bytes=` range as a half-open `start..end`; None when unsatisfiable.
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        (size.saturating_sub(n), size)
    } else {
        let s: u64 = a.parse().ok()?;
        let e = if b.is_empty() {
            size
        } else {
            (b.parse::<u64>().ok()? + 1).min(size)
        };
        (s, e)
    };
    (start < end).then_some((start, end))
}

/// Pattern bytes `offset..end`, 64 KiB at a time, sliced from one shared block.
struct PatternBody {
    offset: u64,
    end: u64,
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        static BLOCK: OnceLock<Bytes> = OnceLock::new();
        let block = BLOCK.get_or_init(|| Bytes::from(pattern_range(0, 251 * 262)));
        if self.offset >= self.end {
            return Poll::Ready(None);
        }
        let skip = (self.offset % 251) as usize;
        let n = (self.end - self.offset).min((block.len() - 251) as u64) as usize;
        self.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(block.slice(skip..skip + n)))))
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers.

fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

fn with_type(status: StatusCode, body: &str, content_type: &'static str) -> Response<BoxBody> {
    let mut r = Response::new(full(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &str) -> Response<BoxBody> {
    with_type(status, body, "text/plain; charset=utf-8")
}

fn html(status: StatusCode, body: &str) -> Response<BoxBody> {
    with_type(status, body, "text/html; charset=utf-8")
}

fn json(status: StatusCode, body: &str) -> Response<BoxBody> {
    with_type(status, body, "application/json")
}

fn redirect(status: StatusCode, location: &str) -> Response<BoxBody> {
    let mut r = text(status, "Redirecting\n");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
    r
}

fn set_cookie(r: &mut Response<BoxBody>, cookie: &str) {
    r.headers_mut()
        .append(header::SET_COOKIE, HeaderValue::from_str(cookie).unwrap());
}

fn http_date_in(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(secs))
}

/// `Basic base64(user:password)`.
pub(crate) fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A test CA and one server certificate for `localhost` and `127.0.0.1`.
struct TestCa {
    pem: String,
    der: Vec<u8>,
    server_der: Vec<u8>,
    server_key_der: Vec<u8>,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "authproxy EDL test CA");
        let ca = params.self_signed(&key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut sp =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        sp.distinguished_name
            .push(DnType::CommonName, "urs.localhost");
        sp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server = sp.signed_by(&server_key, &ca, &key).unwrap();
        TestCa {
            pem: ca.pem(),
            der: ca.der().to_vec(),
            server_der: server.der().to_vec(),
            server_key_der: server_key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(self.server_der.clone())],
            PrivateKeyDer::Pkcs8(self.server_key_der.clone().into()),
        )
        .unwrap();
        Arc::new(cfg)
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone().into()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Arc::new(cfg)
    }
}

/// The address a `World` server listens on, for a client that needs a `SocketAddr`.
pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
