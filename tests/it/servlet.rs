//! Certificate-plus-login servlets (seed 003, s2dr): a loopback servlet over TLS that
//! demands a client certificate on every request and a session opened by
//! `POST /s2dr/login`; YAML `login:` makes the daemon log in before the first request,
//! share that login, log in once more when the session expires, explain a failed login
//! with the servlet's status, and log out at shutdown.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use authproxy::session::State;

use crate::credentials::{encrypted_key_pem, snapshot, write, yaml};
use crate::process::Daemon;
use crate::support::{self, full, BoxBody, Ca, Client, Proxy};

/// The client key's password: must never reach a log line or an answer.
const KEY_PASSWORD: &str = "K3y-Pa55-S2dr-91f";
/// Every session cookie value starts so: must never reach a client or a log line.
const SESSION_PREFIX: &str = "S2dr-S3ssion-";

// ---------------------------------------------------------------------------------------
// The servlet

/// One request the servlet answered.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    cookie: Option<String>,
    body: Bytes,
    /// The client certificate of its connection, DER.
    cert: Option<Vec<u8>>,
    status: u16,
}

#[derive(Default)]
struct World {
    /// What `POST /s2dr/login` answers; 200 opens a session.
    login_status: AtomicU16,
    /// How long a login takes, so that concurrent requests meet it in flight.
    login_delay_ms: AtomicU64,
    /// When false, sessions open but no request is ever accepted in one.
    refuse_sessions: std::sync::atomic::AtomicBool,
    logins: AtomicUsize,
    next_session: AtomicUsize,
    sessions: Mutex<HashSet<String>>,
    /// The session each logout ended (the cookie it came with).
    logouts: Mutex<Vec<String>>,
    requests: Mutex<Vec<Seen>>,
    failed_handshakes: AtomicUsize,
}

/// An s2dr-like servlet on 127.0.0.1:0 (hyper over tokio-rustls; the client certificate
/// is required by `WebPkiClientVerifier` on every connection).
struct Servlet {
    addr: SocketAddr,
    world: Arc<World>,
    _stop: watch::Sender<bool>,
}

