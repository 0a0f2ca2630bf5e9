//! JSON-lines rows as `infer` reads them (an array, or an object with features and an id).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtrain::infer::RowSpec;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let spec = RowSpec {
        features: 1 + usize::from(flags % 8),
        pixels: flags & 0x80 != 0,
    };
    for line in text.lines() {
        if let Ok(row) = spec.jsonl(line) {
            assert_eq!(row.features.len(), spec.features);
            assert!(row.features.iter().all(|v| v.is_finite()));
        }
    }
});
