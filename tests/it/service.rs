//! The daemon under a service manager, as the real binary: sd_notify messages on a
//! datagram socket the test binds (READY, RELOADING, STOPPING, WATCHDOG), the drain on
//! SIGTERM, socket activation (LISTEN_FDS), `authproxy install`, and the unit files as
//! `systemd-analyze` reads them.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::credentials::yaml;
use crate::process::{self, Daemon};
use crate::support::{self, Origin};

/// The socket systemd would pass as `$NOTIFY_SOCKET`, bound by the test.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    fn env(&self) -> (&'static str, &str) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap())
    }

    /// The next message, if one comes within `wait`.
    fn next(&self, wait: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    /// Messages until one equals `want` (which is the last one returned); panics with
    /// what came if it does not come within `wait`.
    fn until(&self, want: &str, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(m) => {
                    let done = m == want;
                    got.push(m);
                    if done {
                        return got;
                    }
                }
                None => break,
            }
        }
        panic!("no {want:?} within {wait:?}; got {got:?}");
    }
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {signal} failed");
}

/// Waits (bounded) for the child to exit.
fn wait_exit(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn ready_once_every_listener_is_bound() {
    let notify = NotifySocket::bind();
    let extra = support::closed_port();
    let extra = format!("127.0.0.1:{extra}");
    let mut daemon = Daemon::start(&["--listen", &extra], &[notify.env()]);
    let got = notify.until("READY=1\n", 10 * SECOND);
    assert_eq!(got, ["READY=1\n"], "READY is the first message");
    // Both listeners were bound before READY.
    std::net::TcpStream::connect(&daemon.addr).unwrap();
    std::net::TcpStream::connect(&extra).unwrap();
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert_eq!(notify.until("STOPPING=1\n", 5 * SECOND), ["STOPPING=1\n"]);
    assert_eq!(notify.next(Duration::from_millis(300)), None);
}

#[test]
fn sighup_says_reloading_with_a_monotonic_time_then_ready() {
    let notify = NotifySocket::bind();
    let mut daemon = Daemon::start(&[], &[notify.env()]);
    notify.until("READY=1\n", 10 * SECOND);
    kill(&daemon.child, "-HUP");
    let reloading = notify.next(5 * SECOND).expect("RELOADING after SIGHUP");
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{reloading:?}"));
    let usec: u64 = usec.parse().unwrap();
    // CLOCK_MONOTONIC never runs ahead of the time since boot.
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        usec > 0 && (usec as f64) <= (uptime + 1.0) * 1e6,
        "{usec} vs {uptime}"
    );
    assert_eq!(notify.next(5 * SECOND).as_deref(), Some("READY=1\n"));
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
}

#[test]
fn watchdog_pings_at_half_the_timeout() {
    let notify = NotifySocket::bind();
    let mut daemon = Daemon::start(&[], &[notify.env(), ("WATCHDOG_USEC", "400000")]);
    notify.until("READY=1\n", 10 * SECOND);
    let start = Instant::now();
    let mut pings = Vec::new();
    while start.elapsed() < Duration::from_millis(1300) {
        if let Some(m) = notify.next(Duration::from_millis(100)) {
            assert_eq!(m, "WATCHDOG=1\n");
            pings.push(start.elapsed());
        }
    }
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    // Every 200 ms: six in 1.3 s. A busy machine may delay or skip one (a part that
    // did not run for 200 ms costs a ping), so the typical gap is what is checked.
    assert!((4..=7).contains(&pings.len()), "{pings:?}");
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        gaps[0] >= Duration::from_millis(120)
            && median >= Duration::from_millis(170)
            && median <= Duration::from_millis(260),
        "{gaps:?}"
    );
    assert!(log.contains("watchdog"), "{log}");
}

/// The body `/trickle` sends: 15 000 pattern bytes, 1 000 every 100 ms.
const TRICKLE_LEN: usize = 15_000;

/// A loopback origin: `/trickle` sets a cookie and trickles [`TRICKLE_LEN`] bytes over
/// 1.5 s; `/late` answers (and sets a cookie) 600 ms after its request came. `late_seen`
/// turns true when `/late` arrives.
async fn trickle_origin() -> (SocketAddr, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let late_seen = Arc::new(AtomicBool::new(false));
    let seen = late_seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&head);
                if head.starts_with("GET /trickle ") {
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {TRICKLE_LEN}\r\n\
                         Set-Cookie: early=E4rly-V4lue; Path=/; Max-Age=3600\r\n\
                         Connection: close\r\n\r\n"
                    );
                    sock.write_all(reply.as_bytes()).await.unwrap();
                    let body = support::pattern_bytes(TRICKLE_LEN);
                    for chunk in body.chunks(1000) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        sock.write_all(chunk).await.unwrap();
                    }
                } else if head.starts_with("GET /late ") {
                    seen.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    let reply = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\
                                 Set-Cookie: late=L4te-V4lue; Path=/; Max-Age=3600\r\n\
                                 Connection: close\r\n\r\nlate";
                    sock.write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (addr, late_seen)
}

