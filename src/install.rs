/*!
`authproxy install`: the daemon as a systemd service in one step.

The units are the files in `systemd/` (compiled in, so what is installed is what was
reviewed and verified), with `ExecStart` naming the binary that runs the command. With
`systemctl` on the PATH the unit is then enabled and started; without it, the commands
to run are printed. `--dry-run` prints the unit and writes nothing.
*/

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The user unit as shipped (`systemd/user/authproxy.service`).
pub const USER_UNIT: &str = include_str!("../systemd/user/authproxy.service");
/// The system unit as shipped (`systemd/authproxy.service`).
pub const SYSTEM_UNIT: &str = include_str!("../systemd/authproxy.service");
/// The socket unit as shipped (`systemd/authproxy.socket`).
pub const SOCKET_UNIT: &str = include_str!("../systemd/authproxy.socket");

/// Which service manager the unit is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `systemctl --user`: runs as you, with your HOME.
    User,
    /// `systemctl`: one daemon for the machine, as a dynamic user.
    System,
}

/// `unit` with its `ExecStart=` line running `exe` (the rest of that line, the
/// arguments, is kept).
pub fn unit_for(unit: &str, exe: &Path) -> String {
    let mut out = String::with_capacity(unit.len() + 64);
    for line in unit.lines() {
        match line.strip_prefix("ExecStart=") {
            Some(command) => {
                let args = command.split_once(' ').map_or("", |(_, a)| a);
                let _ = write!(out, "ExecStart={}", quote(exe));
                if !args.is_empty() {
                    let _ = write!(out, " {args}");
                }
                out.push('\n');
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A path as one word of a systemd command line: `%` and `$` are special there, and a
/// path with spaces or quotes must be quoted.
fn quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    let escaped = s.replace('%', "%%").replace('$', "$$");
    if escaped.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '\\') {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

/// Where the unit goes: `$XDG_CONFIG_HOME/systemd/user/` (default `~/.config`) for a
/// user unit, `/etc/systemd/system/` for a system one.
pub fn unit_path(
    scope: Scope,
    xdg_config_home: Option<&Path>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    match scope {
        Scope::System => Some(PathBuf::from("/etc/systemd/system/authproxy.service")),
        Scope::User => {
            let base = match xdg_config_home {
                Some(x) if x.is_absolute() => x.to_path_buf(),
                _ => home.filter(|h| h.is_absolute())?.join(".config"),
            };
            Some(base.join("systemd/user/authproxy.service"))
        }
    }
}

/// What `install` needs from the process: the binary, the environment, the proxy
/// address to tell people about.
pub struct Install {
    pub scope: Scope,
    pub exe: PathBuf,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// The first `listen` address of the configuration (what tools are pointed at).
    pub proxy: String,
}

impl Install {
    /// The unit as it would be written.
    pub fn unit(&self) -> String {
        let shipped = match self.scope {
            Scope::User => USER_UNIT,
            Scope::System => SYSTEM_UNIT,
        };
        unit_for(shipped, &self.exe)
    }

    /// Writes the unit, then enables and starts it with `systemctl` when there is one.
    /// Returns what to tell the user; `Err` says what failed and what to run instead.
    pub fn run(&self) -> Result<String, String> {
        let path = unit_path(
            self.scope,
            self.xdg_config_home.as_deref(),
            self.home.as_deref(),
        )
        .ok_or("neither XDG_CONFIG_HOME nor HOME is set: cannot tell where user units go")?;
        let mut out = String::new();
        if self.scope == Scope::System
            && (self.exe.starts_with("/home") || self.exe.starts_with("/root"))
        {
            let _ = writeln!(
                out,
                "warning: {} is under a home directory, which the system unit cannot \
                 read (ProtectHome=, DynamicUser=); copy it to /usr/local/bin first",
                self.exe.display()
            );
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        crate::session::write_atomically(&path, self.unit().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let _ = writeln!(out, "wrote {}", path.display());
        let user: &[&str] = match self.scope {
            Scope::User => &["--user"],
            Scope::System => &[],
        };
        let steps: [&[&str]; 2] = [
            &["daemon-reload"],
            &["enable", "--now", "authproxy.service"],
        ];
        let show = |step: &[&str]| {
            let mut words = vec!["systemctl"];
            words.extend_from_slice(user);
            words.extend_from_slice(step);
            words.join(" ")
        };
        if !on_path("systemctl") {
            let _ = writeln!(
                out,
                "systemctl is not on the PATH; where systemd runs, start the service with:"
            );
            for step in steps {
                let _ = writeln!(out, "  {}", show(step));
            }
        } else {
            for step in steps {
                let done = Command::new("systemctl").args(user).args(step).output();
                match done {
                    Ok(o) if o.status.success() => {
                        let _ = writeln!(out, "ran: {}", show(step));
                    }
                    Ok(o) => {
                        return Err(format!(
                            "{out}`{}` failed ({}): {}\nthe unit is written; fix that and run:\n{}",
                            show(step),
                            o.status,
                            String::from_utf8_lossy(&o.stderr).trim(),
                            steps.map(|s| format!("  {}", show(s))).join("\n")
                        ))
                    }
                    Err(e) => return Err(format!("{out}cannot run `{}`: {e}", show(step))),
                }
            }
        }
        out.push_str(&self.how_to_use());
        Ok(out)
    }

    /// How to point tools at the daemon, and where its log is.
    pub fn how_to_use(&self) -> String {
        let user = if self.scope == Scope::User {
            " --user"
        } else {
            ""
        };
        format!(
            "point tools at it (curl, wget, ncdump, GDAL, Python, R read these):\n  \
             export http_proxy=http://{p} https_proxy=http://{p}\n\
             its log: journalctl{user} -u authproxy\n\
             after editing the configuration: nothing to do (it reloads by itself), or \
             systemctl{user} reload authproxy\n",
            p = self.proxy
        )
    }
}

/// Whether `name` is an executable file in a `$PATH` directory.
fn on_path(name: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            std::fs::metadata(dir.join(name))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_start_names_the_binary_and_keeps_the_arguments() {
        let user = unit_for(USER_UNIT, Path::new("/opt/ap/bin/authproxy"));
        assert!(
            user.lines()
                .any(|l| l == "ExecStart=/opt/ap/bin/authproxy serve"),
            "{user}"
        );
        let system = unit_for(SYSTEM_UNIT, Path::new("/usr/bin/authproxy"));
        assert!(
            system
                .lines()
                .any(|l| l
                    == "ExecStart=/usr/bin/authproxy serve --config /etc/authproxy/config.yaml")
        );
        assert_eq!(
            user.lines().filter(|l| l.starts_with("ExecStart")).count(),
            1
        );
    }

    #[test]
    fn odd_paths_are_quoted_for_systemd() {
        assert_eq!(quote(Path::new("/a/b")), "/a/b");
        assert_eq!(quote(Path::new("/a 1/100%/$x")), "\"/a 1/100%%/$$x\"");
        assert_eq!(quote(Path::new("/a\"b")), "\"/a\\\"b\"");
    }

    #[test]
    fn user_units_go_under_the_config_home() {
        let p = |x: Option<&str>, h: Option<&str>| {
            unit_path(Scope::User, x.map(Path::new), h.map(Path::new))
        };
        assert_eq!(
            p(Some("/x"), Some("/h")).unwrap(),
            Path::new("/x/systemd/user/authproxy.service")
        );
        assert_eq!(
            p(Some("rel"), Some("/h")).unwrap(),
            Path::new("/h/.config/systemd/user/authproxy.service")
        );
        assert_eq!(p(None, None), None);
    }
}
