/*!
Limits on what one client may hold: time and bytes for a request head, connections,
idle tunnels, stalled writes.

They exist so that a slow or hostile client costs a bounded amount and is cut with an
answer it can read, while other clients keep being served. The defaults suit a local
daemon used by a few tools at a time; YAML `limits:` changes them (read per connection
from the current snapshot, so a reload applies to new connections).
*/

use std::time::Duration;

/// pingora 0.9 refuses a request head with more header lines than this with a bare 400,
/// so `limits.max_headers` cannot go higher.
pub const PINGORA_MAX_HEADERS: usize = 256;

/// The limits in force (YAML `limits:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From a connection's first byte (or its accept) until its request head is complete.
    /// Past it: 408. A total deadline, not per read, so a client trickling one byte a
    /// second is cut as surely as a silent one.
    pub head_timeout: Duration,
    /// Largest request head (request line and headers). Past it: 431.
    pub max_head_bytes: usize,
    /// Most header lines in one request head. Past it: 431.
    pub max_headers: usize,
    /// Client connections served at once. Past it, a new connection is still accepted
    /// and answered 503 at once, so the listen backlog never stalls.
    pub max_connections: usize,
    /// A CONNECT tunnel with no byte in either direction for this long is closed.
    pub tunnel_idle: Duration,
    /// A write to a client that has stopped reading fails after this long, so the
    /// request releases its upstream connection.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(30),
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 4096,
            tunnel_idle: Duration::from_secs(600),
            write_timeout: Duration::from_secs(60),
        }
    }
}
