//! The admin listener (issue 16): `/metrics` counts exactly what the tests did, with
//! labels that carry no path, query or user; `/healthz` says serving, then draining;
//! `authproxy status` says it in words; the listener is off unless configured.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use authproxy::reload::Reloader;
use authproxy::session::State;
use authproxy::{Daemon, Tuning};

use crate::credentials::{env, error_code, snapshot, yaml};
use crate::edl::{Options, World, PASSWORD, USER};
use crate::support::{self, full, Client, Origin};

/// The daemon and its admin listener, in-process, sharing one [`State`].
struct Harness {
    proxy: SocketAddr,
    admin: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    admin_task: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn start(snapshot: authproxy::config::Snapshot) -> Harness {
        Harness::start_on(
            snapshot.into_handle(),
            Arc::default(),
            Duration::from_secs(2),
        )
        .await
    }

    async fn start_on(
        handle: authproxy::config::SnapshotHandle,
        state: Arc<State>,
        drain: Duration,
    ) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let admin_task = tokio::spawn(authproxy::admin::serve(admin_listener, state.clone()));
        let daemon = Daemon::with_state(handle, state.clone(), &Tuning::default());
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(daemon.run(vec![listener], rx, drain));
        Harness {
            proxy,
            admin,
            state,
            stop,
            task,
            admin_task,
        }
    }

    async fn metrics(&self) -> String {
        let (status, body) = admin_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        self.admin_task.abort();
    }
}

/// `GET path` on the admin listener: the status code and the body.
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let answer = support::raw_exchange(addr, req.as_bytes()).await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

/// The value of the sample `name{labels}` (the text before the value), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The lines of one metric (its samples, no comments), sorted: the registry writes a
/// metric's label sets in no fixed order.
fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let mut lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .collect();
    lines.sort_unstable();
    lines
}

