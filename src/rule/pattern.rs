/*!
The one pattern matcher: which requests a rule applies to.

rc-file `[prefix]`es and YAML `sites[].match` patterns are parsed by their own config
modules (`config/rcfile.rs`, `config/yaml.rs`) into a [`Pattern`]; this module matches it
against a request and orders patterns by specificity. The two syntaxes keep their
documented, different meanings, and each is encoded in the pattern itself:

| written                    | scheme | host    | port                  | path                     |
|----------------------------|--------|---------|-----------------------|--------------------------|
| rc (no prefix)             | any    | any     | [`PortSpec::Any`]     | any                      |
| rc `[host]`                | any    | exact   | [`PortSpec::Default`] | any                      |
| rc `[host:port]`           | any    | exact   | [`PortSpec::Is`]      | any                      |
| rc `[s://host/p]`          | `s`    | exact   | `Default`, or `Is`    | `/p`, its DAP requests   |
| YAML `host`, `*.domain`    | any    | ex./suf.| [`PortSpec::Any`]     | any                      |
| YAML `host:port`           | any    | ex./suf.| [`PortSpec::Is`]      | any                      |
| YAML `https://host/p`      | https  | exact   | `Default`, or `Is`    | `/p` at a segment        |

Both: host and scheme compare case-insensitively, brackets around an IPv6 literal and one
trailing dot of the request host are ignored, and a query or fragment on the request path
is ignored. A path prefix matches itself and what is below it at a `/` boundary (`/data`
matches `/data`, `/data/`, `/data/x`, not `/database`); an rc path prefix also matches the
DAP requests for the dataset it names ([`DAP_SUFFIXES`]: `/d/ds.dds`, `/d/ds.das`, …).
*/

use crate::target::{Scheme, Target};

/// Which configuration syntax a pattern was written in. Besides the path rule (rc path
/// prefixes cover DAP suffixes), it decides the specificity order, which the two document
/// differently (see [`Pattern::specificity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Syntax {
    /// An rc-file `[prefix]` (or none).
    Rc,
    /// A YAML `sites[].match`.
    Yaml,
}

/// The scheme a pattern requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchemePattern {
    Any,
    Is(Scheme),
    /// A scheme the proxy never sees (an rc `[ftp://host/…]`): matches no request.
    Other,
}

/// The host part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`, or no rc prefix.
    Any,
    /// Lowercase, without a trailing dot; IPv6 without brackets.
    Exact(String),
    /// `*.example.org` is stored as `.example.org`: it matches `a.example.org` and
    /// `a.b.example.org`, not `example.org`.
    Suffix(String),
}

/// Which ports a pattern covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Every port.
    Any,
    /// The default port of the request's scheme: 80 for http, 443 for https. netCDF-C
    /// compares `host:port` exactly, so rc `[host]` and `[scheme://host/path]` never match
    /// a URL with another port; a YAML URL pattern without a port means its scheme's
    /// default port too.
    Default,
    /// This port.
    Is(u16),
}

/// The suffixes a DAP client appends to a dataset URL (DAP2 `.dds`, `.das`, `.dods`, `.ascii`,
/// `.info`, `.html`; DAP4 `.dmr`, `.dap`, `.dmr.xml`, `.dap.nc4`). netCDF-C asks for
/// `/protected/ds.dds` and `/protected/ds.das` when opened on `/protected/ds`.
pub const DAP_SUFFIXES: [&str; 10] = [
    ".dds", ".das", ".dods", ".dmr", ".dap", ".dmr.xml", ".dap.nc4", ".ascii", ".info", ".html",
];

/// The rc path rule: `path` is `prefix` or below it, at a segment boundary, or `prefix` with
/// one of the [`DAP_SUFFIXES`] appended (the DAP requests for the dataset `prefix` names).
/// `prefix` has no trailing `/`; `path` carries no query (a DAP constraint `?…` is stripped
/// before).
pub fn path_under(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || DAP_SUFFIXES.contains(&rest),
        None => false,
    }
}

/// `path` without a trailing DAP suffix, when it has one (the dataset path it asks about).
pub fn dap_dataset(path: &str) -> Option<&str> {
    DAP_SUFFIXES
        .iter()
        .filter_map(|s| path.strip_suffix(s))
        .filter(|base| !base.is_empty() && !base.ends_with('/'))
        .min_by_key(|base| base.len())
}

/// A request host as patterns compare it: without IPv6 brackets and one trailing dot.
pub fn normalize_host(host: &str) -> &str {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.strip_suffix('.').unwrap_or(host)
}

