//! Handle Server REST API credentials (seed 000): a loopback Handle-like REST endpoint
//! that checks the exact Basic username encoding or the client certificate with the
//! `Handle clientCert="true"` header, and answers with the seed's JSON `responseCode`s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use authproxy::config::load::load;

use crate::credentials::{env, snapshot, write, yaml};
use crate::process;
use crate::support::{self, full, BoxBody, Ca, Client, Proxy};

const USER: &str = "300:foo/bar";
/// Has a `:`, a `/` and an `@`, so raw and percent encodings differ.
const PASSWORD: &str = "Hs:S3cr3t/pw@77";
const CERT_AUTHORIZATION: &str = "Handle clientCert=\"true\"";
/// A handle record as pyhandle PUTs it, with a non-ASCII byte.
const RECORD: &str = r#"{"values":[{"index":1,"type":"URL","data":{"format":"string","value":"https://example.org/caf\u00e9"}}],"note":"café"}"#;

/// `Authorization: Basic` of `user:password`, as given (already encoded).
fn basic(userpass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(userpass)
    )
}

/// What the server takes as authentication for PUT and DELETE.
#[derive(Clone)]
enum Accept {
    /// Exactly this `Authorization`.
    Basic(String),
    /// This client certificate (DER) on the connection, and `Handle clientCert="true"`.
    Cert(Vec<u8>),
    /// A TLS-terminating front (httpd ProxyPass) that forwards without the certificate:
    /// nothing authenticates.
    LosesCert,
}

/// One request the Handle server saw.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    authorization: Option<String>,
    peer_cert: Option<Vec<u8>>,
    body: Vec<u8>,
}

/// A Handle-like REST endpoint: `/api/handles/<prefix>/<suffix>`. GET answers
/// `{"responseCode":1,...}`; PUT (201) and DELETE (200) need [`Accept`], else
/// `{"responseCode":402,...}` with 401; an authenticated write to a handle under
/// `denied/` gets `{"responseCode":400,...}` with 403.
struct HandleServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: watch::Sender<bool>,
}

fn json(status: u16, code: i64, handle: &str) -> Response<BoxBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=UTF-8")
        .body(full(format!(
            r#"{{"responseCode":{code},"handle":"{handle}"}}"#
        )))
        .unwrap()
}

async fn answer(
    req: Request<Incoming>,
    accept: Accept,
    peer_cert: Option<Vec<u8>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<BoxBody>, Infallible> {
    let method = req.method().clone();
    let target = req.uri().to_string();
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        target: target.clone(),
        authorization: authorization.clone(),
        peer_cert: peer_cert.clone(),
        body,
    });
    let handle = target
        .strip_prefix("/api/handles/")
        .unwrap_or("")
        .to_owned();
    if method == http::Method::GET {
        return Ok(json(200, 1, &handle));
    }
    let authenticated = match &accept {
        Accept::Basic(want) => authorization.as_deref() == Some(want.as_str()),
        Accept::Cert(want) => {
            peer_cert.as_deref() == Some(want.as_slice())
                && authorization.as_deref() == Some(CERT_AUTHORIZATION)
        }
        Accept::LosesCert => false,
    };
    Ok(if !authenticated {
        json(401, 402, &handle)
    } else if handle.starts_with("denied/") {
        json(403, 400, &handle)
    } else if method == http::Method::PUT {
        json(201, 1, &handle)
    } else {
        json(200, 1, &handle)
    })
}

impl HandleServer {
    /// Over plain http.
    async fn plain(accept: Accept) -> HandleServer {
        HandleServer::start(accept, None).await
    }

