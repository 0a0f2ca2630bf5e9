//! Multi-process data parallelism under a real `mpirun` (Open MPI or MPICH): ranks end
//! with bitwise-identical parameters that match the in-process ring of the same size,
//! and a rank that fails, dies or hangs, or that built another model, ends the job with
//! an error instead of leaving it hung.
//!
//! Needs the `mpi` feature and the examples built with it:
//!
//!     cargo build --release --features mpi --examples
//!     cargo test --release --features mpi --test mpi
//!
//! More ranks than cores is fine (`--oversubscribe` is passed to Open MPI).
#![cfg(feature = "mpi")]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{example, newest_file, same_tensors};

/// Longest a job may take before the test calls it hung (every job here takes seconds).
const JOB_LIMIT: Duration = Duration::from_secs(120);

struct Job {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `command` to completion, or kills it and fails the test after [`JOB_LIMIT`].
fn finish(mut command: Command) -> Job {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the job (is mpirun on PATH?)");
    // Drain the pipes while waiting, so that a chatty job cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out_pipe, &mut s).ok();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err_pipe, &mut s).ok();
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the job") {
            break status;
        }
        if started.elapsed() > JOB_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{command:?} was still running after {JOB_LIMIT:?}: hung\nstderr: {}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Job {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// `mpirun -np n <example> args...`.
fn mpirun(n: usize, name: &str, args: &[&str]) -> Job {
    let mut c = Command::new("mpirun");
    let version = Command::new("mpirun")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains("Open MPI") {
        // Open MPI refuses more ranks than cores, and running as root (CI containers),
        // unless told.
        c.arg("--oversubscribe")
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            // Shared memory between ranks of one machine, no network probing.
            .env("OMPI_MCA_btl", "self,vader");
    }
    c.args(["-np", &n.to_string()])
        .arg(example(name))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    finish(c)
}

/// The example in one process, without MPI.
fn local(name: &str, args: &[&str]) -> Job {
    let mut c = Command::new(example(name));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    finish(c)
}

fn ok(job: &Job, what: &str) {
    assert_eq!(
        job.code,
        Some(0),
        "{what} failed\nstdout: {}\nstderr: {}",
        job.stdout,
        job.stderr
    );
}

/// The job failed, and its error output says `what`.
fn failed_saying(job: &Job, what: &str) {
    assert_ne!(job.code, Some(0), "the job must fail:\n{}", job.stderr);
    assert!(job.stderr.contains(what), "no {what:?} in:\n{}", job.stderr);
}

fn read_params(dir: &Path, rank: usize) -> Vec<f32> {
    std::fs::read(dir.join(format!("rank-{rank}.f32")))
        .unwrap_or_else(|e| panic!("rank {rank}'s parameters in {}: {e}", dir.display()))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every rank's parameters in `dir`, checked bitwise identical; returns rank 0's.
fn identical_ranks(dir: &Path, n: usize) -> Vec<f32> {
    let first = read_params(dir, 0);
    assert!(!first.is_empty());
    for r in 1..n {
        assert!(
            bits(&read_params(dir, r)) == bits(&first),
            "rank {r} ended with other parameters than rank 0"
        );
    }
    first
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The in-process ring's result with `n` replicas.
fn in_process(n: usize) -> Vec<f32> {
    in_process_with(n, &[])
}

/// The in-process ring's result with `n` replicas and `extra` flags.
fn in_process_with(n: usize, extra: &[&str]) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let devices = n.to_string();
    let mut args = vec!["--devices", &devices, "--params-out"];
    args.push(dir.path().to_str().unwrap());
    args.extend(extra);
    let job = local("mpi_check", &args);
    ok(&job, "the in-process run");
    identical_ranks(dir.path(), n)
}

/// `mpi_check` on `processes` ranks with `args` and `--params-out`: the job, and the
/// parameters its `replicas` replicas ended with, checked bitwise identical.
fn train_over_mpi(processes: usize, replicas: usize, args: &[&str]) -> (Job, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = args.to_vec();
    args.extend(["--params-out", dir.path().to_str().unwrap()]);
    let job = mpirun(processes, "mpi_check", &args);
    ok(&job, &format!("mpi_check {args:?} on {processes} ranks"));
    let params = identical_ranks(dir.path(), replicas);
    (job, params)
}

#[test]
fn mpi_ranks_end_identical_and_match_the_in_process_ring() {
    for n in [2, 4] {
        let (job, over_mpi) = train_over_mpi(n, n, &["--comm", "mpi"]);
        assert!(
            job.stdout
                .contains("reduce-scatter, all-gather, broadcast and barrier give exact results"),
            "{}",
            job.stdout
        );
        assert!(
            job.stdout
                .contains(&format!("ok: {n} replicas in {n} processes")),
            "{}",
            job.stdout
        );
        // ringtrain's ring over MPI runs the in-process ring's schedule: the same sums in
        // the same order, so the same bits.
        assert!(
            bits(&over_mpi) == bits(&in_process(n)),
            "{n} ranks over MPI differ from {n} in-process replicas"
        );
    }
}

#[test]
fn native_mpi_all_reduce_matches_the_ring_within_rounding() {
    let n = 3;
    let (_, native) = train_over_mpi(n, n, &["--comm", "mpi", "--mpi-algorithm", "native"]);
    let diff = max_difference(&native, &in_process(n));
    assert!(
        diff < 1e-4,
        "native all-reduce drifted {diff} from the ring"
    );
}

/// Gradients sent as bf16 over MPI: the in-process ring's schedule and roundings, so the
/// same bits as three in-process replicas; MPI's own all-reduce cannot do it, and says so.
#[test]
fn compressed_gradients_over_mpi_match_the_in_process_ring() {
    let n = 3;
    let bf16 = ["--grad-compression", "bf16"];
    let (_, over_mpi) = train_over_mpi(n, n, &["--comm", "mpi", bf16[0], bf16[1]]);
    assert!(
        bits(&over_mpi) == bits(&in_process_with(n, &bf16)),
        "bf16 gradients over MPI differ from the in-process ring's"
    );
    assert!(max_difference(&over_mpi, &in_process(n)) < 1e-2);
    let native = mpirun(
        2,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--mpi-algorithm",
            "native",
            bf16[0],
            bf16[1],
        ],
    );
    failed_saying(&native, "--mpi-algorithm ring");
}

/// Local SGD over MPI (DiLoCo's outer optimizer, the change sent as bf16): the ranks
/// agree after every synchronization, bit for bit with three in-process replicas.
#[test]
fn local_sgd_over_mpi_matches_the_in_process_ring() {
    let n = 3;
    let local = ["--sync-every", "4", "--grad-compression", "bf16"];
    let mut args = vec!["--comm", "mpi"];
    args.extend(local);
    let (job, over_mpi) = train_over_mpi(n, n, &args);
    assert!(
        job.stdout.contains("hold identical parameters"),
        "{}",
        job.stdout
    );
    assert!(
        bits(&over_mpi) == bits(&in_process_with(n, &local)),
        "local SGD over MPI differs from the in-process ring's"
    );
    // Another algorithm than gradient averaging: another result.
    assert!(bits(&over_mpi) != bits(&in_process(n)));
}

/// ZeRO-1 over MPI: the ranks end identical, with the bits of an in-process sharded
/// group of the same size (one schedule), and within rounding of plain averaging; on
/// rails between two processes of two devices each too.
#[test]
fn zero1_over_mpi_matches_the_in_process_group() {
    let n = 3;
    let (job, over_mpi) = train_over_mpi(n, n, &["--comm", "mpi", "--zero", "1"]);
    assert!(
        job.stdout.contains("hold identical parameters"),
        "{}",
        job.stdout
    );
    assert!(
        bits(&over_mpi) == bits(&in_process_with(n, &["--zero", "1"])),
        "ZeRO-1 over MPI differs from the in-process group's"
    );
    assert!(max_difference(&over_mpi, &in_process(n)) < 1e-4);
    let args = ["--comm", "hierarchical", "--devices", "2", "--zero", "1"];
    let (_, hierarchical) = train_over_mpi(2, 4, &args);
    assert!(max_difference(&hierarchical, &in_process(4)) < 1e-4);
}

/// Two ranks launched with different `--grad-compression` (one MPMD job): the first
/// compressed bucket's tag says which format it travels in, so both stop with a mismatch
/// instead of reading one format as the other.
#[test]
fn ranks_sending_different_wire_formats_are_stopped() {
    let other = example("mpi_check");
    let other = other.to_str().unwrap();
    let job = mpirun(
        1,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--grad-compression",
            "bf16",
            ":",
            "-np",
            "1",
            other,
            "--comm",
            "mpi",
            "--grad-compression",
            "f16",
        ],
    );
    failed_saying(&job, "disagree");
    // Both send 33 words per bucket: only the tag tells the formats apart.
    assert!(job.stderr.contains("(f16)"), "{}", job.stderr);
}

#[test]
fn hierarchical_ranks_match_one_ring_of_all_devices() {
    // 2 processes ("machines") of 2 replicas each.
    let (job, two_level) = train_over_mpi(2, 4, &["--comm", "hierarchical", "--devices", "2"]);
    assert!(
        job.stdout.contains("ok: 4 replicas in 2 processes"),
        "{}",
        job.stdout
    );
    let diff = max_difference(&two_level, &in_process(4));
    assert!(
        diff < 1e-4,
        "hierarchical drifted {diff} from the in-process ring"
    );
}

#[test]
fn a_rank_whose_step_fails_stops_every_rank_with_its_reason() {
    let job = mpirun(
        2,
        "mpi_check",
        &["--comm", "mpi", "--inject-fault", "1:3:error"],
    );
    // The failing rank says why, and so does the rank it notified.
    failed_saying(
        &job,
        "rank 1: error: peer 1 failed: injected failure at step 3",
    );
    failed_saying(
        &job,
        "rank 0: error: peer 1 failed: injected failure at step 3",
    );
    assert!(job.took < JOB_LIMIT);
}

/// Under local SGD a rank fails between synchronizations, when nothing is being sent:
/// the job still ends at once with the reason, not after the 60 s timeout.
#[test]
fn a_rank_failing_between_local_sgd_syncs_stops_every_rank_with_its_reason() {
    let job = mpirun(
        2,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--sync-every",
            "8",
            "--comm-timeout",
            "60",
            "--inject-fault",
            "1:3:error",
        ],
    );
    failed_saying(
        &job,
        "rank 1: error: peer 1 failed: injected failure at step 3",
    );
    failed_saying(&job, "injected failure at step 3");
    assert!(job.took < Duration::from_secs(30), "took {:?}", job.took);
}

