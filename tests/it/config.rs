//! Configuration sources through the running daemon: rc files and hot reload, and the
//! `check` / `explain` commands.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use authproxy::config::load::{self, Environment};
use authproxy::reload::Reloader;
use authproxy::{Daemon, Tuning};

use crate::support::{Client, Origin};

fn env_in(home: &Path, config: Option<PathBuf>) -> Environment {
    Environment::isolated(home, config.as_deref())
}

/// The daemon with its reloader, in-process.
struct Running {
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    _reloader: Reloader,
}

async fn start(env: Environment) -> Running {
    let snapshot = load::load(&env).expect("configuration loads");
    let handle = snapshot.into_handle();
    let reloader = Reloader::start(env, handle.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    let daemon = Daemon::new(handle, &Tuning::default());
    tokio::spawn(daemon.run(vec![listener], rx, Duration::from_secs(1)));
    Running {
        addr,
        stop,
        _reloader: reloader,
    }
}

/// The Authorization header the origin saw on its last request.
fn last_auth(origin: &Origin) -> Option<String> {
    origin.requests().last().and_then(|r| {
        r.headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    })
}

fn basic(user: &str, pw: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn rc_for(origin: &Origin, user: &str, pw: &str) -> String {
    let port = origin.addr.port();
    format!(
        "# credentials for the test origin\n\
         [127.0.0.1:{port}]HTTP.CREDENTIALS.USERNAME={user}\n\
         [127.0.0.1:{port}]HTTP.CREDENTIALS.PASSWORD={pw}\n"
    )
}

/// Polls `check` every 50 ms for up to `limit`; returns how long it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc_credentials_reach_their_host_only_and_follow_edits() {
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let other = Origin::start().await;
    let rc = home.path().join(".daprc");
    std::fs::write(&rc, rc_for(&origin, "alice", "first-pw")).unwrap();
    let daemon = start(env_in(home.path(), None)).await;
    let mut client = Client::connect(daemon.addr).await;

    let (resp, _) = client.get(&origin.url("/a")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        last_auth(&origin).as_deref(),
        Some(basic("alice", "first-pw").as_str())
    );
    let (resp, _) = client.get(&other.url("/a")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(last_auth(&other), None, "the password went to another port");

    // Edit in place: in effect within 2 s.
    std::fs::write(&rc, rc_for(&origin, "alice", "second-pw")).unwrap();
    let want = basic("alice", "second-pw");
    let took = within(Duration::from_secs(2), async || {
        let mut c = Client::connect(daemon.addr).await;
        c.get(&origin.url("/b")).await;
        last_auth(&origin).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(
        took.is_some(),
        "an in-place edit was not in effect within 2 s"
    );

    // Replace by atomic rename, as editors and config managers do.
    let tmp = home.path().join(".daprc.tmp");
    std::fs::write(&tmp, rc_for(&origin, "bob", "third-pw")).unwrap();
    std::fs::rename(&tmp, &rc).unwrap();
    let want = basic("bob", "third-pw");
    let took = within(Duration::from_secs(2), async || {
        let mut c = Client::connect(daemon.addr).await;
        c.get(&origin.url("/c")).await;
        last_auth(&origin).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(took.is_some(), "a rename was not in effect within 2 s");

    // A broken edit is rejected whole: the old credentials keep being sent.
    std::fs::write(
        &rc,
        format!(
            "{}[127.0.0.1]HTTP.SSL.VERIFYPEER=maybe\n",
            rc_for(&origin, "mallory", "broken-pw")
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = Client::connect(daemon.addr).await;
    c.get(&origin.url("/d")).await;
    assert_eq!(
        last_auth(&origin).as_deref(),
        Some(basic("bob", "third-pw").as_str())
    );
    let _ = daemon.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rc_file_created_after_start_is_picked_up() {
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let daemon = start(env_in(home.path(), None)).await;
    let mut client = Client::connect(daemon.addr).await;
    client.get(&origin.url("/before")).await;
    assert_eq!(last_auth(&origin), None);

    std::fs::write(
        home.path().join(".dodsrc"),
        rc_for(&origin, "carol", "new-pw"),
    )
    .unwrap();
    let want = basic("carol", "new-pw");
    let took = within(Duration::from_secs(2), async || {
        let mut c = Client::connect(daemon.addr).await;
        c.get(&origin.url("/after")).await;
        last_auth(&origin).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(
        took.is_some(),
        "a new ~/.dodsrc was not picked up within 2 s"
    );
    let _ = daemon.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_yaml_edit_keeps_the_old_config() {
    let home = tempfile::tempdir().unwrap();
    let origin = Origin::start().await;
    let config = home.path().join("config.yaml");
    let pw = home.path().join("pw");
    std::fs::write(&pw, "yaml-pw\n").unwrap();
    let good = format!(
        "sites:\n  - match: \"127.0.0.1:{}\"\n    basic: {{ username: dave, password_file: pw }}\n",
        origin.addr.port()
    );
    std::fs::write(&config, &good).unwrap();
    let daemon = start(env_in(home.path(), Some(config.clone()))).await;
    let mut client = Client::connect(daemon.addr).await;
    client.get(&origin.url("/1")).await;
    assert_eq!(
        last_auth(&origin).as_deref(),
        Some(basic("dave", "yaml-pw").as_str())
    );

    // A misspelt key: rejected, the old snapshot keeps serving.
    std::fs::write(&config, good.replace("password_file", "pasword_file")).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = Client::connect(daemon.addr).await;
    c.get(&origin.url("/2")).await;
    assert_eq!(
        last_auth(&origin).as_deref(),
        Some(basic("dave", "yaml-pw").as_str())
    );

    // The secret file changes: the new password is in effect within 2 s.
    std::fs::write(&config, &good).unwrap();
    std::fs::write(&pw, "rotated-pw\n").unwrap();
    let want = basic("dave", "rotated-pw");
    let took = within(Duration::from_secs(2), async || {
        let mut c = Client::connect(daemon.addr).await;
        c.get(&origin.url("/3")).await;
        last_auth(&origin).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(
        took.is_some(),
        "a rotated password_file was not in effect within 2 s"
    );
    let _ = daemon.stop.send(true);
}

/// Runs the binary with HOME set to `home` and no inherited configuration.
fn cli(home: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authproxy"))
        .args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env_remove("AUTHPROXY_CONFIG")
        .env_remove("NETRC")
        .env_remove("DAPRCFILE")
        .env_remove("NCRCENV_RC")
        .env_remove("NCRCENV_HOME")
        .env_remove("NCRCENV_IGNORE")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_and_explain_show_sources_but_never_secrets() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::write(
        h.join(".daprc"),
        "[data.example.org]HTTP.CREDENTIALS.USERPASSWORD=rcuser:Rc-Secret%2142\n\
         [https://esg.example.org/thredds]HTTP.CREDENTIALS.USERNAME=esguser\n\
         [https://esg.example.org/thredds]HTTP.CREDENTIALS.PASSWORD=Esg-Secret-77\n\
         HTTP.PROXY.SERVER=http://pu:Proxy-Secret-31@127.0.0.1:3129\n\
         HTTP.USERAGENT=ncdump\n",
    )
    .unwrap();
    std::fs::write(
        h.join(".netrc"),
        "machine urs.example.org login edl password Netrc-Secret-55\n",
    )
    .unwrap();
    std::fs::set_permissions(
        h.join(".netrc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::create_dir_all(h.join(".config/authproxy")).unwrap();
    std::fs::write(h.join("token"), "Bearer-Secret-88\n").unwrap();
    std::fs::write(
        h.join(".config/authproxy/config.yaml"),
        format!(
            "no_proxy: [localhost]\nsites:\n  - match: cmr.example.org\n    name: cmr\n    bearer: {{ token_file: {} }}\n    headers: {{ X-Key: {{ value_file: {} }} }}\n",
            h.join("token").display(),
            h.join("token").display()
        ),
    )
    .unwrap();
    let secrets = [
        "Rc-Secret",
        "Esg-Secret-77",
        "Proxy-Secret-31",
        "Netrc-Secret-55",
        "Bearer-Secret-88",
    ];

    let (code, out, err) = cli(h, &["check"]);
    assert_eq!(code, 0, "{out}{err}");
    for needle in [
        ".daprc:1",
        ".daprc:2",
        ".netrc:1",
        "config.yaml:3",
        "sites[0] cmr",
        "esguser",
        "HTTP.USERAGENT",
    ] {
        assert!(out.contains(needle), "check lacks {needle}:\n{out}");
    }
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "check printed {s}:\n{out}{err}"
        );
    }

    for url in [
        "http://data.example.org/x.nc",
        "http://esg.example.org/thredds/a",
        "https://esg.example.org/thredds/a",
        "http://urs.example.org/",
        "http://cmr.example.org/search?token=abc",
        "http://localhost/",
    ] {
        let (code, out, err) = cli(h, &["explain", url]);
        assert_eq!(code, 0, "{url}: {out}{err}");
        for s in secrets {
            assert!(
                !out.contains(s) && !err.contains(s),
                "explain {url} printed {s}:\n{out}{err}"
            );
        }
    }
    let (_, out, _) = cli(h, &["explain", "http://data.example.org/x.nc"]);
    assert!(out.contains("Basic, user \"rcuser\""), "{out}");
    assert!(
        out.contains("via: upstream proxy http://pu:***@127.0.0.1:3129"),
        "{out}"
    );
    let (_, out, _) = cli(h, &["explain", "http://localhost/"]);
    assert!(out.contains("via: direct"), "no_proxy ignored:\n{out}");
    let (_, out, _) = cli(h, &["explain", "http://cmr.example.org/search"]);
    assert!(
        out.contains("Bearer ***") && out.contains("header: x-key: ***"),
        "{out}"
    );
}

#[test]
fn check_reports_every_error_with_its_line_and_exits_1() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::write(h.join(".daprc"), "HTTP.SSL.VERIFYPEER=perhaps\n").unwrap();
    let config = h.join("bad.yaml");
    std::fs::write(
        &config,
        "sites:\n  - match: a.example.org\n    basic: { username: u, pasword_file: pw }\n  - match: b.example.org\n    tls: { client_cert: /nonexistent/cert.pem }\n",
    )
    .unwrap();
    let (code, out, _) = cli(h, &["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("bad.yaml:3") && out.contains("pasword_file"),
        "{out}"
    );
    assert!(
        out.contains(".daprc:1") && out.contains("HTTP.SSL.VERIFYPEER"),
        "{out}"
    );
    assert!(!out.contains("perhaps"), "a value was echoed:\n{out}");

    // serve refuses to start on a broken configuration, with the same explanation.
    let (code, _, err) = cli(
        h,
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("pasword_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_breaks_a_working_certificate_is_rejected() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let ca = crate::support::Ca::new("reload CA");
    let alice = ca.client("alice");
    std::fs::write(h.join("alice.crt"), &alice.cert_pem).unwrap();
    std::fs::write(h.join("alice.key"), &alice.key_pem).unwrap();
    let config = h.join("config.yaml");
    std::fs::write(
        &config,
        "sites:\n  - match: data.example.org\n    tls: { client_cert: alice.crt, client_key: alice.key }\n",
    )
    .unwrap();
    let env = env_in(h, Some(config.clone()));
    let handle = load::load(&env).unwrap().into_handle();
    let _reloader = Reloader::start(env, handle.clone());
    let has_identity = |h: &authproxy::config::SnapshotHandle| {
        h.load().sites[0].tls.identity.is_some() && h.load().unusable.is_empty()
    };
    assert!(has_identity(&handle));

    // The key file is clobbered: the reload is rejected, the working identity stays.
    std::fs::write(h.join("alice.key"), "not a key\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(has_identity(&handle), "a broken key replaced a working one");

    // Fixing the key (together with another edit) is accepted.
    std::fs::write(h.join("alice.key"), &alice.key_pem).unwrap();
    std::fs::write(
        &config,
        "sites:\n  - match: data.example.org\n    name: fixed\n    tls: { client_cert: alice.crt, client_key: alice.key }\n",
    )
    .unwrap();
    let took = within(Duration::from_secs(2), async || {
        handle.load().sites[0].id.contains("fixed") && has_identity(&handle)
    })
    .await;
    assert!(took.is_some(), "the fixed configuration was not taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_still_broken_certificate_whose_line_moved_does_not_block_reloads() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    std::fs::write(h.join("broken.crt"), "not a certificate\n").unwrap();
    let config = h.join("config.yaml");
    let site = "  - match: broken.example.org\n    tls: { client_cert: broken.crt }\n";
    std::fs::write(&config, format!("sites:\n{site}")).unwrap();
    let env = env_in(h, Some(config.clone()));
    let handle = load::load(&env).unwrap().into_handle();
    assert_eq!(handle.load().unusable.len(), 1);
    let _reloader = Reloader::start(env, handle.clone());

    // A new site above the broken one moves its line; the certificate is as broken as
    // before, so the edit is taken.
    std::fs::write(
        &config,
        format!("sites:\n  - match: new.example.org\n    name: added\n{site}"),
    )
    .unwrap();
    let took = within(Duration::from_secs(2), async || {
        handle.load().sites.iter().any(|s| s.id.contains("added"))
    })
    .await;
    assert!(took.is_some(), "an edit elsewhere was rejected");
    let message = handle.load().unusable[0].message.clone();
    assert!(message.contains("config.yaml:4"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_created_in_a_new_directory_is_picked_up() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let origin = Origin::start().await;
    let mut env = env_in(h, None);
    env.xdg_config_home = Some(h.join(".config"));
    let daemon = start(env).await;

    // ~/.config/authproxy does not exist at start; it is made later, then the file.
    let dir = h.join(".config/authproxy");
    std::fs::create_dir_all(&dir).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    std::fs::write(dir.join("pw"), "late-pw\n").unwrap();
    std::fs::write(
        dir.join("config.yaml"),
        format!(
            "sites:\n  - match: \"127.0.0.1:{}\"\n    basic: {{ username: erin, password_file: pw }}\n",
            origin.addr.port()
        ),
    )
    .unwrap();
    let want = basic("erin", "late-pw");
    let took = within(Duration::from_secs(2), async || {
        let mut c = Client::connect(daemon.addr).await;
        c.get(&origin.url("/late")).await;
        last_auth(&origin).as_deref() == Some(want.as_str())
    })
    .await;
    assert!(
        took.is_some(),
        "a config in a directory made after start was not picked up"
    );
    let _ = daemon.stop.send(true);
}
