/*!
The TLS termination of an intercepted `CONNECT`, and the stream pingora reads from.

After `200 Connection established`, the client's TLS handshake is answered with the
host's leaf (tokio-rustls), and the decrypted stream is wrapped in [`Intercepted`], which
implements pingora's stream traits so that the accept loop hands it to the same HTTP/1
session and proxy phases as a plain connection. The wrapper also remembers the
`CONNECT` authority: the requests inside arrive in origin form (`GET /path`), and
[`request_uri`] makes each one the absolute `https://authority/path` the proxy phases
expect, or refuses it with 421 when it names another authority than the tunnel's.
*/

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;

use crate::failure::Failure;
use crate::target::{Scheme, Target};

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client connection below TLS, with the bytes the client sent right after its
/// `CONNECT` head (read along with it) put back in front.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: Stream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client connection whose TLS authproxy terminated, for the `CONNECT` authority
/// `origin` (scheme https, empty path).
pub struct Intercepted {
    tls: TlsStream<Prefixed>,
    origin: Target,
    /// Plaintext read ahead by [`Peek::try_peek`], handed out first by reads.
    ahead: Vec<u8>,
}

impl std::fmt::Debug for Intercepted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercepted")
            .field("origin", &self.origin.authority())
            .finish_non_exhaustive()
    }
}

impl Intercepted {
    /// The `CONNECT` authority this connection was opened for.
    pub fn origin(&self) -> &Target {
        &self.origin
    }

    fn below(&self) -> &Stream {
        &self.tls.get_ref().0.inner
    }
}

/// Runs the server side of the client's handshake with `config` (the host's leaf).
pub async fn handshake(
    down: Stream,
    leftover: Vec<u8>,
    config: Arc<ServerConfig>,
    origin: Target,
) -> io::Result<Intercepted> {
    let io = Prefixed {
        prefix: leftover,
        at: 0,
        inner: down,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    Ok(Intercepted {
        tls,
        origin,
        ahead: Vec::new(),
    })
}

/// What the proxy phases should take as the target (for pingora's `set_raw_path`, which
/// keeps an absolute-form target verbatim as the request line read from a client would) of a request read on an
/// intercepted connection: the absolute `https://` URI for an origin-form request, the
/// request's own for an absolute-form one naming the same authority; 421 for a request
/// whose `Host` (or absolute URI) names another authority than the `CONNECT`.
pub fn request_uri(
    origin: &Target,
    raw_path: &[u8],
    host: Option<&[u8]>,
) -> Result<Option<String>, Failure> {
    let path = std::str::from_utf8(raw_path)
        .map_err(|_| Failure::bad_target("the request target is not valid UTF-8"))?;
    if !path.starts_with('/') {
        return match Target::from_absolute(raw_path) {
            Ok(t) if t.scheme == Scheme::Https && same_authority(origin, &t.host, Some(t.port)) => {
                Ok(None)
            }
            Ok(t) => Err(misdirected(origin, &t.host_header())),
            Err(_) => Err(Failure::bad_target("malformed URL")),
        };
    }
    if let Some(host) = host {
        let host = std::str::from_utf8(host).unwrap_or("").trim();
        let parsed = http::uri::Authority::try_from(host).ok();
        let matches = parsed.as_ref().is_some_and(|a| {
            let h = a.host();
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            same_authority(origin, h, a.port_u16())
        });
        if !matches {
            return Err(misdirected(origin, host));
        }
    }
    Ok(Some(format!("https://{}{path}", origin.host_header())))
}

/// A `Host` without a port names the host's every port: clients differ in whether they
/// write the port of a non-default https authority, and the name is what the
/// certificate vouched for.
fn same_authority(origin: &Target, host: &str, port: Option<u16>) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case(&origin.host) && port.is_none_or(|p| p == origin.port)
}

fn misdirected(origin: &Target, named: &str) -> Failure {
    let shown: String = named
        .chars()
        .filter(|c| !c.is_control())
        .take(255)
        .collect();
    Failure::new(
        421,
        "misdirected_request",
        format!(
            "this connection was opened (CONNECT) for {}, but the request names {shown}; \
             send it through a CONNECT to that host instead.",
            origin.authority()
        ),
    )
}

// === impl Intercepted: the stream traits pingora's HTTP session needs ===

impl AsyncRead for Intercepted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.ahead.is_empty() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Intercepted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Intercepted {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for Intercepted {
    fn id(&self) -> UniqueIDType {
        self.below().id()
    }
}

impl Ssl for Intercepted {}

impl GetTimingDigest for Intercepted {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.below().get_timing_digest()
    }
}

impl GetProxyDigest for Intercepted {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for Intercepted {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.below().get_socket_digest()
    }
}

/// TLS cannot be peeked on the socket, so the next plaintext bytes are read ahead and kept
/// for the following reads. The accept loop peeks between requests to wait for the next
/// one while watching for shutdown, as on a plain connection.
#[async_trait]
impl Peek for Intercepted {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        if self.ahead.is_empty() {
            let mut chunk = vec![0u8; buf.len().max(1)];
            let n = self.tls.read(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            chunk.truncate(n);
            self.ahead = chunk;
        }
        let n = self.ahead.len().min(buf.len());
        buf[..n].copy_from_slice(&self.ahead[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(a: &str) -> Target {
        Target::from_authority(a).unwrap()
    }

    #[test]
    fn origin_form_becomes_absolute() {
        let o = origin("data.example.org:443");
        let uri = request_uri(&o, b"/a?b=1", Some(b"data.example.org")).unwrap();
        assert_eq!(uri.unwrap(), "https://data.example.org/a?b=1");
        let o = origin("127.0.0.1:8443");
        let uri = request_uri(&o, b"/x", Some(b"127.0.0.1:8443")).unwrap();
        assert_eq!(uri.unwrap(), "https://127.0.0.1:8443/x");
        let uri = request_uri(&o, b"/x", None).unwrap();
        assert_eq!(uri.unwrap(), "https://127.0.0.1:8443/x");
    }

    #[test]
    fn another_authority_is_misdirected() {
        let o = origin("data.example.org:443");
        let e = request_uri(&o, b"/a", Some(b"other.example.org")).unwrap_err();
        assert_eq!((e.status, e.code), (421, "misdirected_request"));
        let e = request_uri(&o, b"/a", Some(b"data.example.org:8443")).unwrap_err();
        assert_eq!(e.status, 421);
        let e = request_uri(&o, b"https://other.example.org/a", None).unwrap_err();
        assert_eq!(e.status, 421);
        let e = request_uri(&o, b"http://data.example.org/a", None).unwrap_err();
        assert_eq!(e.status, 421);
    }

    #[test]
    fn absolute_form_for_the_same_authority_is_kept() {
        let o = origin("data.example.org:443");
        let kept = request_uri(&o, b"https://DATA.example.org/a", Some(b"x")).unwrap();
        assert!(kept.is_none());
    }
}
