/*!
Failures as the client sees them.

Every failure the daemon answers for itself becomes a [`Failure`]: an HTTP status, a
short machine-readable code sent in the `X-Authproxy-Error` header, and one or two plain
sentences naming the host, what failed and the likely fix. Bodies never carry secrets:
they are built from the target's host and port and from error kinds, never from header
values or upstream error text.
*/

use std::fmt;
use std::io;
use std::time::Duration;

use pingora::{Error, ErrorSource, ErrorType};

use crate::target::Target;

/// The header that carries [`Failure::code`].
pub const ERROR_HEADER: &str = "X-Authproxy-Error";

/// A failure the daemon answers with its own response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    /// Short, stable, machine-readable (`connect_refused`, `upstream_timeout`, ...).
    pub code: &'static str,
    /// One or two sentences for a human; ends with a newline when sent.
    pub message: String,
}

impl Failure {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn not_a_proxy_request() -> Self {
        Self::new(
            400,
            "not_a_proxy_request",
            "authproxy is a forward proxy: it expects absolute URLs such as \
             `GET http://host/path`. Point your tool at it with \
             http_proxy=http://127.0.0.1:3128 instead of requesting it directly.",
        )
    }

    pub fn bad_target(why: &str) -> Self {
        Self::new(
            400,
            "bad_request_target",
            format!("authproxy cannot proxy this request: {why}. Use an http:// or https:// URL."),
        )
    }

    pub fn dns(host: &str, err: &io::Error) -> Self {
        if err.kind() == io::ErrorKind::TimedOut {
            return Self::new(
                504,
                "dns_timeout",
                format!(
                    "authproxy could not resolve the host name {host}: the resolver gave no \
                     answer within the connect timeout. Check this machine's DNS settings."
                ),
            );
        }
        Self::new(
            502,
            "dns_failed",
            format!(
                "authproxy could not resolve the host name {host} ({err}). \
                 Check the spelling of the host in the URL and this machine's DNS settings."
            ),
        )
    }

