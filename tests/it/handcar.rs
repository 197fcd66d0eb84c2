//! `query_token` against a Handcar-like loopback service (seed 004): a learning service
//! that lets in only unexpired agent keys in `proxyname` (anyone else is the guest
//! `MC3GUE$T`, counted), and an agentkeys endpoint, behind Basic or a required client
//! certificate, that issues keys lasting a few seconds and counts them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use authproxy::config::load::{load, Environment};
use authproxy::config::SnapshotHandle;
use authproxy::reload::Reloader;
use authproxy::session::State;
use authproxy::{Daemon, Tuning};

use crate::credentials::{basic, error_code, pem, write, yaml};
use crate::support::{full, BoxBody, Ca, Client};

const USER: &str = "alice";
const PASSWORD: &str = "S3cr3t-handcar-pw-4e1";
const KEYS_PATH: &str = "/handcar/services/authentication/agentkeys/alice";
const GUEST: &str = "MC3GUE$T";

/// How the agentkeys endpoint writes a key.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Body {
    Text = 0,
    JsonString = 1,
    JsonObject = 2,
    /// An object with two fields: not a key.
    JsonTwoFields = 3,
}

/// One request the learning service served.
#[derive(Clone, Debug)]
struct Served {
    /// The request target, as received.
    target: String,
    /// The agent key number it was let in with; `None`: the guest.
    agent: Option<usize>,
}

/// The service's state, shared by its plain and TLS listeners.
struct Handcar {
    lifetime: Duration,
    /// Issued keys and when each expires, by number (from 1).
    keys: Mutex<Vec<(String, Instant)>>,
    issued: AtomicUsize,
    /// Requests to the agentkeys endpoint, answered or not.
    key_requests: AtomicUsize,
    guests: AtomicUsize,
    served: Mutex<Vec<Served>>,
    down: AtomicBool,
    body: AtomicU8,
    /// The agentkeys endpoint wants Basic (else a client certificate does).
    want_basic: bool,
    /// Client certificates the TLS listener saw, DER.
    peer_certs: Mutex<Vec<Vec<u8>>>,
}

impl Handcar {
    fn new(lifetime: Duration, want_basic: bool) -> Arc<Handcar> {
        Arc::new(Handcar {
            lifetime,
            keys: Mutex::default(),
            issued: AtomicUsize::new(0),
            key_requests: AtomicUsize::new(0),
            guests: AtomicUsize::new(0),
            served: Mutex::default(),
            down: AtomicBool::new(false),
            body: AtomicU8::new(Body::Text as u8),
            want_basic,
            peer_certs: Mutex::default(),
        })
    }

    /// A new key: `+`, `/`, `=` and a literal `%2B`, as Handcar's keys hold.
    fn issue(&self) -> String {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let key = format!("AGENT_KEY{n}+Sl/Tr=%2BIX");
        self.keys
            .lock()
            .unwrap()
            .push((key.clone(), Instant::now() + self.lifetime));
        key
    }

    fn key(&self, n: usize) -> String {
        self.keys.lock().unwrap()[n - 1].0.clone()
    }

    fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    fn guests(&self) -> usize {
        self.guests.load(Ordering::SeqCst)
    }

    fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    fn set_body(&self, b: Body) {
        self.body.store(b as u8, Ordering::SeqCst);
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        let path = req.uri().path();
        if path == KEYS_PATH {
            self.key_requests.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return status(503, "agent keys are down for maintenance");
            }
            let authorized = req
                .headers()
                .get("authorization")
                .is_some_and(|v| v.as_bytes() == basic(USER, PASSWORD).as_bytes());
            if self.want_basic && !authorized {
                let mut r = status(401, "who are you?");
                r.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static("Basic realm=\"handcar\""),
                );
                return r;
            }
            let key = self.issue();
            let (ctype, body) = match self.body.load(Ordering::SeqCst) {
                0 => ("text/plain", format!("{key}\r\n")),
                1 => ("application/json", serde_json::to_string(&key).unwrap()),
                2 => (
                    "application/json",
                    serde_json::json!({ "agentKey": key }).to_string(),
                ),
                _ => (
                    "application/json",
                    serde_json::json!({ "agentKey": key, "user": "alice" }).to_string(),
                ),
            };
            let mut r = Response::new(full(body));
            r.headers_mut()
                .insert("content-type", http::HeaderValue::from_static(ctype));
            return r;
        }
        // The learning service: one decode of the query, as a servlet does.
        let query = req.uri().query().unwrap_or("");
        let given: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(n, _)| n == "proxyname")
            .map(|(_, v)| v.into_owned())
            .collect();
        let now = Instant::now();
        let agent = self
            .keys
            .lock()
            .unwrap()
            .iter()
            .position(|(k, exp)| given.iter().any(|g| g == k) && now < *exp)
            .map(|i| i + 1);
        self.served.lock().unwrap().push(Served {
            target: req.uri().to_string(),
            agent,
        });
        match agent {
            Some(n) => Response::new(full(format!("agent {USER} with key {n}"))),
            None => {
                self.guests.fetch_add(1, Ordering::SeqCst);
                Response::new(full(GUEST))
            }
        }
    }
}

