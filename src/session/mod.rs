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
}

impl State {
    pub fn with_jar(jar: Arc<Jar>) -> State {
        State {
            jar,
            logins: Arc::default(),
        }
    }
}
