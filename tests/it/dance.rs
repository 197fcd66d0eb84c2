//! The Earthdata Login dance through the proxy, against the loopback world of `edl/`:
//! clients that cannot log in get the data in one request; each hop gets only its own
//! host's credentials; one login serves many clients; the jar is shared with curl.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Request;

use authproxy::session::{Jar, State};

use crate::credentials::{error_code, header, snapshot};
use crate::edl::{pattern_range, Approval, Options, Role, Serve, World};
use crate::support::{self, full, Client, Proxy};

/// The world, and the proxy set up as a user would: `.netrc` for the login host, the
/// test CA trusted for it.
async fn start(opts: Options) -> (World, Proxy, tempfile::TempDir) {
    let world = World::start(opts).await;
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    (world, proxy, home)
}

async fn fetch(
    proxy: &Proxy,
    url: &str,
    headers: &[(&str, &str)],
) -> (http::Response<()>, Vec<u8>) {
    let mut client = Client::connect(proxy.addr).await;
    let mut req = Request::get(url);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = client.send(req.body(full("")).unwrap()).await;
    let (resp, body) = support::body_of(resp).await;
    (resp, body.to_vec())
}

/// Nothing went where it does not belong: no Authorization at the data, storage or
/// decoy hosts, none over plain http, the login cookie nowhere else.
fn assert_no_leak(world: &World) {
    let leaks = world.credential_leaks();
    assert!(
        leaks.is_empty(),
        "credentials where they do not belong: {leaks:?}"
    );
    for hit in world.hits_of(Role::Login) {
        assert!(hit.tls, "the login host was asked over plain http: {hit:?}");
    }
}

