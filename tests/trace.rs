//! Chrome traces as a user gets them: `--trace-out` on the examples, the Trainer's
//! setting, and the library's recorder.

mod support;

use ringtrain::kernels::gpu::testing::gpu_tests_enabled;
use ringtrain::trace::{self, Arg, TraceFile};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use support::run_example;

fn read(path: &std::path::Path) -> Vec<Value> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["traceEvents"].as_array().unwrap().clone()
}

fn spans<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["ph"] == "X" && e["name"] == name)
        .collect()
}

/// The names of the rows (threads) of process 1.
fn thread_names(events: &[Value]) -> HashMap<u64, String> {
    events
        .iter()
        .filter(|e| e["ph"] == "M" && e["name"] == "thread_name" && e["pid"] == 1)
        .map(|e| {
            let name = e["args"]["name"].as_str().unwrap().to_string();
            (e["tid"].as_u64().unwrap(), name)
        })
        .collect()
}

fn end(e: &Value) -> f64 {
    e["ts"].as_f64().unwrap() + e["dur"].as_f64().unwrap()
}

/// Two CPU replicas of the MNIST MLP: every kernel, GEMMs with their sizes and GFLOP/s,
/// each op's gradient, the optimizer, and each replica's bucket all-reduces on its own
/// communication thread, the first one running while backward still runs.
#[test]
fn mnist_on_two_replicas_writes_a_trace_of_the_steps_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnist.trace.json");
    let out = run_example(
        "mnist",
        &[
            "--devices",
            "2",
            "--steps",
            "8",
            "--trace-out",
            path.to_str().unwrap(),
            // Several steps: whether the communication thread is scheduled while
            // backward runs is up to the OS, on two cores shared with the other tests.
            "--trace-steps",
            "6",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("trace: ") && stdout.contains("perfetto"),
        "{stdout}"
    );
    let events = read(&path);
    assert_eq!(spans(&events, "train step").len(), 6, "--trace-steps 6");

    let gemms = spans(&events, "gemm");
    assert!(!gemms.is_empty());
    let shapes: HashSet<(u64, u64, u64)> = gemms
        .iter()
        .map(|g| {
            let a = &g["args"];
            assert!(a["gflops"].as_f64().unwrap() > 0.0, "{g}");
            assert_eq!(g["cat"], "cpu");
            (
                a["m"].as_u64().unwrap(),
                a["n"].as_u64().unwrap(),
                a["k"].as_u64().unwrap(),
            )
        })
        .collect();
    // The first layer's forward (batch rows of 784 pixels into 512 units) and its weight
    // gradient, per replica (each takes half of the 128-sample batch).
    assert!(shapes.contains(&(64, 512, 784)), "{shapes:?}");
    assert!(shapes.contains(&(512, 784, 64)), "{shapes:?}");
    for name in [
        "grad linear",
        "grad cross_entropy",
        "backward",
        "forward",
        "sgd step",
    ] {
        assert!(!spans(&events, name).is_empty(), "no {name} span");
    }

    let names = thread_names(&events);
    let row = |e: &Value| names[&e["tid"].as_u64().unwrap()].clone();
    let reduces = spans(&events, "all_reduce");
    let comm_rows: HashSet<String> = reduces.iter().map(|e| row(e)).collect();
    assert_eq!(
        comm_rows,
        HashSet::from(["comm 0".to_string(), "comm 1".to_string()]),
        "each replica's all-reduce on its communication thread, one row per replica"
    );
    for r in &reduces {
        assert!(r["args"]["bytes"].as_u64().unwrap() > 0, "{r}");
    }
    // The MLP's 2 MB of gradients fill two buckets (the first is 1 MiB): the first is
    // all-reduced while the replica's backward is still producing the second.
    let backward: Vec<&Value> = spans(&events, "backward")
        .into_iter()
        .filter(|b| row(b) == "replica 0")
        .collect();
    let overlaps = reduces.iter().filter(|r| row(r) == "comm 0").any(|r| {
        backward.iter().any(|b| {
            let t = r["ts"].as_f64().unwrap();
            t > b["ts"].as_f64().unwrap() && t < end(b)
        })
    });
    assert!(overlaps, "no all-reduce started during a backward pass");
}

