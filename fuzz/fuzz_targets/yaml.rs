//! The YAML configuration: `yaml::parse_str` with an empty `SecretEnv`.
//!
//! Checks: no panic; and when every occurrence of the marker `SECRETMARK` (any case) in
//! the input is inside a string value of an inline-secret key (`password`, `token`,
//! `value`, `key_password`, `proxy_token`) as serde_yaml reads the document, no error or
//! warning mentions it.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use authproxy::config::yaml::{self, SecretEnv};
use libfuzzer_sys::fuzz_target;
use serde_yaml::Value;

const MARK: &str = "secretmark";
const SECRET_KEYS: &[&str] = &["password", "token", "value", "key_password", "proxy_token"];

fn marks(s: &str) -> usize {
    s.to_ascii_lowercase().matches(MARK).count()
}

/// (occurrences anywhere in keys, tags and strings; occurrences in secret-key string values)
fn walk(v: &Value, under_secret_key: bool, all: &mut usize, secret: &mut usize) {
    match v {
        Value::String(s) => {
            let n = marks(s);
            *all += n;
            if under_secret_key {
                *secret += n;
            }
        }
        Value::Sequence(items) => items.iter().for_each(|i| walk(i, false, all, secret)),
        Value::Mapping(m) => {
            for (k, val) in m {
                walk(k, false, all, secret);
                let is_secret = matches!(k, Value::String(k) if SECRET_KEYS.contains(&k.as_str()));
                walk(val, is_secret, all, secret);
            }
        }
        Value::Tagged(t) => {
            *all += marks(&t.tag.to_string());
            walk(&t.value, false, all, secret);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// A config path in a fresh, empty directory: `*_file` values resolve under it and are absent.
fn config_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("authproxy-fuzz-yaml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("authproxy.yaml")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = SecretEnv::default();
    let result = yaml::parse_str(config_path(), text, &env);

    let mut out = String::new();
    match &result {
        Ok(cfg) => {
            for w in &cfg.warnings {
                out.push_str(&format!("{w}\n{w:?}\n"));
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no error");
            for e in errors {
                out.push_str(&format!("{e}\n{e:?}\n"));
            }
        }
    }

    let total = marks(text);
    if total == 0 {
        return;
    }
    let Ok(doc) = serde_yaml::from_str::<Value>(text) else { return };
    let (mut all, mut secret) = (0, 0);
    walk(&doc, false, &mut all, &mut secret);
    if total == all && all == secret {
        assert_eq!(marks(&out), 0, "a secret value reached a message:\n{out}");
    }
});
