/*!
Reading and judging a request head before anything else sees it.

pingora's HTTP/1 parser is lenient where a forward proxy must not be (it escapes a space
in the URL, accepts `Transfer-Encoding: chunked, chunked`, waits on a line holding only a
method) and strict where it should explain itself (a bare 400 for a `Host` that differs
from the URL only in case). So the accept loop reads each head here, bounded by a total
deadline and a size, with httparse, and:
- refuses what is not valid HTTP/1.1 with a [`Failure`] that names the problem (400,
  408 or 431), before any byte goes upstream;
- normalises what RFC 9112 lets a proxy normalise: `Host` becomes the URL's authority
  (§3.2.2: a proxy uses the absolute-form authority), identical `Content-Length`
  duplicates collapse to one (RFC 9110 §8.6);
- tells the accept loop whether the request is a `CONNECT` and how its body is framed.

[`parse`] is pure (unit tests and fuzzing call it); [`read`] drives it over a [`Conn`].
*/

use std::mem::MaybeUninit;
use std::time::Duration;

use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use tokio::time::Instant;

use crate::conn::{Body, Conn};
use crate::failure::Failure;
use crate::limits::{Limits, PINGORA_MAX_HEADERS};

/// A complete, acceptable request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    /// Length of the head as the client sent it.
    pub len: usize,
    /// The head to hand on, when normalising changed it.
    pub rewritten: Option<Vec<u8>>,
    pub body: Body,
    pub connect: bool,
}

/// What [`parse`] made of the bytes so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Complete(Head),
    /// Valid so far; more bytes are needed.
    Partial,
}

/// Why [`read`] returned without a head.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed, or sent nothing before the idle timeout: close quietly.
    Quiet,
    /// Answer this and close.
    Refused(Failure),
}

/// Reads the next request head on `conn`. `idle` bounds the wait for the first byte
/// when the connection already served a request; on a new connection the head deadline
/// runs from `start` (the accept).
pub async fn read(
    conn: &mut Conn,
    limits: &Limits,
    start: Instant,
    idle: Option<Duration>,
) -> Result<Head, Ended> {
    let mut deadline = start + limits.head_timeout;
    if conn.buffered().is_empty() {
        if let Some(idle) = idle {
            match tokio::time::timeout(idle, conn.fill()).await {
                Ok(Ok(n)) if n > 0 => deadline = Instant::now() + limits.head_timeout,
                _ => return Err(Ended::Quiet),
            }
        }
    }
    loop {
        if !conn.buffered().is_empty() {
            match parse(conn.buffered(), limits) {
                Ok(Status::Complete(head)) => return Ok(head),
                Ok(Status::Partial) if conn.buffered().len() >= limits.max_head_bytes => {
                    return Err(Ended::Refused(Failure::head_too_large(
                        limits.max_head_bytes,
                    )))
                }
                Ok(Status::Partial) => {}
                Err(f) => return Err(Ended::Refused(f)),
            }
        }
        match tokio::time::timeout_at(deadline, conn.fill()).await {
            Ok(Ok(0)) | Ok(Err(_)) if conn.buffered().is_empty() => return Err(Ended::Quiet),
            Ok(Ok(0)) => return Err(Ended::Refused(Failure::incomplete_head())),
            Ok(Err(_)) => return Err(Ended::Quiet),
            Ok(Ok(_)) => {}
            Err(_) => return Err(Ended::Refused(Failure::head_timeout(limits.head_timeout))),
        }
    }
}