/// On the GPU, every kernel dispatch is timed with timestamp queries (lavapipe has them)
/// and drawn on the device's own row, beside the host threads that encoded it.
#[test]
fn gpu_kernels_appear_on_the_device_row_with_their_gpu_time() {
    if !gpu_tests_enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.trace.json");
    let out = run_example(
        "mnist",
        &[
            "--backend",
            "gpu",
            "--hidden",
            "32",
            "--steps",
            "2",
            "--trace-out",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = read(&path);
    let device_row = events
        .iter()
        .find(|e| e["ph"] == "M" && e["pid"] == 2 && e["name"] == "thread_name")
        .expect("a device row");
    assert!(
        device_row["args"]["name"]
            .as_str()
            .unwrap()
            .starts_with("GPU device"),
        "{device_row}"
    );
    let kernels: Vec<&Value> = events
        .iter()
        .filter(|e| e["ph"] == "X" && e["pid"] == 2)
        .collect();
    let gemms: Vec<&&Value> = kernels
        .iter()
        .filter(|e| e["name"].as_str().unwrap().starts_with("Gemm"))
        .collect();
    // Forward, input and weight gradients of 2 layers, twice.
    assert!(gemms.len() >= 8, "{} GEMM kernels", gemms.len());
    assert!(gemms.iter().all(|g| g["dur"].as_f64().unwrap() > 0.0));
    assert!(kernels.iter().any(|k| k["name"] == "Sgd"));
    // The host side: what encoded them, per op.
    assert!(!spans(&events, "encode gemm").is_empty());
}

/// The recorder on its own: arguments keep their types, nothing is recorded when off,
/// and one recording at a time.
#[test]
fn the_recorder_keeps_typed_arguments_and_refuses_a_second_recording() {
    let dir = tempfile::tempdir().unwrap();
    drop(trace::span("test", "before").arg("x", || 1usize));
    let file = TraceFile::start(dir.path().join("t.json")).unwrap();
    assert!(TraceFile::start(dir.path().join("u.json")).is_err());
    {
        let mut s = trace::span("test", "work").arg("rows", || 3usize);
        s.set("rate", || 2.5f64);
        let _inner = trace::span("test", "inner").arg("what", || "text");
    }
    std::thread::Builder::new()
        .name("helper".into())
        .spawn(|| drop(trace::span("test", "elsewhere")))
        .unwrap()
        .join()
        .unwrap();
    let summary = file.finish().unwrap();
    assert_eq!(summary.threads, 2);
    let events = read(&summary.path);
    assert!(spans(&events, "before").is_empty(), "recorded while off");
    let work = spans(&events, "work")[0];
    assert_eq!(work["args"]["rows"], 3);
    assert_eq!(work["args"]["rate"], 2.5);
    let inner = spans(&events, "inner")[0];
    assert_eq!(inner["args"]["what"], "text");
    assert!(inner["ts"].as_f64() >= work["ts"].as_f64() && end(inner) <= end(work));
    let names = thread_names(&events);
    let elsewhere = spans(&events, "elsewhere")[0];
    assert_eq!(names[&elsewhere["tid"].as_u64().unwrap()], "helper");
    // Device timelines, as GPU timestamps give them, go to a process of their own.
    let t = TraceFile::start(dir.path().join("gpu.json")).unwrap();
    let args = vec![("groups", Arg::Int(4))];
    trace::complete(
        "gpu",
        "kernel",
        trace::Track::Device("gpu:0".into()),
        10,
        5,
        args,
    );
    let events = read(&t.finish().unwrap().path);
    let k = spans(&events, "kernel")[0];
    assert_eq!(
        (k["pid"].as_u64(), k["dur"].as_f64()),
        (Some(2), Some(0.005))
    );
    // A folder that does not exist is refused before any training starts.
    let missing = dir.path().join("no/such/dir/t.json");
    let err = TraceFile::start(&missing).unwrap_err().to_string();
    assert!(err.contains("no such folder"), "{err}");
}
