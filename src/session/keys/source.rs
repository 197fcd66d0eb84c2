/*!
The sources of a query key: `from_url` (through the side client, with the credentials of
the rule that matches the URL), `from_command` (no shell, bounded by its timeout) and the
key in the snapshot for `token_file`, and what counts as a key in their answers. Error
texts name the source and what went wrong, never the key or a command's output.
*/

use std::process::Stdio;
use std::time::Duration;

use crate::config::Snapshot;
use crate::rule::{KeySource, QueryToken};
use crate::session::State;

/// The largest key accepted: Handcar's are about 80 bytes.
const MAX_KEY: usize = 16 * 1024;

/// Gets one key from the spec's source. The `Err` text names the source and what went
/// wrong, never the key or a command's output.
pub(super) async fn fetch(
    snapshot: &Snapshot,
    state: &State,
    spec: &QueryToken,
) -> Result<String, String> {
    match &spec.source {
        KeySource::File { key, .. } => Ok(key.expose().clone()),
        KeySource::Url(url) => fetch_url(snapshot, state, url).await,
        KeySource::Command { argv, timeout } => run_command(argv, *timeout).await,
    }
}

/// A GET of the key endpoint with the credentials of the rule that matches it.
async fn fetch_url(snapshot: &Snapshot, state: &State, url: &url::Url) -> Result<String, String> {
    let shown = crate::target::Target::from_absolute(url.as_str().as_bytes())
        .map(|t| crate::redact::LogUrl(&t, &snapshot.secret_query_names).to_string())
        .unwrap_or_else(|_| "the key endpoint".to_owned());
    let mut req = crate::client::SideRequest::get(url.clone());
    req.basic = true;
    req.headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("text/plain, application/json;q=0.9"),
    );
    let resp = crate::client::send(snapshot, state, req)
        .await
        .map_err(|f| {
            format!(
                "the key endpoint {shown} could not be reached: {}",
                f.message.trim_end()
            )
        })?;
    if !resp.status.is_success() {
        let hint = match resp.status.as_u16() {
            401 | 403 => " (it refused the credentials of the site that matches it)",
            _ => "",
        };
        return Err(format!(
            "the key endpoint {shown} answered {}{hint}",
            resp.status
        ));
    }
    let content_type = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    parse_key(&resp.body, content_type).map_err(|e| format!("the key endpoint {shown} {e}"))
}

/// Runs the command (no shell: the program and its arguments as configured), bounded by
/// `timeout` (then killed); its standard output is the key. Its standard error is not
/// shown: it may hold the key.
async fn run_command(argv: &[String], timeout: Duration) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let program = argv.first().map_or("", String::as_str);
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("the command {program} could not be started ({e})"))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!(
            "the command {program} could not be started (no pipes)"
        ));
    };
    // At most one byte more than a key may be: a command that prints more is stopped
    // (its output is not kept), and its standard error is only counted.
    let run = async {
        let err_bytes = tokio::spawn(async move {
            let (mut n, mut buf) = (0usize, [0u8; 4096]);
            while let Ok(k @ 1..) = stderr.read(&mut buf).await {
                n += k;
            }
            n
        });
        let mut out = Vec::new();
        let mut limited = stdout.take(MAX_KEY as u64 + 1);
        limited.read_to_end(&mut out).await?;
        if out.len() > MAX_KEY {
            return Ok((None, out, 0));
        }
        let status = child.wait().await?;
        let err_bytes = err_bytes.await.unwrap_or(0);
        Ok::<_, std::io::Error>((Some(status), out, err_bytes))
    };
    let (status, out, err_bytes) = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            return Err(format!(
                "the command {program} did not finish within {timeout:?} (it was stopped)"
            ))
        }
        Ok(Err(e)) => return Err(format!("the command {program} failed ({e})")),
        Ok(Ok(done)) => done,
    };
    match status {
        None => Err(format!(
            "the command {program} printed more than 16 KiB, which no key is (it was stopped)"
        )),
        Some(s) if !s.success() => Err(format!(
            "the command {program} failed ({s}; {err_bytes} bytes on its standard error, not \
             shown as they may hold the key)"
        )),
        Some(_) => parse_key(&out, None).map_err(|e| format!("the command {program} {e}")),
    }
}

