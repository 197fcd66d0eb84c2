//! The model checked against a real client: curl doing the Earthdata Login dance itself,
//! as NASA's download scripts run it (`curl -L --netrc-file N -c J -b J`). None of these
//! tests involves the proxy; they are the baseline the proxy's dance is measured against.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

use super::{
    pattern_range, Approval, Options, Role, Serve, World, ACCESS_DENIED_BODY, LOGIN_COOKIE, REALM,
    SESSION_COOKIE,
};

/// What one curl run ended with.
struct Run {
    exit: i32,
    /// The last response's status (`%{http_code}`), 0 when there was none.
    status: u16,
    redirects: u32,
    body: Vec<u8>,
    /// Every response head curl received (`-D`).
    heads: String,
    stderr: String,
}

/// A directory with the netrc, the CA and the cookie jar of one curl "user".
struct Setup {
    dir: tempfile::TempDir,
    netrc: PathBuf,
    ca: PathBuf,
    jar: PathBuf,
}

impl Setup {
    fn new(world: &World) -> Setup {
        Setup::with_password(world, super::PASSWORD)
    }

    fn with_password(world: &World, password: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let netrc = world.netrc_with_password(dir.path(), password);
        let ca = world.write_ca(dir.path());
        let jar = dir.path().join("cookies.txt");
        Setup {
            dir,
            netrc,
            ca,
            jar,
        }
    }

    /// `-L --netrc-file N -c J -b J --cacert CA`, bounded.
    fn dance(&self) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "-L".into(),
            "--max-redirs".into(),
            "10".into(),
            "--netrc-file".into(),
            p(&self.netrc),
            "-c".into(),
            p(&self.jar),
            "-b".into(),
            p(&self.jar),
            "--cacert".into(),
            p(&self.ca),
        ]
    }

    fn jar_text(&self) -> String {
        std::fs::read_to_string(&self.jar).unwrap_or_default()
    }

    async fn curl(&self, args: &[String]) -> Run {
        curl(self.dir.path(), args).await
    }
}

