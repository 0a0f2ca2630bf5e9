//! Checks a multi-process setup end to end: MPI's collectives through ringtrain, then a
//! short data-parallel training run whose replicas must all end with bitwise-identical
//! parameters. Run it before a long job on a new cluster:
//!
//!     cargo build --release --features mpi --examples
//!     mpirun -np 4 target/release/examples/mpi_check --comm mpi
//!     mpirun -np 2 target/release/examples/mpi_check --comm hierarchical --devices 2
//!     target/release/examples/mpi_check --devices 4        # the in-process ring alone
//!
//! `--params-out DIR` writes every replica's final parameters (`rank-R.f32`, little-endian
//! f32s in the model's parameter order), so that runs can be compared file by file; the
//! tests compare an MPI run with the in-process ring this way. `--inject-fault` makes one
//! process fail on purpose, to see how the others stop.

use clap::Parser;
use ringtrain::comm::RingConfig;
use ringtrain::parallel::{DataParallel, DataParallelConfig, LocalSgd, OuterOptimizer};
use ringtrain::prelude::*;
use ringtrain::train::{Cluster, CommArgs, CommKind};
use ringtrain::zoo::{mlp, Activation};
use std::path::{Path, PathBuf};
use std::str::FromStr;

const FEATURES: usize = 16;
const CLASSES: usize = 4;

#[derive(Parser, Debug)]
#[command(about = "Check that ringtrain's data parallelism works across this run's processes")]
struct Args {
    #[command(flatten)]
    comm: CommArgs,
    /// Replicas in this process (--comm local or hierarchical).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    devices: u32,
    /// Training steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Global batch size (split over all replicas).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Write each replica's final parameters to DIR/rank-R.f32.
    #[arg(long)]
    params_out: Option<PathBuf>,
    /// Make process RANK fail at STEP: `RANK:STEP:error` (its loss returns an error),
    /// `RANK:STEP:exit` (the process exits at once), `RANK:STEP:hang` (it stops
    /// responding; the others time out after --comm-timeout), or `RANK:0:build` (its
    /// model cannot be built, before training).
    #[arg(long)]
    inject_fault: Option<Fault>,
    /// Process RANK builds a wider model than the others (to see the layout check).
    #[arg(long)]
    mismatch_rank: Option<usize>,
    /// Local SGD with DiLoCo's outer optimizer, synchronizing every H steps (and once
    /// more at the end) instead of averaging gradients every step.
    #[arg(long, value_name = "H")]
    sync_every: Option<usize>,
    /// ZeRO stage: 1 shards the optimizer state across the replicas.
    #[arg(long, default_value_t = 0)]
    zero: u8,
}

#[derive(Debug, Clone, Copy)]
enum FaultKind {
    Error,
    Exit,
    Hang,
    Build,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    rank: usize,
    step: usize,
    kind: FaultKind,
}

impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not RANK:STEP:error|exit|hang|build");
        let parts: Vec<&str> = s.split(':').collect();
        let [rank, step, kind] = parts[..] else {
            return Err(bad());
        };
        Ok(Fault {
            rank: rank.parse().map_err(|_| bad())?,
            step: step.parse().map_err(|_| bad())?,
            kind: match kind {
                "error" => FaultKind::Error,
                "exit" => FaultKind::Exit,
                "hang" => FaultKind::Hang,
                "build" => FaultKind::Build,
                _ => return Err(bad()),
            },
        })
    }
}

fn main() {
    let args = Args::parse();
    Cluster::main(&args.comm.config(), |cluster| run(&args, cluster));
}

/// The same synthetic classification set on every process: `rows` inputs and labels.
fn data(rows: usize) -> ringtrain::Result<(Vec<f32>, Vec<u32>)> {
    let x = Tensor::rand_uniform(
        -1.0,
        1.0,
        (rows, FEATURES),
        &mut rng_from_seed(42),
        &Device::cpu(),
    )?
    .to_vec()?;
    let labels = x
        .chunks(FEATURES)
        .map(|r| {
            let s: f32 = r[..4].iter().sum();
            ((s + 4.0) * CLASSES as f32 / 8.0).clamp(0.0, CLASSES as f32 - 1.0) as u32
        })
        .collect();
    Ok((x, labels))
}

