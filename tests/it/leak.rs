//! The global leak test: the real binary holding every kind of credential it knows, at
//! the chattiest log settings a user can ask for, sending requests that succeed, are
//! refused, fail to connect and are redirected; then everything the daemon wrote, every
//! error body a client got and all `check` and `explain` output is searched for every
//! secret in every encoding.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use http::Request;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::credentials::encrypted_key_pem;
use crate::process::{self, Daemon};
use crate::safety::ChallengeOrigin;
use crate::support::{self, full, Ca, Client, ClientAuth, Origin, TlsOrigin, UpstreamTestProxy};

/// Every crate at its most verbose, including the ones that print headers.
const CHATTY: &str = "trace,pingora_proxy::proxy_h1=debug,pingora_core=trace,\
                      pingora_proxy=trace,rustls=trace,hyper=trace,notify=trace,mio=trace";

/// Basic credentials: (user, password). Each is searched for raw, percent-encoded and as
/// the base64 of `user:password` and the whole `Basic …` value.
const BASIC_INLINE: (&str, &str) = ("yaml-user", "S3cr3t-basic-7f1");
const BASIC_FILE: (&str, &str) = ("file-user", "S3cr3t-basicfile-2a8");
const RC_BASIC: (&str, &str) = ("rc-user", "S3cr3t-rc-pw-0c9");
/// Written `S3cr3t%2Drcup%40x-44` in the rc file's USERPASSWORD.
const RC_USERPASSWORD: (&str, &str) = ("rc-up-user", "S3cr3t-rcup@x-44");
const NETRC: (&str, &str) = ("net-user", "S3cr3t-netrc-8d2");
const PROXY: (&str, &str) = ("proxy-user", "S3cr3t-proxy-a17");
const PROXY_REFUSED: (&str, &str) = ("proxy-user2", "S3cr3t-proxy2-e55");
const PROXY_DOWN: (&str, &str) = ("proxy-user3", "S3cr3t-proxy3-b09");
/// In an rc file's HTTP.PROXY.SERVER URL.
const RC_PROXY: (&str, &str) = ("rcproxy-user", "S3cr3t-rcproxy-5d5");
const CLIENT_BASIC: (&str, &str) = ("client", "S3cr3t-client-auth-77");
/// An rc credential without a `[prefix]`, sent only in answer to a Basic challenge.
const UNSCOPED: (&str, &str) = ("unscoped-user", "S3cr3t-unscoped-90");

/// Other secrets the daemon holds or clients send.
const SECRETS: &[&str] = &[
    "S3cr3t-bearer-c44",
    "S3cr3t-hdr-inline-91b",
    "S3cr3t-hdr-file-d07",
    "S3cr3t-q-inline-5e2",
    "S3cr3t-q-file-6b3",
    "S3cr3t-keypw-3f0",
    "S3cr3t-rckeypw-6e6",
    "S3cr3t%2Drcup%40x-44",
    "S3cr3t-url-token-71",
    "S3cr3t-url-cs-72",
    "S3cr3t-url-sig-73",
    "S3cr3t-url-userinfo-74",
    "S3cr3t-url-ticket-75",
    "S3cr3t-redirect-tok-76",
    "S3cr3t-cookie-78",
    "S3cr3t-url-bad-79",
    "S3cr3t-url-apikey-80",
    "S3cr3t-client-bearer-81",
];

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Every form in which a secret could show up.
fn forbidden() -> Vec<String> {
    fn add(out: &mut Vec<String>, s: &str) {
        let b64 = base64::engine::general_purpose::STANDARD;
        out.push(s.to_owned());
        let pct = utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        out.push(pct.to_ascii_lowercase());
        out.push(pct);
        out.push(b64.encode(s).trim_end_matches('=').to_owned());
    }
    let mut out = Vec::new();
    for s in SECRETS {
        add(&mut out, s);
    }
    for (user, pw) in [
        BASIC_INLINE,
        BASIC_FILE,
        RC_BASIC,
        RC_USERPASSWORD,
        NETRC,
        PROXY,
        PROXY_REFUSED,
        PROXY_DOWN,
        RC_PROXY,
        CLIENT_BASIC,
        UNSCOPED,
    ] {
        add(&mut out, pw);
        let b = basic(user, pw);
        out.push(b.trim_end_matches('=').to_owned());
        out.push(b["Basic ".len()..].trim_end_matches('=').to_owned());
    }
    out
}