    /// Over TLS with a `server_ca` certificate for localhost; client certificates of
    /// `client_ca` are asked for, and required when `require` is set.
    async fn tls(accept: Accept, server_ca: &Ca, client_ca: &Ca, require: bool) -> HandleServer {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(client_ca.der.clone()))
            .unwrap();
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let v = if require {
            v
        } else {
            v.allow_unauthenticated()
        };
        let server = server_ca.server();
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(v.build().unwrap())
            .with_single_cert(
                vec![CertificateDer::from(server.cert_der)],
                PrivateKeyDer::Pkcs8(server.key_der.into()),
            )
            .unwrap();
        HandleServer::start(accept, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start(accept: Accept, tls: Option<tokio_rustls::TlsAcceptor>) -> HandleServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (stop, mut stopped) = watch::channel(false);
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = stopped.changed() => return,
                };
                let (accept, seen, tls) = (accept.clone(), seen2.clone(), tls.clone());
                tokio::spawn(async move {
                    let http1 = hyper::server::conn::http1::Builder::new();
                    match tls {
                        None => {
                            let svc = service_fn(move |req| {
                                answer(req, accept.clone(), None, seen.clone())
                            });
                            let _ = http1.serve_connection(TokioIo::new(sock), svc).await;
                        }
                        Some(acceptor) => {
                            let accepted =
                                tokio::time::timeout(Duration::from_secs(5), acceptor.accept(sock));
                            let Ok(Ok(stream)) = accepted.await else {
                                return;
                            };
                            let peer = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .map(|c| c.to_vec());
                            let svc = service_fn(move |req| {
                                answer(req, accept.clone(), peer.clone(), seen.clone())
                            });
                            let _ = http1.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        HandleServer {
            addr,
            seen,
            _stop: stop,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// `method url` with `body` through the proxy on a fresh connection: status and body.
async fn send(proxy: SocketAddr, method: &str, url: &str, body: &str) -> (u16, String) {
    let mut client = Client::connect(proxy).await;
    let mut req = Request::builder().method(method).uri(url);
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .header("content-length", body.len());
    }
    let resp = client.send(req.body(full(body.to_owned())).unwrap()).await;
    let (resp, bytes) = support::body_of(resp).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// Every form in which the password could show up in a log, a body or `check` output.
fn password_forms() -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let pct = authproxy::auth::handle::quote(PASSWORD);
    let mut out = vec![PASSWORD.to_owned(), pct.clone(), b64.encode(PASSWORD)];
    for pw in [PASSWORD, pct.as_str()] {
        let header = basic(&format!("300%3Afoo/bar:{pw}"));
        out.push(header["Basic ".len()..].trim_end_matches('=').to_owned());
    }
    out
}

fn assert_no_password(what: &str, text: &str) {
    for f in password_forms() {
        assert!(!text.contains(&f), "{f:?} appears in {what}:\n{text}");
    }
}

fn password_site(port: u16, extra: &str) -> String {
    format!(
        "sites:\n  - match: \"127.0.0.1:{port}\"\n    handle: {{ username: \"{USER}\", password_file: hs.pw{extra} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_pyhandles_basic_and_reads_go_anonymous() {
    let want = basic(&format!("300%3Afoo/bar:{PASSWORD}"));
    let server = HandleServer::plain(Accept::Basic(want.clone())).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "hs.pw", &format!("{PASSWORD}\n"));
    let config = yaml(h, &password_site(server.port(), ""));
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let url = format!("http://127.0.0.1:{}/api/handles/foo/bar", server.port());

    let get = send(proxy.addr, "GET", &url, "").await;
    let put = send(proxy.addr, "PUT", &url, RECORD).await;
    let delete = send(proxy.addr, "DELETE", &url, "").await;
    let ok = r#"{"responseCode":1,"handle":"foo/bar"}"#.to_owned();
    assert_eq!(get, (200, ok.clone()));
    assert_eq!(put, (201, ok.clone()));
    assert_eq!(delete, (200, ok));

    let seen = server.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].authorization.as_deref()),
        ("GET", None)
    );
    for s in &seen[1..] {
        assert_eq!(s.target, "/api/handles/foo/bar");
        assert_eq!(
            s.authorization.as_deref(),
            Some(want.as_str()),
            "{}",
            s.method
        );
        let b64 = s
            .authorization
            .as_deref()
            .unwrap()
            .strip_prefix("Basic ")
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, b"300%3Afoo/bar:Hs:S3cr3t/pw@77");
    }
    assert_eq!(seen[1].method, "PUT");
    assert_eq!(seen[1].body, RECORD.as_bytes());
    assert_eq!(seen[2].method, "DELETE");
    assert!(seen[2].body.is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoding_quotes_the_password_as_b2handle_does() {
    let want = basic("300%3Afoo/bar:Hs%3AS3cr3t/pw%4077");
    let server = HandleServer::plain(Accept::Basic(want.clone())).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "hs.pw", PASSWORD);
    let config = yaml(
        h,
        &password_site(server.port(), ", password_encoding: percent"),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let url = format!("http://127.0.0.1:{}/api/handles/foo/b2", server.port());
    let (status, body) = send(proxy.addr, "PUT", &url, RECORD).await;
    assert_eq!(
        (status, body.as_str()),
        (201, r#"{"responseCode":1,"handle":"foo/b2"}"#)
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some(want.as_str()));
    proxy.stop().await;
}

/// The certificate goes in the TLS handshake of every request; the header only on writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_writes_say_handle_client_cert() {
    let ca = Ca::new("authproxy handle CA");
    let me = ca.client("301:foo/bar");
    let server = HandleServer::tls(Accept::Cert(me.cert_der.clone()), &ca, &ca, true).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "me.pem", &me.cert_pem);
    write(h, "me.key", &me.key_pem);
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"localhost:{}\"\n    tls: {{ upgrade: true, ca: ca.pem, client_cert: me.pem, client_key: me.key }}\n    handle: {{ client_cert: true }}\n",
            server.port()
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let url = format!("http://localhost:{}/api/handles/foo/cert", server.port());
    assert_eq!(send(proxy.addr, "GET", &url, "").await.0, 200);
    assert_eq!(send(proxy.addr, "PUT", &url, RECORD).await.0, 201);
    assert_eq!(send(proxy.addr, "DELETE", &url, "").await.0, 200);
    let seen = server.seen();
    let got: Vec<(&str, Option<&str>, bool)> = seen
        .iter()
        .map(|s| {
            (
                s.method.as_str(),
                s.authorization.as_deref(),
                s.peer_cert.as_deref() == Some(me.cert_der.as_slice()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("GET", None, true),
            ("PUT", Some(CERT_AUTHORIZATION), true),
            ("DELETE", Some(CERT_AUTHORIZATION), true),
        ]
    );
    assert_eq!(seen[1].body, RECORD.as_bytes());
    proxy.stop().await;
}

/// pyhandle re-sends a PUT that met a 302 itself (`__resend_put_request_on_302`): the
/// proxy does it for the tool, with the same body bytes, to the https URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_redirected_to_https_on_the_same_host_is_sent_again_with_its_body() {
    let ca = Ca::new("authproxy handle CA");
    let want = basic(&format!("300%3Afoo/bar:{PASSWORD}"));
    let server = HandleServer::tls(Accept::Basic(want.clone()), &ca, &ca, false).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "hs.pw", PASSWORD);
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: localhost\n    tls: {{ ca: ca.pem }}\n    handle: {{ username: \"{USER}\", password_file: hs.pw }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    for status in [301u16, 302] {
        let next = format!(
            "https://localhost:{}/api/handles/foo/r{status}",
            server.port()
        );
        let (moved, moved_seen) = support::redirect_origin(status, next).await;
        let url = format!(
            "http://localhost:{}/api/handles/foo/r{status}",
            moved.port()
        );
        let (got, body) = send(proxy.addr, "PUT", &url, RECORD).await;
        assert_eq!(
            (got, body),
            (
                201,
                format!(r#"{{"responseCode":1,"handle":"foo/r{status}"}}"#)
            )
        );
        let first = moved_seen.requests.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "{status}");
        assert_eq!(first[0].method, "PUT");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (s, status) in seen.iter().zip([301, 302]) {
        assert_eq!(s.method, "PUT", "{status}");
        assert_eq!(s.target, format!("/api/handles/foo/r{status}"));
        assert_eq!(s.body, RECORD.as_bytes(), "{status}");
        assert_eq!(s.authorization.as_deref(), Some(want.as_str()));
    }
    proxy.stop().await;
}

fn load_errors(h: &Path, config: &Path) -> String {
    match load(&env(h, Some(config))) {
        Ok(_) => panic!("the configuration loads"),
        Err(e) => e.to_string(),
    }
}

/// A pyhandle/b2handle credentials JSON, imported: password and certificate forms work
/// against the server; unknown and contradictory fields are reported with their lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_json_is_imported_and_checked_line_by_line() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let want = basic(&format!("300%3Afoo/bar:{PASSWORD}"));
    let plain = HandleServer::plain(Accept::Basic(want.clone())).await;
    let ca = Ca::new("authproxy handle CA");
    let me = ca.client("301:foo/bar");
    let tls = HandleServer::tls(Accept::Cert(me.cert_der.clone()), &ca, &ca, true).await;
    std::fs::create_dir(h.join("creds")).unwrap();
    write(h, "creds/ca.pem", &ca.pem);
    write(h, "creds/me.pem", &me.cert_pem);
    write(h, "creds/me.key", &me.key_pem);
    write(
        h,
        "creds/pw.json",
        &format!(
            "{{\n  \"handle_server_url\": \"http://127.0.0.1:{}\",\n  \"username\": \"{USER}\",\n  \"password\": \"{PASSWORD}\",\n  \"prefix\": \"foo\",\n  \"handleowner\": \"200:0.NA/foo\"\n}}\n",
            plain.port()
        ),
    );
    write(
        h,
        "creds/cert.json",
        &format!(
            "{{\n  \"baseuri\": \"https://localhost:{}\",\n  \"private_key\": \"me.key\",\n  \"certificate_only\": \"me.pem\",\n  \"HTTPS_verify\": \"ca.pem\"\n}}\n",
            tls.port()
        ),
    );
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"127.0.0.1:{}\"\n    handle: {{ credentials_file: creds/pw.json }}\n  - match: \"localhost:{}\"\n    handle: {{ credentials_file: creds/cert.json }}\n",
            plain.port(),
            tls.port()
        ),
    );
    let snap = snapshot(h, Some(&config));
    let pw_json = h.join("creds/pw.json").display().to_string();
    let warned: Vec<String> = snap.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warned.contains(&format!(
            "{pw_json}:5: `prefix` is for the Handle client library; authproxy does not use it"
        )),
        "{warned:?}"
    );
    let proxy = Proxy::start(snap).await;
    let (status, _) = send(
        proxy.addr,
        "PUT",
        &format!("http://127.0.0.1:{}/api/handles/foo/json", plain.port()),
        RECORD,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        plain.seen()[0].authorization.as_deref(),
        Some(want.as_str())
    );
    // https baseuri: the tool's http:// URL is upgraded; certificate and CA from the JSON.
    let (status, _) = send(
        proxy.addr,
        "DELETE",
        &format!("http://localhost:{}/api/handles/foo/json", tls.port()),
        "",
    )
    .await;
    assert_eq!(status, 200);
    let seen = tls.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some(CERT_AUTHORIZATION));
    assert_eq!(seen[0].peer_cert.as_deref(), Some(me.cert_der.as_slice()));
    proxy.stop().await;

    // An unknown field, with the JSON's line.
    write(
        h,
        "bad.json",
        "{\n  \"username\": \"300:foo/bar\",\n  \"pasword\": \"x\",\n  \"password\": \"y\"\n}\n",
    );
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    handle: { credentials_file: bad.json }\n",
    );
    let e = load_errors(h, &config);
    let bad = h.join("bad.json").display().to_string();
    assert!(
        e.starts_with(&format!(
            "{bad}:3: unknown field `pasword` (the Handle credentials of sites[0]), expected one of `handle_server_url`"
        )),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // Contradictory fields: a password and a certificate; two servers; a server the
    // match does not cover.
    write(h, "both.json", "{\n  \"username\": \"300:foo/bar\",\n  \"certificate_only\": \"c.pem\",\n  \"private_key\": \"k.pem\",\n  \"password\": \"y\"\n}\n");
    write(h, "urls.json", "{\n  \"handle_server_url\": \"https://hdl.example:8000\",\n  \"username\": \"300:foo/bar\",\n  \"password\": \"y\",\n  \"baseuri\": \"https://other.example:8000\"\n}\n");
    write(h, "far.json", "{\n  \"username\": \"300:foo/bar\",\n  \"password\": \"y\",\n  \"handle_server_url\": \"https://elsewhere.example\"\n}\n");
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    handle: { credentials_file: both.json }\n  - match: \"hdl.example:8000\"\n    handle: { credentials_file: urls.json }\n  - match: hdl3.example\n    handle: { credentials_file: far.json }\n",
    );
    let e = load_errors(h, &config);
    let p = |n: &str| h.join(n).display().to_string();
    let yaml_path = config.display().to_string();
    for want in [
        format!("{}:5: `password` and the client certificate `certificate_only` (line 3) do not go together", p("both.json")),
        format!("{}:5: `baseuri` and `handle_server_url` (line 2) name different servers; keep one (the Handle credentials of sites[1])", p("urls.json")),
        format!("{}:4: `handle_server_url` names https://elsewhere.example, which the match `hdl3.example` of sites[2] ({yaml_path}:6) does not cover", p("far.json")),
    ] {
        assert!(e.lines().any(|l| l.starts_with(&want)), "{want}\nnot in:\n{e}");
    }
    assert_eq!(e.lines().count(), 3, "{e}");
    assert!(!e.contains("\"y\""), "{e}");
}

