/*!
Query keys (`query_token`, Handcar's agent keys): fetched once, kept, refreshed ahead.

A key outlives the snapshot it was fetched under: the store is keyed by the rule's
[`QueryToken::key_id`] (its source and lifetimes), so a reload that keeps the source keeps
the key, and a reload that drops the rule drops the key and stops its refresher
([`Keys::retain`]). No request ever fetches a key while a valid one is held:

* the first request that needs a key fetches it (one fetch for any number of concurrent
  requests: they wait on the entry's fetch lock, then find the key);
* a refresher task then fetches the next key `refresh_before` ahead of the expiry, as
  long as the key is in use (an unused key is left to expire; the next request fetches);
* when the source fails, requests keep getting the old key while it is valid, then an
  explained 502 (`query_token_unavailable`), never the guest's way in. After a failure,
  requests within [`retry_interval`] get that answer without fetching again.

A key's lifetime counts from the moment its fetch *started*, so the daemon never thinks
a key valid that the service has already expired. Keys are never logged: log lines
name the site's `query_token` line and the source, and say how long the key is.

The sources and what counts as a key in their answers are in [`source`]; the optional
`cache_file` in [`cache`].
*/

mod cache;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{Snapshot, SnapshotHandle};
use crate::failure::Failure;
use crate::rule::{KeySource, QueryToken};
use crate::secret::Secret;

pub use source::parse_key;

/// The state of every fetched key, by [`QueryToken::key_id`].
#[derive(Debug, Default)]
pub struct Keys {
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// One key source's key.
#[derive(Debug)]
struct Entry {
    id: u64,
    slot: Mutex<Slot>,
    /// Held while fetching: one fetch at a time per source.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Slot {
    key: Option<Held>,
    /// A request used the key since it was fetched.
    used: bool,
    /// The last failed fetch: when it ended, and the answer requests get.
    failed: Option<(Instant, Failure)>,
    /// The running refresher.
    refresher: Option<tokio::task::AbortHandle>,
    /// The host the key is for (the last request's), for the refresher's messages.
    host: String,
}

#[derive(Debug)]
struct Held {
    key: Secret<String>,
    expires: Instant,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(r) = self.lock().refresher.take() {
            r.abort();
        }
    }
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held key if it is still valid, marked used.
    fn valid(&self, now: Instant) -> Option<Secret<String>> {
        let mut slot = self.lock();
        let key = slot.key.as_ref().filter(|h| now < h.expires)?.key.clone();
        slot.used = true;
        Some(key)
    }
}

impl Keys {
    /// Forgets the keys of sources that `snapshot` no longer has, and stops their
    /// refreshers. Keys of sources it still has are kept, and their last failure is
    /// forgotten: the new configuration may have fixed it (a password file, a
    /// certificate), so the next request tries at once.
    pub fn retain(&self, snapshot: &Snapshot) {
        let live: Vec<u64> = specs(snapshot).map(|q| q.key_id()).collect();
        let dropped: Vec<Arc<Entry>> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for e in entries.values() {
                e.lock().failed = None;
            }
            let gone: Vec<u64> = entries
                .keys()
                .filter(|id| !live.contains(id))
                .copied()
                .collect();
            gone.iter().filter_map(|id| entries.remove(id)).collect()
        };
        for e in dropped {
            if let Some(r) = e.lock().refresher.take() {
                r.abort();
            }
            tracing::info!("a query_token source left the configuration; its key is forgotten");
        }
    }

    /// How many sources have a refresher running (for tests and status).
    pub fn refreshing(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .values()
            .filter(|e| {
                e.lock()
                    .refresher
                    .as_ref()
                    .is_some_and(|r| !r.is_finished())
            })
            .count()
    }

    fn entry(&self, spec: &QueryToken) -> Arc<Entry> {
        let id = spec.key_id();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .entry(id)
            .or_insert_with(|| {
                let entry = Arc::new(Entry {
                    id,
                    slot: Mutex::default(),
                    fetching: tokio::sync::Mutex::new(()),
                });
                if let Some(held) = spec.cache_file.as_deref().and_then(|p| cache::read(p, id)) {
                    entry.lock().key = Some(held);
                }
                entry
            })
            .clone()
    }
}

impl super::State {
    /// The key for a request to `host` under `spec`, from `snapshot` (the request's).
    /// `snapshots` is the daemon's current configuration, which a refresher started here
    /// fetches with. `Err` is the explained 502 the client gets.
    pub async fn query_key(
        self: &Arc<Self>,
        snapshots: &SnapshotHandle,
        snapshot: &Snapshot,
        spec: &Arc<QueryToken>,
        host: &str,
    ) -> Result<Secret<String>, Failure> {
        if let KeySource::File { key, .. } = &spec.source {
            return Ok(key.clone());
        }
        let entry = self.keys.entry(spec);
        if let Some(key) = entry.valid(Instant::now()) {
            self.ensure_refresher(&entry, snapshots);
            return Ok(key);
        }
        let recent = |entry: &Entry| {
            let slot = entry.lock();
            slot.failed
                .as_ref()
                .filter(|(at, _)| at.elapsed() < retry_interval(spec))
                .map(|(_, f)| f.clone())
        };
        if let Some(f) = recent(&entry) {
            return Err(f);
        }
        if entry.lock().host != host {
            entry.lock().host = host.to_owned();
        }
        let _fetching = entry.fetching.lock().await;
        // Another request may have fetched (or failed) while this one waited.
        if let Some(key) = entry.valid(Instant::now()) {
            self.ensure_refresher(&entry, snapshots);
            return Ok(key);
        }
        if let Some(f) = recent(&entry) {
            return Err(f);
        }
        match self.fetch_into(&entry, snapshot, spec).await {
            Ok(key) => {
                entry.lock().used = true;
                self.ensure_refresher(&entry, snapshots);
                Ok(key)
            }
            Err(f) => Err(f),
        }
    }

