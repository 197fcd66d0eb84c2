//! Logins in flight, one per data server: single flight.
//!
//! When many requests meet the same data server's login at once, the first one runs the
//! login ([`Turn::Lead`]) and the others wait for it ([`Turn::Wait`]), then replay their
//! requests with the cookies it brought into the jar. The lead ends when its guard is
//! dropped: the login came back to the data, failed, or its request ended.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// Every login in flight, keyed by the data server's origin (`scheme://host:port`).
#[derive(Debug, Default)]
pub struct Logins {
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// What a request that needs a login does.
#[derive(Debug)]
pub enum Turn {
    /// Run the login; others wait until the guard is dropped.
    Lead(LoginGuard),
    /// Another request is logging in: wait for it, then replay.
    Wait(watch::Receiver<()>),
}

/// Held by the request that runs a login; dropping it lets the waiters go.
#[derive(Debug)]
pub struct LoginGuard {
    logins: Arc<Logins>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for LoginGuard {
    fn drop(&mut self) {
        let mut map = self
            .logins
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.remove(&self.key);
        // `_done` drops after this: every waiter's `changed()` returns.
    }
}

impl Logins {
    /// Leads the login for `key`, or joins the one in flight.
    pub fn begin(self: &Arc<Self>, key: &str) -> Turn {
        let mut map = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = map.get(key) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        map.insert(key.to_owned(), rx);
        Turn::Lead(LoginGuard {
            logins: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// The number of logins in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().map_or(0, |m| m.len())
    }
}

/// Waits until the login the receiver belongs to has ended, at most `limit`. Returns
/// whether it ended in time.
pub async fn wait(mut rx: watch::Receiver<()>, limit: Duration) -> bool {
    // The sender is never used to send: `changed` returns when it is dropped.
    tokio::time::timeout(limit, async { while rx.changed().await.is_ok() {} })
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leads_the_others_wait_until_it_is_done() {
        let logins = Arc::new(Logins::default());
        let lead = match logins.begin("http://d:80") {
            Turn::Lead(g) => g,
            Turn::Wait(_) => panic!("the first request must lead"),
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| match logins.begin("http://d:80") {
                Turn::Wait(rx) => tokio::spawn(wait(rx, Duration::from_secs(5))),
                Turn::Lead(_) => panic!("only one lead"),
            })
            .collect();
        assert!(matches!(logins.begin("http://other:80"), Turn::Lead(_)));
        assert_eq!(logins.in_flight(), 1, "the other lead ended at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        drop(lead);
        for w in waiters {
            assert!(w.await.unwrap(), "a waiter was not released");
        }
        assert_eq!(logins.in_flight(), 0);
        assert!(matches!(logins.begin("http://d:80"), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn a_waiter_gives_up_after_its_limit() {
        let logins = Arc::new(Logins::default());
        let _lead = logins.begin("k");
        let Turn::Wait(rx) = logins.begin("k") else {
            panic!("expected to wait")
        };
        assert!(!wait(rx, Duration::from_millis(30)).await);
    }
}