/// Bad `handle` settings are refused at load with the YAML line.
#[test]
fn bad_handle_settings_name_their_line() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let ca = Ca::new("authproxy handle CA");
    let me = ca.client("301:foo/bar");
    write(h, "me.pem", &me.cert_pem);
    write(h, "me.key", &me.key_pem);
    write(h, "hs.pw", PASSWORD);
    let config = yaml(
        h,
        "sites:\n\
         \x20 - match: \"http://hdl.example:8000/api\"\n\
         \x20   tls: { client_cert: me.pem, client_key: me.key }\n\
         \x20   handle: { client_cert: true }\n\
         \x20 - match: hdl2.example\n\
         \x20   handle: { username: \"foo/bar\", password_file: hs.pw }\n\
         \x20 - match: hdl3.example\n\
         \x20   handle: { client_cert: true }\n\
         \x20 - match: hdl4.example\n\
         \x20   basic: { username: u, password_file: hs.pw }\n\
         \x20   handle: { username: \"300:foo/bar\", password_file: hs.pw, password_encodng: raw }\n\
         \x20 - match: hdl5.example\n\
         \x20   headers: { Authorization: { value_file: hs.pw } }\n\
         \x20   handle: { username: \"300:foo/bar\", password_file: hs.pw }\n\
         \x20 - match: hdl6.example\n\
         \x20   basic: { username: u, password_file: hs.pw }\n\
         \x20   handle: { username: \"300:foo/bar\", password_file: hs.pw }\n",
    );
    let e = load_errors(h, &config);
    let c = config.display().to_string();
    let want = [
        format!("{c}:4: sites[0].handle: a client certificate goes over https only, and this site matches only http:// URLs; add `tls: {{ upgrade: true }}` or match the https URL"),
        format!("{c}:6: sites[1].handle.username must be index:prefix/suffix, with exactly one colon"),
        format!("{c}:8: sites[2].handle: client_cert: true needs the certificate: tls.client_cert and tls.client_key (or tls.pkcs12)"),
        format!("{c}:13: sites[4].headers: `Authorization` cannot be set on a handle site: the handle credential is its Authorization"),
        format!("{c}:17: sites[5]: give handle or basic/bearer, not both"),
    ];
    for w in &want {
        assert!(e.lines().any(|l| l == w), "{w}\nnot in:\n{e}");
    }
    assert!(
        e.lines().any(|l| l.starts_with(&format!(
            "{c}:11: sites[3].handle: unknown field `password_encodng`"
        ))),
        "{e}"
    );
    assert_eq!(e.lines().count(), 6, "{e}");

    // A certificate on a site whose http:// requests are not upgraded: a warning.
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    tls: { client_cert: me.pem, client_key: me.key }\n    handle: { client_cert: true }\n",
    );
    let warned: Vec<String> = snapshot(h, Some(&config))
        .warnings
        .iter()
        .map(|w| w.to_string())
        .collect();
    assert_eq!(
        warned,
        [format!(
            "{c}:4: sites[0].handle: a client certificate goes over https only, so this site's http:// requests carry no Handle credential; add `tls: {{ upgrade: true }}`"
        )]
    );
}

