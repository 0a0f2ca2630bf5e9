//! Data parallelism's newer modes on this machine: ZeRO-1 beside plain data
//! parallelism (optimizer state each replica holds, step time, bytes sent, and how far
//! the parameters drift apart), and replicas of different speeds (a CPU beside a GPU)
//! with equal shards and auto-balanced ones, beside each device alone. The
//! `parallel_bench` example prints the tables.

use crate::data::TokenBatch;
use crate::nn::{Module, ModuleState};
use crate::optim::{AdamW, AdamWConfig, Optimizer};
use crate::parallel::{Balance, DataParallel, DataParallelConfig};
use crate::zoo::{mlp, Activation, Gpt, GptConfig};
use crate::{rng_from_seed, Device, Result, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::ops::Range;
use std::time::Instant;

/// What [`parallel_bench`] measures.
#[derive(Debug, Clone)]
pub struct ParallelBenchConfig {
    /// Group sizes for ZeRO-1 against plain data parallelism (CPU replicas).
    pub replicas: Vec<usize>,
    /// Timed steps per run (after two warm-up steps, and auto-balancing's own).
    pub steps: usize,
    /// Heterogeneous runs with this GPU beside the CPU (`None`: skipped).
    pub gpu: Option<Device>,
    pub show_progress: bool,
}

impl Default for ParallelBenchConfig {
    fn default() -> Self {
        Self {
            replicas: vec![2, 4],
            steps: 10,
            gpu: None,
            show_progress: true,
        }
    }
}

/// One model on one group, plain or sharded.
#[derive(Debug, Clone, Serialize)]
pub struct ZeroPoint {
    pub model: String,
    pub replicas: usize,
    pub zero: u8,
    pub parameters: usize,
    /// Optimizer state elements (moments) one optimizer of plain data parallelism holds.
    pub state_whole: usize,
    /// The most any replica of this run holds, and that over the whole.
    pub state_max_replica: usize,
    pub state_fraction: f64,
    pub step_ms: f64,
    pub bytes_sent_per_step: Option<u64>,
    /// Largest difference from the plain run's parameters after the same steps.
    pub max_difference_from_plain: f32,
}

/// One set of devices training the MLP.
#[derive(Debug, Clone, Serialize)]
pub struct HeteroPoint {
    pub devices: String,
    pub balance: String,
    /// The shards' weights where not equal.
    pub weights: Option<Vec<f64>>,
    pub step_ms: f64,
    pub samples_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParallelBench {
    pub cores: usize,
    pub zero: Vec<ZeroPoint>,
    /// The devices of the heterogeneous runs, by name.
    pub cpu: String,
    pub gpu: Option<String>,
    pub hetero: Vec<HeteroPoint>,
}

type Opt = Box<dyn Optimizer + Send>;
/// One shard's loss, as `DataParallel::step` takes it.
type LossFn<'a, M> = dyn Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync + 'a;
type Loss<'a, M> = Box<LossFn<'a, M>>;
type BuildFn<'a, M> = dyn Fn(&Device) -> Result<(M, Opt)> + Sync + 'a;

const MLP_BATCH: usize = 128;
const GPT_BATCH: usize = 16;

fn adamw(params: Vec<crate::Var>) -> Result<Opt> {
    Ok(Box::new(AdamW::new(params, AdamWConfig::default())?))
}

/// MNIST's MLP shape on random inputs (timing and memory do not depend on the data).
fn mlp_data() -> Result<(Vec<f32>, Vec<u32>)> {
    let x = Tensor::rand_uniform(
        0.0,
        1.0,
        (MLP_BATCH, 784),
        &mut rng_from_seed(1),
        &Device::cpu(),
    )?
    .to_vec()?;
    Ok((x, (0..MLP_BATCH as u32).map(|i| i % 10).collect()))
}

fn gpt_config() -> GptConfig {
    GptConfig {
        vocab_size: 65,
        block_size: 64,
        n_layer: 4,
        n_head: 4,
        d_model: 128,
        dropout: 0.0,
        seed: 0,
    }
}

/// Times `steps` steps after two warm-up steps (and `extra` more untimed ones first):
/// the median step in milliseconds.
fn time_steps<M: Module + Send>(
    dp: &mut DataParallel<M, Opt>,
    batch: usize,
    extra: usize,
    steps: usize,
    loss: &LossFn<'_, M>,
) -> Result<f64> {
    for _ in 0..2 + extra {
        dp.step(batch, loss)?;
    }
    let mut times: Vec<f64> = (0..steps.max(1))
        .map(|_| {
            let t = Instant::now();
            dp.step(batch, loss)
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The moments each replica's optimizer holds (state of variables, not step counts).
fn state_held<M: Module + Send>(dp: &DataParallel<M, Opt>) -> Result<Vec<usize>> {
    (0..dp.size())
        .map(|i| {
            let opt = dp.replica_optimizer(i).expect("a replica");
            Ok(opt
                .state()?
                .iter()
                .filter(|(name, _, _)| opt.state_var(name).is_some())
                .map(|(_, _, v)| v.len())
                .sum())
        })
        .collect()
}

fn flat_parameters(model: &impl Module) -> Result<Vec<f32>> {
    let mut flat = Vec::new();
    for p in model.parameters() {
        flat.extend(p.to_vec()?);
    }
    Ok(flat)
}

/// One model at every group size, plain and sharded.
fn zero_runs<M: Module + Send>(
    name: &str,
    config: &ParallelBenchConfig,
    batch: usize,
    build: &BuildFn<'_, M>,
    loss: &LossFn<'_, M>,
    bar: &ProgressBar,
) -> Result<Vec<ZeroPoint>> {
    let mut points = Vec::new();
    for &n in &config.replicas {
        let mut runs = Vec::new();
        for zero in [0u8, 1] {
            bar.set_message(format!("{name}, {n} replicas, ZeRO {zero}"));
            let dp_config = DataParallelConfig {
                zero,
                ..DataParallelConfig::default()
            };
            let devices = (0..n).map(|_| Device::cpu()).collect();
            let mut dp = DataParallel::new(devices, build, dp_config)?;
            let step_ms = time_steps(&mut dp, batch, 0, config.steps, loss)?;
            let held = state_held(&dp)?;
            let params = flat_parameters(dp.model())?;
            runs.push((zero, step_ms, held, params, dp.last_step_bytes_sent()));
            bar.inc(1);
        }
        let whole = runs[0].2[0];
        let plain = runs[0].3.clone();
        for (zero, step_ms, held, params, bytes) in runs {
            let most = held.iter().copied().max().unwrap_or(0);
            let diff = params
                .iter()
                .zip(&plain)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            points.push(ZeroPoint {
                model: name.to_string(),
                replicas: n,
                zero,
                parameters: plain.len(),
                state_whole: whole,
                state_max_replica: most,
                state_fraction: most as f64 / whole.max(1) as f64,
                step_ms,
                bytes_sent_per_step: bytes,
                max_difference_from_plain: diff,
            });
        }
    }
    Ok(points)
}

/// ZeRO-1 beside plain data parallelism on an MLP and a small GPT, then the MLP on a
/// CPU and a GPU together (when `config.gpu` is given).
pub fn parallel_bench(config: &ParallelBenchConfig) -> Result<ParallelBench> {
    let hetero_runs = if config.gpu.is_some() { 4 } else { 0 };
    let bar = if config.show_progress {
        ProgressBar::new((config.replicas.len() * 4 + hetero_runs) as u64).with_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
                .map_err(crate::Error::msg)?,
        )
    } else {
        ProgressBar::hidden()
    };

    let (x, labels) = mlp_data()?;
    let build_mlp = |d: &Device| -> Result<_> {
        let m = mlp(
            784,
            &[512, 256],
            10,
            Activation::Relu,
            d,
            &mut rng_from_seed(0),
        )?;
        let opt = adamw(m.parameters())?;
        Ok((m, opt))
    };
    let mlp_loss: Loss<'_, crate::nn::Sequential> = Box::new(|m, d, rows| {
        let xs = Tensor::from_slice(&x[rows.start * 784..rows.end * 784], (rows.len(), 784), d)?;
        m.forward(&xs)?.cross_entropy(&labels[rows])
    });
    let mut zero = zero_runs(
        "MLP 784-512-256-10",
        config,
        MLP_BATCH,
        &build_mlp,
        &*mlp_loss,
        &bar,
    )?;

    let gc = gpt_config();
    let tokens: Vec<u32> = (0..GPT_BATCH * (gc.block_size + 1))
        .map(|i| ((i * 7919) % gc.vocab_size) as u32)
        .collect();
    let build_gpt = |d: &Device| -> Result<_> {
        let m = Gpt::new(gc, d, &mut rng_from_seed(0))?;
        let opt = adamw(m.parameters())?;
        Ok((m, opt))
    };
    let t = gc.block_size;
    let gpt_loss: Loss<'_, Gpt> = Box::new(|m, d, rows| {
        let mut batch = TokenBatch {
            inputs: Vec::new(),
            targets: Vec::new(),
            batch: rows.len(),
            time: t,
            loss_from: 0,
        };
        for r in rows {
            let seq = &tokens[r * (t + 1)..(r + 1) * (t + 1)];
            batch.inputs.extend_from_slice(&seq[..t]);
            batch.targets.extend_from_slice(&seq[1..]);
        }
        batch.loss(&m.forward(&batch.inputs(d)?)?, d)
    });
    let name = format!(
        "GPT {} layers, d {}, context {}",
        gc.n_layer, gc.d_model, gc.block_size
    );
    zero.extend(zero_runs(
        &name, config, GPT_BATCH, &build_gpt, &*gpt_loss, &bar,
    )?);

    let mut hetero = Vec::new();
    if let Some(gpu) = &config.gpu {
        let runs = [
            (vec![Device::cpu()], Balance::Equal),
            (vec![gpu.clone()], Balance::Equal),
            (vec![Device::cpu(), gpu.clone()], Balance::Equal),
            (vec![Device::cpu(), gpu.clone()], Balance::AUTO),
        ];
        for (devices, balance) in runs {
            let label = devices
                .iter()
                .map(|d| match d {
                    Device::Cpu(_) => "cpu",
                    Device::Gpu(_) => "gpu",
                })
                .collect::<Vec<_>>()
                .join(" + ");
            bar.set_message(format!("{label}, {balance:?}"));
            let extra = match balance {
                Balance::Auto { steps } => steps,
                _ => 0,
            };
            let dp_config = DataParallelConfig {
                balance: balance.clone(),
                ..DataParallelConfig::default()
            };
            let mut dp = DataParallel::new(devices, build_mlp, dp_config)?;
            let step_ms = time_steps(&mut dp, MLP_BATCH, extra, config.steps, &*mlp_loss)?;
            hetero.push(HeteroPoint {
                devices: label,
                balance: match balance {
                    Balance::Equal => "equal".into(),
                    Balance::Auto { .. } => "auto".into(),
                    Balance::Weights(_) => "weights".into(),
                },
                weights: dp.balance_weights().map(<[f64]>::to_vec),
                step_ms,
                samples_per_sec: MLP_BATCH as f64 / (step_ms / 1e3),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(ParallelBench {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        zero,
        cpu: Device::cpu().name(),
        gpu: config.gpu.as_ref().map(Device::name),
        hetero,
    })
}

impl std::fmt::Display for ParallelBench {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "ZeRO-1 beside plain data parallelism (AdamW, CPU replicas on {} cores; state = \
             moment elements held by the fullest replica)\n",
            self.cores
        )?;
        writeln!(
            f,
            "| model | replicas | ZeRO | state held | of the whole | step ms | bytes sent / step | max diff from plain |"
        )?;
        writeln!(
            f,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )?;
        for p in &self.zero {
            writeln!(
                f,
                "| {} | {} | {} | {} | {:.3} | {:.2} | {} | {:.1e} |",
                p.model,
                p.replicas,
                p.zero,
                p.state_max_replica,
                p.state_fraction,
                p.step_ms,
                p.bytes_sent_per_step
                    .map_or_else(|| "-".to_string(), |b| b.to_string()),
                p.max_difference_from_plain
            )?;
        }
        if self.hetero.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "\nThe MLP (batch {MLP_BATCH}) on a CPU and a GPU, alone and together (cpu: {}; \
             gpu: {})\n",
            self.cpu,
            self.gpu.as_deref().unwrap_or("-")
        )?;
        writeln!(f, "| devices | shards | weights | step ms | samples/s |")?;
        writeln!(f, "| --- | --- | --- | ---: | ---: |")?;
        for p in &self.hetero {
            let weights = p.weights.as_ref().map_or_else(
                || "-".to_string(),
                |w| {
                    let total: f64 = w.iter().sum();
                    let shares: Vec<String> = w
                        .iter()
                        .map(|x| format!("{:.0}%", 100.0 * x / total))
                        .collect();
                    shares.join(" / ")
                },
            );
            writeln!(
                f,
                "| {} | {} | {} | {:.2} | {:.0} |",
                p.devices, p.balance, weights, p.step_ms, p.samples_per_sec
            )?;
        }
        Ok(())
    }
}
