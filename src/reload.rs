/*!
Hot reload: rebuild the snapshot when a source file changes or on SIGHUP.

`notify` watches the directories of every file the snapshot was built from, and of every
file it looked for (an rc file or config created after start is picked up), because
editors and config managers replace files by rename. Events are debounced; the new
snapshot is built off the request path and swapped in atomically. A snapshot that fails
to build is rejected whole and logged with file:line; the old one keeps serving.
*/

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::load::{self, Environment};
use crate::config::{Snapshot, SnapshotHandle};

/// How long to wait for more events before rebuilding.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Handle on the background reloader; dropping it stops watching.
pub struct Reloader {
    trigger: mpsc::UnboundedSender<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Reloader {
    /// Starts watching the files of the current snapshot. Must run inside a tokio runtime.
    pub fn start(env: Environment, handle: SnapshotHandle) -> Reloader {
        let (tx, rx) = mpsc::unbounded_channel();
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
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch configuration files; reload on SIGHUP only");
                None
            }
        };
        let mut dirs = HashSet::new();
        update_watches(&mut watcher, &mut dirs, &watched, &handle.load());
        tokio::spawn(run(
            env,
            handle,
            rx,
            watcher.is_some().then_some(()),
            watched,
            dirs,
        ));
        Reloader {
            trigger: tx,
            _watcher: watcher,
        }
    }

    /// Asks for a rebuild now (SIGHUP does this).
    pub fn trigger(&self) {
        let _ = self.trigger.send(());
    }
}

fn relevant(watched: &HashSet<PathBuf>, path: &Path) -> bool {
    watched.contains(path) || path.parent().is_some_and(|d| watched.contains(d))
}

async fn run(
    env: Environment,
    handle: SnapshotHandle,
    mut rx: mpsc::UnboundedReceiver<()>,
    _has_watcher: Option<()>,
    watched: Arc<Mutex<HashSet<PathBuf>>>,
    _dirs: HashSet<PathBuf>,
) {
    while rx.recv().await.is_some() {
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
        let env = env.clone();
        let built = tokio::task::spawn_blocking(move || load::load(&env)).await;
        match built {
            Ok(Ok(snapshot)) => {
                {
                    let mut set = watched.lock().unwrap_or_else(|e| e.into_inner());
                    set.extend(watch_set(&snapshot));
                }
                let rules = snapshot.sites.len() + snapshot.rc.len();
                for w in &snapshot.warnings {
                    tracing::warn!("{w}");
                }
                handle.store(Arc::new(snapshot));
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
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload panicked; keeping the previous configuration")
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

fn update_watches(
    watcher: &mut Option<notify::RecommendedWatcher>,
    dirs: &mut HashSet<PathBuf>,
    watched: &Arc<Mutex<HashSet<PathBuf>>>,
    snapshot: &Snapshot,
) {
    let paths: Vec<PathBuf> = watch_set(snapshot).collect();
    {
        let mut set = watched.lock().unwrap_or_else(|e| e.into_inner());
        set.extend(paths.iter().cloned());
    }
    let Some(w) = watcher.as_mut() else { return };
    for p in paths {
        // Watch the directory: files are often replaced by rename. A directory that
        // is itself a source (a CA directory) is watched as is.
        let dir = if p.is_dir() {
            Some(p.clone())
        } else {
            p.parent().map(Path::to_path_buf)
        };
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            if dirs.insert(dir.clone()) {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory");
                }
            }
        }
    }
}