/// Judges the bytes received so far (the head starts at `buf[0]`).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Status, Failure> {
    // RFC 9112 §2.2: empty lines before the request line are ignored (httparse too).
    let lead = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    let line_end = match buf[lead..].iter().position(|&b| b == b'\n') {
        Some(i) => lead + i,
        None => {
            check_partial_line(&buf[lead..])?;
            return Ok(Status::Partial);
        }
    };
    let line = &buf[lead..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    check_request_line(line)?;

    // The header section so far: NUL bytes and folded lines get their own sentences.
    let head_end = find_head_end(buf, line_end + 1);
    let section = &buf[line_end + 1..head_end.unwrap_or(buf.len())];
    if section.contains(&0) {
        return Err(Failure::bad_request(
            "bad_header",
            "the request head contains a NUL byte",
        ));
    }
    if section
        .split(|&b| b == b'\n')
        .any(|l| matches!(l.first(), Some(b' ' | b'\t')))
    {
        return Err(Failure::bad_request(
            "obs_fold",
            "a header line starts with whitespace (obsolete line folding); \
             send each header on one line",
        ));
    }
    let Some(end) = head_end else {
        return Ok(Status::Partial);
    };
    if end > limits.max_head_bytes {
        return Err(Failure::head_too_large(limits.max_head_bytes));
    }

    // Uninitialised slots: no allocation and no zeroing per request.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; PINGORA_MAX_HEADERS];
    let slots = &mut slots[..limits.max_headers.min(PINGORA_MAX_HEADERS)];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(&buf[..end], slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Status::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Failure::too_many_headers(limits.max_headers))
        }
        Err(httparse::Error::HeaderName) => {
            return Err(Failure::bad_request(
                "bad_header",
                "a header name contains a byte that is not allowed in a name",
            ))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(Failure::bad_request(
                "bad_header",
                "a header value contains a control byte",
            ))
        }
        Err(_) => {
            return Err(Failure::bad_request(
                "bad_request",
                "the request is not valid HTTP/1.1",
            ))
        }
    };
    judge(&req, &buf[lead..line_end + 1], len)
}

/// Before the request line is complete, refuse what can never become valid.
fn check_partial_line(line: &[u8]) -> Result<(), Failure> {
    let method_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    check_method(&line[..method_end])?;
    if line.contains(&0) {
        return Err(Failure::bad_request(
            "bad_request_line",
            "the request line contains a NUL byte",
        ));
    }
    Ok(())
}

fn check_method(method: &[u8]) -> Result<(), Failure> {
    if method.iter().all(|&b| is_tchar(b)) {
        Ok(())
    } else if method.iter().any(|b| !b.is_ascii()) {
        Err(Failure::bad_request(
            "bad_method",
            "the method contains bytes outside ASCII",
        ))
    } else {
        Err(Failure::bad_request(
            "bad_method",
            "the method contains a byte that is not allowed in a method name",
        ))
    }
}

/// `method SP target SP version`, each part strictly formed.
fn check_request_line(line: &[u8]) -> Result<(), Failure> {
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    check_method(method)?;
    if method.is_empty() {
        return Err(Failure::bad_request(
            "bad_request_line",
            "the request line does not start with a method",
        ));
    }
    let Some(target) = parts.next() else {
        return Err(Failure::bad_request(
            "bad_request_line",
            "the request line holds only a method; it needs a URL and HTTP/1.1 after it",
        ));
    };
    if target.is_empty() {
        return Err(Failure::bad_request(
            "bad_request_line",
            "the request line has two spaces after the method",
        ));
    }
    if let Some(&b) = target.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(Failure::bad_request(
            "bad_request_target",
            if b == b'\t' {
                "the URL contains a tab; percent-encode it as %09"
            } else {
                "the URL contains a control byte"
            },
        ));
    }
    if target.iter().any(|b| !b.is_ascii()) {
        return Err(Failure::bad_request(
            "bad_request_target",
            "the URL contains bytes outside ASCII; percent-encode them",
        ));
    }
    let Some(version) = parts.next() else {
        return Err(Failure::bad_request(
            "http09_not_supported",
            "the request line has no HTTP version (HTTP/0.9); send HTTP/1.1",
        ));
    };
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok(()),
        b"HTTP/0.9" => Err(Failure::bad_request(
            "http09_not_supported",
            "HTTP/0.9 is not supported; send HTTP/1.1",
        )),
        v if v.contains(&b' ') || !v.starts_with(b"HTTP/") => Err(Failure::bad_request(
            "bad_request_target",
            "the URL contains a space; percent-encode it as %20",
        )),
        _ => Err(Failure::bad_request(
            "unsupported_version",
            "only HTTP/1.0 and HTTP/1.1 are supported",
        )),
    }
}

