/*!
The user's `.netrc`, read the way libcurl reads it.

Many of the tools authproxy sits in front of (curl, git over https, pip, Python's
`requests`) already take their credentials from `~/.netrc`. Letting the proxy use the same
file means a user does not keep a second copy of every password, and whatever works with
`curl --netrc` keeps working through the proxy. For that to be true the parser has to
agree with libcurl's (`lib/netrc.c`) on every file a user is likely to have, including the
odd ones: entries spread over many lines or squeezed onto one, quoted passwords with
spaces, `macdef` blocks, comments and `default`.

Unlike libcurl, this parser never gives up on a file: input is treated as bytes, anything
it does not understand becomes a [`Diagnostic`] with a file and line for `check`, and
the rest of the file is still used. Passwords are held as [`Secret`]s, and no warning
quotes any text from the file (a stray word, or even a `machine` value after a forgotten
keyword, might be a password): the file and line have to do.

The grammar, as libcurl has it: words are separated by any whitespace, newlines included,
so entries may span lines or share one. Keywords (`machine`, `default`, `login`,
`password`, `account`, `macdef`) match case-insensitively; the word after `machine`,
`login`, `password` or `account` is always taken as its value, even if it is a keyword.
A word starting with `"` runs to the next unescaped `"` (across lines; `\n`, `\r`, `\t`
are escapes, `\x` is `x`). A word starting with `#` starts a comment to the end of the
line (libcurl 7.84 to 8.x; the newest libcurl only knows whole-line comments, so the two
differ on a `#` in the middle of a line; a value that starts with `#` is warned about). `macdef` skips the
rest of its line and the following lines up to a blank one (nothing but spaces, tabs and
`\r`). `machine`, `default` and `macdef` end the entry before them.

Which file to read is decided by [`default_path`], with the inputs (rc setting,
environment, home directory) passed in so that the choice can be tested.
*/

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Diagnostic, Origin};
use crate::secret::Secret;
use crate::small_file::{self, CONFIG_MAX_BYTES};

/// One `machine` or `default` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetrcEntry {
    /// The `machine` name, ASCII-lowercased; `None` for the `default` entry.
    pub host: Option<String>,
    pub login: Option<String>,
    pub password: Option<Secret<String>>,
    /// An `account` value was given (libcurl ignores it, and so does the proxy).
    pub account_present: bool,
    /// The line of the `machine` or `default` keyword.
    pub origin: Origin,
}

impl NetrcEntry {
    /// Whether the entry carries a login or a password. libcurl passes over entries that
    /// carry neither, and so does [`Netrc::lookup`].
    pub fn has_credentials(&self) -> bool {
        self.login.is_some() || self.password.is_some()
    }

    /// Whether the entry carries both a login and a password. Only such an entry is a
    /// credential: a partial one is never completed from another entry (curl
    /// CVE-2024-11053, CVE-2025-0167), nor sent with an empty half.
    pub fn is_complete(&self) -> bool {
        self.login.is_some() && self.password.is_some()
    }
}

/// A parsed `.netrc` file: all entries in file order, plus warnings sorted by line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netrc {
    pub path: PathBuf,
    pub entries: Vec<NetrcEntry>,
    pub warnings: Vec<Diagnostic>,
}

impl Netrc {
    /// Parses `.netrc` contents. `path` is only used for origins. Never fails and never
    /// panics: whatever cannot be understood is skipped with a warning. Bytes that are not
    /// UTF-8 are replaced by U+FFFD in the value they occur in (with a warning).
    ///
    /// A UTF-8 byte-order mark at the start is skipped with a warning (editors on Windows
    /// write one; libcurl would read it as part of the first word and lose that entry).
    pub fn parse_bytes(path: &Path, bytes: &[u8]) -> Netrc {
        match bytes.strip_prefix(b"\xEF\xBB\xBF") {
            Some(rest) => {
                let mut netrc = Parser::new(path, rest).run();
                netrc.warnings.insert(
                    0,
                    Diagnostic::new(
                        Origin::new(path, 1),
                        "the file starts with a UTF-8 byte-order mark (BOM); skipped, but \
                         curl and other tools may misread the first entry: save the file \
                         without it",
                    ),
                );
                netrc
            }
            None => Parser::new(path, bytes).run(),
        }
    }

