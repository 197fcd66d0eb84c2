/*!
Configuration: the sources (YAML, netCDF-C rc files, `.netrc`) and the immutable
[`Snapshot`] they resolve into. The proxy reads one snapshot per request through a
[`SnapshotHandle`]; a reload builds a new snapshot off the hot path and swaps it in.
*/

pub mod diagnostic;
pub mod load;
pub mod netrc;
pub mod origin;
pub mod rcfile;
pub mod snapshot;
pub mod yaml;

pub use diagnostic::Diagnostic;
pub use origin::{Origin, Sourced};
pub use snapshot::{Snapshot, SnapshotHandle};
