/*!
The cookie jar: every `Set-Cookie` the daemon sees, sent back on later requests to the
hosts it belongs to, and kept on disk in libcurl's Netscape format.

Matching (domain, path, Secure, HttpOnly, expiry by Max-Age or Expires) is cookie_store's.
On top of it, [`Jar::store`] applies what curl applies before storing: a `Secure` cookie
only from https (or loopback, as curl allows), no control octets in a name or value, a
`Domain=` naming an IP address is host-only, at most 50 cookies from one response and
4096 bytes of name and value (curl's limits), and a `Domain=` of one label (`com`) is
refused unless it is the request host itself: without the public suffix list (the
feature is off) that is the line curl draws too. [`Jar::cookie_header`] sends `Secure`
cookies to https only.

One [`std::sync::Mutex`] guards the cookies; it is held for in-memory work only, never
across an await or a file write. A second lock only orders file writes among themselves.
Cookie values are secrets: [`Jar`]'s `Debug`, its errors and its log lines carry counts,
host names and cookie names at most. cookie_store's own `store_response_cookies` logs
whole cookies through `log` (which `tracing-log` would forward), so it is not used.
*/

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cookie_store::{Cookie, CookieDomain, CookieStore};
use tokio::sync::{watch, Notify};
use url::Url;

use super::netscape;

/// How long the writer waits after the first change of a burst before it saves: every
/// change is on disk within this (plus the write itself), and a burst is one write.
pub const SAVE_DELAY: Duration = Duration::from_secs(1);

/// After a failed save, the writer tries again this much later (or at the next change).
pub const RETRY_DELAY: Duration = Duration::from_secs(30);

/// curl's limits (`lib/cookie.h`): Set-Cookie headers taken from one response
/// (`MAX_SET_COOKIE_AMOUNT`), and bytes of name plus value (`MAX_NAME`).
pub const MAX_SET_COOKIE_PER_RESPONSE: usize = 50;
pub const MAX_NAME_AND_VALUE: usize = 4096;

/// A jar file larger than this is not one the daemon wrote: it is moved aside.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Something wrong with a jar file, with its place (`file:line` when it is one line).
/// Never fatal, and never holds a cookie value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JarProblem {
    pub path: PathBuf,
    /// 1-based; `None` for the file as a whole.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for JarProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{}:{n}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// The cookie jar. `Send + Sync`; share it in an [`Arc`].
pub struct Jar {
    path: Option<PathBuf>,
    inner: Mutex<CookieStore>,
    /// Bumped (under `inner`) by every change to the cookies.
    changes: AtomicU64,
    /// The value of `changes` that the last successful save wrote.
    saved: AtomicU64,
    saves: AtomicU64,
    changed: Notify,
    save_lock: Mutex<()>,
    /// Whether a cookie was ever held: the request path skips the lock and the URL
    /// work while the jar has never had one (most proxied hosts set none).
    ever_held: AtomicBool,
}

impl fmt::Debug for Jar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jar")
            .field("path", &self.path)
            .field("cookies", &self.len())
            .field("changes", &self.changes())
            .field("dirty", &self.is_dirty())
            .finish()
    }
}

impl Default for Jar {
    fn default() -> Self {
        Jar::new()
    }
}

impl Jar {
    /// An empty jar kept in memory only ([`Jar::save`] does nothing).
    pub fn new() -> Jar {
        Jar::with(None, CookieStore::default())
    }

    fn with(path: Option<PathBuf>, store: CookieStore) -> Jar {
        let held = store.iter_any().next().is_some();
        Jar {
            path,
            ever_held: AtomicBool::new(held),
            inner: Mutex::new(store),
            changes: AtomicU64::new(0),
            saved: AtomicU64::new(0),
            saves: AtomicU64::new(0),
            changed: Notify::new(),
            save_lock: Mutex::new(()),
        }
    }

