/*!
Hot reload: rebuild the snapshot when a source file changes or on SIGHUP.

`notify` watches the directories of every file the snapshot was built from, and of every
file it looked for (an rc file or config created after start is picked up), because
editors and config managers replace files by rename. Events are debounced; the new
snapshot is built off the request path and swapped in atomically. A snapshot that fails
to build is rejected whole and logged with file:line; the old one keeps serving.

systemd is told `RELOADING=1` when a rebuild is asked for and `READY=1` when it is over
(taken or rejected), and the loop beats a [`Heartbeat`] for the watchdog.
*/

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use crate::config::load::{self, Environment};
use crate::config::{Snapshot, SnapshotHandle};
use crate::lifecycle::{self, Heartbeat};
use crate::metrics::ReloadOutcome;
use crate::session::State;

/// How long to wait for more events before rebuilding.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Handle on the background reloader; dropping it stops watching.
pub struct Reloader {
    trigger: mpsc::UnboundedSender<()>,
    _stop: oneshot::Sender<()>,
}

impl Reloader {
    /// Starts watching the files of the current snapshot. Must run inside a tokio runtime.
    pub fn start(env: Environment, handle: SnapshotHandle) -> Reloader {
        Reloader::start_with_state(env, handle, None)
    }

    /// [`Reloader::start`], telling `state` (what outlives snapshots) about each new one.
    pub fn start_with_state(
        env: Environment,
        handle: SnapshotHandle,
        state: Option<Arc<State>>,
    ) -> Reloader {
        Reloader::spawn(env, handle, state, None)
    }

    /// The daemon's reloader: [`Reloader::start_with_state`] whose loop beats `heart`
    /// for the systemd watchdog and tells the service manager `RELOADING=1`/`READY=1`
    /// around each rebuild (the others tell nobody: a test's reloader is no service's).
    pub fn start_watched(
        env: Environment,
        handle: SnapshotHandle,
        state: Option<Arc<State>>,
        heart: Heartbeat,
    ) -> Reloader {
        Reloader::spawn(env, handle, state, Some(heart))
    }

    fn spawn(
        env: Environment,
        handle: SnapshotHandle,
        state: Option<Arc<State>>,
        heart: Option<Heartbeat>,
    ) -> Reloader {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let watched: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let watcher = {
            let tx = tx.clone();
            let watched = watched.clone();
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                let set = watched.lock().unwrap_or_else(|e| e.into_inner());
                if event.paths.iter().any(|p| relevant(&set, p)) {
                    let _ = tx.send(());
                }
            })
        };
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch configuration files; reload on SIGHUP only");
                None
            }
        };
        let mut watches = Watches {
            watcher,
            dirs: HashSet::new(),
            watched,
        };
        watches.update(&handle.load());
        tokio::spawn(run(env, handle, state, rx, stopped, watches, heart));
        Reloader {
            trigger: tx,
            _stop: stop,
        }
    }

    /// Asks for a rebuild now (SIGHUP does this).
    pub fn trigger(&self) {
        let _ = self.trigger.send(());
    }
}

/// Whether an event on `path` concerns a watched file: the file itself, a file in a
/// watched directory (a CA directory), or a directory on the way to a watched file
/// that did not exist yet (`~/.config/authproxy` created after start).
fn relevant(watched: &HashSet<PathBuf>, path: &Path) -> bool {
    watched.contains(path)
        || path.parent().is_some_and(|d| watched.contains(d))
        || watched.iter().any(|w| w.starts_with(path))
}

