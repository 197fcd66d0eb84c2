//! `Set-Cookie` handling: `Jar::store` with fuzzed header values for one of a few URLs,
//! then `cookie_header` and `to_netscape`.
//!
//! Input: the first byte picks the response's URL; the rest, split at newlines, are the
//! `Set-Cookie` values. Checks: no panic; `store` counts no more than it was given; the
//! `Cookie` header is one line of `name=value` pairs; the jar's file is read back by the
//! Netscape reader without a problem and with every cookie the jar holds.
#![no_main]

use authproxy::session::{netscape, Jar};
use libfuzzer_sys::fuzz_target;
use url::Url;

const URLS: &[&str] = &[
    "https://urs.earthdata.nasa.gov/oauth/authorize",
    "http://data.example.org/thredds/dodsC/x.nc",
    "http://127.0.0.1:8080/a/b",
    "http://localhost/",
    "https://[::1]:8443/p",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let url = Url::parse(URLS[pick as usize % URLS.len()]).unwrap();
    let text = String::from_utf8_lossy(rest);
    let headers: Vec<&str> = text.split('\n').collect();
    let jar = Jar::new();
    let changed = jar.store(&url, headers.iter().copied());
    assert!(changed <= headers.len());
    for u in URLS {
        let u = Url::parse(u).unwrap();
        if let Some(h) = jar.cookie_header(&u) {
            assert!(!h.is_empty());
            assert!(
                !h.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f),
                "control byte in Cookie: {h:?}"
            );
        }
    }
    let file = jar.to_netscape();
    let parsed = netscape::parse(file.as_bytes());
    assert!(parsed.header);
    assert!(parsed.problems.is_empty(), "{:?}\n{file}", parsed.problems);
    // Everything the jar holds is written (expired ones are dropped by both).
    assert_eq!(parsed.cookies.len() + parsed.expired, file.lines().count() - 4);
});
