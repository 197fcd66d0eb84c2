/*!
A client connection that knows where each request ends.

The accept loop reads and validates every request head itself ([`crate::head`]) before
pingora sees it, and then hands pingora a [`Conn`]: the socket plus the bytes already
read. `Conn` lets pingora read exactly one request (its head, then its body as framed by
`Content-Length` or chunked coding) and no further. Bytes of the next request that
arrive meanwhile, whether pipelined or sent the moment the response ended (pingora's
idle probe reads one byte), stay here in [`Conn::buffered`] for the accept loop's next
head read, so every request is validated and `CONNECT` is recognised on a reused
connection too, without looking inside pingora's pipelining state.

Past the end of a request a read from pingora answers end-of-file when the client has
half-closed and nothing else is buffered (the response is still written: pingora runs
with `abort_on_close` off), and otherwise stays pending, as pingora's own pipelining
does.
*/

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a following request kept while the current one is served; past this the
/// socket is not read until the accept loop takes them (the head limit applies then).
const MAX_STASH: usize = 64 * 1024;

/// Largest single read from the socket.
const READ_CHUNK: usize = 16 * 1024;

/// How the body after the current head is delimited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No body, or `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Everything that follows (an `Upgrade` request).
    Open,
}

/// Where the bytes past `allowed` stand.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunks),
    Open,
    /// The current request is complete: further bytes belong to the next one.
    Done,
}

/// The client socket plus the bytes read from it that nobody consumed yet.
pub struct Conn {
    inner: Stream,
    buf: BytesMut,
    /// How many bytes at the front of `buf` belong to the current request.
    allowed: usize,
    framing: Framing,
    eof: bool,
    scratch: Box<[u8]>,
}

impl Conn {
    pub fn new(inner: Stream) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            allowed: 0,
            framing: Framing::Done,
            eof: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

    /// Bytes read and not yet consumed (the start of the next request head).
    /// The stream this one reads from (an intercepted connection's TLS, say).
    pub fn inner(&self) -> &Stream {
        &self.inner
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether the client has half-closed (read end-of-file).
    pub fn eof(&self) -> bool {
        self.eof
    }

    /// Reads more bytes from the socket into the buffer; `Ok(0)` at end-of-file.
    pub async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.eof {
            return Poll::Ready(Ok(0));
        }
        // A scratch buffer kept for the connection: zeroed once, not at every read (the
        // idle probe polls here after every response).
        let mut rb = ReadBuf::new(&mut self.scratch);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(rb.filled());
        Poll::Ready(Ok(n))
    }

