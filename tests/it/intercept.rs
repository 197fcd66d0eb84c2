//! https interception (issue 17): `CONNECT`s to the hosts YAML `intercept` names are
//! answered with a leaf minted by the local CA, and their requests run through the same
//! path as plain http (here: the Earthdata Login dance against the https data server).
//! Real clients (curl, python3 urllib, wget) trust only the file `authproxy ca` printed.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use authproxy::{Daemon, Tuning};

use crate::credentials::{error_code, snapshot};
use crate::edl::{pattern_range, Options, Role, World, PASSWORD};
use crate::process;
use crate::support::{self, full, Proxy, TestPki};

/// The world, and a HOME whose config intercepts the https data server (an IP literal).
async fn edl_setup() -> (World, tempfile::TempDir, PathBuf) {
    let world = World::start(Options::default()).await;
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "intercept: [\"127.0.0.1:{}\"]\n",
        world.data_tls_port()
    ));
    std::fs::write(&config, text).unwrap();
    (world, home, config)
}

/// `authproxy ca [args]` with HOME=`home`: its stdout's first line, and its exit status.
fn authproxy_ca(home: &Path, args: &[&str]) -> (Option<PathBuf>, bool, String) {
    let out = process::command(home)
        .env_remove("XDG_DATA_HOME")
        .arg("ca")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = stdout.lines().next().map(PathBuf::from);
    (first, out.status.success(), format!("{stdout}{stderr}"))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A client's side of an intercepted connection: `CONNECT authority`, then TLS trusting
/// only `ca_pem`, with ALPN http/1.1. The 200's head is checked exactly.
async fn connect_tls(
    proxy: SocketAddr,
    authority: &str,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    sock.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(10), sock.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => return Err(String::from_utf8_lossy(&head).into_owned()),
        }
    }
    if head != b"HTTP/1.1 200 Connection established\r\n\r\n" {
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut rest)).await;
        head.extend(rest);
        return Err(String::from_utf8_lossy(&head).into_owned());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = authority.rsplit_once(':').unwrap().0.to_string();
    let name = rustls::pki_types::ServerName::try_from(host).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, sock)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(tls)
}

/// One request on an intercepted connection (hyper), with the given Host.
async fn get_inside(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    target: &str,
    host: &str,
) -> (http::Response<()>, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(target)
        .header("host", host)
        .body(full(""))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
        .await
        .expect("an answer within 20 s")
        .unwrap();
    support::body_of(resp).await
}

