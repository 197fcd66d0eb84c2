/*!
State that outlives a configuration snapshot: today the cookie jar.

[`Jar`] keeps every cookie the daemon sees and sends it back to the hosts it belongs to;
[`netscape`] reads and writes libcurl's cookie-file format, so that curl and the daemon
can share one jar; [`spawn_writer`] keeps the file within seconds of the jar.
*/

pub mod jar;
pub mod netscape;

pub use jar::{default_path, spawn_writer, write_atomically, Jar, JarProblem};
