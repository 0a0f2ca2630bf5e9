//! Safetensors checkpoints (what `--resume`, `Predictor::load` and `infer` read): any
//! bytes parse to a checkpoint or an error; one that parses writes out and reads back
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtrain::checkpoint::Checkpoint;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Checkpoint::from_bytes(data, "fuzz") {
        // NaN payloads survive f32 round trips bit for bit, so the whole value does.
        if let Ok(bytes) = c.to_bytes() {
            let again = Checkpoint::from_bytes(&bytes, "round trip").expect("our own bytes parse");
            let names: Vec<&str> = c.names().collect();
            assert_eq!(names, again.names().collect::<Vec<_>>());
            for name in names {
                let (s1, v1) = c.get(name).unwrap();
                let (s2, v2) = again.get(name).unwrap();
                assert_eq!(s1, s2);
                assert!(v1.iter().zip(v2).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
                assert_eq!(c.quantization(name), again.quantization(name));
            }
        }
    }
});
