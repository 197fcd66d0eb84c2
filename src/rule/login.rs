//! A certificate-plus-login servlet's login step (YAML `sites[].login`), as validated.
//!
//! Servlets such as s2dr demand a client certificate on every request, and in addition a
//! session: until the client has POSTed to the login URL (with that certificate) every
//! other request answers 401. [`LoginStep`] says where and how to log in, which statuses
//! mean "no session", and where to log out at shutdown; `auth::login` decides when.

use std::fmt;

use crate::secret::Secret;

/// Where and how a site logs in.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginStep {
    /// Absolute http(s) URL, no userinfo.
    pub url: url::Url,
    /// `POST` (the default) or `GET`.
    pub method: http::Method,
    /// Sent as `application/x-www-form-urlencoded` when given. It may hold a password,
    /// so it is never shown.
    pub body: Option<Secret<String>>,
    /// POSTed at shutdown for a live session.
    pub logout_url: Option<url::Url>,
    /// The statuses of the site that mean the session is missing or expired (default
    /// `[401]`).
    pub when: Vec<u16>,
}

/// The default of `login.when`.
pub const DEFAULT_WHEN: &[u16] = &[401];

/// A URL for `check`, `explain` and messages: without its query (it may hold a key).
pub fn shown(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

impl fmt::Debug for LoginStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginStep")
            .field("url", &shown(&self.url))
            .field("method", &self.method)
            .field("body", &self.body)
            .field("logout_url", &self.logout_url.as_ref().map(shown))
            .field("when", &self.when)
            .finish()
    }
}
