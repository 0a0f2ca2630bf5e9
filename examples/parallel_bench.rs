//! ZeRO-1 beside plain data parallelism (optimizer state per replica, step time, bytes,
//! drift from plain), on an MLP and a small GPT with AdamW; then the MLP on the CPU and
//! a GPU (lavapipe where there is no hardware GPU) alone, together with equal shards,
//! and together auto-balanced. Prints markdown tables; `--json-out` writes the figures.
//!
//!     cargo run --release --example parallel_bench
//!     cargo run --release --example parallel_bench -- --replicas 2,4,8 --steps 20 --no-gpu

use clap::Parser;
use ringtrain::bench::{parallel_bench, write_json, ParallelBenchConfig};
use ringtrain::Device;
use std::error::Error;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "ZeRO-1 and heterogeneous replicas beside plain data parallelism")]
struct Args {
    /// Group sizes for ZeRO-1 (CPU replicas, threads of this process).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    replicas: Vec<usize>,
    /// Timed steps per run.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Skip the CPU-and-GPU runs.
    #[arg(long)]
    no_gpu: bool,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let gpu = if args.no_gpu {
        None
    } else {
        Some(Device::gpu()?)
    };
    let bench = parallel_bench(&ParallelBenchConfig {
        replicas: args.replicas.clone(),
        steps: args.steps,
        gpu,
        show_progress: true,
    })?;
    print!("{bench}");
    if let Some(path) = &args.json_out {
        write_json(path, &bench)?;
    }
    Ok(())
}
