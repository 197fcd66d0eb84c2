//! The `authproxy` binary as users run it: memory under a large download, secrets in
//! logs at every level, clean shutdown.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, Origin};

/// The binary, started on a free loopback port.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    /// An empty HOME and working directory: the developer's own rc files, netrc and
    /// config never leak into a test.
    _home: Option<tempfile::TempDir>,
    /// stdout and stderr go to files here: a pipe read only at the end would fill up
    /// and stall the daemon at verbose log levels.
    output: tempfile::TempDir,
}

/// The `authproxy` binary with `home` as HOME and working directory, and none of the
/// caller's configuration variables.
pub fn command(home: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authproxy"));
    cmd.current_dir(home)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"));
    for var in [
        "RUST_LOG",
        "AUTHPROXY_CONFIG",
        "NETRC",
        "DAPRCFILE",
        "NCRCENV_RC",
        "NCRCENV_HOME",
        "NCRCENV_IGNORE",
        "CREDENTIALS_DIRECTORY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

impl Daemon {
    /// `authproxy serve` in a fresh, empty HOME.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let home = tempfile::tempdir().unwrap();
        let mut daemon = Daemon::start_in(home.path(), args, env);
        daemon._home = Some(home);
        daemon
    }

    /// `authproxy serve` with `home` (prepared by the caller) as HOME.
    pub fn start_in(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let port = support::closed_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = command(home);
        cmd.arg("serve").arg("--listen").arg(&addr).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = tempfile::tempdir().unwrap();
        let file = |name: &str| std::fs::File::create(output.path().join(name)).unwrap();
        let child = cmd
            .stdout(Stdio::from(file("stdout")))
            .stderr(Stdio::from(file("stderr")))
            .spawn()
            .expect("start authproxy");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "authproxy did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            addr,
            _home: None,
            output,
        }
    }

    /// A field of /proc/PID/status in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGTERM (unless it has exited), wait for exit (bounded), return stderr (then stdout, if anything was
    /// written there) and whether it exited cleanly.
    pub fn stop(&mut self) -> (bool, String) {
        // Not to a child already reaped: its pid may belong to another process by now.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg(self.child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let read = |name: &str| {
            let bytes = std::fs::read(self.output.path().join(name)).unwrap();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let mut log = read("stderr");
        log.push_str(&read("stdout"));
        (status.is_some_and(|s| s.success()), log)
    }
}

impl Daemon {
    /// One request to a closed loopback port; asserts the explained 502 came back.
    fn request_a_closed_port(&self) {
        use std::io::Write;
        let port = support::closed_port();
        let mut sock = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            sock,
            "GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let n = sock.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 502"));
    }
}

impl Drop for Daemon {
    /// A test that fails half-way must not leave the daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Downloads `url` through the proxy on a raw connection, counting the body bytes
/// and checking the pattern; returns the count.
async fn download(proxy: &str, url: &str) -> u64 {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let host = url.split('/').nth(2).unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let mut body = 0u64;
    loop {
        let n = sock.read(&mut buf).await.unwrap();
        if n == 0 {
            return body;
        }
        let mut chunk = &buf[..n];
        if !head.ends_with(b"\r\n\r\n") {
            let mut i = 0;
            while i < chunk.len() && !head.ends_with(b"\r\n\r\n") {
                head.push(chunk[i]);
                i += 1;
            }
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head)
            );
            chunk = &chunk[i..];
        }
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                support::pattern(body + i as u64),
                "byte {}",
                body + i as u64
            );
        }
        body += chunk.len() as u64;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_download_streams_without_growing_memory() {
    let origin = Origin::start().await;
    let mut daemon = Daemon::start(&["--log-level", "warn"], &[]);
    // Warm up, then measure the peak while 512 MiB pass through.
    assert_eq!(
        download(&daemon.addr, &origin.url("/bytes/1048576")).await,
        1 << 20
    );
    let before = daemon.status_kib("VmRSS:");
    let len: u64 = 512 << 20;
    assert_eq!(
        download(&daemon.addr, &origin.url(&format!("/bytes/{len}"))).await,
        len
    );
    let peak = daemon.status_kib("VmHWM:");
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    eprintln!("RSS before {before} KiB, peak {peak} KiB");
    assert!(
        peak < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {peak} KiB during a 512 MiB download"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log_even_at_trace_level() {
    let origin = Origin::start().await;
    // A more specific directive once lifted the cap on pingora's header dumps.
    let mut daemon = Daemon::start(&[], &[("RUST_LOG", "trace,pingora_proxy::proxy_h1=debug")]);
    let closed = support::closed_port();
    let secrets = [
        "BasicPass-7d1e",
        "ProxyPass-93aa",
        "CookieVal-55c1",
        "UserinfoPass-0b2f",
        "QueryToken-c3d9",
    ];
    let auth = "Basic QWxhZGRpbjpCYXNpY1Bhc3MtN2QxZQ=="; // Aladdin:BasicPass-7d1e
    let proxy_auth = "Basic cDpQcm94eVBhc3MtOTNhYQ=="; // p:ProxyPass-93aa
    for target in [
        origin.url("/ok?token=QueryToken-c3d9&x=1"),
        format!("http://u:UserinfoPass-0b2f@{}/ok", origin.addr),
        format!("http://127.0.0.1:{closed}/fail?token=QueryToken-c3d9"),
    ] {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\
             Proxy-Authorization: {proxy_auth}\r\nAuthorization: Bearer BasicPass-7d1e\r\n\
             Cookie: s=CookieVal-55c1\r\nConnection: close\r\n\r\n",
            target
                .split('/')
                .nth(2)
                .unwrap()
                .rsplit('@')
                .next()
                .unwrap()
        );
        let mut sock = TcpStream::connect(&daemon.addr).await.unwrap();
        sock.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 "), "{text}");
        for s in secrets {
            assert!(!text.contains(s), "{s} in the response: {text}");
        }
    }
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(log.contains("status=200"), "no access log line:\n{log}");
    assert!(
        log.contains("connect_refused"),
        "no failure log line:\n{log}"
    );
    assert!(log.contains("token=***"), "{log}");
    for s in secrets {
        assert!(!log.contains(s), "{s} reached the log:\n{log}");
    }
    // The base64 forms too.
    assert!(!log.contains("QWxhZGRpbjpCYXNpY1Bhc3MtN2QxZQ"), "{log}");
    assert!(!log.contains("cDpQcm94eVBhc3MtOTNhYQ"), "{log}");
}

#[test]
fn json_log_format_writes_json_lines() {
    let mut daemon = Daemon::start(&["--log-format", "json"], &[]);
    daemon.request_a_closed_port();
    let (clean, log) = daemon.stop();
    assert!(clean);
    let line = log
        .lines()
        .find(|l| l.contains("connect_refused"))
        .expect("access line");
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"status\":502"), "{line}");
}

#[test]
fn sighup_reloads_and_sigterm_exits_cleanly() {
    let mut daemon = Daemon::start(&[], &[]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(800));
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(log.contains("SIGHUP: reloading the configuration"), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn log_settings_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "log: { format: json, level: warn }\n").unwrap();
    let mut daemon = Daemon::start(&["--config", config.to_str().unwrap()], &[]);
    daemon.request_a_closed_port();
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(
        !log.contains("listening"),
        "info lines at level warn:\n{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("connect_refused"))
        .expect("the failure line");
    assert!(
        line.starts_with('{') && line.contains("\"level\":\"WARN\""),
        "{line}"
    );
}
