//! The request-head judge of the accept loop: `head::parse`.
//!
//! Checks: no panic; a refusal is a 400, 405 (TRACE) or 431 with a sentence; an accepted head is no
//! longer than the input; a normalised head is accepted again unchanged, with the same
//! framing (normalising is idempotent); a head that needed no change stays byte-equal.
#![no_main]

use authproxy::head::{parse, Status};
use authproxy::limits::Limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head_bytes: 8 * 1024,
        max_headers: 20,
        ..Limits::default()
    };
    match parse(data, &limits) {
        Err(f) => {
            assert!(matches!(f.status, 400 | 405 | 431), "{f}");
            assert!(f.message.ends_with('.'), "{f}");
        }
        Ok(Status::Partial) => {}
        Ok(Status::Complete(h)) => {
            assert!(h.len <= data.len());
            if let Some(new) = &h.rewritten {
                match parse(new, &limits) {
                    Ok(Status::Complete(again)) => {
                        assert_eq!(again.len, new.len());
                        assert_eq!(again.rewritten, None, "normalising twice changed it");
                        assert_eq!(again.body, h.body);
                        assert_eq!(again.connect, h.connect);
                    }
                    other => panic!("normalised head refused: {other:?}"),
                }
            }
        }
    }
});
