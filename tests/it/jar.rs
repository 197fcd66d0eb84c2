//! The cookie jar against curl: files curl wrote are read by the daemon, and files the
//! daemon wrote are used by curl. A loopback origin sets and checks the cookies.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::process::Command;
use url::Url;

use authproxy::session::{netscape, Jar};

use crate::support::{full, BoxBody};

/// The cookies `/set` sends: one of every kind.
const SET: &[&str] = &[
    "host=h1",
    "sec=s1; Secure",
    "ho=x1; HttpOnly",
    "ma=m1; Max-Age=3600",
    "ex=e1; Expires=Wed, 01 Jan 2031 00:00:00 GMT",
    "sub=p1; Path=/sub",
    "empty=",
];

/// `/dset` on `localhost`: cookies for the domain and its subdomains.
const DSET: &[&str] = &[
    "dom=d1; Domain=localhost; Path=/",
    "dot=d2; Domain=.localhost; Path=/; Max-Age=7200",
    "hostonly=l1; Path=/",
];

/// The Cookie header of every request, by path.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct CookieOrigin {
    addr: SocketAddr,
    /// The Cookie header of every request, by path.
    seen: Seen,
}

/// Routes: `/set`, `/dset` set cookies; `/need` answers 200 only with host, ho, ma, ex
/// and sec; `/sub/need` also needs sub; `/dneed` needs dom and dot; anything else 200
/// without cookies.
async fn cookie_origin() -> CookieOrigin {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, seen.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    CookieOrigin { addr, seen }
}

async fn handle(req: Request<Incoming>, seen: Seen) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let cookie = req
        .headers()
        .get(http::header::COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    seen.lock().unwrap().push((path.clone(), cookie.clone()));
    let pairs: BTreeSet<String> = cookie
        .as_deref()
        .unwrap_or("")
        .split(';')
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let has = |want: &[&str]| want.iter().all(|w| pairs.contains(*w));
    let mut resp = Response::new(full("ok"));
    let sets: &[&str] = match path.as_str() {
        "/set" => SET,
        "/dir/dset" => DSET,
        _ => &[],
    };
    for s in sets {
        resp.headers_mut()
            .append(http::header::SET_COOKIE, s.parse().unwrap());
    }
    let need: &[&str] = match path.as_str() {
        "/need" => &["host=h1", "ho=x1", "ma=m1", "ex=e1", "sec=s1"],
        "/sub/need" => &["host=h1", "sub=p1"],
        "/dneed" => &["dom=d1", "dot=d2", "hostonly=l1"],
        _ => &[],
    };
    if !has(need) {
        *resp.status_mut() = StatusCode::FORBIDDEN;
    }
    Ok(resp)
}

