//! Score a stream of inputs with a trained model: rows from a file or stdin (IDX, CSV or
//! JSON lines), or from many TCP clients at once (`--listen`), batched, one JSON answer
//! per row. Everything here is ringtrain's `infer` module; this is its command line.
//!
//!     cargo run --release --example mnist -- --checkpoint-dir runs/mlp
//!     cargo run --release --example infer -- --checkpoint runs/mlp \
//!         --input data/mnist-10k/t10k-images-idx3-ubyte.gz --format idx > predictions.jsonl
//!     echo '{"id": 1, "features": [0, 0, ...]}' | cargo run --release --example infer -- \
//!         --checkpoint runs/mlp --format jsonl --pixels
//!     cargo run --release --example infer -- --checkpoint runs/mlp --quantize int8 --out mlp-int8.safetensors
//!     cargo run --release --example infer -- --checkpoint mlp-int8.safetensors --listen 127.0.0.1:7878
//!     cargo run --release --example infer -- --ensemble runs/bag/member-0,runs/bag/member-1 --input rows.csv --format csv
//!
//! A bad row (not numbers, the wrong count, NaN, a line over --max-line-bytes) gets an
//! error line (`{"error": ...}`) and the rest are served. Throughput and p50/p99 latency
//! go to stderr at the end (for --listen, at Ctrl-C).

use clap::Parser;
use ringtrain::checkpoint::Checkpoint;
use ringtrain::infer::{
    run_stream, serve, BatchConfig, Batcher, Ensemble, Output, Predictor, RowFormat, RowSpec,
    Scorer, StreamConfig,
};
use ringtrain::train::{set_threads, DeviceName};
use ringtrain::{Device, Quantization};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    about = "Score rows with a ringtrain checkpoint: a stream, a TCP server, or a quantized export"
)]
struct Args {
    /// A checkpoint file, or a Trainer's checkpoint folder (its newest checkpoint).
    #[arg(
        long,
        required_unless_present = "ensemble",
        conflicts_with = "ensemble"
    )]
    checkpoint: Option<PathBuf>,
    /// Several checkpoints (files or folders), comma separated, whose probabilities
    /// are averaged: a bag's members, or models trained at separate sites.
    #[arg(long, value_delimiter = ',')]
    ensemble: Option<Vec<PathBuf>>,
    /// Write the checkpoint with its linear, convolution and attention weights stored
    /// as int8 (per output channel), f16 or bf16 to --out, and stop.
    #[arg(long, requires = "out")]
    quantize: Option<Quantization>,
    #[arg(long, requires = "quantize")]
    out: Option<PathBuf>,
    /// Store the weights as int8, f16 or bf16 in memory before serving (an f32
    /// checkpoint; a quantized one is served as it is).
    #[arg(long, conflicts_with = "quantize")]
    weights: Option<Quantization>,
    /// Rows to score: a file, or - for stdin.
    #[arg(long, default_value = "-")]
    input: String,
    #[arg(long, value_enum, default_value = "csv")]
    format: RowFormat,
    /// CSV / JSON values are raw 0-255 pixels, normalised as the MNIST loader does
    /// (otherwise they are the model's input features as given).
    #[arg(long)]
    pixels: bool,
    /// Answer with the class and its probability, or the model's output vector.
    #[arg(long, value_enum, default_value = "class")]
    output: Output,
    /// Rows a model call takes at most.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    max_batch: u32,
    /// How long the first row of a batch waits for more, in milliseconds.
    #[arg(long, default_value_t = 2.0)]
    max_wait_ms: f64,
    /// The longest line accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_line_bytes: usize,
    /// Serve the line protocol on this address (127.0.0.1:7878) instead of reading
    /// --input: many clients at once, rows batched across them.
    #[arg(long)]
    listen: Option<String>,
    /// cpu, gpu or gpu:K.
    #[arg(long, default_value = "cpu")]
    device: DeviceName,
    /// CPU threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> ringtrain::Result<()> {
    if let Some(n) = args.threads {
        set_threads(n)?;
    }
    let device = args.device.open()?;
    if let (Some(format), Some(out)) = (args.quantize, &args.out) {
        return export(args, format, out);
    }
    let scorer = load(args, &device)?;
    eprintln!("infer: {}", scorer.describe());
    if !(args.max_wait_ms.is_finite() && args.max_wait_ms >= 0.0) {
        return Err(ringtrain::Error::InvalidArgument(
            "--max-wait-ms is a time of 0 or more".into(),
        ));
    }
    let stream = StreamConfig {
        format: args.format,
        rows: RowSpec {
            features: scorer.inputs(),
            pixels: args.pixels,
        },
        max_line_bytes: args.max_line_bytes,
    };
    let batcher = Batcher::start(
        scorer,
        BatchConfig {
            max_batch: args.max_batch as usize,
            max_wait: Duration::from_secs_f64(args.max_wait_ms / 1000.0),
            output: args.output,
        },
    );
    let counts = match &args.listen {
        Some(addr) => listen(addr, stream, &batcher)?,
        None => read_input(args, stream, &batcher)?,
    };
    let stats = batcher.finish();
    eprintln!("infer: {counts}; {}", stats.summary());
    Ok(())
}

