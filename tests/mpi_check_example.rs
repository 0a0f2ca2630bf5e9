//! The multi-process examples as a user without MPI meets them: `mpi_check` checks the
//! in-process ring, and asking for MPI from a build without the `mpi` feature is a clear
//! error naming the build command (tests/mpi.rs runs them under mpirun).

mod support;

use support::run_example as run;

#[test]
fn mpi_check_verifies_the_in_process_ring() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        "mpi_check",
        &[
            "--devices",
            "3",
            "--steps",
            "5",
            "--params-out",
            dir.path().to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: 3 replicas in 1 process hold identical parameters after 5 steps"),
        "{stdout}"
    );
    for r in 0..3 {
        let bytes = std::fs::read(dir.path().join(format!("rank-{r}.f32"))).unwrap();
        // 16-32-4 MLP: 16*32 + 32 + 32*4 + 4 parameters.
        assert_eq!(bytes.len(), 4 * (16 * 32 + 32 + 32 * 4 + 4));
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn a_bad_fault_spec_is_a_usage_error() {
    let out = run("mpi_check", &["--inject-fault", "1:x:error"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not RANK:STEP:error|exit|hang|build"));
}

#[test]
fn a_timeout_that_is_not_a_positive_number_is_a_usage_error() {
    for bad in ["0", "-1", "inf", "NaN", "soon"] {
        let out = run("mpi_check", &[&format!("--comm-timeout={bad}")]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is not a number of seconds above 0"),
            "{stderr}"
        );
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn mpi_modes_without_the_feature_say_how_to_build_them() {
    for (example, comm) in [
        ("mnist", "mpi"),
        ("mnist", "hierarchical"),
        ("mpi_check", "mpi"),
    ] {
        let out = run(example, &["--comm", comm]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{example}: {stderr}");
        assert!(
            stderr.contains(&format!("--comm {comm} needs MPI")),
            "{stderr}"
        );
        assert!(stderr.contains("--features mpi"), "{stderr}");
    }
    let out = run("allreduce", &["--mpi"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features mpi"));
}
