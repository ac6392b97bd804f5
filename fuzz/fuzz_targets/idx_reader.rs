//! Fuzzes the IDX reader with arbitrary bytes (raw or gzip, as the reader sniffs them). It must
//! return `Ok` or `Err`, never panic, and never allocate more than the input can justify
//! (libFuzzer's -malloc_limit_mb catches a header's count reserved before it was checked). What
//! it accepts must be canonical: a raw input that parses re-encodes to the same bytes, and
//! everything it accepts survives a gzip round trip.
#![no_main]

use kiln_data::{encode_idx, parse_idx, Encoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(array) = parse_idx(data, "fuzz input") else {
        return;
    };
    let raw = encode_idx(&array, Encoding::Raw);
    if !data.starts_with(&[0x1f, 0x8b]) {
        assert_eq!(raw, data, "a raw IDX file re-encodes to itself");
    }
    let gzip = encode_idx(&array, Encoding::Gzip);
    let again = parse_idx(&gzip, "re-encoded").expect("what was written reads back");
    assert_eq!(encode_idx(&again, Encoding::Raw), raw);
});
