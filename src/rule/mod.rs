/*!
What a request gets: the resolved, source-independent form of one configuration rule.

YAML `sites` entries and rc-file scopes both become a [`Rule`]; `.netrc` entries stay
netrc entries (looked up by host). Everything a rule needs at request time is loaded and
validated when the snapshot is built: certificate files are parsed, CA bundles read,
credentials encoded. The request path only picks rules and copies headers.
*/

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pingora::utils::tls::{CertKey, WrappedX509};

pub mod login;
pub mod pattern;
pub mod proxy;
pub mod query_token;

pub use login::LoginStep;
pub use pattern::{HostPattern, Pattern, PortSpec, SchemePattern, Syntax};
pub use query_token::{KeySource, QueryToken};

use crate::origin::Origin;
use crate::secret::Secret;

/// A header or query value: plain, or a secret that is redacted when shown.
#[derive(Clone, Debug)]
pub enum Value {
    Plain(String),
    Secret(Secret<String>),
}

impl Value {
    pub fn expose(&self) -> &str {
        match self {
            Value::Plain(s) => s,
            Value::Secret(s) => s.expose(),
        }
    }

    /// What `check` and `explain` print.
    pub fn shown(&self) -> &str {
        match self {
            Value::Plain(s) => s,
            Value::Secret(_) => "***",
        }
    }
}

/// A user name and password for HTTP Basic.
#[derive(Clone, Debug)]
pub struct BasicCredential {
    pub user: String,
    pub password: Secret<String>,
    /// Where the password was read.
    pub origin: Origin,
    /// Sent only in answer to the host's 401 Basic challenge, never preemptively, and only
    /// over TLS or to a loopback host: an rc credential without a `[prefix]`, under
    /// `rc_unscoped_credentials: challenge`.
    pub only_on_challenge: bool,
}

/// How a Handle Server password goes into the Basic credential (see
/// [`crate::auth::handle`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PasswordEncoding {
    /// As written: pyhandle's `create_authentication_string`.
    #[default]
    Raw,
    /// Percent-encoded like the username: b2handle's `create_authentication_string`.
    Percent,
}

impl PasswordEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            PasswordEncoding::Raw => "raw",
            PasswordEncoding::Percent => "percent",
        }
    }
}

/// How a Handle Server write request proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandleMethod {
    /// HTTP Basic with the `index:prefix/suffix` username and the HS_SECKEY password.
    Password {
        password: Secret<String>,
        encoding: PasswordEncoding,
    },
    /// The rule's TLS client certificate (HS_PUBKEY), announced with
    /// `Authorization: Handle clientCert="true"`; https only.
    ClientCert,
}

/// A Handle Server REST API credential (YAML `handle:`), sent only on the methods that
/// write (see [`crate::auth::handle::needs_auth`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleCredential {
    /// `index:prefix/suffix`; with a client certificate it is optional (the certificate
    /// names the user) and only shown.
    pub username: Option<String>,
    pub method: HandleMethod,
    /// The pyhandle/b2handle credentials JSON it was imported from, if any.
    pub credentials_file: Option<std::path::PathBuf>,
}

/// A client certificate with its key, parsed and checked at load.
pub struct Identity {
    pub cert_key: Arc<CertKey>,
    pub subject: String,
    pub not_after: String,
    /// The files it came from, for `check` and error messages.
    pub source: String,
    /// Hash of the certificate chain, part of the connection-pool key.
    pub fingerprint: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.subject)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Extra trusted CA certificates.
pub struct CaSet {
    pub certs: Arc<[WrappedX509]>,
    pub source: String,
    pub fingerprint: u64,
}

impl fmt::Debug for CaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaSet({} certificates from {})",
            self.certs.len(),
            self.source
        )
    }
}

/// TLS towards the upstream server.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// Send the client's `http://` requests to this host over https.
    pub upgrade: bool,
    pub identity: Option<Arc<Identity>>,
    pub ca: Option<Arc<CaSet>>,
    pub verify_peer: Option<bool>,
    pub verify_host: Option<bool>,
    /// Why the certificate, key or CA files of this rule could not be used (file:line,
    /// option and cause; never a secret). Requests that need them get a 502 saying so.
    pub unusable: Option<Arc<str>>,
}

/// An upstream (corporate) HTTP proxy.
pub struct UpstreamProxy {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    /// The whole `Proxy-Authorization` value (`Basic ...`).
    pub authorization: Option<Secret<String>>,
    pub origin: Origin,
}

impl UpstreamProxy {
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Identifies the proxy and its credential in connection-pool keys.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.host.hash(&mut h);
        self.port.hash(&mut h);
        self.authorization.as_ref().map(|a| a.expose()).hash(&mut h);
        h.finish()
    }
}

impl fmt::Debug for UpstreamProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}:***@")?;
        }
        write!(f, "{} ({})", self.authority(), self.origin)
    }
}

/// Which upstream proxy a rule chooses.
#[derive(Clone, Debug, Default)]
pub enum ProxyChoice {
    /// Whatever a less specific source says.
    #[default]
    Inherit,
    /// Connect directly.
    Direct,
    Via(Arc<UpstreamProxy>),
}

/// One rule, from YAML or an rc file.
#[derive(Debug)]
pub struct Rule {
    /// `sites[0]`, `sites[1] (esgf)`, or an rc scope such as `[host:port]`.
    pub id: String,
    pub origin: Origin,
    /// Where it applies; `pattern.syntax` says whether it is a YAML site or an rc scope.
    pub pattern: Pattern,
    pub basic: Option<BasicCredential>,
    pub bearer: Option<Value>,
    pub headers: Vec<(http::HeaderName, Value)>,
    pub query: Vec<(String, Value)>,
    pub tls: TlsSettings,
    pub proxy: ProxyChoice,
    pub connect_timeout: Option<Duration>,
    pub read_timeout: Option<Duration>,
    /// The `.netrc` a scoped rc `HTTP.NETRC` names, as an index into the snapshot's
    /// `scoped_netrcs`: it answers for this rule's requests instead of the global one, and
    /// for no others.
    pub netrc: Option<usize>,
    /// YAML `redirects: pass`: this site's 3xx go to the client instead of being followed.
    pub pass_redirects: bool,
    /// YAML `handle`: a Handle Server credential, which decides this site's Authorization.
    pub handle: Option<HandleCredential>,
    /// YAML `login`: a certificate-plus-login servlet's session step.
    pub login: Option<Arc<LoginStep>>,
    /// YAML `query_token`: a key added to every request's query.
    pub query_token: Option<Arc<QueryToken>>,
}

impl Rule {
    pub fn new(id: String, origin: Origin, pattern: Pattern) -> Self {
        Rule {
            id,
            origin,
            pattern,
            basic: None,
            bearer: None,
            headers: Vec::new(),
            query: Vec::new(),
            tls: TlsSettings::default(),
            proxy: ProxyChoice::Inherit,
            connect_timeout: None,
            read_timeout: None,
            netrc: None,
            pass_redirects: false,
            handle: None,
            login: None,
            query_token: None,
        }
    }

    /// Whether the rule is a YAML site (else an rc scope).
    pub fn is_site(&self) -> bool {
        self.pattern.syntax == Syntax::Yaml
    }
}
