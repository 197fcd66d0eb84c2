//! The soak (issue 18): minutes of mixed traffic at 64 connections through the release
//! binary, against loopback servers that model every kind of host authproxy serves, a
//! fault-injecting origin, and a configuration reloaded every few seconds with good and
//! bad edits. It prints its figures and checks, and exits non-zero when a check fails.
//! Run it with `scripts/soak` (builds the release binary first), or
//! `cargo bench --bench soak -- --help`. Loopback only; every server and the daemon are
//! stopped at the end.

#[path = "../tests/it/edl/world.rs"]
mod world;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use world::{Options, World, PASSWORD};

const USAGE: &str = "\
scripts/soak [--minutes M] [--connections N] [--reload-every SECS] [--authproxy PATH]
  --minutes M         length of the traffic phase (default 10; fractions allowed)
  --connections N     concurrent client connections (default 64)
  --reload-every S    seconds between configuration edits (default 5)
  --authproxy P       the binary (default target/release/authproxy)";

struct Args {
    minutes: f64,
    connections: usize,
    reload_every: f64,
    authproxy: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        connections: 64,
        reload_every: 5.0,
        authproxy: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/target/release/authproxy"
        )),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next().unwrap_or_else(|| {
                eprintln!("{arg} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        let number = |v: String| -> f64 {
            v.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {v}\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--bench" => {}
            "--minutes" => a.minutes = number(value()).max(0.05),
            "--connections" => a.connections = number(value()).max(1.0) as usize,
            "--reload-every" => a.reload_every = number(value()).max(0.5),
            "--authproxy" => a.authproxy = PathBuf::from(value()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown argument: {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    a
}

// ---------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------

/// The pattern bytes every origin serves: byte i is `i % 251`.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A plain http origin: `/bytes/N` answers N pattern bytes; every request counts.
async fn plain_origin(listener: TcpListener, hits: Arc<AtomicU64>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_bytes(sock, hits.clone()));
    }
}

/// One connection of an origin that answers `/bytes/N` with N pattern bytes.
async fn serve_bytes<S>(io: S, hits: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: hyper::Request<Incoming>| {
        hits.fetch_add(1, Ordering::Relaxed);
        async move {
            let n = req
                .uri()
                .path()
                .strip_prefix("/bytes/")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                pattern(n),
            ))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

/// Certificates made at start: a CA, a server certificate for 127.0.0.1, a client
/// certificate.
struct Pki {
    ca_pem: String,
    server: rustls::ServerConfig,
    client_cert_pem: String,
    client_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "authproxy soak CA");
    let ca = p.self_signed(&ca_key).unwrap();
    let sk = KeyPair::generate().unwrap();
    let sp = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server_cert = sp.signed_by(&sk, &ca, &ca_key).unwrap();
    let ck = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(DnType::CommonName, "soak client");
    cp.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&ck, &ca, &ca_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::try_from(sk.serialize_der()).unwrap(),
        )
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server,
        client_cert_pem: client_cert.pem(),
        client_key_pem: ck.serialize_pem(),
    }
}

/// An https origin that requires a client certificate on every connection.
async fn mtls_origin(listener: TcpListener, config: rustls::ServerConfig, hits: Arc<AtomicU64>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, hits) = (acceptor.clone(), hits.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(sock).await else {
                return;
            };
            serve_bytes(tls, hits).await;
        });
    }
}

/// The faults the fault origin injects, chosen by the request path.
const FAULTS: &[&str] = &["reset", "stall", "trickle", "garbage", "flood", "close"];

