/*!
A site's `query_token` (Handcar agent keys): exactly one source, durations that leave
time to refresh, a cache file nobody else can read. A `token_file` is read here, so the
reloader watches it and a changed file is a new snapshot.
*/

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use super::Cx;
use crate::config::yaml::locate::site_path;
use crate::config::yaml::raw::{QueryName, RawCommand, RawDuration, RawKeyUrl, RawQueryToken};
use crate::config::yaml::{KeySourceSetting, SiteQueryToken};

/// Handcar's keys last an hour unless asked otherwise.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The default head start of a refresh: 5 minutes, or a quarter of a shorter lifetime.
const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// How long `from_command` may run by default.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

impl Cx<'_> {
    pub(super) fn site_query_token(
        &mut self,
        i: usize,
        q: RawQueryToken,
    ) -> Option<SiteQueryToken> {
        let at = |k: &'static str| site_path(i, &["query_token", k]);
        let line = self.key_line(&site_path(i, &["query_token"]));
        let QueryName(param) = q.param;
        let given: Vec<&str> = [
            q.from_url.as_ref().map(|_| "from_url"),
            q.token_file.as_ref().map(|_| "token_file"),
            q.from_command.as_ref().map(|_| "from_command"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() != 1 {
            let msg = if given.is_empty() {
                format!(
                    "sites[{i}].query_token: needs one of from_url, token_file and from_command"
                )
            } else {
                format!(
                    "sites[{i}].query_token: give one of from_url, token_file and from_command, not {}",
                    given.join(" and ")
                )
            };
            self.error(line, msg);
            return None;
        }
        if q.timeout.is_some() && q.from_command.is_none() {
            let l = self.key_line(&at("timeout"));
            self.error(
                l,
                format!("sites[{i}].query_token.timeout: only from_command runs with a timeout"),
            );
        }
        let fetched = q.token_file.is_none();
        if !fetched {
            for k in ["lifetime", "refresh_before", "cache_file"] {
                let set = match k {
                    "lifetime" => q.lifetime.is_some(),
                    "refresh_before" => q.refresh_before.is_some(),
                    _ => q.cache_file.is_some(),
                };
                if set {
                    let l = self.key_line(&at(k));
                    self.error(
                        l,
                        format!(
                            "sites[{i}].query_token.{k}: a token_file is read when it changes; \
                             {k} applies to from_url and from_command"
                        ),
                    );
                }
            }
        }
        let lifetime = q.lifetime.map_or(DEFAULT_LIFETIME, |RawDuration(d)| d);
        let refresh_before = match q.refresh_before {
            Some(RawDuration(d)) => {
                if d >= lifetime {
                    let l = self.key_line(&at("refresh_before"));
                    self.error(
                        l,
                        format!(
                            "sites[{i}].query_token.refresh_before must be shorter than the \
                             lifetime ({lifetime:?})"
                        ),
                    );
                    return None;
                }
                d
            }
            None => DEFAULT_REFRESH_BEFORE.min(lifetime / 4),
        };
        let cache_file = match q.cache_file {
            Some(raw) => {
                let path = self.path_option(Some(raw), &at("cache_file"))?;
                if let Err(msg) = cache_file_is_private(&path) {
                    let l = self.key_line(&at("cache_file"));
                    self.error(l, format!("sites[{i}].query_token.cache_file: {msg}"));
                    return None;
                }
                Some(path)
            }
            None => None,
        };
        let source = if let Some(RawKeyUrl(url)) = q.from_url {
            KeySourceSetting::Url(url)
        } else if let Some(f) = q.token_file {
            let key = self.read_secret(&f.0, &at("token_file"))?;
            let trimmed = key.expose().trim();
            if trimmed.chars().any(char::is_control) {
                let l = self.key_line(&at("token_file"));
                self.error(
                    l,
                    format!(
                        "sites[{i}].query_token.token_file: the file must hold the key on one \
                         line, without control characters"
                    ),
                );
                return None;
            }
            let key = crate::secret::Secret::new(trimmed.to_owned());
            let path = self.resolve_secret_path(&f.0).ok()?;
            KeySourceSetting::File { path, key }
        } else if let Some(RawCommand(mut argv)) = q.from_command {
            // `./get-key` means the one beside the configuration, not in whatever
            // directory the daemon was started from.
            if argv[0].contains('/') && Path::new(&argv[0]).is_relative() {
                let rel: std::path::PathBuf = Path::new(&argv[0])
                    .components()
                    .filter(|c| *c != std::path::Component::CurDir)
                    .collect();
                argv[0] = self.dir.join(rel).display().to_string();
            }
            KeySourceSetting::Command {
                argv,
                timeout: q
                    .timeout
                    .map_or(DEFAULT_COMMAND_TIMEOUT, |RawDuration(d)| d),
            }
        } else {
            return None;
        };
        Some(SiteQueryToken {
            param,
            source,
            lifetime,
            refresh_before,
            replace: q.replace.unwrap_or(false),
            cache_file,
            origin: self.origin(line),
        })
    }
}

/// A cache file that exists must be a regular file only its owner can read: it holds a
/// key. One that does not exist yet is created 0600.
fn cache_file_is_private(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => Err(format!("{} is not a regular file", path.display())),
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(format!(
            "{} is open to other users (mode {:o}); it holds a key: chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::yaml::{parse_str, KeySourceSetting, SecretEnv};

    fn parse(dir: &Path, site: &str) -> Result<crate::config::yaml::YamlConfig, Vec<String>> {
        let text = format!("sites:\n  - match: mc3.example.edu\n    query_token: {site}\n");
        parse_str(&dir.join("config.yaml"), &text, &SecretEnv::default())
            .map_err(|es| es.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn each_source_and_its_defaults() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("k"), "  AGENT_KEY+x/y=%2B \n").unwrap();
        let c = parse(
            d.path(),
            "{ param: proxyname, from_url: \"https://mc3.example.edu/agentkeys/alice\" }",
        )
        .unwrap();
        let q = c.sites[0].query_token.clone().unwrap();
        assert_eq!(q.param, "proxyname");
        assert_eq!(q.lifetime.as_secs(), 3600);
        assert_eq!(q.refresh_before.as_secs(), 300);
        assert!(!q.replace);
        assert_eq!(q.origin.line, 3);
        assert!(matches!(q.source, KeySourceSetting::Url(ref u) if u.path() == "/agentkeys/alice"));

        let c = parse(d.path(), "{ param: p, token_file: k, replace: true }").unwrap();
        let q = c.sites[0].query_token.clone().unwrap();
        assert!(q.replace);
        match q.source {
            KeySourceSetting::File { key, path } => {
                assert_eq!(key.expose(), "AGENT_KEY+x/y=%2B");
                assert_eq!(path, d.path().join("k"));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.files_read.contains(&d.path().join("k")));

        let c = parse(
            d.path(),
            "{ param: p, from_command: \"./get-key --user 'a b'\", lifetime: 4s, timeout: 500ms }",
        )
        .unwrap();
        let q = c.sites[0].query_token.clone().unwrap();
        assert_eq!(q.refresh_before.as_millis(), 1000);
        match q.source {
            KeySourceSetting::Command { argv, timeout } => {
                let program = d.path().join("get-key").display().to_string();
                assert_eq!(argv, vec![program.as_str(), "--user", "a b"]);
                assert_eq!(timeout.as_millis(), 500);
            }
            other => panic!("{other:?}"),
        }
        let c = parse(d.path(), "{ param: p, from_command: [get-key, \"a b\"] }").unwrap();
        let q = c.sites[0].query_token.clone().unwrap();
        assert!(
            matches!(q.source, KeySourceSetting::Command { ref argv, .. } if argv == &["get-key", "a b"])
        );
    }

    #[test]
    fn mistakes_name_the_line_and_never_the_value() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config.yaml").display().to_string();
        let cases = [
            ("{ param: p }", ":3: sites[0].query_token: needs one of from_url, token_file and from_command"),
            (
                "{ param: p, token_file: k, from_url: \"http://h/\" }",
                ":3: sites[0].query_token: give one of from_url, token_file and from_command, not from_url and token_file",
            ),
            ("{ param: p, from_url: \"ftp://h/S3cr3t\" }", ":3: must be an http:// or https:// URL with a host"),
            (
                "{ param: p, from_url: \"https://u:S3cr3t@h/\" }",
                ":3: must not contain user information",
            ),
            (
                "{ param: p, from_url: \"https://h/\", lifetime: 4s, refresh_before: 4s }",
                ":3: sites[0].query_token.refresh_before must be shorter than the lifetime (4s)",
            ),
            ("{ param: p, from_url: \"https://h/\", lifetime: S3cr3t }", ":3: a duration"),
            ("{ param: p, from_command: \"get 'S3cr3t\" }", ":3: the command has an unclosed quote"),
            ("{ param: p, from_command: [] }", ":3: the command needs a program"),
            (
                "{ param: p, from_url: \"https://h/\", timeout: 1s }",
                ":3: sites[0].query_token.timeout: only from_command runs with a timeout",
            ),
            (
                "{ param: p, token_file: missing, lifetime: 1s }",
                ":3: sites[0].query_token.lifetime: a token_file is read when it changes",
            ),
            ("{ param: \"\", from_url: \"https://h/\" }", ":3: a query parameter name must not be empty"),
            ("{ param: p, from_url: \"https://h/\", bogus: 1 }", ":3: unknown field `bogus`"),
            (
                "{ param: p, from_url: \"https://h/\" }\n    query: { p: x }",
                ":4: sites[0]: query and query_token both add `p`; keep one",
            ),
        ];
        for (site, want) in cases {
            let es = parse(d.path(), site).unwrap_err();
            let (line, msg) = want[1..].split_once(": ").unwrap();
            assert!(
                es.iter()
                    .any(|e| e.starts_with(&format!("{cfg}:{line}: ")) && e.contains(msg)),
                "{site}: {want} not in {es:?}"
            );
            assert!(!es.iter().any(|e| e.contains("S3cr3t")), "{es:?}");
        }
    }

    #[test]
    fn a_cache_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("key.cache");
        std::fs::write(&cache, "{}").unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
        let site = "{ param: p, from_url: \"https://h/\", cache_file: key.cache }";
        let es = parse(d.path(), site).unwrap_err();
        let want = format!(
            "config.yaml:3: sites[0].query_token.cache_file: {} is open to other users (mode 644)",
            cache.display()
        );
        assert!(es.iter().any(|e| e.contains(&want)), "{es:?}");
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(d.path(), site).unwrap();
        assert_eq!(
            c.sites[0].query_token.as_ref().unwrap().cache_file,
            Some(cache)
        );
    }
}
