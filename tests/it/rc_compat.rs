//! rc files as netCDF users write them, through the running daemon: a dataset-URL scope
//! gets its DAP requests their credentials, `~/` paths are the daemon's home, relative paths
//! are relative to the rc file, `HTTP.SSL.CAPATH` may name a file; and ncdump itself, as the
//! client, through authproxy against a loopback DAP2 server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use authproxy::config::load::{load, Environment};
use authproxy::config::Snapshot;

use crate::support::{full, BoxBody, Ca, Client, ClientAuth, Origin, Proxy, TlsOrigin};

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, contents).unwrap();
    path
}

fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn snapshot(env: &Environment) -> Snapshot {
    load(env).unwrap_or_else(|e| panic!("the configuration does not load:\n{e}"))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn get(proxy: &Proxy, url: &str) -> (u16, String) {
    let mut client = Client::connect(proxy.addr).await;
    let (resp, body) = client.get(url).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn auth_at(origin: &Origin, target: &str) -> Option<String> {
    let all = origin.requests();
    let hit = all
        .iter()
        .find(|r| r.target == target)
        .unwrap_or_else(|| panic!("no request for {target}: {all:?}"));
    hit.headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// A YAML config that only asks for https to `localhost:port` (the rc files say the rest).
/// Rules match the URL as the client wrote it, `http://localhost:port/…`, so the rc scopes
/// below say `http://`.
fn upgrade_yaml(dir: &Path, port: u16) -> PathBuf {
    write(
        dir,
        "config.yaml",
        &format!("sites:\n  - match: \"localhost:{port}\"\n    tls: {{ upgrade: true }}\n"),
    )
}

// ---------------------------------------------------------------------------------------
// DAP suffixes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataset_url_scope_sends_credentials_with_the_dap_requests() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        ".dodsrc",
        &format!(
            "[http://127.0.0.1:{port}/protected/ds]HTTP.CREDENTIALS.USER=alice\n\
             [http://127.0.0.1:{port}/protected/ds]HTTP.CREDENTIALS.PASSWORD=Op3n-Sesame\n"
        ),
    );
    let proxy = Proxy::start(snapshot(&Environment::isolated(home.path(), None))).await;
    let want = basic("alice", "Op3n-Sesame");
    for target in [
        "/protected/ds.dds",
        "/protected/ds.das",
        "/protected/ds.dods?x%5B0:1:3%5D",
        "/protected/ds.dmr.xml",
        "/protected/ds.dap?dap4.ce=x",
    ] {
        let (status, _) = get(&proxy, &origin.url(target)).await;
        assert_eq!(status, 200, "{target}");
        assert_eq!(
            auth_at(&origin, target).as_deref(),
            Some(want.as_str()),
            "{target}"
        );
    }
    for target in ["/protected/dsx.dds", "/protected/other.das", "/protected"] {
        let (status, _) = get(&proxy, &origin.url(target)).await;
        assert_eq!(status, 200, "{target}");
        assert_eq!(auth_at(&origin, target), None, "{target}");
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// Paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tilde_netrc_path_is_found_in_the_daemons_home() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // Not ~/.netrc: only the `~/` in HTTP.NETRC can find it.
    let netrc = write(
        h,
        ".config/edl/netrc",
        "machine localhost login carol password netrc-pw\n",
    );
    private(&netrc);
    write(h, "ca.pem", &ca.pem);
    write(
        h,
        ".dodsrc",
        "HTTP.NETRC=~/.config/edl/netrc\nHTTP.SSL.CAINFO=~/ca.pem\n",
    );
    let config = upgrade_yaml(h, t);
    let env = Environment::isolated(h, Some(&config));
    let snap = snapshot(&env);
    assert!(snap.files.contains(&netrc), "{:?}", snap.files);
    assert!(
        snap.warnings.iter().any(|w| w
            .to_string()
            .contains("HTTP.NETRC: `~` is the daemon's home directory")
            && w.to_string().contains("netCDF-C 4.9 opens `./~/…`")),
        "{:?}",
        snap.warnings
    );
    let proxy = Proxy::start(snap).await;
    let (status, body) = get(&proxy, &format!("http://localhost:{t}/challenge/edl")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let seen: Vec<_> = tls
        .requests()
        .into_iter()
        .filter(|r| r.target == "/challenge/edl")
        .collect();
    // The .netrc password answers the host's 401 challenge.
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1]
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap()),
        Some(basic("carol", "netrc-pw").as_str())
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_are_relative_to_the_rc_file_not_the_working_directory() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "certs/ca.pem", &ca.pem);
    write(
        h,
        ".daprc",
        &format!("[http://localhost:{t}/data]HTTP.SSL.CAINFO=certs/ca.pem\n"),
    );
    let config = upgrade_yaml(h, t);
    let mut env = Environment::isolated(h, Some(&config));
    // The daemon's working directory is somewhere else (`/` under systemd).
    env.rc.cwd = Some(elsewhere.path().to_path_buf());
    let snap = snapshot(&env);
    assert!(snap.unusable.is_empty(), "{:?}", snap.unusable);
    assert!(
        snap.files.contains(&h.join("certs/ca.pem")),
        "{:?}",
        snap.files
    );
    let proxy = Proxy::start(snap).await;
    let (status, body) = get(&proxy, &format!("http://localhost:{t}/data/f.nc")).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    assert_eq!(
        tls.requests()
            .iter()
            .filter(|r| r.target == "/data/f.nc")
            .count(),
        1
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// HTTP.SSL.CAPATH naming a file

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capath_naming_a_file_is_a_ca_file_and_an_unusable_ca_is_a_warning_without_verification() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // As the ESGF user guide has it: CAPATH names the bundle file.
    write(h, ".esg/credentials.pem", &ca.pem);
    write(h, ".esg/broken.pem", "not a certificate\n");
    write(
        h,
        ".dodsrc",
        &format!(
            "[http://localhost:{t}/verified]HTTP.SSL.CAPATH=~/.esg/credentials.pem\n\
             [http://localhost:{t}/verified]HTTP.SSL.VALIDATE=1\n\
             [http://localhost:{t}/off]HTTP.SSL.CAPATH=~/.esg/credentials.pem\n\
             [http://localhost:{t}/off]HTTP.SSL.VALIDATE=0\n\
             [http://localhost:{t}/broken-off]HTTP.SSL.CAPATH=~/.esg/broken.pem\n\
             [http://localhost:{t}/broken-off]HTTP.SSL.VALIDATE=0\n\
             [http://localhost:{t}/missing-off]HTTP.SSL.CAPATH=~/.esg/certificates\n\
             [http://localhost:{t}/missing-off]HTTP.SSL.VALIDATE=0\n"
        ),
    );
    let config = upgrade_yaml(h, t);
    let env = Environment::isolated(h, Some(&config));

    // `check` accepts it: warnings only.
    let (report, ok) = authproxy::explain::check(&env);
    assert!(ok, "{report}");
    assert!(
        report.contains(
            "HTTP.SSL.CAPATH names a file, not a directory of certificates; read as a CA file"
        ),
        "{report}"
    );
    assert!(
        report.contains("not used: TLS verification is off"),
        "{report}"
    );
    // VALIDATE=0 turns off both checks: one warning, not one per check.
    let off = ".dodsrc:4: TLS verification is off for the hosts of this line;";
    assert_eq!(report.matches(off).count(), 1, "{report}");

    let snap = snapshot(&env);
    assert!(snap.unusable.is_empty(), "{:?}", snap.unusable);
    let proxy = Proxy::start(snap).await;
    for path in ["/verified/a", "/off/a", "/broken-off/a", "/missing-off/a"] {
        let (status, body) = get(&proxy, &format!("http://localhost:{t}{path}")).await;
        assert_eq!((status, body.as_str()), (200, "ok"), "{path}");
        assert_eq!(
            tls.requests().iter().filter(|r| r.target == path).count(),
            1,
            "{path}"
        );
    }
    proxy.stop().await;

    // With verification on, a broken CA still makes the scope unusable (never silently
    // unverified).
    write(
        h,
        ".dodsrc",
        &format!("[http://localhost:{t}/broken-on]HTTP.SSL.CAPATH=~/.esg/broken.pem\n"),
    );
    let snap = snapshot(&env);
    assert_eq!(snap.unusable.len(), 1, "{:?}", snap.unusable);
    let proxy = Proxy::start(snap).await;
    let (status, _) = get(&proxy, &format!("http://localhost:{t}/broken-on/a")).await;
    assert_eq!(status, 502);
    assert!(!tls.requests().iter().any(|r| r.target == "/broken-on/a"));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// ncdump, end to end

const DDS: &str = "Dataset {\n    Int32 x[x = 4];\n} ds;\n";
const DAS: &str = "Attributes {\n    x {\n        String units \"m\";\n    }\n}\n";

/// Every request a [`dap2_origin`] saw: its target and its Authorization header.
type DapSeen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A DAP2 server on 127.0.0.1:0 for the dataset `/protected/ds`: `.dds` and `.das` answer
/// with minimal DAP2 text when Basic `user:password` is sent, else 401. Records every
/// request's target and Authorization. Over TLS with a `server_ca` certificate for
/// `localhost` when given one.
async fn dap2_origin(user: &str, password: &str, server_ca: Option<&Ca>) -> (SocketAddr, DapSeen) {
    let acceptor = server_ca.map(|ca| {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let server = ca.server();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der)],
            PrivateKeyDer::Pkcs8(server.key_der.into()),
        )
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: DapSeen = Arc::default();
    let want = Arc::new(basic(user, password));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let seen = seen2.clone();
            let want = want.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    seen.lock()
                        .unwrap()
                        .push((req.uri().to_string(), auth.clone()));
                    let path = req.uri().path().to_owned();
                    let authorized = auth.as_deref() == Some(want.as_str());
                    let body = match path.as_str() {
                        "/protected/ds.dds" => Some(DDS),
                        "/protected/ds.das" => Some(DAS),
                        _ => None,
                    };
                    let resp: Response<BoxBody> = match (authorized, body) {
                        (false, _) => Response::builder()
                            .status(401)
                            .header("www-authenticate", "Basic realm=\"dap\"")
                            .body(full("unauthorized"))
                            .unwrap(),
                        (true, Some(text)) => Response::builder()
                            .header("content-type", "text/plain")
                            .header("content-description", "dods-dds")
                            .header("xdods-server", "dods/3.2")
                            .header("xdap", "2.0")
                            .body(full(text))
                            .unwrap(),
                        (true, None) => Response::builder()
                            .status(404)
                            .body(full("no such dataset"))
                            .unwrap(),
                    };
                    async move { Ok::<_, Infallible>(resp) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    None => {
                        let _ = http.serve_connection(TokioIo::new(sock), svc).await;
                    }
                    Some(acceptor) => {
                        let accepted =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock));
                        if let Ok(Ok(tls)) = accepted.await {
                            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Runs `ncdump -h url` with `http_proxy` set to `proxy`, reading no rc file and no netrc of
/// its own (an empty HOME and NCRCENV_IGNORE), bounded to 60 s. Fails, never skips, when
/// ncdump is not installed.
async fn ncdump_h(proxy: &Proxy, url: &str) -> (std::process::Output, tempfile::TempDir) {
    let client_home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new("ncdump");
    cmd.arg("-h")
        .arg(url)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", client_home.path())
        .env("NCRCENV_IGNORE", "1")
        .env("http_proxy", proxy.url())
        .current_dir(client_home.path())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("ncdump finished within 60 s")
        .expect("ncdump runs (scripts/install-deps installs netcdf-bin)");
    (out, client_home)
}

/// ncdump exited 0, printed the header, and every `.dds`/`.das` request the origin saw
/// (there must be some) carried `want`, except a first one answered with a challenge when
/// `challenged` (a `.netrc` password goes only where it is asked for).
fn assert_ncdump_read_the_header(out: &std::process::Output, seen: &DapSeen, want: &str) {
    assert_ncdump_read(out, seen, want, false)
}

fn assert_ncdump_read(out: &std::process::Output, seen: &DapSeen, want: &str, challenged: bool) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let requests = seen.lock().unwrap().clone();
    assert!(
        out.status.success(),
        "ncdump failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\norigin saw: {requests:?}",
        out.status
    );
    for suffix in [".dds", ".das"] {
        let target = format!("/protected/ds{suffix}");
        let hits: Vec<_> = requests
            .iter()
            .filter(|(t, _)| t.split('?').next() == Some(target.as_str()))
            .collect();
        assert!(!hits.is_empty(), "no {target} request: {requests:?}");
        // Challenged: each request is asked for the password once, then carries it.
        let sent = hits.iter().filter(|(_, a)| a.is_some()).count();
        let unsent = hits.len() - sent;
        assert!(
            hits.iter()
                .all(|(_, a)| a.is_none() || a.as_deref() == Some(want))
                && sent > 0
                && if challenged {
                    unsent == sent
                } else {
                    unsent == 0
                },
            "{target} without the credentials: {requests:?}"
        );
    }
    // ncdump printed the header it read through authproxy.
    assert!(stdout.contains("x = 4 ;"), "{stdout}");
    assert!(stdout.contains("x:units = \"m\" ;"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncdump_through_authproxy_gets_the_dataset_scope_credentials() {
    let (origin, seen) = dap2_origin("alice", "Op3n-Sesame", None).await;
    let port = origin.port();
    // authproxy's HOME holds the rc file, written as a netCDF user writes it.
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        ".dodsrc",
        &format!(
            "[http://127.0.0.1:{port}/protected/ds]HTTP.CREDENTIALS.USER=alice\n\
             [http://127.0.0.1:{port}/protected/ds]HTTP.CREDENTIALS.PASSWORD=Op3n-Sesame\n"
        ),
    );
    let proxy = Proxy::start(snapshot(&Environment::isolated(home.path(), None))).await;
    let url = format!("http://127.0.0.1:{port}/protected/ds");
    let (out, _client_home) = ncdump_h(&proxy, &url).await;
    assert_ncdump_read_the_header(&out, &seen, &basic("alice", "Op3n-Sesame"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ncdump_through_authproxy_gets_a_password_from_a_tilde_netrc_path() {
    let ca = Ca::new("authproxy test CA");
    let (origin, seen) = dap2_origin("carol", "netrc-pw", Some(&ca)).await;
    let t = origin.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // The netrc is where only `~/` in HTTP.NETRC finds it; the YAML config asks for https
    // (netrc passwords go only over verified TLS) and the rc file names the CA.
    let netrc = write(
        h,
        ".config/edl/netrc",
        "machine localhost login carol password netrc-pw\n",
    );
    private(&netrc);
    write(h, "ca.pem", &ca.pem);
    write(
        h,
        ".dodsrc",
        "HTTP.NETRC=~/.config/edl/netrc\nHTTP.SSL.CAINFO=~/ca.pem\n",
    );
    let config = upgrade_yaml(h, t);
    let proxy = Proxy::start(snapshot(&Environment::isolated(h, Some(&config)))).await;
    let url = format!("http://localhost:{t}/protected/ds");
    let (out, _client_home) = ncdump_h(&proxy, &url).await;
    assert_ncdump_read(&out, &seen, &basic("carol", "netrc-pw"), true);
    proxy.stop().await;
}
