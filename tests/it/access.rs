//! Who may use the daemon: its own user by default (found from the kernel's socket
//! table), the uids of `access.allow_uids`, and the proxy token. Another local user is
//! played by `curl` started with uid 65534 (the tests run as root, as CI does); the
//! origin counts what reaches it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use authproxy::config::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::credentials::{basic, error_code, get, header, snapshot, write, yaml};
use crate::process::{command, Daemon};
use crate::support::{self, Origin, Proxy};

/// The uid another local user runs as (`nobody`).
const OTHER: u32 = 65534;
const TOKEN: &str = "Pr0xyT0ken-4a7f";

fn running_as_root() -> bool {
    rustix::process::getuid().is_root()
}

/// What curl printed and how it exited.
struct Curl {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `curl` through `proxy` (a proxy URL, maybe with credentials), as `uid` if given.
async fn curl(uid: Option<u32>, proxy: &str, extra: &[&str], url: &str) -> Curl {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-q", "-sS", "--max-time", "5", "-x", proxy])
        .args(extra)
        .arg(url)
        .current_dir("/")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for v in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
        cmd.env_remove(v).env_remove(v.to_uppercase());
    }
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .expect("curl finished within 10 s")
        .expect("curl runs");
    Curl {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A snapshot from `config` (YAML text) in a fresh HOME; the token file is `tok`.
fn configured(home: &Path, config: &str) -> Snapshot {
    write(home, "tok", &format!("{TOKEN}\n"));
    let path = yaml(home, config);
    snapshot(home, Some(&path))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_requests_and_connects_get_403_and_reach_nothing() {
    assert!(
        running_as_root() && support::have("curl"),
        "this test plays another user with setuid: run it as root, with curl"
    );
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let via = proxy.url();
    let url = origin.url("/data");

    let plain = curl(Some(OTHER), &via, &["-i"], &url).await;
    assert!(
        plain.stdout.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{}{}",
        plain.stdout,
        plain.stderr
    );
    assert!(plain
        .stdout
        .contains("\r\nX-Authproxy-Error: access_denied\r\n"));
    let body = plain.stdout.split("\r\n\r\n").nth(1).unwrap();
    assert!(
        body.starts_with("authproxy spends its users' credentials"),
        "{body}"
    );
    assert!(
        body.contains("this connection belongs to uid 65534"),
        "{body}"
    );
    assert!(
        body.contains("add 65534 (or the user's name) to `access: allow_uids`"),
        "{body}"
    );

    let tunnel = curl(
        Some(OTHER),
        &via,
        &["-v", "-p", "-o", "/dev/null", "-w", "%{http_connect}"],
        &url,
    )
    .await;
    assert_eq!(tunnel.stdout, "403", "{}", tunnel.stderr);
    assert_ne!(tunnel.code, Some(0));
    assert!(
        tunnel.stderr.contains("< HTTP/1.1 403 Forbidden"),
        "{}",
        tunnel.stderr
    );
    assert!(
        tunnel.stderr.contains("< X-Authproxy-Error: access_denied"),
        "{}",
        tunnel.stderr
    );

    assert_eq!(origin.connections(), 0);
    assert!(origin.requests().is_empty());

    // The daemon's own user, on the same daemon, is served.
    let mine = curl(None, &via, &[], &url).await;
    assert_eq!(
        (mine.code, mine.stdout.as_str()),
        (Some(0), "ok"),
        "{}",
        mine.stderr
    );
    assert_eq!(origin.requests().len(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_in_allow_uids_is_served_by_name_or_number() {
    for allowed in ["nobody", "65534"] {
        let home = tempfile::tempdir().unwrap();
        let origin = Origin::start().await;
        let snap = configured(
            home.path(),
            &format!("access: {{ allow_uids: [self, {allowed}] }}\n"),
        );
        assert_eq!(
            snap.access.allow_uids,
            vec![rustix::process::getuid().as_raw(), OTHER]
        );
        let proxy = Proxy::start(snap).await;
        let url = origin.url("/data");
        let plain = curl(Some(OTHER), &proxy.url(), &[], &url).await;
        assert_eq!(plain.stdout, "ok", "{allowed}: {}", plain.stderr);
        let tunnel = curl(Some(OTHER), &proxy.url(), &["-p"], &url).await;
        assert_eq!(tunnel.stdout, "ok", "{allowed}: {}", tunnel.stderr);
        assert_eq!(origin.requests().len(), 2);
        proxy.stop().await;
    }
}

/// A raw CONNECT to `target` with `headers`; returns the status line and the stream.
async fn connect(proxy: &Proxy, target: &str, headers: &str) -> (String, String, TcpStream) {
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{headers}\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.ends_with(b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no CONNECT answer");
        let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut byte)).await;
        match read.unwrap().unwrap() {
            0 => break,
            _ => got.push(byte[0]),
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, head, sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_token_is_required_and_never_forwarded() {
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let proxy = Proxy::start(configured(
        home.path(),
        "access: { proxy_token_file: tok }\n",
    ))
    .await;
    let url = origin.url("/data");

    let (resp, body) = get(&proxy, &url, &[]).await;
    assert_eq!(resp.status(), 407);
    assert_eq!(error_code(&resp), "proxy_auth_required");
    assert_eq!(
        header(resp.headers(), "proxy-authenticate").as_deref(),
        Some("Basic realm=\"authproxy\"")
    );
    assert!(
        body.contains("this request carried no proxy token"),
        "{body}"
    );

    let wrong = [
        basic("me", "Pr0xyT0ken-4a7"),
        format!("Bearer {TOKEN}x"),
        basic(TOKEN, ""),
        format!("Digest {TOKEN}"),
    ];
    for value in &wrong {
        let (resp, body) = get(&proxy, &url, &[("proxy-authorization", value)]).await;
        assert_eq!(resp.status(), 407, "{value}");
        assert!(body.contains("was not accepted"), "{body}");
        assert!(!body.contains(TOKEN), "{body}");
    }
    assert!(origin.requests().is_empty());

    let good = [
        basic("anyone", TOKEN),
        basic("", TOKEN),
        format!("Bearer {TOKEN}"),
    ];
    for value in &good {
        let (resp, body) = get(&proxy, &url, &[("proxy-authorization", value)]).await;
        assert_eq!(
            (resp.status().as_u16(), body.as_str()),
            (200, "ok"),
            "{value}"
        );
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert!(
            r.headers.get("proxy-authorization").is_none(),
            "{:?}",
            r.headers
        );
    }

    // CONNECT: the same token, checked before anything is connected.
    let target = origin.addr.to_string();
    let before = origin.connections();
    let (status, head, _) = connect(&proxy, &target, "").await;
    assert_eq!(status, "HTTP/1.1 407 Proxy Authentication Required");
    assert!(
        head.contains("\r\nProxy-Authenticate: Basic realm=\"authproxy\"\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nX-Authproxy-Error: proxy_auth_required\r\n"),
        "{head}"
    );
    let (status, _, _) = connect(&proxy, &target, "Proxy-Authorization: Bearer nope\r\n").await;
    assert_eq!(status, "HTTP/1.1 407 Proxy Authentication Required");
    assert_eq!(origin.connections(), before);
    let auth = format!("Proxy-Authorization: {}\r\n", basic("u", TOKEN));
    let (status, _, mut sock) = connect(&proxy, &target, &auth).await;
    assert_eq!(status, "HTTP/1.1 200 Connection established");
    let inner = format!("GET /inside HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    sock.write_all(inner.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
    assert_eq!(origin.connections(), before + 1);
    let inside = crate::credentials::seen_at(&origin, "/inside");
    assert!(inside.headers.get("proxy-authorization").is_none());

    // In mode uid (the default) the token does not replace the uid check.
    assert!(
        running_as_root(),
        "this test plays another user with setuid: run it as root"
    );
    let with_token = format!("http://me:{TOKEN}@{}", proxy.addr);
    let other = curl(Some(OTHER), &with_token, &["-i"], &url).await;
    assert!(
        other.stdout.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{}",
        other.stdout
    );
    assert_eq!(origin.requests().len(), 4);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_token_mode_another_user_with_the_token_is_served() {
    assert!(
        running_as_root(),
        "this test plays another user with setuid: run it as root"
    );
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let proxy = Proxy::start(configured(
        home.path(),
        "access:\n  proxy_token_file: tok\n  mode: token\n",
    ))
    .await;
    let url = origin.url("/data");
    let with_token = format!("http://anyone:{TOKEN}@{}", proxy.addr);
    let plain = curl(Some(OTHER), &with_token, &[], &url).await;
    assert_eq!(plain.stdout, "ok", "{}", plain.stderr);
    let tunnel = curl(Some(OTHER), &with_token, &["-p"], &url).await;
    assert_eq!(tunnel.stdout, "ok", "{}", tunnel.stderr);
    assert_eq!(origin.requests().len(), 2);
    let none = curl(Some(OTHER), &proxy.url(), &["-i"], &url).await;
    assert!(
        none.stdout
            .starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{}",
        none.stdout
    );
    assert!(!none.stdout.contains(TOKEN));
    assert_eq!(origin.requests().len(), 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_answered_with_405_and_never_forwarded() {
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    // A rule that would add a credential to this host.
    let config = format!(
        "sites:\n  - match: \"{}\"\n    basic: {{ username: u, password_file: pw }}\n",
        origin.addr
    );
    write(home.path(), "pw", "TraceS3cret-11\n");
    let proxy = Proxy::start(configured(home.path(), &config)).await;
    let req = format!(
        "TRACE {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/echo"),
        origin.addr
    );
    let answer = support::raw_exchange(proxy.addr, req.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{answer}"
    );
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-authproxy-error: trace_refused\r\n"),
        "{answer}"
    );
    assert!(lower.contains("\r\nallow: get, head, post, put, delete, options, patch, connect\r\n"));
    assert!(
        answer.contains("authproxy does not forward TRACE requests"),
        "{answer}"
    );
    assert!(!answer.contains("TraceS3cret-11"));
    assert_eq!(origin.connections(), 0);
    proxy.stop().await;
}

/// Runs `authproxy ARGS` in `home` to its exit (bounded); returns (exit code, output).
fn run_to_exit(home: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = tempfile::tempdir().unwrap();
    let file = |n: &str| std::fs::File::create(out.path().join(n)).unwrap();
    let mut child = command(home)
        .args(args)
        .stdout(Stdio::from(file("stdout")))
        .stderr(Stdio::from(file("stderr")))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("authproxy {args:?} did not exit within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut text = std::fs::read_to_string(out.path().join("stderr")).unwrap();
    text.push_str(&std::fs::read_to_string(out.path().join("stdout")).unwrap());
    (status.code(), text)
}

#[test]
fn a_non_loopback_listener_without_a_token_is_refused_at_start() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (code, log) = run_to_exit(h, &["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("--listen 0.0.0.0:0 is not a loopback address"),
        "{log}"
    );
    assert!(log.contains("access.proxy_token_file"), "{log}");

    let config = yaml(h, "listen: [\"127.0.0.1:0\", \"[::]:0\"]\n");
    let (code, log) = run_to_exit(h, &["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{log}");
    let named = format!(
        "`listen` in {} [::]:0 is not a loopback address",
        config.display()
    );
    assert!(log.contains(&named), "{log}");

    let config = yaml(h, "access: { mode: open }\n");
    let args = [
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ];
    let (code, log) = run_to_exit(h, &args);
    assert_eq!(code, Some(78), "{log}");
    assert!(
        log.contains("access.mode: open (no uid check) is refused there"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_it_listens_wide_warns_and_never_logs_the_token() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let origin = Origin::start().await;
    write(h, "tok", &format!("{TOKEN}\n"));
    let config = yaml(h, "access: { proxy_token_file: tok }\n");
    let cfg = config.to_str().unwrap();

    let (code, check) = run_to_exit(h, &["check", "--config", cfg]);
    assert_eq!(code, Some(0), "{check}");
    let line = format!(
        "access: mode uid, allow_uids: self, proxy token: required, from {} (redacted)\n",
        h.join("tok").display()
    );
    assert!(check.contains(&line), "{check}");
    assert!(!check.contains(TOKEN), "{check}");

    let mut daemon = Daemon::start_in(
        h,
        &["--config", cfg, "--listen", "0.0.0.0:0"],
        &[("RUST_LOG", "trace")],
    );
    let url = origin.url("/data");
    let host = origin.addr;
    let mut bodies = String::new();
    for auth in [
        String::new(),
        format!("Proxy-Authorization: Bearer {TOKEN}-wrong\r\n"),
        format!("Proxy-Authorization: {}\r\n", basic("u", TOKEN)),
        format!("Proxy-Authorization: Bearer {TOKEN}\r\n"),
    ] {
        let req = format!("GET {url} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n");
        let addr = daemon.addr.parse().unwrap();
        bodies.push_str(&support::raw_exchange(addr, req.as_bytes()).await);
    }
    let statuses: Vec<&str> = bodies.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["407", "407", "200", "200"], "{bodies}");
    assert_eq!(origin.requests().len(), 2);
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(
        log.contains("0.0.0.0:0 (--listen), not a loopback address"),
        "{log}"
    );
    assert!(
        log.contains("access.mode is uid: clients on other machines"),
        "{log}"
    );
    assert!(
        log.contains("connection admitted"),
        "RUST_LOG=trace took effect: {log}"
    );
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
    let encoded = basic("u", TOKEN);
    assert!(!log.contains(encoded.trim_start_matches("Basic ")), "{log}");
    assert!(!bodies.contains(TOKEN), "{bodies}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_answers_only_the_users_the_proxy_serves() {
    assert!(
        running_as_root(),
        "this test plays another user with setuid: run it as root"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = std::sync::Arc::<authproxy::session::State>::default();
    let task = tokio::spawn(authproxy::admin::serve(
        listener,
        state,
        Snapshot::default().into_handle(),
    ));
    let url = format!("http://{addr}/healthz");
    let as_user = |uid: Option<u32>| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-q", "-sS", "--max-time", "5", "--noproxy", "*", "-i"])
            .arg(&url)
            .current_dir("/")
            .kill_on_drop(true);
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd
    };
    let other = as_user(Some(OTHER)).output().await.unwrap();
    let other = String::from_utf8_lossy(&other.stdout).into_owned();
    assert!(other.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{other}");
    let mine = as_user(None).output().await.unwrap();
    let mine = String::from_utf8_lossy(&mine.stdout).into_owned();
    assert!(mine.starts_with("HTTP/1.1 200"), "{mine}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intercepted_connect_needs_the_token_once_and_its_requests_none() {
    use crate::intercept::{connect_tls_with, get_inside, trusted_origin_config};
    let home = tempfile::tempdir().unwrap();
    write(home.path(), "tok", &format!("{TOKEN}\n"));
    let (origin, config) =
        trusted_origin_config(home.path(), "access: { proxy_token_file: tok }\n").await;
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let proxy = Proxy::start(snap).await;
    let authority = origin.to_string();
    let refused = connect_tls_with(proxy.addr, &authority, &ca.cert_pem, "").await;
    let Err(refused) = refused else {
        panic!("a CONNECT without the token was let through");
    };
    assert!(
        refused.starts_with("HTTP/1.1 407 Proxy Authentication Required\r\n"),
        "{refused}"
    );
    let auth = format!("Proxy-Authorization: Bearer {TOKEN}\r\n");
    let tls = connect_tls_with(proxy.addr, &authority, &ca.cert_pem, &auth)
        .await
        .unwrap();
    // The requests inside carry no Proxy-Authorization (clients send it on the CONNECT).
    let (resp, body) = get_inside(tls, "/bytes/5", &authority).await;
    assert_eq!((resp.status().as_u16(), body.len()), (200, 5));
    proxy.stop().await;
}
