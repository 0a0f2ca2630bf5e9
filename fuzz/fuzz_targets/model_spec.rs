//! A checkpoint's `ringtrain.model` metadata, which a Predictor builds a model from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtrain::zoo::ModelSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = ModelSpec::from_json(text) {
        assert_eq!(ModelSpec::from_json(&spec.to_json()).unwrap(), spec);
        assert!(spec.inputs() > 0 && spec.outputs() > 0);
    }
});
