//! The side client (`authproxy::client`): the daemon's own requests (login POSTs, key
//! fetches) reach loopback servers with the rule's TLS identity, credentials, upstream
//! proxy, jar and timeouts, and fail with the codes a proxied request gets.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};

use authproxy::client::{self, SideRequest};
use authproxy::session::State;

use crate::credentials::{basic, header, snapshot, write, yaml};
use crate::support::{closed_port, Ca, ClientAuth, Origin, TlsOrigin, UpstreamTestProxy};

fn url(s: &str) -> url::Url {
    url::Url::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_post_body_basic_and_the_jar() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let password = "Side-Cl1ent-Pa55";
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"127.0.0.1:{port}\"\n    \
             basic: {{ username: alice, password: \"{password}\" }}\n"
        ),
    );
    let snap = snapshot(h, Some(&config));
    let state = State::default();

    // A POST with a body: the exact bytes come back, with the rule's Basic.
    let mut req = SideRequest::post(url(&origin.url("/echo")), Bytes::from_static(b"a=1&b=two"));
    req.basic = true;
    let resp = client::send(&snap, &state, req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(&resp.body[..], b"a=1&b=two");
    let seen = origin.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/echo");
    assert_eq!(
        header(&seen[0].headers, "host"),
        Some(format!("127.0.0.1:{port}"))
    );
    assert_eq!(
        header(&seen[0].headers, "content-length").as_deref(),
        Some("9")
    );
    assert_eq!(
        header(&seen[0].headers, "authorization"),
        Some(basic("alice", password))
    );

    // Without `basic`, no credential; the answer's cookie goes to the jar...
    let resp = client::send(
        &snap,
        &state,
        SideRequest::get(url(&origin.url("/set-cookie"))),
    )
    .await
    .unwrap();
    assert_eq!((resp.status.as_u16(), &resp.body[..]), (200, &b"ok"[..]));
    assert_eq!(header(&origin.requests()[1].headers, "authorization"), None);
    assert_eq!(state.jar.len(), 1);

    // ...and goes back with the next request, merged with a given Cookie.
    let mut req = SideRequest::get(url(&origin.url("/after")));
    req.headers
        .insert(http::header::COOKIE, "mine=1".parse().unwrap());
    client::send(&snap, &state, req).await.unwrap();
    let seen = origin.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(
        header(&seen[2].headers, "cookie").as_deref(),
        Some("mine=1; daemon_session=J4r-V4lue")
    );
    // An empty GET carries no Content-Length.
    assert_eq!(header(&seen[2].headers, "content-length"), None);
    assert!(!format!("{:?}", seen[2].headers).contains(password));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_required_client_certificate() {
    let ca = Ca::new("side client CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Required).await;
    let alice = ca.client("alice");
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "alice.crt", &alice.cert_pem);
    write(h, "alice.key", &alice.key_pem);
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"https://localhost:{t}/with\"\n\
             \x20   tls: {{ client_cert: alice.crt, client_key: alice.key, ca: ca.pem }}\n\
             \x20 - match: \"http://localhost:{t}/upgraded\"\n\
             \x20   tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.key, ca: ca.pem }}\n\
             \x20 - match: \"localhost:{t}\"\n\
             \x20   tls: {{ ca: ca.pem }}\n"
        ),
    );
    let snap = snapshot(h, Some(&config));
    let state = State::default();

    let resp = client::send(
        &snap,
        &state,
        SideRequest::post(
            url(&format!("https://localhost:{t}/with/login")),
            Bytes::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!((resp.status.as_u16(), &resp.body[..]), (200, &b"ok"[..]));
    let seen = tls.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/with/login");
    assert_eq!(
        seen[0].peer_cert.as_deref(),
        Some(alice.cert_der.as_slice())
    );
    assert_eq!(
        header(&seen[0].headers, "content-length").as_deref(),
        Some("0")
    );

    // tls.upgrade applies as on the proxy path: http:// goes out over https.
    let resp = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("http://localhost:{t}/upgraded"))),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(tls.requests().len(), 2);

    // No certificate for this path: the proxied request's failure, explained.
    let f = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("https://localhost:{t}/without"))),
    )
    .await
    .unwrap_err();
    assert_eq!((f.status, f.code), (502, "tls_client_cert_required"), "{f}");
    assert!(f.message.contains(&format!("localhost:{t}")), "{f}");
    assert_eq!(tls.requests().len(), 2);

    // A server certificate nobody trusts.
    let other = Ca::new("untrusted CA");
    let stranger = TlsOrigin::start(&other, &ca, ClientAuth::Off).await;
    let f = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("https://localhost:{}/", stranger.port()))),
    )
    .await
    .unwrap_err();
    assert_eq!((f.status, f.code), (502, "tls_untrusted"), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netrc_answers_a_basic_challenge_over_verified_tls_only() {
    let ca = Ca::new("side client CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let password = "N3trc-Side-Secret";
    write(
        h,
        ".netrc",
        &format!("machine localhost login nora password {password}\n"),
    );
    let config = yaml(
        h,
        &format!("sites:\n  - match: \"localhost:{t}\"\n    tls: {{ ca: ca.pem }}\n"),
    );
    let snap = snapshot(h, Some(&config));
    let state = State::default();

    let mut req = SideRequest::get(url(&format!("https://localhost:{t}/challenge/key")));
    req.basic = true;
    let resp = client::send(&snap, &state, req).await.unwrap();
    assert_eq!(resp.status, 200);
    let seen = tls.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(header(&seen[0].headers, "authorization"), None);
    assert_eq!(
        header(&seen[1].headers, "authorization"),
        Some(basic("nora", password))
    );

    // Without `basic` the 401 is the answer.
    let resp = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("https://localhost:{t}/challenge/key"))),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(tls.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_upstream_proxy_for_http_and_https() {
    let ca = Ca::new("side client CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let plain = Origin::start().await;
    let up = UpstreamTestProxy::start(Some(("u", "Pr0xy-Pa55"))).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let t = tls.port();
    let config = yaml(
        h,
        &format!(
            "upstream_proxy: http://u:Pr0xy-Pa55@127.0.0.1:{}\n\
             sites:\n  - match: \"127.0.0.1:{t}\"\n    tls: {{ ca: ca.pem }}\n",
            up.addr.port()
        ),
    );
    let snap = snapshot(h, Some(&config));
    let state = State::default();

    let resp = client::send(&snap, &state, SideRequest::get(url(&plain.url("/k?x=1"))))
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let resp = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("https://127.0.0.1:{t}/tunnelled"))),
    )
    .await
    .unwrap();
    assert_eq!((resp.status.as_u16(), &resp.body[..]), (200, &b"ok"[..]));
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0].request_line,
        format!("GET http://127.0.0.1:{}/k?x=1 HTTP/1.1", plain.addr.port())
    );
    assert_eq!(
        seen[1].request_line,
        format!("CONNECT 127.0.0.1:{t} HTTP/1.1")
    );
    for s in &seen {
        assert_eq!(
            s.proxy_authorization.as_deref(),
            Some(basic("u", "Pr0xy-Pa55").as_str())
        );
    }
    assert_eq!(
        header(&plain.requests()[0].headers, "proxy-authorization"),
        None
    );
    assert_eq!(tls.requests()[0].target, "/tunnelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_the_proxied_requests_failures() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = yaml(h, "timeouts: { connect: 1s, first_byte: 300ms }\n");
    let snap = snapshot(h, Some(&config));
    let state = State::default();

    let f = client::send(
        &snap,
        &state,
        SideRequest::get(url(&format!("http://127.0.0.1:{}/", closed_port()))),
    )
    .await
    .unwrap_err();
    assert_eq!((f.status, f.code), (502, "connect_refused"), "{f}");

    let started = std::time::Instant::now();
    let f = client::send(&snap, &state, SideRequest::get(url(&origin.url("/slow"))))
        .await
        .unwrap_err();
    assert_eq!((f.status, f.code), (504, "upstream_timeout"), "{f}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body beyond the limit is refused, with or without a length.
    for path in ["/bytes/1048577", "/chunked/1048577"] {
        let f = client::send(&snap, &state, SideRequest::get(url(&origin.url(path))))
            .await
            .unwrap_err();
        assert_eq!((f.status, f.code), (502, "side_response_too_large"), "{f}");
    }
    let resp = client::send(
        &snap,
        &state,
        SideRequest::get(url(&origin.url("/bytes/1048576"))),
    )
    .await
    .unwrap();
    assert_eq!(resp.body.len(), client::BODY_LIMIT);
    assert_eq!(
        &resp.body[..],
        &crate::support::pattern_bytes(client::BODY_LIMIT)[..]
    );

    // Headers given are sent; Debug shows their names, never their values.
    let mut headers = HeaderMap::new();
    headers.insert("x-key", "V4lue-N0t-Shown".parse().unwrap());
    let req = SideRequest {
        method: Method::PUT,
        url: url(&origin.url("/echo")),
        headers,
        body: Bytes::new(),
        basic: false,
    };
    assert!(!format!("{req:?}").contains("V4lue-N0t-Shown"));
    let resp = client::send(&snap, &state, req).await.unwrap();
    assert_eq!((resp.status.as_u16(), resp.body.len()), (200, 0));
    let last = origin.requests().pop().unwrap();
    assert_eq!(last.method, "PUT");
    assert_eq!(
        header(&last.headers, "x-key").as_deref(),
        Some("V4lue-N0t-Shown")
    );
    assert_eq!(
        header(&last.headers, "content-length").as_deref(),
        Some("0")
    );
}
