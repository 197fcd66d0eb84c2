//! Request targets: `Target::from_absolute`, then `redact::path_and_query` on the result
//! and on the raw input.
//!
//! Checks: no panic; a parsed target has a non-empty lowercase host, a non-zero port and a
//! path starting with `/`, and never keeps userinfo; redaction keeps the path, never
//! grows a value and masks every secret-named parameter's value.
#![no_main]

use authproxy::redact;
use authproxy::target::Target;
use libfuzzer_sys::fuzz_target;

fn check_redacted(pq: &str) {
    let out = redact::path_and_query(pq, &[]);
    let path = pq.split_once('?').map_or(pq, |(p, _)| p);
    assert!(out.starts_with(path), "redaction changed the path");
    if let Some((_, query)) = out.split_once('?') {
        for pair in query.split(['&', ';']) {
            if let Some((name, value)) = pair.split_once('=') {
                let decoded = String::from_utf8_lossy(&percent_decode(name.as_bytes())).into_owned();
                let secret = redact::SECRET_PARTS
                    .iter()
                    .any(|p| decoded.to_ascii_lowercase().contains(p));
                if !value.is_empty() && (secret || redact::is_secret_param(name, &[])) {
                    assert_eq!(value, "***", "secret parameter {name} not masked in {out}");
                }
            }
        }
    }
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Target::from_absolute(data) {
        assert!(!t.host.is_empty(), "empty host");
        assert_eq!(t.host, t.host.to_ascii_lowercase(), "host not lowercased");
        assert_ne!(t.port, 0, "port 0");
        assert!(t.path_and_query.starts_with('/'), "path not origin-form");
        assert!(!t.host.contains('@'), "userinfo kept in host");
        let _ = (t.host_header(), t.authority(), t.path(), t.to_string(), t.is_default_port());
        check_redacted(&t.path_and_query);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        check_redacted(s);
        if let Ok(t) = Target::from_authority(s) {
            assert_ne!(t.port, 0, "CONNECT port 0");
            assert!(!t.host.is_empty(), "empty CONNECT host");
        }
    }
});
