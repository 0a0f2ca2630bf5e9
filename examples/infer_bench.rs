//! Inference beside its peers, on this machine: the MNIST MLP and CNN, f32 and int8
//! weights, at batch 1 (latency) and batch 64 (throughput), in ringtrain, PyTorch eager
//! and onnxruntime on the same weights and inputs, each in a process of its own (so that
//! its peak memory is its own). Trains both models first on the embedded digits (one
//! epoch each) unless --work-dir already holds them.
//!
//!     cargo run --release --example infer_bench -- --python /path/to/venv/bin/python \
//!         --json-out docs/bench/infer.json --svg-out docs/bench/infer.svg
//!
//! Without --python only ringtrain is measured.

#[path = "support/bars_plot.rs"]
mod bars_plot;

use clap::Parser;
use ringtrain::bench::infer::{peak_rss_bytes, time_predictor, InferPoint};
use ringtrain::checkpoint::Checkpoint;
use ringtrain::data::{InMemoryBatch, Mnist};
use ringtrain::infer::Predictor;
use ringtrain::optim::{Sgd, SgdConfig};
use ringtrain::prelude::*;
use ringtrain::train::{set_threads, Backend, Devices};
use ringtrain::zoo::{Activation, ModelSpec, MODEL_KEY};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser, Debug)]
#[command(about = "Inference latency and throughput: ringtrain beside PyTorch and onnxruntime")]
struct Args {
    /// Where the models, their int8 exports and the inputs are kept [default: a temporary folder].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// A Python with torch and onnxruntime (scripts/requirements-peers.txt), for the peers.
    #[arg(long)]
    python: Option<PathBuf>,
    /// CPU threads of every process [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Timed calls at batch 1 (an eighth of them at batch 64).
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    #[arg(long)]
    json_out: Option<PathBuf>,
    #[arg(long)]
    svg_out: Option<PathBuf>,
    /// (internal) Time this checkpoint in this process and print its JSON.
    #[arg(long, hide = true)]
    worker: Option<PathBuf>,
    #[arg(long, hide = true)]
    inputs: Option<PathBuf>,
}

/// One process's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    runtime: String,
    #[serde(default)]
    version: String,
    model: String,
    format: String,
    threads: usize,
    results: Vec<InferPoint>,
    peak_rss_bytes: u64,
}

const HIDDEN: [usize; 2] = [512, 256];

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    set_threads(threads)?;
    if let Some(checkpoint) = &args.worker {
        let inputs = args.inputs.as_ref().ok_or("--worker needs --inputs")?;
        let run = worker(checkpoint, inputs, threads, args.calls)?;
        println!("{}", serde_json::to_string(&run)?);
        return Ok(());
    }
    // Removed when it goes out of scope.
    let temp = tempfile::tempdir()?;
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let inputs = prepare(&dir)?;
    let mut runs = Vec::new();
    for model in ["mlp", "cnn"] {
        for format in ["f32", "int8"] {
            let file = dir.join(format!("{model}-{format}.safetensors"));
            eprintln!("ringtrain {model} {format} ...");
            let out = Command::new(std::env::current_exe()?)
                .args(["--worker", path(&file), "--inputs", path(&inputs)])
                .args([
                    "--threads",
                    &threads.to_string(),
                    "--calls",
                    &args.calls.to_string(),
                ])
                .output()?;
            runs.push(parse_run(&out)?);
            if let Some(python) = &args.python {
                for runtime in ["torch", "onnxruntime"] {
                    eprintln!("{runtime} {model} {format} ...");
                    let script =
                        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/infer_peer.py");
                    let f32_file = dir.join(format!("{model}-f32.safetensors"));
                    let out = Command::new(python)
                        .arg(&script)
                        .args([
                            "--checkpoint",
                            path(&f32_file),
                            "--model",
                            model,
                            "--runtime",
                            runtime,
                        ])
                        .args(["--format", format, "--threads", &threads.to_string()])
                        .args([
                            "--inputs",
                            path(&inputs),
                            "--calls",
                            &args.calls.to_string(),
                        ])
                        .args(["--hidden", &HIDDEN.map(|h| h.to_string()).join(",")])
                        .output()?;
                    runs.push(parse_run(&out)?);
                }
            }
        }
    }
    print_table(&runs, threads);
    if let Some(path) = &args.json_out {
        let report = serde_json::json!({ "cpu": ringtrain::bench::cpu_name(), "threads": threads, "runs": runs });
        ringtrain::bench::write_json(path, &report)?;
    }
    if let Some(path) = &args.svg_out {
        let bars: Vec<bars_plot::Bar> = runs
            .iter()
            .map(|r| bars_plot::Bar {
                label: format!("{} {} {}", r.model, r.format, r.runtime),
                value: r.results[0].p50_us,
                group: ["ringtrain", "PyTorch eager", "onnxruntime"]
                    .iter()
                    .position(|n| *n == r.runtime)
                    .unwrap_or(3),
            })
            .collect();
        let title = format!("Batch-1 latency (median), {threads} threads, lower is better");
        bars_plot::write_svg(path, &title, "microseconds per call", &bars)?;
    }
    Ok(())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

