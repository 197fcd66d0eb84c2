/*!
The accept loop: the daemon's listening sockets, each connection's request loop, and
graceful shutdown.

Connections are accepted here rather than by pingora's `Server`, so the daemon runs on a
runtime it owns, tests can drive it in-process on `127.0.0.1:0`, and every connection's
next request can be peeked for `CONNECT` before pingora's HTTP/1 session (which cannot
tunnel) reads it. Everything else goes to pingora's proxy loop with [`Forwarder`].
*/

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::SnapshotHandle;
use crate::intercept::Interceptor;
use crate::lifecycle::{self, Heartbeat};
use crate::proxy::Forwarder;
use crate::session::State;
use crate::tunnel;

/// How long a client connection may sit idle between requests.
const KEEPALIVE_SECS: u64 = 60;

/// Tuning that is not configuration: how many worker threads, how many idle upstream
/// connections to keep.
#[derive(Clone, Debug)]
pub struct Tuning {
    pub threads: usize,
    pub upstream_pool: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            upstream_pool: 256,
        }
    }
}

/// Far above what `redirects.max_hops` (at most 50), one 401 answer per hop and the
/// addresses of each host can add up to.
const MAX_RETRIES: usize = 1000;

/// One daemon: the proxy loop and the current configuration.
pub struct Daemon {
    proxy: Arc<HttpProxy<Forwarder>>,
    snapshots: SnapshotHandle,
    state: Arc<State>,
    intercept: Interceptor,
}

impl Daemon {
    /// A daemon whose cookie jar lives in memory only (tests, and `check`-like uses).
    pub fn new(snapshots: SnapshotHandle, tuning: &Tuning) -> Arc<Self> {
        Self::with_state(snapshots, Arc::default(), tuning)
    }

    /// A daemon with the state that outlives snapshots (the cookie jar, logins in flight).
    pub fn with_state(snapshots: SnapshotHandle, state: Arc<State>, tuning: &Tuning) -> Arc<Self> {
        let conf = ServerConf {
            threads: tuning.threads,
            upstream_keepalive_pool_size: tuning.upstream_pool,
            // Redirects, 401 answers and address fallbacks are each a pingora retry; the
            // proxy bounds them itself (`redirects.max_hops`), so pingora's own cap must
            // never be the one that stops a chain.
            max_retries: MAX_RETRIES,
            ..ServerConf::default()
        };
        let proxy = http_proxy(
            &Arc::new(conf),
            Forwarder::new(snapshots.clone(), state.clone()),
        );
        Arc::new(Self {
            proxy: Arc::new(proxy),
            snapshots,
            state,
            intercept: Interceptor::default(),
        })
    }

    /// The https interception state (the CA in use, the leaves minted).
    pub fn interceptor(&self) -> &Interceptor {
        &self.intercept
    }

    /// Serves every listener until `shutdown` turns true, then waits up to `drain` for
    /// requests in flight to finish.
    pub async fn run(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        self.run_watched(listeners, Vec::new(), shutdown, drain)
            .await
    }

    /// [`Daemon::run`], each accept loop beating its heart (the `n`th listener's is
    /// `hearts[n]`) for the systemd watchdog ([`crate::lifecycle`]).
    pub async fn run_watched(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        hearts: Vec<Heartbeat>,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let tracker = TaskTracker::new();
        let mut hearts = hearts.into_iter();
        for listener in listeners {
            let daemon = self.clone();
            let shutdown = shutdown.clone();
            let conns = tracker.clone();
            let heart = hearts.next();
            tracker
                .spawn(async move { daemon.accept_loop(listener, heart, shutdown, conns).await });
        }
        tracker.close();
        stopped(&mut shutdown.clone()).await;
        self.state.metrics.set_draining();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                "{} connections still open after {drain:?}; closing them",
                tracker.len()
            );
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        mut heart: Option<Heartbeat>,
        shutdown: watch::Receiver<bool>,
        conns: TaskTracker,
    ) {
        let mut stop = shutdown.clone();
        loop {
            tokio::select! {
                _ = lifecycle::pace(&mut heart) => {}
                accepted = listener.accept() => match accepted {
                    Ok((sock, _peer)) => {
                        let _ = sock.set_nodelay(true);
                        let daemon = self.clone();
                        let shutdown = shutdown.clone();
                        conns.spawn(async move { daemon.serve_connection(sock, shutdown).await });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped(&mut stop) => return,
            }
        }
    }

    /// The request loop of one client connection.
    async fn serve_connection(&self, sock: tokio::net::TcpStream, shutdown: watch::Receiver<bool>) {
        let _open = self.state.metrics.client_connection();
        let mut stream: Stream = Box::new(L4Stream::from(sock));
        let mut persistent: Option<HttpPersistentSettings> = None;
        // Inside an intercepted CONNECT every request goes to pingora: a CONNECT there
        // is not routed again. (Its peek reads ahead through TLS; see `Intercepted`.)
        let mut intercepted = false;
        loop {
            // Peek at the next request: CONNECT goes to the tunnel, the rest to pingora.
            // Bytes pingora already read past the previous request (a pipelined prefix)
            // are not on the socket, so such a request goes to pingora unpeeked.
            if !persistent.as_ref().is_some_and(has_pipelined_prefix) {
                let mut first = [0u8; 8];
                let mut stop = shutdown.clone();
                let peeked = tokio::select! {
                    r = tokio::time::timeout(
                        Duration::from_secs(KEEPALIVE_SECS),
                        stream.try_peek(&mut first),
                    ) => matches!(r, Ok(Ok(true))),
                    _ = stopped(&mut stop) => false,
                };
                if !peeked {
                    return;
                }
                if &first == b"CONNECT " && !intercepted {
                    let snapshot = self.snapshots.load_full();
                    match tunnel::serve(stream, &snapshot, &self.state.metrics).await {
                        tunnel::Routed::Done => return,
                        tunnel::Routed::Intercept {
                            down,
                            target,
                            leftover,
                        } => match self
                            .intercept
                            .accept(down, target, leftover, &snapshot)
                            .await
                        {
                            Some(tls) => {
                                stream = tls;
                                intercepted = true;
                                continue;
                            }
                            None => return,
                        },
                    }
                }
            }
            let mut session = ServerSession::new_http1(stream);
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    session.set_keepalive(Some(KEEPALIVE_SECS));
                    // Without pipelining, pingora refuses to reuse a connection whose
                    // client sent its next request the moment the last response byte
                    // arrived (its idle probe reads that byte); with it, the byte is
                    // kept as the next request's prefix.
                    session.set_pipelining_enabled(true);
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            match self.proxy.process_new_http(session, &shutdown).await {
                Some(reused) => {
                    let (s, p) = reused.consume();
                    stream = s;
                    persistent = p;
                }
                None => return,
            }
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Whether pingora carried bytes of the next request over from the previous one.
/// pingora 0.9 has no accessor for this; its `Debug` output names the field.
fn has_pipelined_prefix(settings: &HttpPersistentSettings) -> bool {
    !format!("{settings:?}").contains("pipelined_prefix: None")
}
