//! Do more threads help the CPU backend's memory-bound ops, and from what size? Times
//! each op (GELU, adds, bias sums, layer norm, softmax, a transpose, the optimizer steps)
//! on one thread and on all, at sizes on both sides of the parallel threshold
//! (`ringtrain::bench::op_threads`), and lists any op that ran slower on more threads.
//!
//!     cargo run --release --example op_threads
//!     cargo run --release --example op_threads -- --threads 4 --sizes 65536,262144 --json-out ops.json

use clap::Parser;
use ringtrain::bench::op_threads::{op_threads, OpThreadsConfig};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Time the CPU backend's memory-bound ops on one thread and on several")]
struct Args {
    /// The many-thread pool's size [default: all cores, at least 2].
    #[arg(long)]
    threads: Option<usize>,
    /// Elements per op (rounded up to whole rows of 64).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Seconds of calls per op, size and thread count.
    #[arg(long, default_value_t = 0.2)]
    min_time: f64,
    /// A slower time on more threads counts past this fraction.
    #[arg(long, default_value_t = 0.05)]
    tolerance: f64,
    /// Write every point as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let defaults = OpThreadsConfig::default();
    let cfg = OpThreadsConfig {
        threads: args.threads.unwrap_or(defaults.threads),
        sizes: args.sizes.unwrap_or(defaults.sizes),
        min_time: args.min_time,
        progress: true,
    };
    let result = op_threads(&cfg).and_then(|r| {
        if let Some(path) = &args.json_out {
            r.write_json(path)?;
        }
        Ok(r)
    });
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    print!("{r}");
    let slower = r.slower(args.tolerance);
    println!();
    if slower.is_empty() {
        println!(
            "No op at or above the parallel threshold ran more than {:.0}% slower on {} threads than on 1.",
            args.tolerance * 100.0,
            r.threads
        );
    } else {
        println!("Slower on {} threads than on 1:", r.threads);
        for p in slower {
            let (lo, hi) = p.speedup_range;
            println!(
                "  {} at {} elements: {:.2}x ({lo:.2}-{hi:.2} over the turns)",
                p.op, p.elements, p.speedup
            );
        }
    }
}
