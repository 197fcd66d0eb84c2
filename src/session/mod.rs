/*!
State that outlives a configuration snapshot: the cookie jar, the logins in flight and
the servlet sessions.

[`Jar`] keeps every cookie the daemon sees and sends it back to the hosts it belongs to;
[`netscape`] reads and writes libcurl's cookie-file format, so that curl and the daemon
can share one jar; [`spawn_writer`] keeps the file within seconds of the jar. [`keys`]
holds the query keys (`query_token`) and refreshes them ahead of their expiry.
*/

pub mod jar;
pub mod keys;
pub mod logins;
pub mod netscape;
pub mod servlet;

use std::sync::Arc;

pub use jar::{default_path, spawn_writer, write_atomically, Jar, JarProblem};
pub use keys::Keys;
pub use logins::{LoginGuard, Logins, Turn};
pub use servlet::Servlets;

/// What the daemon keeps across configuration reloads, shared by every request.
#[derive(Debug, Default)]
pub struct State {
    pub jar: Arc<Jar>,
    pub logins: Arc<Logins>,
    /// Sessions at certificate-plus-login servlets (YAML `login`).
    pub servlets: Arc<Servlets>,
    /// Query keys (`query_token`) and their refreshers.
    pub keys: Arc<Keys>,
    /// The admin listener's counts: a reload must not reset them.
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl State {
    pub fn with_jar(jar: Arc<Jar>) -> State {
        State {
            jar,
            logins: Arc::default(),
            servlets: Arc::default(),
            keys: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// At shutdown, after the drain: POSTs the `logout_url` of every live servlet session,
    /// all within `limit`. Returns how many servlets answered.
    pub async fn logout_all(
        self: &Arc<Self>,
        snapshot: &Arc<crate::config::Snapshot>,
        limit: std::time::Duration,
    ) -> usize {
        self.servlets.logout_all(snapshot, self, limit).await
    }

    /// Told about each configuration that replaces the current one. The jar and the
    /// logins in flight carry on; a jar file named anew is read at the next start only
    /// (moving cookies between files under a running daemon could lose some), and the
    /// log says so. Returns the warning, if any.
    pub fn reloaded(&self, snapshot: &crate::config::Snapshot) -> Option<String> {
        self.keys.retain(snapshot);
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
