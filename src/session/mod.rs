/*!
State that outlives a configuration snapshot: today the cookie jar.

[`netscape`] reads and writes libcurl's cookie-file format, so that curl and the daemon
can share one jar.
*/

pub mod netscape;
