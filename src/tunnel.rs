/*!
`CONNECT host:port` tunnels.

pingora's HTTP session cannot carry a tunnel, so the accept loop routes a connection
whose next request starts with `CONNECT ` here before pingora sees it. The request head
is read and parsed (httparse), the target connected, `200 Connection established` sent,
and bytes copied both ways until either side closes. Failures are HTTP responses with
the same bodies and `X-Authproxy-Error` codes as proxied requests.

A `CONNECT` to an authority YAML `intercept` names is not tunnelled: [`serve`] hands the
connection back ([`Routed::Intercept`]) for [`crate::intercept`] to terminate its TLS.
*/

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Snapshot;
use crate::failure::Failure;
use crate::metrics::Metrics;
use crate::resolve;
use crate::rule::UpstreamProxy;
use crate::target::Target;
use crate::upstream;

/// Largest CONNECT request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send its CONNECT head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What became of a CONNECT.
pub enum Routed<S> {
    /// Tunnelled (or answered with an error) and finished.
    Done,
    /// Named by `intercept`: not answered yet; `leftover` is what the client sent after
    /// its CONNECT head.
    Intercept {
        down: S,
        target: Target,
        leftover: Vec<u8>,
    },
}

/// Serves one CONNECT request on `down` and then the tunnel, or hands the connection
/// back when its authority is to be intercepted.
pub async fn serve<S>(mut down: S, snapshot: &Snapshot, metrics: &Metrics) -> Routed<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = Instant::now();
    let (authority, leftover) = match read_head(&mut down).await {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Routed::Done,
        Err(failure) => {
            let _ = down.write_all(&failure.to_http1()).await;
            log_failure("-", &failure, started, metrics);
            return Routed::Done;
        }
    };
    let target = match Target::from_authority(&authority) {
        Ok(t) => t,
        Err(_) => {
            let failure = Failure::bad_target("CONNECT needs a host:port authority");
            let _ = down.write_all(&failure.to_http1()).await;
            log_failure("-", &failure, started, metrics);
            return Routed::Done;
        }
    };
    if snapshot.intercepted(&target).is_some() {
        return Routed::Intercept {
            down,
            target,
            leftover,
        };
    }
    let resolved = snapshot.resolve(&target);
    let timeouts = resolved.timeouts();
    let connected = match resolved.proxy(&target.host) {
        Some(proxy) => via_proxy(proxy, &target, timeouts.connect).await,
        None => resolve::connect(&target, timeouts.connect).await,
    };
    let mut up = match connected {
        Ok(up) => up,
        Err(failure) => {
            let _ = down.write_all(&failure.to_http1()).await;
            log_failure(&target.authority(), &failure, started, metrics);
            return Routed::Done;
        }
    };
    if down
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return Routed::Done;
    }
    metrics.request("CONNECT", 200, None);
    let _open = metrics.tunnel();
    if !leftover.is_empty() && up.write_all(&leftover).await.is_err() {
        return Routed::Done;
    }
    let result = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    let (sent, received) = result.unwrap_or((0, 0));
    tracing::info!(
        target: "authproxy::access",
        method = "CONNECT", url = %target.authority(), status = 200,
        bytes = received, sent = sent + leftover.len() as u64,
        ms = started.elapsed().as_micros() as f64 / 1e3,
        "tunnel closed"
    );
    Routed::Done
}

/// A tunnel through the upstream proxy: `CONNECT` there, with its credentials.
async fn via_proxy(
    proxy: &UpstreamProxy,
    target: &Target,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, Failure> {
    let addrs = resolve::resolve(&proxy.host, proxy.port)
        .await
        .map_err(|e| Failure::proxy_unreachable(&proxy.authority(), &e))?;
    let authorization = proxy.authorization.as_ref().map(|a| a.expose().as_str());
    let mut last = None;
    for addr in addrs {
        match upstream::connect_tunnel(addr, &target.authority(), authorization, timeout).await {
            Ok(s) => return Ok(s),
            Err(f) if f.code == "upstream_proxy_unreachable" => last = Some(f),
            Err(f) => return Err(f),
        }
    }
    Err(last
        .unwrap_or_else(|| Failure::proxy_refused(&proxy.authority(), &target.authority(), None)))
}

fn log_failure(host: &str, failure: &Failure, started: Instant, metrics: &Metrics) {
    metrics.request("CONNECT", failure.status, Some(failure.code));
    tracing::warn!(
        target: "authproxy::access",
        method = "CONNECT", url = host, status = failure.status, error = failure.code,
        ms = started.elapsed().as_micros() as f64 / 1e3,
        "request failed"
    );
}

/// Reads the CONNECT head. Returns the authority and any bytes the client sent after
/// the head; `None` when the client went away.
async fn read_head<S>(down: &mut S) -> Result<Option<(String, Vec<u8>)>, Failure>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        let mut chunk = [0u8; 2048];
        let n = match tokio::time::timeout_at(deadline, down.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(n)) => n,
            Err(_) => {
                return Err(Failure::new(
                    408,
                    "request_timeout",
                    "authproxy did not receive a complete CONNECT request in time.",
                ))
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                if req.method != Some("CONNECT") {
                    return Err(Failure::bad_target("expected a CONNECT request"));
                }
                let authority = req.path.unwrap_or_default().to_owned();
                return Ok(Some((authority, buf[len..].to_vec())));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(Failure::new(
                    431,
                    "request_header_too_large",
                    "the CONNECT request head is larger than authproxy accepts (16 KiB).",
                ))
            }
            Err(_) => {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    "authproxy could not read this CONNECT request as valid HTTP/1.1.",
                ))
            }
        }
    }
}