/// The real binary at debug level: 403/401 answers reach the client byte for byte, the
/// log names the likely cause in one line each, and the password appears nowhere: not in
/// the log, an error body, `check` or `explain`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_pass_unchanged_and_the_log_names_their_cause() {
    let want = basic(&format!("300%3Afoo/bar:{PASSWORD}"));
    let server = HandleServer::plain(Accept::Basic(want)).await;
    let ca = Ca::new("authproxy handle CA");
    let me = ca.client("301:foo/bar");
    let front = HandleServer::tls(Accept::LosesCert, &ca, &ca, false).await;
    let closed = support::closed_port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "hs.pw", PASSWORD);
    write(h, "ca.pem", &ca.pem);
    write(h, "me.pem", &me.cert_pem);
    write(h, "me.key", &me.key_pem);
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"127.0.0.1:{p}\"\n\
             \x20   handle: {{ username: \"{USER}\", password_file: hs.pw }}\n\
             \x20 - match: \"127.0.0.1:{closed}\"\n\
             \x20   handle: {{ username: \"{USER}\", password_file: hs.pw }}\n\
             \x20 - match: \"localhost:{f}\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem, client_cert: me.pem, client_key: me.key }}\n\
             \x20   handle: {{ username: \"301:foo/bar\", client_cert: true }}\n",
            p = server.port(),
            f = front.port()
        ),
    );
    let config_arg = config.to_str().unwrap();
    let mut daemon =
        process::Daemon::start_in(h, &["--config", config_arg], &[("RUST_LOG", "debug")]);
    let proxy: SocketAddr = daemon.addr.parse().unwrap();
    let base = format!("http://127.0.0.1:{}/api/handles", server.port());
    let ok = send(proxy, "PUT", &format!("{base}/foo/bar"), RECORD).await;
    assert_eq!(ok.0, 201);
    let denied = send(proxy, "PUT", &format!("{base}/denied/1"), RECORD).await;
    assert_eq!(
        denied,
        (
            403,
            r#"{"responseCode":400,"handle":"denied/1"}"#.to_owned()
        )
    );
    let lost = send(
        proxy,
        "DELETE",
        &format!("http://localhost:{}/api/handles/foo/2", front.port()),
        "",
    )
    .await;
    assert_eq!(
        lost,
        (401, r#"{"responseCode":402,"handle":"foo/2"}"#.to_owned())
    );
    let (down, body) = send(
        proxy,
        "PUT",
        &format!("http://127.0.0.1:{closed}/api/handles/foo/3"),
        RECORD,
    )
    .await;
    assert_eq!(down, 502, "{body}");
    assert_no_password("the 502 body", &body);
    let (_, log) = daemon.stop();

    let host = format!("127.0.0.1:{}", server.port());
    let diagnosed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN authproxy::handle:"))
        .collect();
    assert_eq!(diagnosed.len(), 2, "{log}");
    assert!(
        diagnosed[0].contains(
            "responseCode 400 (other authentication errors): 300:foo/bar has no admin permission"
        ) && diagnosed[0].contains("HS_ADMIN")
            && diagnosed[0].contains(&host),
        "{}",
        diagnosed[0]
    );
    assert!(
        diagnosed[1].contains("responseCode 402 (authentication needed): the client certificate did not reach the handle server")
            && diagnosed[1].contains("ProxyPass")
            && diagnosed[1].contains(&format!("localhost:{}", front.port())),
        "{}",
        diagnosed[1]
    );
    assert!(log.contains("auth=\"handle-basic\""), "{log}");
    assert!(
        log.lines().any(
            |l| l.contains(" DEBUG authproxy::handle: Handle Server credential added")
                && l.contains("user=\"300:foo/bar\"")
        ),
        "not a debug log:\n{log}"
    );
    assert_no_password("the debug log", &log);

    // check and explain show the user and the method, never the password.
    let cli = |args: &[&str]| {
        let out = process::command(h).args(args).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        text
    };
    let check = cli(&["check", "--config", config_arg]);
    assert!(
        check.contains(
            "    handle: Basic, user \"300:foo/bar\" (sent as \"300%3Afoo/bar\"), password *** (raw encoding), on PUT and DELETE only (GET and other reads go anonymous) — sent in cleartext over http"
        ),
        "{check}"
    );
    assert!(
        check.contains("    handle: client certificate, user \"301:foo/bar\" (sent as \"301%3Afoo/bar\"), Authorization: Handle clientCert=\"true\", on PUT and DELETE over https only"),
        "{check}"
    );
    assert_no_password("`authproxy check`", &check);
    let explained = cli(&[
        "explain",
        "--config",
        config_arg,
        &format!("{base}/foo/bar"),
    ]);
    assert!(
        explained.contains("authorization: Handle Server Basic, user \"300:foo/bar\" (sent as \"300%3Afoo/bar\"), password *** (raw encoding), on PUT and DELETE only"),
        "{explained}"
    );
    assert_no_password("`authproxy explain`", &explained);
    let explained = cli(&[
        "explain",
        "--config",
        config_arg,
        &format!("http://localhost:{}/api/handles/foo/2", front.port()),
    ]);
    assert!(
        explained.contains("authorization: Handle Server client certificate"),
        "{explained}"
    );
    assert!(
        explained.contains("client certificate CN=301:foo/bar")
            || explained.contains("301:foo/bar"),
        "{explained}"
    );
}