    /// Reads and parses the file at `path`. On unix, a file that group or others may
    /// access (`mode & 0o077 != 0`) gets the warning
    /// `readable by other users; chmod 600 <path>`, but is still used.
    ///
    /// Only a regular file of at most [`CONFIG_MAX_BYTES`] is read: a FIFO, device or
    /// directory is refused without blocking, and so is a longer file (see
    /// [`crate::small_file`]). Errors do not repeat the path: the caller names it.
    pub fn parse_file(path: &Path) -> io::Result<Netrc> {
        let (bytes, meta) = small_file::read(path, CONFIG_MAX_BYTES)?;
        #[allow(unused_mut)]
        let mut netrc = Self::parse_bytes(path, &bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                netrc.warnings.insert(
                    0,
                    Diagnostic::new(
                        Origin::new(path, 0),
                        format!("readable by other users; chmod 600 {}", path.display()),
                    ),
                );
            }
        }
        Ok(netrc)
    }

    /// The entry libcurl would use for `host`.
    ///
    /// `host` is a bare host name as it appears in a URL: no port, no user, IPv6 without
    /// brackets. Entries are tried in file order; the first one that carries a login or a
    /// password (see [`NetrcEntry::has_credentials`]) and is either a `machine` whose name
    /// equals `host` ignoring ASCII case, or `default`, is returned. So no entry after a
    /// `default` entry with credentials is ever returned, an earlier `machine` entry for
    /// the same host shadows a later one, and a `machine` or `default` entry with neither
    /// login nor password is skipped as if it were not there (as in current libcurl's
    /// scanner; older releases differ in that corner).
    ///
    /// This is the entry libcurl would *pick*, not yet a credential: the caller must
    /// refuse a partial entry ([`NetrcEntry::is_complete`]) rather than look further, and
    /// decide whether a `default` entry may answer.
    ///
    /// Does not allocate.
    pub fn lookup(&self, host: &str) -> Option<&NetrcEntry> {
        self.entries.iter().find(|e| {
            e.has_credentials()
                && match &e.host {
                    None => true,
                    Some(h) => h.eq_ignore_ascii_case(host),
                }
        })
    }
}

/// The `.netrc` to use: `HTTP.NETRC` from the rc files, else `$NETRC`, else
/// `<home>/.netrc`. Empty values count as unset. `None` if there is nothing to go on.
pub fn default_path(
    http_netrc: Option<&Path>,
    netrc_env: Option<&OsStr>,
    home: Option<&Path>,
) -> Option<PathBuf> {
    if let Some(p) = http_netrc.filter(|p| !p.as_os_str().is_empty()) {
        return Some(p.to_path_buf());
    }
    if let Some(p) = netrc_env.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    home.filter(|h| !h.as_os_str().is_empty())
        .map(|h| h.join(".netrc"))
}

// ---------------------------------------------------------------------------------------
// Lexer

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

enum TokKind<'a> {
    /// An unquoted word, raw bytes.
    Word(&'a [u8]),
    /// A quoted word with escapes resolved.
    Quoted(Vec<u8>),
    /// A `"` without its closing `"`; the lexer is at the end of the input.
    Unterminated,
    /// A word starting with `#`: the rest of the line was skipped.
    Comment,
    Eof,
}

struct Token<'a> {
    kind: TokKind<'a>,
    /// 1-based line the token starts on.
    line: usize,
}

struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Lexer<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            line: 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    fn next_token(&mut self) -> Token<'a> {
        while self.peek().is_some_and(is_separator) {
            self.bump();
        }
        let line = self.line;
        let kind = match self.peek() {
            None => TokKind::Eof,
            Some(b'#') => {
                // To the end of the line; the newline itself is a separator.
                while self.peek().is_some_and(|b| b != b'\n') {
                    self.pos += 1;
                }
                TokKind::Comment
            }
            Some(b'"') => {
                self.pos += 1;
                self.quoted()
            }
            Some(_) => {
                let start = self.pos;
                while self.peek().is_some_and(|b| !is_separator(b)) {
                    self.pos += 1;
                }
                TokKind::Word(&self.bytes[start..self.pos])
            }
        };
        Token { kind, line }
    }

    /// After the opening quote. May span lines, like libcurl's. A closing quote ends the
    /// token even when no separator follows it.
    fn quoted(&mut self) -> TokKind<'a> {
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None => return TokKind::Unterminated,
                Some(b'"') => return TokKind::Quoted(out),
                Some(b'\\') => match self.bump() {
                    None => return TokKind::Unterminated,
                    Some(b'n') => out.push(b'\n'),
                    Some(b'r') => out.push(b'\r'),
                    Some(b't') => out.push(b'\t'),
                    Some(c) => out.push(c),
                },
                Some(c) => out.push(c),
            }
        }
    }

    /// Skips the rest of the `macdef` line, then the macro body up to and including the
    /// next blank line (nothing but spaces, tabs and `\r`), or to the end of the input.
    fn skip_macro(&mut self) {
        while let Some(b) = self.bump() {
            if b == b'\n' {
                break;
            }
        }
        while self.pos < self.bytes.len() {
            let rest = &self.bytes[self.pos..];
            let (len, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (i, true),
                None => (rest.len(), false),
            };
            let blank = rest[..len]
                .iter()
                .all(|&b| matches!(b, b' ' | b'\t' | b'\r'));
            self.pos += len;
            if newline {
                self.bump();
            }
            if blank {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parser

#[derive(Clone, Copy)]
enum Key {
    Machine,
    Login,
    Password,
    Account,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Machine => "machine",
            Key::Login => "login",
            Key::Password => "password",
            Key::Account => "account",
        }
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    path: Arc<Path>,
    entries: Vec<NetrcEntry>,
    warnings: Vec<Diagnostic>,
    current: Option<NetrcEntry>,
}

impl<'a> Parser<'a> {
    fn new(path: &Path, bytes: &'a [u8]) -> Self {
        Self {
            lexer: Lexer::new(bytes),
            path: Arc::from(path),
            entries: Vec::new(),
            warnings: Vec::new(),
            current: None,
        }
    }

    fn origin(&self, line: usize) -> Origin {
        Origin {
            path: Arc::clone(&self.path),
            line,
        }
    }

    fn warn(&mut self, line: usize, message: impl Into<String>) {
        let origin = self.origin(line);
        self.warnings.push(Diagnostic::new(origin, message));
    }

    fn run(mut self) -> Netrc {
        // A keyword that still wants its value, and the line of that keyword.
        let mut pending: Option<(Key, usize)> = None;
        loop {
            let tok = self.lexer.next_token();
            if let Some((key, key_line)) = pending {
                let value: Cow<'_, [u8]> = match tok.kind {
                    TokKind::Eof => {
                        self.warn(
                            key_line,
                            format!("`{}` without a value at the end of the file", key.name()),
                        );
                        break;
                    }
                    TokKind::Comment => {
                        self.warn(
                            tok.line,
                            format!(
                                "comment where the value of `{}` was expected; \
                                 quote a value that starts with '#'",
                                key.name()
                            ),
                        );
                        continue;
                    }
                    TokKind::Unterminated => {
                        self.warn(
                            tok.line,
                            format!(
                                "unterminated quoted value of `{}` ignored (missing '\"')",
                                key.name()
                            ),
                        );
                        break;
                    }
                    TokKind::Word(w) => Cow::Borrowed(w),
                    TokKind::Quoted(v) => Cow::Owned(v),
                };
                pending = None;
                self.value(key, key_line, tok.line, &value);
                continue;
            }
            match tok.kind {
                TokKind::Eof => break,
                TokKind::Comment => {}
                TokKind::Unterminated => {
                    self.warn(tok.line, "unterminated quoted word ignored (missing '\"')");
                    break;
                }
                TokKind::Quoted(_) => {
                    self.warn(tok.line, "unexpected quoted word ignored");
                }
                TokKind::Word(w) => {
                    if w.eq_ignore_ascii_case(b"machine") {
                        self.finish_entry();
                        pending = Some((Key::Machine, tok.line));
                    } else if w.eq_ignore_ascii_case(b"default") {
                        self.finish_entry();
                        self.current = Some(NetrcEntry {
                            host: None,
                            login: None,
                            password: None,
                            account_present: false,
                            origin: self.origin(tok.line),
                        });
                    } else if w.eq_ignore_ascii_case(b"login") {
                        pending = Some((Key::Login, tok.line));
                    } else if w.eq_ignore_ascii_case(b"password") {
                        pending = Some((Key::Password, tok.line));
                    } else if w.eq_ignore_ascii_case(b"account") {
                        pending = Some((Key::Account, tok.line));
                    } else if w.eq_ignore_ascii_case(b"macdef") {
                        self.finish_entry();
                        self.lexer.skip_macro();
                    } else {
                        // Not quoted: it may be the second half of an unquoted password.
                        self.warn(
                            tok.line,
                            "unknown word ignored (values with spaces must be quoted)",
                        );
                    }
                }
            }
        }
        self.finish_entry();
        self.warn_unreachable();
        let mut warnings = self.warnings;
        warnings.sort_by_key(|w| w.origin.line);
        Netrc {
            path: self.path.to_path_buf(),
            entries: self.entries,
            warnings,
        }
    }

    fn value(&mut self, key: Key, key_line: usize, line: usize, raw: &[u8]) {
        let text = String::from_utf8_lossy(raw);
        let lossy = matches!(text, Cow::Owned(_));
        if let Key::Machine = key {
            let host = text.to_ascii_lowercase();
            if lossy {
                self.warn(
                    line,
                    "machine name is not valid UTF-8; it will not match any host",
                );
            } else if host.contains("://") || host.contains('/') {
                self.warn(
                    line,
                    "machine name looks like a URL; use the bare host name",
                );
            } else if host.split_once(':').is_some_and(|(h, p)| {
                !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
            }) {
                self.warn(
                    line,
                    "machine name has a port; .netrc matches host names only",
                );
            }
            self.current = Some(NetrcEntry {
                host: Some(host),
                login: None,
                password: None,
                account_present: false,
                origin: self.origin(key_line),
            });
            return;
        }
        let Some(entry) = self.current.as_mut() else {
            self.warn(
                key_line,
                format!(
                    "`{}` outside of a `machine` or `default` entry ignored",
                    key.name()
                ),
            );
            return;
        };
        let mut notes: Vec<String> = Vec::new();
        match key {
            Key::Machine => {}
            Key::Login => {
                if entry.login.is_some() {
                    notes.push("second `login` in this entry; the last one is used".into());
                }
                if lossy {
                    notes.push("login is not valid UTF-8; invalid bytes replaced".into());
                }
                entry.login = Some(text.into_owned());
            }
            Key::Password => {
                if entry.password.is_some() {
                    notes.push("second `password` in this entry; the last one is used".into());
                }
                if lossy {
                    notes.push("password is not valid UTF-8; invalid bytes replaced".into());
                }
                entry.password = Some(Secret::new(text.into_owned()));
            }
            Key::Account => entry.account_present = true,
        }
        for note in notes {
            self.warn(key_line, note);
        }
    }

    fn finish_entry(&mut self) {
        if let Some(entry) = self.current.take() {
            let what = if entry.host.is_some() {
                "`machine`"
            } else {
                "`default`"
            };
            if !entry.has_credentials() {
                self.warn(
                    entry.origin.line,
                    format!("{what} entry has neither `login` nor `password`; it is never used"),
                );
            } else if !entry.is_complete() {
                let (has, lacks) = if entry.login.is_some() {
                    ("`login`", "`password`")
                } else {
                    ("`password`", "`login`")
                };
                self.warn(
                    entry.origin.line,
                    format!(
                        "{what} entry has a {has} but no {lacks}; it gives no credential \
                         (a partial entry is never completed from another)"
                    ),
                );
            }
            self.entries.push(entry);
        }
    }

    /// Entries that [`Netrc::lookup`] can never return although they carry credentials.
    fn warn_unreachable(&mut self) {
        let mut found_default: Option<usize> = None;
        let mut hosts: HashMap<&str, usize> = HashMap::new();
        let mut notes: Vec<(usize, String)> = Vec::new();
        for entry in self.entries.iter().filter(|e| e.has_credentials()) {
            let line = entry.origin.line;
            if let Some(default_line) = found_default {
                notes.push((
                    line,
                    format!(
                        "entry never used: the `default` entry on line {default_line} comes first"
                    ),
                ));
                continue;
            }
            match entry.host.as_deref() {
                None => found_default = Some(line),
                Some(host) => {
                    if let Some(&first) = hosts.get(host) {
                        notes.push((
                            line,
                            format!("entry never used: an earlier entry for the same host on line {first} comes first"),
                        ));
                    } else {
                        hosts.insert(host, line);
                    }
                }
            }
        }
        for (line, note) in notes {
            self.warn(line, note);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/home/u/.netrc";

    fn parse(s: &str) -> Netrc {
        Netrc::parse_bytes(Path::new(PATH), s.as_bytes())
    }

    #[test]
    fn a_byte_order_mark_is_skipped_with_a_warning() {
        let n = parse("\u{feff}machine h.example login u password p\n");
        let e = n.lookup("h.example").unwrap();
        assert_eq!(e.login.as_deref(), Some("u"));
        assert_eq!(n.warnings.len(), 1);
        assert!(n.warnings[0]
            .to_string()
            .ends_with("save the file without it"));
        assert!(n.warnings[0]
            .to_string()
            .contains(":1: the file starts with"));
    }

    /// (login, password) of the entry `lookup(host)` returns.
    fn creds<'n>(n: &'n Netrc, host: &str) -> Option<(Option<&'n str>, Option<&'n str>)> {
        n.lookup(host).map(|e| {
            (
                e.login.as_deref(),
                e.password.as_ref().map(|p| p.expose().as_str()),
            )
        })
    }

    fn messages(n: &Netrc) -> Vec<(usize, &str)> {
        n.warnings
            .iter()
            .map(|w| (w.origin.line, w.message.as_str()))
            .collect()
    }

    #[test]
    fn one_line_entry() {
        let n = parse("machine example.org login alice password s3cret\n");
        assert_eq!(
            creds(&n, "example.org"),
            Some((Some("alice"), Some("s3cret")))
        );
        assert_eq!(creds(&n, "other.org"), None);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
        let e = &n.entries[0];
        assert_eq!(e.origin, Origin::new(PATH, 1));
        assert!(!e.account_present);
    }

    #[test]
    fn multi_line_entry_and_several_machines() {
        let n = parse(
            "machine a.example\n  login alice\n  password pa\n\n\
             machine\n b.example\nlogin\nbob\npassword\npb\n\
             machine c.example login carol password pc machine d.example login dave password pd\n",
        );
        assert_eq!(creds(&n, "a.example"), Some((Some("alice"), Some("pa"))));
        assert_eq!(creds(&n, "b.example"), Some((Some("bob"), Some("pb"))));
        assert_eq!(creds(&n, "c.example"), Some((Some("carol"), Some("pc"))));
        assert_eq!(creds(&n, "d.example"), Some((Some("dave"), Some("pd"))));
        let lines: Vec<usize> = n.entries.iter().map(|e| e.origin.line).collect();
        assert_eq!(lines, [1, 5, 11, 11]);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn default_entry_and_machine_after_default() {
        let n = parse(
            "machine a.example login alice password pa\n\
             default login anon password guest\n\
             machine b.example login bob password pb\n",
        );
        assert_eq!(creds(&n, "a.example"), Some((Some("alice"), Some("pa"))));
        // libcurl stops at `default`: the later machine is never reached.
        assert_eq!(creds(&n, "b.example"), Some((Some("anon"), Some("guest"))));
        assert_eq!(
            creds(&n, "anything.example"),
            Some((Some("anon"), Some("guest")))
        );
        assert_eq!(n.entries[1].host, None);
        assert_eq!(n.entries[1].origin.line, 2);
        assert_eq!(
            messages(&n),
            [(
                3,
                "entry never used: the `default` entry on line 2 comes first"
            )]
        );
    }

    #[test]
    fn entry_without_credentials_is_skipped() {
        let n = parse("machine a.example\ndefault\nmachine a.example login x password y\n");
        assert_eq!(creds(&n, "a.example"), Some((Some("x"), Some("y"))));
        assert_eq!(creds(&n, "b.example"), None);
        assert_eq!(n.entries.len(), 3);
        assert_eq!(
            messages(&n),
            [
                (
                    1,
                    "`machine` entry has neither `login` nor `password`; it is never used"
                ),
                (
                    2,
                    "`default` entry has neither `login` nor `password`; it is never used"
                ),
            ]
        );
    }

    #[test]
    fn macdef_is_skipped_until_blank_line() {
        let n = parse(
            "machine a.example login alice password pa\n\
             macdef init\n\
             cd /pub\n\
             machine evil.example login mallory password nope\n\
             bin\n\
             \n\
             machine b.example login bob password pb\n",
        );
        assert_eq!(creds(&n, "evil.example"), None);
        assert_eq!(creds(&n, "a.example"), Some((Some("alice"), Some("pa"))));
        assert_eq!(creds(&n, "b.example"), Some((Some("bob"), Some("pb"))));
        assert_eq!(n.entries.len(), 2);
        assert_eq!(n.entries[1].origin.line, 7);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn macdef_ends_the_entry_and_may_run_to_eof() {
        // Whitespace-only and CRLF blank lines end the macro too.
        let n = parse("macdef x\r\nput a\r\n  \t\r\nmachine a.example login a password p\r\n");
        assert_eq!(creds(&n, "a.example"), Some((Some("a"), Some("p"))));
        assert_eq!(n.entries[0].origin.line, 4);

        let n = parse("machine a.example login a\nmacdef x\nbody\npassword p\n");
        assert_eq!(creds(&n, "a.example"), Some((Some("a"), None)));
        assert_eq!(n.entries.len(), 1);

        // A login after the macro does not belong to the entry before it.
        let n = parse("machine a.example\nmacdef x\n\nlogin a\n");
        assert_eq!(creds(&n, "a.example"), None);
        assert!(messages(&n).contains(&(
            4,
            "`login` outside of a `machine` or `default` entry ignored"
        )));
    }

    #[test]
    fn quoted_values() {
        let n = parse(
            r#"machine a.example login "alice smith" password "pass word # not a comment"
machine b.example login b password "say \"hi\"\n\\\t\r\x"
machine "C.Example" login c password ""
"#,
        );
        assert_eq!(
            creds(&n, "a.example"),
            Some((Some("alice smith"), Some("pass word # not a comment")))
        );
        assert_eq!(
            creds(&n, "b.example"),
            Some((Some("b"), Some("say \"hi\"\n\\\t\rx")))
        );
        assert_eq!(creds(&n, "c.example"), Some((Some("c"), Some(""))));
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn quoted_value_spans_lines_and_ends_at_quote() {
        let n =
            parse("machine a login x password \"two\nlines\"\nmachine b login \"y\"password z\n");
        assert_eq!(creds(&n, "a"), Some((Some("x"), Some("two\nlines"))));
        assert_eq!(creds(&n, "b"), Some((Some("y"), Some("z"))));
        assert_eq!(n.entries[1].origin.line, 3);
    }

    #[test]
    fn comments() {
        let n = parse(
            "# my netrc\n\
             \t  # indented comment machine evil login x password y\n\
             machine a.example # work\n\
             login alice # password ignored\n\
             password pa#not-a-comment\n\
             #machine b.example login b password pb\n",
        );
        assert_eq!(
            creds(&n, "a.example"),
            Some((Some("alice"), Some("pa#not-a-comment")))
        );
        assert_eq!(creds(&n, "evil"), None);
        assert_eq!(creds(&n, "b.example"), None);
        assert_eq!(n.entries.len(), 1);
        assert_eq!(n.entries[0].origin.line, 3);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn comment_in_value_position_is_warned() {
        let n = parse("machine a login x password #secret\n\"real\"\n");
        assert_eq!(creds(&n, "a"), Some((Some("x"), Some("real"))));
        assert_eq!(
            messages(&n),
            [(
                1,
                "comment where the value of `password` was expected; \
                 quote a value that starts with '#'"
            )]
        );
        assert!(!format!("{:?}", n.warnings).contains("secret"));
    }

    #[test]
    fn case_insensitive_keywords_and_hosts() {
        let n =
            parse("MACHINE Example.ORG Login Alice PassWord Secret\nDeFaUlT LOGIN d PASSWORD e\n");
        assert_eq!(n.entries[0].host.as_deref(), Some("example.org"));
        assert_eq!(
            creds(&n, "EXAMPLE.org"),
            Some((Some("Alice"), Some("Secret")))
        );
        assert_eq!(
            creds(&n, "example.org"),
            Some((Some("Alice"), Some("Secret")))
        );
        assert_eq!(creds(&n, "x"), Some((Some("d"), Some("e"))));
    }

    #[test]
    fn login_without_password_and_password_without_login() {
        let n = parse("machine a login only\nmachine b password alone\n");
        assert_eq!(creds(&n, "a"), Some((Some("only"), None)));
        assert_eq!(creds(&n, "b"), Some((None, Some("alone"))));
        assert!(!n.entries[0].is_complete() && !n.entries[1].is_complete());
        assert_eq!(
            messages(&n),
            [
                (
                    1,
                    "`machine` entry has a `login` but no `password`; it gives no credential \
                     (a partial entry is never completed from another)"
                ),
                (
                    2,
                    "`machine` entry has a `password` but no `login`; it gives no credential \
                     (a partial entry is never completed from another)"
                ),
            ]
        );
        assert!(!format!("{:?}", n.warnings).contains("alone"));
    }

    #[test]
    fn account_is_parsed_and_ignored() {
        let n = parse("machine a account acct login l password p\n");
        assert_eq!(creds(&n, "a"), Some((Some("l"), Some("p"))));
        assert!(n.entries[0].account_present);
        assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    }

    #[test]
    fn values_are_literal_even_when_they_look_like_keywords() {
        let n = parse("machine login login password password machine\n");
        assert_eq!(
            creds(&n, "login"),
            Some((Some("password"), Some("machine")))
        );
    }

    #[test]
    fn unknown_tokens_are_warned_without_their_text() {
        let n = parse("machine a login l password my secret\nport 21\n");
        assert_eq!(creds(&n, "a"), Some((Some("l"), Some("my"))));
        let msg = "unknown word ignored (values with spaces must be quoted)";
        assert_eq!(messages(&n), [(1, msg), (2, msg), (2, msg)]);
        let shown = format!("{:?}", n.warnings);
        assert!(!shown.contains("secret") && !shown.contains("21"));
    }

    #[test]
    fn first_match_wins() {
        let n = parse("machine a login first password one\nmachine A login second password two\n");
        assert_eq!(creds(&n, "a"), Some((Some("first"), Some("one"))));
        assert_eq!(
            messages(&n),
            [(
                2,
                "entry never used: an earlier entry for the same host on line 1 comes first"
            )]
        );
    }

    #[test]
    fn duplicate_keys_in_one_entry_last_wins() {
        let n = parse("machine a login x login y password p1 password p2\n");
        assert_eq!(creds(&n, "a"), Some((Some("y"), Some("p2"))));
        assert_eq!(n.warnings.len(), 2);
        assert!(!format!("{:?}", n.warnings).contains("p1"));
    }

    #[test]
    fn truncated_input() {
        let n = parse("machine a login x password p\nmachine");
        assert_eq!(creds(&n, "a"), Some((Some("x"), Some("p"))));
        assert_eq!(
            messages(&n),
            [(2, "`machine` without a value at the end of the file")]
        );

        const PARTIAL: &str = "`machine` entry has a `login` but no `password`; \
                               it gives no credential (a partial entry is never completed from another)";
        let n = parse("machine a login x password");
        assert_eq!(creds(&n, "a"), Some((Some("x"), None)));
        assert_eq!(
            messages(&n),
            [
                (1, "`password` without a value at the end of the file"),
                (1, PARTIAL)
            ]
        );

        let n = parse("machine a login x password \"unterminated pass\nmore");
        assert_eq!(creds(&n, "a"), Some((Some("x"), None)));
        assert_eq!(
            messages(&n),
            [
                (
                    1,
                    "unterminated quoted value of `password` ignored (missing '\"')"
                ),
                (1, PARTIAL)
            ]
        );
        assert!(!format!("{:?}", n).contains("unterminated pass"));

        let n = parse("machine a login x password \"ends in backslash\\");
        assert_eq!(creds(&n, "a"), Some((Some("x"), None)));

        let n = parse("\"stray");
        assert_eq!(n.entries.len(), 0);
        assert_eq!(n.warnings.len(), 1);

        for s in [
            "", "machine", "default", "macdef", "macdef x", "\"", "\\", "#", "login",
        ] {
            let _ = parse(s);
        }
    }

    #[test]
    fn crlf_line_endings() {
        let n = parse("machine a.example\r\nlogin alice\r\npassword pa\r\n\r\nmachine b login b password pb\r\n");
        assert_eq!(creds(&n, "a.example"), Some((Some("alice"), Some("pa"))));
        assert_eq!(creds(&n, "b"), Some((Some("b"), Some("pb"))));
        assert_eq!(n.entries[1].origin.line, 5);
    }

    #[test]
    fn non_utf8_bytes() {
        let input =
            b"machine a login l\xff password p\xfe\xfd\n\xc3\x28 \nmachine b login b password pb\n";
        let n = Netrc::parse_bytes(Path::new(PATH), input);
        assert_eq!(
            creds(&n, "a"),
            Some((Some("l\u{fffd}"), Some("p\u{fffd}\u{fffd}")))
        );
        assert_eq!(creds(&n, "b"), Some((Some("b"), Some("pb"))));
        assert_eq!(
            messages(&n),
            [
                (1, "login is not valid UTF-8; invalid bytes replaced"),
                (1, "password is not valid UTF-8; invalid bytes replaced"),
                (
                    2,
                    "unknown word ignored (values with spaces must be quoted)"
                ),
            ]
        );
    }

    #[test]
    fn machine_name_with_port_or_url_is_warned() {
        let n = parse("machine example.org:8080 login a password p\nmachine https://x.org login b password q\nmachine ::1 login c password r\n");
        assert_eq!(creds(&n, "example.org"), None);
        assert_eq!(creds(&n, "::1"), Some((Some("c"), Some("r"))));
        let m = messages(&n);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].1.contains("has a port"));
        assert!(m[1].1.contains("looks like a URL"));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let n = parse("machine a login alice password hunter2\n");
        let e = n.lookup("a").unwrap();
        let shown = format!("{e:?} {n:?} {:#?}", n.entries);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
        assert!(shown.contains("***"));
    }

    #[test]
    fn warning_display() {
        let n = parse("bogus\n");
        assert_eq!(
            n.warnings[0].to_string(),
            "/home/u/.netrc:1: unknown word ignored (values with spaces must be quoted)"
        );
    }

    /// Deterministic fuzzing: random byte soup from netrc-ish pieces must never panic, and
    /// no warning may contain the password.
    #[test]
    fn fuzz_never_panics_and_never_leaks() {
        const PIECES: &[&[u8]] = &[
            b"machine",
            b"MACHINE",
            b"default",
            b"login",
            b"password",
            b"account",
            b"macdef",
            b"a.example",
            b"zz-pw-zz",
            b"\"",
            b"\\",
            b"#",
            b" ",
            b"\t",
            b"\n",
            b"\r\n",
            b"\n\n",
            b"\xff",
            b"\xc3",
            b"\0",
            b"\"zz-pw-zz\"",
            b"x:80",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let len = (next() % 40) as usize;
            let mut input = Vec::new();
            for _ in 0..len {
                input.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
            }
            let n = Netrc::parse_bytes(Path::new(PATH), &input);
            for w in &n.warnings {
                assert!(!w.message.contains("zz-pw-zz"), "{w:?} from {input:?}");
            }
            let _ = n.lookup("a.example");
            // Every prefix, too.
            if len < 10 {
                for cut in 0..input.len() {
                    let _ = Netrc::parse_bytes(Path::new(PATH), &input[..cut]);
                }
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn permission_warning() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("netrc");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"machine a login l password p\nbogus\n")
            .unwrap();
        drop(f);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let n = Netrc::parse_file(&path).unwrap();
        assert_eq!(n.path, path);
        assert_eq!(creds(&n, "a"), Some((Some("l"), Some("p"))));
        assert_eq!(n.warnings.len(), 1);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let n = Netrc::parse_file(&path).unwrap();
        assert_eq!(creds(&n, "a"), Some((Some("l"), Some("p"))));
        assert_eq!(n.warnings.len(), 2);
        assert_eq!(
            n.warnings[0].message,
            format!("readable by other users; chmod 600 {}", path.display())
        );
        assert_eq!(n.warnings[0].origin, Origin::new(&path, 0));
    }

    #[test]
    fn parse_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Netrc::parse_file(&dir.path().join("missing")).is_err());
        assert!(Netrc::parse_file(dir.path()).is_err());
    }

    #[test]
    fn default_path_order() {
        let rc = Path::new("/etc/rc-netrc");
        let env = OsStr::new("/env/netrc");
        let home = Path::new("/home/u");
        assert_eq!(
            default_path(Some(rc), Some(env), Some(home)),
            Some(PathBuf::from("/etc/rc-netrc"))
        );
        assert_eq!(
            default_path(None, Some(env), Some(home)),
            Some(PathBuf::from("/env/netrc"))
        );
        assert_eq!(
            default_path(None, None, Some(home)),
            Some(PathBuf::from("/home/u/.netrc"))
        );
        assert_eq!(
            default_path(Some(Path::new("")), Some(OsStr::new("")), Some(home)),
            Some(PathBuf::from("/home/u/.netrc"))
        );
        assert_eq!(default_path(None, None, None), None);
        assert_eq!(default_path(None, None, Some(Path::new(""))), None);
    }
}
