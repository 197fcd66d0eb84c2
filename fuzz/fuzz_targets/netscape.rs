//! The cookie file: `netscape::parse`, then `netscape::write` of what it read, read again.
//!
//! Checks: no panic; every line the writer produces is read back without a problem; the
//! round trip keeps every cookie (same lines, same count) and is stable (writing what was
//! read back gives the same file); diagnostics never hold a cookie value.
#![no_main]

use authproxy::session::netscape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = netscape::parse(data);
    for p in &first.problems {
        for c in &first.cookies {
            // Secret-like values (10+ characters, no space, letters and digits) cannot
            // be a piece of the reader's prose, so finding one in a message is a leak.
            let v = c.value();
            let secret_like = v.len() >= 10
                && !v.contains(char::is_whitespace)
                && v.contains(|ch: char| ch.is_ascii_digit())
                && v.contains(|ch: char| ch.is_ascii_alphabetic());
            if secret_like {
                assert!(!p.message.contains(c.value()), "a value in a diagnostic");
            }
        }
    }
    let written = netscape::write(first.cookies.iter());
    let second = netscape::parse(written.as_bytes());
    assert!(second.header, "the writer's header is not read as one");
    assert!(
        second.problems.is_empty(),
        "the reader refuses what the writer wrote: {:?}\n{written}",
        second.problems
    );
    let lines = |cs: &[cookie_store::Cookie<'static>]| {
        let mut v: Vec<String> = cs.iter().filter_map(netscape::line).collect();
        v.sort();
        v
    };
    // Cookies without a line (the writer skips them) are the only ones allowed to go.
    assert_eq!(lines(&first.cookies), lines(&second.cookies), "{written}");
    assert_eq!(netscape::write(second.cookies.iter()), written, "round trip not stable");
});
