//! CSV rows as `infer` reads them: lines read with a bound, each parsed to a row of the
//! model's width or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringtrain::infer::{read_line, Line, RowSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let spec = RowSpec {
        features: 1 + usize::from(flags % 8),
        pixels: flags & 0x80 != 0,
    };
    let mut reader = std::io::BufReader::with_capacity(7, text);
    while let Some(line) = read_line(&mut reader, 64).expect("reading memory cannot fail") {
        if let Line::Text(line) = line {
            assert!(line.len() <= 64);
            if let Ok(row) = spec.csv(&line) {
                assert_eq!(row.features.len(), spec.features);
                assert!(row.features.iter().all(|v| v.is_finite()));
            }
        }
    }
});