/// `HTTPS_verify` is `tls.verify` / `tls.ca` written the pyhandle way; the two may not
/// disagree.
#[test]
fn https_verify_mirrors_tls_verify() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(
        h,
        "off.json",
        "{\n  \"username\": \"300:foo/bar\",\n  \"password\": \"y\",\n  \"HTTPS_verify\": \"False\"\n}\n",
    );
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    handle: { credentials_file: off.json }\n",
    );
    let snap = snapshot(h, Some(&config));
    assert_eq!(snap.sites[0].tls.verify_peer, Some(false));
    let off = h.join("off.json").display().to_string();
    assert!(
        snap.warnings.iter().any(|w| w.to_string()
            == format!("{off}:4: TLS verification is off for hdl.example (HTTPS_verify)")),
        "{:?}",
        snap.warnings
    );
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    tls: { verify: true }\n    handle: { credentials_file: off.json }\n",
    );
    let e = load_errors(h, &config);
    assert_eq!(
        e,
        format!(
            "{off}:4: `HTTPS_verify` disagrees with the site's tls.verify ({}:3); keep one (the Handle credentials of sites[0])",
            config.display()
        )
    );
}

/// JSON keeps the last of two equal keys; pyhandle would too, silently. Here it is an
/// error at the second.
#[test]
fn a_repeated_json_key_is_an_error_at_its_second_line() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(
        h,
        "dup.json",
        "{\n  \"username\": \"300:foo/old\",\n  \"password\": \"y\",\n  \"username\": \"300:foo/bar\"\n}\n",
    );
    let config = yaml(
        h,
        "sites:\n  - match: hdl.example\n    handle: { credentials_file: dup.json }\n",
    );
    assert_eq!(
        load_errors(h, &config),
        format!(
            "{}:4: `username` is given twice (the Handle credentials of sites[0])",
            h.join("dup.json").display()
        )
    );
}
