//! Local SGD against gradient averaging on MNIST (4 CPU replicas by default): test
//! accuracy and bytes each replica sends per step, for each synchronization period H,
//! with the inner optimizer state averaged or kept per replica, and DiLoCo's outer
//! optimizer at the longest H. Prints a markdown table; writes JSON and an SVG of
//! accuracy by epoch.
//!
//!     cargo run --release --example local_sgd
//!     cargo run --release --example local_sgd -- --sync-every 2,8,32 --seeds 0 --epochs 5

use clap::Parser;
use ringtrain::bench::{local_sgd_sweep, write_json, LocalSgdSweepConfig};
use std::error::Error;
use std::path::PathBuf;

#[path = "support/curves_plot.rs"]
mod curves_plot;

#[derive(Parser, Debug)]
#[command(about = "Local SGD against per-step gradient averaging on MNIST")]
struct Args {
    /// A folder with the four MNIST IDX files [default: data/mnist-10k].
    #[arg(long, default_value = "data/mnist-10k")]
    data_dir: PathBuf,
    /// CPU replicas (threads of this process).
    #[arg(long, default_value_t = 4)]
    replicas: usize,
    #[arg(long, default_value_t = 10)]
    epochs: u32,
    /// Seeds, each a run of every variant.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Synchronization periods H to try.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    sync_every: Vec<usize>,
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// The accuracy-by-epoch plot.
    #[arg(long, default_value = "local_sgd.svg")]
    svg_out: PathBuf,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let sweep = local_sgd_sweep(&LocalSgdSweepConfig {
        data_dir: args.data_dir.clone(),
        replicas: args.replicas,
        epochs: args.epochs,
        seeds: args.seeds.clone(),
        sync_every: args.sync_every.clone(),
        ..LocalSgdSweepConfig::default()
    })?;
    println!("{sweep}");
    if let Some(path) = &args.json_out {
        write_json(path, &sweep)?;
    }
    let curves: Vec<curves_plot::Curve> = sweep
        .runs
        .iter()
        .map(|r| curves_plot::Curve {
            label: format!("{} ({:.2} MB/step)", r.label, r.bytes_per_step / 1e6),
            points: (1..)
                .zip(&r.accuracy_by_epoch)
                .map(|(e, &a)| (f64::from(e), a))
                .collect(),
        })
        .collect();
    let title = format!(
        "MNIST MLP, {} CPU replicas: local SGD against gradient averaging (mean of {} seeds)",
        sweep.replicas,
        sweep.seeds.len()
    );
    curves_plot::write_svg(
        &args.svg_out,
        &title,
        ("epoch", "test accuracy (%)"),
        &curves,
    )?;
    println!("plot: {}", args.svg_out.display());
    Ok(())
}
