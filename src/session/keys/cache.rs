/*!
The optional `cache_file`: the key and its expiry (wall clock), so a restart within
the key's lifetime does not fetch again. Created 0600; a file others may read is not
used (the configuration refuses it at load; this checks again at read).
*/

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::source::parse_key;
use super::Held;
use crate::secret::Secret;

#[derive(serde::Serialize, serde::Deserialize)]
struct File {
    /// The source's [`QueryToken::key_id`]: a key of another source is not used.
    source: String,
    /// Milliseconds since the Unix epoch.
    expires_ms: u64,
    key: String,
}

pub(super) fn read(path: &std::path::Path, id: u64) -> Option<Held> {
    let (bytes, meta) = match crate::small_file::read(path, 64 * 1024) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "cannot read the query_token cache_file {}: {e}",
                path.display()
            );
            return None;
        }
    };
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "the query_token cache_file {} is open to other users; it is not used",
            path.display()
        );
        return None;
    }
    let file: File = serde_json::from_slice(&bytes).ok()?;
    if file.source != id.to_string() {
        return None;
    }
    let expires = UNIX_EPOCH + Duration::from_millis(file.expires_ms);
    let left = expires.duration_since(SystemTime::now()).ok()?;
    let key = parse_key(file.key.as_bytes(), None).ok()?;
    Some(Held {
        key: Secret::new(key),
        expires: Instant::now() + left,
    })
}

pub(super) fn write(
    path: &std::path::Path,
    id: u64,
    key: &Secret<String>,
    expires: SystemTime,
) -> std::io::Result<()> {
    let file = File {
        source: id.to_string(),
        expires_ms: expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        key: key.expose().clone(),
    };
    let json = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    crate::session::write_atomically(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_file_round_trips_only_for_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.json");
        let key = Secret::new("K3y+/=%2B".to_owned());
        write(&path, 7, &key, SystemTime::now() + Duration::from_secs(60)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path, 7).unwrap().key.expose(), "K3y+/=%2B");
        assert!(read(&path, 8).is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read(&path, 7).is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write(&path, 7, &key, SystemTime::now() - Duration::from_secs(1)).unwrap();
        assert!(read(&path, 7).is_none());
    }
}
