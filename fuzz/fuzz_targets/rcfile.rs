//! netCDF-C rc files: `parse_bytes` then `resolve`, on one file and on two.
//!
//! Checks: no panic; parsed lines are well formed (uppercased non-empty key, trimmed
//! one-line value, line number inside the file); `resolve` gives one rule per scope; and
//! when every occurrence of the marker `SECRETMARK` (any case) in the input sits inside a
//! parsed value, no warning, error or `Debug` of the parsed file mentions it.
#![no_main]

use std::path::Path;

use authproxy::config::rcfile;
use libfuzzer_sys::fuzz_target;

const MARK: &str = "secretmark";

fn marks(s: &str) -> usize {
    s.to_ascii_lowercase().matches(MARK).count()
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

fuzz_target!(|data: &[u8]| {
    let file = rcfile::parse_bytes(Path::new("/fuzz/.daprc"), data);
    let n_lines = data.split(|b| *b == b'\n').count();
    for line in &file.lines {
        assert!(!line.key.is_empty(), "empty key");
        assert_eq!(line.key, line.key.to_ascii_uppercase(), "key not uppercased");
        assert!(!line.value.contains('\n'), "value spans lines");
        assert_eq!(line.value, line.value.trim_matches(is_blank), "value not trimmed");
        assert!(line.origin.line >= 1 && line.origin.line <= n_lines, "bad line number");
    }

    let (rules, warnings, errors) = rcfile::resolve(std::slice::from_ref(&file));
    let mut scopes: Vec<_> = rules.iter().map(|r| &r.scope).collect();
    let n = scopes.len();
    scopes.sort();
    scopes.dedup();
    assert_eq!(scopes.len(), n, "resolve gave two rules for one scope");
    for r in &rules {
        let _ = rcfile::select(&rules, "https", r.scope.host().unwrap_or("example.org"), 443, "/a/b");
        let _ = r.scope.specificity();
        let _ = r.scope.ancestors();
        let _ = r.scope.to_string();
    }

    // Same bytes as a second, lower-precedence file: exercises merging across files.
    let second = rcfile::parse_bytes(Path::new("/fuzz/home/.dodsrc"), data);
    let (_, warnings2, errors2) = rcfile::resolve(&[file.clone(), second]);

    // Secret check: only when the marker occurs nowhere but inside values.
    let text = String::from_utf8_lossy(data);
    let total = marks(&text);
    let in_values: usize = file.lines.iter().map(|l| marks(&l.value)).sum();
    if total > 0 && total == in_values {
        let mut out = format!("{file:?}");
        for w in file.warnings.iter().chain(&warnings).chain(&warnings2) {
            out.push_str(&format!("\n{w}\n{w:?}"));
        }
        for e in errors.iter().chain(&errors2) {
            out.push_str(&format!("\n{e}\n{e:?}"));
        }
        assert_eq!(marks(&out), 0, "a value reached a warning/error/Debug:\n{out}");
    }
});
