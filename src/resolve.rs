/*!
Name resolution and connecting, without blocking the runtime.

pingora's `HttpPeer::new` resolves names with a blocking call, so the proxy resolves
with tokio first and hands pingora socket addresses. All addresses are kept so each can
be tried in turn, as curl does (`localhost` is often `::1` first while a server listens
on 127.0.0.1 only).
*/

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::failure::Failure;
use crate::target::Target;

/// Every address of `host`, in resolver order. IP literals need no lookup.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(addrs)
}

/// [`resolve`] within the connect budget: a resolver that does not answer must not hold
/// a request longer than a server that does not answer would (the error is `TimedOut`).
pub async fn resolve_within(
    host: &str,
    port: u16,
    budget: Duration,
) -> io::Result<Vec<SocketAddr>> {
    within(budget, resolve(host, port)).await
}

/// `lookup`, or `TimedOut` when it takes longer than `budget`.
async fn within<T>(
    budget: Duration,
    lookup: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match tokio::time::timeout(budget, lookup).await {
        Ok(found) => found,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {} ms", budget.as_millis()),
        )),
    }
}

/// Resolves the target and connects to the first address that answers; the lookup and
/// each attempt are bounded by `timeout`. The error is the failure the client should see.
pub async fn connect(target: &Target, timeout: Duration) -> Result<TcpStream, Failure> {
    let addrs = resolve_within(&target.host, target.port, timeout)
        .await
        .map_err(|e| Failure::dns(&target.host, &e))?;
    let authority = target.authority();
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true).ok();
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(Failure::connect(&authority, &e)),
            Err(_) => last = Some(Failure::connect_timeout(&authority, Some(timeout))),
        }
    }
    Err(last.unwrap_or_else(|| Failure::connect_refused(&authority)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_skip_the_resolver() {
        let a = resolve("127.0.0.1", 80).await.unwrap();
        assert_eq!(a, vec!["127.0.0.1:80".parse().unwrap()]);
        let a = resolve("::1", 80).await.unwrap();
        assert_eq!(a, vec!["[::1]:80".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_lookup_is_bounded_by_the_connect_budget() {
        // A resolver that never answers is cut at the budget (no real lookup is made:
        // tests ask no resolver); literals need no lookup at all.
        let never = std::future::pending::<io::Result<Vec<SocketAddr>>>();
        let e = within(Duration::from_millis(20), never).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let f = Failure::dns("slow-resolver.invalid", &e);
        assert_eq!((f.status, f.code), (504, "dns_timeout"));
        assert!(resolve_within("127.0.0.1", 80, Duration::ZERO)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn refused_connect_is_a_502() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Target::from_authority(&format!("127.0.0.1:{port}")).unwrap();
        let f = connect(&t, Duration::from_secs(2)).await.unwrap_err();
        assert_eq!((f.status, f.code), (502, "connect_refused"));
    }
}
