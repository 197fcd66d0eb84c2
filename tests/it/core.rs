//! The core daemon: proxying, streaming, keep-alive, CONNECT, explained failures.

use std::time::{Duration, Instant};

use http::Request;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use authproxy::config::Snapshot;
use authproxy::failure::Timeouts;

use crate::support::{self, full, Client, Origin, PatternBody, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_round_trip_byte_exact() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    // A fresh connection per request: the echo origin may answer before the request
    // body is complete, and then the connection is (rightly) not kept alive.
    // Keep-alive has its own test.

    // Content-Length request bodies, POST and PUT, of awkward sizes.
    for (method, len) in [
        ("POST", 0usize),
        ("POST", 1),
        ("PUT", 1_000_003),
        ("POST", 65_536),
    ] {
        let mut client = Client::connect(proxy.addr).await;
        let data = support::pattern_bytes(len);
        let req = Request::builder()
            .method(method)
            .uri(origin.url("/echo"))
            .header("content-length", len)
            .body(full(data.clone()))
            .unwrap();
        let (resp, body) = support::body_of(client.send(req).await).await;
        assert_eq!(resp.status(), 200, "{method} {len}");
        assert_eq!(body.len(), len);
        assert!(body == data, "{method} {len}: body differs");
    }

    // A chunked request body (no length known in advance).
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::put(origin.url("/echo"))
        .body(PatternBody::new(3_000_001).boxed())
        .unwrap();
    let (resp, body) = support::body_of(client.send(req).await).await;
    assert_eq!(resp.status(), 200);
    assert!(
        body == support::pattern_bytes(3_000_001),
        "chunked body differs"
    );
    let seen = origin.requests();
    let put = seen.last().unwrap();
    assert_eq!(put.method, "PUT");
    assert_eq!(put.headers.get("transfer-encoding").unwrap(), "chunked");

    // Chunked and Content-Length responses.
    let mut client = Client::connect(proxy.addr).await;
    let (resp, body) = client.get(&origin.url("/chunked/200001")).await;
    assert_eq!(resp.status(), 200);
    assert!(body == support::pattern_bytes(200_001));
    let (resp, body) = client.get(&origin.url("/bytes/5000000")).await;
    assert_eq!(resp.headers().get("content-length").unwrap(), "5000000");
    assert!(body == support::pattern_bytes(5_000_000));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_on_both_sides() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut client = Client::connect(proxy.addr).await;
    for i in 0..5 {
        let (resp, body) = client.get(&origin.url(&format!("/n{i}"))).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"ok");
    }
    // Five requests on one client connection reached the origin over one connection.
    assert_eq!(origin.requests().len(), 5);
    assert_eq!(
        origin.connections(),
        1,
        "upstream connection was not reused"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_sees_origin_form_host_from_url_and_no_hop_by_hop_headers() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let url = origin.url("/path/x?y=1");
    let request = format!(
        "GET {url} HTTP/1.1\r\nHost: {}\r\nConnection: close, X-Private\r\nX-Private: 1\r\n\
         Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
         Keep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
         X-End-To-End: kept\r\n\r\n",
        origin.addr
    );
    let reply = support::raw_exchange(proxy.addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let seen = origin.requests();
    let req = &seen[0];
    assert_eq!(req.target, "/path/x?y=1");
    assert_eq!(req.headers.get("host").unwrap(), &origin.addr.to_string());
    for h in [
        "x-private",
        "proxy-connection",
        "proxy-authorization",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(!req.headers.contains_key(h), "{h} reached the origin");
    }
    assert_eq!(req.headers.get("x-end-to-end").unwrap(), "kept");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_form_request_gets_400_with_advice() {
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut client = Client::connect(proxy.addr).await;
    let (resp, body) = client.get("/index.html").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.headers().get("x-authproxy-error").unwrap(),
        "not_a_proxy_request"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("http_proxy="), "{body}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_gets_502_naming_the_host() {
    let proxy = Proxy::start(Snapshot::default()).await;
    let port = support::closed_port();
    let mut client = Client::connect(proxy.addr).await;
    let (resp, body) = client
        .get(&format!("http://127.0.0.1:{port}/data.nc"))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers().get("x-authproxy-error").unwrap(),
        "connect_refused"
    );
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/plain; charset=utf-8"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(&format!("127.0.0.1:{port}")), "{body}");
    assert!(body.contains("refused"), "{body}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolved_address_is_tried() {
    // `localhost` may resolve to ::1 first; the origin listens on 127.0.0.1 only.
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut client = Client::connect(proxy.addr).await;
    let (resp, body) = client
        .get(&format!("http://localhost:{}/x", origin.addr.port()))
        .await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_gets_504_in_bounded_time() {
    let origin = Origin::start().await;
    let snapshot = Snapshot {
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_millis(500),
        },
        ..Snapshot::default()
    };
    let proxy = Proxy::start(snapshot).await;
    let mut client = Client::connect(proxy.addr).await;
    let started = Instant::now();
    let (resp, body) = client.get(&origin.url("/slow")).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(resp.status(), 504);
    assert_eq!(
        resp.headers().get("x-authproxy-error").unwrap(),
        "upstream_timeout"
    );
    assert!(String::from_utf8_lossy(&body).contains(&origin.addr.to_string()));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_upstream_gets_502() {
    let bad = support::raw_origin(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut client = Client::connect(proxy.addr).await;
    let (resp, _) = client.get(&format!("http://{bad}/")).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().contains_key("x-authproxy-error"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_to_a_tls_origin() {
    let pki = support::TestPki::new();
    let (origin, seen) = support::tls_origin(&pki).await;
    let proxy = Proxy::start(Snapshot::default()).await;

    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    let port = origin.port();
    sock.write_all(
        format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            sock.read(&mut b).await.unwrap(),
            1,
            "proxy closed during CONNECT"
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );

    let connector = tokio_rustls::TlsConnector::from(pki.client_config());
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, sock).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get("/bytes/100000")
                .header("host", "localhost")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    let (resp, body) = support::body_of(resp).await;
    assert_eq!(resp.status(), 200);
    assert!(body == support::pattern_bytes(100_000));
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_gets_502() {
    let proxy = Proxy::start(Snapshot::default()).await;
    let port = support::closed_port();
    let reply = support::raw_exchange(
        proxy.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 502"), "{reply}");
    assert!(
        reply.contains("X-Authproxy-Error: connect_refused"),
        "{reply}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_after_a_plain_request_on_one_connection() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/a"),
        origin.addr
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    // The head and the body may come in separate reads on a busy machine.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"ok") && tokio::time::Instant::now() < deadline {
        let mut buf = vec![0u8; 4096];
        let n = sock.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
        "{text}"
    );
    // Same connection: a tunnel to the plain origin, then HTTP through it.
    sock.write_all(format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", origin.addr).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    sock.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&rest).ends_with("ok"));
    assert_eq!(origin.requests()[1].target, "/b");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_gets_502_naming_it() {
    // An empty label: the resolver refuses the name without sending a query.
    let proxy = Proxy::start(Snapshot::default()).await;
    let mut client = Client::connect(proxy.addr).await;
    let started = Instant::now();
    let (resp, body) = client.get("http://no..such.invalid/file.nc").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(resp.status(), 502);
    assert_eq!(
        resp.headers().get("x-authproxy-error").unwrap(),
        "dns_failed"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("no..such.invalid"), "{body}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_without_host_header() {
    // Old tools speak HTTP/1.0 and may send no Host: the URL names the host.
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let reply = support::raw_exchange(
        proxy.addr,
        format!("GET {} HTTP/1.0\r\n\r\n", origin.url("/old")).as_bytes(),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
    assert!(reply.ends_with("ok"), "{reply}");
    let seen = origin.requests();
    assert_eq!(seen[0].target, "/old");
    assert_eq!(
        seen[0].headers.get("host").unwrap(),
        &origin.addr.to_string()
    );
    proxy.stop().await;
}
