//! Sessions at certificate-plus-login servlets: one per login URL, outliving snapshots.
//!
//! A servlet (seed 003, s2dr) accepts a request only within a session that a login POST
//! opened; the session cookie lives in the jar. [`Servlets`] knows, per login URL,
//! whether a session is live, and makes sure that however many requests need a login
//! at once, exactly one logs in ([`Servlets::ensure`]) and the others take its outcome,
//! a failure included (a failed login is not repeated by every waiter).
//!
//! `session::Logins` (the redirect dance's single flight) lets waiters replay and find
//! out for themselves; here the waiters need the lead's outcome, so each login URL has
//! an async lock around its state and a generation number that counts logins. A
//! request remembers the generation it was sent under; when the servlet answers that
//! it has no session ([`Servlets::expired`]) only that generation is ended, so twenty
//! requests that all meet the expiry cause one login more, not twenty.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{self, SideRequest};
use crate::config::Snapshot;
use crate::failure::Failure;
use crate::rule::login::shown;
use crate::rule::LoginStep;
use crate::session::State;

/// Every servlet session the daemon has opened or tried to, keyed by login URL.
#[derive(Debug, Default)]
pub struct Servlets {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

#[derive(Debug, Default)]
struct Slot {
    /// `entry.generation`, readable without the lock: a request notes it before waiting,
    /// to tell whether a login happened while it waited.
    generation: AtomicU64,
    /// Logins attempted, for tests and `status`.
    attempts: AtomicU64,
    entry: tokio::sync::Mutex<Entry>,
}

#[derive(Debug, Default)]
struct Entry {
    generation: u64,
    status: Status,
    /// The step of the last successful login: where to log out.
    step: Option<Arc<LoginStep>>,
}

#[derive(Debug, Default)]
enum Status {
    /// Never logged in, or the servlet said the session ended.
    #[default]
    None,
    Live,
    Failed(Failure),
}

impl Servlets {
    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// A live session for `key`: the one there is, or the one `login` opens. Returns its
    /// generation, to hand to [`Servlets::expired`]. Concurrent callers wait for one
    /// login and share its outcome; a caller that finds a failed login it did not wait
    /// for tries once more.
    pub async fn ensure<F, Fut>(
        &self,
        key: &str,
        step: &Arc<LoginStep>,
        login: F,
    ) -> Result<u64, Failure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(), Failure>>,
    {
        let slot = self.slot(key);
        let seen = slot.generation.load(Ordering::Acquire);
        let mut entry = slot.entry.lock().await;
        if entry.generation != seen {
            // A login ended while this request waited: its outcome is ours.
            match &entry.status {
                Status::Live => return Ok(entry.generation),
                Status::Failed(f) => return Err(f.clone()),
                Status::None => {}
            }
        } else if matches!(entry.status, Status::Live) {
            return Ok(entry.generation);
        }
        slot.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = login().await;
        entry.generation += 1;
        entry.status = match &outcome {
            Ok(()) => {
                entry.step = Some(step.clone());
                Status::Live
            }
            Err(f) => Status::Failed(f.clone()),
        };
        slot.generation.store(entry.generation, Ordering::Release);
        outcome.map(|()| entry.generation)
    }

    /// The servlet answered a request sent under `generation` as if there were no
    /// session: that session is over (a later one is left alone).
    pub async fn expired(&self, key: &str, generation: u64) {
        let slot = self.slot(key);
        let mut entry = slot.entry.lock().await;
        if entry.generation == generation && matches!(entry.status, Status::Live) {
            entry.status = Status::None;
        }
    }

    /// How many logins were attempted at `key`.
    pub fn attempts(&self, key: &str) -> u64 {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .get(key)
            .map_or(0, |s| s.attempts.load(Ordering::Relaxed))
    }

    /// Logs out of every live session that has a `logout_url`, all at once, within
    /// `limit`. The logout is resolved against `snapshot` (the client certificate of its
    /// rule) and carries the session's cookie from `state`'s jar. Returns how many
    /// servlets answered; the others are logged (URL without query, never a cookie).
    pub async fn logout_all(
        &self,
        snapshot: &Arc<Snapshot>,
        state: &Arc<State>,
        limit: Duration,
    ) -> usize {
        let slots: Vec<(String, Arc<Slot>)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        let mut live = Vec::new();
        for (_, slot) in slots {
            // A login still under way at shutdown holds the lock: no session to end yet.
            let Ok(mut entry) = slot.entry.try_lock() else {
                continue;
            };
            if !matches!(entry.status, Status::Live) {
                continue;
            }
            // No request may use the session once its logout is under way.
            entry.status = Status::None;
            if let Some(url) = entry.step.as_ref().and_then(|s| s.logout_url.clone()) {
                live.push(url);
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for url in live {
            let (snapshot, state) = (snapshot.clone(), state.clone());
            set.spawn(async move {
                let shown = shown(&url);
                let req = SideRequest::post(url, bytes::Bytes::new());
                match client::send(&snapshot, &state, req).await {
                    Ok(resp) => {
                        tracing::info!(url = %shown, status = resp.status.as_u16(), "logged out");
                        true
                    }
                    Err(f) => {
                        tracing::warn!(url = %shown, error = f.code, "logout failed: {}", f.message);
                        false
                    }
                }
            });
        }
        let mut answered = 0;
        let all = async {
            while let Some(done) = set.join_next().await {
                answered += usize::from(done.unwrap_or(false));
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            // Dropping the set aborts the logouts still under way.
            tracing::warn!("logouts not finished within {limit:?}; giving up on the rest");
        }
        answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> Arc<LoginStep> {
        Arc::new(LoginStep {
            url: url::Url::parse("https://s.example:8443/s2dr/login").unwrap(),
            method: http::Method::POST,
            body: None,
            logout_url: None,
            when: vec![401],
        })
    }

    #[tokio::test]
    async fn one_login_for_many_and_one_more_per_expired_generation() {
        let servlets = Arc::new(Servlets::default());
        let step = step();
        let calls = Arc::new(AtomicU64::new(0));
        let login = |calls: Arc<AtomicU64>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        };
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (s, st, c) = (servlets.clone(), step.clone(), calls.clone());
                tokio::spawn(async move { s.ensure("k", &st, || login(c)).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(1));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // An expiry seen under generation 1 ends it; a stale one (0) changes nothing.
        servlets.expired("k", 0).await;
        assert_eq!(
            servlets.ensure("k", &step, || login(calls.clone())).await,
            Ok(1)
        );
        servlets.expired("k", 1).await;
        servlets.expired("k", 1).await;
        assert_eq!(
            servlets.ensure("k", &step, || login(calls.clone())).await,
            Ok(2)
        );
        servlets.expired("k", 1).await;
        assert_eq!(
            servlets.ensure("k", &step, || login(calls.clone())).await,
            Ok(2)
        );
        assert_eq!(
            (calls.load(Ordering::SeqCst), servlets.attempts("k")),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn waiters_share_a_failure_and_a_later_request_tries_again() {
        let servlets = Arc::new(Servlets::default());
        let step = step();
        let calls = Arc::new(AtomicU64::new(0));
        let failing = |calls: Arc<AtomicU64>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(Failure::new(500, "login_failed", "no"))
        };
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let (s, st, c) = (servlets.clone(), step.clone(), calls.clone());
                tokio::spawn(async move { s.ensure("k", &st, || failing(c)).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err().status, 500);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let ok = servlets.ensure("k", &step, || async { Ok(()) }).await;
        assert_eq!(ok, Ok(2));
    }
}
