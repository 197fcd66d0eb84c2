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
/// Routes: `/challenge...` answers 401 with a Basic challenge unless the request carries
/// an `Authorization`; `/echo` streams the request body back; `/bytes/N` sends N pattern bytes with
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
    let resp = if path.starts_with("/challenge") && !req.headers().contains_key("authorization") {
        // Asks for Basic, as a login host does; any credential is let in (tests check
        // which one arrived).
        Response::builder()
            .status(401)
            .header("www-authenticate", "Basic realm=\"test\"")
            .body(full("who are you?"))
            .unwrap()
    } else if path == "/set-cookie" {
        Response::builder()
            .header(
                "set-cookie",
                "daemon_session=J4r-V4lue; Path=/; Max-Age=3600",
            )
            .body(full("ok"))
            .unwrap()
    } else if path == "/echo" {
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
        Proxy::start_with_state(snapshot, Arc::default()).await
    }

    /// The daemon with the given cookie jar and logins in flight.
    pub async fn start_with_state(
        snapshot: Snapshot,
        state: Arc<authproxy::session::State>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let daemon = Daemon::with_state(snapshot.into_handle(), state, &Tuning::default());
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

// ---------------------------------------------------------------------------------------
// For the credentials tests: a CA that issues server and client certificates, a TLS
// origin that can demand client certificates and records which one each request came
// with, a redirecting origin, and a recording upstream HTTP proxy.

/// A test CA (rcgen) that issues server and client certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub pem: String,
    pub der: Vec<u8>,
}

/// A certificate issued by a [`Ca`], with its unencrypted PKCS#8 key.
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            cert,
            key,
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Issued {
        self.issue(
            "localhost",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        self.issue(cn, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, cn: &str, names: &[&str], eku: rcgen::ExtendedKeyUsagePurpose) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// Whether a [`TlsOrigin`] asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Off,
    /// Asked for, not required.
    Optional,
    Required,
}

/// One request a [`TlsOrigin`] served, with the TLS connection it came on.
#[derive(Clone, Debug)]
pub struct TlsRequest {
    /// Index of the TLS connection (in handshake order).
    pub connection: usize,
    /// The client's leaf certificate on that connection, DER.
    pub peer_cert: Option<Vec<u8>>,
    pub target: String,
    pub headers: HeaderMap,
}

/// What a [`TlsOrigin`] saw.
#[derive(Default)]
pub struct TlsSeen {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// Handshakes that failed.
    pub failed_handshakes: AtomicUsize,
    /// Completed handshakes, in order: the client's leaf certificate, if any.
    pub handshakes: Mutex<Vec<Option<Vec<u8>>>>,
    pub requests: Mutex<Vec<TlsRequest>>,
    routes: Arc<Seen>,
}

/// A TLS origin (hyper over tokio-rustls) with [`Origin`]'s routes, serving a `server`
/// certificate of `server_ca`, optionally verifying client certificates against
/// `client_ca`.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    pub seen: Arc<TlsSeen>,
    _stop: watch::Sender<bool>,
}