/// Index just past the blank line that ends the head, searching from `from`.
fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at_line_start = true;
    for (i, &b) in buf.iter().enumerate().skip(from) {
        match b {
            b'\n' if at_line_start => return Some(i + 1),
            b'\n' => at_line_start = true,
            b'\r' if at_line_start => {}
            _ => at_line_start = false,
        }
    }
    // The request line's own newline already started a line: an immediate blank line.
    None
}

/// The semantic checks on a parsed head: framing, Host, target.
fn judge(req: &httparse::Request, request_line: &[u8], len: usize) -> Result<Status, Failure> {
    let method = req.method.unwrap_or_default();
    let connect = method == "CONNECT";
    let http10 = req.version == Some(0);

    let mut te: Vec<String> = Vec::new();
    let mut te_headers = 0;
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut cl_headers = 0;
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut upgrade = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te_headers += 1;
            te.extend(
                h.value
                    .split(|&b| b == b',')
                    .map(|c| String::from_utf8_lossy(c.trim_ascii()).to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        } else if h.name.eq_ignore_ascii_case("content-length") {
            cl_headers += 1;
            lengths.extend(h.value.split(|&b| b == b',').map(|v| v.trim_ascii()));
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = host.or(Some(h.value));
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }

    let body = if te_headers > 0 {
        if !lengths.is_empty() {
            return Err(Failure::bad_request(
                "bad_framing",
                "the request has both Content-Length and Transfer-Encoding",
            ));
        }
        if http10 {
            return Err(Failure::bad_request(
                "bad_framing",
                "an HTTP/1.0 request cannot use Transfer-Encoding",
            ));
        }
        if te.len() > 1 || te_headers > 1 {
            return Err(Failure::bad_request(
                "bad_framing",
                "Transfer-Encoding names more than one coding; send it once, as chunked",
            ));
        }
        if te.first().map(String::as_str) != Some("chunked") {
            return Err(Failure::bad_request(
                "bad_framing",
                "Transfer-Encoding must be chunked",
            ));
        }
        Body::Chunked
    } else if !lengths.is_empty() {
        let first = lengths[0];
        if lengths
            .iter()
            .any(|v| v.is_empty() || !v.iter().all(u8::is_ascii_digit))
        {
            return Err(Failure::bad_request(
                "bad_framing",
                "Content-Length is not a number",
            ));
        }
        if lengths.iter().any(|v| *v != first) {
            return Err(Failure::bad_request(
                "bad_framing",
                "the request has Content-Length values that differ",
            ));
        }
        let n = std::str::from_utf8(first)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| Failure::bad_request("bad_framing", "Content-Length is too large"))?;
        Body::Length(n)
    } else {
        Body::Length(0)
    };
    let body = if upgrade { Body::Open } else { body };

    if hosts > 1 {
        return Err(Failure::bad_request(
            "bad_host",
            "the request has more than one Host header",
        ));
    }
    if host.is_some_and(|h| h.contains(&b'@')) {
        return Err(Failure::bad_request(
            "bad_host",
            "the Host header carries a user name",
        ));
    }
    if connect {
        return Ok(Status::Complete(Head {
            len,
            rewritten: None,
            body: Body::Open,
            connect,
        }));
    }

    if method == "TRACE" {
        return Err(Failure::trace_refused());
    }
    let target = req.path.unwrap_or_default().as_bytes();
    // pingora builds the path and query (fragment cut off) as an `http` PathAndQuery and
    // answers a bare 400 when that refuses bytes httparse let through (`"`, `<`, `\`...).
    let unfragmented = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let path_ok = |pq: &[u8]| match pq.first() {
        None => true,
        Some(b'/') => http::uri::PathAndQuery::try_from(pq).is_ok(),
        Some(_) => http::uri::PathAndQuery::try_from([b"/", pq].concat()).is_ok(),
    };
    let mut new_host: Option<&[u8]> = None;
    match raw_target_authority(unfragmented) {
        RawTargetAuthority::None if !path_ok(unfragmented) => {
            return Err(Failure::bad_target(
                "the URL contains characters that must be percent-encoded",
            ))
        }
        RawTargetAuthority::Absolute { path_and_query, .. } if !path_ok(path_and_query) => {
            return Err(Failure::bad_target(
                "the URL contains characters that must be percent-encoded",
            ))
        }
        RawTargetAuthority::None => {}
        RawTargetAuthority::AmbiguousAuthority => {
            return Err(Failure::bad_target("the URL's host part is ambiguous"))
        }
        RawTargetAuthority::Absolute { authority, .. } => {
            if authority.contains(&b'@') {
                return Err(Failure::bad_target(
                    "the URL carries a user name or password (user@host); \
                     put credentials in the configuration instead",
                ));
            }
            let Ok(parsed) = http::uri::Authority::try_from(authority) else {
                return Err(Failure::bad_target("the URL's host part is malformed"));
            };
            // `http://h:99999/` must not quietly become port 80 (`http` drops a port
            // that is no u16), nor `http://h:0/` anything else (an empty port is the default).
            let port_text = parsed
                .as_str()
                .rsplit_once(':')
                .filter(|(host, _)| !host.starts_with('[') || host.ends_with(']'))
                .map(|(_, p)| p);
            let bad_port = port_text
                .is_some_and(|p| !p.is_empty() && p.parse::<u16>().map_or(true, |n| n == 0));
            if bad_port {
                return Err(Failure::bad_target(
                    "the port in the URL is not a number from 1 to 65535",
                ));
            }
            if host.is_some_and(|h| h != authority) {
                new_host = Some(authority);
            }
        }
    }
    let collapse = cl_headers > 1 || lengths.len() > 1;
    let rewritten = (new_host.is_some() || collapse).then(|| {
        rewrite(
            request_line,
            req.headers,
            new_host,
            collapse.then(|| lengths[0]),
        )
    });
    Ok(Status::Complete(Head {
        len,
        rewritten,
        body,
        connect,
    }))
}