/// What the login host received through the proxy: all but the data server's own code
/// exchange (`POST /oauth/token`, which it makes directly).
fn proxied_login_hits(world: &World) -> Vec<crate::edl::Hit> {
    world
        .hits_of(Role::Login)
        .into_iter()
        .filter(|h| h.path() != "/oauth/token")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_gets_the_data_and_the_next_does_not_log_in_again() {
    let (world, proxy, _home) = start(Options::default()).await;
    let (resp, body) = fetch(&proxy, &world.data_url("/granule.nc"), &[]).await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, pattern_range(0, world.options().size));
    assert_eq!(world.logins(), 1);
    assert_no_leak(&world);
    // The login host saw the password once, over TLS, after its own challenge.
    let authorized: Vec<_> = proxied_login_hits(&world)
        .into_iter()
        .filter(|h| h.authorization().is_some())
        .collect();
    assert_eq!(authorized.len(), 1, "{authorized:?}");
    let logins_before = world.count(Role::Login);
    let (resp, body) = fetch(&proxy, &world.data_url("/other.nc"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len() as u64, world.options().size);
    assert_eq!(
        world.count(Role::Login),
        logins_before,
        "the second request logged in"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_range_work_through_the_dance() {
    let (world, proxy, _home) = start(Options::default()).await;
    let (resp, body) = fetch(
        &proxy,
        &world.data_url("/r.nc"),
        &[("range", "bytes=10-19"), ("x-tool", "ncdump-4.9")],
    )
    .await;
    assert_eq!(resp.status(), 206);
    assert_eq!(body, pattern_range(10, 20));
    // The login hops were plain GETs without the Range or the tool's own headers,
    // which the data hop got.
    for hit in proxied_login_hits(&world) {
        assert_eq!(hit.method, "GET");
        assert_eq!(hit.header("range"), None);
        assert_eq!(hit.header("x-tool"), None);
    }
    let data = world.hits_of(Role::Data);
    assert_eq!(
        data.last().unwrap().header("x-tool").as_deref(),
        Some("ncdump-4.9")
    );
    // The data session ends: the dance runs again (the login host's own session, in
    // the jar, spares the password).
    world.expire_sessions();
    let visits = world.count(Role::Login);
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::head(world.data_url("/h.nc"))
        .body(full(""))
        .unwrap();
    let (resp, body) = support::body_of(client.send(req).await).await;
    assert_eq!(resp.status(), 200);
    assert!(body.is_empty());
    assert_eq!(
        header(resp.headers(), "content-length"),
        Some(world.options().size.to_string())
    );
    assert!(world.count(Role::Login) > visits, "no second dance");
    assert_eq!(world.logins(), 1);
    assert_no_leak(&world);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_hop_and_a_presigned_store_see_no_credential() {
    let opts = Options {
        decoy: true,
        serve: Serve::Presigned(303),
        ..Options::default()
    };
    let (world, proxy, _home) = start(opts).await;
    let (resp, body) = fetch(&proxy, &world.data_url("/granule.nc"), &[]).await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, pattern_range(0, world.options().size));
    assert!(world.count(Role::Decoy) >= 1);
    assert!(world.count(Role::Storage) >= 1);
    assert_no_leak(&world);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_an_explained_401_in_bounded_time() {
    let world = World::start(Options::default()).await;
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    world.netrc_with_password(home.path(), "Wr0ng-Passw0rd");
    let proxy = Proxy::start(snapshot(home.path(), Some(&config))).await;
    let started = Instant::now();
    let (resp, body) = fetch(&proxy, &world.data_url("/granule.nc"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(resp.status(), 401, "{body}");
    assert_eq!(error_code(&resp), "login_refused");
    assert!(
        body.contains(&format!("localhost:{}", world.login_port())),
        "{body}"
    );
    assert!(body.contains(".netrc:1"), "{body}");
    assert!(!body.contains("Wr0ng"));
    assert_eq!(
        world.failed_logins(),
        1,
        "the refused password was tried again"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_stick_ends_in_an_error_naming_the_hosts() {
    let opts = Options {
        session_sticks: false,
        ..Options::default()
    };
    let (world, proxy, _home) = start(opts).await;
    let started = Instant::now();
    let (resp, body) = fetch(&proxy, &world.data_url("/granule.nc"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(resp.status(), 502, "{body}");
    assert_eq!(error_code(&resp), "login_did_not_stick", "{body}");
    assert!(
        body.contains(&format!("127.0.0.1:{}", world.data_port())),
        "{body}"
    );
    assert!(
        body.contains(&format!("localhost:{}", world.login_port())),
        "{body}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_application_is_an_explained_403_never_the_page() {
    for approval in [
        Approval::HtmlPage,
        Approval::AccessDenied,
        Approval::EulaJson,
    ] {
        let opts = Options {
            approval,
            ..Options::default()
        };
        let (world, proxy, _home) = start(opts).await;
        let (resp, body) = fetch(&proxy, &world.data_url("/granule.nc"), &[]).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(resp.status(), 403, "{approval:?}: {body}");
        assert_eq!(error_code(&resp), "login_needs_browser", "{approval:?}");
        // Earthdata Login's JSON refusal names where to go; otherwise the authorize URL.
        let open = if approval == Approval::EulaJson {
            world.resolution_url()
        } else {
            format!("https://localhost:{}/oauth/authorize", world.login_port())
        };
        assert!(body.contains(&open), "{approval:?}: {body}");
        assert!(!body.contains("EULA Acceptance"), "{approval:?}: {body}");
        assert!(!body.contains("<html"), "{approval:?}: {body}");
        assert_no_leak(&world);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_first_requests_make_one_login() {
    let (world, proxy, _home) = start(Options::default()).await;
    let proxy = Arc::new(proxy);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let url = world.data_url(&format!("/c{i}.nc"));
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move { fetch(&proxy, &url, &[]).await }));
    }
    let size = world.options().size;
    for t in tasks {
        let (resp, body) = t.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body.len() as u64, size);
    }
    assert_eq!(world.logins(), 1);
    assert_no_leak(&world);
}

/// curl, wget and python3's urllib, which cannot log in, each get the exact bytes with
/// `http_proxy` set and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_wget_and_urllib_get_the_bytes() {
    let (world, proxy, _home) = start(Options::default()).await;
    let want = pattern_range(0, world.options().size);
    let dir = tempfile::tempdir().unwrap();
    let url = world.data_url("/tool.nc");
    let out = dir.path().join("out");
    let runs: Vec<(&str, Vec<String>)> = vec![
        ("curl", vec!["-s".into(), "-f".into(), "-o".into(), out.display().to_string(), url.clone()]),
        ("wget", vec!["-q".into(), "-O".into(), out.display().to_string(), url.clone()]),
        (
            "python3",
            vec![
                "-c".into(),
                format!(
                    "import urllib.request,sys; open(sys.argv[1],'wb').write(urllib.request.urlopen('{url}').read())"
                ),
                out.display().to_string(),
            ],
        ),
    ];
    for (tool, args) in runs {
        let _ = std::fs::remove_file(&out);
        let status = tokio::process::Command::new(tool)
            .args(&args)
            .env("http_proxy", proxy.url())
            .env_remove("https_proxy")
            .env_remove("no_proxy")
            .env("HOME", dir.path())
            .status();
        let status = tokio::time::timeout(Duration::from_secs(30), status)
            .await
            .expect("the tool finished")
            .unwrap();
        assert!(status.success(), "{tool}: {status}");
        assert_eq!(std::fs::read(&out).unwrap(), want, "{tool}");
    }
    assert_eq!(world.logins(), 1);
    assert_no_leak(&world);
    proxy.stop().await;
}

/// The jar survives a restart, curl reads the file the daemon wrote, and the daemon
/// reads one curl wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jar_is_shared_with_curl_and_survives_a_restart() {
    let world = World::start(Options::default()).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = world.proxy_home(h);
    let jar_path = h.join("cookies.txt");
    let run = |path: &Path| {
        let (jar, problems) = Jar::open(path);
        assert!(problems.is_empty(), "{problems:?}");
        Arc::new(State::with_jar(Arc::new(jar)))
    };
    let state = run(&jar_path);
    let proxy = Proxy::start_with_state(snapshot(h, Some(&config)), state.clone()).await;
    let (resp, _) = fetch(&proxy, &world.data_url("/a.nc"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(state.jar.save().unwrap());
    proxy.stop().await;
    assert_eq!(world.logins(), 1);

    // A restart: the jar from the file, no new login.
    let proxy = Proxy::start_with_state(snapshot(h, Some(&config)), run(&jar_path)).await;
    let (resp, _) = fetch(&proxy, &world.data_url("/b.nc"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(world.logins(), 1, "the restarted daemon logged in again");
    proxy.stop().await;

    // curl -b with the daemon's file reaches the data directly.
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-f", "-b"])
        .arg(&jar_path)
        .arg(world.data_url("/direct.nc"))
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len() as u64, world.options().size);

    // A jar curl wrote after its own dance serves the daemon.
    world.expire_sessions();
    let curl_jar = h.join("curl-cookies.txt");
    let ca = world.write_ca(h);
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-f", "-L", "--netrc-file"])
        .arg(h.join(".netrc"))
        .arg("--cacert")
        .arg(&ca)
        .arg("-c")
        .arg(&curl_jar)
        .arg("-b")
        .arg(&curl_jar)
        .arg("-o")
        .arg("/dev/null")
        .arg(world.data_url("/curl.nc"))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logins = world.logins();
    let proxy = Proxy::start_with_state(snapshot(h, Some(&config)), run(&curl_jar)).await;
    let (resp, _) = fetch(&proxy, &world.data_url("/after-curl.nc"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        world.logins(),
        logins,
        "the daemon did not use curl's session"
    );
    proxy.stop().await;
}

/// `serve` keeps the jar in the file `HTTP.COOKIEJAR` names, in curl's format, and
/// writes it at shutdown; the cookie reaches the client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_writes_the_jar_an_rc_file_names() {
    let origin = crate::support::Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::write(h.join(".daprc"), "HTTP.COOKIEJAR=~/.dods_cookies\n").unwrap();
    let mut daemon = crate::process::Daemon::start_in(h, &[], &[]);
    let mut client = Client::connect(daemon.addr.parse().unwrap()).await;
    let req = Request::get(origin.url("/set-cookie"))
        .body(full(""))
        .unwrap();
    let (resp, _) = support::body_of(client.send(req).await).await;
    assert_eq!(
        header(resp.headers(), "set-cookie").as_deref(),
        Some("daemon_session=J4r-V4lue; Path=/; Max-Age=3600")
    );
    // The next request to that host carries it.
    let (resp, _) = client.get(&origin.url("/after")).await;
    assert_eq!(resp.status(), 200);
    let after = origin
        .requests()
        .into_iter()
        .find(|r| r.target == "/after")
        .unwrap();
    assert_eq!(
        header(&after.headers, "cookie").as_deref(),
        Some("daemon_session=J4r-V4lue")
    );
    let (clean, log) = daemon.stop();
    assert!(clean, "{log}");
    assert!(!log.contains("J4r-V4lue"), "a cookie value was logged");
    let file = std::fs::read_to_string(h.join(".dods_cookies")).unwrap();
    assert!(file.starts_with("# Netscape HTTP Cookie File"), "{file}");
    let line = file
        .lines()
        .find(|l| l.ends_with("\tdaemon_session\tJ4r-V4lue"))
        .unwrap_or_else(|| panic!("no cookie line in:\n{file}"));
    assert!(line.starts_with("127.0.0.1\tFALSE\t/\tFALSE\t"), "{line}");
}

/// 307 and 308 keep the method and the body, replayed from a bounded buffer; past it the
/// client hears why instead of an empty body arriving upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_replays_a_small_body_and_explains_a_large_one() {
    let origin = crate::support::Origin::start().await;
    let (moved, _) = support::redirect_origin(307, origin.url("/echo")).await;
    let proxy = Proxy::start(authproxy::config::Snapshot::default()).await;
    let url = format!("http://127.0.0.1:{}/upload", moved.port());
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::post(&url).body(full("small-body")).unwrap();
    let (resp, body) = support::body_of(client.send(req).await).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"small-body");
    let echoed: Vec<_> = origin
        .requests()
        .into_iter()
        .filter(|r| r.target == "/echo")
        .collect();
    assert_eq!(echoed[0].method, "POST");

    let big = vec![b'x'; 4 << 20];
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::post(&url).body(full(big)).unwrap();
    let (resp, body) = support::body_of(client.send(req).await).await;
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(resp.status(), 502, "{body}");
    assert_eq!(error_code(&resp), "redirect_body_too_large", "{body}");
    proxy.stop().await;
}