impl TlsOrigin {
    pub async fn start(server_ca: &Ca, client_ca: &Ca, auth: ClientAuth) -> TlsOrigin {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(client_ca.der.clone()))
                    .unwrap();
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let v = if auth == ClientAuth::Optional {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(v.build().unwrap())
            }
        };
        let server = server_ca.server();
        let cfg = builder
            .with_single_cert(
                vec![CertificateDer::from(server.cert_der)],
                PrivateKeyDer::Pkcs8(server.key_der.into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(TlsSeen::default());
        let (stop, mut stopped) = watch::channel(false);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                seen2.accepted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            _ => {
                                seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        };
                    let peer_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.to_vec());
                    let connection = {
                        let mut h = seen.handshakes.lock().unwrap();
                        h.push(peer_cert.clone());
                        h.len() - 1
                    };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        seen.requests.lock().unwrap().push(TlsRequest {
                            connection,
                            peer_cert: peer_cert.clone(),
                            target: req.uri().to_string(),
                            headers: req.headers().clone(),
                        });
                        handle(req, seen.routes.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<TlsRequest> {
        self.seen.requests.lock().unwrap().clone()
    }

    pub fn handshakes(&self) -> Vec<Option<Vec<u8>>> {
        self.seen.handshakes.lock().unwrap().clone()
    }
}

/// A plain-http origin on 127.0.0.1:0 that answers every request with `status` and
/// `Location: location`, and records the requests.
pub async fn redirect_origin(status: u16, location: String) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            seen2.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            let location = location.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    seen.requests.lock().unwrap().push(SeenRequest {
                        method: req.method().to_string(),
                        target: req.uri().to_string(),
                        headers: req.headers().clone(),
                    });
                    let resp = Response::builder()
                        .status(status)
                        .header(http::header::LOCATION, location.as_str())
                        .body(full("moved"))
                        .unwrap();
                    // The whole request body is read before the answer, as a server
                    // that checks an upload does: so a large body has gone past the
                    // proxy's replay buffer by then, whatever the machine's load.
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// One request an [`UpstreamTestProxy`] received.
#[derive(Clone, Debug)]
pub struct ProxyRequest {
    /// `METHOD target HTTP/1.x`, as received.
    pub request_line: String,
    pub proxy_authorization: Option<String>,
    /// The status the proxy answered with (200 for a forwarded request or a tunnel).
    pub status: u16,
}

/// A small recording HTTP/1.1 forward proxy on 127.0.0.1:0 (tokio).
///
/// Absolute-form requests to `http://` URLs are forwarded to the origin in origin-form
/// (without `Proxy-Authorization`, with `Connection: close`); `CONNECT host:port` opens a
/// tunnel. With a demanded credential, a request without exactly that
/// `Proxy-Authorization` gets 407 and the connection is closed. One request per
/// connection.
pub struct UpstreamTestProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<ProxyRequest>>>,
    _stop: watch::Sender<bool>,
}

impl UpstreamTestProxy {
    pub async fn start(demand: Option<(&str, &str)>) -> UpstreamTestProxy {
        use base64::Engine;
        let demand = demand.map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<ProxyRequest>>> = Arc::default();
        let (stop, mut stopped) = watch::channel(false);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                tokio::spawn(proxy_connection(sock, demand.clone(), seen2.clone()));
            }
        });
        UpstreamTestProxy {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.seen.lock().unwrap().clone()
    }
}

async fn proxy_connection(
    mut sock: TcpStream,
    demand: Option<String>,
    seen: Arc<Mutex<Vec<ProxyRequest>>>,
) {
    let mut buf = Vec::new();
    let head_len = loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(
        req.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        let _ = sock
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    }
    let method = req.method.unwrap_or("").to_owned();
    let target = req.path.unwrap_or("").to_owned();
    let request_line = format!("{method} {target} HTTP/1.{}", req.version.unwrap_or(1));
    let proxy_authorization = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|h| String::from_utf8_lossy(h.value).into_owned());
    let forwarded: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .filter(|h| {
            ![
                "proxy-authorization",
                "proxy-connection",
                "connection",
                "keep-alive",
            ]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        })
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    let leftover = buf[head_len..].to_vec();
    let record = |status: u16| {
        seen.lock().unwrap().push(ProxyRequest {
            request_line: request_line.clone(),
            proxy_authorization: proxy_authorization.clone(),
            status,
        })
    };
    if demand.is_some() && proxy_authorization != demand {
        record(407);
        let _ = sock
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test proxy\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        let _ = sock.shutdown().await;
        return;
    }
    let bad_gateway = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    if method == "CONNECT" {
        let Ok(mut up) = TcpStream::connect(target.as_str()).await else {
            record(502);
            let _ = sock.write_all(bad_gateway).await;
            return;
        };
        record(200);
        if sock
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
            || up.write_all(&leftover).await.is_err()
        {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
        return;
    }
    let Some(rest) = target.strip_prefix("http://") else {
        record(400);
        let _ = sock
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let path = if path.is_empty() {
        "/".to_owned()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let Ok(mut up) = TcpStream::connect(authority.as_str()).await else {
        record(502);
        let _ = sock.write_all(bad_gateway).await;
        return;
    };
    record(200);
    let mut head = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    for (name, value) in &forwarded {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head.extend_from_slice(&leftover);
    if up.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
}