fn run(args: &Args, cluster: &Cluster) -> ringtrain::Result<()> {
    let say = |line: String| {
        if cluster.is_root() {
            println!("{line}");
        }
    };
    say(format!("mpi_check: {}", cluster.describe()));
    #[cfg(feature = "mpi")]
    if cluster.config.kind != CommKind::Local {
        check_collectives(args, cluster)?;
        say("collectives: all-reduce (every algorithm, f32 and bf16), reduce, reduce-scatter, all-gather, broadcast and barrier give exact results".into());
    }

    let local = args.devices as usize;
    if cluster.config.kind == CommKind::Mpi && local != 1 {
        return Err("--comm mpi runs one replica per process (--devices 1)".into());
    }
    let hidden = if args.mismatch_rank == Some(cluster.rank) {
        48
    } else {
        32
    };
    let fails_to_build = args
        .inject_fault
        .is_some_and(|f| f.rank == cluster.rank && matches!(f.kind, FaultKind::Build));
    let build = |device: &Device| -> ringtrain::Result<_> {
        if fails_to_build {
            return Err(ringtrain::Error::InvalidArgument(
                "injected failure building the model".into(),
            ));
        }
        let model = mlp(
            FEATURES,
            &[hidden],
            CLASSES,
            Activation::Tanh,
            device,
            &mut rng_from_seed(7),
        )?;
        let opt = Sgd::new(
            model.parameters(),
            SgdConfig {
                lr: 0.1,
                momentum: 0.9,
                ..SgdConfig::default()
            },
        )?;
        Ok((model, opt))
    };
    let config = DataParallelConfig {
        // Small buckets: several all-reduces per step, overlapping backward.
        first_bucket_bytes: 1 << 10,
        bucket_bytes: 4 << 10,
        ring: RingConfig {
            timeout: args.comm.timeout(),
            ..RingConfig::default()
        },
        grad_compression: args.comm.grad_compression,
        local_sgd: args
            .sync_every
            .map(|h| LocalSgd::every(h).with_outer(OuterOptimizer::diloco())),
        zero: args.zero,
        ..DataParallelConfig::default()
    };
    let devices: Vec<Device> = (0..local).map(|_| Device::cpu()).collect();
    let mut dp = match cluster.communicators(local)? {
        None => DataParallel::new(devices, build, config)?,
        Some(comms) => DataParallel::with_communicators(devices, comms, build, config)?,
    };
    let batch = args.batch as usize;
    let (x, labels) = data(args.steps * batch)?;
    let mut losses = Vec::with_capacity(args.steps);
    for step in 0..args.steps {
        let fault = args
            .inject_fault
            .filter(|f| f.rank == cluster.rank && f.step == step);
        match fault.map(|f| f.kind) {
            Some(FaultKind::Exit) => {
                cluster.eprint(&format!("exiting at step {step} (injected fault)"));
                std::process::exit(3);
            }
            Some(FaultKind::Hang) => {
                cluster.eprint(&format!("hanging at step {step} (injected fault)"));
                loop {
                    std::thread::park();
                }
            }
            _ => {}
        }
        let at = step * batch;
        let loss = dp.step(batch, |model, device, rows| {
            if fault.is_some() {
                return Err(ringtrain::Error::InvalidArgument(format!(
                    "injected failure at step {step}"
                )));
            }
            let (lo, hi) = (at + rows.start, at + rows.end);
            let xs = Tensor::from_slice(
                &x[lo * FEATURES..hi * FEATURES],
                (hi - lo, FEATURES),
                device,
            )?;
            model.forward(&xs)?.cross_entropy(&labels[lo..hi])
        })?;
        losses.push(loss);
    }
    dp.sync()?;

    let replicas: Vec<Vec<f32>> = (0..dp.size())
        .map(|i| flat_parameters(dp.replica(i).expect("local replica")))
        .collect::<ringtrain::Result<_>>()?;
    let hash = fingerprint(&replicas[0]);
    if let Some(i) = replicas.iter().position(|p| fingerprint(p) != hash) {
        return Err(format!("local replica {i} differs from local replica 0").into());
    }
    #[cfg(feature = "mpi")]
    if cluster.config.kind != CommKind::Local {
        agree_across_processes(args, cluster, hash)?;
    }
    if let Some(dir) = &args.params_out {
        std::fs::create_dir_all(dir)?;
        for (rank, p) in dp.ranks().into_iter().zip(&replicas) {
            write_atomically(&dir.join(format!("rank-{rank}.f32")), p)?;
        }
    }
    say(format!(
        "ok: {} replicas in {} process{} hold identical parameters after {} steps \
         (loss {:.4} -> {:.4}, parameter hash {hash:016x})",
        dp.group_size(),
        cluster.processes,
        if cluster.processes == 1 { "" } else { "es" },
        args.steps,
        losses.first().copied().unwrap_or(f32::NAN),
        losses.last().copied().unwrap_or(f32::NAN),
    ));
    Ok(())
}

fn flat_parameters(model: &impl Module) -> ringtrain::Result<Vec<f32>> {
    let mut flat = Vec::new();
    for p in model.parameters() {
        flat.extend(p.to_vec()?);
    }
    Ok(flat)
}

/// FNV-1a over the parameters' bits.
fn fingerprint(values: &[f32]) -> u64 {
    values.iter().fold(0xcbf2_9ce4_8422_2325, |h, v| {
        v.to_bits()
            .to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    })
}

