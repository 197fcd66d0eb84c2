/*!
The serde side of the YAML file: `Raw*` types, the file as written. Everything that can be
checked about a single value without the file system is checked here, inside the
visitors, so that the error carries that value's own line (see the [module
documentation](super)). Nothing here reads a file or resolves a path.
*/

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::scalar::{parse_duration, parse_match};
use super::{AccessMode, AllowUid, LogFormat, LogLevel, RedirectMode};
use crate::rule::Pattern;

const MAX_MAX_HOPS: u64 = 50;

/// A type validated from a scalar inside its visitor, so errors carry the scalar's line.
trait FromScalar: Sized {
    const EXPECTING: &'static str;
    fn from_scalar(s: &str) -> Result<Self, String>;
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<'de, T: FromScalar> Visitor<'de> for ScalarVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_scalar(v).map_err(E::custom)
    }
}

macro_rules! deserialize_from_scalar {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(ScalarVisitor::<$t>(PhantomData))
            }
        }
    )*};
}

/// A path or name that must not be empty.
pub(super) struct NonEmpty(pub(super) String);
impl FromScalar for NonEmpty {
    const EXPECTING: &'static str = "a non-empty string";
    fn from_scalar(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            Err("must not be empty".into())
        } else {
            Ok(NonEmpty(s.to_string()))
        }
    }
}

pub(super) struct RawAddr(pub(super) SocketAddr);
impl FromScalar for RawAddr {
    const EXPECTING: &'static str = "an address such as 127.0.0.1:3128 or [::1]:3128";
    fn from_scalar(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map(RawAddr)
            .map_err(|_| format!("not a socket address: expected {}", Self::EXPECTING))
    }
}

pub(super) struct RawDuration(pub(super) Duration);
impl FromScalar for RawDuration {
    const EXPECTING: &'static str = "a duration such as 500ms, 10s, 5m or 1h";
    fn from_scalar(s: &str) -> Result<Self, String> {
        match parse_duration(s)? {
            Duration::ZERO => Err("a timeout must be longer than zero".into()),
            d => Ok(RawDuration(d)),
        }
    }
}

pub(super) struct RawMatch(pub(super) Pattern, pub(super) String);
impl FromScalar for RawMatch {
    const EXPECTING: &'static str =
        "a pattern: host, host:port, *.domain, http(s)://host[:port]/path or *";
    fn from_scalar(s: &str) -> Result<Self, String> {
        parse_match(s).map(|m| RawMatch(m, s.trim().to_string()))
    }
}

pub(super) struct RawCookieJar(pub(super) Option<String>);
impl FromScalar for RawCookieJar {
    const EXPECTING: &'static str = "auto or a path";
    fn from_scalar(s: &str) -> Result<Self, String> {
        match s.trim() {
            "" => Err("must not be empty".into()),
            "auto" => Ok(RawCookieJar(None)),
            _ => Ok(RawCookieJar(Some(s.to_string()))),
        }
    }
}

/// A header name: an RFC 7230 token.
pub(super) struct HeaderName(pub(super) String);
impl FromScalar for HeaderName {
    const EXPECTING: &'static str = "an HTTP header name";
    fn from_scalar(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if ok {
            Ok(HeaderName(s.to_string()))
        } else {
            Err("invalid HTTP header name (a token: letters, digits and !#$%&'*+-.^_|~)".into())
        }
    }
}

/// A query parameter name.
pub(super) struct QueryName(pub(super) String);
impl FromScalar for QueryName {
    const EXPECTING: &'static str = "a query parameter name";
    fn from_scalar(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            Err("a query parameter name must not be empty".into())
        } else {
            Ok(QueryName(s.to_string()))
        }
    }
}

deserialize_from_scalar!(
    NonEmpty,
    RawAddr,
    RawDuration,
    RawMatch,
    RawCookieJar,
    HeaderName,
    QueryName,
    RawKeyUrl
);

