//! Who gets a credential: rc scopes as netCDF-C reads them, unscoped rc credentials,
//! `.netrc` only over verified TLS, a configured `Authorization` header, and the client's
//! own credentials on a followed redirect. Each test uses a recognisable secret and
//! loopback origins that record what they receive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use authproxy::explain;

use crate::credentials::{
    basic, env, get, header, seen_at, snapshot, tls_challenged, tls_seen_at, write, yaml,
};
use crate::support::{self, full, Ca, Client, ClientAuth, Origin, Proxy, TlsOrigin};

/// One request a [`ChallengeOrigin`] received.
#[derive(Clone, Debug)]
pub(crate) struct Challenged {
    pub(crate) method: String,
    pub(crate) authorization: Option<String>,
    pub(crate) body: Vec<u8>,
}

/// An origin on 127.0.0.1:0 that answers 401 with `challenge` as `WWW-Authenticate`
/// unless the request carries `Authorization: want`, then 200 `welcome`.
pub(crate) struct ChallengeOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Challenged>>>,
}

impl ChallengeOrigin {
    pub(crate) async fn start(challenge: &'static str, want: String) -> ChallengeOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Challenged>>> = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let seen = seen2.clone();
                let want = want.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        let want = want.clone();
                        async move {
                            let method = req.method().to_string();
                            let authorization = req
                                .headers()
                                .get("authorization")
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let ok = authorization.as_deref() == Some(want.as_str());
                            seen.lock().unwrap().push(Challenged {
                                method,
                                authorization,
                                body: body.to_vec(),
                            });
                            let resp = if ok {
                                Response::new(full("welcome"))
                            } else {
                                Response::builder()
                                    .status(401)
                                    .header("www-authenticate", challenge)
                                    .body(full("who are you?"))
                                    .unwrap()
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        ChallengeOrigin { addr, seen }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn seen(&self) -> Vec<Challenged> {
        self.seen.lock().unwrap().clone()
    }
}

const BASIC_CHALLENGE: &str = "Basic realm=\"Please enter your credentials\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscoped_rc_credentials_are_sent_to_no_host_by_default() {
    let secret = "Unsc0ped-S3cret";
    let origin = ChallengeOrigin::start(BASIC_CHALLENGE, basic("alice", secret)).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(
        h,
        ".daprc",
        &format!("# from netCDF-C's own tests\nHTTP.CREDENTIALS.USERPASSWORD=alice:{secret}\n"),
    );
    let proxy = Proxy::start(snapshot(h, None)).await;

    // Not preemptively, and not in answer to the challenge either: the 401 reaches the client.
    let (resp, body) = get(&proxy, &origin.url("/granule.nc"), &[]).await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (401, "who are you?")
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authorization, None);

    // check warns with file:line and the fix; explain says why nothing is sent.
    let (report, ok) = explain::check(&env(h, None));
    assert!(ok, "{report}");
    let rc = h.join(".daprc");
    let warning = format!("{}:2: HTTP.CREDENTIALS.* without a [prefix]", rc.display());
    assert!(report.contains(&warning), "{report}");
    assert!(
        report.contains("rc_unscoped_credentials: challenge"),
        "{report}"
    );
    let text = explain::explain(&env(h, None), &origin.url("/granule.nc")).unwrap();
    assert!(
        text.contains("authorization: none: the rc file's HTTP.CREDENTIALS.*")
            && text.contains(".daprc:2"),
        "{text}"
    );
    for out in [&report, &text] {
        assert!(!out.contains(secret), "{out}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_mode_answers_only_a_basic_challenge_once() {
    let secret = "Ch4llenge-S3cret";
    let want = basic("alice", secret);
    let basic_origin = ChallengeOrigin::start(BASIC_CHALLENGE, want.clone()).await;
    let bearer_origin = ChallengeOrigin::start("Bearer realm=\"api\"", want.clone()).await;
    let refusing = ChallengeOrigin::start(BASIC_CHALLENGE, "Basic bm8tb25l".to_owned()).await;
    let quiet = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(
        h,
        ".daprc",
        &format!("HTTP.CREDENTIALS.USERPASSWORD=alice:{secret}\n"),
    );
    let config = yaml(h, "rc_unscoped_credentials: challenge\n");
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;

    // A loopback host that asks for Basic gets it on the second try, and the client sees
    // only the answer.
    let (resp, body) = get(&proxy, &basic_origin.url("/data"), &[]).await;
    assert_eq!((resp.status().as_u16(), body.as_str()), (200, "welcome"));
    let seen: Vec<_> = basic_origin.seen();
    let auths: Vec<_> = seen.iter().map(|r| r.authorization.as_deref()).collect();
    assert_eq!(auths, vec![None, Some(want.as_str())]);

    // A POST is replayed with its body.
    let mut client = Client::connect(proxy.addr).await;
    let req = Request::post(basic_origin.url("/upload"))
        .body(full("payload-bytes"))
        .unwrap();
    let (resp, _) = support::body_of(client.send(req).await).await;
    assert_eq!(resp.status(), 200);
    let posts: Vec<_> = basic_origin
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts.iter().all(|r| r.body == b"payload-bytes"));

    // A host that never asks gets nothing; one that asks for another scheme gets nothing.
    let (resp, _) = get(&proxy, &quiet.url("/open"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&quiet, "/open").headers, "authorization"),
        None
    );
    let (resp, _) = get(&proxy, &bearer_origin.url("/api"), &[]).await;
    assert_eq!(resp.status(), 401);
    let seen = bearer_origin.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization, None);