#[test]
fn a_failing_rank_is_named_in_mpi_iallreduce_mode_too() {
    let job = mpirun(
        2,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--mpi-algorithm",
            "native",
            "--inject-fault",
            "1:3:error",
        ],
    );
    failed_saying(
        &job,
        "rank 0: error: peer 1 failed: injected failure at step 3",
    );
}

#[test]
fn a_rank_that_cannot_build_its_model_stops_the_others_at_once() {
    let job = mpirun(
        3,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--inject-fault",
            "2:0:build",
            "--comm-timeout",
            "100",
        ],
    );
    failed_saying(&job, "rank 0: error: peer 2 failed: its process could not set up data parallelism: injected failure building the model");
    // Told, not timed out: far below the 100 s timeout.
    assert!(job.took < Duration::from_secs(60), "took {:?}", job.took);
}

/// Every healthy rank's error line names `culprit`, and none blames another rank.
fn all_blame(stderr: &str, ranks: &[usize], culprit: usize) {
    for r in ranks {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("rank {r}: error:")))
            .unwrap_or_else(|| panic!("no error from rank {r}:\n{stderr}"));
        assert!(
            line.contains(&format!("peer {culprit} sent nothing"))
                || line.contains(&format!("peer {culprit} failed: it sent nothing")),
            "rank {r} blames someone else: {line}\n{stderr}"
        );
    }
}