fn status(code: u16, body: &'static str) -> Response<BoxBody> {
    Response::builder().status(code).body(full(body)).unwrap()
}

/// Serves `hc` over plain http on 127.0.0.1:0.
async fn serve_plain(hc: Arc<Handcar>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let hc = hc.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let r = hc.handle(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    addr
}

/// Serves `hc` over TLS on 127.0.0.1:0, with a certificate of `ca`, requiring a client
/// certificate issued by `ca`.
async fn serve_tls(hc: Arc<Handcar>, ca: &Ca) -> SocketAddr {
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
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (hc, acceptor) = (hc.clone(), acceptor.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(5), acceptor.accept(sock)).await
                else {
                    return;
                };
                if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    hc.peer_certs.lock().unwrap().push(c.to_vec());
                }
                let svc = service_fn(move |req: Request<Incoming>| {
                    let r = hc.handle(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

/// The daemon in-process, with its snapshot handle and state in reach (and a reloader
/// watching its files, if asked for).
struct Proxy {
    addr: SocketAddr,
    handle: SnapshotHandle,
    state: Arc<State>,
    _reloader: Option<Reloader>,
    _stop: watch::Sender<bool>,
}

impl Proxy {
    async fn start(home: &Path, config: &Path, reload: bool) -> Proxy {
        Proxy::start_with_state(home, config, reload, Arc::default()).await
    }

    async fn start_with_state(
        home: &Path,
        config: &Path,
        reload: bool,
        state: Arc<State>,
    ) -> Proxy {
        let env = Environment::isolated(home, Some(config));
        let snapshot = load(&env).unwrap_or_else(|e| panic!("config does not load:\n{e}"));
        let handle = snapshot.into_handle();
        let reloader =
            reload.then(|| Reloader::start_with_state(env, handle.clone(), Some(state.clone())));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let daemon = Daemon::with_state(handle.clone(), state.clone(), &Tuning::default());
        let (stop, rx) = watch::channel(false);
        tokio::spawn(daemon.run(vec![listener], rx, Duration::from_secs(1)));
        Proxy {
            addr,
            handle,
            state,
            _reloader: reloader,
            _stop: stop,
        }
    }

    async fn get(&self, url: &str) -> (u16, String, String) {
        get(self.addr, url.to_owned()).await
    }
}

/// GET `url` through the proxy at `addr` on a fresh connection: status,
/// `X-Authproxy-Error` and body.
async fn get(addr: SocketAddr, url: String) -> (u16, String, String) {
    let mut c = Client::connect(addr).await;
    let (resp, body) = c.get(&url).await;
    (
        resp.status().as_u16(),
        error_code(&resp),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A config whose learning service (`/handcar/services/learning` at `svc`) gets keys
/// from `keys_url` with `extra` options, and whose agentkeys endpoint at `svc` takes
/// Alice's Basic password.
fn config(home: &Path, svc: SocketAddr, extra: &str) -> std::path::PathBuf {
    write(home, "pw", PASSWORD);
    yaml(
        home,
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, from_url: \"http://{svc}{KEYS_PATH}\"{extra} }}\n\
             \x20 - match: \"http://{svc}/handcar/services/authentication\"\n\
             \x20   basic: {{ username: {USER}, password_file: pw }}\n"
        ),
    )
}

/// `key` as it must reach the service: percent-encoded once, every reserved byte.
fn encoded(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC)
        .to_string()
        .replace("%5F", "_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_requests_over_six_seconds_take_two_or_three_keys() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let cfg = config(home.path(), svc, ", lifetime: 4s, refresh_before: 1s");
    let proxy = Proxy::start(home.path(), &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");

    // Ten at once: one fetch between them.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..10 {
        set.spawn(get(proxy.addr, url.clone()));
    }
    while let Some(r) = set.join_next().await {
        let (status, code, body) = r.unwrap();
        assert_eq!(
            (status, code.as_str(), body.as_str()),
            (200, "", "agent alice with key 1")
        );
    }
    assert_eq!(hc.issued(), 1);
    // The exact bytes the service saw, and its one decode gives the issued key.
    let key1 = hc.key(1);
    assert_eq!(key1, "AGENT_KEY1+Sl/Tr=%2BIX");
    let served = hc.served();
    assert_eq!(
        served[0].target,
        "/handcar/services/learning/objectives?proxyname=AGENT_KEY1%2BSl%2FTr%3D%252BIX"
    );
    assert!(served.iter().all(|s| s.target.ends_with(&encoded(&key1))));

    // Twenty more, paced over six seconds.
    let started = Instant::now();
    for i in 0..20u32 {
        tokio::time::sleep_until((started + Duration::from_millis(300) * i).into()).await;
        let (status, code, body) = proxy.get(&url).await;
        assert_eq!(status, 200, "{code} {body}");
        assert!(
            body.starts_with("agent alice with key "),
            "request {i}: {body}"
        );
    }
    let issued = hc.issued();
    assert!((2..=3).contains(&issued), "{issued} keys for 30 requests");
    assert_eq!(hc.guests(), 0, "{:?}", hc.served());
    let served = hc.served();
    assert_eq!(served.len(), 30);
    for s in &served {
        let n = s.agent.expect("served with an unexpired key");
        let want = format!(
            "/handcar/services/learning/objectives?proxyname={}",
            encoded(&hc.key(n))
        );
        assert_eq!(s.target, want);
    }
    // The refreshed key was in use before the first one expired.
    assert!(served.iter().any(|s| s.agent == Some(2)), "{served:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_proxyname_is_kept_unless_replace() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    write(home.path(), "pw", PASSWORD);
    let keys = format!("from_url: \"http://{svc}{KEYS_PATH}\", lifetime: 4s, refresh_before: 1s");
    let cfg = yaml(
        home.path(),
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, {keys} }}\n\
             \x20 - match: \"http://{svc}/handcar/services/repository\"\n\
             \x20   query_token: {{ param: proxyname, {keys}, replace: true }}\n\
             \x20 - match: \"http://{svc}/handcar/services/authentication\"\n\
             \x20   basic: {{ username: {USER}, password_file: pw }}\n"
        ),
    );
    let proxy = Proxy::start(home.path(), &cfg, false).await;
    // The client's own key goes as it sent it, and no key is fetched for it.
    let (status, _, body) = proxy
        .get(&format!(
            "http://{svc}/handcar/services/learning/o?proxyname=Cl1ent%2Bkey&x=1"
        ))
        .await;
    assert_eq!((status, body.as_str()), (200, GUEST));
    assert_eq!(hc.issued(), 0);
    // With replace, the daemon's key takes its place (one key for both sites: one source).
    let (status, _, body) = proxy
        .get(&format!(
            "http://{svc}/handcar/services/repository/r?proxyname=Cl1ent%2Bkey&x=1"
        ))
        .await;
    assert_eq!((status, body.as_str()), (200, "agent alice with key 1"));
    let (status, _, body) = proxy
        .get(&format!("http://{svc}/handcar/services/learning/o?x=2"))
        .await;
    assert_eq!((status, body.as_str()), (200, "agent alice with key 1"));
    assert_eq!(hc.issued(), 1);
    let k = encoded(&hc.key(1));
    let targets: Vec<String> = hc.served().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        vec![
            "/handcar/services/learning/o?proxyname=Cl1ent%2Bkey&x=1".to_owned(),
            format!("/handcar/services/repository/r?x=1&proxyname={k}"),
            format!("/handcar/services/learning/o?x=2&proxyname={k}"),
        ]
    );
    assert_eq!(hc.guests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_source_keeps_the_old_key_while_valid_then_answers_502() {
    let hc = Handcar::new(Duration::from_secs(2), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let cfg = config(home.path(), svc, ", lifetime: 2s, refresh_before: 1s");
    let proxy = Proxy::start(home.path(), &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    let t0 = Instant::now();
    assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    hc.down.store(true, Ordering::SeqCst);
    // The refresh (due at 1 s) fails; the old key serves until it expires at 2 s.
    tokio::time::sleep_until((t0 + Duration::from_millis(1500)).into()).await;
    let (status, _, body) = proxy.get(&url).await;
    assert_eq!((status, body.as_str()), (200, "agent alice with key 1"));
    assert!(
        hc.key_requests.load(Ordering::SeqCst) >= 2,
        "no refresh was tried"
    );
    tokio::time::sleep_until((t0 + Duration::from_millis(2100)).into()).await;
    let (status, code, body) = until_unavailable(proxy.addr, &url, "agent alice with key 1").await;
    assert_eq!(
        (status, code.as_str()),
        (502, "query_token_unavailable"),
        "{body}"
    );
    assert_eq!(
        body,
        format!(
            "authproxy has no valid key for the `proxyname` query parameter for {svc}: the \
             key endpoint http://{svc}{KEYS_PATH} answered 503 Service Unavailable. The \
             request was not sent, so that it is not served as a guest's; it will work again \
             once the key source answers.\n"
        )
    );
    // Never sent as the guest; the refresher gave up when the key expired.
    assert_eq!(hc.guests(), 0);
    assert!(hc.served().iter().all(|s| s.agent == Some(1)));
    assert_eq!(hc.issued(), 1);
    let tries = hc.key_requests.load(Ordering::SeqCst);
    assert!(
        (3..=8).contains(&tries),
        "{tries} requests to the key endpoint"
    );
    // Back up: the next request (after the retry interval) gets a new key.
    hc.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(proxy.get(&url).await.2, "agent alice with key 2");
    for secret in [PASSWORD, "AGENT_KEY1", "AGENT_KEY2"] {
        assert!(!body.contains(secret));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_accepted_and_other_json_is_explained() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    for (i, body) in [Body::JsonString, Body::JsonObject, Body::JsonTwoFields]
        .into_iter()
        .enumerate()
    {
        hc.set_body(body);
        let home = tempfile::tempdir().unwrap();
        let cfg = config(home.path(), svc, ", lifetime: 4s");
        let proxy = Proxy::start(home.path(), &cfg, false).await;
        let (status, code, text) = proxy.get(&url).await;
        let n = i + 1;
        if body == Body::JsonTwoFields {
            assert_eq!((status, code.as_str()), (502, "query_token_unavailable"));
            assert!(
                text.contains(&format!(
                    "the key endpoint http://{svc}{KEYS_PATH} answered with JSON that is \
                     neither a string nor an object with one string field"
                )),
                "{text}"
            );
            assert!(!text.contains("AGENT_KEY"), "{text}");
        } else {
            assert_eq!((status, text), (200, format!("agent alice with key {n}")));
            let served = hc.served();
            assert!(served
                .last()
                .unwrap()
                .target
                .ends_with(&encoded(&hc.key(n))));
        }
    }
    assert_eq!(hc.guests(), 0);
    assert_eq!(hc.issued(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_key_configured_the_request_goes_as_the_guest() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let cfg = yaml(home.path(), "sites: []\n");
    let proxy = Proxy::start(home.path(), &cfg, false).await;
    let (status, _, body) = proxy
        .get(&format!(
            "http://{svc}/handcar/services/learning/objectives?x=1"
        ))
        .await;
    assert_eq!((status, body.as_str()), (200, GUEST));
    let served = hc.served();
    assert_eq!(served.len(), 1);
    assert_eq!(
        served[0].target,
        "/handcar/services/learning/objectives?x=1"
    );
    assert_eq!((hc.guests(), hc.issued()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_again_when_it_changes() {
    let hc = Handcar::new(Duration::from_secs(60), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "agent.key", &format!("{}\n", hc.issue()));
    let cfg = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar\"\n\
             \x20   query_token: {{ param: proxyname, token_file: agent.key }}\n"
        ),
    );
    let proxy = Proxy::start(h, &cfg, true).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    // Replaced by rename, as editors and key tools do.
    write(h, "agent.key.new", &hc.issue());
    std::fs::rename(h.join("agent.key.new"), h.join("agent.key")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = proxy.get(&url).await;
        assert_eq!(status, 200);
        if body == "agent alice with key 2" {
            break;
        }
        assert_eq!(body, "agent alice with key 1");
        assert!(
            Instant::now() < deadline,
            "the new token_file was not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = hc.served().pop().unwrap();
    assert_eq!(
        last.target,
        format!(
            "/handcar/services/learning/objectives?proxyname={}",
            encoded(&hc.key(2))
        )
    );
    assert_eq!(hc.guests(), 0);
}

/// GETs `url` every 50 ms until the answer is not `ok_body` (a 200 served with the old
/// key, which its expiry ends), at most 3 s, and returns that answer.
async fn until_unavailable(addr: SocketAddr, url: &str, ok_body: &str) -> (u16, String, String) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = get(addr, url.to_owned()).await;
        if got.0 != 200 || got.2 != ok_body || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A key script: counts its runs, prints the key from `key` (and, on stderr, a line
/// holding it, which the daemon must not show).
fn key_script(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("get-key");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{d}/runs'\necho \"debug: got $(cat '{d}/key')\" >&2\ncat '{d}/key'\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("runs")).map_or(0, |s| s.lines().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_command_runs_once_per_key_within_its_timeout() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "key", &hc.issue());
    key_script(h);
    write(
        h,
        "fail",
        "#!/bin/sh\necho \"S3cr3t-stderr-9a\" >&2\nexit 3\n",
    );
    let cfg = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, from_command: [./get-key], lifetime: 4s }}\n\
             \x20 - match: \"http://{svc}/handcar/services/slow\"\n\
             \x20   query_token: {{ param: proxyname, from_command: \"sleep 5\", timeout: 300ms }}\n\
             \x20 - match: \"http://{svc}/handcar/services/failing\"\n\
             \x20   query_token: {{ param: proxyname, from_command: [sh, \"{fail}\"] }}\n",
            fail = h.join("fail").display()
        ),
    );
    let proxy = Proxy::start(h, &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    for _ in 0..5 {
        assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    }
    assert_eq!(runs(h), 1);
    let last = hc.served().pop().unwrap();
    assert!(last.target.ends_with(&encoded(&hc.key(1))), "{last:?}");

    let started = Instant::now();
    let (status, code, body) = proxy
        .get(&format!("http://{svc}/handcar/services/slow/x"))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((status, code.as_str()), (502, "query_token_unavailable"));
    assert!(
        body.contains("the command sleep did not finish within 300ms (it was stopped)"),
        "{body}"
    );

    let (status, code, body) = proxy
        .get(&format!("http://{svc}/handcar/services/failing/x"))
        .await;
    assert_eq!((status, code.as_str()), (502, "query_token_unavailable"));
    assert!(
        body.contains(
            "the command sh failed (exit status: 3; 17 bytes on its standard error, not shown \
             as they may hold the key)"
        ),
        "{body}"
    );
    assert!(!body.contains("S3cr3t-stderr-9a"));
    // Neither request reached the service, and no guest ever did.
    assert_eq!(hc.served().len(), 5);
    assert_eq!(hc.guests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_over_tls_with_a_required_client_certificate() {
    let ca = Ca::new("handcar test CA");
    let hc = Handcar::new(Duration::from_secs(4), false);
    let svc = serve_plain(hc.clone()).await;
    let keys = serve_tls(hc.clone(), &ca).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let client = ca.client("alice@mit.example");
    write(h, "ca.pem", &ca.pem);
    write(h, "me.pem", &client.cert_pem);
    write(h, "me.key", &pem("PRIVATE KEY", &client.key_der));
    let cfg = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, from_url: \"https://{keys}{KEYS_PATH}\", lifetime: 4s }}\n\
             \x20 - match: \"https://{keys}/handcar/services/authentication\"\n\
             \x20   tls: {{ client_cert: me.pem, client_key: me.key, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(h, &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    for _ in 0..3 {
        assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    }
    assert_eq!(hc.issued(), 1);
    assert_eq!(
        *hc.peer_certs.lock().unwrap(),
        vec![client.cert_der.clone()]
    );
    let last = hc.served().pop().unwrap();
    assert!(last.target.ends_with(&encoded(&hc.key(1))));

    // Without the certificate the endpoint refuses the handshake: explained, not a guest.
    let home2 = tempfile::tempdir().unwrap();
    write(home2.path(), "ca.pem", &ca.pem);
    let cfg = yaml(
        home2.path(),
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, from_url: \"https://{keys}{KEYS_PATH}\" }}\n\
             \x20 - match: \"https://{keys}/handcar\"\n\
             \x20   tls: {{ ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(home2.path(), &cfg, false).await;
    let (status, code, body) = proxy.get(&url).await;
    assert_eq!(
        (status, code.as_str()),
        (502, "query_token_unavailable"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "the key endpoint https://{keys}{KEYS_PATH} could not be reached"
        )),
        "{body}"
    );
    assert_eq!((hc.issued(), hc.guests()), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_kept_sources_key_and_stops_a_dropped_ones_refresher() {
    let hc = Handcar::new(Duration::from_secs(2), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cfg = config(h, svc, ", lifetime: 2s, refresh_before: 1s");
    let proxy = Proxy::start(h, &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    assert_eq!(proxy.state.keys.refreshing(), 1);

    // Same source, another site added: the key stays.
    let text = std::fs::read_to_string(&cfg).unwrap();
    yaml(
        h,
        &format!("{text}  - match: other.example\n    tls: {{ upgrade: true }}\n"),
    );
    let env = Environment::isolated(h, Some(&cfg));
    let kept = load(&env).unwrap();
    proxy.state.reloaded(&kept);
    proxy.handle.store(Arc::new(kept));
    assert_eq!(proxy.get(&url).await.2, "agent alice with key 1");
    assert_eq!((hc.issued(), proxy.state.keys.refreshing()), (1, 1));

    // The rule gone: its refresher stops, and no key is fetched again.
    yaml(h, "sites: []\n");
    let dropped = load(&env).unwrap();
    proxy.state.reloaded(&dropped);
    proxy.handle.store(Arc::new(dropped));
    assert_eq!(proxy.state.keys.refreshing(), 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hc.issued(), 1);
    assert_eq!(hc.key_requests.load(Ordering::SeqCst), 1);
    let (status, _, body) = proxy.get(&url).await;
    assert_eq!((status, body.as_str()), (200, GUEST));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_file_spares_a_restart_the_fetch() {
    use std::os::unix::fs::PermissionsExt;
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cfg = config(h, svc, ", lifetime: 4s, cache_file: state/agent-key.json");
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    let first = Proxy::start(h, &cfg, false).await;
    assert_eq!(first.get(&url).await.2, "agent alice with key 1");
    let cache = h.join("state/agent-key.json");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A restart: new state, same file.
    let second = Proxy::start(h, &cfg, false).await;
    assert_eq!(second.get(&url).await.2, "agent alice with key 1");
    assert_eq!(hc.issued(), 1);
    // A cache file others can read is refused at load, naming the line.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load(&Environment::isolated(h, Some(&cfg)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "config.yaml:3: sites[0].query_token.cache_file: {} is open to other users (mode 644)",
            cache.display()
        )),
        "{e}"
    );
}

/// The real binary at trace level (debug and below included): keys, the Basic password and a key script's stderr
/// appear in no log line, no error body and no `check`/`explain` output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_password_is_ever_printed() {
    use base64::Engine;
    let hc = Handcar::new(Duration::from_secs(2), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "pw", PASSWORD);
    write(h, "key", &hc.issue());
    key_script(h);
    let cfg = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://{svc}/handcar/services/learning\"\n\
             \x20   query_token: {{ param: proxyname, from_url: \"http://{svc}{KEYS_PATH}\", lifetime: 2s, refresh_before: 1s }}\n\
             \x20 - match: \"http://{svc}/handcar/services/authentication\"\n\
             \x20   basic: {{ username: {USER}, password_file: pw }}\n\
             \x20 - match: \"http://{svc}/handcar/services/repository\"\n\
             \x20   query_token: {{ param: proxyname, from_command: ./get-key }}\n"
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    let cli = |args: &[&str]| {
        let out = crate::process::command(h).args(args).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    };
    let check = cli(&["check", "--config", cfg_s]);
    assert!(
        check.contains(&format!(
            "query_token: proxyname=*** ({cfg_s}:3), from_url http://{svc}{KEYS_PATH}, each key \
             used for 2s and replaced 1s before that; a value the client sends is kept"
        )),
        "{check}"
    );
    let learning = format!("http://{svc}/handcar/services/learning/objectives");
    let repository = format!("http://{svc}/handcar/services/repository/assets");
    let explain = cli(&["explain", "--config", cfg_s, &repository]);
    assert!(
        explain.contains(&format!(
            "query_token: proxyname=*** ({cfg_s}:7), from_command {}/get-key",
            h.display()
        )),
        "{explain}"
    );
    let mut printed = format!("{check}{explain}");

    let mut daemon = crate::process::Daemon::start_in(
        h,
        &["--config", cfg_s],
        &[(
            "RUST_LOG",
            "trace,pingora_proxy=trace,pingora_core=trace,hyper=trace",
        )],
    );
    let addr: SocketAddr = daemon.addr.parse().unwrap();
    let t0 = Instant::now();
    assert_eq!(
        get(addr, learning.clone()).await.2,
        "agent alice with key 2"
    );
    assert_eq!(
        get(addr, repository.clone()).await.2,
        "agent alice with key 1"
    );
    assert_eq!(
        get(addr, format!("{learning}?proxyname=Own-k3y")).await.2,
        GUEST
    );
    hc.down.store(true, Ordering::SeqCst);
    tokio::time::sleep_until((t0 + Duration::from_millis(2100)).into()).await;
    let (status, code, body) = until_unavailable(addr, &learning, "agent alice with key 2").await;
    assert_eq!(
        (status, code.as_str()),
        (502, "query_token_unavailable"),
        "{body}"
    );
    printed.push_str(&body);
    let (_, log) = daemon.stop();
    assert!(log.contains("could not get a query key"), "{log}");
    assert!(
        log.contains("query key fetched"),
        "not at debug level:\n{log}"
    );
    assert!(log.contains("proxyname=***"), "{log}");
    printed.push_str(&log);

    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secrets = vec![
        PASSWORD.to_owned(),
        b64.encode(format!("{USER}:{PASSWORD}")),
        "Own-k3y".to_owned(),
    ];
    for n in 1..=hc.issued() {
        secrets.push(hc.key(n));
        secrets.push(encoded(&hc.key(n)));
        secrets.push(format!("AGENT_KEY{n}"));
    }
    for s in &secrets {
        assert!(
            !printed.contains(s.as_str()),
            "{s:?} was printed:\n{printed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_at_the_key_endpoint_is_explained() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let cfg = config(home.path(), svc, "");
    write(home.path(), "pw", "Wr0ng-pw-c3d");
    let proxy = Proxy::start(home.path(), &cfg, false).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    let (status, code, body) = proxy.get(&url).await;
    assert_eq!((status, code.as_str()), (502, "query_token_unavailable"));
    assert!(
        body.contains(&format!(
            "the key endpoint http://{svc}{KEYS_PATH} answered 401 Unauthorized (it refused \
             the credentials of the site that matches it)"
        )),
        "{body}"
    );
    assert!(!body.contains("Wr0ng-pw-c3d"), "{body}");
    // Asked once (the client's next request within the retry interval is not another try).
    let (status, _, _) = proxy.get(&url).await;
    assert_eq!(status, 502);
    assert_eq!(hc.key_requests.load(Ordering::SeqCst), 1);
    assert_eq!((hc.issued(), hc.served().len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_password_file_works_at_once() {
    let hc = Handcar::new(Duration::from_secs(4), true);
    let svc = serve_plain(hc.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let cfg = config(h, svc, "");
    write(h, "pw", "Wr0ng-pw-c3d");
    let proxy = Proxy::start(h, &cfg, true).await;
    let url = format!("http://{svc}/handcar/services/learning/objectives");
    assert_eq!(proxy.get(&url).await.0, 502);
    // The reloader takes the fixed file; the failure is not held against the new config.
    write(h, "pw", PASSWORD);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = proxy.get(&url).await;
        if status == 200 {
            assert_eq!(body, "agent alice with key 1");
            break;
        }
        assert!(Instant::now() < deadline, "the fixed password was not used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!((hc.issued(), hc.guests()), (1, 0));
}