/// An origin that misbehaves on purpose, one way per path:
/// `/reset` resets the connection mid-body, `/stall` never answers, `/trickle` sends
/// its body a few bytes at a time, `/garbage` sends a status line that is not HTTP,
/// `/flood` sends an endless header block, `/close` closes before any answer.
async fn fault_origin(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut have = 0;
            let head_end = loop {
                let Ok(n) = sock.read(&mut buf[have..]).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                have += n;
                if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    break i;
                }
                if have == buf.len() {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let fault = path.trim_start_matches('/');
            match fault {
                "reset" => {
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                        .await;
                    let _ = sock.write_all(&pattern(3000)).await;
                    // A zero linger does not block on drop: it makes the close a reset.
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    drop(sock);
                }
                "stall" => {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                }
                "trickle" => {
                    let body = pattern(400);
                    let _ = sock
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n")
                        .await;
                    for chunk in body.chunks(20) {
                        if sock.write_all(chunk).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                "garbage" => {
                    let _ = sock
                        .write_all(b"HTTP/1.1 OK-ish \x01\x02garbage\r\n\r\n")
                        .await;
                }
                "flood" => {
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\n").await;
                    let line = format!("X-Flood: {}\r\n", "f".repeat(100));
                    for _ in 0..20_000 {
                        if sock.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
                _ => drop(sock),
            }
        });
    }
}

/// A Handcar-like service (seed 004): an agentkeys endpoint behind Basic issues keys that
/// last [`KEY_LIFETIME`]; the learning service serves the data only for an unexpired key
/// in `proxyname`, and otherwise answers as the guest `MC3GUE$T`.
#[derive(Default)]
struct Handcar {
    keys: Mutex<Vec<(String, Instant)>>,
    issued: AtomicU64,
    guests: AtomicU64,
}

const KEY_LIFETIME: Duration = Duration::from_secs(4);
const HANDCAR_USER: &str = "alice";
const HANDCAR_PASSWORD: &str = "handcar-Pw-7z";
/// What the learning service answers a guest: not the data.
const GUEST: &[u8] = b"MC3GUE$T";

async fn handcar_origin(listener: TcpListener, hc: Arc<Handcar>, keys: bool) {
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{HANDCAR_USER}:{HANDCAR_PASSWORD}"))
    );
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let (hc, basic) = (hc.clone(), basic.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let (hc, basic) = (hc.clone(), basic.clone());
                async move {
                    let body = if keys {
                        let authorized = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == basic.as_bytes());
                        if !authorized {
                            let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"no")));
                            *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                            return Ok::<_, std::convert::Infallible>(r);
                        }
                        let n = hc.issued.fetch_add(1, Ordering::Relaxed);
                        // Keys hold the characters that must be encoded once: + / = %.
                        let key = format!("AGENT_KEY{n}x+Q/z=%2BIX");
                        hc.keys
                            .lock()
                            .unwrap()
                            .push((key.clone(), Instant::now() + KEY_LIFETIME));
                        Bytes::from(key)
                    } else {
                        let key = req.uri().query().and_then(|q| {
                            url::form_urlencoded::parse(q.as_bytes())
                                .find(|(k, _)| k == "proxyname")
                                .map(|(_, v)| v.into_owned())
                        });
                        let now = Instant::now();
                        let valid = key.is_some_and(|k| {
                            let mut keys = hc.keys.lock().unwrap();
                            keys.retain(|(_, until)| *until > now);
                            keys.iter().any(|(issued, _)| *issued == k)
                        });
                        if valid {
                            Bytes::from(pattern(1500))
                        } else {
                            hc.guests.fetch_add(1, Ordering::Relaxed);
                            Bytes::from_static(GUEST)
                        }
                    };
                    Ok(hyper::Response::new(Full::new(body)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(sock), svc)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------

struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything the configuration names, written into the soak's HOME.
struct Setup {
    home: PathBuf,
    config: PathBuf,
    jar: PathBuf,
    good: Vec<String>,
    bad: String,
}

struct Ports {
    mtls: u16,
    fault: u16,
    handcar: u16,
    handcar_keys: u16,
}

fn setup(home: &Path, world: &World, pki: &Pki, ports: &Ports) -> Setup {
    let netrc = world.netrc(home);
    let edl_ca = world.write_ca(home);
    let write = |name: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = home.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    };
    let ca = write("soak-ca.pem", &pki.ca_pem, 0o644);
    let cert = write("client.pem", &pki.client_cert_pem, 0o644);
    let key = write("client.key", &pki.client_key_pem, 0o600);
    let handcar_pw = write("handcar.pw", HANDCAR_PASSWORD, 0o600);
    let jar = home.join("jar.txt");
    let dir = home.join(".config").join("authproxy");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    let base = |marker: &str| {
        format!(
            "cookie_jar: \"{jar}\"\nnetrc: \"{netrc}\"\nrc_files: []\n\
             timeouts: {{ connect: 5s, first_byte: 3s, idle: 5s }}\n\
             intercept: [\"127.0.0.1:{data_tls}\"]\n\
             sites:\n\
             \x20 - match: \"localhost:{login}\"\n    tls: {{ ca: \"{edl_ca}\" }}\n\
             \x20 - match: \"127.0.0.1:{data_tls}\"\n    tls: {{ ca: \"{edl_ca}\" }}\n\
             \x20 - match: \"127.0.0.1:{mtls}\"\n    tls: {{ upgrade: true, ca: \"{ca}\", client_cert: \"{cert}\", client_key: \"{key}\" }}\n\
             \x20   headers: {{ X-Soak-Edit: \"{marker}\" }}\n\
             \x20 - match: \"127.0.0.1:{fault}\"\n    headers: {{ X-Soak-Fault: \"yes\" }}\n\
             \x20 - match: \"127.0.0.1:{handcar}\"\n    query_token: {{ param: proxyname, from_url: \"http://127.0.0.1:{keys}/agentkeys/alice\", lifetime: 4s, refresh_before: 1s }}\n\
             \x20 - match: \"127.0.0.1:{keys}\"\n    basic: {{ username: {user}, password_file: \"{handcar_pw}\" }}\n",
            jar = jar.display(),
            netrc = netrc.display(),
            login = world.login_port(),
            data_tls = world.data_tls_port(),
            mtls = ports.mtls,
            fault = ports.fault,
            handcar = ports.handcar,
            keys = ports.handcar_keys,
            user = HANDCAR_USER,
            handcar_pw = handcar_pw.display(),
            edl_ca = edl_ca.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        )
    };
    let good = vec![base("one"), base("two")];
    // A bad edit: a site without `match`, and an unknown key. The reload must be refused
    // whole and the old configuration keep serving.
    let bad = format!(
        "{}  - tls: {{ upgrade: yes-please }}\nnot_a_key: 1\n",
        base("bad")
    );
    std::fs::write(&config, &good[0]).unwrap();
    Setup {
        home: home.to_path_buf(),
        config,
        jar,
        good,
        bad,
    }
}