async fn run(
    env: Environment,
    handle: SnapshotHandle,
    state: Option<Arc<State>>,
    mut rx: mpsc::UnboundedReceiver<()>,
    mut stopped: oneshot::Receiver<()>,
    mut watches: Watches,
    mut heart: Option<Heartbeat>,
) {
    let service = heart.is_some();
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { return },
            _ = &mut stopped => return,
            _ = lifecycle::pace(&mut heart) => continue,
        }
        // Told at once, before the debounce: `systemctl reload` (kill -HUP) returns
        // immediately, and systemd should see the reload start as near to it as can be.
        if service {
            lifecycle::notify_reloading();
        }
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let env = env.clone();
        let built = tokio::task::spawn_blocking(move || load::load(&env)).await;
        match built {
            Ok(Ok(snapshot)) if has_new_problems(&snapshot, &handle.load()) => {
                watches.update(&snapshot);
                for e in &snapshot.unusable {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    "configuration reload rejected: TLS files that loaded before do not now; \
                     the previous configuration keeps serving"
                );
                counted(&state, ReloadOutcome::Rejected);
            }
            Ok(Ok(snapshot)) => {
                watches.update(&snapshot);
                for e in &snapshot.unusable {
                    tracing::error!("{e}");
                }
                let rules = snapshot.sites.len() + snapshot.rc.len();
                for w in &snapshot.warnings {
                    tracing::warn!("{w}");
                }
                if let Some(state) = &state {
                    state.reloaded(&snapshot);
                }
                handle.store(Arc::new(snapshot));
                counted(&state, ReloadOutcome::Ok);
                tracing::info!(rules, "configuration reloaded");
            }
            Ok(Err(errors)) => {
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "configuration reload failed; the previous configuration keeps serving"
                );
                counted(&state, ReloadOutcome::Failed);
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload panicked; keeping the previous configuration");
                counted(&state, ReloadOutcome::Failed);
            }
        }
        // Whether the new snapshot was taken or rejected, the daemon serves again.
        if service {
            lifecycle::notify_ready();
        }
    }
}

/// Counts a reload in the state's metrics (a reloader without state counts nothing).
fn counted(state: &Option<Arc<State>>, outcome: ReloadOutcome) {
    if let Some(state) = state {
        state.metrics.reload(outcome);
    }
}

/// Whether `new` has unusable TLS files that `old` did not: a reload must not turn a
/// working host into a failing one. Problems are compared by what failed (option and
/// files), not by their message, which names a line that edits above it move.
fn has_new_problems(new: &Snapshot, old: &Snapshot) -> bool {
    new.unusable
        .iter()
        .any(|e| !old.unusable.iter().any(|o| o.what == e.what))
}

/// The watcher and what it watches.
struct Watches {
    watcher: Option<notify::RecommendedWatcher>,
    /// Directories given to the watcher.
    dirs: HashSet<PathBuf>,
    /// Paths whose events trigger a rebuild (shared with the watcher's callback).
    watched: Arc<Mutex<HashSet<PathBuf>>>,
}

impl Watches {
    /// Watches every file of `snapshot` (and every file it looked for) through its
    /// directory: files are often replaced by rename. A directory that is itself a
    /// source (a CA directory) is watched as is. Paths only accumulate: a file that a
    /// later edit drops is still watched, which costs one spurious rebuild at most.
    fn update(&mut self, snapshot: &Snapshot) {
        let paths: Vec<PathBuf> = watch_set(snapshot).collect();
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(paths.iter().cloned());
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        for p in paths {
            // The directory holding the file, or, while that does not exist yet, its
            // nearest existing ancestor (whose events say when the path appears).
            let start = if p.is_dir() {
                Some(p.as_path())
            } else {
                p.parent()
            };
            let Some(dir) = start.and_then(|d| d.ancestors().find(|a| a.is_dir())) else {
                continue;
            };
            let dir = dir.to_path_buf();
            if self.dirs.insert(dir.clone()) {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
    }
}

/// Every path whose change should trigger a rebuild: the snapshot's files and the
/// files it looked for.
fn watch_set(snapshot: &Snapshot) -> impl Iterator<Item = PathBuf> + '_ {
    snapshot
        .files
        .iter()
        .chain(&snapshot.watch)
        .map(|p| absolute(p))
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
