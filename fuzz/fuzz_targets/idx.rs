//! IDX arrays, gzipped or not (MNIST's files, and `infer --format idx`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(array) = ringtrain::data::parse_idx(data, "fuzz") {
        assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
    }
});
