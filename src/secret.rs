/*!
Credential values that cannot be printed.

Every password, token, key passphrase or proxy credential the daemon holds is a
[`Secret`]. It has no `Display` and no `Serialize`, and its `Debug` prints `***`, so a
secret cannot reach a log line or `check` output by accident. The only way to the value
is [`Secret::expose`]; reviewers grep for it.
*/

use std::fmt;

/// A credential value. Prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }

    /// The only way out.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret<String> {
    fn from(s: String) -> Self {
        Self(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2".to_string());
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2");
    }
}
