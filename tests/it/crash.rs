//! Crash safety of the cookie jar: the real binary is killed with SIGKILL while its
//! writer is saving a large, growing jar, at 20 different moments; every time the file
//! left behind is either absent (killed before the first save) or a complete jar that
//! the Netscape reader takes without a problem.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use authproxy::session::netscape;

use crate::process::Daemon;
use crate::support::{full, BoxBody};

/// Cookies each response sets (all stored by one `Jar::store` call).
const PER_RESPONSE: usize = 50;
/// Bytes of each cookie's value: the jar grows by about 100 KiB a response.
const VALUE_LEN: usize = 2000;
/// Responses per daemon at most: the jar stays under 6 MB (the reader takes 16).
const MAX_REQUESTS: usize = 60;
const RUNS: usize = 20;
/// Daemons killed at the same time.
const PARALLEL: usize = 5;

/// An origin whose every answer sets [`PER_RESPONSE`] new cookies (for another path, so
/// that requests do not carry megabytes of them back).
async fn cookie_fountain() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let mut resp = Response::builder();
                        let value = "v".repeat(VALUE_LEN);
                        for i in 0..PER_RESPONSE {
                            resp = resp.header(
                                "set-cookie",
                                format!("c{n}_{i}={value}; Path=/elsewhere; Max-Age=86400"),
                            );
                        }
                        Ok::<Response<BoxBody>, Infallible>(resp.body(full("ok")).unwrap())
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    addr
}

/// Requests through the proxy on one kept connection until it fails (the kill) or
/// [`MAX_REQUESTS`] are done.
async fn keep_setting(
    proxy: String,
    origin: SocketAddr,
    first: tokio::sync::oneshot::Sender<()>,
) -> usize {
    let mut first = Some(first);
    let Ok(mut sock) = TcpStream::connect(&proxy).await else {
        return 0;
    };
    let req = format!("GET http://{origin}/set HTTP/1.1\r\nHost: {origin}\r\n\r\n");
    for done in 0..MAX_REQUESTS {
        if sock.write_all(req.as_bytes()).await.is_err() {
            return done;
        }
        // The answer is small and ends with the body `ok` (Content-Length 2).
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return done,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
        if let Some(first) = first.take() {
            let _ = first.send(());
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    MAX_REQUESTS
}

/// What one killed run left behind.
struct Outcome {
    /// Cookies in the jar file (`None`: no file).
    cookies: Option<usize>,
    /// Temporary files left: the kill came in the middle of a save.
    torn_saves: usize,
}

async fn one_run(origin: SocketAddr, kill_after: Duration) -> Outcome {
    let home = tempfile::tempdir().unwrap();
    let jar = home.path().join("state").join("jar.txt");
    let config = home.path().join("config.yaml");
    std::fs::write(&config, format!("cookie_jar: {}\n", jar.display())).unwrap();
    let home_path = home.path().to_owned();
    // `start_in` waits for the listener with blocking sleeps: keep it off the runtime.
    let mut daemon = tokio::task::spawn_blocking(move || {
        Daemon::start_in(&home_path, &["--config", config.to_str().unwrap()], &[])
    })
    .await
    .unwrap();
    // The clock starts at the first answer, that is the jar's first change: its first
    // save follows about a second later (`SAVE_DELAY`).
    let (first, answered) = tokio::sync::oneshot::channel();
    let client = tokio::spawn(keep_setting(daemon.addr.clone(), origin, first));
    tokio::time::timeout(Duration::from_secs(10), answered)
        .await
        .expect("a first answer")
        .unwrap();
    tokio::time::sleep(kill_after).await;
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
    let answered = client.await.unwrap_or(0);

    let torn_saves = std::fs::read_dir(jar.parent().unwrap())
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
                .count()
        })
        .unwrap_or(0);
    eprintln!("crash: killed {kill_after:?} after the first answer, after {answered} answers");
    let cookies = match std::fs::read(&jar) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("jar unreadable after kill at {kill_after:?}: {e}"),
        Ok(bytes) => {
            let parsed = netscape::parse(&bytes);
            assert!(parsed.header, "no header after kill at {kill_after:?}");
            assert!(
                parsed.problems.is_empty() && parsed.binary_at.is_none(),
                "torn jar after kill at {kill_after:?}: {:?}",
                parsed.problems
            );
            assert!(bytes.ends_with(b"\n"), "jar cut short at {kill_after:?}");
            // Each response's cookies are stored together, so a whole save holds whole
            // responses.
            assert_eq!(parsed.cookies.len() % PER_RESPONSE, 0, "{kill_after:?}");
            assert!(parsed.cookies.iter().all(|c| c.value().len() == VALUE_LEN));
            Some(parsed.cookies.len())
        }
    };
    Outcome {
        cookies,
        torn_saves,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_jar_writes_never_leaves_a_torn_jar() {
    let origin = cookie_fountain().await;
    // Kills timed against the writer: ten in 30 ms steps around the first save (about a
    // second after the first change, of a jar of about a megabyte by then), ten spread
    // over the later saves (one a second, of a jar growing to several megabytes). Five
    // daemons at a time.
    let delays: Vec<Duration> = (0..RUNS / 2)
        .map(|i| Duration::from_millis(1000 + 30 * i as u64))
        .chain((0..RUNS / 2).map(|i| Duration::from_millis(1700 + 230 * i as u64)))
        .collect();
    let mut outcomes = Vec::new();
    for batch in delays.chunks(PARALLEL) {
        let runs: Vec<_> = batch
            .iter()
            .map(|&d| tokio::spawn(one_run(origin, d)))
            .collect();
        for r in runs {
            outcomes.push(r.await.unwrap());
        }
    }
    let saved = outcomes
        .iter()
        .filter(|o| o.cookies.is_some_and(|n| n > 0))
        .count();
    let torn: usize = outcomes.iter().map(|o| o.torn_saves).sum();
    eprintln!(
        "crash: {RUNS} kills; {saved} left a saved jar, {torn} interrupted a save (temporary file left); cookies: {:?}",
        outcomes.iter().map(|o| o.cookies).collect::<Vec<_>>()
    );
    // The late kills all came after a save: the test did race the writer.
    let late_saved = outcomes[RUNS / 2..]
        .iter()
        .filter(|o| o.cookies.is_some_and(|n| n > 0))
        .count();
    assert!(
        late_saved >= RUNS / 2 - 1,
        "only {late_saved} late runs saved a jar"
    );
}