/// The head again, with `Host` replaced and `Content-Length` sent once.
fn rewrite(
    request_line: &[u8],
    headers: &[httparse::Header],
    host: Option<&[u8]>,
    length: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(request_line);
    let mut length_sent = false;
    for h in headers {
        let value = if h.name.eq_ignore_ascii_case("host") && host.is_some() {
            host.unwrap_or_default()
        } else if let (true, Some(v)) = (h.name.eq_ignore_ascii_case("content-length"), length) {
            if length_sent {
                continue;
            }
            length_sent = true;
            v
        } else {
            h.value
        };
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(raw: &[u8]) -> Result<Status, Failure> {
        parse(raw, &Limits::default())
    }

    fn code(raw: &[u8]) -> &'static str {
        match verdict(raw) {
            Err(f) => f.code,
            Ok(s) => panic!("accepted {:?}: {s:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn head(raw: &[u8]) -> Head {
        match verdict(raw) {
            Ok(Status::Complete(h)) => h,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_plain_request_passes_unchanged() {
        let raw = b"GET http://h.example/x HTTP/1.1\r\nHost: h.example\r\n\r\n";
        assert_eq!(
            head(raw),
            Head {
                len: raw.len(),
                rewritten: None,
                body: Body::Length(0),
                connect: false
            }
        );
    }

    #[test]
    fn hostile_request_lines_are_named() {
        assert_eq!(code(b"GET\r\n\r\n"), "bad_request_line");
        assert_eq!(code(b"GET /\r\n\r\n"), "http09_not_supported");
        assert_eq!(code(b"GET / HTTP/0.9\r\n\r\n"), "http09_not_supported");
        assert_eq!(
            code(b"GET http://h/a b HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(
            code(b"GET http://h/a\tb HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(code(b"G\xc3\x89T http://h/ HTTP/1.1\r\n"), "bad_method");
        assert_eq!(code(b"G\xc3"), "bad_method");
        assert_eq!(
            code(b"GET http://h/ HTTP/2.0\r\n\r\n"),
            "unsupported_version"
        );
        assert_eq!(
            code(b"GET http://h/\x01 HTTP/1.1\r\n"),
            "bad_request_target"
        );
    }

    #[test]
    fn hostile_headers_are_named() {
        let req = |h: &str| format!("POST http://h/ HTTP/1.1\r\nHost: h\r\n{h}\r\n\r\n");
        let c = |h: &str| code(req(h).as_bytes());
        assert_eq!(c("Transfer-Encoding: chunked, chunked"), "bad_framing");
        assert_eq!(
            c("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            "bad_framing"
        );
        assert_eq!(c("Transfer-Encoding: gzip"), "bad_framing");
        assert_eq!(
            c("Content-Length: 3\r\nTransfer-Encoding: chunked"),
            "bad_framing"
        );
        assert_eq!(c("Content-Length: 3\r\nContent-Length: 4"), "bad_framing");
        assert_eq!(c("Content-Length: 3, 4"), "bad_framing");
        assert_eq!(c("Content-Length: -1"), "bad_framing");
        assert_eq!(c("X-A: 1\r\n folded"), "obs_fold");
        assert_eq!(c("X-A: a\0b"), "bad_header");
        assert_eq!(c("X A: 1"), "bad_header");
        assert_eq!(c("Host: h2"), "bad_host");
        assert_eq!(
            code(b"GET http://u:p@h/ HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        let many = (0..101)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>();
        assert_eq!(
            code(format!("GET http://h/ HTTP/1.1\r\n{many}\r\n").as_bytes()),
            "too_many_headers"
        );
    }

    #[test]
    fn odd_urls_and_trace_are_named() {
        assert_eq!(
            code(b"GET http://h/a<b> HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(
            code(b"GET http://h/a`b HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(code(b"GET /a>b HTTP/1.1\r\n\r\n"), "bad_request_target");
        assert_eq!(
            code(b"GET http://h:99999/ HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(
            code(b"GET http://h:0/ HTTP/1.1\r\n\r\n"),
            "bad_request_target"
        );
        assert_eq!(code(b"TRACE http://h/ HTTP/1.1\r\n\r\n"), "trace_refused");
        for fine in [&b"http://h:/"[..], b"http://[::1]/", b"http://[::1]:8080/x"] {
            let line = [&b"GET "[..], fine, b" HTTP/1.1\r\n\r\n"].concat();
            assert!(
                matches!(verdict(&line), Ok(Status::Complete(_))),
                "{fine:?}"
            );
        }
        assert!(matches!(
            verdict(b"GET http://h:8080/{x}|y\"^ HTTP/1.1\r\n\r\n"),
            Ok(Status::Complete(_))
        ));
    }

    #[test]
    fn duplicate_identical_lengths_collapse() {
        let h = head(
            b"POST http://h/ HTTP/1.1\r\nContent-Length: 2\r\nX: y\r\ncontent-length: 2\r\n\r\nab",
        );
        assert_eq!(h.body, Body::Length(2));
        assert_eq!(
            h.rewritten.as_deref(),
            Some(&b"POST http://h/ HTTP/1.1\r\nContent-Length: 2\r\nX: y\r\n\r\n"[..])
        );
    }

    #[test]
    fn host_is_normalised_to_the_url_authority() {
        let h = head(b"GET http://h.example:80/ HTTP/1.1\r\nHost: H.Example\r\nA: b\r\n\r\n");
        assert_eq!(
            h.rewritten.as_deref(),
            Some(&b"GET http://h.example:80/ HTTP/1.1\r\nHost: h.example:80\r\nA: b\r\n\r\n"[..])
        );
    }

    #[test]
    fn partial_heads_wait() {
        assert_eq!(verdict(b"GE"), Ok(Status::Partial));
        assert_eq!(
            verdict(b"GET http://h/ HTTP/1.1\r\nHo"),
            Ok(Status::Partial)
        );
        assert_eq!(
            head(b"CONNECT h:443 HTTP/1.1\r\n\r\n"),
            Head {
                len: 26,
                rewritten: None,
                body: Body::Open,
                connect: true
            }
        );
    }
}