/// The key in a key endpoint's answer: the body itself (text, surrounding whitespace
/// trimmed, used as sent), or a JSON string, or a JSON object with one string field.
/// Errors say what is wrong, never what the body holds.
pub fn parse_key(body: &[u8], content_type: Option<&str>) -> Result<String, &'static str> {
    let text =
        std::str::from_utf8(body).map_err(|_| "answered with a body that is not UTF-8 text")?;
    let text = text.trim();
    let json_type = content_type.is_some_and(|t| {
        let t = t.trim().to_ascii_lowercase();
        t.starts_with("application/json")
            || t.split(';').next().is_some_and(|m| m.ends_with("+json"))
    });
    let key = if json_type || text.starts_with('"') || text.starts_with('{') {
        const SHAPE: &str =
            "answered with JSON that is neither a string nor an object with one string field";
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(serde_json::Value::Object(m)) if m.len() == 1 => match m.into_iter().next() {
                Some((_, serde_json::Value::String(s))) => s,
                _ => return Err(SHAPE),
            },
            Ok(_) => return Err(SHAPE),
            Err(_) if json_type => return Err("answered with JSON that does not parse"),
            Err(_) => text.to_owned(),
        }
    } else {
        text.to_owned()
    };
    if key.is_empty() {
        return Err("answered with an empty key");
    }
    if key.len() > MAX_KEY {
        return Err("answered with more than 16 KiB, which no key is");
    }
    if key.chars().any(char::is_control) {
        return Err("answered with a key that holds line breaks or control characters");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_the_key_as_sent() {
        let key = "AGENT_KEYS6jo+WZ/kx=%2BIX";
        assert_eq!(
            parse_key(format!(" {key}\r\n").as_bytes(), None).unwrap(),
            key
        );
        assert_eq!(
            parse_key(format!("{key}\n").as_bytes(), Some("text/plain")).unwrap(),
            key
        );
        let json = serde_json::to_string(key).unwrap();
        assert_eq!(parse_key(json.as_bytes(), None).unwrap(), key);
        let obj = serde_json::json!({ "agentKey": key }).to_string();
        assert_eq!(
            parse_key(obj.as_bytes(), Some("application/json; charset=utf-8")).unwrap(),
            key
        );
    }

    #[test]
    fn bad_bodies_are_explained_without_their_contents() {
        for (body, ct) in [
            (&b"{\"a\":\"S3cr3t\",\"b\":\"x\"}"[..], None),
            (b"{\"a\":1}", None),
            (b"[\"S3cr3t\"]", Some("application/json")),
            (b"S3cr3t{", Some("application/json")),
            (b"  \n", None),
            (b"S3cr3t\nsecond line", None),
            (b"\xffS3cr3t", None),
        ] {
            let e = parse_key(body, ct).unwrap_err();
            assert!(!e.contains("S3cr3t"), "{e}");
        }
        // Not JSON after all: a key that starts with a brace is used as sent.
        assert_eq!(parse_key(b"{abc", None).unwrap(), "{abc");
    }

    #[tokio::test]
    async fn commands_are_bounded_and_their_stderr_is_only_counted() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let t = Duration::from_secs(5);
        let started = std::time::Instant::now();
        let e = run_command(&argv(&["yes", "S3cr3t"]), t).await.unwrap_err();
        assert_eq!(
            e,
            "the command yes printed more than 16 KiB, which no key is (it was stopped)"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let e = run_command(&argv(&["sh", "-c", "echo S3cr3t >&2; exit 4"]), t)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            "the command sh failed (exit status: 4; 7 bytes on its standard error, not shown \
             as they may hold the key)"
        );
        let e = run_command(&argv(&["/nonexistent/get-key"]), t)
            .await
            .unwrap_err();
        assert!(
            e.starts_with("the command /nonexistent/get-key could not be started ("),
            "{e}"
        );
        let key = run_command(&argv(&["printf", "  K+/=%%2B\\n"]), t)
            .await
            .unwrap();
        assert_eq!(key, "K+/=%2B");
    }
}
