//! The load client of `bench/intercept`: HTTP/1.1 over TLS, directly or through an HTTP
//! proxy's `CONNECT` (wrk speaks https but no proxy). Each of `--conns` connections is
//! opened once (CONNECT, TLS handshake trusting only `--ca`, ALPN http/1.1) and then
//! sends `GET --path` back to back until `--secs` have passed; with `--new-conns` every
//! request opens a new connection instead (the cost of a client handshake; TLS session
//! resumption is off, so each is a full handshake). Prints one line:
//! `RESULT requests seconds p50_us p99_us errors`.
//!
//!   cargo bench --bench intercept -- --target 127.0.0.1:8443 --ca ca.pem [--proxy 127.0.0.1:3128]
//!       [--conns 64] [--secs 5] [--path /1k] [--threads 2] [--new-conns]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    proxy: Option<SocketAddr>,
    target: String,
    ca: String,
    conns: usize,
    secs: u64,
    path: String,
    threads: usize,
    new_conns: bool,
}

fn args() -> Args {
    let mut a = Args {
        proxy: None,
        target: String::new(),
        ca: String::new(),
        conns: 64,
        secs: 5,
        path: "/1k".into(),
        threads: 2,
        new_conns: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--proxy" => a.proxy = Some(value().parse().expect("--proxy ADDR")),
            "--target" => a.target = value(),
            "--ca" => a.ca = value(),
            "--conns" => a.conns = value().parse().expect("--conns N"),
            "--secs" => a.secs = value().parse().expect("--secs N"),
            "--path" => a.path = value(),
            "--threads" => a.threads = value().parse().expect("--threads N"),
            "--new-conns" => a.new_conns = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(
        !a.target.is_empty() && !a.ca.is_empty(),
        "--target and --ca are needed"
    );
    a
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// CONNECT (when there is a proxy), TLS, HTTP/1.1.
async fn open(a: &Args, tls: &tokio_rustls::TlsConnector) -> Result<Sender, String> {
    let addr = a
        .proxy
        .unwrap_or_else(|| a.target.parse().expect("--target ADDR"));
    let mut sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    if a.proxy.is_some() {
        let head = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", a.target);
        sock.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if sock.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
                return Err("proxy closed".into());
            }
            got.push(b[0]);
        }
        if !got.starts_with(b"HTTP/1.1 200") && !got.starts_with(b"HTTP/1.0 200") {
            return Err(String::from_utf8_lossy(&got).into_owned());
        }
    }
    let host = a.target.rsplit_once(':').expect("host:port").0.to_string();
    let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
    let stream = tls.connect(name, sock).await.map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(a: &Args, sender: &mut Sender) -> Result<(), String> {
    let req = http::Request::get(&a.path)
        .header("host", &a.target)
        .body(Empty::new())
        .unwrap();
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status() == 200;
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err("status".into())
    }
}

/// One connection's loop: latencies in microseconds, and the error count.
async fn worker(a: Arc<Args>, tls: tokio_rustls::TlsConnector, until: Instant) -> (Vec<u32>, u64) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut sender = None;
    while Instant::now() < until {
        let t0 = Instant::now();
        if sender.is_none() || a.new_conns {
            match open(&a, &tls).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    errors += 1;
                    if errors < 3 {
                        eprintln!("connect: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        match get(&a, sender.as_mut().unwrap()).await {
            Ok(()) => lat.push(t0.elapsed().as_micros() as u32),
            Err(_) => {
                errors += 1;
                sender = None;
            }
        }
    }
    (lat, errors)
}

fn main() {
    let a = Arc::new(args());
    let pem = std::fs::read(&a.ca).expect("--ca file");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
        .unwrap();
    let (lat, errors, secs) = rt.block_on(async {
        let started = Instant::now();
        let until = started + Duration::from_secs(a.secs);
        let tasks: Vec<_> = (0..a.conns)
            .map(|_| tokio::spawn(worker(a.clone(), tls.clone(), until)))
            .collect();
        let mut lat = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.unwrap();
            lat.extend(l);
            errors += e;
        }
        (lat, errors, started.elapsed().as_secs_f64())
    });
    let mut lat = lat;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "RESULT {} {:.3} {} {} {}",
        lat.len(),
        secs,
        pct(0.50),
        pct(0.99),
        errors
    );
}
