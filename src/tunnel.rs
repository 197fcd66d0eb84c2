/*!
`CONNECT host:port` tunnels.

pingora's HTTP session cannot carry a tunnel, so the accept loop routes a connection
whose next request starts with `CONNECT ` here before pingora sees it. The request head
is read and parsed (httparse), the target connected, `200 Connection established` sent,
and bytes copied both ways until either side closes. Failures are HTTP responses with
the same bodies and `X-Authproxy-Error` codes as proxied requests.

A `CONNECT` to an authority YAML `intercept` names is not tunnelled: [`serve`] hands the
connection back ([`Routed::Intercept`]) for [`crate::intercept`] to terminate its TLS.
and bytes copied both ways until either side closes, or until no byte has moved either
way for `limits.tunnel_idle` (a forgotten tunnel must not hold two sockets forever).
Failures are HTTP responses with the same bodies and `X-Authproxy-Error` codes as
proxied requests.
*/

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::access;
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
    let (authority, leftover, proxy_auth) = match read_head(&mut down).await {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Routed::Done,
        Err(failure) => {
            let _ = down.write_all(&failure.to_http1()).await;
            log_failure("-", &failure, started, metrics);
            return Routed::Done;
        }
    };
    let auth = proxy_auth.iter().map(Vec::as_slice);
    if let Err(failure) = access::check_token(&snapshot.access, auth) {
        let _ = down.write_all(&failure.to_http1()).await;
        log_failure("-", &failure, started, metrics);
        return Routed::Done;
    }
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
    // Counted before the client can see the 200 and ask the admin listener.
    metrics.request("CONNECT", 200, None);
    let _open = metrics.tunnel();
    if down
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return Routed::Done;
    }
    if !leftover.is_empty() && up.write_all(&leftover).await.is_err() {
        return Routed::Done;
    }
    let idle = snapshot.limits.tunnel_idle;
    let (result, idled) = copy_until_idle(&mut down, &mut up, idle).await;
    let (sent, received) = result.unwrap_or((0, 0));
    tracing::info!(
        target: "authproxy::access",
        method = "CONNECT", url = %target.authority(), status = 200,
        bytes = received, sent = sent + leftover.len() as u64,
        ms = started.elapsed().as_micros() as f64 / 1e3,
        "{}",
        if idled { "tunnel closed: idle (limits.tunnel_idle)" } else { "tunnel closed" }
    );
    Routed::Done
}

/// When a tunnel last moved a byte, in either direction.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.base.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One side of a tunnel, noting each byte that moves.
struct Watched<'a, S> {
    inner: &'a mut S,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

/// `copy_bidirectional` that also ends when no byte has moved for `idle`; the flag
/// says whether that is why it ended.
async fn copy_until_idle<A, B>(
    a: &mut A,
    b: &mut B,
    idle: Duration,
) -> (io::Result<(u64, u64)>, bool)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut a = Watched {
        inner: a,
        activity: &activity,
    };
    let mut b = Watched {
        inner: b,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copy);
    loop {
        let wait = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            r = &mut copy => return (r, false),
            _ = tokio::time::sleep(wait) => {
                if activity.idle_for() >= idle {
                    return (Ok((0, 0)), true);
                }
            }
        }
    }
}

/// A tunnel through the upstream proxy: `CONNECT` there, with its credentials.
async fn via_proxy(
    proxy: &UpstreamProxy,
    target: &Target,
    timeout: std::time::Duration,
) -> Result<tokio::net::TcpStream, Failure> {
    let addrs = resolve::resolve_within(&proxy.host, proxy.port, timeout)
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

/// The CONNECT's authority, the bytes the client sent after the head, and its
/// `Proxy-Authorization` values (for the proxy token; never forwarded).
type Head = (String, Vec<u8>, Vec<Vec<u8>>);

/// Reads the CONNECT head; `None` when the client went away.
async fn read_head<S>(down: &mut S) -> Result<Option<Head>, Failure>
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
                let proxy_auth = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                    .map(|h| h.value.to_vec())
                    .collect();
                return Ok(Some((authority, buf[len..].to_vec(), proxy_auth)));
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