/// The binary with the soak's environment: its own HOME and XDG directories.
fn authproxy(binary: &Path, setup: &Setup) -> Command {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env("HOME", &setup.home)
        .env("XDG_CONFIG_HOME", setup.home.join(".config"))
        .env("XDG_STATE_HOME", setup.home.join(".state"))
        .env("XDG_DATA_HOME", setup.home.join(".data"))
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .current_dir(&setup.home);
    cmd
}

/// `authproxy ca`: the interception CA's certificate, which the https clients trust.
fn interception_ca(binary: &Path, setup: &Setup) -> PathBuf {
    let out = authproxy(binary, setup)
        .arg("ca")
        .arg("--config")
        .arg(&setup.config)
        .output()
        .expect("authproxy ca runs");
    assert!(
        out.status.success(),
        "authproxy ca: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(
        text.lines()
            .next()
            .expect("authproxy ca prints a path")
            .trim(),
    )
}

fn start_daemon(binary: &Path, setup: &Setup) -> Daemon {
    let port = free_port();
    let log = setup.home.join("daemon.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = authproxy(binary, setup)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--config")
        .arg(&setup.config)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("the authproxy binary runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "authproxy did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, port, log }
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plain,
    Dance,
    Mtls,
    Tunnel,
    Intercepted,
    Handcar,
    Fault,
}

/// What became of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// The expected status and exactly the expected bytes.
    Right,
    /// An explained error response (`X-Authproxy-Error`), from a fault.
    Explained,
    /// The response started and then ended short of its length: detectable truncation.
    Truncated,
    /// A response, but not the one expected (status or bytes).
    Wrong,
    /// No response at all: the connection closed before a status, or nothing within
    /// the client's deadline.
    Unanswered,
}

#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<(Kind, Outcome), u64>>,
    examples: Mutex<Vec<String>>,
    latency_ms: Mutex<Vec<f64>>,
}

impl Tally {
    fn add(&self, kind: Kind, outcome: Outcome, detail: impl FnOnce() -> String, ms: f64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry((kind, outcome))
            .or_default() += 1;
        if matches!(outcome, Outcome::Wrong | Outcome::Unanswered) {
            let mut ex = self.examples.lock().unwrap();
            if ex.len() < 20 {
                ex.push(format!("{kind:?}: {}", detail()));
            }
        }
        if outcome == Outcome::Right {
            self.latency_ms.lock().unwrap().push(ms);
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn handshake<S>(io: S) -> Option<Sender>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One request on `sender`, its outcome judged against `expect` (status, body length).
async fn one(sender: &mut Sender, url: &str, expect: Option<(u16, usize)>) -> (Outcome, String) {
    if sender.ready().await.is_err() {
        return (
            Outcome::Unanswered,
            "connection closed before the request".into(),
        );
    }
    let req = hyper::Request::get(url)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => return (Outcome::Unanswered, format!("{url}: {e}")),
    };
    let status = resp.status().as_u16();
    let explained = resp.headers().contains_key("x-authproxy-error");
    let length: Option<usize> = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return (
                Outcome::Truncated,
                format!("{url}: {status}, body ended early: {e}"),
            )
        }
    };
    if length.is_some_and(|l| l != body.len()) {
        return (Outcome::Truncated, format!("{url}: short body"));
    }
    match expect {
        Some((s, n)) if s == status && body.len() == n && body[..] == pattern(n)[..] => {
            (Outcome::Right, String::new())
        }
        _ if explained && status >= 400 => (Outcome::Explained, String::new()),
        _ => (
            Outcome::Wrong,
            format!("{url}: {status} with {} bytes", body.len()),
        ),
    }
}