/// Sends GET `url` through the proxy; returns the head once it has arrived and a task
/// that reads the rest of the body to EOF.
async fn start_get(
    proxy: &str,
    url: &str,
) -> (String, tokio::task::JoinHandle<(Vec<u8>, Instant)>) {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let host = url.split('/').nth(2).unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut buf))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "closed before the head: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let mut body = got[end..].to_vec();
    let rest = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut body))
            .await
            .expect("body in time")
            .unwrap();
        (body, Instant::now())
    });
    (head, rest)
}

async fn start_get_pending(proxy: &str, url: &str) -> tokio::task::JoinHandle<String> {
    let proxy = proxy.to_owned();
    let url = url.to_owned();
    tokio::spawn(async move {
        let (head, rest) = start_get(&proxy, &url).await;
        let (body, _) = rest.await.unwrap();
        format!("{head}{}", String::from_utf8_lossy(&body))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streaming_responses_finish_saves_the_jar_and_exits_0() {
    let (origin, late_seen) = trickle_origin().await;
    let home = tempfile::tempdir().unwrap();
    let jar = home.path().join("cookies.txt");
    let config = yaml(
        home.path(),
        &format!("cookie_jar: {}\nshutdown: {{ drain: 5s }}\n", jar.display()),
    );
    let notify = NotifySocket::bind();
    let mut daemon = Daemon::start_in(
        home.path(),
        &["--config", config.to_str().unwrap()],
        &[notify.env()],
    );
    let notify = Arc::new(notify);
    let n = notify.clone();
    tokio::task::spawn_blocking(move || n.until("READY=1\n", 10 * SECOND))
        .await
        .unwrap();

    // One response streaming, one whose origin answers only after the signal.
    let (head, trickle) = start_get(&daemon.addr, &format!("http://{origin}/trickle")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("early=E4rly-V4lue"), "{head}");
    let late = start_get_pending(&daemon.addr, &format!("http://{origin}/late")).await;
    let deadline = Instant::now() + 5 * SECOND;
    while !late_seen.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "/late never reached the origin");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    kill(&daemon.child, "-TERM");
    let n = notify.clone();
    let stopping = tokio::task::spawn_blocking(move || n.next(5 * SECOND))
        .await
        .unwrap();
    assert_eq!(stopping.as_deref(), Some("STOPPING=1\n"));
    // New connections are refused while the old ones drain.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(TcpStream::connect(&daemon.addr).await.is_err());

    let (body, finished) = trickle.await.unwrap();
    assert_eq!(body.len(), TRICKLE_LEN, "the client got every byte");
    assert_eq!(body, support::pattern_bytes(TRICKLE_LEN));
    let late = late.await.unwrap();
    assert!(
        late.starts_with("HTTP/1.1 200") && late.ends_with("\r\n\r\nlate"),
        "{late}"
    );

    // Every response is in: nothing is left for this runtime to serve, so blocking it
    // while the daemon exits is harmless.
    let status =
        wait_exit(&mut daemon.child, 5 * SECOND).expect("the daemon exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(
        finished.duration_since(signalled) > Duration::from_millis(900),
        "the response was still streaming at SIGTERM"
    );
    let (_, log) = daemon.stop();
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    for secret in ["E4rly-V4lue", "L4te-V4lue"] {
        assert!(
            !log.contains(secret),
            "a cookie value reached the log:\n{log}"
        );
    }
    // Both cookies, the second set during the drain, are in the saved jar.
    let saved = std::fs::read_to_string(&jar).unwrap();
    assert!(saved.contains("\tearly\tE4rly-V4lue"), "{saved}");
    assert!(saved.contains("\tlate\tL4te-V4lue"), "{saved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_is_bounded_by_shutdown_drain() {
    let (origin, _) = trickle_origin().await;
    let home = tempfile::tempdir().unwrap();
    let config = yaml(home.path(), "shutdown: { drain: 400ms }\n");
    let mut daemon = Daemon::start_in(home.path(), &["--config", config.to_str().unwrap()], &[]);
    let (head, trickle) = start_get(&daemon.addr, &format!("http://{origin}/trickle")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let signalled = Instant::now();
    kill(&daemon.child, "-TERM");
    let status = tokio::task::spawn_blocking(move || {
        let s = wait_exit(&mut daemon.child, 5 * SECOND);
        (s, daemon)
    });
    // The response is cut at the drain's end: the client sees the connection close.
    let (body, closed) = trickle.await.unwrap();
    assert!(body.len() < TRICKLE_LEN, "{} bytes", body.len());
    assert_eq!(body, support::pattern_bytes(body.len()));
    let (status, mut daemon) = status.await.unwrap();
    let exited = signalled.elapsed();
    assert!(status.expect("exits").success());
    assert!(
        closed.duration_since(signalled) >= Duration::from_millis(400),
        "cut before the drain ended"
    );
    assert!(exited < 3 * SECOND, "took {exited:?}");
    let (_, log) = daemon.stop();
    assert!(log.contains("waiting up to 400ms"), "{log}");
    assert!(log.contains("connections still open after 400ms"), "{log}");
}

#[test]
fn sigint_stops_as_sigterm_does() {
    let notify = NotifySocket::bind();
    let mut daemon = Daemon::start(&[], &[notify.env()]);
    notify.until("READY=1\n", 10 * SECOND);
    kill(&daemon.child, "-INT");
    assert_eq!(notify.next(5 * SECOND).as_deref(), Some("STOPPING=1\n"));
    let status = wait_exit(&mut daemon.child, 5 * SECOND).expect("exits");
    assert!(status.success(), "{status:?}");
    let (_, log) = daemon.stop();
    assert!(log.contains("SIGINT: shutting down"), "{log}");
}

/// `authproxy serve` started as systemd starts a socket-activated service: `fd` as fd 3,
/// `LISTEN_FDS=1` and `LISTEN_PID` its own pid (the shell sets it to its own, then
/// becomes the daemon: exec keeps the pid). Output goes to `out`/stdout and stderr.
fn activated(home: &Path, out: &Path, fd: std::os::fd::OwnedFd) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(BIN)
        .arg("serve")
        .current_dir(home);
    for (k, v) in process::command(home).get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let file = |name: &str| std::fs::File::create(out.join(name)).unwrap();
    cmd.env("LISTEN_FDS", "1")
        .stdout(Stdio::from(file("stdout")))
        .stderr(Stdio::from(file("stderr")))
        .fd_mappings(vec![FdMapping {
            parent_fd: fd,
            child_fd: 3,
        }])
        .unwrap();
    cmd
}

#[test]
fn an_inherited_fd_that_is_no_tcp_listener_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let unix = std::os::unix::net::UnixListener::bind(home.path().join("sock")).unwrap();
    let mut cmd = activated(home.path(), out.path(), unix.into());
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let status = wait_exit(&mut child, 10 * SECOND).expect("exits");
    assert_eq!(status.code(), Some(1));
    let err = std::fs::read_to_string(out.path().join("stderr")).unwrap();
    assert!(
        err.contains(
            "authproxy: socket activation: LISTEN_FDS: fd 3 is not a TCP listening socket"
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_socket_systemd_passes_instead_of_binding_listen() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let not_bound = format!("127.0.0.1:{}", support::closed_port());
    let notify = NotifySocket::bind();
    let mut cmd = activated(home.path(), out.path(), socket.into());
    cmd.args(["--listen", &not_bound])
        .env(notify.env().0, notify.env().1);
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // the parent's copy of the socket
    let n = notify;
    let n = tokio::task::spawn_blocking(move || {
        n.until("READY=1\n", 10 * SECOND);
        n
    })
    .await
    .unwrap();

    let (head, rest) = start_get(&addr.to_string(), &origin.url("/hello")).await;
    let (body, _) = rest.await.unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"ok");
    assert_eq!(origin.requests().len(), 1);
    assert!(
        TcpStream::connect(&not_bound).await.is_err(),
        "`--listen` was bound too"
    );

    kill(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || {
        assert_eq!(n.next(5 * SECOND).as_deref(), Some("STOPPING=1\n"));
        wait_exit(&mut child, 5 * SECOND)
    })
    .await
    .unwrap()
    .expect("exits");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(out.path().join("stderr")).unwrap()
        + &std::fs::read_to_string(out.path().join("stdout")).unwrap();
    assert!(
        log.contains(&format!("addr={addr}"))
            && log.contains("listening on a socket from the service manager (LISTEN_FDS)")
            && log.contains(&format!("`listen` ({not_bound}) is not bound")),
        "{log}"
    );
}

/// `authproxy install ...` in an empty HOME, with `path` as PATH.
fn install(home: &Path, args: &[&str], path: &str) -> (bool, String, String) {
    let out = process::command(home)
        .arg("install")
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const BIN: &str = env!("CARGO_BIN_EXE_authproxy");

#[test]
fn install_user_dry_run_prints_the_unit_for_this_binary_and_writes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let (ok, unit, err) = install(home.path(), &["--user", "--dry-run"], "/usr/bin:/bin");
    assert!(ok, "{err}");
    assert_eq!(err, "");
    let exec: Vec<&str> = unit
        .lines()
        .filter(|l| l.starts_with("ExecStart="))
        .collect();
    assert_eq!(exec, [format!("ExecStart={BIN} serve")]);
    for line in [
        "Type=notify",
        "ExecReload=kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=30",
        "WantedBy=default.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
    // The system unit, likewise.
    let (ok, unit, _) = install(home.path(), &["--system", "--dry-run"], "/usr/bin:/bin");
    assert!(ok);
    assert!(unit
        .lines()
        .any(|l| l == format!("ExecStart={BIN} serve --config /etc/authproxy/config.yaml")));
    assert!(unit.lines().any(|l| l == "DynamicUser=yes"));
    // One of the two is required.
    let (ok, _, err) = install(home.path(), &["--dry-run"], "/usr/bin:/bin");
    assert!(!ok && err.contains("--user"), "{err}");
}

#[test]
fn install_user_without_systemctl_writes_the_unit_and_says_what_to_run() {
    let home = tempfile::tempdir().unwrap();
    let config = yaml(home.path(), "listen: [\"127.0.0.1:3999\"]\n");
    let empty = tempfile::tempdir().unwrap();
    let (_, dry, _) = install(home.path(), &["--user", "--dry-run"], "/usr/bin:/bin");
    let (ok, out, err) = install(
        home.path(),
        &["--user", "--config", config.to_str().unwrap()],
        empty.path().to_str().unwrap(),
    );
    assert!(ok, "{err}");
    let unit_path = home.path().join(".config/systemd/user/authproxy.service");
    assert_eq!(std::fs::read_to_string(&unit_path).unwrap(), dry);
    assert!(
        out.starts_with(&format!(
            "wrote {}\nsystemctl is not on the PATH; where systemd runs, start the service with:\n  \
             systemctl --user daemon-reload\n  systemctl --user enable --now authproxy.service\n",
            unit_path.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("export http_proxy=http://127.0.0.1:3999 https_proxy=http://127.0.0.1:3999\n"),
        "{out}"
    );
}

/// `systemd-analyze` with a runtime directory of its own (`--user` needs one).
fn analyze(args: &[&str]) -> (bool, String, String) {
    let runtime = tempfile::tempdir().unwrap();
    let out = Command::new("systemd-analyze")
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env("SYSTEMD_COLORS", "0")
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/install-deps installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The units as `install --dry-run` writes them (ExecStart must name a real binary for
/// `verify`), in a directory with the socket unit.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    for (scope, name) in [
        ("--system", "authproxy.service"),
        ("--user", "user.service"),
    ] {
        let (ok, unit, err) = install(home.path(), &[scope, "--dry-run"], "/usr/bin:/bin");
        assert!(ok, "{err}");
        std::fs::write(dir.path().join(name), unit).unwrap();
    }
    let socket = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/authproxy.socket");
    std::fs::copy(socket, dir.path().join("authproxy.socket")).unwrap();
    dir
}

#[test]
fn systemd_analyze_verifies_both_units_and_the_socket_without_a_word() {
    let dir = units();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (ok, out, err) = analyze(&["verify", &p("authproxy.service"), &p("authproxy.socket")]);
    assert!(ok && err.trim().is_empty(), "{out}{err}");
    let (ok, out, err) = analyze(&["--user", "verify", &p("user.service")]);
    assert!(ok && err.trim().is_empty(), "{out}{err}");
}

/// The exposure score `systemd-analyze security` gives a unit file.
fn exposure(args: &[&str]) -> f64 {
    let (_, out, err) = analyze(args);
    let line = out
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{out}{err}"));
    line.split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn the_system_unit_is_hardened() {
    let dir = units();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let system = exposure(&["security", "--offline=yes", &p("authproxy.service")]);
    let user = exposure(&["security", "--user", "--offline=yes", &p("user.service")]);
    eprintln!("exposure: system unit {system}, user unit {user}");
    // README.md shows both; the system unit must stay "OK" (below 2.0 out of 10).
    assert!(system < 2.0, "system unit exposure {system}");
    assert!(user < 7.0, "user unit exposure {user}");
}
