//! The local_sgd example as a user runs it, shortened (one epoch, one seed, 2
//! replicas): the table with gradient averaging first, every variant's bytes in
//! the ratio the algorithm says, the plot and the JSON; bad arguments are errors.

mod support;

#[test]
fn sweeps_the_variants_and_writes_table_plot_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let (svg, json) = (dir.path().join("l.svg"), dir.path().join("l.json"));
    let out = support::run_example(
        "local_sgd",
        &[
            "--replicas",
            "2",
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--sync-every",
            "2,8",
            "--svg-out",
            svg.to_str().unwrap(),
            "--json-out",
            json.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "| gradients every step |",
        "| H = 2 |",
        "| H = 8, local state |",
        "| H = 8, DiLoCo outer |",
    ] {
        assert!(stdout.contains(row), "{row} missing:\n{stdout}");
    }
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    let bytes = |i: usize| runs[i]["bytes_per_step"].as_f64().unwrap();
    for r in runs {
        let acc = r["accuracy"][0].as_f64().unwrap();
        assert!((50.0..=100.0).contains(&acc), "{r}");
    }
    // Momentum SGD: averaging its state doubles what a synchronization sends; keeping it
    // local sends the change alone, every H steps (plus one at the epoch's end).
    let ratio = |i: usize| bytes(i) / bytes(0);
    assert!(
        (0.45..0.6).contains(&ratio(2)),
        "H = 2, local: {}",
        ratio(2)
    );
    assert!(
        (0.95..1.15).contains(&ratio(1)),
        "H = 2, averaged: {}",
        ratio(1)
    );
    assert!(
        (0.12..0.2).contains(&ratio(4)),
        "H = 8, local: {}",
        ratio(4)
    );

    let bad = support::run_example("local_sgd", &["--replicas", "1"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2 or more replicas"));
}
