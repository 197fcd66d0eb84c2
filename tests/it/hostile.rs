//! Hostile and odd clients: raw TCP bytes in, exact answers out, nothing forwarded.
//!
//! Each case asserts the status, the `X-Authproxy-Error` code, a sentence in the body,
//! that the origin saw no request, and that the answer came within a bound.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use authproxy::config::Snapshot;
use authproxy::limits::Limits;

use crate::support::{Origin, Proxy};

/// No hostile input may take longer than this to be answered.
const BOUND: Duration = Duration::from_secs(2);

/// A parsed answer: status, `X-Authproxy-Error`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: String,
    body: String,
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let code = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Authproxy-Error: "))
        .unwrap_or_default()
        .to_owned();
    Answer {
        status,
        code,
        body: body.to_owned(),
    }
}

/// Sends `request`, reads until the proxy closes; the answer and how long it took.
async fn exchange(proxy: SocketAddr, request: &[u8]) -> (Answer, Duration) {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    sock.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND * 2, sock.read_to_end(&mut out)).await;
    (parse_answer(&out), started.elapsed())
}

fn with_limits(limits: Limits) -> Snapshot {
    Snapshot {
        limits,
        ..Snapshot::default()
    }
}

#[tokio::test]
async fn every_invalid_request_is_refused_with_a_sentence_and_never_forwarded() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let o = origin.addr;
    let req = |extra: &str| format!("POST http://{o}/ HTTP/1.1\r\nHost: {o}\r\n{extra}\r\n\r\n");
    let big_header = format!("X-Big: {}", "a".repeat(70 * 1024));
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "TE chunked, chunked",
            req("Transfer-Encoding: chunked, chunked").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "TE twice",
            req("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "TE gzip",
            req("Transfer-Encoding: gzip").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "TE bogus token",
            req("Transfer-Encoding: chunked;x").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "CL and TE",
            req("Content-Length: 5\r\nTransfer-Encoding: chunked").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "differing CLs",
            req("Content-Length: 5\r\nContent-Length: 6").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "CL list",
            req("Content-Length: 5, 6").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "CL not a number",
            req("Content-Length: 0x5").into_bytes(),
            400,
            "bad_framing",
        ),
        (
            "space in URL",
            format!("GET http://{o}/a b HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "tab in URL",
            format!("GET http://{o}/a\tb HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "control byte in URL",
            format!("GET http://{o}/a\x01b HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "NUL in URL",
            format!("GET http://{o}/a\0b HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "non-ASCII URL",
            format!("GET http://{o}/caf\u{e9} HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "method only",
            b"GET\r\n\r\n".to_vec(),
            400,
            "bad_request_line",
        ),
        (
            "HTTP/0.9",
            format!("GET http://{o}/\r\n").into_bytes(),
            400,
            "http09_not_supported",
        ),
        (
            "HTTP/0.9 named",
            format!("GET http://{o}/ HTTP/0.9\r\n\r\n").into_bytes(),
            400,
            "http09_not_supported",
        ),
        (
            "HTTP/2.0 in text",
            format!("GET http://{o}/ HTTP/2.0\r\n\r\n").into_bytes(),
            400,
            "unsupported_version",
        ),
        (
            "obs-fold",
            req("X-A: 1\r\n  continued").into_bytes(),
            400,
            "obs_fold",
        ),
        (
            "obs-fold with tab",
            req("X-A: 1\r\n\tcontinued").into_bytes(),
            400,
            "obs_fold",
        ),
        (
            "NUL in header",
            req("X-A: a\0b").into_bytes(),
            400,
            "bad_header",
        ),
        (
            "control in header",
            req("X-A: a\x07b").into_bytes(),
            400,
            "bad_header",
        ),
        (
            "space in header name",
            req("X A: 1").into_bytes(),
            400,
            "bad_header",
        ),
        (
            "non-ASCII method",
            format!("G\u{c9}T http://{o}/ HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "bad_method",
        ),
        (
            "invalid method token",
            format!("G(T http://{o}/ HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "bad_method",
        ),
        (
            "user in URL",
            format!("GET http://u:pw@{o}/ HTTP/1.1\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "two Hosts",
            req(&format!("Host: {o}")).into_bytes(),
            400,
            "bad_host",
        ),
        (
            "oversized header",
            req(&big_header).into_bytes(),
            431,
            "request_header_too_large",
        ),
        (
            "oversized URL",
            format!("GET http://{o}/{} HTTP/1.1\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            431,
            "request_header_too_large",
        ),
        (
            "too many headers",
            format!("GET http://{o}/ HTTP/1.1\r\n{many}\r\n").into_bytes(),
            431,
            "too_many_headers",
        ),
        ("short garbage", b"HI\r\n".to_vec(), 400, "bad_request_line"),
        (
            "< in URL",
            format!("GET http://{o}/a<b HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            400,
            "bad_request_target",
        ),
        (
            "port out of range",
            b"GET http://127.0.0.1:99999/ HTTP/1.1\r\n\r\n".to_vec(),
            400,
            "bad_request_target",
        ),
        (
            "TRACE",
            format!("TRACE http://{o}/ HTTP/1.1\r\nHost: {o}\r\n\r\n").into_bytes(),
            405,
            "trace_refused",
        ),
        (
            "half-closed mid-head",
            format!("GET http://{o}/ HTTP/1.1\r\nHost").into_bytes(),
            400,
            "incomplete_request",
        ),
    ];
    let mut table = String::new();
    for (name, bytes, status, code) in &cases {
        let (answer, took) = if *code == "incomplete_request" {
            half_closed_exchange(proxy.addr, bytes).await
        } else {
            exchange(proxy.addr, bytes).await
        };
        table.push_str(&format!("{name}: {} {}\n", answer.status, answer.code));
        assert_eq!(
            (answer.status, answer.code.as_str()),
            (*status, *code),
            "{name}: {answer:?}"
        );
        assert!(
            answer.body.ends_with(".\n") && answer.body.len() > 40,
            "{name}: no sentence: {:?}",
            answer.body
        );
        assert!(took < BOUND, "{name}: answered after {took:?}");
    }
    assert_eq!(origin.requests().len(), 0, "{table}");
    assert_eq!(origin.connections(), 0);
    proxy.stop().await;
}

async fn half_closed_exchange(proxy: SocketAddr, request: &[u8]) -> (Answer, Duration) {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let started = Instant::now();
    sock.write_all(request).await.unwrap();
    sock.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND * 2, sock.read_to_end(&mut out)).await;
    (parse_answer(&out), started.elapsed())
}

/// A request whose answer is `ok` from the origin, on a fresh connection.
async fn fetch_ok(proxy: SocketAddr, origin: SocketAddr, path: &str) -> String {
    let req = format!(
        "GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nConnection: close\r\n\r\n"
    );
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, sock.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn identical_content_lengths_collapse_and_are_served() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let o = origin.addr;
    let req = format!(
        "POST http://{o}/echo HTTP/1.1\r\nHost: {o}\r\nContent-Length: 5\r\n\
         Content-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let (answer, _) = exchange(proxy.addr, req.as_bytes()).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "hello");
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers.get_all("content-length").iter().count(), 1);
    assert_eq!(seen[0].headers["content-length"], "5");
    proxy.stop().await;
}

#[tokio::test]
async fn a_host_that_differs_from_the_url_is_normalised_and_served() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let port = origin.addr.port();
    // Case only, and no port where the URL has one: pingora alone answered a bare 400.
    for (url_host, host) in [
        (format!("LocalHost:{port}"), format!("localhost:{port}")),
        (format!("127.0.0.1:{port}"), "127.0.0.1".to_owned()),
    ] {
        let req = format!(
            "GET http://{url_host}/norm HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let (answer, took) = exchange(proxy.addr, req.as_bytes()).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"), "{req}");
        assert!(took < BOUND);
    }
    let seen = origin.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].headers["host"],
        format!("localhost:{port}").as_str()
    );
    assert_eq!(
        seen[1].headers["host"],
        format!("127.0.0.1:{port}").as_str()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_second_request_on_a_kept_connection_is_judged_too() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let o = origin.addr;
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    // Both requests in one write: the second one is pipelined behind the first.
    let two = format!(
        "GET http://{o}/first HTTP/1.1\r\nHost: {o}\r\n\r\n\
         GET http://{o}/a b HTTP/1.1\r\nHost: {o}\r\n\r\n"
    );
    sock.write_all(two.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, sock.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let (first, second) = text.split_once("\r\n\r\nok").expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{text}");
    let second = parse_answer(second.as_bytes());
    assert_eq!(
        (second.status, second.code.as_str()),
        (400, "bad_request_target")
    );
    assert_eq!(origin.requests().len(), 1);
    assert_eq!(origin.requests()[0].target, "/first");
    proxy.stop().await;
}

#[tokio::test]
async fn a_pipelined_connect_gets_its_tunnel() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let o = origin.addr;
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    let both = format!(
        "GET http://{o}/before HTTP/1.1\r\nHost: {o}\r\n\r\n\
         CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n"
    );
    sock.write_all(both.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let deadline = Instant::now() + BOUND;
    while !got.windows(established.len()).any(|w| w == established) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), sock.read(&mut chunk))
            .await
            .expect("tunnel answered in time")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\nokHTTP/1.1 200 Connection established\r\n\r\n"),
        "{text}"
    );
    // The tunnel reaches the origin itself.
    sock.write_all(b"GET /through HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BOUND, sock.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).ends_with("\r\n\r\nok"));
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/before", "/through"]);
    proxy.stop().await;
}

#[tokio::test]
async fn a_half_closed_client_still_gets_its_response() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let o = origin.addr;
    for path in ["/plain", "/bytes/200000"] {
        let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!("GET http://{o}{path} HTTP/1.1\r\nHost: {o}\r\n\r\n");
        sock.write_all(req.as_bytes()).await.unwrap();
        sock.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(BOUND, sock.read_to_end(&mut out))
            .await
            .expect("answered in time")
            .unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"), "{path}");
        let body = &out[split..];
        if path == "/plain" {
            assert_eq!(body, b"ok");
        } else {
            assert_eq!(body, crate::support::pattern_bytes(200_000).as_slice());
        }
    }
    assert_eq!(origin.requests().len(), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_shorter_than_eight_bytes_is_answered_at_once() {
    let proxy = Proxy::start(Snapshot::default()).await;
    for short in [&b"HI\r\n"[..], b"X\n", b"GET\r\n"] {
        let (answer, took) = exchange(proxy.addr, short).await;
        assert_eq!(answer.status, 400, "{short:?}");
        assert_eq!(answer.code, "bad_request_line");
        assert!(took < Duration::from_millis(500), "{short:?} took {took:?}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn trickling_clients_are_cut_while_others_are_served() {
    let origin = Origin::start().await;
    let limits = Limits {
        head_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let proxy = Proxy::start(with_limits(limits)).await;
    let (p, o) = (proxy.addr, origin.addr);
    let started = Instant::now();
    let tricklers: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut sock = TcpStream::connect(p).await.unwrap();
                let line = format!("GET http://{o}/ HTTP/1.1\r\nX-Slow: ");
                let mut out = Vec::new();
                for b in line.bytes().chain(std::iter::repeat(b'a')) {
                    if sock.write_all(&[b]).await.is_err() {
                        break;
                    }
                    // One byte per 100 ms: every read succeeds, the head never ends.
                    let mut chunk = [0u8; 1024];
                    match tokio::time::timeout(Duration::from_millis(100), sock.read(&mut chunk))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
                        Err(_) => {}
                    }
                    if started.elapsed() > Duration::from_secs(4) {
                        break;
                    }
                }
                let _ =
                    tokio::time::timeout(Duration::from_millis(500), sock.read_to_end(&mut out))
                        .await;
                (parse_answer(&out), started.elapsed())
            })
        })
        .collect();
    // Meanwhile an ordinary client is served at once, more than once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let t = Instant::now();
        let answer = fetch_ok(p, o, "/meanwhile").await;
        assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    for t in tricklers {
        let (answer, when) = t.await.unwrap();
        assert_eq!(
            (answer.status, answer.code.as_str()),
            (408, "request_timeout")
        );
        assert!(answer.body.contains("within 1 s"), "{}", answer.body);
        assert!(when < Duration::from_millis(2500), "cut after {when:?}");
    }
    let targets: Vec<String> = origin.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, ["/meanwhile"; 3]);
    proxy.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_a_client_gets_503_at_once() {
    let origin = Origin::start().await;
    let limits = Limits {
        max_connections: 2,
        head_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let proxy = Proxy::start(with_limits(limits)).await;
    let held1 = TcpStream::connect(proxy.addr).await.unwrap();
    let held2 = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let o = origin.addr;
    let req = format!("GET http://{o}/capped HTTP/1.1\r\nHost: {o}\r\n\r\n");
    let (answer, took) = exchange(proxy.addr, req.as_bytes()).await;
    assert_eq!(
        (answer.status, answer.code.as_str()),
        (503, "too_many_connections")
    );
    assert!(answer.body.contains("2 connections"), "{}", answer.body);
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(origin.requests().len(), 0);
    // A closed connection frees its slot.
    drop(held1);
    let deadline = Instant::now() + BOUND;
    loop {
        let answer = fetch_ok(proxy.addr, o, "/after").await;
        if answer.ends_with("\r\n\r\nok") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held2);
    assert_eq!(origin.requests().len(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed() {
    let origin = Origin::start().await;
    let limits = Limits {
        tunnel_idle: Duration::from_millis(500),
        ..Limits::default()
    };
    let proxy = Proxy::start(with_limits(limits)).await;
    let o = origin.addr;
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(format!("CONNECT {o} HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = [0u8; 39];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 Connection established\r\n\r\n");
    // Traffic keeps it open past the idle time...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sock.write_all(format!("GET /keep HTTP/1.1\r\nHost: {o}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("\r\n\r\nok"));
    }
    // ...and silence closes it.
    let quiet = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(BOUND, sock.read_to_end(&mut rest))
        .await
        .expect("tunnel closed in time")
        .unwrap();
    assert!(rest.is_empty());
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert_eq!(origin.requests().len(), 3);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc_file_timeouts_apply_to_their_own_scope() {
    use authproxy::config::load::{load, Environment};
    let (a, b) = (Origin::start().await, Origin::start().await);
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".daprc"),
        format!(
            "[127.0.0.1:{}]HTTP.TIMEOUT=1\n[http://127.0.0.1:{}/slow]HTTP.TIMEOUT=2\n",
            a.addr.port(),
            b.addr.port()
        ),
    )
    .unwrap();
    let snapshot = load(&Environment::isolated(home.path(), None)).unwrap();
    let proxy = Proxy::start(snapshot).await;
    let timed = |o: SocketAddr| async move {
        let req = format!("GET http://{o}/slow HTTP/1.1\r\nHost: {o}\r\nConnection: close\r\n\r\n");
        exchange(proxy.addr, req.as_bytes()).await
    };
    // /slow answers after 30 s; each scope's HTTP.TIMEOUT cuts it, not the 60 s default.
    let ((ans_a, took_a), (ans_b, took_b)) = tokio::join!(timed(a.addr), timed(b.addr));
    for (answer, took, secs) in [(&ans_a, took_a, 1), (&ans_b, took_b, 2)] {
        assert_eq!(
            (answer.status, answer.code.as_str()),
            (504, "upstream_timeout")
        );
        assert!(
            answer.body.contains(&format!("within {secs} s")),
            "{}",
            answer.body
        );
        let want = Duration::from_secs(secs);
        assert!(
            took >= want && took < want + Duration::from_millis(800),
            "{took:?}"
        );
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_releases_its_upstream() {
    // An origin that sends an endless body and notes when the proxy lets go of it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let (released, released_rx) = tokio::sync::oneshot::channel::<Instant>();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 4096];
        let _ = sock.read(&mut head).await.unwrap();
        let _ = sock
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        while sock.write_all(&chunk).await.is_ok() {}
        let _ = released.send(Instant::now());
    });
    let limits = Limits {
        write_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let proxy = Proxy::start(with_limits(limits)).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!("GET http://{origin}/endless HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // The client reads nothing: buffers fill, the proxy's write waits, times out.
    let stalled = Instant::now();
    let at = tokio::time::timeout(Duration::from_secs(4), released_rx)
        .await
        .expect("the upstream is released")
        .unwrap();
    assert!(at - stalled < Duration::from_secs(3), "{:?}", at - stalled);
    // And the client's connection is closed after what was already buffered.
    let mut sink = Vec::new();
    let n = tokio::time::timeout(BOUND, client.read_to_end(&mut sink))
        .await
        .expect("closed");
    assert!(n.is_err() || sink.len() < 100_000_000, "{}", sink.len());
    drop(client);
    proxy.stop().await;
}
