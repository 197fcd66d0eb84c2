/*!
The immutable value the proxy consults per request.
*/

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::failure::Timeouts;

/// Everything a request needs to know, built once per (re)load.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub timeouts: Timeouts,
}

/// The current snapshot, swapped atomically on reload. A request loads it once and
/// finishes on the snapshot it started with.
pub type SnapshotHandle = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    pub fn into_handle(self) -> SnapshotHandle {
        Arc::new(ArcSwap::from_pointee(self))
    }
}
