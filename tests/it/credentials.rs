//! Credentials, client certificates, server verification and the upstream proxy, from
//! real configuration files (a fake HOME with rc files and `.netrc`, a YAML config, PEM
//! files) against loopback origins that record what they saw.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use http::{HeaderMap, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use authproxy::config::load::{load, Environment};
use authproxy::config::Snapshot;

use crate::support::{
    self, full, Ca, Client, ClientAuth, Origin, Proxy, TlsOrigin, UpstreamTestProxy,
};

// ---------------------------------------------------------------------------------------
// Helpers

/// An environment whose HOME, rc home and working directory are `home`; no system config.
pub(crate) fn env(home: &Path, config: Option<&Path>) -> Environment {
    Environment::isolated(home, config)
}

pub(crate) fn snapshot(home: &Path, config: Option<&Path>) -> Snapshot {
    load(&env(home, config)).unwrap_or_else(|e| panic!("the configuration does not load:\n{e}"))
}

pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Writes `contents` as `dir/config.yaml` and returns its path.
pub(crate) fn yaml(dir: &Path, contents: &str) -> PathBuf {
    write(dir, "config.yaml", contents)
}

pub(crate) fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub(crate) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    assert!(values.next().is_none(), "{name} sent more than once");
    Some(first.to_str().unwrap().to_owned())
}

pub(crate) fn error_code(resp: &Response<()>) -> String {
    header(resp.headers(), "x-authproxy-error").unwrap_or_default()
}

/// GET `url` through the proxy on a fresh client connection, with extra headers.
pub(crate) async fn get(
    proxy: &Proxy,
    url: &str,
    headers: &[(&str, &str)],
) -> (Response<()>, String) {
    let mut client = Client::connect(proxy.addr).await;
    let mut req = Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = client.send(req.body(full("")).unwrap()).await;
    let (resp, body) = support::body_of(resp).await;
    (resp, String::from_utf8_lossy(&body).into_owned())
}

/// The only request `origin` saw whose target is `target`.
pub(crate) fn seen_at(origin: &Origin, target: &str) -> support::SeenRequest {
    let all = origin.requests();
    let hits: Vec<_> = all.iter().filter(|r| r.target == target).collect();
    assert_eq!(
        hits.len(),
        1,
        "requests for {target} at {}: {all:?}",
        origin.addr
    );
    hits[0].clone()
}

pub(crate) fn tls_seen(origin: &TlsOrigin, target: &str) -> Vec<support::TlsRequest> {
    origin
        .requests()
        .into_iter()
        .filter(|r| r.target == target)
        .collect()
}

/// The requests for `target` at a `/challenge` route: the first without a credential
/// (answered 401), the second with the one that answered the challenge.
pub(crate) fn tls_challenged(origin: &TlsOrigin, target: &str) -> support::TlsRequest {
    let hits = tls_seen(origin, target);
    assert_eq!(hits.len(), 2, "{target}: {hits:?}");
    assert_eq!(header(&hits[0].headers, "authorization"), None);
    hits[1].clone()
}

pub(crate) fn tls_seen_at(origin: &TlsOrigin, target: &str) -> support::TlsRequest {
    let all = origin.requests();
    let hits: Vec<_> = all.iter().filter(|r| r.target == target).collect();
    assert_eq!(
        hits.len(),
        1,
        "requests for {target} at {}: {:?}",
        origin.addr,
        all.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    hits[0].clone()
}

/// A PEM block.
pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A PKCS#8 key encrypted with PBES2 (PBKDF2-SHA256, AES-256-CBC), as PEM.
pub(crate) fn encrypted_key_pem(key_der: &[u8], password: &str) -> String {
    let info = pkcs8::PrivateKeyInfo::try_from(key_der).unwrap();
    let salt = [0x5au8; 16];
    let iv = [0xa5u8; 16];
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &salt, &iv).unwrap();
    let doc = info.encrypt_with_params(params, password).unwrap();
    pem("ENCRYPTED PRIVATE KEY", doc.as_bytes())
}

