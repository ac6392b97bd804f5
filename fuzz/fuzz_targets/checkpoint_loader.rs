//! Fuzzes checkpoint loading with arbitrary bytes: the safetensors header (its length, its JSON,
//! the offsets and dtypes it declares), the tensors' bytes and kiln's metadata (`kiln.model`,
//! `kiln.config`, `kiln.step`, the generators' states, `kiln.checksum`). Loading must return
//! `Ok` or `Err`, never panic, and never allocate more than the input can justify (libFuzzer's
//! -malloc_limit_mb). What loads must save and load back to the same checkpoint, and its
//! metadata must read without panicking.
#![no_main]

use kiln_nn::checkpoint::{Checkpoint, CONFIG_KEY};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(checkpoint) = Checkpoint::from_bytes(data, "fuzz input") else {
        return;
    };
    // kiln's metadata, read as a resume reads it: each is Ok or Err.
    let _ = checkpoint.model_name("fuzz input", "kiln");
    let _ = checkpoint.step();
    let _ = checkpoint.generator("noise");
    let _ = checkpoint.model_config::<serde_json::Value>("fuzz input");
    let _ = checkpoint.meta(CONFIG_KEY);
    let _ = checkpoint.first_non_finite();
    // What was accepted round-trips: saved (with a fresh checksum) and read back, the same.
    let bytes = checkpoint.to_bytes().expect("a loaded checkpoint encodes");
    let again = Checkpoint::from_bytes(&bytes, "re-encoded").expect("what was written reads back");
    assert_eq!(again.metadata(), checkpoint.metadata());
    // In name order: safetensors lays tensors out by dtype and name, whatever order they came in.
    let sorted = |c: &Checkpoint| {
        let mut entries: Vec<_> = c
            .tensors()
            .iter()
            .map(|(name, t)| (name.clone(), t.dtype(), t.dims().to_vec()))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    };
    assert_eq!(sorted(&again), sorted(&checkpoint));
});
