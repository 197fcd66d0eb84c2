//! `authproxy check` output as a whole, for files as users write them: each finding once,
//! in file:line order, keys as written, the keys nothing reads grouped per file, no value.
//! A snapshot: a change in wording or order shows here first.

use std::path::Path;

use authproxy::explain;

use crate::credentials::{env, write};

/// `check`'s report with the temporary HOME written as `$HOME`.
fn report(home: &Path) -> (String, bool) {
    let (out, ok) = explain::check(&env(home, None));
    (out.replace(&home.display().to_string(), "$HOME"), ok)
}

fn private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn an_esgf_style_rc_file_with_a_netrc_and_a_config() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let rc = write(
        h,
        ".dodsrc",
        "# as an ESGF user guide writes it\n\
         HTTP.VERBOSE=1\n\
         USE_CACHE=0\n\
         HTTP.COOKIEJAR=~/.dods_cookies\n\
         HTTP.NETRC=/nonexistent/someone/.netrc\n\
         HTTP.SSL.VALIDATE=0\n\
         HTTP.Credentials.UserPassword=alice:Ch3ck-S3cret\n\
         [data.example.org]HTTP.VERBOSE=1\n\
         http.useragent=foo\n\
         CURL.SSL.VERIFYPEER=0\n\
         HTTP.FOO=1\n",
    );
    private(&rc);
    let netrc = write(
        h,
        ".netrc",
        "machine a.example login x password N3trc-S3cret\ndefault login anon password z\n",
    );
    private(&netrc);
    std::fs::create_dir_all(h.join(".config/authproxy")).unwrap();
    write(
        &h.join(".config/authproxy"),
        "config.yaml",
        "sites:\n  - match: \"api.example.org\"\n    headers: { X-Api-Key: Inl1ne-S3cret }\n",
    );
    let (out, ok) = report(h);
    assert!(ok, "{out}");
    let want = r#"config: $HOME/.config/authproxy/config.yaml
listen: 127.0.0.1:3128
access: mode uid, allow_uids: self, proxy token: none
files read:
  $HOME/.config/authproxy/config.yaml
  $HOME/.dodsrc
cookie jar: $HOME/.dods_cookies
timeouts: connect 10s, first byte 60s
rules, most specific first (YAML sites, then rc files):
  sites[0] ($HOME/.config/authproxy/config.yaml:2)
    header: x-api-key: ***
  [data.example.org] ($HOME/.dodsrc:7)
    tls: peer verification OFF; host name verification OFF
  (unscoped) ($HOME/.dodsrc:7)
    tls: peer verification OFF; host name verification OFF
netrc: none
rc keys netCDF-C reads that authproxy does not act on:
  $HOME/.dodsrc: HTTP.VERBOSE (lines 2, 8), http.useragent (line 9)
warnings:
  /nonexistent/someone/.netrc: this .netrc (named at $HOME/.dodsrc:5) does not exist, so no .netrc credentials are used; $HOME/.netrc exists, with 2 entries, and is not read instead
  $HOME/.config/authproxy/config.yaml:3: sites[0].headers.X-Api-Key is written inline; value_file is recommended, to keep secrets out of the configuration file
  $HOME/.dodsrc:3: libdap keys, read by libdap clients and not by netCDF-C or authproxy; ignored: USE_CACHE (line 3)
  $HOME/.dodsrc:4: HTTP.COOKIEJAR: `~` is the daemon's home directory here; netCDF-C 4.9 opens `./~/…` relative to its working directory instead
  $HOME/.dodsrc:6: TLS verification is off for the hosts of this line; anyone on the path can impersonate the server
  $HOME/.dodsrc:7: HTTP.CREDENTIALS.* without a [prefix] names no host, so authproxy sends it to none; put the host in front, as in [data.example.org:443]HTTP.CREDENTIALS.USERPASSWORD=..., or set `rc_unscoped_credentials: challenge` in the YAML config to answer 401 Basic challenges over TLS or from loopback hosts with it
  $HOME/.dodsrc:8: netCDF-C 4.9 logs "Malformed [url]" for a [host] or [host:port] prefix and skips the line (authproxy reads it); write [http://host:port/path] to share this file with ncdump. Lines: 8
  $HOME/.dodsrc:10: CURL.SSL.VERIFYPEER: CURL.* keys are obsolete; netCDF-C 4.9 and authproxy ignore them (use the HTTP.* key of the same name)
  $HOME/.dodsrc:11: HTTP.FOO: not a key netCDF-C knows (misspelt?); ignored
"#;
    assert_eq!(out, want, "\n--- got ---\n{out}");
}

#[test]
fn a_netrc_with_a_bom_a_default_and_a_partial_entry() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let netrc = write(
        h,
        ".netrc",
        "\u{feff}machine a.example login x password N3trc-S3cret\n\
         machine half.example login lonely\n\
         default login anon password z\n",
    );
    private(&netrc);
    let (out, ok) = report(h);
    assert!(ok, "{out}");
    let want = r#"config: none (looked for $HOME/.config/authproxy/config.yaml)
listen: 127.0.0.1:3128
access: mode uid, allow_uids: self, proxy token: none
files read:
  $HOME/.netrc
timeouts: connect 10s, first byte 60s
rules, most specific first (YAML sites, then rc files):
  (none)
netrc: $HOME/.netrc (3 entries)
  machine a.example login x password *** ($HOME/.netrc:1)
  machine half.example login lonely password - ($HOME/.netrc:2)
  default login anon password *** ($HOME/.netrc:3)
warnings:
"#;
    assert!(out.starts_with(want), "\n--- got ---\n{out}");
    let warnings: Vec<&str> = out[want.len()..].lines().collect();
    assert_eq!(warnings.len(), 3, "{out}");
    assert!(
        warnings[0].starts_with("  $HOME/.netrc:1: the file starts with a UTF-8 byte-order mark")
    );
    assert!(warnings[1].starts_with("  $HOME/.netrc:2: "), "{out}");
    assert!(warnings[2].starts_with("  $HOME/.netrc:3: the `default` entry is not sent"));
    assert!(!out.contains("S3cret"));
}

#[test]
fn explain_says_an_https_url_is_tunnelled_untouched() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let netrc = write(
        h,
        ".netrc",
        "machine a.example login x password N3trc-S3cret\n",
    );
    private(&netrc);
    let text = explain::explain(&env(h, None), "https://a.example/data").unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[2].starts_with("tunnelled: a client sends https:// URLs as CONNECT a.example:443"),
        "{text}"
    );
    assert_eq!(lines[3], "via: direct");
    assert_eq!(
        lines[4],
        "when authproxy fetches this URL itself (following a redirect from an http:// URL):"
    );
    assert!(lines[5..].iter().all(|l| l.starts_with("  ")), "{text}");
    assert!(
        text.contains("  authorization: Basic, user \"x\""),
        "{text}"
    );
}
