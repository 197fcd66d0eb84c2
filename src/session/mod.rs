/*!
State that outlives a configuration snapshot: the cookie jar and the logins in flight.

[`Jar`] keeps every cookie the daemon sees and sends it back to the hosts it belongs to;
[`netscape`] reads and writes libcurl's cookie-file format, so that curl and the daemon
can share one jar; [`spawn_writer`] keeps the file within seconds of the jar.
*/

pub mod jar;
pub mod logins;
pub mod netscape;

use std::sync::Arc;

pub use jar::{default_path, spawn_writer, write_atomically, Jar, JarProblem};
pub use logins::{LoginGuard, Logins, Turn};

/// What the daemon keeps across configuration reloads, shared by every request.
#[derive(Debug, Default)]
pub struct State {
    pub jar: Arc<Jar>,
    pub logins: Arc<Logins>,
    /// The admin listener's counts: a reload must not reset them.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl State {
    pub fn with_jar(jar: Arc<Jar>) -> State {
        State {
            jar,
            logins: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Told about each configuration that replaces the current one. The jar and the
    /// logins in flight carry on; a jar file named anew is read at the next start only
    /// (moving cookies between files under a running daemon could lose some), and the
    /// log says so. Returns the warning, if any.
    pub fn reloaded(&self, snapshot: &crate::config::Snapshot) -> Option<String> {
        let wanted = snapshot.cookie_jar.as_deref()?;
        if self.jar.path() == Some(wanted) {
            return None;
        }
        let now = self
            .jar
            .path()
            .map_or("memory".to_owned(), |p| p.display().to_string());
        let warning = format!(
            "the configuration names the cookie jar {}; authproxy keeps using {now} until \
             it restarts",
            wanted.display()
        );
        tracing::warn!("{warning}");
        Some(warning)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_jar_path_is_taken_at_restart_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let (jar, _) = Jar::open(dir.path().join("a.txt"));
        let state = State::with_jar(Arc::new(jar));
        let mut snap = crate::config::Snapshot::default();
        assert_eq!(state.reloaded(&snap), None);
        snap.cookie_jar = Some(dir.path().join("a.txt"));
        assert_eq!(state.reloaded(&snap), None);
        snap.cookie_jar = Some(dir.path().join("b.txt"));
        let w = state.reloaded(&snap).unwrap();
        assert!(w.contains("b.txt") && w.contains("a.txt"), "{w}");
    }
}