async fn run(cmd: &mut Command) -> (bool, Vec<u8>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("the client finished within 30 s")
    .expect("the client runs (scripts/install-deps installs it)");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client command with no proxy or CA settings of the caller's.
fn client(program: &str, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(home).env("HOME", home);
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CURL_CA_BUNDLE",
        "REQUESTS_CA_BUNDLE",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_python_and_wget_trusting_only_the_printed_ca_get_the_data_through_the_dance() {
    let (world, home, config) = edl_setup().await;
    let (ca, ok, out) = authproxy_ca(home.path(), &["--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ca = ca.unwrap();
    assert_eq!(ca, home.path().join(".local/share/authproxy/ca/ca.pem"));
    assert_eq!(mode(&ca), 0o644);
    assert_eq!(mode(&ca.with_file_name("ca-key.pem")), 0o600);
    assert_eq!(mode(ca.parent().unwrap()), 0o700);
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let proxy_url = proxy.url();
    let want = pattern_range(0, world.options().size);

    let url = world.data_https_url("/curl.nc");
    let (ok, body, err) = run(client("curl", home.path()).args([
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--proxy",
        &proxy_url,
        "--cacert",
        ca.to_str().unwrap(),
        "--capath",
        "/nonexistent",
        &url,
    ]))
    .await;
    assert!(ok, "curl: {err}");
    assert_eq!(body, want, "curl got other bytes");
    assert_eq!(world.logins(), 1);

    let script = "import ssl,sys,urllib.request\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], context=ctx, timeout=20).read())\n";
    let url = world.data_https_url("/python.nc");
    let (ok, body, err) = run(client("python3", home.path())
        .env("https_proxy", &proxy_url)
        .args(["-c", script, &url, ca.to_str().unwrap()]))
    .await;
    assert!(ok, "python3: {err}");
    assert_eq!(body, want, "python3 got other bytes");

    let url = world.data_https_url("/wget.nc");
    let (ok, body, err) = run(client("wget", home.path())
        .env("https_proxy", &proxy_url)
        .args(["-q", "-O", "-", "--tries=1", "--timeout=20"])
        .arg(format!("--ca-certificate={}", ca.display()))
        .arg(&url))
    .await;
    assert!(ok, "wget: {err}");
    assert_eq!(body, want, "wget got other bytes");

    // Every request reached the data server as itself, over TLS, and the one login
    // served all three clients (the jar is shared).
    let data: Vec<_> = world.hits_of(Role::Data);
    for path in ["/curl.nc", "/python.nc", "/wget.nc"] {
        assert!(
            data.iter().any(|h| h.tls && h.path() == path),
            "{path} never reached the https data server: {data:?}"
        );
    }
    assert_eq!(world.logins(), 1);
    // The data server never saw the login host's password, nor any Authorization.
    assert!(
        world.credential_leaks().is_empty(),
        "{:?}",
        world.credential_leaks()
    );
    for hit in data {
        assert_eq!(hit.authorization(), None, "{hit:?}");
        assert!(!format!("{hit:?}").contains(PASSWORD), "{hit:?}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_named_is_tunnelled_and_shows_its_own_certificate() {
    let (world, home, config) = edl_setup().await;
    let (ca, ok, out) = authproxy_ca(home.path(), &["--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    let authproxy_ca = std::fs::read_to_string(ca.unwrap()).unwrap();
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let login = format!("localhost:{}", world.login_port());
    // The login host is not in `intercept`: authproxy's CA does not verify it...
    let e = connect_tls(proxy.addr, &login, &authproxy_ca)
        .await
        .unwrap_err();
    assert!(e.starts_with("TLS: "), "{e}");
    // ...the world's own CA does: the client talks to the origin itself.
    let tls = connect_tls(proxy.addr, &login, world.ca_pem())
        .await
        .unwrap();
    let (resp, _) = get_inside(tls, "/oauth/authorize", &login).await;
    // The login server's own answer to a request without its parameters.
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers().get("x-authproxy-error"), None);
    // And the intercepted data server is the other way round.
    let data = format!("127.0.0.1:{}", world.data_tls_port());
    assert!(connect_tls(proxy.addr, &data, world.ca_pem())
        .await
        .is_err());
    assert!(connect_tls(proxy.addr, &data, &authproxy_ca).await.is_ok());
    proxy.stop().await;
}

/// A TLS origin whose CA the proxy does not trust, intercepted.
async fn untrusted_origin_setup() -> (tempfile::TempDir, Proxy, SocketAddr, String) {
    let pki = TestPki::new();
    let (origin, _seen) = support::tls_origin(&pki).await;
    let home = tempfile::tempdir().unwrap();
    let config = crate::credentials::yaml(
        home.path(),
        &format!("intercept: [\"127.0.0.1:{}\"]\n", origin.port()),
    );
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let proxy = Proxy::start(snap).await;
    (home, proxy, origin, ca.cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_certificate_failure_is_an_explained_502_inside_tls() {
    let (_home, proxy, origin, ca) = untrusted_origin_setup().await;
    let authority = origin.to_string();
    let tls = connect_tls(proxy.addr, &authority, &ca).await.unwrap();
    let (resp, body) = get_inside(tls, "/x", &authority).await;
    assert_eq!(resp.status(), 502);
    let code = error_code(&resp);
    assert_eq!(code, "tls_untrusted", "{}", String::from_utf8_lossy(&body));
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(&authority), "{body}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_another_authority_gets_421_and_an_absolute_one_for_this_is_served() {
    let (world, home, config) = edl_setup().await;
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let proxy = Proxy::start(snap).await;
    let data = format!("127.0.0.1:{}", world.data_tls_port());
    let tls = connect_tls(proxy.addr, &data, &ca.cert_pem).await.unwrap();
    let other = format!("localhost:{}", world.login_port());
    let (resp, body) = get_inside(tls, "/a.nc", &other).await;
    assert_eq!(resp.status(), 421);
    assert_eq!(error_code(&resp), "misdirected_request");
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(&data) && body.contains(&other), "{body}");
    assert!(world.hits_of(Role::Data).is_empty());

    let tls = connect_tls(proxy.addr, &data, &ca.cert_pem).await.unwrap();
    let url = format!("https://{data}/abs.nc");
    let (resp, body) = get_inside(tls, &url, &data).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, pattern_range(0, world.options().size));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_connections_to_a_new_host_mint_one_leaf() {
    let pki = TestPki::new();
    let (origin, seen) = support::tls_origin(&pki).await;
    let home = tempfile::tempdir().unwrap();
    let pki_ca = crate::credentials::write(home.path(), "origin-ca.pem", &pki.ca_pem);
    let config = crate::credentials::yaml(
        home.path(),
        &format!(
            "intercept: [\"127.0.0.1\"]\nsites:\n  - match: \"127.0.0.1:{}\"\n    tls: {{ ca: \"{}\" }}\n",
            origin.port(),
            pki_ca.display()
        ),
    );
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let daemon = Daemon::new(snap.into_handle(), &Tuning::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(
        daemon
            .clone()
            .run(vec![listener], rx, Duration::from_secs(2)),
    );
    let authority = origin.to_string();
    let mut clients = Vec::new();
    for i in 0..50 {
        let (authority, ca) = (authority.clone(), ca.cert_pem.clone());
        clients.push(tokio::spawn(async move {
            let tls = connect_tls(addr, &authority, &ca).await.unwrap();
            // authproxy offers HTTP/1.1 only.
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            let (resp, body) = get_inside(tls, &format!("/bytes/{}", 100 + i), &authority).await;
            (resp.status().as_u16(), body.len())
        }));
    }
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.await.unwrap(), (200, 100 + i));
    }
    assert_eq!(daemon.interceptor().minted(), 1);
    assert_eq!(seen.requests.lock().unwrap().len(), 50);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_ca_key_is_refused_by_name() {
    let (_home, proxy, origin, _ca) = untrusted_origin_setup().await;
    // The CA the setup made lives under HOME; open its key up.
    let home = _home.path();
    let key = home.join(".local/share/authproxy/ca/ca-key.pem");
    assert_eq!(mode(&key), 0o600);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key_text = std::fs::read_to_string(&key).unwrap();
    let secret_line = key_text.lines().nth(1).unwrap().to_string();
    // The daemon refuses it at its first need, answering the CONNECT.
    let e = connect_tls(proxy.addr, &origin.to_string(), "")
        .await
        .unwrap_err();
    assert!(e.starts_with("HTTP/1.1 502"), "{e}");
    assert!(
        e.contains("X-Authproxy-Error: intercept_ca_unusable")
            || e.contains("x-authproxy-error: intercept_ca_unusable"),
        "{e}"
    );
    assert!(
        e.contains(&key.display().to_string()) && e.contains("chmod 600"),
        "{e}"
    );
    assert!(!e.contains(&secret_line));
    // So does `authproxy ca`, printing no path.
    let (path, ok, out) = authproxy_ca(
        home,
        &["--config", home.join("config.yaml").to_str().unwrap()],
    );
    assert!(!ok && path.is_none(), "{out}");
    assert!(out.contains(&key.display().to_string()), "{out}");
    assert!(!out.contains(&secret_line));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_key_reaches_no_log_line_at_trace_level() {
    let (world, home, config) = edl_setup().await;
    let (ca, ok, out) = authproxy_ca(home.path(), &["--config", config.to_str().unwrap()]);
    assert!(ok, "{out}");
    let ca = ca.unwrap();
    let key_text = std::fs::read_to_string(ca.with_file_name("ca-key.pem")).unwrap();
    let mut daemon = process::Daemon::start_in(
        home.path(),
        &["--config", config.to_str().unwrap(), "--log-level", "trace"],
        &[("XDG_DATA_HOME", "")],
    );
    let url = world.data_https_url("/logged.nc");
    let (ok, body, err) = run(client("curl", home.path()).args([
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--proxy",
        &format!("http://{}", daemon.addr),
        "--cacert",
        ca.to_str().unwrap(),
        &url,
    ]))
    .await;
    assert!(ok, "curl: {err}");
    assert_eq!(body, pattern_range(0, world.options().size));
    let (_, log) = daemon.stop();
    assert!(
        log.contains("/logged.nc"),
        "the request was not logged:\n{log}"
    );
    for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!log.contains(line), "a line of the CA key is in the log");
    }
    assert!(!log.contains(PASSWORD));
    assert!(!log.contains("PRIVATE KEY"));
}

/// A TLS origin the proxy trusts (its CA in a `sites` rule), and a config intercepting
/// it with `extra` YAML added.
async fn trusted_origin_config(home: &Path, extra: &str) -> (SocketAddr, PathBuf) {
    let pki = TestPki::new();
    let (origin, _seen) = support::tls_origin(&pki).await;
    let pki_ca = crate::credentials::write(home, "origin-ca.pem", &pki.ca_pem);
    let config = crate::credentials::yaml(
        home,
        &format!(
            "intercept: [\"127.0.0.1\"]\n{extra}sites:\n  - match: \"127.0.0.1:{}\"\n    tls: {{ ca: \"{}\" }}\n",
            origin.port(),
            pki_ca.display()
        ),
    );
    (origin, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_constrained_ca_still_verifies_its_hosts() {
    let home = tempfile::tempdir().unwrap();
    let (origin, config) =
        trusted_origin_config(home.path(), "intercept_ca: { name_constraints: true }\n").await;
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&ca.cert_der).unwrap();
    let nc = x
        .name_constraints()
        .unwrap()
        .expect("the CA carries name constraints");
    assert!(nc.critical);
    let permitted = nc.value.permitted_subtrees.as_ref().unwrap();
    assert_eq!(permitted.len(), 1);
    assert_eq!(
        format!("{:?}", permitted[0].base),
        "IPAddress([127, 0, 0, 1, 255, 255, 255, 255])"
    );
    let proxy = Proxy::start(snap).await;
    let tls = connect_tls(proxy.addr, &origin.to_string(), &ca.cert_pem)
        .await
        .unwrap();
    let (resp, body) = get_inside(tls, "/bytes/7", &origin.to_string()).await;
    assert_eq!((resp.status().as_u16(), body.len()), (200, 7));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_explain_say_intercepted_or_tunnelled_and_why() {
    let home = tempfile::tempdir().unwrap();
    let (origin, config) = trusted_origin_config(home.path(), "").await;
    let env = crate::credentials::env(home.path(), Some(&config));
    let (text, ok) = authproxy::explain::check(&env);
    assert!(ok, "{text}");
    let ca = home.path().join(".local/share/authproxy/ca/ca.pem");
    assert!(
        text.contains(&format!(
            "https interception (TLS terminated with the local CA):\n  127.0.0.1 ({}:1)\n  CA: {} (made at first need); clients trust it (see `authproxy ca`)\n",
            config.display(),
            ca.display()
        )),
        "{text}"
    );
    let url = format!("https://{origin}/a");
    let text = authproxy::explain::explain(&env, &url).unwrap();
    assert!(
        text.contains(&format!(
            "intercepted: the intercept pattern 127.0.0.1 ({}:1) names {origin}:",
            config.display()
        )),
        "{text}"
    );
    let text = authproxy::explain::explain(&env, "https://localhost:8443/a").unwrap();
    assert!(
        text.contains("passes through untouched: no credential, header or certificate is added (no intercept pattern names this authority)"),
        "{text}"
    );
    let bare = crate::credentials::yaml(home.path(), "netrc: false\n");
    let env = crate::credentials::env(home.path(), Some(&bare));
    let text = authproxy::explain::explain(&env, "https://localhost:8443/a").unwrap();
    assert!(text.contains("(YAML intercept names no host)"), "{text}");
    let (text, _) = authproxy::explain::check(&env);
    assert!(!text.contains("interception"), "{text}");
}

#[test]
fn bad_intercept_settings_are_errors_with_their_lines() {
    let home = tempfile::tempdir().unwrap();
    let config = crate::credentials::yaml(
        home.path(),
        "intercept:\n  - \"data.example.org\"\n  - \"https://data.example.org/path\"\n  - \"http://plain.example.org\"\n  - \"\"\nintercept_ca: { cert: ca.pem }\n",
    );
    let e = authproxy::config::load::load(&crate::credentials::env(home.path(), Some(&config)))
        .unwrap_err()
        .to_string();
    let at = |line: usize| format!("{}:{line}: ", config.display());
    assert!(
        e.contains(&format!(
            "{}intercept: a pattern names hosts, not paths",
            at(3)
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "{}intercept: an http:// pattern names no TLS connection",
            at(4)
        )),
        "{e}"
    );
    assert!(e.contains(&at(5)), "{e}");
    assert!(
        e.contains(&format!(
            "{}intercept_ca: give both cert and key, or neither",
            at(6)
        )),
        "{e}"
    );
    let config = crate::credentials::yaml(
        home.path(),
        "intercept_ca: { cert: a, key: b, name_constraints: true }\n",
    );
    let e = authproxy::config::load::load(&crate::credentials::env(home.path(), Some(&config)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("name_constraints applies to the generated CA only"),
        "{e}"
    );
    let config = crate::credentials::yaml(home.path(), "intercept_ca: { cert_file: a }\n");
    let e = authproxy::config::load::load(&crate::credentials::env(home.path(), Some(&config)))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&at(1)) && e.contains("cert_file"), "{e}");
}

#[test]
fn the_earthdata_example_config_loads_and_intercepts_the_daac_hosts() {
    let home = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/earthdata.yaml");
    let env = crate::credentials::env(home.path(), Some(&config));
    let (text, ok) = authproxy::explain::check(&env);
    assert!(ok, "{text}");
    let snap = authproxy::config::load::load(&env).unwrap();
    assert_eq!(snap.intercept.len(), 6);
    for (url, intercepted) in [
        ("https://data.lpdaac.earthdatacloud.nasa.gov/x", true),
        ("https://archive.podaac.earthdata.nasa.gov/x", true),
        ("https://goldsmr4.gesdisc.eosdis.nasa.gov/opendap/x", true),
        ("https://n5eil01u.ecs.nsidc.org/x", true),
        ("https://github.com/x", false),
    ] {
        let text = authproxy::explain::explain(&env, url).unwrap();
        assert_eq!(text.contains("\nintercepted: "), intercepted, "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reuse_the_intercepted_connection_and_an_idle_one_ends_at_shutdown() {
    let home = tempfile::tempdir().unwrap();
    let (origin, config) = trusted_origin_config(home.path(), "").await;
    let snap = snapshot(home.path(), Some(&config));
    let ca = authproxy::intercept::ca::load_or_create(&snap.intercept_ca, &snap.intercept).unwrap();
    let proxy = Proxy::start(snap).await;
    let authority = origin.to_string();
    let tls = connect_tls(proxy.addr, &authority, &ca.cert_pem)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for n in [1usize, 1000, 70_000] {
        let req = Request::get(format!("/bytes/{n}"))
            .header("host", &authority)
            .body(full(""))
            .unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let (_, body) = support::body_of(resp).await;
        assert_eq!(body.to_vec(), support::pattern_bytes(n));
    }
    // The connection is idle now; shutting down closes it without waiting for the drain.
    let started = std::time::Instant::now();
    proxy.stop().await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(
        closed.is_ok(),
        "the idle intercepted connection was not closed"
    );
}
