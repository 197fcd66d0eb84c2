/*!
Where a setting came from: a file and a line, so `check`, `explain` and every error can
point at it.
*/

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file and a 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub path: Arc<Path>,
    pub line: usize,
}

impl Origin {
    pub fn new(path: impl Into<PathBuf>, line: usize) -> Self {
        Self {
            path: Arc::from(path.into().into_boxed_path()),
            line,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// A value together with the place it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }
}