async fn curl(dir: &std::path::Path, args: &[String]) -> Run {
    let out_dir = tempfile::tempdir_in(dir).unwrap();
    let body = out_dir.path().join("body");
    let heads = out_dir.path().join("heads");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "-o"])
            .arg(&body)
            .arg("-D")
            .arg(&heads)
            .args(["-w", "%{http_code} %{num_redirects}"])
            .args(args)
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("all_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .output(),
    )
    .await
    .expect("curl finished within 30 s")
    .expect("curl runs (scripts/install-deps installs it)");
    let w = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut w = w.split_whitespace();
    Run {
        exit: out.status.code().unwrap_or(-1),
        status: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        redirects: w.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        body: std::fs::read(&body).unwrap_or_default(),
        heads: std::fs::read_to_string(&heads).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The dance with the default model: exact bytes, each credential only where it belongs,
/// the order of hops as TEA and EDL run them, and the jar makes a second run direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_dance_gets_the_bytes_and_a_second_run_skips_the_login_host() {
    let world = World::start(Options::default()).await;
    let user = Setup::new(&world);
    let url = world.data_url("/granule.nc");

    let mut a = user.dance();
    a.push(url.clone());
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    assert!(run.body == pattern_range(0, 100_000), "exact bytes");
    assert_eq!(run.redirects, 3, "data -> authorize -> /redirect -> data");

    let hits = world.hits();
    let roles: Vec<(Role, &str, u16)> = hits.iter().map(|h| (h.role, h.path(), h.status)).collect();
    assert_eq!(
        roles,
        [
            (Role::Data, "/granule.nc", 302),
            (Role::Login, "/oauth/authorize", 302),
            // In order of arrival: the exchange happens while /redirect is answered.
            (Role::Data, "/redirect", 301),
            (Role::Login, "/oauth/token", 200),
            (Role::Data, "/granule.nc", 200),
        ]
    );
    // The authorize URL as TEA builds it for a non-browser.
    let authorize = &hits[1];
    assert_eq!(authorize.query("app_type").as_deref(), Some("401"));
    assert_eq!(authorize.query("response_type").as_deref(), Some("code"));
    assert_eq!(authorize.query("state").as_deref(), Some("/granule.nc"));
    assert_eq!(
        authorize.query("redirect_uri"),
        Some(world.data_url("/redirect"))
    );
    // Credentials: Basic to the login host over TLS, never to the data server.
    for h in &hits {
        match h.role {
            Role::Login => assert!(h.tls, "login host over TLS only: {h:?}"),
            _ => assert_eq!(h.authorization(), None, "{h:?}"),
        }
    }
    assert_eq!(
        authorize.authorization(),
        Some(super::basic_header(super::USER, super::PASSWORD))
    );
    // The code exchange came from the data server itself, with the app's credentials.
    assert_eq!(hits[3].method, "POST");
    assert!(hits[3].authorization().is_some());
    assert_ne!(hits[3].authorization(), authorize.authorization());
    assert_eq!(hits[3].header("user-agent"), None, "not curl's request");
    assert!(hits[4].cookie(SESSION_COOKIE).is_some());
    assert!(world.credential_leaks().is_empty());
    assert_eq!((world.logins(), world.exchanges()), (1, 1));

    // curl's jar holds both sessions in libcurl's format.
    let jar = user.jar_text();
    assert!(jar.starts_with("# Netscape HTTP Cookie File"), "{jar}");
    assert!(
        jar.lines().any(|l| l.starts_with("#HttpOnly_localhost\t")
            && l.contains("\tTRUE\t") // secure
            && l.contains(&format!("\t{LOGIN_COOKIE}\t"))),
        "{jar}"
    );
    assert!(
        jar.lines()
            .any(|l| l.starts_with("127.0.0.1\tFALSE\t/\tFALSE\t")
                && l.contains(&format!("\t{SESSION_COOKIE}\t"))),
        "{jar}"
    );

    // A second run with the same jar goes straight to the data.
    world.clear_hits();
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status, run.redirects), (0, 200, 0));
    assert!(run.body == pattern_range(0, 100_000));
    assert_eq!(world.count(Role::Login), 0);
    assert_eq!(world.hits_of(Role::Data).len(), 1);
    assert_eq!(world.logins(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_without_credentials_gets_the_challenge_and_a_browser_the_login_form() {
    let world = World::start(Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = world.write_ca(dir.path()).display().to_string();
    let url = world.data_url("/granule.nc");

    // No netrc: EDL's 401 with its realm and the login host's session cookie.
    let run = curl(
        dir.path(),
        &args(&["-L", "--cacert", &ca, "--max-redirs", "10", &url]),
    )
    .await;
    assert_eq!((run.exit, run.status), (0, 401), "{}", run.stderr);
    assert_eq!(String::from_utf8_lossy(&run.body), ACCESS_DENIED_BODY);
    let heads = run.heads.to_ascii_lowercase();
    assert!(
        heads.contains(&format!(
            "www-authenticate: basic realm=\"{}\"",
            REALM.to_ascii_lowercase()
        )),
        "{}",
        run.heads
    );
    assert!(
        heads.contains(&format!(
            "set-cookie: {}=",
            LOGIN_COOKIE.to_ascii_lowercase()
        )) && heads.contains("; path=/; expires=")
            && heads.contains("; secure; httponly"),
        "{}",
        run.heads
    );

    // A browser User-Agent: TEA leaves app_type=401 out, and EDL shows its login form.
    world.clear_hits();
    let run = curl(
        dir.path(),
        &args(&["-L", "-A", "Mozilla/5.0 (X11)", "--cacert", &ca, &url]),
    )
    .await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    assert!(run.body.starts_with(b"<!DOCTYPE html>"));
    let authorize = &world.hits_of(Role::Login)[0];
    assert_eq!(authorize.query("app_type"), None);
    assert_eq!(world.logins() + world.codes_issued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_dance_through_a_decoy_hop_and_a_relative_location() {
    let world = World::start(Options {
        decoy: true,
        relative_locations: true,
        ..Options::default()
    })
    .await;
    let user = Setup::new(&world);
    let mut a = user.dance();
    a.push(world.data_url("/dir/granule.nc?var=sst"));
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    assert!(run.body == pattern_range(0, 100_000));
    let decoy = world.hits_of(Role::Decoy);
    assert_eq!(decoy.len(), 1);
    assert_eq!(decoy[0].authorization(), None);
    assert_eq!(decoy[0].status, 302);
    // The relative Location brought curl back to the original path and query.
    let data = world.hits_of(Role::Data);
    let last = data.last().unwrap();
    assert_eq!(
        (last.target.as_str(), last.status),
        ("/dir/granule.nc?var=sst", 200)
    );
    let redirect = data.iter().find(|h| h.path() == "/redirect").unwrap();
    assert_eq!(
        redirect.query("state").as_deref(),
        Some("/dir/granule.nc?var=sst")
    );
    assert!(world
        .hits()
        .iter()
        .all(|h| h.role == Role::Login || h.authorization().is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_head_and_range_through_the_dance() {
    let world = World::start(Options {
        size: 1_000_000,
        ..Options::default()
    })
    .await;
    // HEAD through the whole dance (curl -I sends HEAD on every hop).
    let user = Setup::new(&world);
    let mut a = user.dance();
    a.extend(args(&["-I", &world.data_url("/granule.nc")]));
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    // With -I the output holds the heads only: no data bytes.
    assert!(!run.body.windows(8).any(|w| w == &pattern_range(0, 8)[..]));
    let last_head = run
        .heads
        .rsplit("HTTP/1.1")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        last_head.contains("content-length: 1000000"),
        "{}",
        run.heads
    );
    assert!(last_head.contains("accept-ranges: bytes"));
    assert!(world.hits_of(Role::Data).iter().all(|h| h.method == "HEAD"));
    assert_eq!(world.logins(), 1);

    // A Range request through the dance of a second user.
    let other = Setup::new(&world);
    let mut a = other.dance();
    a.extend(args(&["-r", "1000-1999", &world.data_url("/granule.nc")]));
    let run = other.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 206), "{}", run.stderr);
    assert!(run.body == pattern_range(1000, 2000));
    assert!(run
        .heads
        .to_ascii_lowercase()
        .contains("content-range: bytes 1000-1999/1000000"));
    // Suffix and open ranges, and one past the end, with the session cookie.
    for (range, status, from, to) in [
        ("-100", 206, 999_900, 1_000_000),
        ("999990-", 206, 999_990, 1_000_000),
        ("2000000-", 416, 0, 0),
    ] {
        let mut a = other.dance();
        a.extend(args(&["-r", range, &world.data_url("/granule.nc")]));
        let run = other.curl(&a).await;
        assert_eq!(run.status, status, "{range}");
        if status == 206 {
            assert!(run.body == pattern_range(from, to), "{range}");
        }
    }
    assert_eq!(world.logins(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_wrong_password_ends_with_one_401() {
    let world = World::start(Options::default()).await;
    let user = Setup::with_password(&world, "not-the-password");
    let mut a = user.dance();
    a.push(world.data_url("/granule.nc"));
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 401), "{}", run.stderr);
    assert_eq!(String::from_utf8_lossy(&run.body), ACCESS_DENIED_BODY);
    assert_eq!((world.logins(), world.failed_logins()), (0, 1));
    assert_eq!(world.count(Role::Login), 1, "no retry");
    assert_eq!(world.live_sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_an_unapproved_application() {
    let world = World::start(Options {
        approval: Approval::HtmlPage,
        ..Options::default()
    })
    .await;
    let url = world.data_url("/granule.nc");

    // The trap: overall 200, and the "data" is EDL's HTML page.
    let user = Setup::new(&world);
    let mut a = user.dance();
    a.push(url.clone());
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    assert!(run.body.starts_with(b"<!DOCTYPE html>"));
    assert!(String::from_utf8_lossy(&run.body).contains("Authorize application"));
    assert_eq!((world.logins(), world.codes_issued()), (1, 0));

    // error=access_denied back at the data server: TEA's 401, or GES DISC's 200 HTML.
    world.set(|o| o.approval = Approval::AccessDenied);
    let user = Setup::new(&world);
    let run = user.curl(&a).await;
    assert_eq!(run.status, 401, "{}", run.stderr);
    assert!(String::from_utf8_lossy(&run.body).contains("Be sure to agree to the EULA"));
    let last = world.hits().pop().unwrap();
    assert_eq!(
        (last.role, last.path(), last.query("error").as_deref()),
        (Role::Data, "/redirect", Some("access_denied"))
    );
    world.set(|o| o.denied_as_html = true);
    let user = Setup::new(&world);
    let run = user.curl(&a).await;
    assert_eq!(run.status, 200);
    assert!(run.body.starts_with(b"<!DOCTYPE html>"));

    // The EULA answer: 403 JSON naming where to go.
    world.set(|o| o.approval = Approval::EulaJson);
    let user = Setup::new(&world);
    let run = user.curl(&a).await;
    assert_eq!(run.status, 403);
    let v: serde_json::Value = serde_json::from_slice(&run.body).unwrap();
    assert_eq!(v["error_description"], "EULA Acceptance Failure");
    assert_eq!(v["resolution_url"], world.resolution_url());
    assert_eq!(world.codes_issued(), 0);
    assert_eq!(world.live_sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_follows_303_and_307_to_presigned_storage() {
    let world = World::start(Options {
        serve: Serve::Presigned(303),
        ..Options::default()
    })
    .await;
    let user = Setup::new(&world);
    for status in [303, 307] {
        world.set(|o| o.serve = Serve::Presigned(status));
        let mut a = user.dance();
        a.push(world.data_url("/granule.nc"));
        let run = user.curl(&a).await;
        assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
        assert!(run.body == pattern_range(0, 100_000));
        let data = world.hits_of(Role::Data);
        assert_eq!(data.last().unwrap().status, status);
        let storage = world.hits_of(Role::Storage);
        let last = storage.last().unwrap();
        assert_eq!(last.status, 200);
        assert!(last.query("X-Amz-Signature").is_some());
        assert_eq!(last.authorization(), None);
    }
    assert_eq!(world.logins(), 1);

    // S3's answers: 400 with Authorization beside the signature, 403 without a valid one.
    let dir = user.dir.path();
    let presigned = world.presigned_url("/granule.nc");
    let run = curl(dir, &args(&["-H", "Authorization: Bearer tok", &presigned])).await;
    assert_eq!(run.status, 400);
    assert!(String::from_utf8_lossy(&run.body).contains("InvalidArgument"));
    // ... and the world names that request as a leak.
    let leaks = world.credential_leaks();
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert_eq!(leaks[0].role, Role::Storage);
    let unsigned = presigned.split('?').next().unwrap().to_owned();
    let run = curl(dir, &args(&[&unsigned])).await;
    assert_eq!(run.status, 403);
    let run = curl(dir, &args(&["-r", "10-19", &presigned])).await;
    assert_eq!(run.status, 206);
    assert!(run.body == pattern_range(10, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_expired_session_runs_the_dance_again_and_a_session_that_never_sticks_loops() {
    let world = World::start(Options::default()).await;
    let user = Setup::new(&world);
    let mut a = user.dance();
    a.push(world.data_url("/granule.nc"));
    assert_eq!(user.curl(&a).await.status, 200);
    let first_jar = user.jar_text();

    // Expired: the old cookie is sent, refused, and the dance runs again; the login host
    // recognises its own session and issues a code without a new password login.
    world.expire_sessions();
    world.clear_hits();
    let run = user.curl(&a).await;
    assert_eq!((run.status, run.redirects), (200, 3), "{}", run.stderr);
    assert!(run.body == pattern_range(0, 100_000));
    let hits = world.hits();
    assert_eq!(hits[0].status, 302);
    assert!(hits[0].cookie(SESSION_COOKIE).is_some());
    assert!(hits[1].cookie(LOGIN_COOKIE).is_some());
    assert_eq!((world.logins(), world.codes_issued()), (1, 2));
    assert_ne!(user.jar_text(), first_jar);

    // Both sessions gone: the password is needed again.
    world.expire_sessions();
    world.expire_login_sessions();
    assert_eq!(user.curl(&a).await.status, 200);
    assert_eq!(world.logins(), 2);

    // A data server that never accepts its session: curl loops until --max-redirs.
    world.set(|o| o.session_sticks = false);
    world.clear_hits();
    let started = std::time::Instant::now();
    let run = user.curl(&a).await;
    assert_eq!(run.exit, 47, "too many redirects: {}", run.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(world.count(Role::Login) >= 3, "{:?}", world.hits());
    assert!(world.exchanges() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_dance_against_the_https_data_server() {
    let world = World::start(Options::default()).await;
    let user = Setup::new(&world);
    let mut a = user.dance();
    a.push(world.data_https_url("/granule.nc"));
    let run = user.curl(&a).await;
    assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
    assert!(run.body == pattern_range(0, 100_000));
    let data = world.hits_of(Role::Data);
    assert!(data.iter().all(|h| h.tls && h.authorization().is_none()));
    assert_eq!(
        world.hits_of(Role::Login)[0].query("redirect_uri"),
        Some(world.data_https_url("/redirect"))
    );
}

/// The baseline single flight must beat: 100 curls that each do their own dance log in
/// 100 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_curls_log_in_a_hundred_times() {
    let world = World::start(Options {
        size: 4096,
        ..Options::default()
    })
    .await;
    let users: Vec<Setup> = (0..100).map(|_| Setup::new(&world)).collect();
    let url = world.data_url("/granule.nc");
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for user in users {
        let mut a = user.dance();
        a.push(url.clone());
        tasks.spawn(async move { user.curl(&a).await });
    }
    let runs = tasks.join_all().await;
    assert_eq!(runs.len(), 100);
    for run in &runs {
        assert_eq!((run.exit, run.status), (0, 200), "{}", run.stderr);
        assert!(run.body == pattern_range(0, 4096));
    }
    assert_eq!(world.logins(), 100);
    assert_eq!(world.exchanges(), 100);
    assert_eq!(world.live_sessions(), 100);
    assert!(started.elapsed() < Duration::from_secs(25));
}