/// An entry of `access.allow_uids`: `self`, a uid, or a user name (resolved against the
/// password database by the validator, which knows the entry's line).
pub(super) enum RawUid {
    Id(AllowUid),
    Name(String),
}
impl<'de> Deserialize<'de> for RawUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawUid;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("self, a numeric uid or a user name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawUid, E> {
                u32::try_from(v)
                    .map(|u| RawUid::Id(AllowUid::Uid(u)))
                    .map_err(|_| E::custom("uid out of range"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawUid, E> {
                u32::try_from(v)
                    .map(|u| RawUid::Id(AllowUid::Uid(u)))
                    .map_err(|_| E::custom("uid out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawUid, E> {
                let t = v.trim();
                if t == "self" {
                    return Ok(RawUid::Id(AllowUid::Current));
                }
                if let Ok(u) = t.parse::<u32>() {
                    return Ok(RawUid::Id(AllowUid::Uid(u)));
                }
                // POSIX portable user names (plus a trailing `$`, as Samba machine
                // accounts have): anything else cannot be in the password database.
                let portable = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
                let body = t.strip_suffix('$').unwrap_or(t);
                if !body.is_empty() && !body.starts_with('-') && body.chars().all(portable) {
                    Ok(RawUid::Name(t.to_owned()))
                } else {
                    Err(E::custom("must be self, a numeric uid or a user name"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) struct RawRcFiles(pub(super) Option<Vec<String>>);
impl<'de> Deserialize<'de> for RawRcFiles {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRcFiles;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("auto or a list of paths")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawRcFiles, E> {
                if v.trim() == "auto" {
                    Ok(RawRcFiles(None))
                } else {
                    Err(E::custom("must be auto or a list of paths"))
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRcFiles, A::Error> {
                let mut v = Vec::new();
                while let Some(NonEmpty(p)) = seq.next_element()? {
                    v.push(p);
                }
                Ok(RawRcFiles(Some(v)))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) enum RawNetrc {
    Auto,
    Off,
    Path(String),
}
impl<'de> Deserialize<'de> for RawNetrc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawNetrc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("auto, false or a path")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNetrc, E> {
                Ok(if v { RawNetrc::Auto } else { RawNetrc::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNetrc, E> {
                match v.trim() {
                    "" => Err(E::custom("must be auto, false or a path")),
                    "auto" => Ok(RawNetrc::Auto),
                    _ => Ok(RawNetrc::Path(v.to_string())),
                }
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) struct RawNoProxy(pub(super) Vec<String>);
impl<'de> Deserialize<'de> for RawNoProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn entry(s: &str) -> Result<String, String> {
            let s = s.trim();
            if s.is_empty() {
                Err("an entry must not be empty".into())
            } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err("an entry must not contain spaces".into())
            } else {
                Ok(s.to_ascii_lowercase())
            }
        }
        struct Entry(String);
        impl FromScalar for Entry {
            const EXPECTING: &'static str = "a host, .domain or *.domain";
            fn from_scalar(s: &str) -> Result<Self, String> {
                entry(s).map(Entry)
            }
        }
        deserialize_from_scalar!(Entry);
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNoProxy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of hosts and domains")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNoProxy, E> {
                v.split(',')
                    .map(entry)
                    .collect::<Result<Vec<_>, _>>()
                    .map(RawNoProxy)
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNoProxy, A::Error> {
                let mut v = Vec::new();
                while let Some(Entry(e)) = seq.next_element()? {
                    v.push(e);
                }
                Ok(RawNoProxy(v))
            }
        }
        d.deserialize_any(V)
    }
}

pub(super) struct RawHops(pub(super) u8);
impl<'de> Deserialize<'de> for RawHops {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawHops;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a number from 1 to {MAX_MAX_HOPS}")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawHops, E> {
                match u8::try_from(v) {
                    Ok(n) if (1..=MAX_MAX_HOPS).contains(&v) => Ok(RawHops(n)),
                    _ => Err(E::custom(format!("must be between 1 and {MAX_MAX_HOPS}"))),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawHops, E> {
                self.visit_u64(u64::try_from(v).unwrap_or(0))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with allow_uids, proxy_token_file and mode"
)]
pub(super) struct RawAccess {
    pub(super) allow_uids: Option<Vec<RawUid>>,
    pub(super) proxy_token_file: Option<NonEmpty>,
    pub(super) mode: Option<AccessMode>,
}

/// `intercept_ca`: the local CA that signs the leaf certificates of intercepted hosts.
#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with cert, key and name_constraints"
)]
pub(super) struct RawInterceptCa {
    pub(super) cert: Option<NonEmpty>,
    pub(super) key: Option<NonEmpty>,
    pub(super) name_constraints: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map with listen")]
pub(super) struct RawAdmin {
    pub(super) listen: Option<RawAddr>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map with max_hops")]
pub(super) struct RawRedirects {
    pub(super) max_hops: Option<RawHops>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with connect, first_byte and idle"
)]
pub(super) struct RawTimeouts {
    pub(super) connect: Option<RawDuration>,
    pub(super) first_byte: Option<RawDuration>,
    pub(super) idle: Option<RawDuration>,
}

/// `shutdown`: how SIGTERM ends the daemon.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map with drain")]
pub(super) struct RawShutdown {
    pub(super) drain: Option<RawDuration>,
}

#[derive(Deserialize, Default)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with head_timeout, max_head_bytes, max_headers, max_connections, tunnel_idle and write_timeout"
)]
pub(super) struct RawLimits {
    pub(super) head_timeout: Option<RawDuration>,
    pub(super) max_head_bytes: Option<RawCount>,
    pub(super) max_headers: Option<RawCount>,
    pub(super) max_connections: Option<RawCount>,
    pub(super) tunnel_idle: Option<RawDuration>,
    pub(super) write_timeout: Option<RawDuration>,
}

/// A positive whole number (a limit).
pub(super) struct RawCount(pub(super) usize);
impl<'de> Deserialize<'de> for RawCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = RawCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number greater than zero")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawCount, E> {
                match usize::try_from(v) {
                    Ok(n) if n > 0 => Ok(RawCount(n)),
                    _ => Err(E::custom("must be a whole number greater than zero")),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawCount, E> {
                self.visit_u64(u64::try_from(v).unwrap_or(0))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map with format and level")]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
    pub(super) level: Option<LogLevel>,
}

/// `upstream_proxy`, checked as far as possible without the file system.
pub(super) enum RawProxy {
    Direct,
    Inherit,
    Via(RawProxyVia),
}

pub(super) struct RawProxyVia {
    pub(super) host: String,
    pub(super) port: u16,
    /// From the URL, percent-decoded.
    pub(super) url_credentials: Option<(String, String)>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with url, username and password_file"
)]
struct RawProxyObject {
    url: String,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<NonEmpty>,
}

type ProxyUrlParts = (String, u16, Option<(String, String)>);

/// Parses an `http://[user[:password]@]host[:port][/]` proxy URL (see
/// [`crate::rule::proxy::parse_proxy_url`]). Errors never repeat it.
fn parse_proxy_url(s: &str) -> Result<ProxyUrlParts, String> {
    use crate::rule::proxy::{parse_proxy_url, ProxyUrlError};
    let url = parse_proxy_url(s, false).map_err(|e| match e {
        ProxyUrlError::Invalid(e) => format!("not a valid URL ({e})"),
        ProxyUrlError::Https => {
            "https:// upstream proxies are not supported; use http://".to_string()
        }
        ProxyUrlError::NotHttp => "must be an http:// URL".to_string(),
        ProxyUrlError::NoHost => "the URL needs a host".to_string(),
        ProxyUrlError::CredentialsNotUtf8 => {
            "the URL credentials are not UTF-8 after %-decoding".to_string()
        }
    })?;
    if url.has_path {
        return Err("the URL must not have a path, query or fragment".into());
    }
    Ok((url.host, url.port, url.credentials))
}

impl<'de> Deserialize<'de> for RawProxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawProxy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("direct, an http:// URL, or { url, username, password_file }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawProxy, E> {
                match v.trim() {
                    "direct" | "none" => Ok(RawProxy::Direct),
                    "inherit" => Ok(RawProxy::Inherit),
                    _ => {
                        let (host, port, url_credentials) =
                            parse_proxy_url(v).map_err(E::custom)?;
                        Ok(RawProxy::Via(RawProxyVia {
                            host,
                            port,
                            url_credentials,
                            username: None,
                            password: None,
                            password_file: None,
                        }))
                    }
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawProxy, A::Error> {
                let o = RawProxyObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (host, port, url_credentials) =
                    parse_proxy_url(&o.url).map_err(de::Error::custom)?;
                let password_file = o.password_file.map(|p| p.0);
                if url_credentials.is_some()
                    && (o.username.is_some() || o.password.is_some() || password_file.is_some())
                {
                    return Err(de::Error::custom(
                        "credentials are given both in the URL and as options",
                    ));
                }
                if o.password.is_some() && password_file.is_some() {
                    return Err(de::Error::custom(
                        "give password or password_file, not both",
                    ));
                }
                if o.username.is_some() != (o.password.is_some() || password_file.is_some()) {
                    return Err(de::Error::custom(
                        "username needs password_file (or password), and they need username",
                    ));
                }
                Ok(RawProxy::Via(RawProxyVia {
                    host,
                    port,
                    url_credentials,
                    username: o.username,
                    password: o.password,
                    password_file,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, expecting = "a map of TLS options")]
pub(super) struct RawTls {
    pub(super) upgrade: Option<bool>,
    pub(super) client_cert: Option<NonEmpty>,
    pub(super) client_key: Option<NonEmpty>,
    pub(super) key_password_file: Option<NonEmpty>,
    pub(super) key_password: Option<String>,
    pub(super) pkcs12: Option<NonEmpty>,
    pub(super) ca: Option<NonEmpty>,
    pub(super) ca_dir: Option<NonEmpty>,
    pub(super) verify: Option<bool>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with username and password_file"
)]
pub(super) struct RawBasic {
    pub(super) username: String,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<NonEmpty>,
    pub(super) preemptive: Option<bool>,
}

/// A site's `handle`: a Handle Server REST API credential (see [`crate::auth::handle`]).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with username and password_file, client_cert: true, or credentials_file"
)]
pub(super) struct RawHandle {
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<NonEmpty>,
    pub(super) password_encoding: Option<RawPasswordEncoding>,
    pub(super) client_cert: Option<bool>,
    pub(super) credentials_file: Option<NonEmpty>,
}

/// `handle.password_encoding`.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawPasswordEncoding {
    Raw,
    Percent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with token_file")]
pub(super) struct RawBearer {
    pub(super) token: Option<String>,
    pub(super) token_file: Option<NonEmpty>,
}

pub(super) enum RawParamValue {
    Plain(String),
    File(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map with value or value_file")]
struct RawParamObject {
    value: Option<String>,
    value_file: Option<NonEmpty>,
}

impl<'de> Deserialize<'de> for RawParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawParamValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, { value: ... } or { value_file: ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawParamValue, E> {
                Ok(RawParamValue::Plain(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawParamValue, E> {
                Ok(RawParamValue::Plain(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawParamValue, E> {
                Ok(RawParamValue::Plain(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawParamValue, E> {
                Ok(RawParamValue::Plain(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawParamValue, E> {
                Err(E::custom(
                    "write this number in quotes so it is kept as written",
                ))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawParamValue, A::Error> {
                let o = RawParamObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (o.value, o.value_file) {
                    (Some(v), None) => Ok(RawParamValue::Plain(v)),
                    (None, Some(f)) => Ok(RawParamValue::File(f.0)),
                    _ => Err(de::Error::custom(
                        "give exactly one of value and value_file",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An ordered map whose keys are validated in their own visitor (so errors point at them).
pub(super) struct RawParams<K>(pub(super) Vec<(K, RawParamValue)>);
impl<'de, K: Deserialize<'de>> Deserialize<'de> for RawParams<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<K>(PhantomData<K>);
        impl<'de, K: Deserialize<'de>> Visitor<'de> for V<K> {
            type Value = RawParams<K>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawParams<K>, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    v.push(entry);
                }
                Ok(RawParams(v))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a site: a map with match and its options"
)]
pub(super) struct RawSite {
    #[serde(rename = "match")]
    pub(super) pattern: RawMatch,
    pub(super) name: Option<NonEmpty>,
    pub(super) tls: Option<RawTls>,
    pub(super) basic: Option<RawBasic>,
    pub(super) bearer: Option<RawBearer>,
    pub(super) headers: Option<RawParams<HeaderName>>,
    pub(super) query: Option<RawParams<QueryName>>,
    pub(super) upstream_proxy: Option<RawProxy>,
    pub(super) redirects: Option<RedirectMode>,
    pub(super) handle: Option<RawHandle>,
    pub(super) login: Option<RawLogin>,
    pub(super) query_token: Option<RawQueryToken>,
}

/// A site's `query_token` (Handcar agent keys): the parameter and exactly one source.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with param and one of from_url, token_file and from_command"
)]
pub(super) struct RawQueryToken {
    pub(super) param: QueryName,
    pub(super) from_url: Option<RawKeyUrl>,
    pub(super) token_file: Option<NonEmpty>,
    pub(super) from_command: Option<RawCommand>,
    pub(super) lifetime: Option<RawDuration>,
    pub(super) refresh_before: Option<RawDuration>,
    pub(super) replace: Option<bool>,
    pub(super) cache_file: Option<NonEmpty>,
    pub(super) timeout: Option<RawDuration>,
}

/// `query_token.from_url`: an absolute http(s) URL without user information (the
/// credentials are those of the rule that matches it). Errors do not repeat it.
pub(super) struct RawKeyUrl(pub(super) url::Url);
impl FromScalar for RawKeyUrl {
    const EXPECTING: &'static str = "an http:// or https:// URL";
    fn from_scalar(s: &str) -> Result<Self, String> {
        let u = url::Url::parse(s.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        if !u.username().is_empty() || u.password().is_some() {
            return Err(
                "must not contain user information: the credentials of the site \
                        that matches the URL are used (basic, tls.client_cert)"
                    .into(),
            );
        }
        if u.fragment().is_some() {
            return Err("must not have a #fragment".into());
        }
        Ok(RawKeyUrl(u))
    }
}

/// `query_token.from_command`: a list of arguments, or one string split as a POSIX
/// shell splits words (quotes and backslashes; no expansion, no shell is run).
pub(super) struct RawCommand(pub(super) Vec<String>);
impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command: a list of arguments, or one string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
                match shlex::split(v) {
                    Some(argv) if !argv.is_empty() => Ok(RawCommand(argv)),
                    Some(_) => Err(E::custom("the command is empty")),
                    None => Err(E::custom(
                        "the command has an unclosed quote or a trailing backslash",
                    )),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                match argv.first() {
                    Some(p) if !p.is_empty() => Ok(RawCommand(argv)),
                    _ => Err(de::Error::custom("the command needs a program")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `sites[].login`: a certificate-plus-login servlet (checked in `validate/site.rs`).
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a map with url, method, body or body_file, logout_url and when"
)]
pub(super) struct RawLogin {
    pub(super) url: NonEmpty,
    pub(super) method: Option<NonEmpty>,
    pub(super) body: Option<String>,
    /// A body that holds a secret (a password field): read like every `*_file`.
    pub(super) body_file: Option<NonEmpty>,
    pub(super) logout_url: Option<NonEmpty>,
    pub(super) when: Option<Vec<u16>>,
}
