/*!
Certificate-plus-login servlets (seed 003, s2dr): when to log in, and how.

Such a servlet demands a client certificate on every request and, on top of it, a
session: before a POST to its login URL every other request answers 401. A site with
`login:` therefore gets a login before its first request ([`ensure`], called by the
proxy before it connects), its session cookie goes to the jar (the side client stores
it), and the request goes on with it. When the site answers one of `login.when`
(default 401) the session is over: the proxy ends that session, logs in once more and
replays the request; a second refusal is explained, never looped. A login that fails
answers the client with the servlet's own status and a sentence saying what to check.

The state (which sessions are live, the single flight) is in [`crate::session::servlet`];
the login request itself is a side request ([`crate::client`]) with the rule's TLS
identity.
*/

use std::sync::Arc;

use bytes::Bytes;
use http::header;

use crate::client::{self, SideRequest};
use crate::config::snapshot::Resolved;
use crate::config::Snapshot;
use crate::failure::Failure;
use crate::rule::login::shown;
use crate::rule::LoginStep;
use crate::session::State;
use crate::target::Target;

/// The login step for a request hop to `hop`, if its site has one. The login and logout
/// URLs themselves need no session first.
pub fn step<'a>(resolved: &Resolved<'a>, hop: &Target) -> Option<&'a Arc<LoginStep>> {
    let step = resolved.site?.login.as_ref()?;
    let is = |u: &url::Url| {
        Target::from_absolute(u.as_str().as_bytes())
            .is_ok_and(|t| t.host == hop.host && t.port == hop.port && t.path() == hop.path())
    };
    if is(&step.url) || step.logout_url.as_ref().is_some_and(is) {
        return None;
    }
    Some(step)
}

/// Whether `status` from the site means "no session": one of `login.when`.
pub fn no_session(step: &LoginStep, status: u16) -> bool {
    step.when.contains(&status)
}

/// The key of a servlet's sessions: its login URL.
pub fn key(step: &LoginStep) -> &str {
    step.url.as_str()
}

/// A live session for `step`'s servlet, logging in if there is none (once, however
/// many requests ask at the same time). Returns the session's generation, for
/// [`crate::session::Servlets::expired`]. `site` is the request's hop, for messages.
pub async fn ensure(
    snapshot: &Snapshot,
    state: &State,
    step: &Arc<LoginStep>,
    site: &Target,
) -> Result<u64, Failure> {
    state
        .servlets
        .ensure(key(step), step, || log_in(snapshot, state, step, site))
        .await
}

/// One login request. A 2xx or 3xx answer opens the session (its cookie is in the jar
/// by then); anything else is the servlet's refusal.
async fn log_in(
    snapshot: &Snapshot,
    state: &State,
    step: &LoginStep,
    site: &Target,
) -> Result<(), Failure> {
    let mut req = SideRequest::post(step.url.clone(), Bytes::new());
    req.method = step.method.clone();
    req.basic = true;
    if let Some(body) = &step.body {
        req.body = Bytes::from(body.expose().clone());
        req.headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
    }
    let has_identity = login_has_identity(snapshot, step);
    let resp = client::send(snapshot, state, req).await?;
    let status = resp.status.as_u16();
    let url = shown(&step.url);
    if resp.status.is_success() || resp.status.is_redirection() {
        tracing::info!(url = %url, status, "logged in");
        return Ok(());
    }
    tracing::warn!(url = %url, status, "login refused");
    Err(login_failed(site, &step.method, &url, status, has_identity))
}

/// Whether a client certificate goes with the login.
fn login_has_identity(snapshot: &Snapshot, step: &LoginStep) -> bool {
    Target::from_absolute(step.url.as_str().as_bytes())
        .is_ok_and(|t| snapshot.resolve(&t).identity().is_some())
}

/// The servlet refused the login: its own status, and what to check.
pub fn login_failed(
    site: &Target,
    method: &http::Method,
    url: &str,
    status: u16,
    has_identity: bool,
) -> Failure {
    let hint = match status {
        401 | 403 if has_identity => {
            "Check that the client certificate (tls.client_cert) is one this servlet knows \
             and has not expired."
        }
        401 | 403 => {
            "No client certificate goes with the login: set tls.client_cert and \
             tls.client_key for the login URL's site."
        }
        500..=599 => "The servlet failed; try again later or tell its operators.",
        _ => "Check login.url and login.method in the configuration.",
    };
    // A status the client can be given: the servlet's, when it is an error status.
    let answer = if (400..=599).contains(&status) {
        status
    } else {
        502
    };
    Failure::new(
        answer,
        "login_failed",
        format!(
            "authproxy could not log in for {}: {method} {url} answered {status}. {hint}",
            site.authority()
        ),
    )
}

/// The site refused a request right after a fresh login.
pub fn session_refused(site: &Target, status: u16, login: &str) -> Failure {
    Failure::new(
        status,
        "login_session_refused",
        format!(
            "{} answered {status} again right after authproxy logged in at {login}: it did \
             not accept the session. Check that the account may use this URL, and that \
             the login's cookie is for this path.",
            site.authority()
        ),
    )
}

/// The session expired under a request whose body is too large to send again.
pub fn expired_body_too_large(site: &Target) -> Failure {
    Failure::new(
        503,
        "login_expired",
        format!(
            "the session at {} had expired; authproxy logs in again with the next \
             request, but this request's body is too large to send again. Send it again.",
            site.authority()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_login_keeps_the_servlets_status_and_says_what_to_check() {
        let site = Target::from_absolute(b"https://s2dr.example:8443/s2dr/files").unwrap();
        let url = "https://s2dr.example:8443/s2dr/login";
        let f = login_failed(&site, &http::Method::POST, url, 403, true);
        assert_eq!((f.status, f.code), (403, "login_failed"));
        assert!(f
            .message
            .contains("POST https://s2dr.example:8443/s2dr/login answered 403"));
        assert!(f.message.contains("tls.client_cert"), "{f}");
        let f = login_failed(&site, &http::Method::POST, url, 500, true);
        assert_eq!(f.status, 500);
        assert!(f.message.contains("servlet failed"), "{f}");
        let f = login_failed(&site, &http::Method::GET, url, 600, false);
        assert_eq!(f.status, 502);
        assert!(f
            .message
            .contains("GET https://s2dr.example:8443/s2dr/login answered 600"));
    }
}
