//! The bench example as a user runs it: every backend measured at every size, the tables,
//! the verdict on CPU against GPU, a readable plot and the JSON, on the CPU and on the
//! GPU (lavapipe in CI). Tiny sizes and short timings: this checks the tool, not speed.

mod support;

use std::process::Output;

fn run(args: &[&str]) -> Output {
    support::run_example("bench", args)
}

/// Asked once, so that a machine without a GPU says once that the GPU part is skipped.
fn with_gpu() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(ringtrain::kernels::gpu::testing::gpu_tests_enabled)
}

#[test]
fn measures_every_backend_and_writes_the_table_plot_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, json) = (dir.path().join("gemm.svg"), dir.path().join("bench.json"));
    let backends = if with_gpu() {
        "naive,cpu1,cpu,gpu"
    } else {
        "naive,cpu1,cpu"
    };
    let out = run(&[
        "--sizes",
        "16,32,48",
        "--naive-max",
        "32",
        "--backends",
        backends,
        "--min-time",
        "0.01",
        "--reps",
        "2",
        "--svg-out",
        svg.to_str().unwrap(),
        "--json-out",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "GEMM C = A B",
        "naive loop",
        "CPU, 1 thread",
        "training step",
        "all-reduce",
    ] {
        assert!(stdout.contains(needle), "`{needle}` missing:\n{stdout}");
    }

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let gemm = report["gemm"].as_array().unwrap();
    let expect: Vec<(&str, u64)> = backends
        .split(',')
        .flat_map(|b| [16u64, 32, 48].map(|n| (b, n)))
        .filter(|&(b, n)| b != "naive" || n <= 32)
        .collect();
    assert_eq!(gemm.len(), expect.len(), "{gemm:?}");
    for (b, n) in expect {
        let p = gemm
            .iter()
            .find(|p| p["backend"] == b && p["n"] == n)
            .unwrap_or_else(|| panic!("no {b} n={n}"));
        let g = p["gflops_median"].as_f64().unwrap();
        assert!(
            g.is_finite() && g > 0.0 && g <= p["gflops_best"].as_f64().unwrap(),
            "{p}"
        );
    }
    let steps = report["train_step"].as_array().unwrap();
    assert_eq!(steps.len(), if with_gpu() { 3 } else { 2 });
    assert!(steps
        .iter()
        .all(|s| s["samples_per_sec"].as_f64().unwrap() > 0.0));
    assert_eq!(report["allreduce"].as_array().unwrap().len(), 2);
    if with_gpu() {
        assert!(stdout.contains("the GPU"), "no verdict:\n{stdout}");
        assert!(report["gpu"].is_string() && report["gpu_timing"].is_string());
    }

    // The plot: an SVG with both axes described and a legend entry per backend.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.contains("<svg"),
        "not an SVG"
    );
    for needle in [
        "matrix size n",
        "GFLOP/s",
        "naive loop",
        "CPU, 1 thread",
        "48",
    ] {
        assert!(svg.contains(needle), "plot lacks `{needle}`");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_sizes_are_errors() {
    let out = run(&["--sizes", "0", "--parts", "gemm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sizes"));
    let out = run(&["--backends", "tpu"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap refuses an unknown backend"
    );
}