    pub fn connect(authority: &str, err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Self::connect_refused(authority),
            io::ErrorKind::TimedOut => Self::connect_timeout(authority, None),
            _ => Self::new(
                502,
                "connect_failed",
                format!(
                    "authproxy could not connect to {authority} ({}). \
                     Check the host and port in the URL and that the server is reachable.",
                    io_kind(err)
                ),
            ),
        }
    }

    pub fn connect_refused(authority: &str) -> Self {
        Self::new(
            502,
            "connect_refused",
            format!(
                "authproxy could not connect to {authority}: the connection was refused. \
                 Check that the server is running and that the port in the URL is right."
            ),
        )
    }

    pub fn connect_timeout(authority: &str, after: Option<Duration>) -> Self {
        Self::new(
            504,
            "connect_timeout",
            format!(
                "authproxy could not connect to {authority}: no answer{}. \
                 The server may be down or a firewall may drop the connection.",
                after
                    .map(|d| format!(" within {}", human(d)))
                    .unwrap_or_default()
            ),
        )
    }

    pub fn upstream_timeout(authority: &str, after: Option<Duration>) -> Self {
        Self::new(
            504,
            "upstream_timeout",
            format!(
                "{authority} accepted the connection but did not answer{}. \
                 The server may be overloaded; try again later.",
                after
                    .map(|d| format!(" within {}", human(d)))
                    .unwrap_or_default()
            ),
        )
    }

    pub fn bad_upstream_response(authority: &str) -> Self {
        Self::new(
            502,
            "bad_upstream_response",
            format!(
                "{authority} did not answer with valid HTTP. \
                 Check that the URL's scheme and port are right (http vs https)."
            ),
        )
    }

    pub fn upstream_closed(authority: &str) -> Self {
        Self::new(
            502,
            "upstream_closed",
            format!(
                "{authority} closed the connection before it finished its answer. \
                 Try again; if it persists, the server is failing."
            ),
        )
    }

    pub fn tls(authority: &str) -> Self {
        Self::new(
            502,
            "tls_failed",
            format!(
                "the TLS handshake with {authority} failed. \
                 Check that the server speaks https on this port and that its certificate is trusted."
            ),
        )
    }

    pub fn proxy_unreachable(proxy: &str, err: &io::Error) -> Self {
        Self::new(
            502,
            "upstream_proxy_unreachable",
            format!(
                "authproxy could not reach the upstream proxy {proxy} ({}). \
                 Check HTTP.PROXY.SERVER in your rc file or upstream_proxy in the YAML config.",
                io_kind(err)
            ),
        )
    }

    /// A host refused the credential authproxy answered its 401 challenge with.
    pub fn login_refused(host: &str, user: &str, source: &str, origin: &str) -> Self {
        Self::new(
            401,
            "login_refused",
            format!(
                "{host} refused the password authproxy sent for the user {user:?}, from the \
                 {source} entry at {origin}. Check that password there (the login host's own \
                 web page can test it)."
            ),
        )
    }

    /// A login host answered with a page for a person: the user must approve the
    /// application or accept a licence (EULA) in a browser first.
    pub fn login_needs_browser(host: &str, open: &str) -> Self {
        Self::new(
            403,
            "login_needs_browser",
            format!(
                "the login at {host} needs a person: open {open} in a browser, log in, and \
                 approve the application (or accept its licence); then try again."
            ),
        )
    }

    /// A redirect chain longer than `redirects.max_hops`.
    pub fn too_many_redirects(max: u8, hosts: &str) -> Self {
        Self::new(
            502,
            "too_many_redirects",
            format!(
                "the servers redirected this request more than {max} times ({hosts}). Raise \
                 redirects.max_hops if that is expected, or tell the servers' operators."
            ),
        )
    }

    /// A redirect chain that came back to a URL it had already visited.
    pub fn redirect_loop(hosts: &str) -> Self {
        Self::new(
            502,
            "redirect_loop",
            format!("the servers redirect this request in a loop ({hosts})."),
        )
    }

    /// The data server sent the request to its login again right after a login.
    pub fn login_did_not_stick(data: &str, login: &str) -> Self {
        Self::new(
            502,
            "login_did_not_stick",
            format!(
                "{data} sent the request back to the login at {login} right after a login: \
                 it did not accept the session. Its cookies may be refused (check the cookie \
                 jar and the clock), or the account lacks access to this data."
            ),
        )
    }

    /// A redirect of a request whose body is too large to send again.
    pub fn redirect_body_too_large(host: &str) -> Self {
        Self::new(
            502,
            "redirect_body_too_large",
            format!(
                "{host} redirected a request whose body is too large for authproxy to send \
                 again. Send the request to the URL it redirects to."
            ),
        )
    }

    /// The upstream proxy answered CONNECT (or a request) with `code`.
    pub fn proxy_refused(proxy: &str, authority: &str, code: Option<u16>) -> Self {
        match code {
            Some(407) => Self::new(
                502,
                "upstream_proxy_auth",
                format!(
                    "the upstream proxy {proxy} refused authproxy's credentials (407) for {authority}. \
                     Check the user and password of upstream_proxy or HTTP.PROXY.SERVER."
                ),
            ),
            Some(c) => Self::new(
                502,
                "upstream_proxy_refused",
                format!("the upstream proxy {proxy} refused to connect to {authority} (status {c})."),
            ),
            None => Self::new(
                502,
                "upstream_proxy_refused",
                format!("the upstream proxy {proxy} closed the connection instead of connecting to {authority}."),
            ),
        }
    }

    /// Explains a TLS failure from the TLS library's error text, or `None` when the
    /// text names no known cause.
    pub fn tls_diagnosis(authority: &str, text: &str, has_identity: bool) -> Option<Self> {
        let has = |needle: &str| text.contains(needle);
        let (code, message) = if has("UnknownIssuer") || has("unknown issuer") {
            (
                "tls_untrusted",
                format!(
                    "the certificate of {authority} is not signed by a CA authproxy trusts. \
                     Add its CA with HTTP.SSL.CAINFO (a bundle) or HTTP.SSL.CAPATH (a directory) \
                     in your rc file, or tls.ca / tls.ca_dir in the YAML config."
                ),
            )
        } else if has("NotValidForName") || has("not valid for name") {
            (
                "tls_wrong_name",
                format!(
                    "the certificate of {authority} is not valid for that host name. \
                     Use the name the certificate was issued for, or set HTTP.SSL.VERIFYHOST=0 \
                     (tls.verify: false) for this host if you trust the network."
                ),
            )
        } else if has("Expired") || has("expired") {
            (
                "tls_expired",
                format!("the certificate of {authority} has expired or is not yet valid; check this machine's clock or tell the server's operators."),
            )
        } else if has("CertificateRequired") || has("certificate required") {
            (
                "tls_client_cert_required",
                if has_identity {
                    format!("{authority} refused the client certificate authproxy presented. Check that the certificate is the one the server expects and has not expired.")
                } else {
                    format!(
                        "{authority} requires a client certificate and none is configured for it. \
                         Set HTTP.SSL.CERTIFICATE and HTTP.SSL.KEY in your rc file, or tls.client_cert \
                         and tls.client_key in the YAML config."
                    )
                },
            )
        } else if has("BadCertificate")
            || has("UnknownCA")
            || has("bad certificate")
            || has("unknown ca")
            || has("DecryptError")
            || has("AccessDenied")
        {
            (
                "tls_client_cert_refused",
                if has_identity {
                    format!("{authority} refused the client certificate authproxy presented (it does not trust its issuer or the certificate is invalid). Check HTTP.SSL.CERTIFICATE / tls.client_cert.")
                } else {
                    format!(
                        "{authority} refused the TLS handshake, probably because it wants a client certificate. \
                         Set HTTP.SSL.CERTIFICATE and HTTP.SSL.KEY, or tls.client_cert and tls.client_key."
                    )
                },
            )
        } else if has("HandshakeFailure")
            || has("handshake")
            || has("CorruptMessage")
            || has("InvalidContentType")
        {
            (
                "tls_handshake_failed",
                format!(
                    "the TLS handshake with {authority} failed. \
                     Check that the server speaks https on this port{}.",
                    if has_identity {
                        " and accepts the configured client certificate"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            return None;
        };
        Some(Self::new(502, code, message))
    }

    /// The rule's certificate, key or CA files could not be used (found at load).
    pub fn tls_unusable(authority: &str, reason: &str) -> Self {
        Self::new(
            502,
            "tls_config_unusable",
            format!("authproxy cannot use the TLS settings for {authority}: {reason}."),
        )
    }

    /// A request head that is not valid HTTP/1.1 (`why` names the fault; it is built
    /// from fixed text, never from the request's bytes). Nothing was forwarded.
    pub fn bad_request(code: &'static str, why: &str) -> Self {
        Self::new(
            400,
            code,
            format!(
                "authproxy refused this request because {why}. It was not sent anywhere; \
                 fix the client or the URL and try again."
            ),
        )
    }

    /// `TRACE` would echo the credentials authproxy adds back to whoever asked.
    pub fn trace_refused() -> Self {
        Self::new(
            405,
            "trace_refused",
            "authproxy does not forward TRACE requests: the server would echo back the \
             credentials authproxy adds. Use GET or HEAD.",
        )
    }

    /// The client closed its connection in the middle of a request head.
    pub fn incomplete_head() -> Self {
        Self::bad_request(
            "incomplete_request",
            "the connection was closed before the request head was complete",
        )
    }

    /// The request head did not arrive within `limits.head_timeout`.
    pub fn head_timeout(after: Duration) -> Self {
        Self::new(
            408,
            "request_timeout",
            format!(
                "authproxy did not receive a complete request head within {} and closed the \
                 connection (limits.head_timeout).",
                human(after)
            ),
        )
    }

    /// The request head is larger than `limits.max_head_bytes`.
    pub fn head_too_large(limit: usize) -> Self {
        Self::new(
            431,
            "request_header_too_large",
            format!(
                "the request head is larger than authproxy accepts ({} KiB, \
                 limits.max_head_bytes). Send fewer or shorter headers, or a shorter URL.",
                limit / 1024
            ),
        )
    }

    /// The request has more header lines than `limits.max_headers`.
    pub fn too_many_headers(limit: usize) -> Self {
        Self::new(
            431,
            "too_many_headers",
            format!(
                "the request has more than {limit} header lines, more than authproxy accepts \
                 (limits.max_headers)."
            ),
        )
    }

    /// `limits.max_connections` client connections are open already.
    pub fn too_many_connections(limit: usize) -> Self {
        Self::new(
            503,
            "too_many_connections",
            format!(
                "authproxy is serving {limit} connections already, as many as it accepts \
                 (limits.max_connections). Try again in a moment, or reuse connections."
            ),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            500,
            "internal_error",
            "authproxy failed while handling this request; see its log for details.",
        )
    }

    /// Classifies an error from pingora's proxy loop. `None` means the client went away
    /// and there is nobody to answer.
    pub fn from_pingora(
        e: &Error,
        target: Option<&Target>,
        timeouts: &Timeouts,
        has_identity: bool,
    ) -> Option<Self> {
        let authority = target.map_or_else(|| "the upstream server".to_owned(), Target::authority);
        use ErrorType::*;
        let tls = target.is_some_and(|t| t.scheme == crate::target::Scheme::Https);
        let timed_out = matches!(
            e.etype(),
            ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout
        );
        if tls && !timed_out && e.esource() != &ErrorSource::Downstream {
            if let Some(f) = Self::tls_diagnosis(&authority, &e.to_string(), has_identity) {
                return Some(f);
            }
        }
        let f = match e.etype() {
            HTTPStatus(code) if *code >= 400 => Self::new(*code, "http_status", "request refused"),
            ConnectTimedout | TLSHandshakeTimedout => {
                Self::connect_timeout(&authority, Some(timeouts.connect))
            }
            ConnectRefused => Self::connect_refused(&authority),
            ConnectNoRoute | ConnectError | BindError | SocketError | ConnectProxyFailure => {
                Self::new(
                    502,
                    "connect_failed",
                    format!(
                        "authproxy could not connect to {authority}. \
                         Check the host and port in the URL and that the server is reachable."
                    ),
                )
            }
            TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => {
                Self::tls(&authority)
            }
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                Self::upstream_timeout(&authority, Some(timeouts.read))
            }
            ReadTimedout | WriteTimedout | ReadError | WriteError | ConnectionClosed
                if e.esource() == &ErrorSource::Downstream =>
            {
                return None;
            }
            InvalidHTTPHeader | H1Error | H2Error | InvalidH2 | ConnectionClosed | ReadError
            | WriteError
                if e.esource() == &ErrorSource::Upstream =>
            {
                match e.etype() {
                    ConnectionClosed | ReadError | WriteError => Self::upstream_closed(&authority),
                    _ => Self::bad_upstream_response(&authority),
                }
            }
            _ if e.esource() == &ErrorSource::Downstream => Self::new(
                400,
                "bad_request",
                "authproxy could not read this request as valid HTTP/1.1.",
            ),
            _ if e.esource() == &ErrorSource::Upstream => Self::new(
                502,
                "upstream_failed",
                format!("authproxy failed to fetch the answer from {authority}."),
            ),
            _ => Self::internal(),
        };
        Some(f)
    }

    pub fn body(&self) -> String {
        format!("{}\n", self.message)
    }

    /// Headers HTTP requires with this status: a 407 names the scheme to answer with
    /// (RFC 9110 11.7.1), a 405 the methods allowed (RFC 9110 15.5.6).
    pub fn status_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self.status {
            407 => &[("Proxy-Authenticate", "Basic realm=\"authproxy\"")],
            405 => &[(
                "Allow",
                "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, CONNECT",
            )],
            _ => &[],
        }
    }

    /// A complete HTTP/1.1 response, for connections pingora does not handle (CONNECT).
    pub fn to_http1(&self) -> Vec<u8> {
        let body = self.body();
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let extra: String = self
            .status_headers()
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             {ERROR_HEADER}: {}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status,
            self.code,
            body.len()
        )
        .into_bytes()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for Failure {}

/// The error type of a failure our own code classified.
const CLASSIFIED: ErrorType = ErrorType::Custom("authproxy");

impl Failure {
    /// A pingora error of `etype` that carries this failure as its cause, so that
    /// [`Failure::carried`] finds it again in `fail_to_proxy`, however pingora wrapped it.
    pub fn into_error_as(self, etype: ErrorType) -> Box<Error> {
        let code = self.code;
        Error::because(etype, code, self)
    }

    /// [`Failure::into_error_as`] with our own error type.
    pub fn into_error(self) -> Box<Error> {
        self.into_error_as(CLASSIFIED)
    }

    /// The failure `e` carries, if our code classified it: in its cause, or deeper.
    pub fn carried(e: &Error) -> Option<&Failure> {
        let mut cause = e.cause.as_deref();
        while let Some(c) = cause {
            if let Some(f) = c.downcast_ref::<Failure>() {
                return Some(f);
            }
            // pingora's `more_context` boxes the whole previous error as the cause.
            let inner = c
                .downcast_ref::<Error>()
                .or_else(|| c.downcast_ref::<Box<Error>>().map(|b| b.as_ref()));
            cause = inner.and_then(|e| e.cause.as_deref());
        }
        None
    }
}

/// The timeouts applied to upstream connections (from the configuration snapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect plus TLS handshake, per address tried.
    pub connect: Duration,
    /// Waiting for the response header, and between body reads.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
        }
    }
}

