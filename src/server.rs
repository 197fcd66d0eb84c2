/*!
The accept loop: the daemon's listening sockets, each connection's request loop, and
graceful shutdown.

Connections are accepted here rather than by pingora's `Server`, so the daemon runs on a
runtime it owns, tests can drive it in-process on `127.0.0.1:0`, and every request head
is read and judged here ([`crate::head`]) before pingora's HTTP/1 session sees it:
hostile input gets our explained answer, `CONNECT` goes to the tunnel (pingora's session
cannot tunnel), and everything else to pingora's proxy loop with [`Forwarder`]. The
connection cap (`limits.max_connections`) is kept here too.
*/

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::proxy::{http_proxy, HttpProxy};
use pingora::server::configuration::ServerConf;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::access;
use crate::config::SnapshotHandle;
use crate::conn::{Body, Conn};
use crate::failure::Failure;
use crate::head::{self, Ended};
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
    /// Client connections being served (`limits.max_connections`).
    slots: Arc<Slots>,
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
            slots: Arc::default(),
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
                        let max = self.snapshots.load().limits.max_connections;
                        let Some(slot) = self.slots.take(max) else {
                            // Past the cap: answer at once rather than leave it in the
                            // backlog (the answer itself is bounded by REFUSE_LINGER).
                            conns.spawn(async move {
                                let mut conn = Conn::new(Box::new(L4Stream::from(sock)));
                                refuse(&mut conn, &Failure::too_many_connections(max)).await;
                            });
                            continue;
                        };
                        let daemon = self.clone();
                        let shutdown = shutdown.clone();
                        conns.spawn(async move {
                            daemon.serve_connection(sock, shutdown).await;
                            drop(slot);
                        });
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
    ///
    /// Each request head is read and judged here ([`head::read`]) before pingora sees
    /// it: a bad one is answered with our own 400/408/431 and never forwarded, a
    /// `CONNECT` goes to the tunnel (on a reused connection too), and the rest goes to
    /// pingora on a [`Conn`] that replays the head and keeps the next request's bytes
    /// for the next turn of this loop.
    async fn serve_connection(&self, sock: tokio::net::TcpStream, shutdown: watch::Receiver<bool>) {
        let _open = self.state.metrics.client_connection();
        // Who may use the daemon: decided once per connection, before a byte is read.
        if let (Ok(peer), Ok(local)) = (sock.peer_addr(), sock.local_addr()) {
            let snapshot = self.snapshots.load();
            match access::admit_connection(&snapshot.access, peer, local) {
                Ok(uid) => tracing::debug!(
                    target: "authproxy::access",
                    %peer, uid, "connection admitted"
                ),
                Err(failure) => {
                    tracing::warn!(
                        target: "authproxy::access",
                        %peer, status = failure.status, error = failure.code,
                        "connection refused: {}", failure.message
                    );
                    drop(snapshot);
                    // Counted with its code; the method was never read.
                    self.state
                        .metrics
                        .request("other", failure.status, Some(failure.code));
                    let mut conn = Conn::new(Box::new(L4Stream::from(sock)));
                    answer_and_close(&mut conn, &failure).await;
                    return;
                }
            }
        } else {
            return;
        }
        let limits = self.snapshots.load().limits;
        let mut conn = Conn::new(Box::new(L4Stream::from(sock)));
        let mut persistent: Option<HttpPersistentSettings> = None;
        let mut start = Instant::now();
        // The first request's head is due within the head deadline of the accept; later
        // ones may wait for the keep-alive time before their first byte.
        let mut idle = None;
        // Inside an intercepted CONNECT every request goes to pingora; a CONNECT there
        // is refused, not routed again.
        let mut intercepted = false;
        loop {
            let mut stop = shutdown.clone();
            let head = tokio::select! {
                h = head::read(&mut conn, &limits, start, idle) => h,
                _ = stopped(&mut stop) => return,
            };
            let head = match head {
                Ok(head) => head,
                Err(Ended::Quiet) => return,
                Err(Ended::Refused(failure)) => {
                    refuse(&mut conn, &failure).await;
                    return;
                }
            };
            if head.connect && intercepted {
                let failure = Failure::bad_target(
                    "a CONNECT inside an intercepted https connection; send the request \
                     itself",
                );
                refuse(&mut conn, &failure).await;
                return;
            }
            if head.connect {
                conn.open();
                let snapshot = self.snapshots.load_full();
                match tunnel::serve(conn, &snapshot, &self.state.metrics).await {
                    tunnel::Routed::Done => return,
                    tunnel::Routed::Intercept {
                        down,
                        target,
                        leftover,
                    } => match self
                        .intercept
                        .accept(Box::new(down), target, leftover, &snapshot)
                        .await
                    {
                        Some(tls) => {
                            conn = Conn::new(tls);
                            intercepted = true;
                            persistent = None;
                            start = Instant::now();
                            idle = None;
                            continue;
                        }
                        None => return,
                    },
                }
            }
            // After an `Upgrade` request pingora may read on past the request (the
            // upgraded protocol), so such a connection serves no further request here.
            let open_ended = head.body == Body::Open;
            conn.begin(head.len, head.rewritten.as_deref(), head.body);
            let mut session = ServerSession::new_http1(Box::new(conn));
            match persistent.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => session.set_keepalive(Some(KEEPALIVE_SECS)),
            }
            // A client that half-closes after its request still gets the response
            // (RFC 9112 §9.6); a client that stops reading releases its upstream.
            session.set_abort_on_close(false);
            // `Conn` never lets pingora read past this request, so pingora never holds a
            // pipelined prefix; with pipelining off, though, pingora resets a connection
            // whose response it sent before the request body ended, and the client loses
            // the answer (dance::a_307_replays_a_small_body_and_explains_a_large_one).
            session.set_pipelining_enabled(true);
            session.set_write_timeout(Some(limits.write_timeout));
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            let reused = match self.proxy.process_new_http(session, &shutdown).await {
                Some(reused) => reused,
                None => return,
            };
            let (stream, settings) = reused.consume();
            // pingora hands back the stream it was given: our `Conn`, with any bytes of
            // the next request still buffered in it.
            match stream.into_any().downcast::<Conn>() {
                Ok(c) if !open_ended && c.between_requests() => conn = *c,
                _ => return,
            }
            persistent = settings;
            start = Instant::now();
            idle = Some(Duration::from_secs(KEEPALIVE_SECS));
        }
    }
}