/// A `CONNECT` to `authority` through authproxy at `proxy`: the socket once the answer
/// was `200`, or the outcome to count.
async fn open_connect(proxy: u16, authority: &str) -> Result<TcpStream, (Outcome, String)> {
    let Ok(mut sock) = TcpStream::connect(("127.0.0.1", proxy)).await else {
        return Err((Outcome::Unanswered, "cannot connect to authproxy".into()));
    };
    let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    if sock.write_all(head.as_bytes()).await.is_err() {
        return Err((Outcome::Unanswered, "CONNECT not sent".into()));
    }
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match sock.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return Err((Outcome::Unanswered, "no answer to CONNECT".into())),
        }
        if buf.len() > 16 * 1024 {
            return Err((Outcome::Wrong, "CONNECT answer too long".into()));
        }
    }
    if !buf.starts_with(b"HTTP/1.1 200") {
        let start = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
        return Err((Outcome::Wrong, format!("CONNECT: {start}")));
    }
    Ok(sock)
}

/// One origin-form GET of `path` on `io` (inside a tunnel, as a client sends it), judged
/// against `n` pattern bytes.
async fn get_inside<S>(
    io: S,
    authority: &str,
    path: &str,
    n: usize,
    what: &str,
) -> (Outcome, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(mut sender) = handshake(io).await else {
        return (Outcome::Unanswered, format!("{what}: no HTTP inside"));
    };
    if sender.ready().await.is_err() {
        return (Outcome::Unanswered, format!("{what}: closed"));
    }
    let req = hyper::Request::get(path)
        .header(http::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .unwrap();
    match sender.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            match resp.into_body().collect().await.map(|b| b.to_bytes()) {
                Ok(b) if status == 200 && b[..] == pattern(n)[..] => {
                    (Outcome::Right, String::new())
                }
                Ok(b) => (
                    Outcome::Wrong,
                    format!("{what}: {status}, {} bytes", b.len()),
                ),
                Err(e) => (Outcome::Truncated, format!("{what} body: {e}")),
            }
        }
        Err(e) => (Outcome::Unanswered, format!("{what} request: {e}")),
    }
}

/// A `CONNECT` tunnel to `authority`, then one request inside it.
async fn tunnel(proxy: u16, authority: &str, path: &str, n: usize) -> (Outcome, String) {
    match open_connect(proxy, authority).await {
        Ok(sock) => get_inside(sock, authority, path, n, "tunnel").await,
        Err(outcome) => outcome,
    }
}