/// Polls `/metrics` until `series` has `value` (bounded); returns the last text. A
/// request is counted when it ends, just after its last byte went to the client.
async fn wait_for(h: &Harness, series: &str, value: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let text = h.metrics().await;
        if sample(&text, series) == Some(value) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send(client: &mut Client, method: &str, url: &str) -> (http::Response<()>, bytes::Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(full(""))
        .unwrap();
    support::body_of(client.send(req).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_the_requests_made() {
    let origin = Origin::start().await;
    let not_found =
        support::raw_origin(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").await;
    let home = tempfile::tempdir().unwrap();
    let h = Harness::start(snapshot(home.path(), None)).await;
    let before = h.metrics().await;
    assert!(
        series(&before, "authproxy_requests_total").is_empty(),
        "{before}"
    );
    assert_eq!(sample(&before, "authproxy_client_connections"), Some(0.0));

    let mut client = Client::connect(h.proxy).await;
    for path in ["/a", "/b", "/c"] {
        let (resp, body) = send(&mut client, "GET", &origin.url(path)).await;
        assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
    }
    let mut client = Client::connect(h.proxy).await;
    let (resp, _) = send(&mut client, "POST", &format!("http://{not_found}/x")).await;
    assert_eq!(resp.status(), 404);
    let mut client = Client::connect(h.proxy).await;
    let closed = format!("http://127.0.0.1:{}/", support::closed_port());
    let (resp, _) = send(&mut client, "GET", &closed).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(error_code(&resp), "connect_refused");

    let text = wait_for(
        &h,
        "authproxy_failures_total{code=\"connect_refused\"}",
        1.0,
    )
    .await;
    assert_eq!(
        series(&text, "authproxy_requests_total"),
        [
            "authproxy_requests_total{method=\"GET\",status=\"2xx\"} 3",
            "authproxy_requests_total{method=\"GET\",status=\"5xx\"} 1",
            "authproxy_requests_total{method=\"POST\",status=\"4xx\"} 1",
        ],
        "{text}"
    );
    assert_eq!(
        series(&text, "authproxy_failures_total"),
        ["authproxy_failures_total{code=\"connect_refused\"} 1"],
        "{text}"
    );
    // One first byte per upstream answer; one connect per connection the origins saw.
    assert_eq!(
        sample(&text, "authproxy_upstream_first_byte_seconds_count"),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, "authproxy_upstream_connect_seconds_count"),
        Some(origin.connections() as f64 + 1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "authproxy_draining"), Some(0.0));
    assert!(text.starts_with("# HELP authproxy_"), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_carry_no_path_query_or_user() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = Harness::start(snapshot(home.path(), None)).await;
    let mut client = Client::connect(h.proxy).await;
    let port = origin.addr.port();
    let url =
        format!("http://127.0.0.1:{port}/Path-Marker-7q/file.nc?Query-Marker-9z=Val-Marker-3x");
    let (resp, _) = send(&mut client, "GET", &url).await;
    assert_eq!(resp.status(), 200);
    // A method outside the fixed set is `other`.
    let (resp, _) = send(&mut client, "PROPFIND", &url).await;
    assert_eq!(resp.status(), 200);
    // A user in the URL: pingora refuses the request line itself (400, before any
    // phase of ours), so it is neither logged nor counted; its name reaches no label.
    let with_user = format!("http://User-Marker-5k:pw@127.0.0.1:{port}/Path-Marker-7q");
    let (resp, _) = send(&mut client, "GET", &with_user).await;
    assert_eq!(resp.status(), 400);
    let text = wait_for(
        &h,
        "authproxy_requests_total{method=\"other\",status=\"2xx\"}",
        1.0,
    )
    .await;
    for marker in ["Marker", "PROPFIND", "file.nc", "127.0.0.1"] {
        assert!(!text.contains(marker), "{marker} in /metrics:\n{text}");
    }
    assert_eq!(
        series(&text, "authproxy_requests_total"),
        [
            "authproxy_requests_total{method=\"GET\",status=\"2xx\"} 1",
            "authproxy_requests_total{method=\"other\",status=\"2xx\"} 1",
        ],
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_counted_by_site_and_outcome_and_its_secrets_stay_out() {
    let world = World::start(Options::default()).await;
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    let h = Harness::start(snapshot(home.path(), Some(&config))).await;
    for path in ["/granule.nc", "/other.nc"] {
        let mut client = Client::connect(h.proxy).await;
        let (resp, body) = client.get(&world.data_url(path)).await;
        assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(world.logins(), 1);
    let text = wait_for(
        &h,
        "authproxy_requests_total{method=\"GET\",status=\"2xx\"}",
        2.0,
    )
    .await;
    // The login host is the first site of the world's config (`sites[0]`); the second
    // request used the session and did not log in.
    assert_eq!(
        series(&text, "authproxy_logins_total"),
        ["authproxy_logins_total{site=\"sites[0]\",outcome=\"ok\"} 1"],
        "{text}"
    );
    assert_eq!(
        series(&text, "authproxy_requests_total"),
        ["authproxy_requests_total{method=\"GET\",status=\"2xx\"} 2"],
        "{text}"
    );
    let cookies = h.state.jar.len();
    assert!(cookies >= 1, "the login's cookies are in the jar");
    assert_eq!(sample(&text, "authproxy_jar_cookies"), Some(cookies as f64));
    for secret in [PASSWORD, USER, "localhost", "oauth", "granule"] {
        assert!(!text.contains(secret), "{secret} in /metrics:\n{text}");
    }
    h.stop().await;

    // A refused password: counted as `refused`, with the failure's code.
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    world.netrc_with_password(home.path(), "Wr0ng-Passw0rd");
    let h = Harness::start(snapshot(home.path(), Some(&config))).await;
    let mut client = Client::connect(h.proxy).await;
    let (resp, _) = client.get(&world.data_url("/granule.nc")).await;
    assert_eq!(error_code(&resp), "login_refused");
    let text = wait_for(
        &h,
        "authproxy_logins_total{site=\"sites[0]\",outcome=\"refused\"}",
        1.0,
    )
    .await;
    assert_eq!(
        series(&text, "authproxy_logins_total"),
        ["authproxy_logins_total{site=\"sites[0]\",outcome=\"refused\"} 1"],
        "{text}"
    );
    assert_eq!(
        series(&text, "authproxy_failures_total"),
        ["authproxy_failures_total{code=\"login_refused\"} 1"],
        "{text}"
    );
    assert!(!text.contains("Wr0ng"), "{text}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_jar_cookies_are_counted() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let config = yaml(home.path(), "redirects: { max_hops: 5 }\n");
    let env = env(home.path(), Some(&config));
    let handle = authproxy::config::load::load(&env).unwrap().into_handle();
    let state = Arc::new(State::default());
    let _reloader = Reloader::start_with_state(env, handle.clone(), Some(state.clone()));
    let h = Harness::start_on(handle.clone(), state, Duration::from_secs(2)).await;

    let mut client = Client::connect(h.proxy).await;
    let (resp, _) = client.get(&origin.url("/set-cookie")).await;
    assert_eq!(resp.status(), 200);
    let text = wait_for(
        &h,
        "authproxy_requests_total{method=\"GET\",status=\"2xx\"}",
        1.0,
    )
    .await;
    assert_eq!(sample(&text, "authproxy_jar_cookies"), Some(1.0), "{text}");
    assert!(
        series(&text, "authproxy_reloads_total").is_empty(),
        "{text}"
    );

    std::fs::write(&config, "redirects: { max_hops: 7 }\n").unwrap();
    let text = wait_for(&h, "authproxy_reloads_total{outcome=\"ok\"}", 1.0).await;
    assert_eq!(
        series(&text, "authproxy_reloads_total"),
        ["authproxy_reloads_total{outcome=\"ok\"} 1"],
        "{text}"
    );
    assert_eq!(handle.load().max_hops, 7);
    std::fs::write(&config, "redirects: { max_hops: nonsense }\n").unwrap();
    let text = wait_for(&h, "authproxy_reloads_total{outcome=\"failed\"}", 1.0).await;
    assert_eq!(
        series(&text, "authproxy_reloads_total"),
        [
            "authproxy_reloads_total{outcome=\"failed\"} 1",
            "authproxy_reloads_total{outcome=\"ok\"} 1",
        ],
        "{text}"
    );
    // The jar and the counts outlived both reloads.
    assert_eq!(sample(&text, "authproxy_jar_cookies"), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "authproxy_requests_total{method=\"GET\",status=\"2xx\"}"
        ),
        Some(1.0)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_is_counted_while_it_lasts() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = Harness::start(snapshot(home.path(), None)).await;
    let mut sock = TcpStream::connect(h.proxy).await.unwrap();
    let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", origin.addr);
    sock.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 39];
    tokio::time::timeout(Duration::from_secs(5), sock.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head[..], b"HTTP/1.1 200 Connection established\r\n\r\n");
    let text = h.metrics().await;
    assert_eq!(sample(&text, "authproxy_tunnels"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "authproxy_client_connections"), Some(1.0));
    assert_eq!(
        series(&text, "authproxy_requests_total"),
        ["authproxy_requests_total{method=\"CONNECT\",status=\"2xx\"} 1"],
        "{text}"
    );
    // The tunnel carries a request to the origin, then closes.
    sock.write_all(b"GET /t HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.ends_with(b"ok"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(sock);
    let text = wait_for(&h, "authproxy_tunnels", 0.0).await;
    assert_eq!(sample(&text, "authproxy_tunnels"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "authproxy_client_connections"), Some(0.0));
    // A refused CONNECT is a failure with its code.
    let closed = format!("127.0.0.1:{}", support::closed_port());
    let answer = support::raw_exchange(
        h.proxy,
        format!("CONNECT {closed} HTTP/1.1\r\nHost: {closed}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    let text = wait_for(
        &h,
        "authproxy_failures_total{code=\"connect_refused\"}",
        1.0,
    )
    .await;
    assert_eq!(
        series(&text, "authproxy_failures_total"),
        ["authproxy_failures_total{code=\"connect_refused\"} 1"],
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_serving_then_draining_while_a_slow_request_is_in_flight() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let handle = snapshot(home.path(), None).into_handle();
    let h = Harness::start_on(handle, Arc::default(), Duration::from_secs(2)).await;
    assert_eq!(
        admin_get(h.admin, "/healthz").await,
        (200, "serving\n".into())
    );

    let proxy = h.proxy;
    let slow = origin.url("/slow");
    let in_flight = tokio::spawn(async move {
        let mut client = Client::connect(proxy).await;
        let req = Request::get(slow).body(full("")).unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.send(req)).await;
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while origin.requests().is_empty() {
        assert!(Instant::now() < deadline, "the slow request did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = h.stop.send(true);
    let deadline = Instant::now() + Duration::from_secs(1);
    let answer = loop {
        let answer = admin_get(h.admin, "/healthz").await;
        if answer.0 == 503 || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(answer, (503, "draining\n".into()));
    assert!(!h.task.is_finished(), "the slow request is still draining");
    let text = h.metrics().await;
    assert_eq!(sample(&text, "authproxy_draining"), Some(1.0));
    assert_eq!(sample(&text, "authproxy_client_connections"), Some(1.0));
    // Other paths and methods are refused plainly.
    assert_eq!(admin_get(h.admin, "/nope").await.0, 404);
    let answer = support::raw_exchange(h.admin, b"POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"), "{answer}");
    in_flight.abort();
    h.stop().await;
}

// ---------------------------------------------------------------------------------------
// The binary: `authproxy status`, and the admin listener off by default.

/// The TCP sockets process `pid` listens on (from /proc: its socket inodes in LISTEN).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let port = f[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports.sort_unstable();
    ports
}

fn status(home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = crate::process::command(home)
        .arg("status")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_is_off_by_default_and_status_says_so() {
    let home = tempfile::tempdir().unwrap();
    let mut daemon = crate::process::Daemon::start_in(home.path(), &[], &[]);
    // One answered request: the daemon is past its start (its signal handlers are in).
    let answer = support::raw_exchange(
        daemon.addr.parse().unwrap(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let proxy_port: u16 = daemon.addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(listening_ports(daemon.child.id()), [proxy_port]);
    let (ok, stdout, stderr) = status(home.path(), &[]);
    assert!(!ok);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "authproxy status: the admin listener is off: the configuration has no `admin: { \
         listen: \"127.0.0.1:9129\" }`; add it and restart the daemon, or pass --admin ADDR\n"
    );
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
}

#[test]
fn status_reports_a_running_daemon_in_words() {
    let home = tempfile::tempdir().unwrap();
    let admin = format!("127.0.0.1:{}", support::closed_port());
    let config = yaml(
        home.path(),
        &format!("admin: {{ listen: \"{admin}\" }}\nsites:\n  - match: data.example\n    basic: {{ username: u, password: Adm1n-S3cret }}\n"),
    );
    let config = config.to_str().unwrap();
    let check = crate::process::command(home.path())
        .args(["check", "--config", config])
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.contains(&format!("\nadmin: {admin} (/healthz, /metrics)\n")),
        "{check}"
    );
    let mut daemon = crate::process::Daemon::start_in(home.path(), &["--config", config], &[]);
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let proxy_port: u16 = daemon.addr.rsplit(':').next().unwrap().parse().unwrap();
    let mut ports = vec![proxy_port, admin_port];
    ports.sort_unstable();
    assert_eq!(listening_ports(daemon.child.id()), ports);
    // One request that fails: connection refused.
    let closed = support::closed_port();
    let answer = {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(&daemon.addr).unwrap();
        write!(
            sock,
            "GET http://127.0.0.1:{closed}/ HTTP/1.1\r\nHost: 127.0.0.1:{closed}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = sock.read_to_string(&mut out);
        out
    };
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // The request is counted as it ends, just after its answer went out.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (ok, stdout, stderr) = loop {
        let got = status(home.path(), &["--config", config]);
        if got.1.contains("\nrequests: 1 ") || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("authproxy at {admin}: serving"),
        "{stdout}"
    );
    assert!(lines[1].starts_with("uptime: "), "{stdout}");
    assert_eq!(
        &lines[2..9],
        [
            "requests: 1 (GET 5xx 1)",
            "failures: 1 (connect_refused 1)",
            "logins: 0",
            "reloads: 0",
            "cookies in the jar: 0",
            "open client connections: 0",
            "open tunnels: 0",
        ],
        "{stdout}"
    );
    assert_eq!(lines[9], "upstream connects: none yet", "{stdout}");
    assert_eq!(lines[10], "first bytes: none yet", "{stdout}");
    // --admin overrides the configuration; an address nobody answers on is a sentence.
    let (ok, stdout2, _) = status(home.path(), &["--admin", &admin]);
    assert!(ok);
    assert_eq!(stdout2.lines().next(), Some(lines[0]));
    let nobody = format!("127.0.0.1:{}", support::closed_port());
    let (ok, stdout3, stderr) = status(home.path(), &["--admin", &nobody]);
    assert!(!ok);
    assert_eq!(stdout3, "");
    assert!(
        stderr.starts_with(&format!(
            "authproxy status: cannot reach the admin listener at {nobody}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("is `authproxy serve` running"), "{stderr}");
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    for text in [&stdout, &stderr, &log] {
        assert!(!text.contains("Adm1n-S3cret"), "{text}");
    }
    assert!(log.contains("admin listening"), "{log}");
}