fn load(args: &Args, device: &Device) -> ringtrain::Result<Box<dyn Scorer>> {
    let quantized = |mut p: Predictor| -> ringtrain::Result<Predictor> {
        if let Some(format) = args.weights {
            if p.quantization().is_none() {
                p.quantize(format)?;
            }
        }
        Ok(p)
    };
    Ok(match (&args.checkpoint, &args.ensemble) {
        (_, Some(paths)) => {
            let members = paths
                .iter()
                .map(|p| quantized(Predictor::load(p, device)?))
                .collect::<ringtrain::Result<Vec<_>>>()?;
            Box::new(Ensemble::new(members)?)
        }
        (Some(path), None) => Box::new(quantized(Predictor::load(path, device)?)?),
        (None, None) => unreachable!("clap requires one"),
    })
}

fn export(args: &Args, format: Quantization, out: &PathBuf) -> ringtrain::Result<()> {
    let path = args.checkpoint.as_ref().ok_or_else(|| {
        ringtrain::Error::InvalidArgument("--quantize takes one --checkpoint".into())
    })?;
    let predictor = Predictor::load(path, &Device::cpu())?;
    predictor.export(format)?.save(out)?;
    let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    // The same model with f32 weights, as a file would hold it.
    let f32_bytes = Checkpoint::of_module(predictor.model())?.to_bytes()?.len();
    eprintln!(
        "infer: {} -> {} ({format} weights): {} bytes, {:.3}x the f32 model's {} bytes",
        path.display(),
        out.display(),
        size(out),
        size(out) as f64 / f32_bytes as f64,
        f32_bytes
    );
    Ok(())
}

fn read_input(args: &Args, stream: StreamConfig, batcher: &Batcher) -> ringtrain::Result<String> {
    let out = std::io::stdout();
    let counts = if args.input == "-" {
        run_stream(std::io::stdin().lock(), stream, &batcher.sender(), out)
    } else {
        let file = std::fs::File::open(&args.input)
            .map_err(|e| ringtrain::Error::msg(format!("cannot read {}: {e}", args.input)))?;
        run_stream(
            std::io::BufReader::new(file),
            stream,
            &batcher.sender(),
            out,
        )
    };
    let counts = match counts {
        Ok(c) => c,
        // The reader of stdout went away (`| head`): nothing more to do.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok("stdout closed".into()),
        Err(e) => return Err(ringtrain::Error::msg(e)),
    };
    Ok(format!(
        "{} rows read, {} rejected",
        counts.rows, counts.rejected
    ))
}

fn listen(addr: &str, stream: StreamConfig, batcher: &Batcher) -> ringtrain::Result<String> {
    // I/O only: two threads carry every connection; the model runs on the batcher's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(ringtrain::Error::msg)?;
    let sender = batcher.sender();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ringtrain::Error::msg(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(ringtrain::Error::msg)?;
        eprintln!("infer: listening on {local} (Ctrl-C stops)");
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let counts = serve(listener, stream, sender, shutdown)
            .await
            .map_err(ringtrain::Error::msg)?;
        use std::sync::atomic::Ordering::Relaxed;
        Ok(format!(
            "{} connections, {} requests, {} rejected",
            counts.connections.load(Relaxed),
            counts.requests.load(Relaxed),
            counts.rejected.load(Relaxed)
        ))
    })
}