/// Sends `CONNECT authority` through the proxy; returns the response head and the socket.
async fn connect(proxy: &Proxy, authority: &str) -> (String, TcpStream) {
    let mut sock = TcpStream::connect(proxy.addr).await.unwrap();
    sock.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let read_head = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if sock.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_head)
        .await
        .expect("CONNECT answered within 20 s");
    (String::from_utf8_lossy(&head).into_owned(), sock)
}

/// GET `path` over TLS (trusting `ca`) inside an established tunnel.
async fn get_in_tunnel(sock: TcpStream, ca: &Ca, server_name: &str, path: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone().into()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(20), connector.connect(name, sock))
        .await
        .expect("TLS handshake within 20 s")
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", server_name)
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("response within 20 s")
        .unwrap();
    let status = resp.status().as_u16();
    let (_, body) = support::body_of(resp).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

// ---------------------------------------------------------------------------------------
// Basic, Bearer, headers and query parameters

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_from_rc_file_reaches_only_its_host() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let port = origin.addr.port();
    write(
        home.path(),
        ".daprc",
        &format!(
            "[127.0.0.1:{port}]HTTP.CREDENTIALS.USERNAME=alice\n\
             [127.0.0.1:{port}]HTTP.CREDENTIALS.PASSWORD=Op3n-Sesame\n"
        ),
    );
    let proxy = Proxy::start(snapshot(home.path(), None)).await;

    let (resp, body) = get(&proxy, &origin.url("/data"), &[]).await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
    let r = seen_at(&origin, "/data");
    assert_eq!(
        header(&r.headers, "authorization").as_deref(),
        Some(basic("alice", "Op3n-Sesame").as_str())
    );
    assert_eq!(
        header(&r.headers, "host").as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );

    // Another port on the same address, and the same port under another host name.
    let (resp, _) = get(&proxy, &other.url("/elsewhere"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&other, "/elsewhere").headers, "authorization"),
        None
    );
    let (resp, _) = get(&proxy, &format!("http://localhost:{port}/by-name"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/by-name").headers, "authorization"),
        None
    );

    // A client that sends its own Authorization keeps it; its proxy credential stays here.
    let own = "Basic Y2xpZW50OnNpZGU=";
    let (resp, _) = get(
        &proxy,
        &origin.url("/own"),
        &[
            ("authorization", own),
            ("proxy-authorization", "Basic eDp5"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let r = seen_at(&origin, "/own");
    assert_eq!(header(&r.headers, "authorization").as_deref(), Some(own));
    assert_eq!(header(&r.headers, "proxy-authorization"), None);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_from_yaml_password_file_reaches_only_its_host() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let port = origin.addr.port();
    write(home.path(), "pw", "hunter2\n");
    let config = yaml(
        home.path(),
        &format!(
            "sites:\n  - match: \"127.0.0.1:{port}\"\n    basic: {{ username: bob, password_file: pw }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;

    let (resp, _) = get(&proxy, &origin.url("/data"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/data").headers, "authorization").as_deref(),
        Some(basic("bob", "hunter2").as_str())
    );
    let (resp, _) = get(&proxy, &other.url("/elsewhere"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&other, "/elsewhere").headers, "authorization"),
        None
    );
    let (resp, _) = get(&proxy, &format!("http://localhost:{port}/by-name"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/by-name").headers, "authorization"),
        None
    );

    let own = "Bearer client-token";
    let (resp, _) = get(&proxy, &origin.url("/own"), &[("authorization", own)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/own").headers, "authorization").as_deref(),
        Some(own)
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_headers_and_query_from_yaml() {
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let port = origin.addr.port();
    write(home.path(), "tok", "tok-123\n");
    write(home.path(), "k", "key-456\n");
    let config = yaml(
        home.path(),
        &format!(
            "sites:\n  - match: \"127.0.0.1:{port}\"\n    bearer: {{ token_file: tok }}\n    \
             headers: {{ X-Api-Key: {{ value_file: k }} }}\n    query: {{ apikey: \"v\" }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;

    let (resp, body) = get(&proxy, &origin.url("/data?x=1"), &[]).await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
    let r = seen_at(&origin, "/data?x=1&apikey=v");
    assert_eq!(
        header(&r.headers, "authorization").as_deref(),
        Some("Bearer tok-123")
    );
    assert_eq!(header(&r.headers, "x-api-key").as_deref(), Some("key-456"));

    // A presigned URL on the same host carries its own signature: no Bearer.
    let presigned = "/bucket/obj.nc?X-Amz-Signature=abc123&X-Amz-Credential=AKIA%2F20240101";
    let (resp, _) = get(&proxy, &origin.url(presigned), &[]).await;
    assert_eq!(resp.status(), 200);
    let all = origin.requests();
    let r = all
        .iter()
        .find(|r| r.target.starts_with(presigned))
        .unwrap_or_else(|| panic!("no request for the presigned URL: {all:?}"));
    assert_eq!(header(&r.headers, "authorization"), None);

    // Another host gets nothing of it.
    let (resp, _) = get(&proxy, &other.url("/data"), &[]).await;
    assert_eq!(resp.status(), 200);
    let r = seen_at(&other, "/data");
    assert_eq!(header(&r.headers, "authorization"), None);
    assert_eq!(header(&r.headers, "x-api-key"), None);
    let (resp, _) = get(&proxy, &format!("http://localhost:{port}/by-name"), &[]).await;
    assert_eq!(resp.status(), 200);
    let r = seen_at(&origin, "/by-name");
    assert_eq!(header(&r.headers, "authorization"), None);
    assert_eq!(header(&r.headers, "x-api-key"), None);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// .netrc and the TLS upgrade

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netrc_is_sent_over_tls_upgrade_but_not_plain_http() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let plain = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let netrc = write(
        home.path(),
        ".netrc",
        "machine 127.0.0.1 login carol password netrc-pw\n\
         machine localhost login carol password netrc-pw\n",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    write(home.path(), "ca.pem", &ca.pem);
    let t = tls.port();
    let config = yaml(
        home.path(),
        &format!(
            "sites:\n  - match: \"localhost:{t}\"\n    tls: {{ upgrade: true, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;

    // Plain http: the .netrc password stays home, even when asked for.
    let (resp, _) = get(&proxy, &plain.url("/challenge/plain"), &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(
            &seen_at(&plain, "/challenge/plain").headers,
            "authorization"
        ),
        None
    );

    // http://localhost:T/ upgraded: the daemon speaks https to the same port, and the
    // .netrc password answers the host's challenge, never preemptively.
    let (resp, _) = get(&proxy, &format!("http://localhost:{t}/quiet"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&tls_seen_at(&tls, "/quiet").headers, "authorization"),
        None
    );
    let (resp, body) = get(
        &proxy,
        &format!("http://localhost:{t}/challenge/upgraded"),
        &[],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{:?}",
        resp.headers()
    );
    let r = tls_challenged(&tls, "/challenge/upgraded");
    assert_eq!(
        header(&r.headers, "authorization").as_deref(),
        Some(basic("carol", "netrc-pw").as_str())
    );
    assert_eq!(
        header(&r.headers, "host").as_deref(),
        Some(format!("localhost:{t}").as_str())
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Client certificates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_missing_and_wrong_certificates() {
    let ca = Ca::new("authproxy test CA");
    let rogue = Ca::new("someone else's CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Required).await;
    let alice = ca.client("alice");
    let mallory = rogue.client("mallory");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "alice.crt", &alice.cert_pem);
    write(h, "alice.key", &alice.key_pem);
    write(h, "mallory.crt", &mallory.cert_pem);
    write(h, "mallory.key", &mallory.key_pem);
    let t = tls.port();
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://localhost:{t}/good\"\n\
             \x20   tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.key, ca: ca.pem }}\n\
             \x20 - match: \"http://localhost:{t}/none\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: \"http://localhost:{t}/wrong\"\n\
             \x20   tls: {{ upgrade: true, client_cert: mallory.crt, client_key: mallory.key, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    // No certificate configured.
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/none"), &[]).await;
    assert_eq!(resp.status(), 502, "{body}");
    let code = error_code(&resp);
    assert_eq!(code, "tls_client_cert_required", "{body}");
    assert!(
        body.contains("HTTP.SSL.CERTIFICATE") && body.contains("tls.client_cert"),
        "{body}"
    );

    // A certificate the server does not trust.
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/wrong"), &[]).await;
    assert_eq!(resp.status(), 502, "{body}");
    let code = error_code(&resp);
    assert_eq!(code, "tls_client_cert_refused", "{body}");
    assert!(
        body.contains("HTTP.SSL.CERTIFICATE") && body.contains("tls.client_cert"),
        "{body}"
    );
    assert!(
        tls.requests().is_empty(),
        "no request may pass a refused handshake"
    );

    // The daemon keeps serving: the right certificate works, twice.
    for path in ["/good", "/good/again"] {
        let (resp, body) = get(&proxy, &format!("http://localhost:{t}{path}"), &[]).await;
        assert_eq!(
            (resp.status().as_u16(), body.as_str()),
            (200, "ok"),
            "{path}"
        );
        let r = tls_seen_at(&tls, path);
        assert_eq!(r.peer_cert.as_deref(), Some(alice.cert_der.as_slice()));
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_combined_pem_from_rc_and_yaml() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Required).await;
    let alice = ca.client("alice");
    let t = tls.port();

    // rc form: HTTP.SSL.CERTIFICATE and HTTP.SSL.KEY name the same file, CA from the rc
    // file too; the YAML site only asks for the upgrade.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let combined = write(
        h,
        "combined.pem",
        &format!("{}{}", alice.key_pem, alice.cert_pem),
    );
    let ca_file = write(h, "ca.pem", &ca.pem);
    write(
        h,
        ".daprc",
        &format!(
            "[localhost:{t}]HTTP.SSL.CERTIFICATE={c}\n\
             [localhost:{t}]HTTP.SSL.KEY={c}\n\
             [localhost:{t}]HTTP.SSL.CAINFO={ca}\n",
            c = combined.display(),
            ca = ca_file.display()
        ),
    );
    let config = yaml(
        h,
        &format!("sites:\n  - match: \"localhost:{t}\"\n    tls: {{ upgrade: true }}\n"),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/rc"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    assert_eq!(
        tls_seen_at(&tls, "/rc").peer_cert.as_deref(),
        Some(alice.cert_der.as_slice())
    );
    proxy.stop().await;

    // YAML form: client_cert alone, naming the combined file.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(
        h,
        "combined.pem",
        &format!("{}{}", alice.cert_pem, alice.key_pem),
    );
    write(h, "ca.pem", &ca.pem);
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"localhost:{t}\"\n    \
             tls: {{ upgrade: true, client_cert: combined.pem, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/yaml"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    assert_eq!(
        tls_seen_at(&tls, "/yaml").peer_cert.as_deref(),
        Some(alice.cert_der.as_slice())
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_encrypted_key_with_and_without_password() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Required).await;
    let alice = ca.client("alice");
    let t = tls.port();
    let password = "correct horse battery";
    let wrong = "Tr0ub4dor&3-wrong";
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "alice.crt", &alice.cert_pem);
    let key = write(
        h,
        "alice.enc.key",
        &encrypted_key_pem(&alice.key_der, password),
    );
    write(h, "keypw", &format!("{password}\n"));
    write(h, "wrongpw", &format!("{wrong}\n"));
    let site = |extra: &str| {
        format!(
            "sites:\n  - match: \"localhost:{t}\"\n    \
             tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.enc.key, ca: ca.pem{extra} }}\n"
        )
    };

    // With its password: the key is decrypted at load and used.
    let config = yaml(h, &site(", key_password_file: keypw"));
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/enc"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    assert_eq!(
        tls_seen_at(&tls, "/enc").peer_cert.as_deref(),
        Some(alice.cert_der.as_slice())
    );
    proxy.stop().await;

    // The rc form of the same: HTTP.SSL.KEYPASSWORD.
    let rc_home = tempfile::tempdir().unwrap();
    let rh = rc_home.path();
    write(
        rh,
        ".daprc",
        &format!(
            "[localhost:{t}]HTTP.SSL.CERTIFICATE={}\n\
             [localhost:{t}]HTTP.SSL.KEY={}\n\
             [localhost:{t}]HTTP.SSL.KEYPASSWORD={password}\n\
             [localhost:{t}]HTTP.SSL.CAINFO={}\n",
            h.join("alice.crt").display(),
            key.display(),
            h.join("ca.pem").display()
        ),
    );
    let config = yaml(
        rh,
        &format!("sites:\n  - match: \"localhost:{t}\"\n    tls: {{ upgrade: true }}\n"),
    );
    let proxy = Proxy::start(snapshot(rh, Some(&config))).await;
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/enc-rc"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    assert_eq!(
        tls_seen_at(&tls, "/enc-rc").peer_cert.as_deref(),
        Some(alice.cert_der.as_slice())
    );
    proxy.stop().await;

    // Without the password, or with a wrong one, the key cannot be used: the problem is
    // found at load (check reports it), and requests for the host get a 502 that says
    // which file and option to fix, never the password.
    for (extra, what) in [
        ("", "no password"),
        (", key_password_file: wrongpw", "wrong password"),
    ] {
        let config = yaml(h, &site(extra));
        let snap = snapshot(h, Some(&config));
        let problems = snap
            .unusable
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            problems.contains(&key.display().to_string()),
            "{what}: {problems}"
        );
        assert!(problems.contains("password"), "{what}: {problems}");
        let proxy = Proxy::start(snap).await;
        let (resp, body) = get(&proxy, &format!("http://localhost:{t}/nokey"), &[]).await;
        assert_eq!(resp.status(), 502, "{what}: {body}");
        assert_eq!(error_code(&resp), "tls_config_unusable", "{what}");
        assert!(body.contains(&key.display().to_string()), "{what}: {body}");
        assert!(body.contains("password"), "{what}: {body}");
        assert!(
            !body.contains(password) && !body.contains(wrong),
            "{what}: {body}"
        );
        assert!(
            !problems.contains(password) && !problems.contains(wrong),
            "{what}"
        );
        proxy.stop().await;
    }
    assert!(
        tls_seen(&tls, "/nokey").is_empty(),
        "nothing may reach the origin"
    );
}

// ---------------------------------------------------------------------------------------
// Server verification

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_verification_ca_file_ca_dir_system_roots_and_off() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    std::fs::create_dir(h.join("cadir")).unwrap();
    write(&h.join("cadir"), "test-ca.pem", &ca.pem);
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://localhost:{t}/file\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: \"http://localhost:{t}/dir\"\n\
             \x20   tls: {{ upgrade: true, ca_dir: cadir }}\n\
             \x20 - match: \"http://localhost:{t}/system\"\n\
             \x20   tls: {{ upgrade: true }}\n\
             \x20 - match: \"http://localhost:{t}/off\"\n\
             \x20   tls: {{ upgrade: true, verify: false }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let url = |p: &str| format!("http://localhost:{t}{p}");

    let untrusted = |resp: &Response<()>, body: &str| {
        assert_eq!(resp.status(), 502, "{body}");
        assert_eq!(error_code(resp), "tls_untrusted", "{body}");
        assert!(body.contains("HTTP.SSL.CAINFO"), "{body}");
    };

    // System roots do not know the test CA.
    let (resp, body) = get(&proxy, &url("/system"), &[]).await;
    untrusted(&resp, &body);

    for path in ["/file", "/dir", "/off"] {
        let (resp, body) = get(&proxy, &url(path), &[]).await;
        assert_eq!(
            (resp.status().as_u16(), body.as_str()),
            (200, "ok"),
            "{path}: {body}"
        );
        tls_seen_at(&tls, path);
    }

    // Still refused after trusted connections to the same origin were pooled.
    let (resp, body) = get(&proxy, &url("/system"), &[]).await;
    untrusted(&resp, &body);
    assert!(
        !tls.requests()
            .iter()
            .any(|r| r.target.starts_with("/system")),
        "an unverified request reached the origin"
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Redirects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_host_https_redirect_is_followed_inside() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let (same, same_seen) =
        support::redirect_origin(301, format!("https://localhost:{t}/landing?x=1")).await;
    let (other, other_seen) =
        support::redirect_origin(302, format!("https://127.0.0.1:{t}/elsewhere")).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "tok", "redirect-token\n");
    let config = yaml(
        h,
        "sites:\n  - match: localhost\n    tls: { ca: ca.pem }\n    bearer: { token_file: tok }\n",
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    // http://localhost:A/start -> 301 https://localhost:T/landing: one response, the
    // https origin's.
    let (resp, body) = get(
        &proxy,
        &format!("http://localhost:{}/start", same.port()),
        &[],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    let first = same_seen.requests.lock().unwrap().clone();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].target, "/start");
    let r = tls_seen_at(&tls, "/landing?x=1");
    assert_eq!(
        header(&r.headers, "host").as_deref(),
        Some(format!("localhost:{t}").as_str())
    );
    assert_eq!(
        header(&r.headers, "authorization").as_deref(),
        Some("Bearer redirect-token")
    );

    // A redirect to another host is followed too, with that host's rules: 127.0.0.1
    // has none here, so its certificate is not trusted, and the client hears why.
    let (resp, body) = get(
        &proxy,
        &format!("http://localhost:{}/start", other.port()),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 502, "{body}");
    assert_eq!(error_code(&resp), "tls_untrusted");
    assert!(body.contains(&format!("127.0.0.1:{t}")), "{body}");
    assert_eq!(other_seen.requests.lock().unwrap().len(), 1);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Upstream proxy

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_proxy_for_http_https_and_connect() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let plain = Origin::start().await;
    let direct = Origin::start().await;
    let up = UpstreamTestProxy::start(Some(("u", "p"))).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let (t, d) = (tls.port(), direct.addr.port());
    let config = yaml(
        h,
        &format!(
            "upstream_proxy: http://u:p@127.0.0.1:{}\n\
             no_proxy: [localhost]\n\
             sites:\n\
             \x20 - match: \"127.0.0.1:{t}\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: \"127.0.0.1:{d}\"\n\
             \x20   upstream_proxy: direct\n",
            up.addr.port()
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let proxy_auth = basic("u", "p");

    // Plain http: absolute form to the upstream proxy, with its credential (not the
    // client's).
    let (resp, body) = get(
        &proxy,
        &plain.url("/via?q=1"),
        &[("proxy-authorization", "Basic Y2xpZW50OnNlY3JldA==")],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].request_line,
        format!(
            "GET http://127.0.0.1:{}/via?q=1 HTTP/1.1",
            plain.addr.port()
        )
    );
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some(proxy_auth.as_str())
    );
    assert_eq!(
        header(&seen_at(&plain, "/via?q=1").headers, "proxy-authorization"),
        None
    );

    // An https-upgraded target: CONNECT through the upstream proxy, TLS inside.
    let (resp, body) = get(&proxy, &format!("http://127.0.0.1:{t}/upgraded"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].request_line,
        format!("CONNECT 127.0.0.1:{t} HTTP/1.1")
    );
    assert_eq!(
        seen[1].proxy_authorization.as_deref(),
        Some(proxy_auth.as_str())
    );
    assert_eq!(
        header(
            &tls_seen_at(&tls, "/upgraded").headers,
            "proxy-authorization"
        ),
        None
    );

    // A client's CONNECT tunnel goes through the upstream proxy's CONNECT.
    let (head, sock) = connect(&proxy, &format!("127.0.0.1:{t}")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, body) = get_in_tunnel(sock, &ca, "127.0.0.1", "/tunnel").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let seen = up.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[2].request_line,
        format!("CONNECT 127.0.0.1:{t} HTTP/1.1")
    );
    assert_eq!(
        seen[2].proxy_authorization.as_deref(),
        Some(proxy_auth.as_str())
    );
    assert_eq!(
        header(&tls_seen_at(&tls, "/tunnel").headers, "proxy-authorization"),
        None
    );

    // no_proxy and a site's `upstream_proxy: direct` bypass it.
    let (resp, _) = get(
        &proxy,
        &format!("http://localhost:{}/bypass", plain.addr.port()),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&plain, "/bypass").headers, "proxy-authorization"),
        None
    );
    let (resp, _) = get(&proxy, &direct.url("/direct"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&direct, "/direct").headers, "proxy-authorization"),
        None
    );
    assert_eq!(up.requests().len(), 3, "{:?}", up.requests());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_proxy_refusing_credentials_is_explained() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let plain = Origin::start().await;
    let up = UpstreamTestProxy::start(Some(("u", "p"))).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let t = tls.port();
    let config = yaml(
        h,
        &format!(
            "upstream_proxy: http://u:wrong@127.0.0.1:{}\n\
             no_proxy: [localhost]\n\
             sites:\n\
             \x20 - match: \"127.0.0.1:{t}\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n",
            up.addr.port()
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let refused = |what: &str, resp: &Response<()>, body: &str| {
        assert_eq!(resp.status(), 502, "{what}: {body}");
        assert_eq!(error_code(resp), "upstream_proxy_auth", "{what}: {body}");
        assert!(
            resp.headers().get("proxy-authenticate").is_none(),
            "{what}: the upstream proxy's challenge is not the client's business"
        );
        assert!(!body.contains("wrong"), "{what}: {body}");
    };

    let (resp, body) = get(&proxy, &format!("http://127.0.0.1:{t}/upgraded"), &[]).await;
    refused("https target", &resp, &body);

    let (head, _sock) = connect(&proxy, &format!("127.0.0.1:{t}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-authproxy-error: upstream_proxy_auth"),
        "{head}"
    );

    let (resp, body) = get(&proxy, &plain.url("/via"), &[]).await;
    refused("http target", &resp, &body);

    assert!(tls.requests().is_empty());
    assert!(plain.requests().is_empty());
    let seen = up.requests();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|r| r.status == 407), "{seen:?}");

    // The daemon keeps serving what does not need the upstream proxy.
    let (resp, _) = get(
        &proxy,
        &format!("http://localhost:{}/bypass", plain.addr.port()),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Connection pool isolation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_not_shared_between_identities() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Optional).await;
    let alice = ca.client("alice");
    let bob = ca.client("bob");
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    write(h, "alice.crt", &alice.cert_pem);
    write(h, "alice.key", &alice.key_pem);
    write(h, "bob.crt", &bob.cert_pem);
    write(h, "bob.key", &bob.key_pem);
    // Same host, port and SNI; only the path picks the identity. And the brief's variant:
    // the same origin under another name without a certificate.
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"http://localhost:{t}/alice\"\n\
             \x20   tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.key, ca: ca.pem }}\n\
             \x20 - match: \"http://localhost:{t}/bob\"\n\
             \x20   tls: {{ upgrade: true, client_cert: bob.crt, client_key: bob.key, ca: ca.pem }}\n\
             \x20 - match: localhost\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: 127.0.0.1\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    // One client connection, so that the daemon's upstream pool is the only thing
    // deciding which connection each request rides.
    let mut client = Client::connect(proxy.addr).await;
    let sequence = [
        ("localhost", "/alice/1"),
        ("localhost", "/anon/1"),
        ("localhost", "/bob/1"),
        ("127.0.0.1", "/ip/1"),
        ("localhost", "/alice/2"),
        ("localhost", "/anon/2"),
        ("localhost", "/bob/2"),
        ("127.0.0.1", "/ip/2"),
    ];
    for (host, path) in sequence {
        let (resp, body) = client.get(&format!("http://{host}:{t}{path}")).await;
        assert_eq!(resp.status(), 200, "{path}: {body:?}");
    }
    for (_, path) in sequence {
        let r = tls_seen_at(&tls, path);
        let want = if path.starts_with("/alice") {
            Some(alice.cert_der.as_slice())
        } else if path.starts_with("/bob") {
            Some(bob.cert_der.as_slice())
        } else {
            None
        };
        assert_eq!(
            r.peer_cert.as_deref(),
            want,
            "{path} rode TLS connection {} with the wrong client certificate",
            r.connection
        );
    }
    // Every identity had its own connection, and connections were reused (else the
    // checks above would prove nothing about the pool).
    let handshakes = tls.handshakes();
    assert!(
        handshakes
            .iter()
            .any(|c| c.as_deref() == Some(alice.cert_der.as_slice()))
            && handshakes
                .iter()
                .any(|c| c.as_deref() == Some(bob.cert_der.as_slice()))
            && handshakes.iter().any(Option::is_none),
        "{} handshakes",
        handshakes.len()
    );
    assert!(
        handshakes.len() < sequence.len(),
        "no upstream connection was reused ({} handshakes)",
        handshakes.len()
    );
    proxy.stop().await;
}

/// A PKCS#12 bundle (made with the openssl command, as users make theirs) presented
/// to an origin that requires a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs12_bundle_is_presented() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Required).await;
    let carol = ca.client("carol");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let crt = write(h, "carol.crt", &carol.cert_pem);
    let key = write(h, "carol.key", &carol.key_pem);
    write(h, "p12.pw", "P12-pass-4411\n");
    let status = std::process::Command::new("openssl")
        .args([
            "pkcs12",
            "-export",
            "-passout",
            "pass:P12-pass-4411",
            "-out",
        ])
        .arg(h.join("carol.p12"))
        .arg("-in")
        .arg(&crt)
        .arg("-inkey")
        .arg(&key)
        .status()
        .expect("the openssl command (scripts/install-deps installs it)");
    assert!(status.success());
    let t = tls.port();
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"localhost:{t}\"\n\
             \x20   tls: {{ upgrade: true, pkcs12: carol.p12, key_password_file: p12.pw, ca: ca.pem }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/p12"), &[]).await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
    let seen = tls_seen_at(&tls, "/p12");
    assert_eq!(seen.peer_cert.as_deref(), Some(carol.cert_der.as_slice()));

    // The wrong password is found at load, named by file, and never printed.
    write(h, "p12.pw", "not-the-password\n");
    let err = snapshot(h, Some(&config))
        .unusable
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(err.contains("carol.p12"), "{err}");
    assert!(
        !err.contains("not-the-password") && !err.contains("P12-pass-4411"),
        "{err}"
    );
}

/// 307/308 keep the method and body, so a PUT is replayed to the https URL; a POST
/// answered with 301 would become a GET in a browser, so it goes back to the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_replays_only_what_keeps_its_method() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let (put_origin, _) =
        support::redirect_origin(307, format!("https://localhost:{t}/put-here")).await;
    let (post_origin, _) =
        support::redirect_origin(301, format!("https://localhost:{t}/post-here")).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let config = yaml(h, "sites:\n  - match: localhost\n    tls: { ca: ca.pem }\n");
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    for (method, origin, want) in [("PUT", put_origin, 200u16), ("POST", post_origin, 301)] {
        let mut client = Client::connect(proxy.addr).await;
        let req = Request::builder()
            .method(method)
            .uri(format!("http://localhost:{}/upload", origin.port()))
            .header("content-length", "7")
            .body(support::full("payload"))
            .unwrap();
        let (resp, _) = support::body_of(client.send(req).await).await;
        assert_eq!(resp.status().as_u16(), want, "{method}");
    }
    let r = tls_seen_at(&tls, "/put-here");
    assert_eq!(header(&r.headers, "content-length").as_deref(), Some("7"));
    assert!(tls.requests().iter().all(|r| r.target != "/post-here"));
}
