//! Which of the CPU backend's memory-bound ops gain from more threads, and from what
//! size: each op timed on a pool of one thread and on one of N, at sizes on both sides
//! of the parallel threshold (64K elements), the pool's workers kept awake as in a
//! training step ([`with_awake_workers`]). GEMM, convolution and attention are not here:
//! their split is the subject of the SGEMM and step benchmarks.
//!
//! Ops below the threshold run the same code at any thread count, so their ratio is the
//! measurement's noise; at and above it, a ratio under 1 is an op that more threads
//! slow down ([`OpThreads::slower`]), which `docs/BENCHMARKS.md` records per machine.

use crate::kernels::cpu::{with_awake_workers, CpuBackend, PARALLEL_MIN_ELEMENTS};
use crate::kernels::{
    AdamWParams, Backend, BinaryLayout, BinaryOp, SgdParams, StridedLayout, UnaryOp,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::error::Error;
use std::fmt;
use std::path::Path;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Row length of the row-wise ops (layer norm, softmax, sums over rows, the bias
/// broadcast and the transpose): a small transformer's width.
pub const COLS: usize = 64;

/// What to measure.
#[derive(Debug, Clone)]
pub struct OpThreadsConfig {
    /// The many-thread pool's size (at least 2).
    pub threads: usize,
    /// Elements per op, each rounded up to a multiple of [`COLS`].
    pub sizes: Vec<usize>,
    /// Seconds of calls per op, size and pool.
    pub min_time: f64,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for OpThreadsConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get().max(2)),
            sizes: vec![1 << 14, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 20],
            min_time: 0.2,
            progress: true,
        }
    }
}

/// One op at one size: median microseconds per call on each pool, and the speedup
/// (one thread's time over N threads': above 1, the threads help) as the median and
/// range over the turns, each turn's pair of medians taken side by side.
#[derive(Debug, Clone, Serialize)]
pub struct OpPoint {
    pub op: &'static str,
    pub elements: usize,
    pub one_thread_us: f64,
    pub many_threads_us: f64,
    pub speedup: f64,
    pub speedup_range: (f64, f64),
}

/// The measurement: every op at every size.
#[derive(Debug, Clone, Serialize)]
pub struct OpThreads {
    pub threads: usize,
    pub isa: String,
    pub points: Vec<OpPoint>,
}

impl OpThreads {
    /// Writes every point as JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Res<()> {
        let json = serde_json::to_vec_pretty(self)?;
        crate::checkpoint::write_atomically(path, |w| w.write_all(&json))?;
        Ok(())
    }

    /// The points at or above the parallel threshold where N threads took more than
    /// `tolerance` (0.05: 5%) longer than one.
    pub fn slower(&self, tolerance: f64) -> Vec<&OpPoint> {
        self.points
            .iter()
            .filter(|p| p.elements >= PARALLEL_MIN_ELEMENTS && p.speedup < 1.0 - tolerance)
            .collect()
    }
}

impl fmt::Display for OpThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.threads;
        writeln!(
            f,
            "CPU ops on 1 thread and on {t} ({}), median us per call; rows of {COLS}",
            self.isa
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| op | elements | 1 thread | {t} threads | speedup (range) |"
        )?;
        writeln!(f, "| --- | ---: | ---: | ---: | ---: |")?;
        for p in &self.points {
            writeln!(
                f,
                "| {} | {} | {:.1} | {:.1} | {:.2}x ({:.2}-{:.2}) |",
                p.op,
                p.elements,
                p.one_thread_us,
                p.many_threads_us,
                p.speedup,
                p.speedup_range.0,
                p.speedup_range.1
            )?;
        }
        Ok(())
    }
}

