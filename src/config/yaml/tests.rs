//! The parser end to end: documents in, [`YamlConfig`] or [`Diagnostic`]s out.

use super::locate::PROBE;
use super::*;
use crate::rule::{HostPattern, SchemePattern};
use crate::target::Scheme;
use std::fs;

const SECRET: &str = "S3CRET-VALUE";

fn no_env() -> SecretEnv {
    SecretEnv::default()
}

fn parse(text: &str) -> Result<YamlConfig, Vec<Diagnostic>> {
    parse_str(Path::new("/etc/authproxy/config.yaml"), text, &no_env())
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(es) => es.iter().map(ToString::to_string).collect(),
    }
}

/// A temporary config directory holding the given files.
fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, contents) in files {
        fs::write(d.path().join(name), contents).unwrap();
    }
    d
}

const FULL: &str = r#"# full example
listen: ["127.0.0.1:3128", "[::1]:3129"]
access: { allow_uids: [self, 1001], proxy_token_file: tok }
rc_files: auto
netrc: auto
cookie_jar: auto
upstream_proxy: http://user:pass@proxy.corp:8080
no_proxy: [".internal.example", "LocalHost", "10.0.0.0/8"]
redirects: { max_hops: 12 }
timeouts: { connect: 10s, first_byte: 60s, idle: 5m }
log: { format: json, level: info }
sites:
  - match: "esgf-node.example.org"
    name: esgf
    tls: { upgrade: true, client_cert: cert.pem, client_key: key.pem, key_password_file: pw, ca: ca.pem, ca_dir: /etc/ssl/x, verify: true }
  - match: "https://Data.Example.org/thredds/"
    basic: { username: alice, password_file: pw }
    headers: { X-Api-Key: {value_file: k}, X-Plain: "v" }
    query: { apikey: { value_file: k }, format: "nc", version: 2 }
    upstream_proxy: direct
    redirects: follow
  - match: "*.example.net:8443"
    bearer: { token_file: edl.token }
    upstream_proxy: { url: "http://proxy2:3128", username: u, password_file: pw }
    redirects: pass
  - match: "*"
    tls:
      pkcs12: id.p12
      key_password_file: pw
      verify: false
"#;

