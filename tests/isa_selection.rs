//! `RINGTRAIN_ISA` as a user sets it: each name the CPU can run selects that path (the
//! `sgemm` example reports the one it ran), `avx512` turns AVX512-BF16's `vdpbf16ps`
//! off, and a name the CPU cannot run, or no name at all, is ignored with a warning
//! that says which.

mod support;

use ringtrain::kernels::cpu::{Isa, Simd};
use std::process::Command;
use support::example;

/// The path `sgemm --dtype bf16` reports with `RINGTRAIN_ISA=name`, and its stderr.
fn selected(name: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("sgemm.json");
    let out = Command::new(example("sgemm"))
        .args([
            "--sizes",
            "16",
            "--min-time",
            "0",
            "--dtype",
            "bf16",
            "--json-out",
        ])
        .arg(&json)
        .env("RINGTRAIN_ISA", name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let isa = report["isa"].as_str().unwrap().to_string();
    (isa, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn each_runnable_path_is_selected_by_name_and_others_are_refused_aloud() {
    let best = Simd::best();
    for simd in Simd::available() {
        let (isa, stderr) = selected(simd.name());
        assert_eq!(isa, simd.name(), "{stderr}");
        assert!(stderr.is_empty(), "{stderr}");
    }
    if Simd::new(Isa::Avx512).is_some_and(|s| !s.bf16_dot()) || Simd::new(Isa::Avx512).is_none() {
        let (isa, stderr) = selected("avx512-bf16");
        assert_eq!(isa, best.name());
        assert!(stderr.contains("cannot run avx512-bf16"), "{stderr}");
    }
    let (isa, stderr) = selected("avx1024");
    assert_eq!(isa, best.name());
    assert!(
        stderr.contains("expected portable, avx2, avx512"),
        "{stderr}"
    );
}
