/*!
A site's `query_token`: a key added to every request's query (Handcar's agent keys in
`proxyname`), and where the daemon gets it.

This is the rule as loaded; the keys themselves live in [`crate::session::keys`] (they
outlive a snapshot) and are added by [`crate::auth::query_token`].
*/

use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::time::Duration;

use crate::origin::Origin;
use crate::secret::Secret;

/// Where the key comes from.
pub enum KeySource {
    /// `from_url`: a GET of this URL, with the credentials of the rule that matches it;
    /// the body is the key.
    Url(url::Url),
    /// `token_file`: read when the snapshot is built; the reloader watches the file, so
    /// a changed file is a new snapshot with the new key.
    File { path: PathBuf, key: Secret<String> },
    /// `from_command`: the program and its arguments (no shell unless the user names
    /// one); its standard output is the key.
    Command {
        argv: Vec<String>,
        timeout: Duration,
    },
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

impl KeySource {
    /// What `check` and `explain` print: never the key, nor a command's arguments (they
    /// may hold a password) or a URL's query values.
    pub fn shown(&self) -> String {
        match self {
            KeySource::Url(u) => {
                let shown = crate::target::Target::from_absolute(u.as_str().as_bytes())
                    .map(|t| crate::redact::LogUrl(&t, &[]).to_string())
                    .unwrap_or_else(|_| "the configured URL".to_owned());
                format!("from_url {shown}")
            }
            KeySource::File { path, .. } => format!("token_file {}", path.display()),
            KeySource::Command { argv, timeout } => {
                let program = argv.first().map_or("", String::as_str);
                let args = match argv.len().saturating_sub(1) {
                    0 => String::new(),
                    1 => " with 1 argument".to_owned(),
                    n => format!(" with {n} arguments"),
                };
                format!("from_command {program}{args} (timeout {timeout:?})")
            }
        }
    }

    /// Whether the daemon fetches and refreshes the key itself (else it is in the
    /// snapshot).
    pub fn is_fetched(&self) -> bool {
        !matches!(self, KeySource::File { .. })
    }
}

/// A loaded `query_token`.
#[derive(Debug)]
pub struct QueryToken {
    /// The query parameter, as written (not percent-encoded).
    pub param: String,
    pub source: KeySource,
    /// How long a fetched key is valid, counted from the moment its fetch started.
    pub lifetime: Duration,
    /// A new key is fetched this long before the current one expires.
    pub refresh_before: Duration,
    /// Replace a value of `param` the client sent (else the client's is kept).
    pub replace: bool,
    /// Keep the key in this file (0600) too, so that a restart does not fetch again.
    pub cache_file: Option<PathBuf>,
    /// The site's `query_token` key.
    pub origin: Origin,
}

impl QueryToken {
    /// The identity of the key this rule uses, which the key store is keyed by: the
    /// source and how long its keys live. A reload that keeps these keeps the key; two
    /// sites with the same source share one key. A hash, so that no URL or argument is
    /// ever kept (or printed) as a name.
    pub fn key_id(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &self.source {
            KeySource::Url(u) => ("url", u.as_str()).hash(&mut h),
            KeySource::File { path, .. } => ("file", path).hash(&mut h),
            KeySource::Command { argv, timeout } => ("command", argv, timeout).hash(&mut h),
        }
        self.lifetime.hash(&mut h);
        self.refresh_before.hash(&mut h);
        self.cache_file.hash(&mut h);
        h.finish()
    }
}
