//! `.netrc`: `Netrc::parse_bytes` then `lookup`.
//!
//! Checks: no panic; warnings sorted by line; `lookup` returns an entry with credentials
//! that is `default` or names the host; and a `password` value longer than 8 characters
//! (alphanumeric, appearing once in the input and not as a host or login) never shows in
//! `format!("{netrc:?}")` nor in a warning.
#![no_main]

use std::path::Path;

use authproxy::config::netrc::Netrc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let netrc = Netrc::parse_bytes(Path::new("/fuzz/.netrc"), data);
    let debug = format!("{netrc:?}");

    for w in netrc.warnings.windows(2) {
        assert!(w[0].origin.line <= w[1].origin.line, "warnings not sorted by line");
    }

    let mut hosts: Vec<&str> = netrc.entries.iter().filter_map(|e| e.host.as_deref()).collect();
    hosts.push("example.org");
    hosts.push("");
    for h in hosts {
        if let Some(e) = netrc.lookup(h) {
            assert!(e.has_credentials(), "lookup returned an entry without credentials");
            if let Some(eh) = &e.host {
                assert!(eh.eq_ignore_ascii_case(h), "lookup returned another host's entry");
            }
        }
    }

    // Secret check.
    let input = String::from_utf8_lossy(data).to_ascii_lowercase();
    // The same Debug with every host and login emptied: whatever it contains is template text.
    let mut skeleton = netrc.clone();
    for e in &mut skeleton.entries {
        e.host = e.host.as_ref().map(|_| String::new());
        e.login = e.login.as_ref().map(|_| String::new());
    }
    let skeleton = format!("{skeleton:?}").to_ascii_lowercase();
    let debug_l = debug.to_ascii_lowercase();
    let messages: String = netrc
        .warnings
        .iter()
        .map(|w| format!("{w}\n"))
        .collect::<String>()
        .to_ascii_lowercase();
    for e in &netrc.entries {
        let Some(pw) = &e.password else { continue };
        let pw = pw.expose().to_ascii_lowercase();
        if pw.len() <= 8 || !pw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        if input.matches(pw.as_str()).count() != 1 || skeleton.contains(&pw) {
            continue;
        }
        if netrc.entries.iter().any(|o| {
            o.host.as_deref().is_some_and(|h| h.to_ascii_lowercase().contains(&pw))
                || o.login.as_deref().is_some_and(|l| l.to_ascii_lowercase().contains(&pw))
        }) {
            continue;
        }
        assert!(!debug_l.contains(&pw), "password in Debug: {debug}");
        assert!(!messages.contains(&pw), "password in a warning: {messages}");
    }
});
