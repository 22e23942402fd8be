//! `Utf8Validator` fed in pieces against `std::str::from_utf8` on the whole.
//!
//! Input: a read schedule (see `Schedule::take`, empty pieces allowed), then the bytes.
//! After each piece, with `prefix` the bytes fed so far, the validator errs exactly when
//! `from_utf8(prefix)` has a hard error (`error_len().is_some()`): never on a prefix
//! some extension could make valid (soundness), and no later than the piece that holds
//! the bad byte (fail fast). At the end `finish()` succeeds exactly when the whole
//! input is UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsreactor::proto::utf8::Utf8Validator;
use wsreactor_fuzz::Schedule;

fuzz_target!(|data: &[u8]| {
    let Some((schedule, bytes)) = Schedule::take(data, true) else {
        return;
    };
    let whole_valid = std::str::from_utf8(bytes).is_ok();

    let mut validator = Utf8Validator::default();
    let mut fed = 0;
    let mut pieces = schedule.pieces(bytes);
    if pieces.is_empty() {
        // Also feed the empty stream as one empty piece.
        pieces.push(&[]);
    }
    for piece in pieces {
        let result = validator.feed(piece);
        fed += piece.len();
        let prefix = &bytes[..fed];
        let hard_error = match std::str::from_utf8(prefix) {
            Ok(_) => false,
            Err(e) => e.error_len().is_some(),
        };
        match result {
            Err(_) => {
                assert!(
                    hard_error,
                    "validator rejected {fed} bytes that some extension makes valid"
                );
                assert!(!whole_valid);
                return;
            }
            Ok(()) => assert!(
                !hard_error,
                "validator accepted {fed} bytes that hold an invalid sequence (not fail-fast)"
            ),
        }
    }
    assert_eq!(fed, bytes.len());
    assert_eq!(
        validator.finish().is_ok(),
        whole_valid,
        "finish() disagrees with std::str::from_utf8"
    );
    // `finish` leaves the validator ready for a new stream.
    assert!(validator.feed(b"ok").is_ok() && validator.finish().is_ok());
});