/// Answers `failure` and closes: the write side first, then whatever the client still
/// sends is read and dropped for a moment, so the answer is not lost to a reset.
async fn refuse(conn: &mut Conn, failure: &Failure) {
    tracing::warn!(
        target: "authproxy::access",
        status = failure.status, error = failure.code,
        "request refused"
    );
    answer_and_close(conn, failure).await;
}

/// [`refuse`] without its log line, for callers that log with more to say.
async fn answer_and_close(conn: &mut Conn, failure: &Failure) {
    let _ = tokio::time::timeout(REFUSE_LINGER, async {
        if conn.write_all(&failure.to_http1()).await.is_err() || conn.flush().await.is_err() {
            return;
        }
        let _ = AsyncWriteExt::shutdown(conn).await;
        let mut drained = 0;
        while drained < REFUSE_DRAIN {
            match conn.fill().await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// How long a refused connection is kept to deliver its answer.
const REFUSE_LINGER: Duration = Duration::from_secs(2);
/// How much a refused client may still send while its answer is delivered.
const REFUSE_DRAIN: usize = 1 << 20;

/// Counts the client connections being served; one [`Slot`] per connection.
#[derive(Default)]
struct Slots(AtomicUsize);

struct Slot(Arc<Slots>);

impl Slots {
    /// A slot if fewer than `max` are taken.
    fn take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