/// Where a rule applies, cheap to test per request (does not allocate).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub scheme: SchemePattern,
    pub host: HostPattern,
    pub port: PortSpec,
    /// Without trailing `/`; never `Some("")` (a root prefix is `None`).
    pub path: Option<String>,
    pub syntax: Syntax,
}

impl Pattern {
    /// Matches every request.
    pub fn any(syntax: Syntax) -> Pattern {
        Pattern {
            scheme: SchemePattern::Any,
            host: HostPattern::Any,
            port: PortSpec::Any,
            path: None,
            syntax,
        }
    }

    pub fn matches(&self, target: &Target) -> bool {
        self.matches_parts(
            target.scheme.as_str(),
            &target.host,
            target.port,
            target.path(),
        )
    }

    /// Whether a request for `scheme://host:port/path` falls under this pattern. `port` is the
    /// request's effective port (the scheme's default applied). See the module documentation
    /// for the rules.
    pub fn matches_parts(&self, scheme: &str, host: &str, port: u16, path: &str) -> bool {
        let req_scheme = Scheme::parse(scheme);
        match self.scheme {
            SchemePattern::Any => {}
            SchemePattern::Is(s) if req_scheme == Some(s) => {}
            SchemePattern::Is(_) | SchemePattern::Other => return false,
        }
        let port_ok = match self.port {
            PortSpec::Any => true,
            PortSpec::Default => req_scheme.map(Scheme::default_port) == Some(port),
            PortSpec::Is(want) => want == port,
        };
        if !port_ok {
            return false;
        }
        let host = normalize_host(host);
        match &self.host {
            HostPattern::Any => {}
            HostPattern::Exact(h) => {
                if !h.eq_ignore_ascii_case(host) {
                    return false;
                }
            }
            HostPattern::Suffix(sfx) => {
                let (hb, sb) = (host.as_bytes(), sfx.as_bytes());
                if hb.len() <= sb.len() || !hb[hb.len() - sb.len()..].eq_ignore_ascii_case(sb) {
                    return false;
                }
            }
        }
        match &self.path {
            None => true,
            Some(prefix) => {
                let path = path.split(['?', '#']).next().unwrap_or("");
                let path = if path.is_empty() { "/" } else { path };
                match self.syntax {
                    Syntax::Rc => path_under(prefix, path),
                    Syntax::Yaml => match path.strip_prefix(prefix.as_str()) {
                        Some(rest) => rest.is_empty() || rest.starts_with('/'),
                        None => false,
                    },
                }
            }
        }
    }

    /// Ordering key, larger = more specific; rules are only compared with rules of their own
    /// source, and each syntax keeps its documented order:
    ///
    /// * rc: unscoped `(0,0)` < `[host]` `(1,0)` < `[host:port]` `(2,0)` <
    ///   `[scheme://host…]` `(3, n)`, where `n` grows with the path length (and by one for an
    ///   explicit port). A scope strictly inside another always has a strictly greater
    ///   specificity.
    /// * YAML: URL prefix with a path (longer path more specific) > exact host with a fixed
    ///   port (`host:port`, or a URL, whose port is the scheme's default) > exact host >
    ///   `*.domain` (longer suffix more specific; a fixed port breaks ties) > `*`.
    pub fn specificity(&self) -> (u8, usize) {
        let path_len = self.path.as_ref().map_or(0, String::len);
        match self.syntax {
            Syntax::Rc => {
                if self.host == HostPattern::Any {
                    return (0, 0);
                }
                let explicit_port = matches!(self.port, PortSpec::Is(_));
                if self.scheme == SchemePattern::Any {
                    (if explicit_port { 2 } else { 1 }, 0)
                } else {
                    (3, path_len.saturating_mul(2) + usize::from(explicit_port))
                }
            }
            Syntax::Yaml => {
                if self.path.is_some() {
                    return (4, path_len);
                }
                let fixed_port = self.port != PortSpec::Any;
                match &self.host {
                    HostPattern::Exact(_) => (if fixed_port { 3 } else { 2 }, 0),
                    HostPattern::Suffix(s) => {
                        (1, s.len().saturating_mul(2) + usize::from(fixed_port))
                    }
                    HostPattern::Any => (0, usize::from(fixed_port)),
                }
            }
        }
    }