fn write_atomically(path: &Path, values: &[f32]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("f32.{}.tmp", std::process::id()));
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Every collective over every process, with each all-reduce algorithm forced in turn
/// and with MPI's own, on values whose results are exact in f32 (and bf16), at lengths of
/// one eager piece and of several messages: all-reduce (f32 and bf16 on the wire),
/// reduce, reduce-scatter and all-gather with uneven parts, broadcast and barrier.
#[cfg(feature = "mpi")]
fn check_collectives(args: &Args, cluster: &Cluster) -> ringtrain::Result<()> {
    use ringtrain::comm::mpi::{MpiAlgorithm, MpiConfig};
    use ringtrain::comm::{Algorithm, Communicator, Thresholds};
    let (p, r) = (cluster.processes, cluster.rank);
    let ours = [
        Algorithm::Ring,
        Algorithm::Halving,
        Algorithm::Doubling,
        Algorithm::Tree,
        Algorithm::Direct,
    ];
    let modes = ours
        .map(|a| (MpiAlgorithm::Ring, Thresholds::only(a)))
        .into_iter()
        .chain([(MpiAlgorithm::Native, Thresholds::default())]);
    for (algorithm, thresholds) in modes {
        let what = format!("{algorithm:?} {thresholds:?}");
        let mut comm = cluster.world(MpiConfig {
            algorithm,
            chunk_bytes: 4 << 10,
            timeout: args.comm.timeout(),
            thresholds,
            ..MpiConfig::default()
        })?;
        let total = (p * (p + 1) / 2) as f32;
        for len in [5, 10_007] {
            let input = |i: usize| ((r + 1) * (i % 7)) as f32;
            let expect = |i: usize| total * (i % 7) as f32;
            let check = |data: &[f32], range: std::ops::Range<usize>, op: &str| match range
                .clone()
                .find(|&i| data[i] != expect(i))
            {
                Some(i) => Err(format!(
                    "{what} {op} of {len}: element {i} is {}, expected {}",
                    data[i],
                    expect(i)
                )),
                None => Ok(()),
            };
            for wire in [Precision::F32, Precision::Bf16] {
                if wire.is_reduced() && algorithm == MpiAlgorithm::Native {
                    continue;
                }
                let mut data: Vec<f32> = (0..len).map(input).collect();
                comm.all_reduce_as(&mut data, wire)?;
                check(&data, 0..len, &format!("{wire} all-reduce"))?;
            }
            let root = p - 1;
            let mut data: Vec<f32> = (0..len).map(input).collect();
            comm.reduce(&mut data, root)?;
            if r == root {
                check(&data, 0..len, "reduce")?;
            }
            // Rank q's part grows with q; rank 0's is empty.
            let mut parts: Vec<usize> = (0..=p).map(|q| q * q * len / (p * p)).collect();
            parts[p] = len;
            let mut data: Vec<f32> = (0..len).map(input).collect();
            comm.reduce_scatter(&mut data, &parts)?;
            check(&data, parts[r]..parts[r + 1], "reduce-scatter")?;
            comm.all_gather(&mut data, &parts)?;
            check(&data, 0..len, "reduce-scatter then all-gather")?;
            let mut data: Vec<f32> = (0..len).map(|i| (r * len + i) as f32).collect();
            comm.broadcast(&mut data, root)?;
            if let Some(i) = (0..len).find(|&i| data[i] != (root * len + i) as f32) {
                return Err(format!("{what} broadcast from {root}: element {i} differs").into());
            }
            comm.barrier()?;
        }
    }
    Ok(())
}

/// Compares this process's parameter fingerprint with rank 0's, and tells every process
/// which differ.
#[cfg(feature = "mpi")]
fn agree_across_processes(args: &Args, cluster: &Cluster, hash: u64) -> ringtrain::Result<()> {
    use ringtrain::comm::mpi::MpiConfig;
    use ringtrain::comm::Communicator;
    let mut comm = cluster.world(MpiConfig {
        timeout: args.comm.timeout(),
        ..MpiConfig::default()
    })?;
    let words =
        |h: u64| -> Vec<f32> { (0..4).map(|i| ((h >> (16 * i)) & 0xffff) as f32).collect() };
    let mut rank0 = words(hash);
    comm.broadcast(&mut rank0, 0)?;
    let mut differs = vec![0.0f32; cluster.processes];
    differs[cluster.rank] = f32::from(u8::from(rank0 != words(hash)));
    comm.all_reduce(&mut differs)?;
    let bad: Vec<usize> = (0..differs.len()).filter(|&i| differs[i] > 0.0).collect();
    if !bad.is_empty() {
        return Err(format!("processes {bad:?} hold other parameters than rank 0").into());
    }
    Ok(())
}