    // Refused credentials are not tried twice: the client gets the second 401.
    let (resp, _) = get(&proxy, &refusing.url("/x"), &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(refusing.seen().len(), 2);

    // A client's own Authorization is its business: no second try.
    let before = basic_origin.seen().len();
    let (resp, _) = get(
        &proxy,
        &basic_origin.url("/own"),
        &[("authorization", "Basic b3duOm93bg==")],
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(basic_origin.seen().len(), before + 1);

    let text = explain::explain(&env(h, Some(&config)), &basic_origin.url("/data")).unwrap();
    assert!(
        text.contains("only if the host answers 401 with a Basic challenge"),
        "{text}"
    );
    assert!(!text.contains(secret));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rc_host_and_url_scopes_mean_the_default_port() {
    let secret = "P0rt-S3cret";
    let origin = Origin::start().await;
    let port = origin.addr.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // `[127.0.0.1]` and `[http://127.0.0.1/data]` name port 80; the origin is elsewhere.
    write(
        h,
        ".daprc",
        &format!(
            "[127.0.0.1]HTTP.CREDENTIALS.USERPASSWORD=host:{secret}\n\
             [http://127.0.0.1/data]HTTP.CREDENTIALS.USERPASSWORD=path:{secret}\n\
             [http://127.0.0.1:{port}/mine]HTTP.CREDENTIALS.USERPASSWORD=mine:{secret}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, None)).await;
    for path in ["/other", "/data/f.nc"] {
        let (resp, _) = get(&proxy, &origin.url(path), &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            header(&seen_at(&origin, path).headers, "authorization"),
            None,
            "{path}"
        );
    }
    let (resp, _) = get(&proxy, &origin.url("/mine/f.nc"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/mine/f.nc").headers, "authorization"),
        Some(basic("mine", secret))
    );
    let text = explain::explain(&env(h, None), &origin.url("/data/f.nc")).unwrap();
    assert!(text.contains("authorization: none"), "{text}");
    let (report, _) = explain::check(&env(h, None));
    assert!(
        report.contains("basic: user \"mine\", password *** (")
            && report.contains("— sent in cleartext over http"),
        "{report}"
    );
    let text = explain::explain(&env(h, None), "http://127.0.0.1/data/f.nc").unwrap();
    assert!(text.contains("Basic, user \"path\""), "{text}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netrc_passwords_need_tls_that_is_verified() {
    let ca = Ca::new("authproxy test CA");
    let checked = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let unchecked = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let netrc = write(
        h,
        ".netrc",
        "machine localhost login carol password N3trc-S3cret\n",
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    write(h, "ca.pem", &ca.pem);
    let (c, u) = (checked.port(), unchecked.port());
    let config = yaml(
        h,
        &format!(
            "sites:\n\
             \x20 - match: \"localhost:{c}\"\n    tls: {{ upgrade: true, ca: ca.pem }}\n\
             \x20 - match: \"localhost:{u}\"\n    tls: {{ upgrade: true, verify: false }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, _) = get(&proxy, &format!("http://localhost:{c}/challenge/ok"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(
            &tls_challenged(&checked, "/challenge/ok").headers,
            "authorization"
        ),
        Some(basic("carol", "N3trc-S3cret"))
    );
    let (resp, _) = get(&proxy, &format!("http://localhost:{u}/challenge/no"), &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        header(
            &tls_seen_at(&unchecked, "/challenge/no").headers,
            "authorization"
        ),
        None
    );
    let text = explain::explain(
        &env(h, Some(&config)),
        &format!("http://localhost:{u}/unchecked"),
    )
    .unwrap();
    assert!(text.contains("verification is off for this host"), "{text}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_authorization_header_never_replaces_the_clients_own() {
    let origin = Origin::start().await;
    let port = origin.addr.port();
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "authz", "Bearer H34der-T0ken\n");
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"127.0.0.1:{port}\"\n    headers: {{ Authorization: {{ value_file: authz }} }}\n    basic: {{ username: u, password: B4sic-Unused }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, _) = get(&proxy, &origin.url("/mine"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/mine").headers, "authorization").as_deref(),
        Some("Bearer H34der-T0ken")
    );
    let own = "Basic Y2xpZW50OnNpZGU=";
    let (resp, _) = get(&proxy, &origin.url("/own"), &[("authorization", own)]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, "/own").headers, "authorization").as_deref(),
        Some(own)
    );
    // A presigned URL carries its own signature: no configured Authorization either.
    let presigned = "/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc";
    let (resp, _) = get(&proxy, &origin.url(presigned), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&origin, presigned).headers, "authorization"),
        None
    );
    let text = explain::explain(&env(h, Some(&config)), &origin.url("/mine")).unwrap();
    assert!(
        text.contains("authorization: the Authorization header of the YAML site"),
        "{text}"
    );
    assert!(!text.contains("H34der-T0ken") && !text.contains("B4sic-Unused"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_stay_behind_when_a_redirect_changes_the_port() {
    let ca = Ca::new("authproxy test CA");
    let tls = TlsOrigin::start(&ca, &ca, ClientAuth::Off).await;
    let t = tls.port();
    let (start, start_seen) =
        support::redirect_origin(301, format!("https://localhost:{t}/landing")).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let config = yaml(h, "sites:\n  - match: localhost\n    tls: { ca: ca.pem }\n");
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let own = "Basic Y2xpZW50OkNsMWVudC1TM2NyZXQ=";
    let cookie = "session=Cl1ent-C00kie";
    let (resp, body) = get(
        &proxy,
        &format!("http://localhost:{}/start", start.port()),
        &[("authorization", own), ("cookie", cookie)],
    )
    .await;
    assert_eq!(
        (resp.status().as_u16(), body.as_str()),
        (200, "ok"),
        "{body}"
    );
    // The client's origin got them; the other port did not.
    let first = start_seen.requests.lock().unwrap().clone();
    assert_eq!(
        header(&first[0].headers, "authorization").as_deref(),
        Some(own)
    );
    assert_eq!(header(&first[0].headers, "cookie").as_deref(), Some(cookie));
    let r = tls_seen_at(&tls, "/landing");
    assert_eq!(header(&r.headers, "authorization"), None);
    assert_eq!(header(&r.headers, "cookie"), None);
    proxy.stop().await;
}

#[test]
fn rc_scopes_with_only_tls_settings_make_rules_and_an_unscoped_ca_is_flagged() {
    let ca = Ca::new("authproxy test CA");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    write(h, "ca.pem", &ca.pem);
    let rc = write(
        h,
        ".daprc",
        &format!(
            "HTTP.SSL.CAINFO={}\n[localhost:8443]HTTP.SSL.VERIFYHOST=0\n",
            h.join("ca.pem").display()
        ),
    );
    let (report, ok) = explain::check(&env(h, None));
    assert!(ok, "{report}");
    assert!(
        report.contains(&format!(
            "{}:1: this CA setting has no [prefix]: it replaces the system CA roots",
            rc.display()
        )),
        "{report}"
    );
    let text = explain::explain(&env(h, None), "https://localhost:8443/").unwrap();
    assert!(text.contains("host name verification OFF"), "{text}");
    let text = explain::explain(&env(h, None), "https://localhost:9443/").unwrap();
    assert!(!text.contains("verification OFF"), "{text}");
}

/// The access log says which authorization the last hop carried: a followed redirect
/// that fails before its request goes out does not inherit the first hop's `auth=`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_resets_auth_on_each_followed_hop() {
    let closed = support::closed_port();
    let (start, start_seen) =
        support::redirect_origin(308, format!("https://127.0.0.1:{closed}/gone")).await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"127.0.0.1:{}\"\n    basic: {{ username: u, password: L0g-S3cret }}\n",
            start.port()
        ),
    );
    let daemon = crate::process::Daemon::start_in(
        h,
        &["--config", config.to_str().unwrap(), "--log-format", "json"],
        &[],
    );
    let mut daemon = daemon;
    let mut client = Client::connect(daemon.addr.parse().unwrap()).await;
    let (resp, _) = client
        .get(&format!("http://127.0.0.1:{}/start", start.port()))
        .await;
    assert_eq!(resp.status(), 502);
    // The first hop did carry the credential.
    let first = start_seen.requests.lock().unwrap().clone();
    assert_eq!(
        header(&first[0].headers, "authorization"),
        Some(basic("u", "L0g-S3cret"))
    );
    let (_, log) = daemon.stop();
    let line = log
        .lines()
        .find(|l| l.contains("authproxy::access"))
        .unwrap_or_else(|| panic!("no access line in:\n{log}"));
    assert!(line.contains("\"auth\":\"-\""), "{line}");
    assert!(!log.contains("L0g-S3cret"));
}

/// `basic: { preemptive: false }` keeps a YAML site's password for the host's own
/// challenge: a host that never asks never gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yaml_basic_that_is_not_preemptive_answers_only_a_challenge() {
    let secret = "N0t-Preempt1ve";
    let asking = ChallengeOrigin::start(BASIC_CHALLENGE, basic("yu", secret)).await;
    let quiet = Origin::start().await;
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = yaml(
        h,
        &format!(
            "sites:\n  - match: \"127.0.0.1\"\n    basic: {{ username: yu, password: {secret}, preemptive: false }}\n"
        ),
    );
    let proxy = Proxy::start(snapshot(h, Some(&config))).await;
    let (resp, _) = get(&proxy, &asking.url("/data"), &[]).await;
    assert_eq!(resp.status(), 200);
    let auths: Vec<_> = asking.seen().into_iter().map(|r| r.authorization).collect();
    assert_eq!(auths, vec![None, Some(basic("yu", secret))]);
    let (resp, _) = get(&proxy, &quiet.url("/open"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&seen_at(&quiet, "/open").headers, "authorization"),
        None
    );
    let text = explain::explain(&env(h, Some(&config)), &quiet.url("/open")).unwrap();
    assert!(text.contains("basic.preemptive: false"), "{text}");
    proxy.stop().await;
}