/// Times every op of [`OPS`] at every size of `cfg` on both pools, the pools taking
/// turns so that the machine's drift touches both alike.
pub fn op_threads(cfg: &OpThreadsConfig) -> Res<OpThreads> {
    if cfg.threads < 2 {
        return Err("op_threads compares one thread with several: threads must be >= 2".into());
    }
    let pool = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let (one, many) = (pool(1)?, pool(cfg.threads)?);
    let cpu = CpuBackend::new();
    let bar = if cfg.progress {
        ProgressBar::new((cfg.sizes.len() * OPS.len()) as u64).with_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")?,
        )
    } else {
        ProgressBar::hidden()
    };
    let mut points = Vec::new();
    for &size in &cfg.sizes {
        let elements = size.max(COLS).next_multiple_of(COLS);
        let mut work = Work::new(&cpu, elements)?;
        for op in OPS {
            bar.set_message(format!("{} at {elements}", op.name()));
            // The pools take turns, a slice of the time each: this VM's speed drifts
            // by tens of percent within seconds, which two runs one after the other
            // would read as a difference between the pools.
            let (mut ones, mut manys, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            let slice = cfg.min_time / TURNS as f64;
            for _ in 0..TURNS {
                let mut turn = |pool: &rayon::ThreadPool, all: &mut Vec<f64>| -> Res<f64> {
                    let burst =
                        pool.install(|| with_awake_workers(|| samples_us(slice, || work.run(op))))?;
                    all.extend_from_slice(&burst);
                    Ok(median(burst))
                };
                let t1 = turn(&one, &mut ones)?;
                let tn = turn(&many, &mut manys)?;
                ratios.push(t1 / tn);
            }
            let range = (
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            points.push(OpPoint {
                op: op.name(),
                elements,
                one_thread_us: median(ones),
                many_threads_us: median(manys),
                speedup: median(ratios),
                speedup_range: range,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(OpThreads {
        threads: cfg.threads,
        isa: cpu.simd().isa().to_string(),
        points,
    })
}

/// How many turns each pool takes at each op and size.
const TURNS: usize = 8;

/// Microseconds of each call of `f`, over calls for at least `min_time` seconds (at
/// least 3, after one untimed).
fn samples_us(min_time: f64, mut f: impl FnMut() -> Res<()>) -> Res<Vec<f64>> {
    f()?;
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 3 || start.elapsed().as_secs_f64() < min_time {
        let t = Instant::now();
        f()?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        if samples.len() >= 100_000 {
            break;
        }
    }
    Ok(samples)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The ops measured, each as a training step calls it.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    Gelu,
    GeluBackward,
    Add,
    AddBiasRow,
    SumRows,
    LayerNorm,
    LayerNormBackward,
    LogSoftmax,
    Transpose,
    SgdMomentum,
    AdamW,
}

pub const OPS: [Op; 11] = [
    Op::Gelu,
    Op::GeluBackward,
    Op::Add,
    Op::AddBiasRow,
    Op::SumRows,
    Op::LayerNorm,
    Op::LayerNormBackward,
    Op::LogSoftmax,
    Op::Transpose,
    Op::SgdMomentum,
    Op::AdamW,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Gelu => "gelu",
            Op::GeluBackward => "gelu backward",
            Op::Add => "add",
            Op::AddBiasRow => "add a bias row",
            Op::SumRows => "sum over rows (bias gradient)",
            Op::LayerNorm => "layer norm",
            Op::LayerNormBackward => "layer norm backward",
            Op::LogSoftmax => "log softmax",
            Op::Transpose => "transpose (strided copy)",
            Op::SgdMomentum => "sgd step, momentum",
            Op::AdamW => "adamw step",
        }
    }
}

/// Operands of every op at one size: `x`, `y` and `dy` of `elements` values as
/// `rows x COLS`, and what the ops write.
struct Work<'a> {
    cpu: &'a CpuBackend,
    rows: usize,
    x: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    out: Vec<f32>,
    row: Vec<f32>,
    row_out: [Vec<f32>; 2],
    stats: Vec<f32>,
    state: [Vec<f32>; 2],
    adam_step: u64,
}

impl<'a> Work<'a> {
    fn new(cpu: &'a CpuBackend, elements: usize) -> Res<Self> {
        let values = |seed: usize, n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7 + seed) % 23) as f32 * 0.05 - 0.5)
                .collect()
        };
        Ok(Self {
            cpu,
            rows: elements / COLS,
            x: cpu.upload(&values(1, elements))?,
            y: cpu.upload(&values(5, elements))?,
            dy: cpu.upload(&values(11, elements))?,
            out: cpu.zeros(elements)?,
            row: cpu.upload(&values(3, COLS))?,
            row_out: [cpu.zeros(COLS)?, cpu.zeros(COLS)?],
            stats: cpu.zeros(2 * (elements / COLS))?,
            state: [cpu.zeros(elements)?, cpu.zeros(elements)?],
            adam_step: 0,
        })
    }

    fn run(&mut self, op: Op) -> Res<()> {
        let (cpu, rows) = (self.cpu, self.rows);
        let n = rows * COLS;
        match op {
            Op::Gelu => cpu.unary(UnaryOp::Gelu, &self.x, &mut self.out)?,
            Op::GeluBackward => {
                cpu.unary_backward(UnaryOp::Gelu, &self.x, &self.y, &self.dy, &mut self.out)?
            }
            Op::Add => {
                let layout = BinaryLayout {
                    shape: vec![n],
                    lhs_strides: vec![1],
                    rhs_strides: vec![1],
                };
                cpu.binary(BinaryOp::Add, &layout, &self.x, &self.y, &mut self.out)?
            }
            Op::AddBiasRow => {
                let layout = BinaryLayout {
                    shape: vec![rows, COLS],
                    lhs_strides: vec![COLS, 1],
                    rhs_strides: vec![0, 1],
                };
                cpu.binary(BinaryOp::Add, &layout, &self.x, &self.row, &mut self.out)?
            }
            Op::SumRows => cpu.sum_axis(&self.dy, &mut self.row_out[0], 1, rows, COLS)?,
            Op::LayerNorm => self.layer_norm()?,
            Op::LayerNormBackward => {
                // The forward pass first: it writes the statistics backward reads.
                self.layer_norm()?;
                let [dgamma, dbeta] = &mut self.row_out;
                cpu.layer_norm_backward(
                    &self.x,
                    &self.row,
                    &self.stats,
                    &self.dy,
                    &mut self.out,
                    dgamma,
                    dbeta,
                    rows,
                    COLS,
                )?
            }
            Op::LogSoftmax => cpu.log_softmax(&self.x, &mut self.out, rows, COLS)?,
            Op::Transpose => {
                let layout = StridedLayout {
                    shape: vec![COLS, rows],
                    strides: vec![1, COLS],
                    offset: 0,
                };
                cpu.copy_strided(&self.x, &layout, &mut self.out)?
            }
            Op::SgdMomentum => {
                let p = SgdParams {
                    lr: 1e-3,
                    momentum: 0.9,
                    weight_decay: 0.0,
                    nesterov: false,
                };
                let [param, buf] = &mut self.state;
                cpu.sgd_step(&p, param, &self.dy, Some(buf))?
            }
            Op::AdamW => {
                self.adam_step += 1;
                let p = AdamWParams {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.01,
                    step: self.adam_step,
                };
                let [m, v] = &mut self.state;
                cpu.adamw_step(&p, &mut self.out, &self.dy, m, v)?
            }
        }
        Ok(())
    }

    fn layer_norm(&mut self) -> Res<()> {
        let (x, row, rows) = (&self.x, &self.row, self.rows);
        let (y, stats) = (&mut self.out, &mut self.stats);
        self.cpu
            .layer_norm(x, row, row, y, stats, rows, COLS, 1e-5)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_runs_at_a_small_size_and_the_verdict_reads_the_threshold() {
        let cfg = OpThreadsConfig {
            threads: 2,
            sizes: vec![100],
            min_time: 0.0,
            progress: false,
        };
        let r = op_threads(&cfg).expect("every op runs");
        assert_eq!(r.points.len(), OPS.len());
        assert!(r
            .points
            .iter()
            .all(|p| p.elements == 128 && p.one_thread_us > 0.0 && p.many_threads_us > 0.0));
        // Below the threshold nothing counts as slower, whatever the noise said.
        assert!(r.slower(0.0).is_empty());
        let slow = OpThreads {
            threads: 2,
            isa: "x".into(),
            points: vec![OpPoint {
                op: "add",
                elements: PARALLEL_MIN_ELEMENTS,
                one_thread_us: 10.0,
                many_threads_us: 12.0,
                speedup: 0.83,
                speedup_range: (0.8, 0.9),
            }],
        };
        assert_eq!(slow.slower(0.05).len(), 1);
        assert!(slow.slower(0.25).is_empty());
        assert!(slow
            .to_string()
            .contains("| add | 65536 | 10.0 | 12.0 | 0.83x (0.80-0.90) |"));
        let one = OpThreadsConfig { threads: 1, ..cfg };
        assert!(op_threads(&one).is_err());
    }
}