    /// Starts serving one request: the first `consumed` buffered bytes (the head as the
    /// client sent it) are replaced by `head` (the same head, possibly normalised), and
    /// reads may go on for `body`.
    pub fn begin(&mut self, consumed: usize, head: Option<&[u8]>, body: Body) {
        if let Some(head) = head {
            let rest = self.buf.split_off(consumed);
            self.buf.clear();
            self.buf.extend_from_slice(head);
            self.allowed = head.len();
            self.buf.unsplit(rest);
        } else {
            self.allowed = consumed;
        }
        self.framing = match body {
            Body::Length(0) => Framing::Done,
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Chunks::default()),
            Body::Open => Framing::Open,
        };
    }

    /// Whether the current request has been read to its end (so what is buffered is the
    /// next request).
    pub fn between_requests(&self) -> bool {
        self.allowed == 0 && matches!(self.framing, Framing::Done)
    }

    /// Hands everything that follows to the reader, head included (a tunnel).
    pub fn open(&mut self) {
        self.framing = Framing::Open;
    }

    /// Extends `allowed` over the buffered bytes that still belong to this request.
    fn classify(&mut self) {
        let avail = self.buf.len() - self.allowed;
        if avail == 0 {
            return;
        }
        match &mut self.framing {
            Framing::Length(n) => {
                let k = (*n).min(avail as u64);
                self.allowed += k as usize;
                *n -= k;
                if *n == 0 {
                    self.framing = Framing::Done;
                }
            }
            Framing::Chunked(c) => {
                let k = c.advance(&self.buf[self.allowed..]);
                self.allowed += k;
                if c.done() {
                    self.framing = Framing::Done;
                }
            }
            Framing::Open => self.allowed = self.buf.len(),
            Framing::Done => {}
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            this.classify();
            if this.allowed > 0 {
                let n = this.allowed.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.allowed -= n;
                return Poll::Ready(Ok(()));
            }
            if matches!(this.framing, Framing::Done) {
                // Past the end of this request: keep what comes for the next head read.
                // A half-close with nothing pending is the client's end-of-file; bytes
                // of a next request keep the read pending, so the response finishes.
                if this.eof || this.buf.len() >= MAX_STASH {
                    if this.eof && this.buf.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
                ready!(this.poll_fill(cx))?;
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl fmt::Debug for Conn {
    // Never the buffered bytes: they may carry a client's credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("inner", &self.inner)
            .field("buffered", &self.buf.len())
            .field("eof", &self.eof)
            .finish()
    }
}

#[async_trait]
impl Shutdown for Conn {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for Conn {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Conn {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Conn {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> std::time::Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> std::time::Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Conn {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Conn {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// No peeking: everything read is accounted for in the buffer.
impl Peek for Conn {}

/// Follows chunked framing (RFC 9112 §7.1) far enough to find where the body ends.
/// Malformed framing is pingora's to refuse; this only has to end somewhere.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// In a chunk-size line: the size so far, whether an extension started.
    #[default]
    SizeStart,
    Size {
        size: u64,
        ext: bool,
    },
    Data(u64),
    /// After the data, up to and including its line end.
    DataEnd,
    /// In the trailer section; `true` at the start of a line.
    Trailer(bool),
    Done,
}

impl Chunks {
    fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes bytes of the body; returns how many belong to it (all of them, unless
    /// the body ended inside `bytes`).
    fn advance(&mut self, bytes: &[u8]) -> usize {
        use ChunkState::*;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                SizeStart => Size {
                    size: 0,
                    ext: false,
                }
                .feed(b),
                s @ Size { .. } => s.feed(b),
                Data(n) => {
                    let k = n.min((bytes.len() - i) as u64);
                    i += k as usize;
                    self.state = if n == k { DataEnd } else { Data(n - k) };
                    continue;
                }
                DataEnd if b == b'\n' => SizeStart,
                DataEnd => DataEnd,
                Trailer(true) if b == b'\n' => Done,
                Trailer(_) if b == b'\n' => Trailer(true),
                Trailer(start) if b == b'\r' => Trailer(start),
                Trailer(_) => Trailer(false),
                Done => return i,
            };
            i += 1;
            if self.state == Done {
                return i;
            }
        }
        i
    }
}

impl ChunkState {
    fn feed(self, b: u8) -> ChunkState {
        let ChunkState::Size { size, ext } = self else {
            return self;
        };
        match b {
            b'\n' if size == 0 => ChunkState::Trailer(true),
            b'\n' => ChunkState::Data(size),
            _ if ext => self,
            _ => match (b as char).to_digit(16) {
                // An absurd size is pingora's to refuse; keep counting up to the cap.
                Some(d) => ChunkState::Size {
                    size: size.saturating_mul(16).saturating_add(u64::from(d)),
                    ext,
                },
                None => ChunkState::Size { size, ext: true },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> usize {
        let mut c = Chunks::default();
        let n = c.advance(body);
        assert!(c.done(), "not done after {body:?}");
        n
    }

    #[test]
    fn chunked_bodies_end_where_they_end() {
        assert_eq!(end_of(b"0\r\n\r\nGET"), 5);
        assert_eq!(end_of(b"5\r\nhello\r\n0\r\n\r\nNEXT"), 15);
        assert_eq!(end_of(b"5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nN"), 29);
        assert_eq!(end_of(b"a\nabcdefghij\n0\n\n"), 16);
    }

    #[test]
    fn chunked_bodies_may_arrive_a_byte_at_a_time() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let mut c = Chunks::default();
        for (i, b) in body.iter().enumerate() {
            assert!(!c.done(), "done early at {i}");
            assert_eq!(c.advance(std::slice::from_ref(b)), 1);
        }
        assert!(c.done());
    }
}