    /// The jar kept in the Netscape file at `path`, with what it holds now.
    ///
    /// A missing file is an empty jar. Lines that cannot be read are skipped, each
    /// reported with `file:line`. A file that is not a cookie file at all (binary, too
    /// large, unreadable, or without one cookie line or the header) is reported and
    /// moved aside to `<name>.corrupt-<unix time>`, and the jar starts empty. A path
    /// that is a directory, FIFO or device (`/dev/null`) is reported and left alone: the
    /// jar lives in memory only ([`Jar::path`] is `None`). Nothing here is fatal. Cookies that have expired are dropped; session cookies are kept.
    /// Temporary files left beside it by a writer that was killed mid-save are removed.
    pub fn open(path: impl Into<PathBuf>) -> (Jar, Vec<JarProblem>) {
        let path = path.into();
        remove_stale_temps(&path);
        let mut problems = Vec::new();
        let mut keep_path = true;
        let problem = |line: Option<usize>, message: String| JarProblem {
            path: path.clone(),
            line,
            message,
        };
        let store = match crate::small_file::read(&path, MAX_FILE_BYTES) {
            Ok((data, _)) => {
                let parsed = netscape::parse(&data);
                if parsed.is_not_a_cookie_file() {
                    let line = parsed.binary_at.or(parsed.problems.first().map(|p| p.line));
                    let what = if parsed.binary_at.is_some() {
                        "binary data (a NUL byte), not a cookie file".to_string()
                    } else {
                        format!(
                            "not a Netscape cookie file ({})",
                            parsed.problems.first().map_or("", |p| p.message.as_str())
                        )
                    };
                    problems.push(problem(line, format!("{what}; {}", move_aside(&path))));
                    CookieStore::default()
                } else {
                    for p in &parsed.problems {
                        problems.push(problem(
                            Some(p.line),
                            format!("{}; line skipped", p.message),
                        ));
                    }
                    CookieStore::from_cookies(
                        parsed
                            .cookies
                            .into_iter()
                            .map(Ok::<_, std::convert::Infallible>),
                        false,
                    )
                    .unwrap_or_default()
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => CookieStore::default(),
            Err(e)
                if e.kind() == io::ErrorKind::IsADirectory
                    || e.kind() == io::ErrorKind::InvalidInput =>
            {
                // A directory, FIFO or device (`/dev/null`): never moved, never written;
                // the jar has no file (`path()` is `None`).
                problems.push(problem(
                    None,
                    format!("{e}; the cookie jar is kept in memory only"),
                ));
                keep_path = false;
                CookieStore::default()
            }
            Err(e) => {
                problems.push(problem(
                    None,
                    format!("cannot be read ({e}); {}", move_aside(&path)),
                ));
                CookieStore::default()
            }
        };
        (Jar::with(keep_path.then_some(path), store), problems)
    }

    /// The file this jar is saved to, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, CookieStore> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the `Set-Cookie` header values of a response to `url`. Returns how many
    /// cookies changed (added, replaced with something new, or removed by an expired
    /// one). A header that is not a cookie, or that the rules refuse, is skipped.
    pub fn store<'a>(&self, url: &Url, set_cookie: impl IntoIterator<Item = &'a str>) -> usize {
        let mut accepted = Vec::new();
        for (i, header) in set_cookie.into_iter().enumerate() {
            if i == MAX_SET_COOKIE_PER_RESPONSE {
                tracing::debug!(
                    host = url.host_str().unwrap_or(""),
                    "more than {MAX_SET_COOKIE_PER_RESPONSE} Set-Cookie in one response; the rest not stored"
                );
                break;
            }
            match accept(url, header) {
                Ok(c) => accepted.push(c),
                Err(why) => tracing::debug!(
                    host = url.host_str().unwrap_or(""),
                    reason = why,
                    "Set-Cookie not stored"
                ),
            }
        }
        if accepted.is_empty() {
            return 0;
        }
        let mut changed = 0;
        {
            let mut store = self.lock();
            for c in accepted {
                let domain = String::from(&c.domain);
                if let Some(old) = store.get(&domain, &c.path, c.name()) {
                    if netscape::line(old) == netscape::line(&c) {
                        continue; // the same cookie again: nothing to save
                    }
                }
                if store.insert(c, url).is_ok() {
                    changed += 1;
                }
            }
            if changed > 0 {
                self.changes.fetch_add(changed as u64, Ordering::SeqCst);
                self.ever_held.store(true, Ordering::Release);
            }
        }
        if changed > 0 {
            self.changed.notify_one();
        }
        changed
    }

    /// The `Cookie` header for a request to `url`: every unexpired cookie whose domain
    /// and path match, `Secure` ones only to https. Longer paths first (RFC 6265 5.4).
    pub fn cookie_header(&self, url: &Url) -> Option<String> {
        let store = self.lock();
        let https = url.scheme() == "https";
        let mut cookies: Vec<&Cookie<'static>> = store
            .matches(url)
            .into_iter()
            .filter(|c| https || c.secure() != Some(true))
            .collect();
        if cookies.is_empty() {
            return None;
        }
        cookies.sort_by(|a, b| {
            b.path
                .len()
                .cmp(&a.path.len())
                .then_with(|| a.name().cmp(b.name()))
        });
        let mut out = String::new();
        for c in cookies {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(c.name());
            out.push('=');
            out.push_str(c.value());
        }
        Some(out)
    }

    /// The client's own `Cookie` header merged with the jar's: the client's pairs as it
    /// sent them, then the jar's whose name the client did not send.
    pub fn merge(client: Option<&str>, jar: Option<String>) -> Option<String> {
        let client = client.map(str::trim).filter(|c| !c.is_empty());
        let jar = jar.filter(|j| !j.trim().is_empty());
        match (client, jar) {
            (None, None) => None,
            (Some(c), None) => Some(c.to_owned()),
            (None, Some(j)) => Some(j),
            (Some(c), Some(j)) => {
                let pairs = |s: &str| -> Vec<String> {
                    s.split(';')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(str::to_owned)
                        .collect()
                };
                let name = |p: &str| -> String {
                    p.split_once('=').map_or(p, |(n, _)| n).trim().to_owned()
                };
                let mut out = pairs(c);
                let names: HashSet<String> = out.iter().map(|p| name(p)).collect();
                out.extend(pairs(&j).into_iter().filter(|p| !names.contains(&name(p))));
                Some(out.join("; "))
            }
        }
    }

    /// How many cookies the jar holds (unexpired ones, session cookies included).
    pub fn len(&self) -> usize {
        self.lock().iter_unexpired().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// False while the jar has never held a cookie: a check without the lock, for the
    /// request path. True does not mean a cookie is held now.
    pub fn may_have_cookies(&self) -> bool {
        self.ever_held.load(Ordering::Acquire)
    }

    /// A counter that every change to the cookies moves forward.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Whether a change has not been saved yet (always false for a jar without a file,
    /// which has nothing to save).
    pub fn is_dirty(&self) -> bool {
        self.path.is_some() && self.saved.load(Ordering::SeqCst) != self.changes()
    }

    /// How many times the jar was written to its file.
    pub fn saves(&self) -> u64 {
        self.saves.load(Ordering::SeqCst)
    }

    /// Resolves at the next change (or at once if one happened since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// The jar as a Netscape cookie file (header included). Holds cookie values.
    pub fn to_netscape(&self) -> String {
        self.snapshot().0
    }

    /// The file's text and the change it includes; drops expired cookies from memory.
    fn snapshot(&self) -> (String, u64) {
        let mut store = self.lock();
        let expired: Vec<(String, String, String)> = store
            .iter_any()
            .filter(|c| c.is_expired())
            .map(|c| {
                (
                    String::from(&c.domain),
                    String::from(&c.path),
                    c.name().to_owned(),
                )
            })
            .collect();
        for (d, p, n) in expired {
            store.remove(&d, &p, &n);
        }
        (netscape::write(store.iter_unexpired()), self.changes())
    }

    /// Writes the jar to its file now, atomically (see [`write_atomically`]). Blocking:
    /// from async code, call it in `spawn_blocking`. `Ok(false)` for a jar without a
    /// file. The error names no cookie.
    pub fn save(&self) -> io::Result<bool> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let _order = self.save_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (text, change) = self.snapshot();
        write_atomically(path, text.as_bytes())?;
        self.saved.fetch_max(change, Ordering::SeqCst);
        self.saves.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

/// One `Set-Cookie` value from `url` as a cookie to store, or why not (no value in it).
fn accept(url: &Url, header: &str) -> Result<Cookie<'static>, &'static str> {
    let raw = cookie::Cookie::parse(header.to_owned()).map_err(|_| "not a cookie")?;
    if raw.name().is_empty() {
        return Err("no name");
    }
    if raw.name().len() + raw.value().len() > MAX_NAME_AND_VALUE {
        return Err("name and value longer than 4096 bytes");
    }
    if !netscape::field_ok(raw.name()) || !netscape::field_ok(raw.value()) {
        return Err("control character in name or value");
    }
    if raw.secure() == Some(true) && !secure_origin(url) {
        return Err("Secure cookie from plain http");
    }
    let mut c = Cookie::try_from_raw_cookie(&raw, url)
        .map_err(|_| "domain does not match")?
        .into_owned();
    if let CookieDomain::Suffix(d) = &c.domain {
        let host = url.host_str().unwrap_or("");
        let ip = d.parse::<IpAddr>().is_ok() || d.starts_with('[');
        if ip {
            // Domain=<the IP itself>: host-only, as curl and browsers store it.
            c.domain = CookieDomain::host_only(url).map_err(|_| "no host")?;
        } else if !d.trim_matches('.').contains('.') && d != host {
            return Err("Domain= of one label");
        }
    }
    Ok(c)
}

/// https, or a loopback host: where curl accepts `Secure` cookies from.
fn secure_origin(url: &Url) -> bool {
    match url.host() {
        _ if url.scheme() == "https" => true,
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The jar's place when no file is named: `$XDG_STATE_HOME/authproxy/cookies.txt`, else
/// `~/.local/state/authproxy/cookies.txt`. A relative `XDG_STATE_HOME` is ignored, as
/// the XDG spec says. `None` when neither is known.
pub fn default_path(xdg_state_home: Option<&OsStr>, home: Option<&Path>) -> Option<PathBuf> {
    let base = match xdg_state_home.map(Path::new) {
        Some(x) if x.is_absolute() => x.to_path_buf(),
        _ => home
            .filter(|h| !h.as_os_str().is_empty())?
            .join(".local/state"),
    };
    Some(base.join("authproxy").join("cookies.txt"))
}

/// Moves a jar that cannot be used to `<name>.corrupt-<unix time>` beside it, and says
/// what happened (for the problem's message).
fn move_aside(path: &Path) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.file_name().unwrap_or(OsStr::new("cookies")).to_owned();
    name.push(format!(".corrupt-{secs}"));
    let aside = path.with_file_name(name);
    match fs::rename(path, &aside) {
        Ok(()) => format!(
            "moved aside to {}; the jar starts empty",
            aside.display()
        ),
        Err(e) => format!(
            "could not be moved aside to {} ({e}); the jar starts empty and the next save replaces it",
            aside.display()
        ),
    }
}

/// Removes the temporary files that a writer killed mid-save left beside `path`
/// (`.<name>.<pid>.<n>.<x>.tmp` of a process that no longer exists). Best effort.
fn remove_stale_temps(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(OsStr::to_str) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let [pid, _, _] = parts[..] else { continue };
        let Some(pid) = pid
            .parse::<i32>()
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        // ESRCH: no such process. Any other answer (alive, or not ours to signal) keeps it.
        if rustix::process::test_kill_process(pid) == Err(rustix::io::Errno::SRCH) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Replaces `path` with `data` so that a crash at any moment leaves the old file or the
/// new one, never a mix: a temporary file in the same directory (created with
/// `O_CREAT|O_EXCL`, mode 0600), the data, fsync, `rename` over `path`, fsync of the
/// directory. A missing directory is created, mode 0700. A `path` that exists and is
/// not a regular file (a directory, `/dev/null`) is refused, not replaced.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file; not replaced",
            ))
        }
        _ => {}
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let (tmp, mut file) = {
        let mut tries = 0;
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let mut tmp_name = OsStr::new(".").to_owned();
            tmp_name.push(name);
            tmp_name.push(format!(
                ".{}.{}.{nanos:x}.tmp",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            let tmp = dir.join(tmp_name);
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
            {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    };
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is; some file systems cannot fsync a
    // directory, and the new file is complete either way.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The writer: saves `jar` within [`SAVE_DELAY`] of a change (one save for a burst), again
/// [`RETRY_DELAY`] after a failed save, and once more when `shutdown` turns true (or its
/// sender is dropped), then ends. Failures are logged (path and error, no cookie) and
/// never stop the daemon. For a jar without a file it only waits for shutdown.
pub fn spawn_writer(
    jar: Arc<Jar>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let retry = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = jar.changed() => {}
                _ = retry => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(SAVE_DELAY) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            if jar.is_dirty() {
                retry_at = match save_in_background(&jar, "trying again later").await {
                    Ok(()) => None,
                    Err(()) => Some(tokio::time::Instant::now() + RETRY_DELAY),
                };
            }
        }
        if jar.is_dirty() {
            let _ = save_in_background(&jar, "at shutdown; the last changes are lost").await;
        }
    })
}

async fn save_in_background(jar: &Arc<Jar>, then: &'static str) -> Result<(), ()> {
    let j = jar.clone();
    match tokio::task::spawn_blocking(move || j.save()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(
                path = %jar.path().unwrap_or(Path::new("")).display(),
                error = %e,
                "cookie jar not saved; {then}"
            );
            Err(())
        }
        Err(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn jar_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Jar>();
        check::<Arc<Jar>>();
    }

    #[test]
    fn stores_and_sends_by_domain_path_and_secure() {
        let jar = Jar::new();
        let n = jar.store(
            &url("https://www.example.org/a/b"),
            [
                "host=1",
                "dom=2; Domain=example.org; Path=/",
                "sec=3; Secure; Path=/",
                "sub=4; Path=/sub",
                "ho=5; HttpOnly; Path=/",
            ],
        );
        assert_eq!(n, 5);
        assert_eq!(jar.len(), 5);
        // Host-only cookie, default path /a.
        assert_eq!(
            jar.cookie_header(&url("https://www.example.org/a/x"))
                .unwrap(),
            "host=1; dom=2; ho=5; sec=3"
        );
        // Another host in the domain: only the Domain= cookie.
        assert_eq!(
            jar.cookie_header(&url("http://data.example.org/")).unwrap(),
            "dom=2"
        );
        // Plain http to the same host: no Secure cookie.
        assert_eq!(
            jar.cookie_header(&url("http://www.example.org/")).unwrap(),
            "dom=2; ho=5"
        );
        // Longer path first.
        assert_eq!(
            jar.cookie_header(&url("https://www.example.org/sub/f"))
                .unwrap(),
            "sub=4; dom=2; ho=5; sec=3"
        );
        assert_eq!(jar.cookie_header(&url("https://example.com/")), None);
    }

    #[test]
    fn expiry_and_removal() {
        let jar = Jar::new();
        let u = url("http://h.example/");
        jar.store(&u, ["a=1; Max-Age=3600", "b=2", "c=3; Max-Age=0"]);
        assert_eq!(jar.cookie_header(&u).unwrap(), "a=1; b=2");
        let before = jar.changes();
        assert_eq!(
            jar.store(&u, ["a=gone; Expires=Thu, 01 Jan 1970 00:00:01 GMT"]),
            1
        );
        assert!(jar.changes() > before);
        assert_eq!(jar.cookie_header(&u).unwrap(), "b=2");
        // The same cookie again is no change.
        let before = jar.changes();
        assert_eq!(jar.store(&u, ["b=2"]), 0);
        assert_eq!(jar.changes(), before);
        assert_eq!(jar.store(&u, ["b=3"]), 1);
    }

    #[test]
    fn refuses_what_curl_refuses() {
        let jar = Jar::new();
        // Secure from plain http on a real host: refused; on loopback: kept.
        assert_eq!(jar.store(&url("http://h.example/"), ["s=1; Secure"]), 0);
        assert_eq!(jar.store(&url("http://127.0.0.1:9/"), ["s=1; Secure"]), 1);
        // One-label domain.
        assert_eq!(
            jar.store(&url("http://a.example/"), ["t=1; Domain=example"]),
            0
        );
        assert_eq!(jar.store(&url("http://a.b.com/"), ["t=1; Domain=com"]), 0);
        // Domain of another site.
        assert_eq!(
            jar.store(&url("http://a.example/"), ["t=1; Domain=b.example"]),
            0
        );
        // Domain=localhost from localhost is a domain cookie, as curl keeps it.
        assert_eq!(
            jar.store(&url("http://localhost:9/"), ["l=1; Domain=localhost"]),
            1
        );
        // Domain=<IP> is host-only.
        assert_eq!(
            jar.store(&url("http://127.0.0.2:9/"), ["i=1; Domain=127.0.0.2"]),
            1
        );
        let text = jar.to_netscape();
        assert!(
            text.contains("\n127.0.0.2\tFALSE\t/\tFALSE\t0\ti\t1\n"),
            "{text}"
        );
        assert!(
            text.contains("\n.localhost\tTRUE\t/\tFALSE\t0\tl\t1\n"),
            "{text}"
        );
        // Garbage and control characters.
        assert_eq!(
            jar.store(&url("http://h.example/"), ["", "=x", "novalue"]),
            0
        );
        assert_eq!(jar.store(&url("http://h.example/"), ["a=b\u{7f}c"]), 0);
        // curl's limits: 4096 bytes of name and value, 50 cookies per response.
        let long = format!("n={}", "v".repeat(MAX_NAME_AND_VALUE));
        assert_eq!(jar.store(&url("http://h.example/"), [long.as_str()]), 0);
        let many: Vec<String> = (0..60).map(|i| format!("m{i}=1")).collect();
        assert_eq!(
            jar.store(&url("http://m.example/"), many.iter().map(String::as_str)),
            MAX_SET_COOKIE_PER_RESPONSE
        );
    }

    #[test]
    fn merge_client_wins() {
        assert_eq!(Jar::merge(None, None), None);
        assert_eq!(Jar::merge(Some("  "), None), None);
        assert_eq!(Jar::merge(Some("a=1"), None).unwrap(), "a=1");
        assert_eq!(Jar::merge(None, Some("b=2".into())).unwrap(), "b=2");
        assert_eq!(
            Jar::merge(Some("a=client; c=3"), Some("a=jar; b=2; c=jar".into())).unwrap(),
            "a=client; c=3; b=2"
        );
        assert_eq!(
            Jar::merge(Some("a=1;"), Some("b=2".into())).unwrap(),
            "a=1; b=2"
        );
    }

    #[test]
    fn debug_and_errors_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.txt");
        let (jar, _) = Jar::open(&path);
        jar.store(
            &url("https://h.example/"),
            ["tok=SECRETVALUE1; Secure", "s=SECRETVALUE2; HttpOnly"],
        );
        let dbg = format!("{jar:?}");
        let dbg = format!("{dbg} {:?}", Arc::new(jar));
        assert!(!dbg.contains("SECRETVALUE"), "{dbg}");
        assert!(dbg.contains("cookies: 2"), "{dbg}");

        // A bad file's problems: no value, the place.
        fs::write(
            &path,
            "h\tFALSE\t/\tFALSE\t0\tn\tSECRETVALUE3\textra\nh\tFALSE\t/\tFALSE\t0\tn\tv\n",
        )
        .unwrap();
        let (jar, problems) = Jar::open(&path);
        assert_eq!(jar.len(), 1);
        assert_eq!(problems.len(), 1);
        let shown = format!("{} {:?}", problems[0], problems);
        assert!(!shown.contains("SECRETVALUE"), "{shown}");
        assert!(
            shown.starts_with(&format!("{}:1: ", path.display())),
            "{shown}"
        );
    }

    /// Every log line the jar emits, at trace level, while it stores, refuses, sends,
    /// reads a bad file and fails to save: no cookie value in any of them.
    #[test]
    fn log_lines_hide_values() {
        #[derive(Clone, Default)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Capture {
            type Writer = Capture;
            fn make_writer(&'w self) -> Capture {
                self.clone()
            }
        }
        let out = Capture::default();
        let sub = crate::telemetry::subscriber(
            Some("trace"),
            crate::telemetry::LogFormat::Plain,
            out.clone(),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        tracing::subscriber::with_default(sub, || {
            tracing::debug!("capture works");
            fs::write(
                &path,
                "h\tFALSE\t/\tFALSE\tx\tn\tSECRET0\nh\tFALSE\t/\tFALSE\t0\tok\tSECRET7\n",
            )
            .unwrap();
            let (jar, problems) = Jar::open(&path);
            for p in problems {
                tracing::warn!("{p}");
            }
            let jar = Arc::new(jar);
            let u = url("http://h.example/");
            jar.store(
                &u,
                [
                    "a=SECRET1",
                    "b=SECRET2; Secure",
                    "c=SECRET3; Domain=other.example",
                    "d=SECRET4; Domain=example",
                    "e=SECRET5\u{7}",
                ],
            );
            let _ = jar.cookie_header(&u);
            fs::remove_file(&path).unwrap();
            fs::create_dir(&path).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (stop, stopped) = watch::channel(false);
                let writer = spawn_writer(jar.clone(), stopped);
                jar.store(&u, ["f=SECRET6"]);
                tokio::time::sleep(SAVE_DELAY + Duration::from_millis(500)).await;
                stop.send(true).unwrap();
                writer.await.unwrap();
            });
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("capture works"), "{text}");
        assert!(text.contains("Set-Cookie not stored"), "{text}");
        assert!(
            text.contains("cookie jar not saved; trying again later"),
            "{text}"
        );
        assert!(text.contains("cookie jar not saved; at shutdown"), "{text}");
        assert!(text.contains("cookies.txt:1: field 5"), "{text}");
        assert!(!text.contains("SECRET"), "{text}");
    }

