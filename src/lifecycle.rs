/*!
The daemon's life under a service manager: telling systemd where it is (`sd_notify(3)`),
proving it is alive (the watchdog), serving the sockets systemd bound for it (socket
activation) and ending on a signal.

Everything here does nothing outside systemd: without `NOTIFY_SOCKET` no message is
sent, without `WATCHDOG_USEC` there are no pings, and without `LISTEN_FDS` for this
process's `LISTEN_PID` the daemon binds its `listen` addresses itself.

The watchdog pings only while the parts that must keep running are alive: each of them
(every accept loop, the reloader) holds a [`Heartbeat`] and beats it from its own loop.
A loop that is stuck stops beating, one that ended drops its heart; either way the pings
stop and systemd restarts the daemon. A timer that pinged on its own would prove only
that the runtime still runs timers.
*/

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

// === notify ===

/// `READY=1`: every listener is bound (at start), or a reload is over.
pub fn notify_ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (systemd matches the two to time the reload).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`: a stop signal arrived; requests in flight are draining.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}

/// Sends to `$NOTIFY_SOCKET` (nothing when unset). A failure is logged once: the daemon
/// serves on, and a manager that cannot be told will say so in its own log.
fn send(states: &[NotifyState<'_>]) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Err(e) = sd_notify::notify(states) {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}

// === socket activation ===

/// The sockets the service manager bound for this process (`LISTEN_FDS`, when
/// `LISTEN_PID` is this process), in order; empty when there are none. An fd that is
/// not a listening TCP socket is an error naming it.
pub fn inherited_listeners() -> io::Result<Vec<std::net::TcpListener>> {
    // sd-notify checks LISTEN_PID strictly (unset or another pid: not ours).
    let count = sd_notify::listen_fds()
        .map_err(|e| io::Error::new(e.kind(), format!("LISTEN_FDS/LISTEN_PID: {e}")))?
        .len();
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut fds = listenfd::ListenFd::from_env();
    (0..count)
        .map(|i| {
            let fd = 3 + i;
            let listener = fds
                .take_tcp_listener(i)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("LISTEN_FDS: fd {fd} is not a TCP listening socket ({e})"),
                    )
                })?
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("LISTEN_FDS: no fd {fd}"))
                })?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .collect()
}

// === watchdog ===

/// `WATCHDOG_USEC` when it is meant for this process.
pub fn watchdog_timeout() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// The hearts of the parts the watchdog vouches for.
#[derive(Clone)]
pub struct Pulse {
    hearts: Arc<Mutex<Vec<Arc<HeartState>>>>,
    epoch: Instant,
    beat_every: Duration,
}

struct HeartState {
    name: String,
    /// Milliseconds from the pulse's epoch to the last beat.
    last: AtomicU64,
    /// False once the [`Heartbeat`] is dropped: its loop has ended.
    alive: AtomicBool,
}

/// One part's heart: beat it from that part's own loop ([`pace`]).
pub struct Heartbeat {
    state: Arc<HeartState>,
    epoch: Instant,
    ticks: Interval,
}

impl Pulse {
    /// Hearts beat eight times per watchdog timeout (at most once a second), so a beat
    /// late by a busy machine's scheduling does not cost a ping. Without a watchdog they
    /// beat once a second, which costs nothing.
    pub fn new(watchdog: Option<Duration>) -> Pulse {
        let beat_every = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 8).clamp(Duration::from_millis(5), Duration::from_secs(1))
        });
        Pulse {
            hearts: Arc::default(),
            epoch: Instant::now(),
            beat_every,
        }
    }

    /// A new heart, named for the log ("accept loop on 127.0.0.1:3128"). It counts as
    /// beating now. Must be called inside a tokio runtime.
    pub fn heart(&self, name: impl Into<String>) -> Heartbeat {
        let state = Arc::new(HeartState {
            name: name.into(),
            last: AtomicU64::new(millis(self.epoch)),
            alive: AtomicBool::new(true),
        });
        self.hearts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state.clone());
        let mut ticks = tokio::time::interval(self.beat_every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat {
            state,
            epoch: self.epoch,
            ticks,
        }
    }

    /// The first part whose heart has stopped or has not beaten for `within`, and why;
    /// `None` while every heart beats.
    pub fn stalled(&self, within: Duration) -> Option<String> {
        let now = millis(self.epoch);
        let hearts = self.hearts.lock().unwrap_or_else(|e| e.into_inner());
        hearts.iter().find_map(|h| {
            if !h.alive.load(Ordering::Relaxed) {
                return Some(format!("the {} has ended", h.name));
            }
            let quiet = Duration::from_millis(now.saturating_sub(h.last.load(Ordering::Relaxed)));
            (quiet > within).then(|| format!("the {} has not run for {quiet:?}", h.name))
        })
    }
}

impl Heartbeat {
    /// Marks this part alive now.
    pub fn beat(&self) {
        self.state.last.store(millis(self.epoch), Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.state.alive.store(false, Ordering::Relaxed);
    }
}

/// Waits for the heart's next beat and beats it; never resolves without a heart. Meant
/// as a `tokio::select!` branch of the loop the heart belongs to (cancel-safe).
pub async fn pace(heart: &mut Option<Heartbeat>) {
    match heart {
        Some(h) => {
            h.ticks.tick().await;
            h.beat();
        }
        None => std::future::pending().await,
    }
}

fn millis(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Sends `WATCHDOG=1` every half `timeout` while every heart of `pulse` beats, until
/// `shutdown`. A stall is logged when it starts and when it ends.
pub fn spawn_watchdog(
    pulse: Pulse,
    timeout: Duration,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = timeout / 2;
    tracing::info!(
        interval = ?every,
        "watchdog: telling systemd the daemon is alive while its accept loops and reloader run"
    );
    tokio::spawn(watchdog(pulse, every, shutdown, || {
        send(&[NotifyState::Watchdog])
    }))
}

/// The watchdog loop: `ping` every `every` while the pulse is healthy.
async fn watchdog(
    pulse: Pulse,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut ping: impl FnMut(),
) {
    // The first ping after `every`: READY=1 has just been sent.
    let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stalled = false;
    loop {
        tokio::select! {
            // Shutdown first: the accept loops end with it, which is no stall.
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = ticks.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        match pulse.stalled(every) {
            None => {
                if std::mem::take(&mut stalled) {
                    tracing::warn!("watchdog: every part runs again; pinging systemd again");
                }
                ping();
            }
            Some(why) => {
                if !std::mem::replace(&mut stalled, true) {
                    tracing::error!(
                        "watchdog: {why}; no longer telling systemd the daemon is alive"
                    );
                }
            }
        }
    }
}

// === signals ===

/// The stop and reload signals, caught from the moment [`Signals::install`] returns:
/// install them before `READY=1`, or a SIGHUP sent right after it would kill the daemon
/// (its default action).
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Catches SIGTERM, SIGINT and SIGHUP. Must be called inside a tokio runtime.
    pub fn install() -> io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for SIGTERM or SIGINT and returns its name; on each SIGHUP calls `hangup`
    /// (a reload) and waits on.
    pub async fn stop(mut self, hangup: impl Fn()) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    hangup();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_quiet_or_ended_heart_stalls_the_pulse() {
        let pulse = Pulse::new(Some(Duration::from_millis(400)));
        let roomy = Duration::from_secs(10);
        let mut accept = Some(pulse.heart("accept loop"));
        let reload = pulse.heart("reloader");
        assert_eq!(pulse.stalled(roomy), None);
        // The accept loop paces itself (50 ms beats); the reloader does not beat.
        for _ in 0..6 {
            pace(&mut accept).await;
        }
        let why = pulse.stalled(Duration::from_millis(200)).unwrap();
        assert!(why.starts_with("the reloader has not run for"), "{why}");
        reload.beat();
        assert_eq!(pulse.stalled(Duration::from_millis(200)), None);
        drop(accept);
        assert_eq!(
            pulse.stalled(roomy).as_deref(),
            Some("the accept loop has ended")
        );
    }

    /// Pings stop when a part stops beating (a stuck loop) and when one ends.
    #[tokio::test]
    async fn the_watchdog_pings_only_while_every_heart_beats() {
        let pulse = Pulse::new(Some(Duration::from_millis(200)));
        let mut accept = Some(pulse.heart("accept loop"));
        let mut reload = Some(pulse.heart("reloader"));
        let pings = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        let p = pings.clone();
        let dog = tokio::spawn(watchdog(
            pulse,
            Duration::from_millis(100),
            stopped,
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let count = || pings.load(Ordering::SeqCst);
        // Both beat (25 ms) for 550 ms: about five pings.
        let until = Instant::now() + Duration::from_millis(550);
        while Instant::now() < until {
            tokio::select! {
                _ = pace(&mut accept) => {}
                _ = pace(&mut reload) => {}
            }
        }
        let beating = count();
        assert!((2..=6).contains(&beating), "{beating} pings");
        // The reloader is stuck: it never beats again.
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            pace(&mut accept).await;
        }
        let stuck = count();
        assert!(stuck <= beating + 1, "{beating} then {stuck}");
        // It beats again: the pings come back.
        let until = Instant::now() + Duration::from_millis(450);
        while Instant::now() < until {
            tokio::select! {
                _ = pace(&mut accept) => {}
                _ = pace(&mut reload) => {}
            }
        }
        let again = count();
        assert!(again > stuck, "{stuck} then {again}");
        // The accept loop ends while the reloader beats on.
        drop(accept);
        let until = Instant::now() + Duration::from_millis(400);
        while Instant::now() < until {
            pace(&mut reload).await;
        }
        assert!(count() <= again + 1, "{again} then {}", count());
        let _ = stop.send(true);
        dog.await.unwrap();
    }

    #[test]
    fn beats_come_eight_times_per_timeout_at_most_once_a_second() {
        let every = |w: Option<u64>| Pulse::new(w.map(Duration::from_millis)).beat_every;
        assert_eq!(every(Some(400)), Duration::from_millis(50));
        assert_eq!(every(Some(30_000)), Duration::from_secs(1));
        assert_eq!(every(None), Duration::from_secs(1));
    }
}
