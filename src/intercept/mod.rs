/*!
https interception for the hosts YAML `intercept` names, as mitmproxy and Squid's
ssl-bump do, so that authproxy can add credentials and run the login dance for `https://`
URLs too.

A `CONNECT` to a matching authority ([`crate::config::Snapshot::intercepted`]) comes
here from the tunnel code instead of being tunnelled: the local CA is loaded (or made,
[`ca`]), the host's leaf is taken from the cache or minted ([`leaf`]), `200 Connection
established` is answered, and the client's TLS is terminated ([`accept`]). The
decrypted stream then goes back to the accept loop, which serves its requests exactly as
plain-http ones (pingora's HTTP/1 session and the proxy phases): the upstream side is a
normal https connection, verified against the system roots or the rule's CA.

Failures before the `200` (an unusable CA, a leaf that cannot be minted) are answered as
HTTP errors to the `CONNECT`; failures after it are answered inside the TLS connection,
like any other proxied request's.
*/

pub mod accept;
pub mod ca;
pub mod leaf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::AsyncWriteExt;

use crate::config::snapshot::CaSetting;
use crate::config::Snapshot;
use crate::failure::Failure;
use crate::target::Target;

pub use accept::Intercepted;

/// The daemon's interception state: the CA in use and its leaves. Outlives snapshots;
/// a reload that names another CA starts a new leaf cache.
#[derive(Default)]
pub struct Interceptor {
    current: tokio::sync::Mutex<Option<(CaSetting, Arc<leaf::Leaves>)>>,
    minted: Arc<AtomicU64>,
}

impl Interceptor {
    /// How many leaf certificates this daemon has minted.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// The leaves of the CA the snapshot names, loading (or creating) the CA once.
    async fn leaves(&self, snapshot: &Snapshot) -> Result<Arc<leaf::Leaves>, Failure> {
        let mut current = self.current.lock().await;
        if let Some((setting, leaves)) = current.as_ref() {
            if *setting == snapshot.intercept_ca {
                return Ok(leaves.clone());
            }
        }
        let setting = snapshot.intercept_ca.clone();
        let (s, patterns) = (setting.clone(), snapshot.intercept.clone());
        let ca = tokio::task::spawn_blocking(move || ca::load_or_create(&s, &patterns))
            .await
            .map_err(|e| ca::CaError::Generate(e.to_string()))
            .and_then(|r| r);
        let ca = ca.map_err(|e| {
            Failure::new(
                502,
                "intercept_ca_unusable",
                format!("authproxy cannot intercept https: {e}."),
            )
        })?;
        let leaves = Arc::new(leaf::Leaves::new(Arc::new(ca), self.minted.clone()));
        *current = Some((setting, leaves.clone()));
        Ok(leaves)
    }

    /// Serves an intercepted `CONNECT` for `target` up to the end of the client's TLS
    /// handshake; the stream to read the requests from, or `None` when the connection
    /// is done (the reason was answered or logged).
    pub async fn accept(
        &self,
        mut down: Stream,
        target: Target,
        leftover: Vec<u8>,
        snapshot: &Snapshot,
    ) -> Option<Stream> {
        let started = Instant::now();
        let config = match self.leaves(snapshot).await {
            Ok(leaves) => leaves.config_for(&target.host).await.map_err(|e| {
                Failure::new(
                    502,
                    "intercept_certificate",
                    format!(
                        "authproxy could not make a certificate for {}: {e}.",
                        target.host
                    ),
                )
            }),
            Err(f) => Err(f),
        };
        let config = match config {
            Ok(c) => c,
            Err(failure) => {
                let _ = down.write_all(&failure.to_http1()).await;
                tracing::warn!(
                    target: "authproxy::access",
                    method = "CONNECT", url = %target.authority(), status = failure.status,
                    error = failure.code, reason = %failure.message.trim_end(),
                    "request failed"
                );
                return None;
            }
        };
        if down
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .is_err()
        {
            return None;
        }
        let authority = target.authority();
        match accept::handshake(down, leftover, config, target).await {
            Ok(tls) => {
                tracing::debug!(
                    url = %authority,
                    ms = started.elapsed().as_micros() as f64 / 1e3,
                    "intercepted"
                );
                Some(Box::new(tls))
            }
            Err(e) => {
                // Most often the client does not trust the CA (it says so with an
                // alert): name the fix.
                tracing::info!(
                    url = %authority, error = %e,
                    "the client's TLS handshake failed; does it trust the CA `authproxy ca` prints?"
                );
                None
            }
        }
    }
}

/// The `CONNECT` authority of an intercepted client connection, if `stream` is one.
pub fn origin_of(stream: Option<&Stream>) -> Option<&Target> {
    let io = stream?.as_any();
    // The accept loop hands pingora a `Conn` (it read the request head) around the
    // intercepted stream.
    let io = match io.downcast_ref::<crate::conn::Conn>() {
        Some(conn) => conn.inner().as_any(),
        None => io,
    };
    io.downcast_ref::<Intercepted>().map(Intercepted::origin)
}

/// On an intercepted connection, makes the request's target the absolute
/// `https://authority/...` the proxy phases expect ([`accept::request_uri`]); elsewhere
/// leaves it alone.
pub fn make_absolute(session: &mut ServerSession) -> Result<(), Failure> {
    let uri = {
        let Some(origin) = origin_of(session.stream()) else {
            return Ok(());
        };
        let req = session.req_header();
        let host = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
        accept::request_uri(origin, req.raw_path(), host)?
    };
    match uri {
        Some(uri) => session
            .req_header_mut()
            .set_raw_path(uri.as_bytes())
            .map_err(|_| Failure::bad_target("malformed request target")),
        None => Ok(()),
    }
}