    #[test]
    fn save_open_round_trip_mode_0600_and_dir_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/authproxy/cookies.txt");
        let (jar, problems) = Jar::open(&path);
        assert!(problems.is_empty());
        assert!(!jar.is_dirty());
        jar.store(
            &url("https://www.example.org/p/q"),
            [
                "a=1; Domain=example.org; Path=/; Secure; HttpOnly; Max-Age=86400",
                "b=2",
            ],
        );
        assert!(jar.is_dirty());
        assert!(jar.save().unwrap());
        assert!(!jar.is_dirty());
        assert_eq!(jar.saves(), 1);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(netscape::HEADER));
        assert!(text.contains("#HttpOnly_.example.org\tTRUE\t/\tTRUE\t"));
        assert!(text.contains("www.example.org\tFALSE\t/p\tFALSE\t0\tb\t2\n"));

        let (again, problems) = Jar::open(&path);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(again.len(), 2);
        assert_eq!(
            again.cookie_header(&url("https://www.example.org/p/x")),
            jar.cookie_header(&url("https://www.example.org/p/x"))
        );
        assert_eq!(again.to_netscape(), text);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsStr::new("cookies.txt").to_owned()]);
    }

    #[test]
    fn corrupt_file_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        fs::write(&path, b"PK\x03\x04\x00\x00binary zip").unwrap();
        let (jar, problems) = Jar::open(&path);
        assert!(jar.is_empty());
        assert_eq!(problems.len(), 1, "{problems:?}");
        let p = &problems[0];
        assert_eq!(p.line, Some(1));
        assert!(p.message.contains("moved aside to"), "{p}");
        assert!(!path.exists());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(aside.len(), 1);
        assert!(aside[0].starts_with("cookies.txt.corrupt-"), "{aside:?}");
        assert_eq!(
            fs::read(dir.path().join(&aside[0])).unwrap(),
            b"PK\x03\x04\x00\x00binary zip"
        );

        // Text, but no cookie line and no header: not a cookie file either.
        fs::write(&path, "{\"version\": 1}\n").unwrap();
        let (jar, problems) = Jar::open(&path);
        assert!(jar.is_empty());
        assert!(problems[0]
            .to_string()
            .contains("cookies.txt:1: not a Netscape cookie file"));
        assert!(!path.exists());

        // A directory is reported, not moved, and not replaced: the jar has no file.
        fs::create_dir(&path).unwrap();
        let (jar, problems) = Jar::open(&path);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].message.contains("kept in memory only"),
            "{problems:?}"
        );
        assert!(path.is_dir());
        assert_eq!(jar.path(), None);
        jar.store(&url("http://h.example/"), ["a=1"]);
        assert!(!jar.is_dirty());
        assert!(!jar.save().unwrap());
        assert!(path.is_dir());
        // One that turns into a directory later is refused by the save, not replaced.
        fs::remove_dir(&path).unwrap();
        let (jar, _) = Jar::open(&path);
        fs::create_dir(&path).unwrap();
        jar.store(&url("http://h.example/"), ["a=1"]);
        assert!(jar.save().is_err());
        assert!(path.is_dir());
    }

    #[test]
    fn stale_temporary_files_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        let gone = dir.path().join(".cookies.txt.999999999.3.1f.tmp");
        let alive = dir
            .path()
            .join(format!(".cookies.txt.{}.0.0.tmp", std::process::id()));
        let other = dir.path().join(".other.txt.999999999.3.1f.tmp");
        for f in [&gone, &alive, &other] {
            fs::write(f, "x").unwrap();
        }
        let _ = Jar::open(&path);
        assert!(!gone.exists());
        assert!(alive.exists());
        assert!(other.exists());
    }

    #[test]
    fn default_path_follows_xdg() {
        assert_eq!(
            default_path(Some(OsStr::new("/x/state")), Some(Path::new("/home/u"))),
            Some(PathBuf::from("/x/state/authproxy/cookies.txt"))
        );
        assert_eq!(
            default_path(Some(OsStr::new("relative")), Some(Path::new("/home/u"))),
            Some(PathBuf::from("/home/u/.local/state/authproxy/cookies.txt"))
        );
        assert_eq!(
            default_path(None, Some(Path::new("/home/u"))),
            Some(PathBuf::from("/home/u/.local/state/authproxy/cookies.txt"))
        );
        assert_eq!(default_path(Some(OsStr::new("")), None), None);
    }

    #[test]
    fn readers_never_see_a_torn_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        let (jar, _) = Jar::open(&path);
        let jar = Arc::new(jar);
        let u = url("http://h.example/");
        // A big file, so that a write takes several syscalls.
        let value = "v".repeat(3000);
        jar.store(&u, [format!("c0={value}").as_str()]);
        jar.save().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (jar, stop, value) = (jar.clone(), stop.clone(), value.clone());
            std::thread::spawn(move || {
                let mut i = 1u64;
                while !stop.load(Ordering::Relaxed) {
                    jar.store(
                        &u,
                        [format!("c{}={value}", i % 50).as_str(), &format!("n={i}")],
                    );
                    jar.save().unwrap();
                    i += 1;
                }
                i
            })
        };
        let mut reads = 0;
        // Until both sides did enough (bounded: a loaded machine gets 10 s).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (reads < 200 || jar.saves() < 50) && std::time::Instant::now() < deadline {
            let data = fs::read(&path).unwrap();
            let parsed = netscape::parse(&data);
            assert!(parsed.header);
            assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
            assert!(data.ends_with(b"\n"));
            assert!(!parsed.cookies.is_empty());
            reads += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let saves = writer.join().unwrap();
        assert!(reads >= 20 && saves >= 5, "{reads} reads, {saves} saves");
    }

    /// Run as a child process by `kill_9_leaves_old_or_new`: saves forever.
    #[test]
    fn kill_9_child() {
        let Some(path) = std::env::var_os("AUTHPROXY_JAR_KILL_CHILD") else {
            return;
        };
        let (jar, _) = Jar::open(PathBuf::from(path));
        let u = url("http://h.example/");
        let value = "w".repeat(4000);
        for i in 0u64.. {
            jar.store(
                &u,
                [format!("c{}={value}", i % 64).as_str(), &format!("n={i}")],
            );
            jar.save().unwrap();
        }
    }

    #[test]
    fn kill_9_leaves_old_or_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        for round in 0..5u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "session::jar::tests::kill_9_child",
                    "--test-threads=1",
                ])
                .env("AUTHPROXY_JAR_KILL_CHILD", &path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Let it get going, then kill it mid-stream.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !path.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(30 + 17 * round));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let data = fs::read(&path).unwrap();
            let parsed = netscape::parse(&data);
            assert!(parsed.header, "round {round}");
            assert!(
                parsed.problems.is_empty(),
                "round {round}: {:?}",
                parsed.problems
            );
            assert!(parsed.cookies.iter().any(|c| c.name() == "n"));
            // And the daemon starts from it, removing what the killed writer left.
            let (jar, problems) = Jar::open(&path);
            assert!(problems.is_empty());
            assert!(!jar.is_empty());
            let left: Vec<_> = fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                left,
                vec![OsStr::new("cookies.txt").to_owned()],
                "round {round}"
            );
        }
    }

    #[tokio::test(start_paused = false)]
    async fn writer_debounces_and_saves_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookies.txt");
        let (jar, _) = Jar::open(&path);
        let jar = Arc::new(jar);
        let (stop, stopped) = watch::channel(false);
        let writer = spawn_writer(jar.clone(), stopped);
        let u = url("http://h.example/");
        let t0 = std::time::Instant::now();
        for i in 0..100 {
            jar.store(&u, [format!("c{i}=v").as_str()]);
        }
        while jar.saves() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(2), "no save within 2 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(t0.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(SAVE_DELAY + Duration::from_millis(300)).await;
        assert_eq!(jar.saves(), 1, "one save for the burst");
        assert!(!jar.is_dirty());
        assert_eq!(Jar::open(&path).0.len(), 100);

        // A change right before shutdown is saved by the shutdown.
        jar.store(&u, ["last=1"]);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(jar.saves(), 2);
        assert_eq!(Jar::open(&path).0.len(), 101);
    }
}
