/*!
The admin listener: `/healthz` and `/metrics` on a loopback address of its own.

Off unless the configuration says `admin: { listen: "127.0.0.1:9129" }` (a non-loopback
address does not load). It answers two small GETs, so it is a hand-rolled HTTP/1.1
responder (httparse for the head, one response, then close) rather than a second HTTP
stack beside pingora's:

- `GET /healthz`: `200 serving` while the daemon serves, `503 draining` once it has
  begun to stop (a load balancer or `systemctl` check stops sending work);
- `GET /metrics`: the Prometheus text of [`crate::metrics::Metrics`].

Every connection passes [`admit`] first, the same access check as the proxy's.
*/

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics;
use crate::session::State;

/// The admin address `authproxy status` and the examples use.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9129";

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether this connection may use the admin listener: the same per-connection access
/// check as the proxy's (peer uid). Everyone on the loopback interface for now. A
/// connection refused here is answered 403, not dropped.
pub fn admit(_sock: &TcpStream) -> bool {
    true
}

/// Serves the admin listener until the task is dropped. It outlives the proxy's own
/// listeners on purpose: `/healthz` says "draining" while requests finish.
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((sock, _peer)) => {
                let state = state.clone();
                tokio::spawn(async move { answer(sock, &state).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads one request and writes its response; the connection then closes.
async fn answer(mut sock: TcpStream, state: &State) {
    let admitted = admit(&sock);
    let response = match read_head(&mut sock).await {
        Some(Ok(_)) if !admitted => Response::text(
            403,
            "Forbidden",
            "the admin listener answers only the users the proxy serves\n",
        ),
        Some(Ok((method, path))) => route(&method, &path, state),
        Some(Err(())) => Response::text(400, "Bad Request", "not a valid HTTP/1.1 request\n"),
        None => return,
    };
    let head_only = response.head_only;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&response.body);
    }
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
            head_only: false,
        }
    }
}

fn route(method: &str, path: &str, state: &State) -> Response {
    let path = path.split('?').next().unwrap_or_default();
    let mut response = match path {
        "/healthz" | "/metrics" if method != "GET" && method != "HEAD" => {
            Response::text(405, "Method Not Allowed", "only GET and HEAD\n")
        }
        "/healthz" if state.metrics.is_draining() => {
            Response::text(503, "Service Unavailable", "draining\n")
        }
        "/healthz" => Response::text(200, "OK", "serving\n"),
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: metrics::CONTENT_TYPE,
            body: state.metrics.render(state.jar.len()),
            head_only: false,
        },
        _ => Response::text(
            404,
            "Not Found",
            "the admin listener serves /healthz and /metrics\n",
        ),
    };
    response.head_only = method == "HEAD";
    response
}

/// The method and path of the request, `Err` if it is not HTTP, `None` if the client
/// went away or was too slow.
async fn read_head(sock: &mut TcpStream) -> Option<Result<(String, String), ()>> {
    let mut buf = Vec::with_capacity(512);
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        let mut chunk = [0u8; 1024];
        let n = match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default().to_owned();
                let path = req.path.unwrap_or_default().to_owned();
                return Some(Ok((method, path)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            _ => return Some(Err(())),
        }
    }
}