fn io_kind(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "no such host".to_owned(),
        io::ErrorKind::Other => "lookup failed".to_owned(),
        kind => kind.to_string(),
    }
}

fn human(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_carried_failure_survives_pingoras_wrapping() {
        let f = Failure::connect_refused("h:1");
        let e = f.clone().into_error_as(ErrorType::ConnectProxyFailure);
        let e = e.more_context("Peer: h:1").more_context("again").into_up();
        assert_eq!(Failure::carried(&e), Some(&f));
        assert_eq!(
            Failure::carried(&Error::new(ErrorType::ConnectRefused)),
            None
        );
    }
    use super::*;

    #[test]
    fn http1_rendering_has_header_and_length() {
        let f = Failure::connect_refused("example.org:81");
        let text = String::from_utf8(f.to_http1()).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(text.contains("X-Authproxy-Error: connect_refused\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("example.org:81"));
    }

    #[test]
    fn tls_timeouts_stay_timeouts() {
        let t = Target::from_absolute(b"https://h.example/").unwrap();
        let e = Error::explain(ErrorType::TLSHandshakeTimedout, "TLS handshake timed out");
        let f = Failure::from_pingora(&e, Some(&t), &Timeouts::default(), false).unwrap();
        assert_eq!((f.status, f.code), (504, "connect_timeout"));
        let e = Error::explain(ErrorType::TLSHandshakeFailure, "UnknownIssuer");
        let f = Failure::from_pingora(&e, Some(&t), &Timeouts::default(), false).unwrap();
        assert_eq!((f.status, f.code), (502, "tls_untrusted"));
    }

    #[test]
    fn pingora_errors_are_classified() {
        let t = Target::from_absolute(b"http://h.example:8/").unwrap();
        let to = Timeouts::default();
        let e = Error::new(ErrorType::ConnectTimedout);
        assert_eq!(
            Failure::from_pingora(&e, Some(&t), &to, false)
                .unwrap()
                .status,
            504
        );
        let e = Error::new_up(ErrorType::ReadTimedout);
        let f = Failure::from_pingora(&e, Some(&t), &to, false).unwrap();
        assert_eq!((f.status, f.code), (504, "upstream_timeout"));
        let e = Error::new_up(ErrorType::InvalidHTTPHeader);
        assert_eq!(
            Failure::from_pingora(&e, Some(&t), &to, false)
                .unwrap()
                .status,
            502
        );
        let e = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(Failure::from_pingora(&e, Some(&t), &to, false), None);
    }
}