    /// Fetches a key for `entry` and stores it (or the failure). The caller holds the
    /// entry's fetch lock.
    async fn fetch_into(
        &self,
        entry: &Entry,
        snapshot: &Snapshot,
        spec: &QueryToken,
    ) -> Result<Secret<String>, Failure> {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        match source::fetch(snapshot, self, spec).await {
            Ok(key) => {
                let key = Secret::new(key);
                let expires = started + spec.lifetime;
                if let Some(path) = &spec.cache_file {
                    if let Err(e) = cache::write(path, entry.id, &key, started_wall + spec.lifetime)
                    {
                        tracing::warn!(
                            "{}: cannot write the query_token cache_file {}: {e}",
                            spec.origin,
                            path.display()
                        );
                    }
                }
                tracing::debug!(
                    source = %spec.source.shown(),
                    bytes = key.expose().len(),
                    valid_for = ?spec.lifetime,
                    "query key fetched"
                );
                let mut slot = entry.lock();
                slot.key = Some(Held {
                    key: key.clone(),
                    expires,
                });
                slot.used = false;
                slot.failed = None;
                Ok(key)
            }
            Err(why) => {
                let mut slot = entry.lock();
                let still = slot
                    .key
                    .as_ref()
                    .filter(|h| Instant::now() < h.expires)
                    .map(|h| h.expires - Instant::now());
                tracing::warn!(
                    "{}: could not get a query key ({}): {why}{}",
                    spec.origin,
                    spec.source.shown(),
                    still.map_or(String::new(), |d| format!(
                        "; the current key stays in use for {}ms",
                        d.as_millis()
                    ))
                );
                let f = unavailable(&spec.param, &slot.host, &why);
                slot.failed = Some((Instant::now(), f.clone()));
                Err(f)
            }
        }
    }

    /// Starts the entry's refresher unless one runs.
    fn ensure_refresher(self: &Arc<Self>, entry: &Arc<Entry>, snapshots: &SnapshotHandle) {
        let mut slot = entry.lock();
        if slot.refresher.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let task = tokio::spawn(refresh(
            Arc::downgrade(self),
            Arc::downgrade(entry),
            snapshots.clone(),
        ));
        slot.refresher = Some(task.abort_handle());
    }
}

/// The refresher of one entry: fetches the next key `refresh_before` ahead of the
/// expiry while the key is in use, retrying a failed fetch every [`retry_interval`]
/// until the key expires. Ends when the key goes unused, when it expires without a
/// successor, or when the configuration no longer has the source (or is aborted by
/// [`Keys::retain`]).
async fn refresh(state: Weak<super::State>, entry: Weak<Entry>, snapshots: SnapshotHandle) {
    loop {
        let Some(e) = entry.upgrade() else { return };
        let Some(expires) = e.lock().key.as_ref().map(|h| h.expires) else {
            return;
        };
        let id = e.id;
        drop(e);
        let Some(spec) = current_spec(&snapshots, id) else {
            return;
        };
        tokio::time::sleep_until(expires.checked_sub(spec.refresh_before).unwrap_or(expires)).await;
        loop {
            let (Some(state), Some(e)) = (state.upgrade(), entry.upgrade()) else {
                return;
            };
            if !e.lock().used {
                // Nobody needed this key: let it expire; the next request fetches.
                return;
            }
            let snapshot = snapshots.load_full();
            let Some(spec) = specs(&snapshot).find(|q| q.key_id() == id).cloned() else {
                return;
            };
            let fetched = {
                let _fetching = e.fetching.lock().await;
                let fresh = e.lock().key.as_ref().is_some_and(|h| h.expires > expires);
                // A request may have fetched a newer key in the meantime.
                fresh || state.fetch_into(&e, &snapshot, &spec).await.is_ok()
            };
            if fetched {
                break;
            }
            let retry = Instant::now() + retry_interval(&spec);
            if retry >= expires {
                // The key expires before the next try: requests fetch on demand now.
                return;
            }
            drop((state, e));
            tokio::time::sleep_until(retry).await;
        }
    }
}

fn current_spec(snapshots: &SnapshotHandle, id: u64) -> Option<Arc<QueryToken>> {
    let snapshot = snapshots.load();
    let found = specs(&snapshot).find(|q| q.key_id() == id).cloned();
    found
}

/// Every fetched `query_token` of a snapshot.
fn specs(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<QueryToken>> {
    snapshot
        .sites
        .iter()
        .filter_map(|r| r.query_token.as_ref())
        .filter(|q| q.source.is_fetched())
}

/// How soon a failed source is asked again: a fifth of the refresh head start, between
/// a quarter second and half a minute.
pub fn retry_interval(spec: &QueryToken) -> Duration {
    (spec.refresh_before / 5).clamp(Duration::from_millis(250), Duration::from_secs(30))
}

/// The client's answer when no valid key can be had.
pub fn unavailable(param: &str, host: &str, why: &str) -> Failure {
    let for_host = if host.is_empty() {
        String::new()
    } else {
        format!(" for {host}")
    };
    Failure::new(
        502,
        "query_token_unavailable",
        format!(
            "authproxy has no valid key for the `{param}` query parameter{for_host}: {why}. \
             The request was not sent, so that it is not served as a guest's; it will work \
             again once the key source answers."
        ),
    )
}
