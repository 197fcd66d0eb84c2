//! Loopback servers and clients for the integration tests. Everything binds 127.0.0.1:0.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use authproxy::config::Snapshot;
use authproxy::{Daemon, Tuning};

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The byte at offset `i` of every generated body.
pub fn pattern(i: u64) -> u8 {
    (i % 251) as u8
}

pub fn pattern_bytes(len: usize) -> Vec<u8> {
    (0..len as u64).map(pattern).collect()
}

/// A body of `remaining` pattern bytes, produced 64 KiB at a time.
pub struct PatternBody {
    offset: u64,
    remaining: u64,
}

impl PatternBody {
    pub fn new(len: u64) -> Self {
        Self {
            offset: 0,
            remaining: len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        // Chunks start at a multiple of the pattern's period, so one precomputed
        // block serves every chunk without copying.
        static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        let block = BLOCK.get_or_init(|| Bytes::from(pattern_bytes(251 * 256)));
        let n = self.remaining.min(block.len() as u64);
        self.offset += n;
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(block.slice(..n as usize)))))
    }
}

/// What an origin saw.
#[derive(Default)]
pub struct Seen {
    pub connections: AtomicUsize,
    pub requests: Mutex<Vec<SeenRequest>>,
}

#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
}

/// A hyper HTTP/1.1 origin on 127.0.0.1:0.
///
/// Routes: `/echo` streams the request body back; `/bytes/N` sends N pattern bytes with
/// Content-Length; `/chunked/N` the same without a length; `/slow` answers after 30 s;
/// anything else answers `ok`.
pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    _stop: watch::Sender<bool>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (stop, mut stopped) = watch::channel(false);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, seen.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Origin {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.requests.lock().unwrap().clone()
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }
}

async fn handle(req: Request<Incoming>, seen: Arc<Seen>) -> Result<Response<BoxBody>, Infallible> {
    seen.requests.lock().unwrap().push(SeenRequest {
        method: req.method().to_string(),
        target: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_owned();
    let resp = if path == "/echo" {
        let body = req.into_body().map_err(std::io::Error::other).boxed();
        Response::new(body)
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap();
        let mut r = Response::new(
            PatternBody {
                offset: 0,
                remaining: n,
            }
            .boxed(),
        );
        r.headers_mut()
            .insert(http::header::CONTENT_LENGTH, n.into());
        r
    } else if let Some(n) = path.strip_prefix("/chunked/") {
        let n: u64 = n.parse().unwrap();
        Response::new(
            PatternBody {
                offset: 0,
                remaining: n,
            }
            .boxed(),
        )
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Response::new(full("late"))
    } else {
        Response::new(full("ok"))
    };
    Ok(resp)
}

pub fn full(s: impl Into<Bytes>) -> BoxBody {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A raw TCP origin that answers every connection with `reply` and closes.
pub async fn raw_origin(reply: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(reply).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

/// A port on 127.0.0.1 with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The daemon, in-process, on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(snapshot: Snapshot) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let daemon = Daemon::new(snapshot.into_handle(), &Tuning::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(daemon.run(vec![listener], rx, Duration::from_secs(2)));
        Proxy { addr, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An HTTP/1.1 client connection to the proxy (hyper), sending absolute-form targets.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<BoxBody>,
}

impl Client {
    pub async fn connect(proxy: SocketAddr) -> Client {
        let sock = TcpStream::connect(proxy).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> Response<Incoming> {
        self.sender.ready().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req))
            .await
            .expect("response within 30 s")
            .unwrap()
    }

    pub async fn get(&mut self, url: &str) -> (Response<()>, Bytes) {
        let req = Request::get(url).body(full("")).unwrap();
        let resp = self.send(req).await;
        body_of(resp).await
    }
}

pub async fn body_of(resp: Response<Incoming>) -> (Response<()>, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(60), body.collect())
        .await
        .expect("body within 60 s")
        .unwrap()
        .to_bytes();
    (Response::from_parts(parts, ()), bytes)
}

/// Sends raw bytes to `addr` and reads until the server closes (bounded).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an executable is on PATH.
pub fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Test TLS material generated at test time: a CA and a server certificate for
/// 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub server_key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "authproxy test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server = params.signed_by(&server_key, &ca, &ca_key).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().to_vec(),
            server_chain: vec![server.der().clone()],
            server_key: rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        }
    }

    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
        .unwrap();
        Arc::new(cfg)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone().into()).unwrap();
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

/// A TLS origin (hyper over tokio-rustls) with the same routes as [`Origin`].
pub async fn tls_origin(pki: &TestPki) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let seen = seen2.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(sock).await else {
                    return;
                };
                let svc = service_fn(move |req| handle(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}
