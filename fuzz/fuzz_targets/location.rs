//! Redirect `Location` resolution: `redirect::follow`.
//!
//! Input: byte 0 picks the status, byte 1 the method and the base URL, the rest is the
//! `Location` value. Checks: no panic; only 301/302/303/307/308 are followed; the next
//! hop is a well-formed http(s) target (lowercase non-empty host, port not 0, path from
//! `/`, no userinfo); the method follows the browser rules (303 -> GET unless HEAD,
//! 301/302 turn POST into GET, 307/308 keep it) and `drops_body` says when a body goes.
#![no_main]

use authproxy::redirect;
use authproxy::target::Target;
use http::Method;
use libfuzzer_sys::fuzz_target;

const STATUS: &[u16] = &[301, 302, 303, 307, 308, 200, 304, 300];
const BASES: &[&str] = &[
    "https://uat.urs.earthdata.nasa.gov/oauth/authorize",
    "http://remotetest.unidata.ucar.edu/thredds/dodsC/testdata/testData.nc",
    "http://fake.ucar.edu:9090/dts/test.01",
    "https://[::1]:8443/a/b/c?q=1",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = STATUS[data[0] as usize % STATUS.len()];
    let method = [Method::GET, Method::POST, Method::HEAD, Method::PUT][data[1] as usize % 4].clone();
    let from = Target::from_absolute(BASES[(data[1] as usize / 4) % BASES.len()].as_bytes()).unwrap();
    let location = &data[2..];
    let Some(f) = redirect::follow(&from, status, location, &method) else {
        return;
    };
    assert!(matches!(status, 301 | 302 | 303 | 307 | 308));
    let t = &f.next;
    assert!(!t.host.is_empty());
    assert_eq!(t.host, t.host.to_ascii_lowercase());
    assert_ne!(t.port, 0);
    assert!(t.path_and_query.starts_with('/'), "{t:?}");
    assert!(!t.host.contains('@'));
    // The full URL of the next hop parses back to the same target.
    let again = Target::from_absolute(redirect::full_url(t).as_bytes()).expect("full_url parses");
    assert_eq!(&again, t);
    let expected = match status {
        303 if method == Method::HEAD => Method::HEAD,
        303 => Method::GET,
        301 | 302 if method == Method::POST => Method::GET,
        _ => method.clone(),
    };
    assert_eq!(f.method, expected);
    assert_eq!(f.drops_body, f.method != method && !matches!(method, Method::GET | Method::HEAD));
});
