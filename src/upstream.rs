/*!
Reaching the upstream server: the pingora peer for one request, and the upstream-proxy
connector.

The connector knows nothing about where its settings came from: it gets a target, the
resolved addresses, the TLS material and an optional [`UpstreamProxy`]. Through a proxy,
plain-http targets are sent to the proxy in absolute form; https targets get a `CONNECT`
tunnel from [`ConnectVia`], a pingora `custom_l4` connector, and pingora does TLS (with
the client certificate) on top. Pooled connections are keyed by the policy's identity
(`group_key`), so a connection opened with one certificate or proxy credential is never
reused for another.
*/

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::snapshot::Resolved;
use crate::failure::{Failure, Timeouts};
use crate::rule::UpstreamProxy;
use crate::secret::Secret;
use crate::target::{Scheme, Target};

/// How long an idle pooled upstream connection is kept.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

/// The pingora peer for `target` at `addr` (the origin's, or the proxy's when `via`).
pub fn peer(
    target: &Target,
    addr: SocketAddr,
    resolved: &Resolved<'_>,
    via: Option<&Arc<UpstreamProxy>>,
    timeouts: Timeouts,
) -> HttpPeer {
    let tls = target.scheme == Scheme::Https;
    let sni = if tls {
        target.host.clone()
    } else {
        String::new()
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(timeouts.connect);
    o.read_timeout = Some(timeouts.read);
    o.write_timeout = Some(timeouts.read);
    o.idle_timeout = Some(UPSTREAM_IDLE);
    if tls {
        peer.client_cert_key = resolved.identity().map(|i| i.cert_key.clone());
        peer.options.ca = resolved.ca().map(|c| c.certs.clone());
        peer.options.verify_cert = resolved.verify_peer();
        peer.options.verify_hostname = resolved.verify_host();
    }
    // The pool key must tell apart everything pingora's own hash ignores: the CA,
    // the tunnel's target and the proxy credential.
    let mut key = resolved.pool_key(via.map(|p| p.as_ref()));
    if via.is_some() && tls {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        target.authority().hash(&mut h);
        key = h.finish();
    }
    peer.group_key = key;
    peer
}

/// Dials an upstream proxy and opens a `CONNECT` tunnel to `authority` through it.
pub struct ConnectVia {
    proxy: SocketAddr,
    authority: String,
    authorization: Option<Secret<String>>,
    timeout: Duration,
}

impl ConnectVia {
    pub fn new(
        proxy: SocketAddr,
        authority: String,
        via: Option<&UpstreamProxy>,
        timeout: Duration,
    ) -> Self {
        ConnectVia {
            proxy,
            authority,
            authorization: via.and_then(|v| v.authorization.clone()),
            timeout,
        }
    }
}

impl std::fmt::Debug for ConnectVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectVia({} via {})", self.authority, self.proxy)
    }
}

#[async_trait]
impl L4Connect for ConnectVia {
    async fn connect(&self, _addr: &PeerAddr) -> Result<L4Stream> {
        let stream = connect_tunnel(
            self.proxy,
            &self.authority,
            self.authorization.as_ref().map(|a| a.expose().as_str()),
            self.timeout,
        )
        .await
        .map_err(|f| {
            // The refusal is explained to the client from the error's cause.
            let etype = if f.status == 504 {
                ConnectTimedout
            } else {
                ConnectProxyFailure
            };
            f.into_error_as(etype)
        })?;
        Ok(stream.into())
    }
}

/// Connects to the proxy at `proxy`, sends `CONNECT authority`, and returns the stream
/// once the proxy answers 2xx. The error is the failure the client should see.
pub async fn connect_tunnel(
    proxy: SocketAddr,
    authority: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> std::result::Result<TcpStream, Failure> {
    let proxy_name = proxy.to_string();
    let work = async {
        let mut s = TcpStream::connect(proxy)
            .await
            .map_err(|e| Failure::proxy_unreachable(&proxy_name, &e))?;
        s.set_nodelay(true).ok();
        let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(a) = authorization {
            req.push_str("Proxy-Authorization: ");
            req.push_str(a);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| Failure::proxy_unreachable(&proxy_name, &e))?;
        // Read the response head byte by byte: nothing past it may be consumed, the
        // tunnel's first bytes belong to the TLS handshake.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            let n = s
                .read(&mut b)
                .await
                .map_err(|e| Failure::proxy_unreachable(&proxy_name, &e))?;
            if n == 0 || head.len() > 16 * 1024 {
                return Err(Failure::proxy_refused(&proxy_name, authority, None));
            }
            head.push(b[0]);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let code = match resp.parse(&head) {
            Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
            _ => 0,
        };
        if (200..300).contains(&code) {
            Ok(s)
        } else {
            Err(Failure::proxy_refused(&proxy_name, authority, Some(code)))
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(Failure::connect_timeout(
            &format!("the upstream proxy {proxy_name}"),
            Some(timeout),
        )),
    }
}