#[test]
fn full_example_parses() {
    let d = dir_with(&[
        ("tok", "proxy-token\n"),
        ("pw", "pa ss\n\n"),
        ("k", "key-1 \n"),
        ("edl.token", "tok123"),
    ]);
    let path = d.path().join("config.yaml");
    let c = parse_str(&path, FULL, &no_env()).unwrap_or_else(|e| panic!("{e:?}"));
    let dir = d.path();
    assert_eq!(c.listen.len(), 2);
    assert_eq!(c.listen[1], "[::1]:3129".parse().unwrap());
    assert_eq!(
        c.access.allow_uids,
        vec![AllowUid::Current, AllowUid::Uid(1001)]
    );
    assert_eq!(
        c.access.proxy_token.as_ref().unwrap().expose(),
        "proxy-token"
    );
    assert_eq!(
        c.access.proxy_token_file.as_deref(),
        Some(dir.join("tok").as_path())
    );
    assert_eq!(c.rc_files, RcFilesSetting::Auto);
    assert_eq!(c.netrc, NetrcSetting::Auto);
    assert_eq!(c.cookie_jar, None);
    let up = c.upstream_proxy.as_ref().unwrap();
    assert_eq!((up.host.as_str(), up.port), ("proxy.corp", 8080));
    let (u, p) = up.credentials.as_ref().unwrap();
    assert_eq!((u.as_str(), p.expose().as_str()), ("user", "pass"));
    assert_eq!(up.origin.line, 7);
    assert!(!format!("{up:?}").contains("pass\""));
    assert_eq!(
        c.no_proxy,
        vec![".internal.example", "localhost", "10.0.0.0/8"]
    );
    assert_eq!(c.max_hops, 12);
    assert_eq!(c.timeouts.connect, Some(Duration::from_secs(10)));
    assert_eq!(c.timeouts.idle, Some(Duration::from_secs(300)));
    assert_eq!(c.log.format, Some(LogFormat::Json));
    assert_eq!(c.log.level, Some(LogLevel::Info));

    assert_eq!(c.sites.len(), 4);
    let s0 = &c.sites[0];
    assert_eq!(s0.id, "esgf");
    assert_eq!(s0.origin.line, 13);
    assert_eq!(
        s0.pattern.host,
        HostPattern::Exact("esgf-node.example.org".into())
    );
    assert!(s0.tls.upgrade);
    assert_eq!(
        s0.tls.client_cert.as_deref(),
        Some(dir.join("cert.pem").as_path())
    );
    assert_eq!(
        s0.tls.client_key.as_deref(),
        Some(dir.join("key.pem").as_path())
    );
    assert_eq!(s0.tls.key_password.as_ref().unwrap().expose(), "pa ss");
    assert_eq!(s0.tls.ca_dir.as_deref(), Some(Path::new("/etc/ssl/x")));
    assert_eq!(s0.tls.verify, Some(true));
    assert_eq!(s0.upstream_proxy, ProxyChoice::Inherit);

    let s1 = &c.sites[1];
    assert_eq!(s1.id, "sites[1]");
    assert_eq!(s1.origin.line, 16);
    assert_eq!(s1.pattern_text, "https://Data.Example.org/thredds/");
    assert_eq!(s1.pattern.scheme, SchemePattern::Is(Scheme::Https));
    assert_eq!(s1.pattern.path.as_deref(), Some("/thredds"));
    let (u, p) = s1.basic.as_ref().unwrap();
    assert_eq!((u.as_str(), p.expose().as_str()), ("alice", "pa ss"));
    assert_eq!(s1.headers[0].0, "X-Api-Key");
    assert_eq!(
        s1.headers[0].1,
        ParamValue::Secret(Secret::new("key-1".into()))
    );
    assert_eq!(
        s1.headers[1],
        ("X-Plain".into(), ParamValue::Plain("v".into()))
    );
    assert_eq!(s1.query.len(), 3);
    assert_eq!(
        s1.query[2],
        ("version".into(), ParamValue::Plain("2".into()))
    );
    assert_eq!(s1.upstream_proxy, ProxyChoice::Direct);
    assert_eq!(s1.redirects, Some(RedirectMode::Follow));

    let s2 = &c.sites[2];
    assert_eq!(s2.bearer.as_ref().unwrap().expose(), "tok123");
    match &s2.upstream_proxy {
        ProxyChoice::Via(p) => {
            assert_eq!((p.host.as_str(), p.port), ("proxy2", 3128));
            assert_eq!(p.credentials.as_ref().unwrap().1.expose(), "pa ss");
            assert_eq!(p.origin.line, 24);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s2.redirects, Some(RedirectMode::Pass));

    let s3 = &c.sites[3];
    assert_eq!(s3.pattern.host, HostPattern::Any);
    assert_eq!(s3.origin.line, 26);
    assert_eq!(s3.tls.pkcs12.as_deref(), Some(dir.join("id.p12").as_path()));
    assert_eq!(s3.tls.verify, Some(false));

    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    let (inline, warnings): (Vec<String>, Vec<String>) = warnings
        .into_iter()
        .partition(|w| w.contains("is written inline; value_file is recommended"));
    assert_eq!(inline.len(), 3, "{inline:?}");
    assert!(
        inline[0].contains(":18: sites[1].headers.X-Plain "),
        "{inline:?}"
    );
    assert!(
        inline[1].contains(":19: sites[1].query.format "),
        "{inline:?}"
    );
    assert!(
        inline[2].contains(":19: sites[1].query.version "),
        "{inline:?}"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains(":7: upstream_proxy has a password in its URL"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains(":30: TLS verification is off for *"),
        "{warnings:?}"
    );
    assert!(!warnings
        .iter()
        .any(|w| w.contains("pass@") || w.contains(":pass")));

    let mut read = c.files_read.clone();
    read.sort();
    let mut want: Vec<PathBuf> = ["edl.token", "k", "pw", "tok"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    want.sort();
    assert_eq!(read, want);
}

#[test]
fn empty_and_comment_only_files_give_defaults() {
    for text in [
        "",
        "\n\n",
        "# just a comment\n  # another\n",
        "---\n",
        "sites:\n",
    ] {
        let c = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
        assert_eq!(c.listen, vec!["127.0.0.1:3128".parse().unwrap()]);
        assert_eq!(c.max_hops, 10);
        assert_eq!(c.access.allow_uids, vec![AllowUid::Current]);
        assert_eq!(c.rc_files, RcFilesSetting::Auto);
        assert_eq!(c.netrc, NetrcSetting::Auto);
        assert!(c.sites.is_empty() && c.warnings.is_empty() && c.upstream_proxy.is_none());
    }
}

#[test]
fn misspelt_key_in_a_site_names_line_key_and_valid_keys() {
    let text =
        "sites:\n  - match: a.example\n    basic:\n      username: a\n      pasword_file: pw\n";
    let es = errors(text);
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(
        es[0].starts_with("/etc/authproxy/config.yaml:5: "),
        "{es:?}"
    );
    assert!(es[0].contains("`pasword_file`"), "{es:?}");
    assert!(es[0].contains("password_file"), "{es:?}");
}

#[test]
fn every_bad_site_is_reported() {
    let text = "\
sites:
  - match: a.example
    bsic: {}
  - match: b.example
  - match: c.example
    tls: { verfy: true }
listen: [nonsense]
bogus: 1
";
    let es = errors(text);
    assert_eq!(es.len(), 4, "{es:?}");
    assert!(es[0].contains(":3: ") && es[0].contains("`bsic`"), "{es:?}");
    assert!(
        es[1].contains(":6: ") && es[1].contains("`verfy`"),
        "{es:?}"
    );
    assert!(
        es[2].contains(":7: ") && es[2].contains("not a socket address"),
        "{es:?}"
    );
    assert!(es[3].contains(":8: unknown setting `bogus`"), "{es:?}");
}

#[test]
fn a_query_token_needs_a_source() {
    let text = "\
sites:
  - match: c.example
    query_token: { param: p }
";
    let es = errors(text);
    assert_eq!(
        es,
        vec![
            "/etc/authproxy/config.yaml:3: sites[0].query_token: needs one of from_url, token_file and from_command",
        ]
    );
}

#[test]
fn secret_values_never_appear_in_messages() {
    let cases = [
        "sites:\n  - match: a\n    basic: { username: a, password: [S3CRET-VALUE] }\n",
        "sites:\n  - match: a\n    basic: { username: a, password: { x: S3CRET-VALUE } }\n",
        "listen: S3CRET-VALUE\n",
        "listen: [S3CRET-VALUE]\n",
        "listen: [\"S3CRET-VALUE:80\"]\n",
        "redirects: { max_hops: S3CRET-VALUE }\n",
        "redirects: S3CRET-VALUE\n",
        "timeouts: { connect: S3CRET-VALUE }\n",
        "limits: { tunnel_idle: S3CRET-VALUE }\n",
        "limits: { max_headers: S3CRET-VALUE }\n",
        "log: { format: S3CRET-VALUE }\n",
        "log: { level: S3CRET-VALUE }\n",
        "access: { allow_uids: [S3CRET-VALUE] }\n",
        "access: S3CRET-VALUE\n",
        "netrc: [S3CRET-VALUE]\n",
        "rc_files: S3CRET-VALUE\n",
        "no_proxy: { a: S3CRET-VALUE }\n",
        "upstream_proxy: https://u:S3CRET-VALUE@proxy:8080\n",
        "upstream_proxy: socks5://u:S3CRET-VALUE@proxy:8080\n",
        "upstream_proxy: \"http://u:S3CRET-VALUE@\"\n",
        "upstream_proxy: \"http://u:S3CRET-VALUE@proxy:99999\"\n",
        "upstream_proxy: \"S3CRET-VALUE\"\n",
        "upstream_proxy: { url: \"http://u:S3CRET-VALUE@p\", username: x, password: y }\n",
        "sites: S3CRET-VALUE\n",
        "sites:\n  - match: a\n    bearer: S3CRET-VALUE\n",
        "sites:\n  - match: a\n    bearer: { token: \"S3CRET-VALUE with space\" }\n",
        "sites:\n  - match: a\n    redirects: S3CRET-VALUE\n",
        "sites:\n  - match: a\n    tls: { verify: S3CRET-VALUE }\n",
        "sites:\n  - match: a\n    tls: { upgrade: S3CRET-VALUE }\n",
        "sites:\n  - match: a\n    headers: { X-A: \"S3CRET-VALUE\\r\\nX-B: 1\" }\n",
        "sites:\n  - match: a\n    headers: { X-A: 1.5 }\n",
        "sites:\n  - match: a\n    headers: { X-A: [S3CRET-VALUE] }\n",
        "sites:\n  - match: a\n    headers: { X-A: { value: S3CRET-VALUE, value_file: f } }\n",
        "sites:\n  - match: \"S3CRET-VALUE:99999\"\n",
        "sites:\n  - match: \"https://u:S3CRET-VALUE@h/\"\n",
        "sites:\n  - match: a\n    name: [S3CRET-VALUE]\n",
        "sites:\n  - match: a\n    tls: { key_password: S3CRET-VALUE }\n",
        "sites:\n  - match: a\n    basic: { username: a, password: 'S3CRET-VALUE', password: x }\n",
        "sites:\n  - match: a\n    basic: { username: \"S3CRET-VALUE:x\", password: x }\n",
        "password: \"S3CRET-VALUE\n",
        "a: &x S3CRET-VALUE\nb: *y\n",
        "redirects: { max_hops: 123456789123456789123456789 }\n",
        "S3CRET-VALUE",
        "[S3CRET-VALUE]",
        "!tag S3CRET-VALUE",
        "listen: !tag S3CRET-VALUE\n",
    ];
    for text in cases {
        let (msgs, ok) = match parse(text) {
            Ok(c) => (
                c.warnings
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                true,
            ),
            Err(es) => (es.iter().map(ToString::to_string).collect(), false),
        };
        assert!(!msgs.is_empty(), "no message for {text:?} (ok = {ok})");
        for m in &msgs {
            assert!(!m.contains("S3CRET"), "leak for {text:?}: {m}");
            assert!(!m.contains(PROBE), "probe marker leaked for {text:?}: {m}");
        }
    }
}

#[test]
fn secret_files_resolve_against_config_dir_or_credentials_directory() {
    let conf = dir_with(&[("pw", "from-config-dir\n"), ("only-here", "config-only\n")]);
    let creds = dir_with(&[("pw", "from-creds\n"), ("cred-only", "cred-only\n")]);
    let path = conf.path().join("c.yaml");
    let text = "\
sites:
  - match: a
    basic: { username: u, password_file: pw }
  - match: b
    bearer: { token_file: only-here }
  - match: c
    bearer: { token_file: $CREDENTIALS_DIRECTORY/cred-only }
  - match: d
    bearer: { token_file: ABSOLUTE }
";
    let abs = conf.path().join("only-here");
    let text = text.replace("ABSOLUTE", abs.to_str().unwrap());

    // Without CREDENTIALS_DIRECTORY: relative to the config file; the explicit
    // prefix is an error naming the option and line.
    let es = parse_str(&path, &text, &no_env()).unwrap_err();
    assert_eq!(es.len(), 1, "{es:?}");
    assert_eq!(es[0].origin.line, 7);
    assert!(
        es[0].message.contains("sites[2].bearer.token_file"),
        "{es:?}"
    );
    assert!(
        es[0].message.contains("CREDENTIALS_DIRECTORY is not set"),
        "{es:?}"
    );

    let env = SecretEnv {
        credentials_directory: Some(creds.path().to_path_buf()),
    };
    let c = parse_str(&path, &text, &env).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.sites[0].basic.as_ref().unwrap().1.expose(), "from-creds");
    assert_eq!(c.sites[1].bearer.as_ref().unwrap().expose(), "config-only");
    assert_eq!(c.sites[2].bearer.as_ref().unwrap().expose(), "cred-only");
    assert_eq!(c.sites[3].bearer.as_ref().unwrap().expose(), "config-only");
    assert!(c.files_read.contains(&creds.path().join("pw")));
    assert!(c.files_read.contains(&conf.path().join("only-here")));
    assert!(c.files_read.contains(&creds.path().join("cred-only")));
    assert_eq!(c.files_read.len(), 3);

    // Without CREDENTIALS_DIRECTORY, `pw` comes from the config directory.
    let text2 = "sites:\n  - match: a\n    basic: { username: u, password_file: pw }\n";
    let c = parse_str(&path, text2, &no_env()).unwrap();
    assert_eq!(
        c.sites[0].basic.as_ref().unwrap().1.expose(),
        "from-config-dir"
    );
}

#[test]
fn missing_or_bad_secret_file_names_option_line_and_path() {
    let conf = dir_with(&[("empty", " \n\n"), ("multi", "S3CRET-VALUE\nsecond line\n")]);
    let path = conf.path().join("c.yaml");
    let text = "\
access: { proxy_token_file: nope.tok }
sites:
  - match: a
    tls:
      client_cert: c.pem
      key_password_file: missing-pw
  - match: b
    bearer: { token_file: empty }
  - match: c
    headers: { X-Key: { value_file: multi } }
";
    let es = parse_str(&path, text, &no_env()).unwrap_err();
    assert_eq!(es.len(), 4, "{es:?}");
    let want_path = conf.path().join("nope.tok");
    assert_eq!(es[0].origin.line, 1);
    assert!(es[0].message.contains("access.proxy_token_file"), "{es:?}");
    assert!(
        es[0].message.contains(&*want_path.to_string_lossy()),
        "{es:?}"
    );
    assert_eq!(es[1].origin.line, 6);
    assert!(
        es[1].message.contains("sites[0].tls.key_password_file"),
        "{es:?}"
    );
    assert!(es[1].message.contains("missing-pw"), "{es:?}");
    assert_eq!(es[2].origin.line, 8);
    assert!(es[2].message.contains("is empty"), "{es:?}");
    assert_eq!(es[3].origin.line, 10);
    assert!(es[3].message.contains("one line"), "{es:?}");
    for e in &es {
        assert!(!e.to_string().contains("S3CRET"), "{e}");
    }
}

#[test]
fn validation_errors_carry_their_lines() {
    let text = "\
listen: [\"127.0.0.1:3128\", \"localhost:80\"]
redirects: { max_hops: 0 }
timeouts: { connect: 10, idle: 0s }
upstream_proxy: https://proxy:8080
sites:
  - match: a.example
    tls: { client_key: k.pem }
  - match: b.example
    tls: { client_cert: c.pem, pkcs12: p.p12 }
  - match: c.example
    basic: { username: u, password: p }
    bearer: { token: t }
  - match: \"a.*.example\"
  - match: d.example
    headers: { \"Bad Name\": x }
  - match: e.example
    redirects: sometimes
  - match: a.example
  - match: f.example
    upstream_proxy: { url: \"http://p:1\", username: u }
";
    let es = errors(text);
    let got: Vec<(usize, &str)> = es
        .iter()
        .map(|e| {
            let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
            (line, e.as_str())
        })
        .collect();
    let expect: &[(usize, &str)] = &[
        (1, "not a socket address"),
        (2, "redirects.max_hops: must be between 1 and 50"),
        (3, "needs a unit"),
        (4, "https:// upstream proxies are not supported"),
        (7, "client_key needs client_cert"),
        (9, "give pkcs12 or client_cert/client_key, not both"),
        (12, "give basic or bearer, not both"),
        (13, "wildcard"),
        (15, "invalid HTTP header name"),
        (17, "unknown variant, expected `pass` or `follow`"),
        (18, "same match pattern as sites[0] (line 6)"),
        (20, "username needs password_file"),
    ];
    assert_eq!(got.len(), expect.len(), "{es:#?}");
    for ((line, msg), (want_line, want)) in got.iter().zip(expect) {
        assert_eq!(line, want_line, "{msg}");
        assert!(msg.contains(want), "{msg} should contain {want}");
    }
    // The second timeout problem is in the same mapping: serde stops at the first.
    let es = errors("timeouts: { idle: 0s }\n");
    assert!(
        es[0].contains(":1: ") && es[0].contains("longer than zero"),
        "{es:?}"
    );
    let es = errors("shutdown: { drain: 0s }\n");
    assert!(
        es[0].contains(":1: ") && es[0].contains("longer than zero"),
        "{es:?}"
    );
    let es = errors("shutdown: { drian: 5s }\n");
    assert!(es[0].contains("`drian`"), "{es:?}");
    let es = errors("redirects: { max_hops: 51 }\n");
    assert!(es[0].contains("between 1 and 50"), "{es:?}");
}

#[test]
fn inline_secrets_warn_without_values() {
    let text = "\
sites:
  - match: a
    basic: { username: u, password: S3CRET-VALUE }
  - match: b
    bearer:
      token: S3CRET-VALUE
  - match: c
    tls: { client_cert: c.pem, key_password: S3CRET-VALUE }
upstream_proxy: { url: \"http://proxy:3128\", username: u, password: S3CRET-VALUE }
";
    let c = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w.len(), 4, "{w:?}");
    assert!(
        w[0].contains(":3: sites[0].basic.password is written inline; password_file"),
        "{w:?}"
    );
    assert!(
        w[1].contains(":6: sites[1].bearer.token is written inline"),
        "{w:?}"
    );
    assert!(
        w[2].contains(":8: sites[2].tls.key_password is written inline"),
        "{w:?}"
    );
    assert!(
        w[3].contains(":9: upstream_proxy.password is written inline"),
        "{w:?}"
    );
    assert!(!w.iter().any(|m| m.contains("S3CRET")));
    assert_eq!(c.sites[0].basic.as_ref().unwrap().1.expose(), SECRET);
    assert_eq!(c.upstream_proxy.unwrap().port, 3128);
}

#[test]
fn reserved_header_names_are_refused_with_their_line() {
    let names = [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "CONNECTION",
        "TE",
        "Upgrade",
        "Trailer",
        "Keep-Alive",
        "Proxy-Authorization",
        "proxy-connection",
        "Proxy-Anything",
    ];
    for name in names {
        let text = format!(
            "sites:\n  - match: a.example\n    headers:\n      X-Ok: fine\n      \
                 {name}: S3CRET-VALUE\n"
        );
        let es = errors(&text);
        assert_eq!(es.len(), 1, "{name}: {es:?}");
        assert!(es[0].contains(":5: "), "{name}: {es:?}");
        assert!(es[0].contains(&format!("`{name}` cannot be set")), "{es:?}");
        assert!(!es[0].contains("S3CRET"), "{es:?}");
    }
    for name in ["X-Proxy-Id", "Proxy", "Hostname", "TEs", "Authorization"] {
        let text = format!("sites:\n  - match: a.example\n    headers: {{ {name}: v }}\n");
        assert!(parse(&text).is_ok(), "{name}");
    }
}

#[test]
fn netrc_default_is_off_unless_set_true() {
    assert!(!parse("listen: [\"127.0.0.1:1\"]\n").unwrap().netrc_default);
    assert!(parse("netrc_default: true\n").unwrap().netrc_default);
    assert!(!parse("netrc_default: false\n").unwrap().netrc_default);
    let es = errors("\nnetrc_default: S3CRET-VALUE\n");
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(es[0].contains(":2:"), "{es:?}");
    assert!(!es[0].contains("S3CRET"), "{es:?}");
}

#[test]
fn top_level_settings_forms() {
    let c = parse("listen: []\n").unwrap_err();
    assert!(c[0]
        .to_string()
        .contains(":1: listen: give at least one address"));
    let c = parse(
            "rc_files: [a.rc, /abs/b.rc]\nnetrc: false\ncookie_jar: jar.txt\nno_proxy: \"a.example, .B.example\"\nupstream_proxy: http://[::1]\n",
        )
        .unwrap();
    assert_eq!(
        c.rc_files,
        RcFilesSetting::List(vec!["/etc/authproxy/a.rc".into(), "/abs/b.rc".into()])
    );
    assert_eq!(c.netrc, NetrcSetting::Off);
    assert_eq!(c.cookie_jar, Some("/etc/authproxy/jar.txt".into()));
    assert_eq!(c.no_proxy, vec!["a.example", ".b.example"]);
    let up = c.upstream_proxy.unwrap();
    assert_eq!((up.host.as_str(), up.port), ("::1", DEFAULT_PROXY_PORT));
    assert!(up.credentials.is_none());
    let c = parse("rc_files: []\nnetrc: .netrc\nupstream_proxy: direct\n").unwrap();
    assert_eq!(c.rc_files, RcFilesSetting::List(vec![]));
    assert_eq!(c.netrc, NetrcSetting::Path("/etc/authproxy/.netrc".into()));
    assert!(c.upstream_proxy.is_none());
    let es = errors("listen: [\"127.0.0.1:1\"]\nlisten: [\"127.0.0.1:2\"]\n");
    assert_eq!(es.len(), 1, "{es:?}");
    let es = errors("upstream_proxy: http://proxy/some/path\n");
    assert!(es[0].contains("must not have a path"), "{es:?}");
    let es = errors("- a\n- b\n");
    assert!(
        es[0].contains(":1: the configuration must be a map"),
        "{es:?}"
    );
    let es = errors("sites:\n  - name: x\n");
    assert!(
        es[0].contains(":2: ") && es[0].contains("missing field `match`"),
        "{es:?}"
    );
}

#[test]
fn site_names_must_be_unique() {
    let es = errors("sites:\n  - { match: a, name: x }\n  - { match: b, name: x }\n");
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(es[0].contains(":3: ") && es[0].contains("line 2"), "{es:?}");
}

#[test]
fn error_display_format() {
    let e = Diagnostic::new(Origin::new("/x/c.yaml", 4), "bad".to_owned());
    assert_eq!(e.to_string(), "/x/c.yaml:4: bad");
    let e = Diagnostic::new(Origin::new("/x/c.yaml", 0), "bad".to_owned());
    assert_eq!(e.to_string(), "/x/c.yaml: bad");
}

#[test]
fn config_or_secret_file_that_is_a_fifo_is_refused_promptly() {
    let d = dir_with(&[(
        "c.yaml",
        "sites:\n  - match: a.example\n    bearer: { token_file: tok }\n",
    )]);
    let fifo = |name: &str| {
        let p = d.path().join(name);
        rustix::fs::mkfifoat(rustix::fs::CWD, &p, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        p
    };
    let start = std::time::Instant::now();
    let tok = fifo("tok");
    let es = parse_file(&d.path().join("c.yaml"), &no_env()).unwrap_err();
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(
        es[0].to_string().contains(&tok.display().to_string()),
        "{es:?}"
    );
    let es = parse_file(&fifo("fifo.yaml"), &no_env()).unwrap_err();
    assert!(es[0].to_string().contains("not a regular file"), "{es:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn parse_file_reads_and_reports_missing_file() {
    let d = dir_with(&[("c.yaml", "listen: [\"127.0.0.1:9999\"]\n")]);
    let c = parse_file(&d.path().join("c.yaml"), &no_env()).unwrap();
    assert_eq!(c.listen, vec!["127.0.0.1:9999".parse().unwrap()]);
    let es = parse_file(&d.path().join("missing.yaml"), &no_env()).unwrap_err();
    assert_eq!(es.len(), 1);
    assert!(
        es[0].to_string().contains("missing.yaml: cannot read"),
        "{es:?}"
    );
}

#[test]
fn hostile_inputs_do_not_panic() {
    // Every prefix of the full example, and single-byte corruptions of it.
    let d = dir_with(&[("tok", "t"), ("pw", "p"), ("k", "k"), ("edl.token", "e")]);
    let path = d.path().join("c.yaml");
    let env = no_env();
    for (i, _) in FULL.char_indices() {
        let _ = parse_str(&path, &FULL[..i], &env);
    }
    let specials = [
        '\n', ':', '-', '[', '{', '&', '*', '!', '"', '\'', ' ', '#', '|', '>', '?',
    ];
    for (n, (i, c)) in FULL.char_indices().enumerate() {
        if n % 3 != 0 {
            continue;
        }
        let r = specials[n % specials.len()];
        let mut s = String::with_capacity(FULL.len());
        s.push_str(&FULL[..i]);
        s.push(r);
        s.push_str(&FULL[i + c.len_utf8()..]);
        let _ = parse_str(&path, &s, &env);
    }
    for text in [
        "\u{feff}listen: [\"127.0.0.1:1\"]",
        "a: &a [*a]",
        "sites: &s [*s]",
        "? [a]\n: b",
        "1: x",
        "sites:\n  - !!map { match: a }\n",
        "sites:\n  - &x { match: a }\n  - *x\n",
        "sites: [~, 1, [], \"\"]",
        "<<: { listen: [] }",
        "---\na: 1\n---\nb: 2\n",
        "\t",
        "%YAML 1.1\n---\nsites: []",
        &"[".repeat(10_000),
        &format!("sites:\n{}", "  - { match: a }\n".repeat(50)),
    ] {
        let _ = parse(text);
    }
}

#[test]
fn access_user_names_resolve_and_unknown_ones_name_their_line() {
    let d = dir_with(&[("tok", "t0ken\n")]);
    let path = d.path().join("config.yaml");
    let text = "access:\n  allow_uids: [self, root, nobody, 1001, \"2002\"]\n  mode: token\n  proxy_token_file: tok\n";
    let c = parse_str(&path, text, &no_env()).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        c.access.allow_uids,
        vec![
            AllowUid::Current,
            AllowUid::Uid(0),
            AllowUid::Uid(65534),
            AllowUid::Uid(1001),
            AllowUid::Uid(2002)
        ]
    );
    assert_eq!(c.access.mode, AccessMode::Token);
    let es =
        errors("log: { level: info }\naccess:\n  allow_uids:\n    - self\n    - no-such-user-q7\n");
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(es[0].starts_with("/etc/authproxy/config.yaml:5:"), "{es:?}");
    assert!(es[0].contains("access.allow_uids: no such user"), "{es:?}");
    assert!(!es[0].contains("no-such-user-q7"), "{es:?}");
    let es = errors("access: { allow_uids: [\"a b\"] }\n");
    assert!(es[0].contains("user name"), "{es:?}");
}

#[test]
fn access_mode_token_needs_a_token_file() {
    let es = errors("access:\n  mode: token\n");
    assert_eq!(es.len(), 1, "{es:?}");
    assert!(es[0].starts_with("/etc/authproxy/config.yaml:2:"), "{es:?}");
    assert!(es[0].contains("proxy_token_file"), "{es:?}");
    let es = errors("access: { mode: sometimes }\n");
    assert!(es[0].contains("uid") && es[0].contains("open"), "{es:?}");
    assert_eq!(
        parse("access: { mode: open }\n").unwrap().access.mode,
        AccessMode::Open
    );
    assert_eq!(parse("access: {}\n").unwrap().access.mode, AccessMode::Uid);
}

#[test]
fn shutdown_drain_is_read_and_defaults_to_none() {
    let c = parse("shutdown: { drain: 2500ms }\n").unwrap();
    assert_eq!(c.shutdown_drain, Some(Duration::from_millis(2500)));
    assert_eq!(
        parse("listen: [\"127.0.0.1:1\"]\n").unwrap().shutdown_drain,
        None
    );
}

#[test]
fn admin_listens_on_loopback_only_and_is_off_by_default() {
    assert_eq!(parse("listen: [\"127.0.0.1:1\"]\n").unwrap().admin, None);
    let c = parse("admin: { listen: \"127.0.0.1:9129\" }\n").unwrap();
    assert_eq!(c.admin, Some("127.0.0.1:9129".parse().unwrap()));
    let c = parse("admin:\n  listen: \"[::1]:9129\"\n").unwrap();
    assert_eq!(c.admin, Some("[::1]:9129".parse().unwrap()));
    let es = errors("sites: []\nadmin:\n  listen: \"0.0.0.0:9129\"\n");
    assert_eq!(
        es,
        vec![
            "/etc/authproxy/config.yaml:3: admin.listen: 0.0.0.0:9129 is not a loopback \
             address; the admin listener answers on 127.0.0.1 or [::1] only"
        ]
    );
    let es = errors("admin: { listen: nonsense, port: 1 }\n");
    assert!(es[0].starts_with("/etc/authproxy/config.yaml:1:"), "{es:?}");
    assert!(
        es[0].contains("unknown field `port`") || es[0].contains("not a socket address"),
        "{es:?}"
    );
}

#[test]
fn limits_are_read_and_checked() {
    let c = parse(
        "limits: { head_timeout: 2s, max_head_bytes: 8192, max_headers: 50,\n\
         max_connections: 10, tunnel_idle: 1m, write_timeout: 500ms }\n",
    )
    .unwrap();
    let l = c.limits;
    assert_eq!(l.head_timeout, Duration::from_secs(2));
    assert_eq!(
        (l.max_head_bytes, l.max_headers, l.max_connections),
        (8192, 50, 10)
    );
    assert_eq!(l.tunnel_idle, Duration::from_secs(60));
    assert_eq!(l.write_timeout, Duration::from_millis(500));
    assert_eq!(
        parse("{}\n").unwrap().limits,
        crate::limits::Limits::default()
    );

    let e = errors("log: { level: info }\nlimits:\n  max_headers: 300\n");
    assert_eq!(
        e,
        ["/etc/authproxy/config.yaml:3: limits.max_headers: at most 256 (the HTTP engine's own cap)"]
    );
    let e = errors("limits: { max_connections: 0 }\n");
    assert!(e[0].starts_with("/etc/authproxy/config.yaml:1:"), "{e:?}");
    assert!(e[0].contains("greater than zero"), "{e:?}");
    let e = errors("limits: { head_timeout: soon }\n");
    assert!(e[0].contains("duration"), "{e:?}");
    let e = errors("limits: { max_conections: 5 }\n");
    assert!(e[0].contains("max_conections"), "{e:?}");
}