    /// Whether requests this pattern matches may be plain `http://` ones.
    pub fn may_match_http(&self) -> bool {
        matches!(
            self.scheme,
            SchemePattern::Any | SchemePattern::Is(Scheme::Http)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(h: &str) -> HostPattern {
        HostPattern::Exact(h.into())
    }

    fn pat(
        syntax: Syntax,
        scheme: Option<Scheme>,
        host: HostPattern,
        port: PortSpec,
        path: Option<&str>,
    ) -> Pattern {
        Pattern {
            scheme: scheme.map_or(SchemePattern::Any, SchemePattern::Is),
            host,
            port,
            path: path.map(str::to_owned),
            syntax,
        }
    }

    /// The matcher table: each syntax's forms side by side, as their config modules parse
    /// them (rc `[host]` = default port, YAML `host` = any port; a URL without a port = its
    /// scheme's default port in both; DAP suffixes for rc paths only).
    #[test]
    fn matcher_table_both_syntaxes() {
        use PortSpec::{Any, Default, Is};
        use Scheme::{Http, Https};
        use Syntax::{Rc, Yaml};
        let rc_host = pat(Rc, None, exact("h.org"), Default, None);
        let rc_host_port = pat(Rc, None, exact("h.org"), Is(8080), None);
        let rc_url = pat(Rc, Some(Https), exact("h.org"), Default, Some("/d/ds"));
        let y_host = pat(Yaml, None, exact("h.org"), Any, None);
        let y_host_port = pat(Yaml, None, exact("h.org"), Is(8080), None);
        let y_url = pat(Yaml, Some(Https), exact("h.org"), Default, Some("/d/ds"));
        let y_suffix = pat(Yaml, None, HostPattern::Suffix(".h.org".into()), Any, None);
        let v6 = pat(Rc, Some(Http), exact("::1"), Is(8080), None);
        type Case<'a> = (&'a Pattern, (&'a str, &'a str, u16, &'a str), bool);
        let cases: &[Case] = &[
            // host without a port
            (&rc_host, ("http", "h.org", 80, "/"), true),
            (&rc_host, ("https", "H.ORG", 443, "/"), true),
            (&rc_host, ("http", "h.org", 8080, "/"), false),
            (&y_host, ("http", "h.org", 80, "/"), true),
            (&y_host, ("http", "h.org", 8080, "/"), true),
            (&y_host, ("https", "x.h.org", 443, "/"), false),
            // host:port
            (&rc_host_port, ("http", "h.org", 8080, "/"), true),
            (&rc_host_port, ("http", "h.org", 80, "/"), false),
            (&y_host_port, ("https", "h.org", 8080, "/"), true),
            (&y_host_port, ("https", "h.org", 443, "/"), false),
            // URL prefix without a port: the scheme's default port in both
            (&rc_url, ("https", "h.org", 443, "/d/ds"), true),
            (&y_url, ("https", "h.org", 443, "/d/ds"), true),
            (&rc_url, ("https", "h.org", 8443, "/d/ds"), false),
            (&y_url, ("https", "h.org", 8443, "/d/ds"), false),
            (&rc_url, ("http", "h.org", 443, "/d/ds"), false),
            (&y_url, ("http", "h.org", 443, "/d/ds"), false),
            // path prefixes: segment boundary, query and fragment ignored
            (&rc_url, ("https", "h.org", 443, "/d/ds/x"), true),
            (&y_url, ("https", "h.org", 443, "/d/ds/x"), true),
            (&rc_url, ("https", "h.org", 443, "/d/ds?q=1"), true),
            (&y_url, ("https", "h.org", 443, "/d/ds?q=1"), true),
            (&y_url, ("https", "h.org", 443, "/d/ds#f"), true),
            (&rc_url, ("https", "h.org", 443, "/d/dsx"), false),
            (&y_url, ("https", "h.org", 443, "/d/dsx"), false),
            (&rc_url, ("https", "h.org", 443, "/"), false),
            // DAP suffixes: rc only
            (&rc_url, ("https", "h.org", 443, "/d/ds.dds"), true),
            (&rc_url, ("https", "h.org", 443, "/d/ds.dods?temp"), true),
            (&y_url, ("https", "h.org", 443, "/d/ds.dds"), false),
            // *.domain
            (&y_suffix, ("https", "a.b.H.org", 443, "/"), true),
            (&y_suffix, ("https", "h.org", 443, "/"), false),
            // IPv6 brackets, either side
            (&v6, ("http", "::1", 8080, "/"), true),
            (&v6, ("http", "[::1]", 8080, "/"), true),
            // a scheme the proxy does not speak
            (&rc_host, ("ftp", "h.org", 21, "/"), false),
            (&y_host, ("ftp", "h.org", 21, "/"), true),
        ];
        for (p, (s, h, port, path), want) in cases {
            assert_eq!(
                p.matches_parts(s, h, *port, path),
                *want,
                "{p:?} vs {s}://{h}:{port}{path}"
            );
        }
        let other = Pattern {
            scheme: SchemePattern::Other,
            ..rc_host.clone()
        };
        assert!(!other.matches_parts("http", "h.org", 80, "/"));
        assert!(Pattern::any(Rc).matches_parts("ftp", "x", 1, ""));
    }

    /// A trailing dot on the request host (`h.org.`, the fully qualified form) is ignored by
    /// both syntaxes; rc files used to compare it literally.
    #[test]
    fn trailing_dot_of_the_request_host_is_ignored_by_both() {
        for syntax in [Syntax::Rc, Syntax::Yaml] {
            let p = pat(syntax, None, exact("h.org"), PortSpec::Is(80), None);
            assert!(p.matches_parts("http", "h.org.", 80, "/"), "{syntax:?}");
            assert!(p.matches_parts("http", "H.Org.", 80, "/"), "{syntax:?}");
            assert!(!p.matches_parts("http", "h.org..", 80, "/"), "{syntax:?}");
            let s = pat(
                syntax,
                None,
                HostPattern::Suffix(".h.org".into()),
                PortSpec::Any,
                None,
            );
            assert!(s.matches_parts("http", "a.h.org.", 80, "/"), "{syntax:?}");
        }
        let t = Target::from_absolute(b"http://h.org./x").unwrap();
        assert!(pat(Syntax::Rc, None, exact("h.org"), PortSpec::Default, None).matches(&t));
    }

    #[test]
    fn matches_a_target() {
        let p = pat(
            Syntax::Yaml,
            Some(Scheme::Http),
            exact("h.org"),
            PortSpec::Default,
            Some("/a"),
        );
        let t = |u: &str| Target::from_absolute(u.as_bytes()).unwrap();
        assert!(p.matches(&t("http://h.org/a/b?x=1")));
        assert!(!p.matches(&t("http://h.org:81/a")));
        assert!(!p.matches(&t("https://h.org/a")));
    }

    #[test]
    fn specificity_keeps_each_syntax_order() {
        use PortSpec::{Any, Default, Is};
        use Syntax::{Rc, Yaml};
        let h = || exact("h");
        let rc = [
            Pattern::any(Rc),
            pat(Rc, None, h(), Default, None),
            pat(Rc, None, h(), Is(80), None),
            pat(Rc, Some(Scheme::Http), h(), Default, None),
            pat(Rc, Some(Scheme::Http), h(), Is(80), None),
            pat(Rc, Some(Scheme::Http), h(), Default, Some("/a")),
            pat(Rc, Some(Scheme::Http), h(), Is(80), Some("/a")),
            pat(Rc, Some(Scheme::Http), h(), Default, Some("/a/b")),
        ];
        let yaml = [
            Pattern::any(Yaml),
            pat(Yaml, None, HostPattern::Suffix(".org".into()), Any, None),
            pat(Yaml, None, HostPattern::Suffix(".h.org".into()), Any, None),
            pat(
                Yaml,
                None,
                HostPattern::Suffix(".h.org".into()),
                Is(1),
                None,
            ),
            pat(Yaml, None, h(), Any, None),
            pat(Yaml, None, h(), Is(8443), None),
            pat(Yaml, Some(Scheme::Https), h(), Default, Some("/d")),
            pat(Yaml, Some(Scheme::Https), h(), Default, Some("/d/x")),
        ];
        for order in [&rc[..], &yaml[..]] {
            for w in order.windows(2) {
                assert!(w[0].specificity() < w[1].specificity(), "{w:?}");
            }
        }
        // YAML: a URL without a path is as specific as host:port; rc: more specific.
        assert_eq!(
            pat(Yaml, Some(Scheme::Https), h(), Default, None).specificity(),
            pat(Yaml, None, h(), Is(443), None).specificity()
        );
        assert!(
            pat(Rc, Some(Scheme::Https), h(), Default, None).specificity()
                > pat(Rc, None, h(), Is(443), None).specificity()
        );
    }

    #[test]
    fn dap_paths() {
        assert!(path_under("/d/ds", "/d/ds.dmr.xml"));
        assert!(!path_under("/d/ds", "/d/ds.nc"));
        assert!(path_under("", "/anything"));
        assert_eq!(dap_dataset("/d/ds.dap.nc4"), Some("/d/ds"));
        assert_eq!(dap_dataset("/d/.dds"), None);
    }
}