/// A CONNECT to the https data server, which `intercept` names: TLS with authproxy's
/// minted leaf (the client trusts only the interception CA), then one request that runs
/// through the login dance like a plain-http one.
async fn intercepted(t: &Targets, path: &str) -> (Outcome, String) {
    let authority = format!("127.0.0.1:{}", t.data_tls);
    let sock = match open_connect(t.proxy, &authority).await {
        Ok(sock) => sock,
        Err(outcome) => return outcome,
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    match t.tls.connect(name, sock).await {
        Ok(tls) => get_inside(tls, &authority, path, t.dance_size, "intercepted").await,
        Err(e) => (Outcome::Wrong, format!("intercepted TLS: {e}")),
    }
}

struct Targets {
    proxy: u16,
    data_tls: u16,
    handcar: u16,
    /// Trusts the interception CA only.
    tls: tokio_rustls::TlsConnector,
    plain: u16,
    mtls: u16,
    fault: u16,
    dance_url_base: String,
    dance_size: usize,
}

/// One client connection's worth of traffic until `stop`: a mix of every kind, each
/// judged. A connection that an answer closed is replaced by a new one.
async fn client(id: usize, t: Arc<Targets>, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender: Option<Sender> = None;
    let mut n: usize = id;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        // Weights out of 24: plain 8, dance 4, mTLS 3, tunnel 2, intercepted https 3,
        // Handcar 2, fault 2.
        let kind = match n % 24 {
            0..=7 => Kind::Plain,
            8..=11 => Kind::Dance,
            12..=14 => Kind::Mtls,
            15 | 16 => Kind::Tunnel,
            17..=19 => Kind::Intercepted,
            20 | 21 => Kind::Handcar,
            _ => Kind::Fault,
        };
        let started = Instant::now();
        let deadline = Duration::from_secs(30);
        let (outcome, detail) = if kind == Kind::Intercepted {
            let path = format!("/soak/secure-{}.nc", n % 5);
            tokio::time::timeout(deadline, intercepted(&t, &path))
                .await
                .unwrap_or((Outcome::Unanswered, "intercepted: no answer in 30 s".into()))
        } else if kind == Kind::Tunnel {
            let size = 1000 + (n % 7) * 1000;
            tokio::time::timeout(
                deadline,
                tunnel(
                    t.proxy,
                    &format!("127.0.0.1:{}", t.plain),
                    &format!("/bytes/{size}"),
                    size,
                ),
            )
            .await
            .unwrap_or((Outcome::Unanswered, "tunnel: no answer in 30 s".into()))
        } else {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                let Ok(sock) = TcpStream::connect(("127.0.0.1", t.proxy)).await else {
                    tally.add(kind, Outcome::Unanswered, || "connect refused".into(), 0.0);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                sender = handshake(sock).await;
            }
            let Some(s) = sender.as_mut() else {
                tally.add(kind, Outcome::Unanswered, || "handshake failed".into(), 0.0);
                continue;
            };
            let (url, expect) = match kind {
                Kind::Plain => {
                    let size = [10, 1000, 20_000, 200_000][n % 4];
                    (
                        format!("http://127.0.0.1:{}/bytes/{size}", t.plain),
                        Some((200, size)),
                    )
                }
                Kind::Dance => (
                    format!("{}{}.nc", t.dance_url_base, n % 5),
                    Some((200, t.dance_size)),
                ),
                Kind::Handcar => (
                    format!(
                        "http://127.0.0.1:{}/handcar/services/learning/objectives/{}",
                        t.handcar,
                        n % 9
                    ),
                    Some((200, 1500)),
                ),
                Kind::Mtls => {
                    let size = 500 + (n % 3) * 5000;
                    (
                        format!("http://127.0.0.1:{}/bytes/{size}", t.mtls),
                        Some((200, size)),
                    )
                }
                _ => {
                    // n is 22 or 23 modulo 24 here: step through the faults by n / 24.
                    let fault = FAULTS[(n / 24 + n % 2) % FAULTS.len()];
                    // A trickled body is slow, not broken: it must arrive whole.
                    let expect = (fault == "trickle").then_some((200, 400));
                    (format!("http://127.0.0.1:{}/{fault}", t.fault), expect)
                }
            };
            let r = tokio::time::timeout(deadline, one(s, &url, expect))
                .await
                .unwrap_or((Outcome::Unanswered, format!("{url}: no answer in 30 s")));
            if r.0 != Outcome::Right {
                // After a fault or an error the connection may be gone; start afresh.
                sender = None;
            }
            r
        };
        // A fault may legitimately end in a detectable truncation or an explained error.
        let outcome = match (kind, outcome) {
            (Kind::Fault, Outcome::Wrong) => Outcome::Wrong,
            (_, o) => o,
        };
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tally.add(kind, outcome, || detail, ms);
    }
}

// ---------------------------------------------------------------------------------------
// Watchers
// ---------------------------------------------------------------------------------------

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[derive(Default)]
struct JarWatch {
    reads: AtomicU64,
    bad: Mutex<Vec<String>>,
    max_cookies: AtomicU64,
}

