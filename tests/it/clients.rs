//! Real client programs through the proxy: curl and Python's urllib.

use tokio::process::Command;

use authproxy::config::Snapshot;

use crate::support::{self, Origin, Proxy};

async fn run(cmd: &mut Command) -> (bool, Vec<u8>, String) {
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("client finished within 60 s")
        .expect("client program runs (.ci/run installs curl and python3)");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_get_post_and_connect() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let dir = tempfile::tempdir().unwrap();

    // GET a 3 MB body.
    let (ok, body, err) = run(Command::new("curl")
        .args(["-sS", "--fail", "-x", &proxy.url()])
        .arg(origin.url("/bytes/3000000")))
    .await;
    assert!(ok, "{err}");
    assert!(body == support::pattern_bytes(3_000_000));

    // POST a file; the origin echoes it.
    let file = dir.path().join("upload.bin");
    std::fs::write(&file, support::pattern_bytes(777_777)).unwrap();
    let (ok, body, err) = run(Command::new("curl")
        .args(["-sS", "--fail", "-x", &proxy.url(), "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(origin.url("/echo")))
    .await;
    assert!(ok, "{err}");
    assert!(body == support::pattern_bytes(777_777));

    // https through a CONNECT tunnel, verifying the test CA.
    let pki = support::TestPki::new();
    let (tls, _) = support::tls_origin(&pki).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let (ok, body, err) = run(Command::new("curl")
        .args(["-sS", "--fail", "-x", &proxy.url(), "--cacert"])
        .arg(&ca)
        .arg(format!("https://localhost:{}/bytes/100000", tls.port())))
    .await;
    assert!(ok, "{err}");
    assert!(body == support::pattern_bytes(100_000));

    // A failure reaches curl as the explained 502.
    let port = support::closed_port();
    let (_, body, _) = run(Command::new("curl")
        .args(["-sS", "-x", &proxy.url()])
        .arg(format!("http://127.0.0.1:{port}/")))
    .await;
    assert!(String::from_utf8_lossy(&body).contains("refused"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_urllib_through_http_proxy_env() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let script = "import sys, urllib.request\n\
                  data = urllib.request.urlopen(sys.argv[1]).read()\n\
                  sys.stdout.buffer.write(data)\n";
    let (ok, body, err) = run(Command::new("python3")
        .args(["-c", script])
        .arg(origin.url("/bytes/123456"))
        .env("http_proxy", proxy.url())
        .env_remove("no_proxy")
        .env_remove("NO_PROXY"))
    .await;
    assert!(ok, "{err}");
    assert!(body == support::pattern_bytes(123_456));
    assert_eq!(origin.requests().len(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wget_through_http_proxy_env() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(Snapshot::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("data.bin");
    let (ok, _, err) = run(Command::new("wget")
        .args(["-q", "-O"])
        .arg(&out)
        .arg(origin.url("/bytes/2000000"))
        .env("http_proxy", proxy.url())
        .env_remove("no_proxy")
        .env_remove("NO_PROXY"))
    .await;
    assert!(ok, "{err}");
    assert!(std::fs::read(&out).unwrap() == support::pattern_bytes(2_000_000));
    proxy.stop().await;
}