#[test]
fn a_hung_rank_among_four_is_named_by_every_other() {
    for algorithm in ["ring", "native"] {
        let job = mpirun(
            4,
            "mpi_check",
            &[
                "--comm",
                "mpi",
                "--mpi-algorithm",
                algorithm,
                "--inject-fault",
                "2:3:hang",
                "--comm-timeout",
                "2",
            ],
        );
        assert_ne!(job.code, Some(0), "{algorithm}: the job must fail");
        all_blame(&job.stderr, &[0, 1, 3], 2);
    }
}

#[test]
fn a_rank_that_dies_ends_the_job() {
    let job = mpirun(
        2,
        "mpi_check",
        &["--comm", "mpi", "--inject-fault", "1:3:exit"],
    );
    failed_saying(&job, "rank 1: exiting at step 3");
    assert!(!job.stdout.contains("ok:"), "{}", job.stdout);
}

#[test]
fn a_hung_rank_is_named_after_the_timeout() {
    let job = mpirun(
        2,
        "mpi_check",
        &[
            "--comm",
            "mpi",
            "--inject-fault",
            "1:3:hang",
            "--comm-timeout",
            "2",
        ],
    );
    failed_saying(&job, "rank 0: error: peer 1 sent nothing for 2 s");
}

#[test]
fn ranks_that_built_different_models_are_named_before_training() {
    let job = mpirun(3, "mpi_check", &["--comm", "mpi", "--mismatch-rank", "2"]);
    failed_saying(&job, "ranks [2] built other parameters");
}

