//! Issue 12, credential safety: no credential reaches a host its owner did not name.
//! Real configuration files in a temporary HOME, the daemon in-process, and loopback
//! origins that record what they received; every secret is recognisable so that a
//! leak shows.

use std::path::{Path, PathBuf};

use base64::Engine;
use http::{HeaderMap, Request, Response};

use authproxy::config::load::{load, Environment};
use authproxy::config::Snapshot;

use crate::support::{self, full, Ca, Client, ClientAuth, Origin, Proxy, TlsOrigin};

fn snapshot(home: &Path, config: Option<&Path>) -> Snapshot {
    load(&Environment::isolated(home, config))
        .unwrap_or_else(|e| panic!("the configuration does not load:\n{e}"))
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// A `.netrc` only its owner may read (no permission warning to wade through).
fn write_netrc(dir: &Path, name: &str, contents: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = write(dir, name, contents);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    assert!(values.next().is_none(), "{name} sent more than once");
    Some(first.to_str().unwrap().to_owned())
}

async fn get(proxy: &Proxy, url: &str) -> (Response<()>, String) {
    let mut client = Client::connect(proxy.addr).await;
    let resp = client.send(Request::get(url).body(full("")).unwrap()).await;
    let (resp, body) = support::body_of(resp).await;
    (resp, String::from_utf8_lossy(&body).into_owned())
}

/// The `Authorization` of the only request `origin` saw for `target`.
/// The credential that reached `target` (a `/challenge` route): none on the first
/// request; the one that answered the 401 on the second, if there was one.
fn tls_authorization(origin: &TlsOrigin, target: &str) -> Option<String> {
    let all = origin.requests();
    let hits: Vec<_> = all.iter().filter(|r| r.target == target).collect();
    assert!(
        (1..=2).contains(&hits.len()),
        "requests for {target}: {:?}",
        all.iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    assert_eq!(
        header(&hits[0].headers, "authorization"),
        None,
        "preemptive"
    );
    hits.get(1)
        .and_then(|r| header(&r.headers, "authorization"))
}

fn authorization(origin: &Origin, target: &str) -> Option<String> {
    let all = origin.requests();
    let hits: Vec<_> = all.iter().filter(|r| r.target == target).collect();
    assert_eq!(hits.len(), 1, "requests for {target}: {all:?}");
    header(&hits[0].headers, "authorization")
}

/// A verified TLS origin reachable as `localhost:T` and `127.0.0.1:T` (both upgraded
/// from http by YAML sites), and the YAML text for them plus `extra` top-level lines.
async fn tls_setup(home: &Path, extra: &str) -> (TlsOrigin, PathBuf) {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    write(home, "ca.pem", &ca.pem);
    let t = tls.port();
    let config = write(
        home,
        "config.yaml",
        &format!(
            "{extra}sites:\n\
             \x20 - match: \"localhost:{t}\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: \"127.0.0.1:{t}\"\n\
             \x20   tls: {{ upgrade: true, ca: ca.pem }}\n"
        ),
    );
    (tls, config)
}

// ---------------------------------------------------------------------------------------
// 1. The `.netrc` `default` entry

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netrc_default_entry_is_sent_nowhere_unless_opted_in() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_netrc(h, ".netrc", "default login anon password default-SECRET\n");
    let (tls, config) = tls_setup(h, "").await;
    let t = tls.port();
    // A same-host redirect from plain http to the https origin is followed inside.
    let (redirect, _) =
        support::redirect_origin(302, format!("https://localhost:{t}/challenge/landing")).await;
    let snap = snapshot(h, Some(&config));
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.to_string().contains(".netrc:1:")
                && w.to_string().contains("netrc_default: true")),
        "{:?}",
        snap.warnings
    );
    let proxy = Proxy::start(snap).await;

    let (resp, body) = get(&proxy, &format!("http://localhost:{t}/challenge/direct")).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (401, "who are you?")
    );
    assert_eq!(tls_authorization(&tls, "/challenge/direct"), None);
    let (resp, body) = get(
        &proxy,
        &format!("http://localhost:{}/start", redirect.port()),
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (401, "who are you?"),
        "{body}"
    );
    assert_eq!(tls_authorization(&tls, "/challenge/landing"), None);
    proxy.stop().await;

    // `netrc_default: true` opts back in: the same requests now carry it.
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_netrc(h, ".netrc", "default login anon password default-SECRET\n");
    let (tls, config) = tls_setup(h, "netrc_default: true\n").await;
    let t = tls.port();
    let (redirect, _) =
        support::redirect_origin(302, format!("https://localhost:{t}/challenge/landing")).await;
    let snap = snapshot(h, Some(&config));
    assert!(!snap
        .warnings
        .iter()
        .any(|w| w.to_string().contains("netrc_default")));
    let proxy = Proxy::start(snap).await;
    let want = basic("anon", "default-SECRET");
    get(&proxy, &format!("http://localhost:{t}/challenge/direct")).await;
    assert_eq!(
        tls_authorization(&tls, "/challenge/direct").as_deref(),
        Some(&*want)
    );
    get(
        &proxy,
        &format!("http://localhost:{}/start", redirect.port()),
    )
    .await;
    assert_eq!(
        tls_authorization(&tls, "/challenge/landing").as_deref(),
        Some(&*want)
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// 2. Partial `machine` entries

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_netrc_entry_gives_nothing_and_is_not_completed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // localhost: a login without a password, then a full entry and a default that a
    // lookup going on past the partial entry would find. 127.0.0.1: a password alone.
    write_netrc(
        h,
        ".netrc",
        "machine localhost login lonely\n\
         machine localhost login later password later-SECRET\n\
         machine 127.0.0.1 password alone-SECRET\n\
         default login anon password default-SECRET\n",
    );
    let (tls, config) = tls_setup(h, "netrc_default: true\n").await;
    let t = tls.port();
    let snap = snapshot(h, Some(&config));
    let netrc = h.join(".netrc");
    for (line, text) in [(1, "no `password`"), (3, "no `login`")] {
        let at = format!("{}:{line}:", netrc.display());
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.to_string().starts_with(&at) && w.to_string().contains(text)),
            "{at} {text}: {:?}",
            snap.warnings
        );
    }
    assert!(!format!("{:?}", snap.warnings).contains("SECRET"));
    let proxy = Proxy::start(snap).await;

    for (host, path) in [
        ("localhost", "/challenge/login-only"),
        ("127.0.0.1", "/challenge/password-only"),
    ] {
        let (resp, body) = get(&proxy, &format!("http://{host}:{t}{path}")).await;
        assert_eq!(
            (resp.status().as_u16(), body.as_str()),
            (401, "who are you?")
        );
        assert_eq!(tls_authorization(&tls, path), None, "{host}");
    }
    proxy.stop().await;

    // The same setup with complete entries sends them (the test can fail).
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write_netrc(
        h,
        ".netrc",
        "machine localhost login lonely password lonely-SECRET\n",
    );
    let (tls, config) = tls_setup(h, "").await;
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    get(
        &proxy,
        &format!("http://localhost:{}/challenge/full", tls.port()),
    )
    .await;
    assert_eq!(
        tls_authorization(&tls, "/challenge/full").as_deref(),
        Some(&*basic("lonely", "lonely-SECRET"))
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// 3. A scoped `HTTP.NETRC`

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_http_netrc_reaches_only_its_scope() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let (tls, config) = tls_setup(h, "").await;
    let t = tls.port();
    // The scoped file also has an entry for 127.0.0.1, outside its scope.
    let scoped = write_netrc(
        h,
        "scoped.netrc",
        "machine localhost login scoped password scoped-SECRET\n\
         machine 127.0.0.1 login scoped password scoped-SECRET\n",
    );
    write_netrc(
        h,
        ".netrc",
        "machine 127.0.0.1 login global password global-SECRET\n",
    );
    write(
        h,
        ".daprc",
        &format!("[localhost:{t}]HTTP.NETRC={}\n", scoped.display()),
    );
    let snap = snapshot(h, Some(&config));
    assert!(snap.files.contains(&scoped) && snap.watch.contains(&scoped));
    let proxy = Proxy::start(snap).await;

    get(&proxy, &format!("http://localhost:{t}/challenge/in-scope")).await;
    assert_eq!(
        tls_authorization(&tls, "/challenge/in-scope").as_deref(),
        Some(&*basic("scoped", "scoped-SECRET"))
    );
    let (resp, body) = get(
        &proxy,
        &format!("http://127.0.0.1:{t}/challenge/out-of-scope"),
    )
    .await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
    assert_eq!(
        tls_authorization(&tls, "/challenge/out-of-scope").as_deref(),
        Some(&*basic("global", "global-SECRET"))
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// 7. Presigned URLs with percent-encoded parameter names

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_not_sent_to_percent_encoded_presigned_url() {
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "tok", "bearer-SECRET\n");
    let config = write(
        h,
        "config.yaml",
        &format!(
            "sites:\n  - match: \"127.0.0.1:{}\"\n    bearer: {{ token_file: tok }}\n",
            origin.addr.port()
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    let presigned = "/bucket/obj.nc?X%2DAmz%2DSignature=abc123&x-amz-date=20260101";
    let (resp, _) = get(&proxy, &origin.url(presigned)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(authorization(&origin, presigned), None);

    // The same host without a signature gets the token.
    let (resp, _) = get(&proxy, &origin.url("/bucket/obj.nc?part=1")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        authorization(&origin, "/bucket/obj.nc?part=1").as_deref(),
        Some("Bearer bearer-SECRET")
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// 8. `no_proxy: ["*"]`

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_star_bypasses_the_upstream_proxy_for_every_host() {
    let origin = Origin::start().await;
    let up = support::UpstreamTestProxy::start(None).await;
    for (no_proxy, via_proxy) in [("[\"*\"]", false), ("[\"*.example.org\"]", true)] {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let config = write(
            h,
            "config.yaml",
            &format!(
                "upstream_proxy: http://127.0.0.1:{}\nno_proxy: {no_proxy}\n",
                up.addr.port()
            ),
        );
        let proxy = Proxy::start(snapshot(h, Some(&config))).await;
        let before = up.requests().len();
        let path = format!("/np-{}", via_proxy);
        let (resp, body) = get(&proxy, &origin.url(&path)).await;
        assert_eq!((resp.status().as_u16(), body.as_str()), (200, "ok"));
        let through = up.requests().len() - before;
        assert_eq!(through, usize::from(via_proxy), "no_proxy: {no_proxy}");
        assert_eq!(
            origin
                .requests()
                .iter()
                .filter(|r| r.target == path)
                .count(),
            1
        );
        proxy.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// 4. rc files in the working directory

/// HOME and the working directory are different directories; `uid` is the daemon's.
fn env_with_cwd(home: &Path, cwd: &Path, uid: u32) -> Environment {
    let mut env = Environment::isolated(home, None);
    env.rc.cwd = Some(cwd.to_path_buf());
    env.rc.uid = Some(uid);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc_file_in_working_directory_of_another_user_is_not_read() {
    use std::os::unix::fs::MetadataExt;
    let origin = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let p = origin.addr.port();
    let rc = write(
        cwd.path(),
        ".daprc",
        &format!(
            "[127.0.0.1:{p}]HTTP.CREDENTIALS.USERNAME=planted\n\
             [127.0.0.1:{p}]HTTP.CREDENTIALS.PASSWORD=cwd-SECRET\n"
        ),
    );
    let owner = std::fs::metadata(&rc).unwrap().uid();

    // The daemon runs as someone else than the file's owner: the file is skipped, with
    // a warning naming it, and the request goes out without the planted credential.
    let snap = load(&env_with_cwd(
        home.path(),
        cwd.path(),
        owner.wrapping_add(1),
    ))
    .unwrap();
    assert!(
        snap.warnings.iter().any(
            |w| w.to_string().starts_with(&format!("{}: ", rc.display()))
                && w.to_string().contains("skipped")
        ),
        "{:?}",
        snap.warnings
    );
    assert!(!snap.files.contains(&rc));
    assert!(!format!("{:?}", snap.warnings).contains("SECRET"));
    let proxy = Proxy::start(snap).await;
    let (resp, _) = get(&proxy, &origin.url("/foreign")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(authorization(&origin, "/foreign"), None);
    proxy.stop().await;

    // Run as its owner, the same file is read.
    let snap = load(&env_with_cwd(home.path(), cwd.path(), owner)).unwrap();
    assert!(snap.files.contains(&rc));
    let proxy = Proxy::start(snap).await;
    get(&proxy, &origin.url("/own")).await;
    assert_eq!(
        authorization(&origin, "/own").as_deref(),
        Some(&*basic("planted", "cwd-SECRET"))
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------
// 5. FIFOs and oversized files

/// `load` on another thread; panics if it does not return within 10 s.
fn load_promptly(env: Environment) -> Result<Snapshot, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(load(&env).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the load returned within 10 s")
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn netrc_or_rc_file_that_is_a_fifo_fails_the_load_promptly() {
    // .netrc as a FIFO.
    let home = tempfile::tempdir().unwrap();
    let netrc = home.path().join(".netrc");
    mkfifo(&netrc);
    let e = load_promptly(Environment::isolated(home.path(), None)).unwrap_err();
    assert!(
        e.contains(&netrc.display().to_string()) && e.contains("not a regular file"),
        "{e}"
    );

    // An rc file as a FIFO (HOME's own, so it is not skipped as untrusted).
    let home = tempfile::tempdir().unwrap();
    let rc = home.path().join(".dodsrc");
    mkfifo(&rc);
    let e = load_promptly(Environment::isolated(home.path(), None)).unwrap_err();
    assert!(
        e.contains(&rc.display().to_string()) && e.contains("not a regular file"),
        "{e}"
    );
}

#[test]
fn oversized_netrc_or_rc_file_fails_the_load_naming_it() {
    let big = format!(
        "machine a.example login a password big-SECRET\n{}",
        "#\n".repeat(600 * 1024)
    );
    let home = tempfile::tempdir().unwrap();
    let netrc = write_netrc(home.path(), ".netrc", &big);
    let e = load_promptly(Environment::isolated(home.path(), None)).unwrap_err();
    assert!(
        e.contains(&netrc.display().to_string()) && e.contains("larger than 1 MiB"),
        "{e}"
    );
    assert!(!e.contains("SECRET"));

    let home = tempfile::tempdir().unwrap();
    let rc = write(home.path(), ".daprc", &"# comment\n".repeat(120 * 1024));
    let e = load_promptly(Environment::isolated(home.path(), None)).unwrap_err();
    assert!(
        e.contains(&rc.display().to_string()) && e.contains("larger than 1 MiB"),
        "{e}"
    );
}