/// Reads the jar file over and over while the daemon writes it: every read must be a
/// whole Netscape cookie file (a header, no malformed line).
async fn watch_jar(path: PathBuf, watch: Arc<JarWatch>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(data) = std::fs::read(&path) {
            let parsed = authproxy::session::netscape::parse(&data);
            watch.reads.fetch_add(1, Ordering::Relaxed);
            watch
                .max_cookies
                .fetch_max(parsed.cookies.len() as u64, Ordering::Relaxed);
            if !parsed.header || !parsed.problems.is_empty() || parsed.binary_at.is_some() {
                let mut bad = watch.bad.lock().unwrap();
                if bad.len() < 5 {
                    bad.push(format!(
                        "{} bytes, header {}, problems {:?}",
                        data.len(),
                        parsed.header,
                        parsed.problems
                    ));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Edits the configuration every `every`: good and bad edits in turn, each written by
/// rename so the daemon never reads half a file. Returns (good, bad) edits made.
async fn edit_config(setup: Arc<Setup>, every: Duration, stop: Arc<AtomicBool>) -> (u64, u64) {
    let (mut good, mut bad) = (0u64, 0u64);
    let mut i = 0usize;
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let text = if i.is_multiple_of(2) {
            bad += 1;
            setup.bad.clone()
        } else {
            good += 1;
            setup.good[(i / 2) % 2].clone()
        };
        let tmp = setup.config.with_extension("yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &setup.config).unwrap();
        i += 1;
    }
    // End on a good configuration.
    std::fs::write(&setup.config, &setup.good[0]).unwrap();
    (good, bad)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    if !a.authproxy.exists() {
        eprintln!(
            "{} does not exist: build it with `cargo build --release` (scripts/soak does)",
            a.authproxy.display()
        );
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let dance_size = 50_000usize;
    let world = World::start(Options {
        size: dance_size as u64,
        session_lifetime: 3600,
        ..Options::default()
    })
    .await;
    let pki = pki();
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    let (plain, mtls, fault) = (bind().await, bind().await, bind().await);
    let (handcar, handcar_keys) = (bind().await, bind().await);
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let (plain_port, mtls_port, fault_port) = (port(&plain), port(&mtls), port(&fault));
    let ports = Ports {
        mtls: mtls_port,
        fault: fault_port,
        handcar: port(&handcar),
        handcar_keys: port(&handcar_keys),
    };
    let hc = Arc::new(Handcar::default());
    tokio::spawn(handcar_origin(handcar, hc.clone(), false));
    tokio::spawn(handcar_origin(handcar_keys, hc.clone(), true));
    let plain_hits = Arc::new(AtomicU64::new(0));
    let mtls_hits = Arc::new(AtomicU64::new(0));
    tokio::spawn(plain_origin(plain, plain_hits.clone()));
    tokio::spawn(mtls_origin(mtls, pki.server.clone(), mtls_hits.clone()));
    tokio::spawn(fault_origin(fault));
    let setup = Arc::new(setup(&home, &world, &pki, &ports));
    let ca_path = interception_ca(&a.authproxy, &setup);
    let tls = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read_to_string(&ca_path).unwrap();
        let der = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            pem.lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
        roots
            .add(rustls::pki_types::CertificateDer::from(der))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    };
    let ca_key = std::fs::read_to_string(ca_path.with_file_name("ca-key.pem")).unwrap_or_default();
    let daemon = start_daemon(&a.authproxy, &setup);
    let pid = daemon.child.id();
    let baseline_fds = fds(pid);
    let baseline_rss = rss_kib(pid);
    println!(
        "authproxy pid {pid} on 127.0.0.1:{}; {} connections for {} min; config edit every {} s",
        daemon.port, a.connections, a.minutes, a.reload_every
    );

    let targets = Arc::new(Targets {
        proxy: daemon.port,
        data_tls: world.data_tls_port(),
        handcar: ports.handcar,
        tls,
        plain: plain_port,
        mtls: mtls_port,
        fault: fault_port,
        dance_url_base: world.data_url("/soak/granule-"),
        dance_size,
    });
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let jar_watch = Arc::new(JarWatch::default());
    let mut clients = Vec::new();
    for id in 0..a.connections {
        clients.push(tokio::spawn(client(
            id,
            targets.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }
    let jar_task = tokio::spawn(watch_jar(
        setup.jar.clone(),
        jar_watch.clone(),
        stop.clone(),
    ));
    let editor = tokio::spawn(edit_config(
        setup.clone(),
        Duration::from_secs_f64(a.reload_every),
        stop.clone(),
    ));

    // Sample RSS and fds every second; expire the data sessions every 30 s so the dance
    // runs again (logins grow), and check the world's request log for leaked
    // credentials before emptying it.
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let warm = total / 5;
    let started = Instant::now();
    let mut rss_after_warm = 0u64;
    let mut rss_max_late = 0u64;
    let mut rss_samples = Vec::new();
    let mut leaks = 0usize;
    let mut expiries = 0u64;
    let mut last_expiry = Instant::now();
    let mut last_print = Instant::now();
    while started.elapsed() < total {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid);
        rss_samples.push(rss);
        if rss_after_warm == 0 && started.elapsed() >= warm {
            rss_after_warm = rss;
        }
        if rss_after_warm != 0 {
            rss_max_late = rss_max_late.max(rss);
        }
        if last_expiry.elapsed() >= Duration::from_secs(30) {
            // Every time the data sessions end (the dance runs again, on the login
            // session); every other time the login sessions too (a password login).
            world.expire_sessions();
            if expiries % 2 == 1 {
                world.expire_login_sessions();
            }
            expiries += 1;
            last_expiry = Instant::now();
        }
        leaks += world.credential_leaks().len();
        world.clear_hits();
        if last_print.elapsed() >= Duration::from_secs(30) {
            let done: u64 = tally.counts.lock().unwrap().values().sum();
            println!(
                "  {:>4.0} s: {done} requests, RSS {} KiB, {} fds, {} logins",
                started.elapsed().as_secs_f64(),
                rss,
                fds(pid),
                world.logins()
            );
            last_print = Instant::now();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let (good_edits, bad_edits) = editor.await.unwrap();
    let _ = jar_task.await;
    let traffic_secs = started.elapsed().as_secs_f64();

    // Client connections are closed now; the daemon's pooled upstream connections idle
    // out after 60 s. Wait for the descriptors to come back to the baseline.
    let fd_deadline = Instant::now() + Duration::from_secs(90);
    let mut end_fds = fds(pid);
    while end_fds > baseline_fds + 2 && Instant::now() < fd_deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        end_fds = fds(pid);
    }

    let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
    let panics = log.matches("panicked").count();
    let reloads_ok = log.matches("configuration reloaded").count();
    let reloads_refused = log.matches("configuration reload failed").count();
    let secrets = [
        PASSWORD.to_owned(),
        HANDCAR_PASSWORD.to_owned(),
        "AGENT_KEY".to_owned(),
        ca_key.lines().nth(1).unwrap_or("").to_owned(),
        pki.client_key_pem.lines().nth(1).unwrap_or("").to_owned(),
    ];
    let secret_hits: usize = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| log.matches(s.as_str()).count())
        .sum();

    // ----- Report -----
    let counts = tally.counts.lock().unwrap().clone();
    let total_requests: u64 = counts.values().sum();
    println!();
    println!(
        "## Soak: {traffic_secs:.0} s of traffic, {} connections",
        a.connections
    );
    println!();
    println!("| kind | right | explained | truncated | wrong | unanswered |");
    println!("|---|---:|---:|---:|---:|---:|");
    for kind in [
        Kind::Plain,
        Kind::Dance,
        Kind::Mtls,
        Kind::Tunnel,
        Kind::Intercepted,
        Kind::Handcar,
        Kind::Fault,
    ] {
        let c = |o| counts.get(&(kind, o)).copied().unwrap_or(0);
        println!(
            "| {kind:?} | {} | {} | {} | {} | {} |",
            c(Outcome::Right),
            c(Outcome::Explained),
            c(Outcome::Truncated),
            c(Outcome::Wrong),
            c(Outcome::Unanswered)
        );
    }
    let mut lat = tally.latency_ms.lock().unwrap().clone();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!();
    println!(
        "requests {total_requests} ({:.0}/s); latency of right answers p50 {:.2} ms, p99 {:.2} ms",
        total_requests as f64 / traffic_secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99)
    );
    println!(
        "logins {}, code exchanges {} (sessions expired {expiries} times); origin hits: plain {}, mTLS {}",
        world.logins(),
        world.exchanges(),
        plain_hits.load(Ordering::Relaxed),
        mtls_hits.load(Ordering::Relaxed)
    );
    // Growth is the last minute's median RSS over the median of the minute after the
    // warm-up: a leak grows it, the allocator's moment-to-moment swings do not. The peak
    // is printed beside it.
    let median = |xs: &[u64]| -> u64 {
        let mut v = xs.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let w = (warm.as_secs() as usize).min(rss_samples.len());
    let window = 60.min(rss_samples.len().saturating_sub(w).max(1));
    let rss_warm = median(&rss_samples[w..(w + window).min(rss_samples.len())]);
    let rss_end = median(&rss_samples[rss_samples.len().saturating_sub(window)..]);
    let growth = if rss_warm > 0 {
        (rss_end as f64 / rss_warm as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    let peak_growth = if rss_after_warm > 0 {
        (rss_max_late as f64 / rss_after_warm as f64 - 1.0) * 100.0
    } else {
        0.0
    };
    println!(
        "RSS: {baseline_rss} KiB at start; median {rss_warm} KiB in the minute after warm-up, \
         {rss_end} KiB in the last minute ({growth:+.1} %); peak after warm-up {rss_max_late} KiB \
         ({peak_growth:+.1} % over the sample at its end)"
    );
    println!("fds: {baseline_fds} at start, {end_fds} after the traffic stopped");
    println!(
        "jar: {} concurrent reads, {} not a whole cookie file, up to {} cookies",
        jar_watch.reads.load(Ordering::Relaxed),
        jar_watch.bad.lock().unwrap().len(),
        jar_watch.max_cookies.load(Ordering::Relaxed)
    );
    println!(
        "config edits: {good_edits} good, {bad_edits} bad; log: {reloads_ok} reloaded, {reloads_refused} refused"
    );
    let key_fetches = hc.issued.load(Ordering::Relaxed);
    let handcar_requests: u64 = counts
        .iter()
        .filter(|((k, _), _)| *k == Kind::Handcar)
        .map(|(_, n)| n)
        .sum();
    // A 4 s key renewed 1 s before it ends: one fetch about every 3 s, plus the fetches
    // a reload that changes the site may cause.
    let key_budget = (traffic_secs / 3.0).ceil() as u64 + 2 + good_edits;
    println!(
        "Handcar: {handcar_requests} requests, {key_fetches} key fetches (budget {key_budget}), {} served as the guest",
        hc.guests.load(Ordering::Relaxed)
    );
    for ex in tally.examples.lock().unwrap().iter() {
        println!("  example: {ex}");
    }
    for bad in jar_watch.bad.lock().unwrap().iter() {
        println!("  jar read: {bad}");
    }

    let unanswered: u64 = counts
        .iter()
        .filter(|((_, o), _)| *o == Outcome::Unanswered)
        .map(|(_, n)| n)
        .sum();
    let wrong: u64 = counts
        .iter()
        .filter(|((_, o), _)| *o == Outcome::Wrong)
        .map(|(_, n)| n)
        .sum();
    let non_fault_short: u64 = counts
        .iter()
        .filter(|((k, o), _)| *k != Kind::Fault && *o != Outcome::Right)
        .map(|(_, n)| n)
        .sum();
    let checks = [
        ("zero panics", panics == 0, format!("{panics}")),
        (
            "every request answered",
            unanswered == 0 && wrong == 0,
            format!("{unanswered} unanswered, {wrong} wrong"),
        ),
        (
            "every request to a healthy host right",
            non_fault_short == 0,
            format!("{non_fault_short} not right"),
        ),
        (
            "RSS growth after warm-up <= 10 %",
            growth <= 10.0,
            format!("{growth:+.1} %"),
        ),
        (
            "fds back to baseline",
            end_fds <= baseline_fds + 2,
            format!("{baseline_fds} -> {end_fds}"),
        ),
        (
            "jar a valid Netscape file at every read",
            jar_watch.bad.lock().unwrap().is_empty() && jar_watch.reads.load(Ordering::Relaxed) > 0,
            format!("{} reads", jar_watch.reads.load(Ordering::Relaxed)),
        ),
        (
            "bad edits refused, good ones taken",
            reloads_refused as u64 >= bad_edits.saturating_sub(1) && reloads_ok > 0,
            format!("{reloads_ok} reloaded, {reloads_refused} refused"),
        ),
        (
            "no secret in the log",
            secret_hits == 0,
            format!("{secret_hits}"),
        ),
        (
            "Handcar keys refreshed, not fetched per request; never the guest",
            key_fetches <= key_budget && hc.guests.load(Ordering::Relaxed) == 0 && key_fetches > 0,
            format!("{key_fetches} fetches for {handcar_requests} requests"),
        ),
        (
            "no credential at a host it does not belong to",
            leaks == 0,
            format!("{leaks}"),
        ),
    ];
    println!();
    println!("| check | result | figure |");
    println!("|---|---|---|");
    let mut failed = 0;
    for (name, ok, figure) in &checks {
        println!(
            "| {name} | {} | {figure} |",
            if *ok { "pass" } else { "FAIL" }
        );
        failed += usize::from(!ok);
    }
    drop(daemon);
    if failed > 0 {
        std::process::exit(1);
    }
}