#[test]
fn mnist_over_mpi_reports_from_rank_0_and_trains_like_local_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (over_mpi, in_one) = (dir.path().join("mpi.jsonl"), dir.path().join("local.jsonl"));
    let common = [
        "--backend",
        "cpu",
        "--epochs",
        "1",
        "--train-limit",
        "2000",
        "--hidden",
        "64",
    ];
    let mut args = common.to_vec();
    args.extend(["--comm", "mpi", "--metrics-out", over_mpi.to_str().unwrap()]);
    let job = mpirun(2, "mnist", &args);
    ok(&job, "mnist --comm mpi");
    // Rank 0 alone prints.
    assert_eq!(job.stdout.matches("epoch   1").count(), 1, "{}", job.stdout);
    assert_eq!(
        job.stdout.matches("done: 1 epochs").count(),
        1,
        "{}",
        job.stdout
    );
    assert!(job.stdout.contains("2 replicas"), "{}", job.stdout);

    let mut args = common.to_vec();
    args.extend(["--devices", "2", "--metrics-out", in_one.to_str().unwrap()]);
    ok(&local("mnist", &args), "mnist --devices 2");
    let metrics = |p: &Path| -> serde_json::Value {
        serde_json::from_str(std::fs::read_to_string(p).unwrap().trim()).unwrap()
    };
    let (a, b) = (metrics(&over_mpi), metrics(&in_one));
    for key in ["train_loss", "test_loss", "test_accuracy"] {
        assert_eq!(a[key], b[key], "{key}: {a} over MPI vs {b} in one process");
    }
}

/// Two ranks killed mid-epoch and resumed from rank 0's checkpoint (every rank reads the
/// same file) end with the uninterrupted job's parameters, bit for bit.
#[test]
fn an_mpi_job_resumes_from_its_checkpoint_like_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let job = |ckpt: &Path, extra: &[&str]| {
        let mut args = vec![
            "--comm",
            "mpi",
            "--backend",
            "cpu",
            "--epochs",
            "2",
            "--train-limit",
            "600",
            "--hidden",
            "32",
            "--optimizer",
            "adamw",
            "--checkpoint-every",
            "4steps",
            "--checkpoint-dir",
            ckpt.to_str().unwrap(),
        ];
        args.extend(extra);
        mpirun(2, "mnist", &args)
    };
    ok(&job(&whole, &[]), "uninterrupted job");
    let crashed = job(&split, &["--crash-after-step", "7"]);
    assert_ne!(crashed.code, Some(0), "{}", crashed.stderr);
    assert!(newest_file(&split).ends_with("epoch-0001-step-00000004.safetensors"));
    let resumed = job(&split, &["--resume"]);
    ok(&resumed, "resumed job");
    assert_eq!(
        resumed.stdout.matches("resumed from").count(),
        1,
        "{}",
        resumed.stdout
    );
    let last = newest_file(&whole);
    assert!(last.ends_with("epoch-0002-step-00000010.safetensors"));
    same_tensors(&last, &newest_file(&split)).unwrap();
}

/// A NaN in one rank's shard reaches every rank through the averaged gradients: all of
/// them stop at that step (no rank left waiting), or all skip it and train on alike.
#[test]
fn a_nan_on_one_rank_is_caught_on_every_rank() {
    let base = [
        "--comm",
        "mpi",
        "--backend",
        "cpu",
        "--epochs",
        "1",
        "--train-limit",
        "600",
        "--hidden",
        "16",
        "--inject-nan",
        "3",
    ];
    let stopped = mpirun(2, "mnist", &base);
    failed_saying(&stopped, "diverged at step 3 (epoch 1, batch 3)");
    assert!(stopped.took < JOB_LIMIT / 2, "took {:?}", stopped.took);
    let mut skip = base.to_vec();
    skip.extend(["--on-nonfinite", "skip"]);
    let skipped = mpirun(2, "mnist", &skip);
    ok(&skipped, "--on-nonfinite skip");
    assert!(
        skipped.stdout.contains("1 step skipped"),
        "{}",
        skipped.stdout
    );
}

/// The gpt example over MPI: two ranks train as two in-process replicas do.
#[test]
fn gpt_trains_over_mpi_as_two_in_process_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (over_mpi, local_m) = (dir.path().join("mpi.jsonl"), dir.path().join("local.jsonl"));
    let common = [
        "--steps",
        "30",
        "--eval-every",
        "30steps",
        "--held-out",
        "200",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--comm",
        "mpi",
        "--devices",
        "cpu",
        "--metrics-out",
        over_mpi.to_str().unwrap(),
    ]);
    let job = mpirun(2, "gpt", &args);
    ok(&job, "gpt over MPI");
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--devices",
        "cpu,cpu",
        "--metrics-out",
        local_m.to_str().unwrap(),
    ]);
    ok(&local("gpt", &args), "gpt on two replicas");
    let last = |p: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(p).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let (a, b) = (last(&over_mpi), last(&local_m));
    assert_eq!(a["devices"], 2, "{a}");
    let (la, lb) = (
        a["val_loss"].as_f64().unwrap(),
        b["val_loss"].as_f64().unwrap(),
    );
    assert!((la - lb).abs() < 1e-5, "over MPI {la}, in process {lb}");
}