/// Runs curl (no ~/.curlrc, no proxy) and returns its HTTP status code.
async fn curl(args: &[&str], url: &str) -> u16 {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        Command::new("curl")
            .arg("-q")
            .args(["-s", "--noproxy", "*", "--max-time", "20"])
            .args(["-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .arg(url)
            .output(),
    )
    .await
    .expect("curl finished within 30 s")
    .expect("curl runs (.ci/run installs it)");
    assert!(out.status.success(), "curl {args:?} {url}: {out:?}");
    String::from_utf8(out.stdout).unwrap().parse().unwrap()
}

/// The cookie lines of a Netscape file, without header and comments.
fn lines(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with("#HttpOnly_")))
        .map(str::to_owned)
        .collect()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_the_jar_curl_wrote() {
    let origin = cookie_origin().await;
    let port = origin.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let jar_path = dir.path().join("curl-jar.txt");
    let jp = jar_path.to_str().unwrap();
    assert_eq!(
        curl(&["-c", jp], &format!("http://127.0.0.1:{port}/set")).await,
        200
    );
    // Domain cookies need a name: curl stores none for Domain=127.0.0.1.
    assert_eq!(
        curl(
            &["-b", jp, "-c", jp],
            &format!("http://localhost:{port}/dir/dset")
        )
        .await,
        200
    );
    let curl_lines = lines(&jar_path);
    let text = std::fs::read_to_string(&jar_path).unwrap();
    assert!(text.starts_with(netscape::HEADER), "{text}");

    let (jar, problems) = Jar::open(&jar_path);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(jar.len(), SET.len() + DSET.len(), "{text}");

    // Every attribute, through the file the daemon would write: the same lines as curl's.
    let ours = jar.to_netscape();
    let our_lines: BTreeSet<String> = ours
        .lines()
        .filter(|l| !l.is_empty() && (!l.starts_with('#') || l.starts_with("#HttpOnly_")))
        .map(str::to_owned)
        .collect();
    assert_eq!(our_lines, curl_lines);

    // And each cookie by itself.
    let ma_expiry = curl_lines
        .iter()
        .find(|l| l.ends_with("\tma\tm1"))
        .unwrap()
        .split('\t')
        .nth(4)
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((ma_expiry - now - 3600).abs() < 60, "{ma_expiry} {now}");
    let parsed = netscape::parse(text.as_bytes());
    let get = |name: &str| {
        parsed
            .cookies
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    use cookie_store::{CookieDomain, CookieExpiration};
    let host = CookieDomain::HostOnly("127.0.0.1".into());
    for name in ["host", "sec", "ho", "ma", "ex", "sub", "empty"] {
        assert_eq!(get(name).domain, host, "{name}");
    }
    assert_eq!(get("host").expires, CookieExpiration::SessionEnd);
    assert_eq!(get("sec").secure(), Some(true));
    assert_eq!(get("host").secure(), Some(false));
    assert_eq!(get("ho").http_only(), Some(true));
    assert_eq!(get("host").http_only(), Some(false));
    match get("ex").expires {
        CookieExpiration::AtUtc(t) => assert_eq!(t.unix_timestamp(), 1924992000),
        ref e => panic!("{e:?}"),
    }
    assert!(matches!(get("ma").expires, CookieExpiration::AtUtc(_)));
    assert_eq!(&*get("sub").path, "/sub");
    assert_eq!(&*get("host").path, "/");
    assert_eq!(get("empty").value(), "");
    assert_eq!(get("dom").domain, CookieDomain::Suffix("localhost".into()));
    assert_eq!(get("dot").domain, CookieDomain::Suffix("localhost".into()));
    assert_eq!(
        get("hostonly").domain,
        CookieDomain::HostOnly("localhost".into())
    );

    // What the jar sends: no Secure cookie over plain http, paths and hosts matched.
    let base = format!("http://127.0.0.1:{port}");
    assert_eq!(
        jar.cookie_header(&url(&format!("{base}/need"))).unwrap(),
        "empty=; ex=e1; ho=x1; host=h1; ma=m1"
    );
    assert_eq!(
        jar.cookie_header(&url(&format!("https://127.0.0.1:{port}/sub/x")))
            .unwrap(),
        "sub=p1; empty=; ex=e1; ho=x1; host=h1; ma=m1; sec=s1"
    );
    assert_eq!(
        jar.cookie_header(&url(&format!("http://localhost:{port}/other")))
            .unwrap(),
        "dom=d1; dot=d2; hostonly=l1"
    );
    assert_eq!(
        jar.cookie_header(&url(&format!("http://a.localhost:{port}/")))
            .unwrap(),
        "dom=d1; dot=d2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uses_the_jar_the_daemon_wrote() {
    let origin = cookie_origin().await;
    let port = origin.addr.port();
    let dir = tempfile::tempdir().unwrap();
    let jar_path = dir.path().join("state").join("cookies.txt");
    let jp = jar_path.to_str().unwrap();

    // Without cookies the origin refuses.
    assert_eq!(
        curl(&[], &format!("http://127.0.0.1:{port}/need")).await,
        403
    );

    // The daemon's jar learns the cookies as the proxy would, from the responses.
    let (jar, problems) = Jar::open(&jar_path);
    assert!(problems.is_empty());
    jar.store(
        &url(&format!("http://127.0.0.1:{port}/set")),
        SET.iter().copied(),
    );
    jar.store(
        &url(&format!("http://localhost:{port}/dir/dset")),
        DSET.iter().copied(),
    );
    assert!(jar.save().unwrap());

    // curl, given that file, gets in.
    for (host, path) in [
        ("127.0.0.1", "/need"),
        ("127.0.0.1", "/sub/need"),
        ("localhost", "/dneed"),
    ] {
        assert_eq!(
            curl(&["-b", jp], &format!("http://{host}:{port}{path}")).await,
            200,
            "{host}{path} with {}",
            std::fs::read_to_string(&jar_path).unwrap()
        );
    }
    // It sent what the jar holds, and the Secure cookie only because 127.0.0.1 is
    // loopback (curl's rule): the daemon itself sends it to https only.
    let seen = origin.seen.lock().unwrap().clone();
    let need = seen
        .iter()
        .rev()
        .find(|(p, _)| p == "/need")
        .unwrap()
        .1
        .clone()
        .unwrap();
    for pair in ["host=h1", "ho=x1", "ma=m1", "ex=e1", "sec=s1", "empty="] {
        assert!(need.split("; ").any(|p| p == pair), "{pair} in {need}");
    }
    assert!(!need.contains("sub="), "{need}");

    // curl reads our file and writes it back unchanged (line for line).
    let back = dir.path().join("back.txt");
    assert_eq!(
        curl(
            &["-b", jp, "-c", back.to_str().unwrap()],
            &format!("http://127.0.0.1:{port}/nothing")
        )
        .await,
        200
    );
    assert_eq!(lines(&back), lines(&jar_path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_session_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cookies.txt");
    let u = url("http://data.example/granule.nc");
    {
        let (jar, _) = Jar::open(&path);
        let jar = Arc::new(jar);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let writer = authproxy::session::spawn_writer(jar.clone(), stopped);
        jar.store(&u, ["asf-urs=session-jwt; HttpOnly"]);
        stop.send(true).unwrap();
        writer.await.unwrap();
    }
    let (jar, problems) = Jar::open(&path);
    assert!(problems.is_empty());
    assert_eq!(jar.cookie_header(&u).unwrap(), "asf-urs=session-jwt");
}