fn parse_run(out: &std::process::Output) -> Result<Run, Box<dyn std::error::Error>> {
    if !out.status.success() {
        return Err(format!(
            "a measurement failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .last()
        .ok_or("a measurement printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// The models (trained if missing), their f32 and int8 files, and the test digits as
/// raw f32 rows.
fn prepare(dir: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k");
    let mnist = Mnist::load(&data)?;
    let specs = [
        (
            "mlp",
            ModelSpec::Mlp {
                inputs: 784,
                hidden: HIDDEN.to_vec(),
                outputs: 10,
                activation: Activation::Relu,
            },
        ),
        (
            "cnn",
            ModelSpec::Cnn {
                channels: 1,
                height: 28,
                width: 28,
                classes: 10,
            },
        ),
    ];
    for (name, spec) in specs {
        let f32_file = dir.join(format!("{name}-f32.safetensors"));
        if !f32_file.exists() {
            eprintln!("training the {name} for one epoch ...");
            let mut config = TrainConfig {
                devices: Devices::of(Backend::Cpu, Some(1)),
                epochs: Some(1),
                quiet: true,
                ..TrainConfig::default()
            };
            config.model = Some(spec.clone());
            let mut trainer = Trainer::new(config)?;
            let trained = trainer.fit(
                |device| {
                    let model = spec.build(device, &mut rng_from_seed(0))?;
                    let sgd = Sgd::new(
                        model.parameters(),
                        SgdConfig {
                            lr: 0.05,
                            momentum: 0.9,
                            ..SgdConfig::default()
                        },
                    )?;
                    Ok((model, sgd))
                },
                &mnist.train,
                |model, device, batch: &InMemoryBatch| {
                    model
                        .forward(&batch.inputs(device)?)?
                        .cross_entropy(batch.labels()?)
                },
            )?;
            let mut checkpoint = Checkpoint::of_module(&trained.model)?;
            checkpoint.set_metadata(MODEL_KEY, spec.to_json());
            checkpoint.save(&f32_file)?;
        }
        let predictor = Predictor::load(&f32_file, &Device::cpu())?;
        predictor
            .export(ringtrain::Quantization::Int8)?
            .save(&dir.join(format!("{name}-int8.safetensors")))?;
    }
    let inputs = dir.join("inputs.f32");
    let bytes: Vec<u8> = mnist
        .test
        .images
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&inputs, bytes)?;
    Ok(inputs)
}

fn worker(
    checkpoint: &Path,
    inputs: &Path,
    threads: usize,
    calls: usize,
) -> Result<Run, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(inputs)?;
    let rows: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let predictor = Predictor::load(checkpoint, &Device::cpu())?;
    let results = vec![
        time_predictor(&predictor, &rows, 1, calls)?,
        time_predictor(&predictor, &rows, 64, (calls / 8).max(50))?,
    ];
    let spec = predictor.spec().ok_or("the checkpoint names no model")?;
    Ok(Run {
        runtime: "ringtrain".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model: match spec {
            ModelSpec::Mlp { .. } => "mlp".into(),
            ModelSpec::Cnn { .. } => "cnn".into(),
        },
        format: predictor.quantization().map_or("f32", |q| q.name()).into(),
        threads,
        results,
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
    })
}

fn print_table(runs: &[Run], threads: usize) {
    println!(
        "Inference on {} ({threads} threads); latency per call, median (p99):\n",
        ringtrain::bench::cpu_name()
    );
    println!("| model | weights | runtime | batch 1 | batch 64 | rows/s at 64 | peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in runs {
        let (one, many) = (&r.results[0], &r.results[1]);
        println!(
            "| {} | {} | {} | {:.1} us ({:.1}) | {:.1} us ({:.1}) | {:.0} | {:.0} MiB |",
            r.model,
            r.format,
            r.runtime,
            one.p50_us,
            one.p99_us,
            many.p50_us,
            many.p99_us,
            many.rows_per_sec,
            r.peak_rss_bytes as f64 / (1 << 20) as f64
        );
    }
    // ringtrain against the faster peer, per model and format.
    let peers: Vec<&Run> = runs.iter().filter(|r| r.runtime != "ringtrain").collect();
    if peers.is_empty() {
        return;
    }
    println!("\n| model | weights | batch-1 latency, best peer / ringtrain | batch-64 rows/s, ringtrain / best peer |");
    println!("| --- | --- | --- | --- |");
    for ours in runs.iter().filter(|r| r.runtime == "ringtrain") {
        let same: Vec<&&Run> = peers
            .iter()
            .filter(|p| p.model == ours.model && p.format == ours.format)
            .collect();
        let best_latency = same
            .iter()
            .map(|p| p.results[0].p50_us)
            .fold(f64::INFINITY, f64::min);
        let best_rate = same
            .iter()
            .map(|p| p.results[1].rows_per_sec)
            .fold(0.0, f64::max);
        println!(
            "| {} | {} | {:.2}x | {:.2}x |",
            ours.model,
            ours.format,
            best_latency / ours.results[0].p50_us,
            ours.results[1].rows_per_sec / best_rate
        );
    }
}