/// Panics naming the first secret form found in `text`.
fn assert_clean(what: &str, text: &str) {
    for f in forbidden() {
        assert!(!text.contains(&f), "{f:?} appears in {what}:\n{text}");
    }
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

/// The loopback servers the configuration points at.
struct World {
    ok: Origin,
    via_proxy: Origin,
    rc: Origin,
    rc_userpassword: Origin,
    refused_origin: Origin,
    tls: TlsOrigin,
    tls_ca: Ca,
    unauthorized: std::net::SocketAddr,
    redirect: std::net::SocketAddr,
    closed: u16,
    proxy: UpstreamTestProxy,
    refusing_proxy: UpstreamTestProxy,
    proxy_down: u16,
    /// A closed port whose rc scope names an upstream proxy (the refusing one).
    rc_proxied: u16,
    /// Asks for Basic: the unscoped rc credential answers it.
    challenge: ChallengeOrigin,
}

impl World {
    async fn start(home: &Path) -> World {
        let ca = Ca::new("authproxy leak test CA");
        let w = World {
            ok: Origin::start().await,
            via_proxy: Origin::start().await,
            rc: Origin::start().await,
            rc_userpassword: Origin::start().await,
            refused_origin: Origin::start().await,
            tls: TlsOrigin::start(&ca, &ca, ClientAuth::Required).await,
            unauthorized: support::raw_origin(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"leak\"\r\n\
                  Content-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await,
            redirect: {
                let closed = support::closed_port();
                support::redirect_origin(
                    301,
                    format!("https://127.0.0.1:{closed}/next?token=S3cr3t-redirect-tok-76"),
                )
                .await
                .0
            },
            closed: support::closed_port(),
            proxy: UpstreamTestProxy::start(Some(PROXY)).await,
            refusing_proxy: UpstreamTestProxy::start(Some(("someone", "else"))).await,
            proxy_down: support::closed_port(),
            rc_proxied: support::closed_port(),
            challenge: ChallengeOrigin::start(
                "Basic realm=\"leak\"",
                basic(UNSCOPED.0, UNSCOPED.1),
            )
            .await,
            tls_ca: ca,
        };
        let alice = w.tls_ca.client("alice");
        write(home, "ca.pem", &w.tls_ca.pem);
        write(home, "alice.crt", &alice.cert_pem);
        write(
            home,
            "alice.enc.key",
            &encrypted_key_pem(&alice.key_der, "S3cr3t-keypw-3f0"),
        );
        write(
            home,
            "alice.rc.key",
            &encrypted_key_pem(&alice.key_der, "S3cr3t-rckeypw-6e6"),
        );
        write(home, "basic.pw", &format!("{}\n", BASIC_FILE.1));
        write(home, "bearer.tok", "S3cr3t-bearer-c44\n");
        write(home, "hdr.txt", "S3cr3t-hdr-file-d07\n");
        write(home, "q.txt", "S3cr3t-q-file-6b3\n");
        write(home, "proxy2.pw", &format!("{}\n", PROXY_REFUSED.1));
        let port = |a: &std::net::SocketAddr| a.port();
        write(
            home,
            ".daprc",
            &format!(
                "[127.0.0.1:{rc}]HTTP.CREDENTIALS.USERNAME={}\n\
                 [127.0.0.1:{rc}]HTTP.CREDENTIALS.PASSWORD={}\n\
                 [127.0.0.1:{up}]HTTP.CREDENTIALS.USERPASSWORD={}:S3cr3t%2Drcup%40x-44\n\
                 [127.0.0.1:{rcp}]HTTP.PROXY.SERVER=http://{}:{}@127.0.0.1:{refusing}\n\
                 [127.0.0.1:{tls}]HTTP.SSL.CERTIFICATE={h}/alice.crt\n\
                 [127.0.0.1:{tls}]HTTP.SSL.KEY={h}/alice.rc.key\n\
                 [127.0.0.1:{tls}]HTTP.SSL.KEYPASSWORD=S3cr3t-rckeypw-6e6\n\
                 [127.0.0.1:{tls}]HTTP.SSL.CAINFO={h}/ca.pem\n\
                 HTTP.CREDENTIALS.USERPASSWORD={}:{}\n",
                RC_BASIC.0,
                RC_BASIC.1,
                RC_USERPASSWORD.0,
                RC_PROXY.0,
                RC_PROXY.1,
                UNSCOPED.0,
                UNSCOPED.1,
                rc = port(&w.rc.addr),
                up = port(&w.rc_userpassword.addr),
                rcp = w.rc_proxied,
                refusing = port(&w.refusing_proxy.addr),
                tls = w.tls.port(),
                h = home.display(),
            ),
        );
        let netrc = home.join(".netrc");
        std::fs::write(
            &netrc,
            format!("machine localhost login {} password {}\n", NETRC.0, NETRC.1),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        w
    }

    /// The YAML configuration; `extra` is appended at the top level.
    fn config(&self, extra: &str) -> String {
        format!(
            "rc_unscoped_credentials: challenge\n\
             sites:\n\
             \x20 - match: \"127.0.0.1:{ok}\"\n\
             \x20   basic: {{ username: {bi_user}, password: {bi_pw} }}\n\
             \x20   headers: {{ X-Api-Key: S3cr3t-hdr-inline-91b, X-Auth-Token: {{ value_file: hdr.txt }} }}\n\
             \x20   query: {{ apikey: S3cr3t-q-inline-5e2, ticket: {{ value_file: q.txt }} }}\n\
             \x20 - match: \"127.0.0.1:{unauth}\"\n\
             \x20   basic: {{ username: {bf_user}, password_file: basic.pw }}\n\
             \x20 - match: \"127.0.0.1:{via}\"\n\
             \x20   bearer: {{ token_file: bearer.tok }}\n\
             \x20   upstream_proxy: \"http://{p_user}:{p_pw}@127.0.0.1:{proxy}\"\n\
             \x20 - match: \"127.0.0.1:{refused}\"\n\
             \x20   upstream_proxy: {{ url: \"http://127.0.0.1:{refusing}\", username: {pr_user}, password_file: proxy2.pw }}\n\
             \x20 - match: \"127.0.0.1:{closed}\"\n\
             \x20   bearer: {{ token_file: bearer.tok }}\n\
             \x20   headers: {{ X-Auth-Token: {{ value_file: hdr.txt }} }}\n\
             \x20   upstream_proxy: direct\n\
             \x20 - match: \"localhost:{closed}\"\n\
             \x20   upstream_proxy: \"http://{pd_user}:{pd_pw}@127.0.0.1:{down}\"\n\
             \x20 - match: \"localhost:{tls}\"\n\
             \x20   tls: {{ upgrade: true, client_cert: alice.crt, client_key: alice.enc.key, \
             key_password: S3cr3t-keypw-3f0, ca: ca.pem }}\n\
             \x20 - match: \"127.0.0.1:{tls}\"\n\
             \x20   tls: {{ upgrade: true }}\n\
             {extra}",
            ok = self.ok.addr.port(),
            unauth = self.unauthorized.port(),
            via = self.via_proxy.addr.port(),
            refused = self.refused_origin.addr.port(),
            refusing = self.refusing_proxy.addr.port(),
            proxy = self.proxy.addr.port(),
            closed = self.closed,
            down = self.proxy_down,
            tls = self.tls.port(),
            bi_user = BASIC_INLINE.0,
            bi_pw = BASIC_INLINE.1,
            bf_user = BASIC_FILE.0,
            p_user = PROXY.0,
            p_pw = PROXY.1,
            pr_user = PROXY_REFUSED.0,
            pd_user = PROXY_DOWN.0,
            pd_pw = PROXY_DOWN.1,
        )
    }

    /// The URL of the successful request with secrets of its own in the query.
    fn ok_url(&self) -> String {
        self.ok.url(
            "/data?token=S3cr3t-url-token-71&client_secret=S3cr3t-url-cs-72\
             &X%2DAmz%2DSignature=S3cr3t-url-sig-73&ticket=S3cr3t-url-ticket-75\
             &Api-Key=S3cr3t-url-apikey-80&x=1",
        )
    }
}

/// GET `url` through the daemon; returns the status, the `X-Authproxy-Error` code and
/// the body. With `own`, the client sends credentials of its own (an `Authorization` of
/// the client's own wins over the rule's).
async fn get(proxy: &str, url: &str, own: bool) -> (u16, String, String) {
    let mut client = Client::connect(proxy.parse().unwrap()).await;
    let mut req = Request::get(url)
        .header("proxy-authorization", "Bearer S3cr3t-client-bearer-81")
        .header("cookie", "s=S3cr3t-cookie-78");
    if own {
        req = req.header("authorization", basic(CLIENT_BASIC.0, CLIENT_BASIC.1));
    }
    let req = req.body(full("")).unwrap();
    let resp = client.send(req).await;
    let (resp, body) = support::body_of(resp).await;
    let code = resp
        .headers()
        .get("x-authproxy-error")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        resp.status().as_u16(),
        code,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// A request with userinfo in its target, which hyper's client does not send.
async fn get_with_userinfo(proxy: &str, authority: &str) -> String {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET http://u:S3cr3t-url-userinfo-74@{authority}/userinfo HTTP/1.1\r\n\
         Host: {authority}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `CONNECT authority` through the daemon, with the client's own `Proxy-Authorization`;
/// when the tunnel opens, one plain-http GET inside it. Returns everything read.
async fn connect(proxy: &str, authority: &str) -> String {
    let mut sock = TcpStream::connect(proxy).await.unwrap();
    let head = format!(
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\
         Proxy-Authorization: {}\r\n\r\n",
        basic(CLIENT_BASIC.0, CLIENT_BASIC.1)
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        if out.starts_with(b"HTTP/1.1 200") {
            let get =
                format!("GET /tunnel HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
            let _ = sock.write_all(get.as_bytes()).await;
        }
        let _ = sock.read_to_end(&mut out).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn header(r: &support::SeenRequest, name: &str) -> Option<String> {
    r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

/// Every request of the test against a started daemon; asserts that each went the way
/// it should (so the credentials were really in use) and that no error body leaks.
async fn exercise(w: &World, daemon: &Daemon) -> Vec<String> {
    let d = daemon.addr.as_str();
    let mut bodies = Vec::new();
    let mut expect = |what: &str, got: (u16, String, String), status: u16, code: &str| {
        assert_eq!(got.0, status, "{what}: {}", got.2);
        assert!(code.split('|').any(|c| c == got.1), "{what}: {}", got.1);
        assert_clean(&format!("the response body for {what}"), &got.2);
        bodies.push(got.2);
    };

    // Success: YAML inline Basic, inline and file headers and query parameters.
    let before = w.ok.requests().len();
    expect("ok", get(d, &w.ok.url("/plain"), false).await, 200, "");
    let seen = w.ok.requests()[before..].to_vec();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        header(&seen[0], "authorization"),
        Some(basic(BASIC_INLINE.0, BASIC_INLINE.1))
    );
    assert_eq!(
        header(&seen[0], "x-api-key").as_deref(),
        Some("S3cr3t-hdr-inline-91b")
    );
    assert_eq!(
        header(&seen[0], "x-auth-token").as_deref(),
        Some("S3cr3t-hdr-file-d07")
    );
    assert!(
        seen[0].target.contains("apikey=S3cr3t-q-inline-5e2")
            && seen[0].target.contains("ticket=S3cr3t-q-file-6b3"),
        "{}",
        seen[0].target
    );
    // With secrets of the client's own in the query.
    expect("ok with query", get(d, &w.ok_url(), false).await, 200, "");
    let text = get_with_userinfo(d, &w.ok.addr.to_string()).await;
    // pingora refuses such a request line (400); whatever the answer, it keeps quiet.
    assert!(text.starts_with("HTTP/1.1 "), "{text}");
    assert_clean("the response to a URL with userinfo", &text);

    // 401 from the origin, with the password_file Basic.
    expect(
        "401",
        get(
            d,
            &format!(
                "http://{}/private?session=S3cr3t-url-token-71",
                w.unauthorized
            ),
            true,
        )
        .await,
        401,
        "",
    );

    // Through an upstream proxy with credentials, with a Bearer token file.
    let before = w.via_proxy.requests().len();
    expect(
        "via proxy",
        get(d, &w.via_proxy.url("/via?passwd=S3cr3t-url-sig-73"), false).await,
        200,
        "",
    );
    let seen = w.via_proxy.requests()[before..].to_vec();
    assert_eq!(
        header(&seen[0], "authorization").as_deref(),
        Some("Bearer S3cr3t-bearer-c44")
    );
    let proxied = w.proxy.requests();
    assert_eq!(
        proxied.last().unwrap().proxy_authorization,
        Some(basic(PROXY.0, PROXY.1))
    );

    // An upstream proxy that refuses the credentials, and one that is down.
    expect(
        "refused by the proxy",
        get(
            d,
            &w.refused_origin.url("/r?auth=S3cr3t-url-token-71"),
            true,
        )
        .await,
        502,
        "upstream_proxy_auth",
    );
    assert_eq!(
        w.refusing_proxy
            .requests()
            .last()
            .unwrap()
            .proxy_authorization,
        Some(basic(PROXY_REFUSED.0, PROXY_REFUSED.1))
    );
    expect(
        "proxy down",
        get(
            d,
            &format!(
                "http://localhost:{}/down?code=S3cr3t-url-token-71",
                w.closed
            ),
            true,
        )
        .await,
        502,
        // Named after the origin today, though the proxy is what is down.
        "upstream_proxy_unreachable|connect_refused",
    );

    // A closed port.
    expect(
        "closed port",
        get(
            d,
            &format!(
                "http://127.0.0.1:{}/gone?access_token=S3cr3t-url-token-71",
                w.closed
            ),
            true,
        )
        .await,
        502,
        "connect_refused",
    );

    // rc files: USERNAME/PASSWORD and a %XX-escaped USERPASSWORD.
    let before = w.rc.requests().len();
    expect("rc", get(d, &w.rc.url("/rc"), false).await, 200, "");
    assert_eq!(
        header(&w.rc.requests()[before], "authorization"),
        Some(basic(RC_BASIC.0, RC_BASIC.1))
    );
    let before = w.rc_userpassword.requests().len();
    expect(
        "rc userpassword",
        get(d, &w.rc_userpassword.url("/rc2"), false).await,
        200,
        "",
    );
    assert_eq!(
        header(&w.rc_userpassword.requests()[before], "authorization"),
        Some(basic(RC_USERPASSWORD.0, RC_USERPASSWORD.1))
    );

    // The unscoped rc credential answers the loopback host's Basic challenge.
    let before = w.challenge.seen().len();
    expect(
        "challenge",
        get(d, &w.challenge.url("/challenged"), false).await,
        200,
        "",
    );
    let seen = w.challenge.seen();
    assert_eq!(seen.len(), before + 2, "{seen:?}");
    assert_eq!(
        seen[before + 1].authorization,
        Some(basic(UNSCOPED.0, UNSCOPED.1))
    );

    // TLS upgrade with an encrypted client key, and the .netrc entry over TLS.
    let before = w.tls.requests().len();
    expect(
        "tls",
        get(
            d,
            &format!("http://localhost:{}/challenge/tls", w.tls.port()),
            false,
        )
        .await,
        200,
        "",
    );
    // The .netrc password answers the host's challenge.
    let seen = w.tls.requests()[before..].to_vec();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].peer_cert.is_some(), "no client certificate");
    assert_eq!(
        seen[1]
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(basic(NETRC.0, NETRC.1))
    );

    // The rc file's client certificate with its HTTP.SSL.KEYPASSWORD.
    let before = w.tls.requests().len();
    expect(
        "tls from rc",
        get(
            d,
            &format!("http://127.0.0.1:{}/tls-rc", w.tls.port()),
            false,
        )
        .await,
        200,
        "",
    );
    assert!(
        w.tls.requests()[before].peer_cert.is_some(),
        "no client certificate"
    );

    // The rc file's HTTP.PROXY.SERVER with credentials, refused.
    expect(
        "rc proxy refused",
        get(d, &format!("http://127.0.0.1:{}/rcp", w.rc_proxied), true).await,
        502,
        "upstream_proxy_auth",
    );
    assert_eq!(
        w.refusing_proxy
            .requests()
            .last()
            .unwrap()
            .proxy_authorization,
        Some(basic(RC_PROXY.0, RC_PROXY.1))
    );

    // A redirect to https on the same host, followed inside, to a closed port.
    expect(
        "redirect",
        get(
            d,
            &format!("http://{}/moved?key=S3cr3t-url-apikey-80", w.redirect),
            true,
        )
        .await,
        502,
        "connect_refused",
    );

    // CONNECT tunnels: through the proxy with credentials, through the one refusing
    // them, to a closed port.
    let text = connect(d, &w.via_proxy.addr.to_string()).await;
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
        "{text}"
    );
    let last = w.proxy.requests().pop().unwrap();
    assert!(last.request_line.starts_with("CONNECT "), "{last:?}");
    assert_eq!(last.proxy_authorization, Some(basic(PROXY.0, PROXY.1)));
    for authority in [
        w.refused_origin.addr.to_string(),
        format!("127.0.0.1:{}", w.closed),
    ] {
        let text = connect(d, &authority).await;
        assert!(
            text.starts_with("HTTP/1.1 502"),
            "CONNECT {authority}: {text}"
        );
        assert_clean(&format!("the answer to CONNECT {authority}"), &text);
        bodies.push(text);
    }
    bodies
}

/// The level and target of a log line, plain (`TIMESTAMP LEVEL TARGET: message`) or
/// JSON (`{"timestamp":…,"level":"INFO",…,"target":"authproxy::access"}`).
fn level_and_target(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('{') {
        let field = |name: &str| {
            let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
            let len = line[start..].find('"')?;
            Some(&line[start..start + len])
        };
        return Some((field("level")?, field("target")?));
    }
    let mut words = line.split_whitespace().skip(1);
    Some((words.next()?, words.next()?))
}

/// `authproxy ARGS` with `home` as HOME; stdout and stderr together.
fn cli(home: &Path, args: &[&str]) -> String {
    let out = process::command(home).args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_is_ever_printed() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let w = World::start(h).await;
    write(h, "config.yaml", &w.config(""));
    write(h, "config-trace.yaml", &w.config("log: { level: trace }\n"));
    let config = h.join("config.yaml");
    let config = config.to_str().unwrap();
    let trace_config = h.join("config-trace.yaml");
    let trace_config = trace_config.to_str().unwrap();

    // check and explain.
    let check = cli(h, &["check", "--config", config]);
    assert!(check.contains("header: x-api-key: ***"), "{check}");
    assert!(check.contains("apikey=***"), "{check}");
    assert!(
        check.contains("X-Api-Key") && check.contains("is written inline; value_file"),
        "no warning about inline header values:\n{check}"
    );
    assert_clean("`authproxy check`", &check);
    let mut explained = String::new();
    for url in [
        w.ok_url(),
        format!("http://{}/private", w.unauthorized),
        w.via_proxy.url("/via"),
        w.refused_origin.url("/r"),
        format!("http://localhost:{}/down", w.closed),
        w.rc.url("/rc"),
        w.rc_userpassword.url("/rc2"),
        format!("http://localhost:{}/tls", w.tls.port()),
        "http://u:S3cr3t-url-bad-79@[::1/x".to_owned(),
        "ftp://u:S3cr3t-url-bad-79@127.0.0.1/?token=S3cr3t-url-bad-79".to_owned(),
        "S3cr3t-url-bad-79".to_owned(),
    ] {
        let out = cli(h, &["explain", "--config", config, &url]);
        assert_clean(&format!("`authproxy explain {url}`"), &out);
        explained.push_str(&out);
    }
    assert!(explained.contains("header: x-api-key: ***"), "{explained}");
    assert!(explained.contains("query: ticket=***"), "{explained}");
    assert!(
        explained.contains("is not an http:// or https:// URL"),
        "{explained}"
    );

    // The daemon, at the chattiest settings each way a level can be given.
    for (args, env) in [
        (vec!["--config", config], vec![("RUST_LOG", CHATTY)]),
        (vec!["--config", config, "--log-level", CHATTY], vec![]),
        (vec!["--config", trace_config], vec![]),
        (
            vec!["--config", config, "--log-format", "json"],
            vec![("RUST_LOG", CHATTY)],
        ),
    ] {
        let mut daemon = Daemon::start_in(h, &args, &env);
        let bodies = exercise(&w, &daemon).await;
        let (clean, log) = daemon.stop();
        assert!(clean, "{log}");
        let how = format!("{args:?} {env:?}");
        let status = |code: u16| {
            log.contains(&format!("status={code}")) || log.contains(&format!("\"status\":{code}"))
        };
        assert!(status(200), "{how}: no access log line:\n{log}");
        assert!(status(401), "{how}:\n{log}");
        assert!(log.contains("connect_refused"), "{how}:\n{log}");
        for masked in [
            "token=***",
            "client_secret=***",
            "X%2DAmz%2DSignature=***",
            "ticket=***",
            "Api-Key=***",
        ] {
            assert!(log.contains(masked), "{how}: {masked} not in\n{log}");
        }
        for line in log.lines() {
            let Some((level, target)) = level_and_target(line) else {
                continue;
            };
            let capped = [
                "pingora",
                "rustls",
                "hyper",
                "h2",
                "mio",
                "notify",
                "tokio_util",
            ]
            .iter()
            .any(|c| target.starts_with(c));
            assert!(
                !(capped && matches!(level, "DEBUG" | "TRACE" | "INFO")),
                "{how}: a capped crate logged:\n{line}"
            );
        }
        assert_clean(&format!("the daemon's output with {how}"), &log);
        assert_eq!(bodies.len(), 16);
    }
}

/// The login dance at trace level: the password, the codes and every session cookie the
/// daemon handled stay out of its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_secret_is_printed_during_the_dance() {
    use crate::edl::{basic_header, Options, World, LOGIN_COOKIE, PASSWORD, SESSION_COOKIE, USER};
    let world = World::start(Options::default()).await;
    let home = tempfile::tempdir().unwrap();
    let config = world.proxy_home(home.path());
    let mut daemon = Daemon::start_in(
        home.path(),
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", CHATTY)],
    );
    for path in ["/first.nc", "/second.nc"] {
        let (status, _, body) = get(&daemon.addr, &world.data_url(path), false).await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, log) = daemon.stop();
    let mut secrets = vec![PASSWORD.to_owned(), basic_header(USER, PASSWORD)];
    for hit in world.hits() {
        secrets.extend(hit.query("code"));
        secrets.extend(hit.cookie(SESSION_COOKIE));
        secrets.extend(hit.cookie(LOGIN_COOKIE));
    }
    assert!(secrets.len() >= 4, "the dance did not run: {secrets:?}");
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        assert!(
            !log.contains(s.as_str()),
            "{s:?} appears in the log:\n{log}"
        );
        let b64 = base64::engine::general_purpose::STANDARD.encode(s);
        assert!(
            !log.contains(b64.trim_end_matches('=')),
            "{s:?} (base64) in the log"
        );
    }
}
