/*!
`authproxy status`: asks a running daemon's admin listener ([`crate::admin`]) and says
what it reports in words.

The daemon is asked over plain HTTP/1.1 on loopback (`/healthz`, then `/metrics`), with
short timeouts: a daemon that does not answer is reported as unreachable, never waited
for. The Prometheus text is read back into samples ([`parse`]) and summed per label.
*/

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long to wait for the admin listener to accept, and then to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
const MAX_ANSWER: u64 = 4 << 20;

/// Why `status` could not report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(
        "cannot reach the admin listener at {addr}: {cause}; is `authproxy serve` running \
         with `admin: {{ listen: \"{addr}\" }}`?"
    )]
    Unreachable { addr: SocketAddr, cause: String },
    #[error("the admin listener at {addr} answered something that is not HTTP: {what}")]
    Garbled { addr: SocketAddr, what: String },
}

/// One line of Prometheus text: `name{label="value",...} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }
}

/// Asks the daemon at `addr` and returns the report.
pub fn report(addr: SocketAddr) -> Result<String, StatusError> {
    let (health, _) = get(addr, "/healthz")?;
    let (code, body) = get(addr, "/metrics")?;
    if code != 200 {
        return Err(StatusError::Garbled {
            addr,
            what: format!("/metrics answered {code}"),
        });
    }
    let samples = parse(&body);
    Ok(words(addr, health, &samples))
}

/// `GET path`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), StatusError> {
    let unreachable = |e: std::io::Error| StatusError::Unreachable {
        addr,
        cause: e.to_string(),
    };
    let mut sock = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(unreachable)?;
    sock.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(unreachable)?;
    sock.set_write_timeout(Some(READ_TIMEOUT))
        .map_err(unreachable)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    sock.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    sock.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let garbled = |what: &str| StatusError::Garbled {
        addr,
        what: what.to_owned(),
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(len)) => len,
        _ => return Err(garbled("no complete response head")),
    };
    let code = resp.code.ok_or_else(|| garbled("no status code"))?;
    let body = String::from_utf8(raw[len..].to_vec()).map_err(|_| garbled("a body not UTF-8"))?;
    Ok((code, body))
}

/// The samples of Prometheus text (format 0.0.4); lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    rest = &r[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    // A quoted value with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of a metric's samples, grouped by the values of `by` (in label order).
fn grouped(samples: &[Sample], name: &str, by: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = by.iter().map(|b| s.label(b)).collect::<Vec<_>>().join(" ");
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .fold(0.0, |a, s| a + s.value)
}

/// `12 (GET 2xx 10, POST 4xx 2)`, or `0`.
fn counted(groups: &BTreeMap<String, f64>) -> String {
    // A fold from 0.0: `sum` of no floats is -0.0.
    let sum = groups.values().fold(0.0, |a, b| a + b);
    let parts: Vec<String> = groups
        .iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if parts.is_empty() {
        format!("{sum}")
    } else {
        format!("{sum} ({})", parts.join(", "))
    }
}

/// `1d 2h 3m 4s`, leading zero units left out.
fn duration_words(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    let (d, h, m, s) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n > 0 || !out.is_empty() {
            let _ = write!(out, "{n}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

/// The mean of a histogram in milliseconds, with its count: `4 (mean 1.2 ms)`.
fn latency(samples: &[Sample], name: &str) -> String {
    let count = total(samples, &format!("{name}_count"));
    let sum = total(samples, &format!("{name}_sum"));
    if count > 0.0 {
        format!("{count} (mean {:.1} ms)", sum / count * 1e3)
    } else {
        "none yet".to_owned()
    }
}

fn words(addr: SocketAddr, health: u16, samples: &[Sample]) -> String {
    let state = match health {
        200 => "serving".to_owned(),
        503 => "draining (stopping: requests in flight are finishing)".to_owned(),
        other => format!("unknown (/healthz answered {other})"),
    };
    let mut out = String::new();
    let _ = writeln!(out, "authproxy at {addr}: {state}");
    let _ = writeln!(
        out,
        "uptime: {}",
        duration_words(total(samples, "authproxy_uptime_seconds"))
    );
    let lines = [
        (
            "requests",
            grouped(samples, "authproxy_requests_total", &["method", "status"]),
        ),
        (
            "failures",
            grouped(samples, "authproxy_failures_total", &["code"]),
        ),
        (
            "logins",
            grouped(samples, "authproxy_logins_total", &["site", "outcome"]),
        ),
        (
            "reloads",
            grouped(samples, "authproxy_reloads_total", &["outcome"]),
        ),
    ];
    for (what, groups) in &lines {
        let _ = writeln!(out, "{what}: {}", counted(groups));
    }
    let _ = writeln!(
        out,
        "cookies in the jar: {}",
        total(samples, "authproxy_jar_cookies")
    );
    let _ = writeln!(
        out,
        "open client connections: {}",
        total(samples, "authproxy_client_connections")
    );
    let _ = writeln!(out, "open tunnels: {}", total(samples, "authproxy_tunnels"));
    let _ = writeln!(
        out,
        "upstream connects: {}",
        latency(samples, "authproxy_upstream_connect_seconds")
    );
    let _ = writeln!(
        out,
        "first bytes: {}",
        latency(samples, "authproxy_upstream_first_byte_seconds")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_plain_samples() {
        let text = "# HELP x y\n# TYPE x counter\n\
                    a_total{method=\"GET\",status=\"2xx\"} 3\n\
                    b{site=\"we \\\"said\\\", \\\\ok\",outcome=\"ok\"} 1\n\
                    c 0.5\n\
                    broken{ 1\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].label("status"), "2xx");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("site"), "we \"said\", \\ok");
        assert_eq!(s[1].label("outcome"), "ok");
        assert_eq!(s[2].name, "c");
        assert_eq!(s[2].value, 0.5);
    }

    #[test]
    fn words_sum_per_label() {
        let m = crate::metrics::Metrics::new();
        m.request("GET", 200, None);
        m.request("GET", 204, None);
        m.request("POST", 502, Some("connect_refused"));
        let text = words("127.0.0.1:9".parse().unwrap(), 200, &parse(&m.render(4)));
        assert!(
            text.starts_with("authproxy at 127.0.0.1:9: serving\n"),
            "{text}"
        );
        assert!(
            text.contains("\nrequests: 3 (GET 2xx 2, POST 5xx 1)\n"),
            "{text}"
        );
        assert!(
            text.contains("\nfailures: 1 (connect_refused 1)\n"),
            "{text}"
        );
        assert!(text.contains("\nlogins: 0\n"), "{text}");
        assert!(text.contains("\ncookies in the jar: 4\n"), "{text}");
        assert_eq!(duration_words(3725.0), "1h 2m 5s");
        assert_eq!(duration_words(5.0), "5s");
    }
}