impl Servlet {
    async fn start(ca: &Ca) -> Servlet {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der.clone())).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let server = ca.server();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server.cert_der)],
                PrivateKeyDer::Pkcs8(server.key_der.into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let world = Arc::new(World::default());
        world.login_status.store(200, Ordering::SeqCst);
        let (stop, mut stopped) = watch::channel(false);
        let w = world.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                let (acceptor, world) = (acceptor.clone(), w.clone());
                tokio::spawn(async move {
                    let accepted =
                        tokio::time::timeout(Duration::from_secs(5), acceptor.accept(sock));
                    let Ok(Ok(tls)) = accepted.await else {
                        world.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let svc = service_fn(move |req| serve(req, world.clone(), cert.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Servlet {
            addr,
            world,
            _stop: stop,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn logins(&self) -> usize {
        self.world.logins.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Seen> {
        self.world.requests.lock().unwrap().clone()
    }

    /// Requests other than the login and logout.
    fn data_requests(&self) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|r| r.path != "/s2dr/login" && r.path != "/s2dr/logout")
            .collect()
    }

    /// Ends every session, as a servlet restart or a timeout would.
    fn expire_all(&self) {
        self.world.sessions.lock().unwrap().clear();
    }

    fn reset_requests(&self) {
        self.world.requests.lock().unwrap().clear();
    }

    fn logouts(&self) -> Vec<String> {
        self.world.logouts.lock().unwrap().clone()
    }
}

/// The session id in a `Cookie` header.
fn session_of(cookie: Option<&str>) -> Option<String> {
    cookie?
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("JSESSIONID="))
        .map(str::to_owned)
        .next()
}

async fn serve(
    req: Request<Incoming>,
    world: Arc<World>,
    cert: Option<Vec<u8>>,
) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let cookie = req
        .headers()
        .get("cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let session = session_of(cookie.as_deref());
    let live = session
        .as_ref()
        .is_some_and(|s| world.sessions.lock().unwrap().contains(s));
    let text =
        |status: u16, body: String| Response::builder().status(status).body(full(body)).unwrap();
    let resp = match (method.as_str(), path.as_str()) {
        ("POST", "/s2dr/login") => {
            world.logins.fetch_add(1, Ordering::SeqCst);
            let delay = world.login_delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let status = world.login_status.load(Ordering::SeqCst);
            if status != 200 || cert.is_none() {
                text(status, "login refused\n".into())
            } else {
                let n = world.next_session.fetch_add(1, Ordering::SeqCst) + 1;
                let id = format!("{SESSION_PREFIX}{n}");
                world.sessions.lock().unwrap().insert(id.clone());
                Response::builder()
                    .header(
                        "set-cookie",
                        format!("JSESSIONID={id}; Path=/s2dr; Secure; HttpOnly"),
                    )
                    .body(full("welcome\n"))
                    .unwrap()
            }
        }
        ("POST", "/s2dr/logout") => {
            if let Some(s) = &session {
                world.sessions.lock().unwrap().remove(s);
                world.logouts.lock().unwrap().push(s.clone());
            }
            Response::builder()
                .header("set-cookie", "JSESSIONID=; Path=/s2dr; Max-Age=0")
                .body(full("bye\n"))
                .unwrap()
        }
        _ if !live || world.refuse_sessions.load(Ordering::SeqCst) => {
            text(401, "log in first\n".into())
        }
        ("GET", "/s2dr/pref") => Response::builder()
            .header("set-cookie", "pref=blue; Path=/s2dr")
            .body(full("pref set\n"))
            .unwrap(),
        ("POST", "/s2dr/upload") => text(
            200,
            format!(
                "got {} bytes: {}\n",
                body.len(),
                String::from_utf8_lossy(&body)
            ),
        ),
        _ => text(200, format!("data at {path}\n")),
    };
    world.requests.lock().unwrap().push(Seen {
        method,
        path,
        cookie,
        body,
        cert,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A HOME with the CA, alice's certificate and her encrypted key, and a config whose
/// site `localhost:<servlet>` upgrades to https, presents alice and logs in.
fn setup(h: &Path, ca: &Ca, alice: &support::Issued, port: u16, extra: &str) -> std::path::PathBuf {
    write(h, "ca.pem", &ca.pem);
    write(h, "alice.crt", &alice.cert_pem);
    write(
        h,
        "alice.key",
        &encrypted_key_pem(&alice.key_der, KEY_PASSWORD),
    );
    write(h, "keypw", &format!("{KEY_PASSWORD}\n"));
    yaml(
        h,
        &format!(
            "{extra}sites:\n\
             \x20 - match: \"localhost:{port}\"\n\
             \x20   tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.key, \
             key_password_file: keypw, ca: ca.pem }}\n\
             \x20   login: {{ url: \"https://localhost:{port}/s2dr/login\", method: POST,\n\
             \x20             logout_url: \"https://localhost:{port}/s2dr/logout\", when: [401] }}\n"
        ),
    )
}

/// One request through the proxy on a fresh connection: status, headers, body.
async fn fetch(proxy: SocketAddr, method: &str, url: &str, body: &str) -> (u16, HeaderMap, String) {
    let mut client = Client::connect(proxy).await;
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(full(body.to_owned()))
        .unwrap();
    let (resp, body) = support::body_of(client.send(req).await).await;
    (
        resp.status().as_u16(),
        resp.headers().clone(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn error_code(headers: &HeaderMap) -> &str {
    headers
        .get("x-authproxy-error")
        .map_or("", |v| v.to_str().unwrap())
}

fn assert_no_session_cookie(headers: &HeaderMap, body: &str) {
    for v in headers.get_all("set-cookie") {
        assert!(!v.to_str().unwrap().contains("JSESSIONID"), "{v:?}");
    }
    assert!(!body.contains(SESSION_PREFIX), "{body}");
    assert!(!body.contains(KEY_PASSWORD), "{body}");
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_share_one_login() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    servlet.world.login_delay_ms.store(300, Ordering::SeqCst);
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let state = Arc::new(State::default());
    let proxy = Proxy::start_with_state(snapshot(home.path(), Some(&config)), state.clone()).await;

    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let url = format!("http://localhost:{port}/s2dr/files/{i}");
            tokio::spawn(async move { fetch(proxy.addr, "GET", &url, "").await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, format!("data at /s2dr/files/{i}\n").as_str())
        );
        assert_no_session_cookie(&headers, &body);
    }
    assert_eq!(servlet.logins(), 1);
    let key = format!("https://localhost:{port}/s2dr/login");
    assert_eq!(state.servlets.attempts(&key), 1);
    let all = servlet.requests();
    assert_eq!(all.len(), 21, "{all:?}");
    assert_eq!(
        (all[0].method.as_str(), all[0].path.as_str()),
        ("POST", "/s2dr/login")
    );
    assert_eq!(all[0].body.len(), 0);
    // Every request, the login included, came with alice's certificate; every data
    // request with the one session, and none was refused.
    for r in &all {
        assert_eq!(r.cert.as_deref(), Some(alice.cert_der.as_slice()), "{r:?}");
    }
    for r in &all[1..] {
        assert_eq!(
            r.cookie.as_deref(),
            Some("JSESSIONID=S2dr-S3ssion-1"),
            "{r:?}"
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(servlet.world.failed_handshakes.load(Ordering::SeqCst), 0);

    // The servlet's own cookies on an ordinary answer do reach the client, unchanged.
    let (status, headers, body) = fetch(
        proxy.addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/pref"),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "pref set\n"));
    let set: Vec<_> = headers.get_all("set-cookie").iter().collect();
    assert_eq!(set, ["pref=blue; Path=/s2dr"]);
    assert_eq!(servlet.logins(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_logs_in_exactly_once_more_and_replays_the_body() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let url = |p: &str| format!("http://localhost:{port}{p}");

    let (status, _, body) = fetch(proxy.addr, "GET", &url("/s2dr/a"), "").await;
    assert_eq!((status, body.as_str()), (200, "data at /s2dr/a\n"));
    assert_eq!(servlet.logins(), 1);

    // The session ends under ten concurrent requests: one login more, all served.
    servlet.reset_requests();
    servlet.expire_all();
    servlet.world.login_delay_ms.store(200, Ordering::SeqCst);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let u = url(&format!("/s2dr/b/{i}"));
            tokio::spawn(async move { fetch(proxy.addr, "GET", &u, "").await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!((status, body), (200, format!("data at /s2dr/b/{i}\n")));
        assert_no_session_cookie(&headers, "");
    }
    assert_eq!(servlet.logins(), 2);
    // Each request was refused at most once, under the old session, then served under
    // the new one.
    let data = servlet.data_requests();
    for i in 0..10 {
        let path = format!("/s2dr/b/{i}");
        let mine: Vec<_> = data
            .iter()
            .filter(|r| r.path == path)
            .map(|r| (r.status, r.cookie.clone().unwrap_or_default()))
            .collect();
        let served = (200, "JSESSIONID=S2dr-S3ssion-2".to_owned());
        let refused = (401, "JSESSIONID=S2dr-S3ssion-1".to_owned());
        assert!(
            mine == [served.clone()] || mine == [refused, served],
            "{path}: {mine:?}"
        );
    }

    // A POST whose session expired is sent again after the login, body and all.
    servlet.reset_requests();
    servlet.expire_all();
    servlet.world.login_delay_ms.store(0, Ordering::SeqCst);
    let (status, _, body) = fetch(proxy.addr, "POST", &url("/s2dr/upload"), "hello world").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "got 11 bytes: hello world\n")
    );
    assert_eq!(servlet.logins(), 3);
    let uploads: Vec<_> = servlet
        .requests()
        .into_iter()
        .filter(|r| r.path == "/s2dr/upload")
        .map(|r| (r.status, r.body, r.cookie))
        .collect();
    assert_eq!(
        uploads,
        [
            (
                401,
                Bytes::from_static(b"hello world"),
                Some("JSESSIONID=S2dr-S3ssion-2".into())
            ),
            (
                200,
                Bytes::from_static(b"hello world"),
                Some("JSESSIONID=S2dr-S3ssion-3".into())
            ),
        ]
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_to_replay_after_an_expiry_is_explained() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let url = format!("http://localhost:{port}/s2dr/upload");
    let (status, _, _) = fetch(proxy.addr, "POST", &url, "small").await;
    assert_eq!((status, servlet.logins()), (200, 1));

    // Past pingora's 64 KiB replay buffer: not sent twice, explained; the next request
    // logs in and goes through.
    servlet.expire_all();
    let big = "x".repeat(200 * 1024);
    let (status, headers, body) = fetch(proxy.addr, "POST", &url, &big).await;
    assert_eq!(
        (status, error_code(&headers)),
        (503, "login_expired"),
        "{body}"
    );
    assert_eq!(
        body,
        format!(
            "the session at localhost:{port} had expired; authproxy logs in again with the \
             next request, but this request's body is too large to send again. Send it again.\n"
        )
    );
    assert_eq!(servlet.logins(), 1);
    let (status, _, body) = fetch(proxy.addr, "POST", &url, &big).await;
    assert_eq!(
        (status, body.len()),
        (200, format!("got {} bytes: {big}\n", big.len()).len())
    );
    assert_eq!(servlet.logins(), 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_login_answers_with_the_servlets_status_once() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let url = format!("http://localhost:{port}/s2dr/x");

    servlet.world.login_status.store(500, Ordering::SeqCst);
    let (status, headers, body) = fetch(proxy.addr, "GET", &url, "").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(error_code(&headers), "login_failed");
    assert_eq!(
        body,
        format!(
            "authproxy could not log in for localhost:{port}: POST \
             https://localhost:{port}/s2dr/login answered 500. The servlet failed; try \
             again later or tell its operators.\n"
        )
    );
    assert_eq!(servlet.logins(), 1);
    assert!(servlet.data_requests().is_empty());

    // Five at once meet one refused login (403), and all get its status.
    servlet.world.login_status.store(403, Ordering::SeqCst);
    servlet.world.login_delay_ms.store(200, Ordering::SeqCst);
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let u = url.clone();
            tokio::spawn(async move { fetch(proxy.addr, "GET", &u, "").await })
        })
        .collect();
    for t in tasks {
        let (status, headers, body) = t.await.unwrap();
        assert_eq!(
            (status, error_code(&headers)),
            (403, "login_failed"),
            "{body}"
        );
        assert!(
            body.contains("answered 403") && body.contains("tls.client_cert"),
            "{body}"
        );
        assert_no_session_cookie(&headers, &body);
    }
    assert_eq!(servlet.logins(), 2);
    assert!(servlet.data_requests().is_empty());

    // The servlet recovers: the next request logs in and is served.
    servlet.world.login_status.store(200, Ordering::SeqCst);
    let (status, _, body) = fetch(proxy.addr, "GET", &url, "").await;
    assert_eq!((status, body.as_str()), (200, "data at /s2dr/x\n"));
    assert_eq!(servlet.logins(), 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_right_after_a_login_is_explained_not_looped() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    servlet.world.refuse_sessions.store(true, Ordering::SeqCst);
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;

    let (status, headers, body) = fetch(
        proxy.addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/y"),
        "",
    )
    .await;
    assert_eq!(
        (status, error_code(&headers)),
        (401, "login_session_refused"),
        "{body}"
    );
    assert!(
        body.starts_with(&format!("localhost:{port} answered 401 again right after")),
        "{body}"
    );
    // The first login, the request, one login more, the request again: then the answer.
    assert_eq!(servlet.logins(), 2);
    assert_eq!(servlet.data_requests().len(), 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_posts_each_live_session_once_within_its_limit() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let config = setup(home.path(), &ca, &alice, port, "");
    let state = Arc::new(State::default());
    let proxy = Proxy::start_with_state(snapshot(home.path(), Some(&config)), state.clone()).await;
    let (status, _, _) = fetch(
        proxy.addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/z"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    proxy.stop().await;

    let snap = Arc::new(snapshot(home.path(), Some(&config)));
    let started = std::time::Instant::now();
    assert_eq!(state.logout_all(&snap, Duration::from_secs(3)).await, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(servlet.logouts(), ["S2dr-S3ssion-1"]);
    let logout = servlet
        .requests()
        .into_iter()
        .find(|r| r.path == "/s2dr/logout")
        .unwrap();
    assert_eq!(logout.cert.as_deref(), Some(alice.cert_der.as_slice()));
    // The logout's deletion reached the jar; a second call has nothing to log out.
    assert_eq!(state.jar.len(), 0);
    assert_eq!(state.logout_all(&snap, Duration::from_secs(3)).await, 0);
    assert_eq!(servlet.logouts().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_logs_out_at_sigterm_and_logs_no_secret() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let servlet = Servlet::start(&ca).await;
    let port = servlet.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = setup(h, &ca, &alice, port, "cookie_jar: jar.txt\n");
    let config = config.to_str().unwrap().to_owned();
    let mut daemon = Daemon::start_in(h, &["--config", &config], &[("RUST_LOG", "trace")]);
    let addr: SocketAddr = daemon.addr.parse().unwrap();

    let (status, headers, body) = fetch(
        addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/files/1"),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "data at /s2dr/files/1\n"));
    assert_no_session_cookie(&headers, &body);
    // A failed login's answer holds no secret either.
    servlet.expire_all();
    servlet.world.login_status.store(403, Ordering::SeqCst);
    let (status, headers, body) = fetch(
        addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/files/2"),
        "",
    )
    .await;
    assert_eq!(
        (status, error_code(&headers)),
        (403, "login_failed"),
        "{body}"
    );
    assert_no_session_cookie(&headers, &body);
    servlet.world.login_status.store(200, Ordering::SeqCst);
    let (status, _, _) = fetch(
        addr,
        "GET",
        &format!("http://localhost:{port}/s2dr/files/3"),
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(servlet.logins(), 3);

    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert_eq!(servlet.logouts(), ["S2dr-S3ssion-2"], "{log}");
    assert!(log.contains("logged in"), "{log}");
    assert!(log.contains("logged out"), "{log}");
    for secret in [KEY_PASSWORD, SESSION_PREFIX] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    // The logout came before the jar's last save: the ended session is not kept.
    let jar = std::fs::read_to_string(h.join("jar.txt")).unwrap();
    assert!(!jar.contains(SESSION_PREFIX), "{jar}");
}

// ---------------------------------------------------------------------------------------
// Configuration, `check` and `explain`

#[test]
fn bad_login_settings_are_errors_with_their_lines() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = yaml(
        h,
        "sites:\n\
         \x20 - match: a.example\n\
         \x20   login:\n\
         \x20     url: /s2dr/login\n\
         \x20     method: DELETE\n\
         \x20 - match: b.example\n\
         \x20   login: { url: \"https://u:S3cret-In-Url@b.example/login\", when: [200] }\n\
         \x20 - match: c.example\n\
         \x20   login: { url: \"https://c.example/login\", logout_url: \"ftp://c.example/x\" }\n\
         \x20 - match: d.example\n\
         \x20   login: { url: \"https://d.example/login\", bodyy: x }\n\
         \x20 - match: e.example\n\
         \x20   login: { url: \"https://e.example/login\", body: a, body_file: f }\n",
    );
    let errors = authproxy::config::load::load(&crate::credentials::env(h, Some(&config)))
        .unwrap_err()
        .to_string()
        .replace(&config.display().to_string(), "config.yaml");
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(
        lines,
        [
            "config.yaml:4: sites[0].login.url: must be an absolute URL such as \
             https://host:8443/s2dr/login",
            "config.yaml:5: sites[0].login.method: must be POST or GET",
            "config.yaml:7: sites[1].login.url: must not hold a user or password; the client \
             certificate (tls.client_cert) or basic proves who logs in",
            "config.yaml:7: sites[1].login.when: a non-empty list of statuses from 400 to 599 \
             (the answers that mean \"log in first\"), such as [401]",
            "config.yaml:9: sites[2].login.logout_url: must be an absolute URL such as \
             https://host:8443/s2dr/login",
            "config.yaml:11: sites[3].login: unknown field `bodyy`, expected one of `url`, \
             `method`, `body`, `body_file`, `logout_url`, `when`",
            "config.yaml:13: sites[4].login: give body or body_file, not both",
        ],
        "{errors}"
    );
    assert!(!errors.contains("S3cret-In-Url"), "{errors}");
}

#[test]
fn check_and_explain_show_the_login_step_and_no_secret() {
    let ca = Ca::new("s2dr test CA");
    let alice = ca.client("alice");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = setup(h, &ca, &alice, 8443, "");
    let env = crate::credentials::env(h, Some(&config));
    let (text, ok) = authproxy::explain::check(&env);
    assert!(ok, "{text}");
    let mut outputs = vec![text.clone()];
    assert!(
        text.contains(
            "    login: POST https://localhost:8443/s2dr/login before the first request, and \
             once more when the site answers 401; POST https://localhost:8443/s2dr/logout at \
             shutdown\n"
        ),
        "{text}"
    );
    let text = authproxy::explain::explain(&env, "http://localhost:8443/s2dr/files/1").unwrap();
    outputs.push(text.clone());
    assert!(
        text.contains(
            "login: POST https://localhost:8443/s2dr/login before the first request, and once \
             more when the site answers 401; POST https://localhost:8443/s2dr/logout at \
             shutdown\nlogin certificate: CN=alice\n"
        ),
        "{text}"
    );
    // The login URL itself needs no login first.
    let text = authproxy::explain::explain(&env, "http://localhost:8443/s2dr/login").unwrap();
    assert!(!text.contains("login:"), "{text}");
    outputs.push(text);
    for out in &outputs {
        assert!(!out.contains(KEY_PASSWORD), "{out}");
    }

    // A body is never shown, and plain http is warned about.
    std::fs::write(h.join("form"), "user=alice&password=F0rm-S3cret\n").unwrap();
    let config = yaml(
        h,
        "sites:\n  - match: f.example\n    login: { url: \"http://f.example/login\", body_file: form }\n",
    );
    let (text, ok) = authproxy::explain::check(&crate::credentials::env(h, Some(&config)));
    assert!(ok, "{text}");
    assert!(
        text.contains("login: POST http://f.example/login (body ***) before"),
        "{text}"
    );
    assert!(text.contains("sites[0].login.url is plain http"), "{text}");
    assert!(!text.contains("F0rm-S3cret"), "{text}");
}
