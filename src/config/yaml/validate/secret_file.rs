/*!
Paths in the configuration, and the `*_file` secrets they name: resolved against the
configuration file's directory or `$CREDENTIALS_DIRECTORY`, read (capped, UTF-8) and
trimmed. A secret's contents never reach a message.
*/

use std::path::{Path, PathBuf};

use super::Cx;
use crate::config::yaml::locate::{option_name, Seg};
use crate::config::yaml::raw::NonEmpty;
use crate::config::yaml::read_capped_text;
use crate::secret::Secret;

/// Secret files larger than this are refused.
const MAX_SECRET_FILE: u64 = 1 << 20;

impl Cx<'_> {
    /// A non-secret path: `$CREDENTIALS_DIRECTORY/x`, absolute, or relative to the
    /// config directory.
    pub(super) fn resolve_path(&self, raw: &str) -> Result<PathBuf, String> {
        for prefix in ["$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/"] {
            if let Some(rest) = raw.strip_prefix(prefix) {
                return match &self.env.credentials_directory {
                    Some(d) => Ok(d.join(rest)),
                    None => Err("$CREDENTIALS_DIRECTORY is not set".into()),
                };
            }
        }
        let p = Path::new(raw);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        })
    }

    /// A `*_file` path: like [`Self::resolve_path`], but a relative name that exists in
    /// the credentials directory is taken from there.
    pub(super) fn resolve_secret_path(&self, raw: &str) -> Result<PathBuf, String> {
        let p = Path::new(raw);
        if p.is_relative() && !raw.starts_with('$') {
            if let Some(d) = &self.env.credentials_directory {
                let candidate = d.join(p);
                if candidate.is_file() {
                    return Ok(candidate);
                }
            }
        }
        self.resolve_path(raw)
    }

    /// Resolves a path option, reporting at the option's key.
    pub(super) fn path_option(&mut self, raw: Option<NonEmpty>, at: &[Seg<'_>]) -> Option<PathBuf> {
        let raw = raw?;
        match self.resolve_path(&raw.0) {
            Ok(p) => Some(p),
            Err(msg) => {
                let line = self.key_line(at);
                self.error(line, format!("{}: {msg}", option_name(at)));
                None
            }
        }
    }

    /// Reads a `*_file` secret; errors name the option, its line and the path.
    pub(super) fn read_secret(&mut self, raw: &str, at: &[Seg<'_>]) -> Option<Secret<String>> {
        let path = match self.resolve_secret_path(raw) {
            Ok(p) => p,
            Err(msg) => {
                let line = self.key_line(at);
                self.error(line, format!("{}: {msg}", option_name(at)));
                return None;
            }
        };
        match read_small_text(&path) {
            Ok(s) => {
                let trimmed = s.trim_end();
                if trimmed.is_empty() {
                    let line = self.key_line(at);
                    self.error(
                        line,
                        format!("{}: {} is empty", option_name(at), path.display()),
                    );
                    return None;
                }
                if !self.files_read.contains(&path) {
                    self.files_read.push(path);
                }
                Some(Secret::new(trimmed.to_string()))
            }
            Err(e) => {
                let line = self.key_line(at);
                self.error(
                    line,
                    format!("{}: cannot read {}: {e}", option_name(at), path.display()),
                );
                None
            }
        }
    }

    pub(super) fn warn_inline(&mut self, at: &[Seg<'_>], file_form: &str) {
        let line = self.key_line(at);
        self.warn(
            line,
            format!(
                "{} is written inline; {file_form} is recommended, to keep secrets out of the configuration file",
                option_name(at)
            ),
        );
    }
}

fn read_small_text(path: &Path) -> std::io::Result<String> {
    read_capped_text(path, MAX_SECRET_FILE)
}
