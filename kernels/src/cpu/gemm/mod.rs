//! Single-precision GEMM, BLIS style: operands are packed into panels sized for the
//! caches, and a register-blocked FMA micro-kernel, one per instruction set, computes each
//! MR x NR tile of C.
//!
//! C is cut into one task per thread (a grid of row and column blocks chosen so the
//! busiest task does the least work, packing included), run in one parallel region. Each
//! task walks k in KC-deep slices: it packs its rows of A for the slice (or reads A in
//! place when B is narrow and packing would not pay), then, NC columns at a time, packs
//! that KC x NC block of B and runs its tiles: each panel of B meets MC rows of A in turn,
//! so one KC x NR panel of B sits in L1 while that block of A streams from L2 (or, where a
//! kernel's MC is MR, one MR x KC panel of A sits in L1 while the block of B streams).
//! Tasks write disjoint tiles and every element of C sums its slices in the same order
//! whatever the grid, so results are bit-identical on any number of threads.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_bf16;
mod gemv;
#[cfg(target_arch = "aarch64")]
mod neon;
mod pack;
#[cfg(target_arch = "x86_64")]
mod pairs;
mod portable;

use super::{round, Isa, Simd};
use crate::{trace, KernelError, Precision, Result};
use rayon::prelude::*;
use std::cell::RefCell;

/// A matrix operand: element `(i, j)` is `data[i * rs + j * cs]`. Transposes are strides.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows x cols` matrix, or its transpose when `transposed` (then `data`
    /// holds the `cols x rows` original).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, transposed: bool) -> Self {
        if transposed {
            Self {
                data,
                rs: 1,
                cs: rows,
            }
        } else {
            Self {
                data,
                rs: cols,
                cs: 1,
            }
        }
    }

    fn fits(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.rs)
            .and_then(|r| r.checked_add((cols - 1).checked_mul(self.cs)?));
        last.is_some_and(|last| last < self.data.len())
    }
}

/// One instruction set's register-blocked kernel and the cache blocking that suits it.
pub(crate) trait MicroKernel {
    const MR: usize;
    const NR: usize;
    const KC: usize;
    const NC: usize;
    /// Rows of packed A (a multiple of MR) that each panel of B meets in turn: MR keeps
    /// one panel of A in L1 while the block of B streams from L2; more keeps a block of A
    /// in L2 while one panel of B stays in L1 (BLIS's order).
    const MC: usize;

    /// Whether `kernel` reads A at any strides; if not, A is always packed.
    const STRIDED_A: bool;
    /// Whether `kernel` reads B's rows at any stride; if not, B is always packed.
    const STRIDED_B: bool;
    /// Whether `tiles` reads C (when `beta != 0`) from [`Tiles::c_in`] rather than from
    /// where it writes: only such kernels stage C (see `stages_c`).
    const READS_C_APART: bool = false;
    /// Whether the packed panels hold bf16 pairs along k (`avx512_bf16`, packed by
    /// `pairs.rs`) rather than f32 values.
    const PAIRS: bool = false;

    /// `C = alpha * A_panel * B_panel + beta * C` for one MR x NR tile (row stride `ldc`),
    /// with A's element `(i, p)` at `a[i * rs_a + p * cs_a]` (a packed panel: `kc` groups
    /// of MR, so `rs_a = 1, cs_a = MR`) and B's row `p` the NR values at `b[p * rs_b..]`
    /// (packed: `rs_b = NR`). `beta == 0` must not read C. Then, when `bias` is not null,
    /// `bias[j]` is added to column `j` (NR values), and when `relu`, each value is
    /// clamped at zero (NaN passes through).
    ///
    /// # Safety
    /// A's panel has MR x `kc` values at those strides, B's `kc` x NR; `c` addresses an
    /// MR x NR tile with row stride `ldc`; the CPU supports the kernel's instruction set.
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        rs_a: usize,
        cs_a: usize,
        b: *const f32,
        rs_b: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        bias: *const f32,
        relu: bool,
    );

    /// [`kernel`](Self::kernel) on each tile of the run `t` in turn. A kernel overrides
    /// it to run the loop inside its instruction set's code, with the tile's work
    /// inlined: a call per tile, its twelve arguments spilled and reloaded, cost 4% of
    /// a 256^3 product on Zen 3.
    ///
    /// # Safety
    /// Each tile of `t` satisfies [`kernel`](Self::kernel)'s contract.
    unsafe fn tiles(t: &Tiles) {
        for i in 0..t.count {
            // SAFETY: as the caller guarantees.
            unsafe {
                let p = t.at(i);
                Self::kernel(
                    t.kc, p.a, t.rs_a, t.cs_a, p.b, t.rs_b, p.c, t.ldc, t.alpha, t.beta, p.bias,
                    t.relu,
                )
            }
        }
    }
}

/// A run of `count` tiles for [`MicroKernel::tiles`], each one call of
/// [`MicroKernel::kernel`] with these arguments, tile `t`'s operands at `a + t *
/// a_step`, `b + t * b_step`, `c + t * c_step` and (unless null) `bias + t * bias_step`.
#[derive(Clone, Copy)]
pub(crate) struct Tiles {
    pub count: usize,
    pub kc: usize,
    pub a: *const f32,
    pub rs_a: usize,
    pub cs_a: usize,
    pub a_step: usize,
    pub b: *const f32,
    pub rs_b: usize,
    pub b_step: usize,
    pub c: *mut f32,
    pub ldc: usize,
    pub c_step: usize,
    /// Where a kernel that [reads C apart](MicroKernel::READS_C_APART) reads C, with its
    /// row stride and step between tiles; the same as `c` for every other kernel.
    pub c_in: *const f32,
    pub ldc_in: usize,
    pub c_in_step: usize,
    pub alpha: f32,
    pub beta: f32,
    pub bias: *const f32,
    pub bias_step: usize,
    pub relu: bool,
}

/// The operands of one tile of a [`Tiles`] run.
#[derive(Clone, Copy)]
pub(crate) struct TileAt {
    pub a: *const f32,
    pub b: *const f32,
    pub c: *mut f32,
    pub c_in: *const f32,
    pub bias: *const f32,
}

impl Tiles {
    /// Tile `i`'s operands.
    ///
    /// # Safety
    /// `i < count`, and the run's pointers stay inside their allocations for all its
    /// tiles.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: usize) -> TileAt {
        // SAFETY: as the caller guarantees.
        unsafe {
            TileAt {
                a: self.a.add(i * self.a_step),
                b: self.b.add(i * self.b_step),
                c: self.c.add(i * self.c_step),
                c_in: self.c_in.add(i * self.c_in_step),
                bias: if self.bias.is_null() {
                    self.bias
                } else {
                    self.bias.add(i * self.bias_step)
                },
            }
        }
    }
}

/// Calls a micro-kernel's `body::<PACKED_A, PACKED_B>(kc, a, rs_a, cs_a, b, rs_b, c, ldc,
/// alpha, beta, ..)` (or, given one run of [`Tiles`], its `tile_run::<..>(t)`) with each
/// flag set when that operand has its packed strides (A: 1 and MR; B: NR), so that four
/// copies of the loop are compiled, the common one with immediate offsets. Const
/// generics rather than constant arguments: before `body` was `#[inline(always)]`, LLVM
/// did not inline it four times, and a call with constants compiled to the one generic
/// copy (seen in `perf annotate`: strides in registers; on Zen 3 at n = 2048 the median
/// went from 52-58 to 60-66 GFLOP/s, base and new alternated).
macro_rules! with_packed_strides {
    ($run:ident($t:expr)) => {
        match ($t.rs_a == 1 && $t.cs_a == MR, $t.rs_b == NR) {
            (true, true) => $run::<true, true>($t),
            (true, false) => $run::<true, false>($t),
            (false, true) => $run::<false, true>($t),
            (false, false) => $run::<false, false>($t),
        }
    };
    ($body:ident($kc:expr, $a:expr, $rs_a:expr, $cs_a:expr, $b:expr, $rs_b:expr, $($rest:expr),*)) => {
        match ($rs_a == 1 && $cs_a == MR, $rs_b == NR) {
            (true, true) => $body::<true, true>($kc, $a, $rs_a, $cs_a, $b, $rs_b, $($rest),*),
            (true, false) => $body::<true, false>($kc, $a, $rs_a, $cs_a, $b, $rs_b, $($rest),*),
            (false, true) => $body::<false, true>($kc, $a, $rs_a, $cs_a, $b, $rs_b, $($rest),*),
            (false, false) => $body::<false, false>($kc, $a, $rs_a, $cs_a, $b, $rs_b, $($rest),*),
        }
    };
}
#[cfg(target_arch = "x86_64")]
use with_packed_strides;

/// A kernel's [`MicroKernel::tiles`] as a loop over its `body::<PACKED_A, PACKED_B>`,
/// which must be `#[inline(always)]` and is then inlined into the caller's instruction
/// set, once per pair of flags (see [`with_packed_strides`]). A plain loop, not a call
/// through a closure: a closure is a function of its own, without the caller's
/// `target_feature`s, and once the unrolled body made it too large to inline, every
/// intrinsic in it became a call (AVX-512 on Zen 4: 2 GFLOP/s).
macro_rules! tiles_of_body {
    () => {
        #[inline(always)]
        unsafe fn tile_run<const PACKED_A: bool, const PACKED_B: bool>(t: &super::Tiles) {
            for i in 0..t.count {
                // SAFETY: each tile of `t` satisfies `kernel`'s contract (`tiles`'s).
                unsafe {
                    let p = t.at(i);
                    body::<PACKED_A, PACKED_B>(
                        t.kc, p.a, t.rs_a, t.cs_a, p.b, t.rs_b, p.c, t.ldc, t.alpha, t.beta,
                        p.bias, t.relu,
                    )
                }
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
use tiles_of_body;

/// The largest MR * NR of any kernel, for the edge-tile scratch.
const MAX_TILE: usize = 12 * 32;

/// `dst[p * w + r] = data[(r0 + r) * stride + p0 + p]` for `rows` source rows of `kc`
/// values, and zero for rows `rows..w`: the packing's transposing copy (8 x 8 blocks in
/// registers on AVX2 and AVX-512), for other kernels' tiles.
///
/// # Panics
/// If a read falls outside `data` or `dst` holds fewer than `kc * w` values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn transpose_rows(
    simd: Simd,
    dst: &mut [f32],
    data: &[f32],
    stride: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    w: usize,
) {
    let avx = matches!(simd.isa(), Isa::Avx2Fma | Isa::Avx512);
    pack::pack_transposing(dst, data, stride, r0, rows, p0, kc, w, avx);
}

/// Below this many multiply-adds the fork/join of rayon costs more than it saves.
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 21;

/// How many products of `macs` multiply-adds each one task of a batched GEMM should
/// take, so that a task is worth handing to another thread (about 2^18 multiply-adds).
pub(crate) fn products_per_task(macs: usize) -> usize {
    ((1usize << 18) / macs.max(1)).max(1)
}

/// What the GEMM does to each element of C after the product, in the micro-kernel's
/// epilogue (no pass of its own): add `bias[j]` to column `j`, then clamp at zero (ReLU,
/// NaN passing through), as a layer's forward wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

/// `C = alpha * A * B + beta * C`, with A `m x k`, B `k x n` (any strides) and C row-major
/// `m x n` with row stride `ldc`. Runs on rayon's current pool for large shapes.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    simd: Simd,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Result<()> {
    let none = Epilogue::default();
    sgemm_with(simd, m, n, k, alpha, a, b, beta, c, ldc, none)
}

/// [`sgemm`], then `epilogue` on each element of C: `relu(alpha * A * B + beta * C +
/// bias)`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    simd: Simd,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) -> Result<()> {
    let f32 = Precision::F32;
    gemm_mixed(simd, f32, m, n, k, alpha, a, b, beta, c, ldc, epilogue)
}

/// [`sgemm_with`] with A's and B's values rounded to `inputs` (see [`Precision`]) as
/// they are packed, the products summed in f32: bf16 inputs run on `vdpbf16ps` where
/// `simd` has it ([`Simd::bf16_dot`]), every other case on the f32 kernels. Operands
/// are then always packed, never read in place.
#[allow(clippy::too_many_arguments)]
pub fn gemm_mixed(
    simd: Simd,
    inputs: Precision,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) -> Result<()> {
    let mut span = trace::span("cpu", "gemm")
        .arg("m", || m)
        .arg("n", || n)
        .arg("k", || k)
        .arg("layout", || {
            let t = |transposed: bool| if transposed { 't' } else { 'n' };
            format!("{}{}", t(a.rs == 1 && a.cs != 1), t(b.rs == 1 && b.cs != 1))
        })
        .arg("inputs", || inputs.name());
    let operands = Operands { a, b, inputs };
    let result = sgemm_checked(simd, m, n, k, alpha, operands, beta, c, ldc, epilogue);
    let ns = span.elapsed_ns().max(1);
    span.set("gflops", || 2.0 * (m * n * k) as f64 / ns as f64);
    result
}

/// A GEMM's two operands and the precision their values enter it in.
struct Operands<'a> {
    a: MatRef<'a>,
    b: MatRef<'a>,
    inputs: Precision,
}

#[allow(clippy::too_many_arguments)]
fn sgemm_checked(
    simd: Simd,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    Operands { a, b, inputs }: Operands,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: Epilogue,
) -> Result<()> {
    let bad = |reason: String| {
        Err(KernelError::InvalidArgument {
            op: "sgemm",
            reason,
        })
    };
    if !a.fits(m, k) {
        return bad(format!(
            "A ({m} x {k}, strides {}, {}) runs past its {} elements",
            a.rs,
            a.cs,
            a.data.len()
        ));
    }
    if !b.fits(k, n) {
        return bad(format!(
            "B ({k} x {n}, strides {}, {}) runs past its {} elements",
            b.rs,
            b.cs,
            b.data.len()
        ));
    }
    let c_span = (m.max(1) - 1)
        .checked_mul(ldc)
        .and_then(|s| s.checked_add(n));
    if m > 0 && n > 0 && (ldc < n || c_span.is_none_or(|span| span > c.len())) {
        return bad(format!(
            "C ({m} x {n}, row stride {ldc}) does not fit its {} elements",
            c.len()
        ));
    }
    if let Some(bias) = epilogue.bias.filter(|bias| bias.len() < n) {
        return bad(format!(
            "the bias has {} values for {n} columns",
            bias.len()
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 || alpha == 0.0 {
        for row in c.chunks_mut(ldc).take(m) {
            for (j, v) in row[..n].iter_mut().enumerate() {
                let z = if beta == 0.0 { 0.0 } else { beta * *v };
                *v = epilogue.apply(z, j);
            }
        }
        return Ok(());
    }
    if m == 1 && inputs == Precision::F32 && a.cs == 1 && b.rs == 1 {
        gemv::row_times_columns(simd, n, k, alpha, a.data, b.data, b.cs, beta, c, epilogue);
        return Ok(());
    }
    let parallel = m * n * k >= PARALLEL_MIN_MACS && rayon::current_num_threads() > 1;
    let shape = Shape {
        m,
        n,
        k,
        alpha,
        beta,
        ldc,
        parallel,
        epilogue,
        // Every x86 core with AVX2 or AVX-512 has AVX, which the transposing pack uses.
        avx_pack: matches!(simd.isa(), Isa::Avx2Fma | Isa::Avx512),
        inputs,
        simd,
    };
    match simd.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if inputs == Precision::Bf16 && simd.bf16_dot() => {
            run::<avx512_bf16::Avx512Bf16>(&shape, &a, &b, c)
        }
        // An AVX-512 `Simd` proves AVX2 and FMA as well (`Isa::is_supported`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if avx2_blocking_wins(&shape) => run::<avx2::Avx2Fma>(&shape, &a, &b, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => run::<avx512::Avx512>(&shape, &a, &b, c),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => run::<avx2::Avx2Fma>(&shape, &a, &b, c),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => run::<neon::Neon>(&shape, &a, &b, c),
        _ => run::<portable::Portable>(&shape, &a, &b, c),
    }
    Ok(())
}

/// Whether an AVX-512 machine runs this product faster through the AVX2 kernel. A core
/// that executes each 512-bit FMA as two 256-bit halves (AMD Zen 4) has the same peak
/// on both, and from 1024 on every side AVX2's blocking (BLIS's order, C staged away
/// from L1's aliasing) keeps more of it: on Zen 4, one thread, the two alternated four
/// times, 1024^3 / 1536^3 / 2048^3 ran at 105.7 / 106.2 / 103.2 GFLOP/s on AVX-512 and
/// 106.8 / 108.2 / 107.2 on AVX2. At 512^3 and on the MLP's and GPT's products AVX-512
/// was as fast or up to 4% faster. Chosen by shape alone: the bits do not depend on the
/// thread count.
#[cfg(target_arch = "x86_64")]
fn avx2_blocking_wins(s: &Shape) -> bool {
    s.m >= 1024 && s.n >= 1024 && s.k >= 1024 && avx512_runs_as_halves()
}

/// Whether this CPU runs 512-bit FMAs as two 256-bit halves: AMD's family 19h (Zen 3,
/// which has no AVX-512, and Zen 4). Zen 5 (family 1Ah) has full-width units.
#[cfg(target_arch = "x86_64")]
fn avx512_runs_as_halves() -> bool {
    use std::arch::x86_64::__cpuid;
    static HALVES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HALVES.get_or_init(|| {
        let vendor = __cpuid(0);
        // "AuthenticAMD", in EBX, EDX, ECX.
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let eax = __cpuid(1).eax;
        let family = ((eax >> 8) & 0xf) + ((eax >> 20) & 0xff);
        amd && family == 0x19
    })
}

struct Shape<'a> {
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    beta: f32,
    ldc: usize,
    parallel: bool,
    epilogue: Epilogue<'a>,
    avx_pack: bool,
    /// What A's and B's values are rounded to as they are packed.
    inputs: Precision,
    simd: Simd,
}

impl Epilogue<'_> {
    /// The epilogue on one element `z` of column `j`, as the kernels compute it.
    #[inline(always)]
    fn apply(&self, z: f32, j: usize) -> f32 {
        let z = self.bias.map_or(z, |bias| z + bias[j]);
        // `z < 0`, so NaN stays NaN, as in the ReLU kernel.
        if self.relu && z < 0.0 {
            0.0
        } else {
            z
        }
    }
}

thread_local! {
    // Packing buffers (and the stage of `stages_c`) reused across calls: a training step's
    // GEMMs then allocate nothing.
    static PACK: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// One task's share of C: whole panels of rows and of columns.
#[derive(Clone, Copy, Debug)]
struct Task {
    rows: (usize, usize),
    cols: (usize, usize),
}

fn run<K: MicroKernel>(s: &Shape, a: &MatRef, b: &MatRef, c: &mut [f32]) {
    let (m_panels, n_panels) = (s.m.div_ceil(K::MR), s.n.div_ceil(K::NR));
    // Rounded inputs exist only in the packing.
    let exact = !s.inputs.is_reduced();
    let direct_a = K::STRIDED_A && exact && reads_a_in_place::<K>(s, a);
    let direct_b = K::STRIDED_B && exact && reads_b_in_place(s, b);
    let direct = (direct_a, direct_b);
    let threads = if s.parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    let (gm, gn) = task_grid(s, m_panels, n_panels, threads, direct);
    let split = |panels: usize, parts: usize, i: usize| {
        let per = panels.div_ceil(parts);
        ((i * per).min(panels), ((i + 1) * per).min(panels))
    };
    let c_ptr = SyncPtr(c.as_mut_ptr());
    let work = |t: usize| {
        let task = Task {
            rows: split(m_panels, gm, t / gn),
            cols: split(n_panels, gn, t % gn),
        };
        if task.rows.0 == task.rows.1 || task.cols.0 == task.cols.1 {
            return;
        }
        PACK.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => {
                let [ap, bp, cs] = &mut *bufs;
                run_task::<K>(s, a, b, c_ptr, task, direct, [ap, bp, cs]);
            }
            // Re-entered on this thread (the caller's own GEMM waits in a rayon join that
            // runs a task of another one): fresh buffers.
            Err(_) => run_task::<K>(
                s,
                a,
                b,
                c_ptr,
                task,
                direct,
                [&mut Vec::new(), &mut Vec::new(), &mut Vec::new()],
            ),
        });
    };
    if gm * gn > 1 {
        (0..gm * gn).into_par_iter().for_each(work);
    } else {
        work(0);
    }
}

/// Splits C into `threads` tasks, `gm` row blocks by `gn` column blocks, choosing the grid
/// that gives the busiest task the least work. Each task packs what it reads (its columns
/// of B, and its rows of A unless A is read in place), so a split along rows repeats B's
/// packing and one along columns repeats A's; one packed value is costed as 16
/// multiply-adds (about the ratio of the packing's speed to the kernel's). Of grids within
/// 2% of the cheapest (a square's row split costs a little more, its MR-row panels not
/// halving evenly), the one with the most row blocks: tasks then share B's blocks in L3
/// and each writes whole rows of C (Zen 3, 2 threads, rows against columns alternated
/// call by call: 1536^3 and 2048^3 3-7% faster, 1024^3 3%).
fn task_grid(
    s: &Shape,
    m_panels: usize,
    n_panels: usize,
    threads: usize,
    (direct_a, direct_b): (bool, bool),
) -> (usize, usize) {
    const PACK_COST: usize = 16;
    let grids = (1..=threads)
        .filter(|&gm| threads.is_multiple_of(gm))
        .map(|gm| (gm, threads / gm))
        .filter(|&(gm, gn)| gm <= m_panels && gn <= n_panels);
    let costed: Vec<_> = grids
        .map(|(gm, gn)| {
            let rows = (m_panels.div_ceil(gm) * s.m.div_ceil(m_panels)).min(s.m);
            let cols = (n_panels.div_ceil(gn) * s.n.div_ceil(n_panels)).min(s.n);
            let packed =
                if direct_a { 0 } else { s.k * rows } + if direct_b { 0 } else { s.k * cols };
            (gm, gn, rows * cols * s.k + PACK_COST * packed)
        })
        .collect();
    let Some(cheapest) = costed.iter().map(|&(_, _, cost)| cost).min() else {
        return (1, 1);
    };
    costed
        .into_iter()
        .filter(|&(_, _, cost)| cost <= cheapest + cheapest / 50)
        .max_by_key(|&(gm, _, _)| gm)
        .map_or((1, 1), |(gm, gn, _)| (gm, gn))
}

/// One task: for each slice of k, pack its rows of A (unless read in place), then for each
/// NC-wide block of its columns pack that block of B and run every tile. Each element of C
/// sums its slices in order, whatever the grid: the bits do not depend on the thread count.
#[allow(clippy::too_many_arguments)]
fn run_task<K: MicroKernel>(
    s: &Shape,
    a: &MatRef,
    b: &MatRef,
    c: SyncPtr,
    task: Task,
    (direct_a, direct_b): (bool, bool),
    [apack, bpack, cstage]: [&mut Vec<f32>; 3],
) {
    let _span = trace::span("cpu", "gemm task")
        .arg("rows", || format!("{}..{}", task.rows.0, task.rows.1))
        .arg("cols", || format!("{}..{}", task.cols.0, task.cols.1));
    let (mr, nr) = (K::MR, K::NR);
    // Equal slices of k: 784 becomes 2 x 392 rather than 384 + 384 + 16.
    let kc_max = s.k.div_ceil(s.k.div_ceil(K::KC));
    let (ip0, ip1) = task.rows;
    // Full row panels of A read in place need no copy; a partial last panel is still
    // packed, zero-padded, so the kernel never reads past A.
    let first_packed = if direct_a {
        ip1 - usize::from(ip1 * mr > s.m)
    } else {
        ip0
    };
    let packed_a = ip1 - first_packed;
    // Column blocks of at most NC, all of one width (784 columns become 3 x 264 rather
    // than 384 + 384 + 16).
    let n_panels = task.cols.1 - task.cols.0;
    let nc_panels = n_panels.div_ceil(n_panels.div_ceil(K::NC / nr));
    // A read in place has no block of its own to keep in L2: one panel at a time, which
    // stays in L1 against the whole block of B.
    let mc_panels = if direct_a { 1 } else { (K::MC / mr).max(1) };
    // The task's block of C, and where its slices' sums go (see `stages_c`).
    let (i_lo, i_hi) = (ip0 * mr, (ip1 * mr).min(s.m));
    let (j_lo, j_hi) = (task.cols.0 * nr, (task.cols.1 * nr).min(s.n));
    let staged = K::READS_C_APART && mc_panels > 1 && stages_c(s, kc_max, i_hi - i_lo, j_hi - j_lo);
    let in_place = CTarget {
        out: c,
        ldc_out: s.ldc,
        inp: c,
        ldc_in: s.ldc,
    };
    let stage = if staged {
        let ldc = staged_stride(j_hi - j_lo);
        cstage.resize((i_hi - i_lo) * ldc, 0.0);
        // A base as far before the buffer as the block's corner is into C, so that C's
        // indices address it; only the block's elements are read or written.
        let base = SyncPtr(cstage.as_mut_ptr().wrapping_sub(i_lo * ldc + j_lo));
        CTarget {
            out: base,
            ldc_out: ldc,
            inp: base,
            ldc_in: ldc,
        }
    } else {
        in_place
    };
    apack.resize(packed_a * mr * kc_max, 0.0);
    bpack.resize(nc_panels * nr * kc_max, 0.0);
    for pc in (0..s.k).step_by(kc_max) {
        let kc = kc_max.min(s.k - pc);
        let ap = &mut apack[..packed_a * mr * kc];
        for (idx, dst) in ap.chunks_mut(mr * kc).enumerate() {
            let i0 = (first_packed + idx) * mr;
            let rows = mr.min(s.m - i0);
            #[cfg(target_arch = "x86_64")]
            if K::PAIRS {
                // SAFETY: a pairs kernel is chosen only through a `Simd` with
                // `bf16_dot`, which proves the features `pairs` needs.
                unsafe { pairs::pack_a(dst, a, i0, rows, pc, kc, mr, cstage) };
                continue;
            }
            pack::pack_a(dst, a, i0, rows, pc, kc, mr, s.avx_pack);
            round::round_in_place(s.simd, s.inputs, dst);
        }
        let ap = &*ap;
        let a_panel = |ip: usize| {
            if ip < first_packed {
                APanel {
                    // In bounds: `sgemm` checked that A's m x k elements fit its data.
                    ptr: a.data[ip * mr * a.rs + pc * a.cs..].as_ptr(),
                    rs: a.rs,
                    cs: a.cs,
                }
            } else {
                APanel {
                    ptr: ap[(ip - first_packed) * mr * kc..].as_ptr(),
                    rs: 1,
                    cs: mr,
                }
            }
        };
        let beta = if pc == 0 { s.beta } else { 1.0 };
        // The epilogue runs once, on the last slice's sums.
        let last = pc + kc == s.k;
        // A staged block's slices sum in the stage; the last reads it and writes C.
        let target = match (staged, last) {
            (false, _) => in_place,
            (true, false) => stage,
            (true, true) => CTarget {
                inp: stage.inp,
                ldc_in: stage.ldc_in,
                ..in_place
            },
        };
        for jb in (task.cols.0..task.cols.1).step_by(nc_panels) {
            let jb_end = (jb + nc_panels).min(task.cols.1);
            // As for A: B read in place but for a partial last panel.
            let b_packed_from = if direct_b {
                jb_end - usize::from(jb_end * nr > s.n)
            } else {
                jb
            };
            let bp = &mut bpack[..(jb_end - b_packed_from) * nr * kc];
            #[cfg(target_arch = "x86_64")]
            let pairs_done = K::PAIRS && {
                let j0 = b_packed_from * nr;
                if b.cs == 1 {
                    let cols = (jb_end * nr).min(s.n) - j0;
                    // SAFETY: as for A's panels.
                    unsafe { pairs::pack_b_rows(bp, b, pc, kc, j0, cols, nr) };
                } else {
                    for (idx, dst) in bp.chunks_mut(nr * kc).enumerate() {
                        let j0 = j0 + idx * nr;
                        let cols = nr.min(s.n - j0);
                        // SAFETY: as for A's panels.
                        unsafe { pairs::pack_b(dst, b, pc, kc, j0, cols, nr, cstage) };
                    }
                }
                true
            };
            #[cfg(not(target_arch = "x86_64"))]
            let pairs_done = false;
            if pairs_done {
                // Packed above.
            } else if b.cs == 1 {
                let j0 = b_packed_from * nr;
                let cols = (jb_end * nr).min(s.n) - j0;
                pack::pack_b_rows(bp, b, pc, kc, j0, cols, nr, s.avx_pack);
            } else {
                for (idx, dst) in bp.chunks_mut(nr * kc).enumerate() {
                    let j0 = (b_packed_from + idx) * nr;
                    pack::pack_b(dst, b, pc, kc, j0, nr.min(s.n - j0), nr, s.avx_pack);
                }
            }
            if !pairs_done {
                round::round_in_place(s.simd, s.inputs, bp);
            }
            let bp = &*bp;
            let b_panel = |jp: usize| {
                if jp < b_packed_from {
                    BPanel {
                        // In bounds: `sgemm` checked that B's k x n elements fit its data.
                        ptr: b.data[pc * b.rs + jp * nr..].as_ptr(),
                        rs: b.rs,
                    }
                } else {
                    BPanel {
                        ptr: bp[(jp - b_packed_from) * nr * kc..].as_ptr(),
                        rs: nr,
                    }
                }
            };
            let epilogue = if last {
                s.epilogue
            } else {
                Epilogue::default()
            };
            // A run of full tiles from (ip, jp), each the last one's neighbour `step` away
            // in panels of A (down) or of B (across), through `MicroKernel::tiles`.
            let run = |count: usize, ip: usize, jp: usize, down: bool| {
                if count == 0 {
                    return;
                }
                let (a, b) = (a_panel(ip), b_panel(jp));
                let t = Tiles {
                    count,
                    kc,
                    a: a.ptr,
                    rs_a: a.rs,
                    cs_a: a.cs,
                    // Consecutive panels: packed A's are MR x kc apart, packed B's kc x NR,
                    // B read in place NR columns.
                    a_step: if down { mr * kc } else { 0 },
                    b: b.ptr,
                    rs_b: b.rs,
                    b_step: match (down, jp >= b_packed_from) {
                        (true, _) => 0,
                        (false, true) => nr * kc,
                        (false, false) => nr,
                    },
                    // SAFETY (of the pointers): tasks cover disjoint tiles of C, which
                    // `sgemm` bounds-checked (or of their own stage, which holds their
                    // block), and the run's panels are in bounds (above).
                    c: target
                        .out
                        .0
                        .wrapping_add(ip * mr * target.ldc_out + jp * nr),
                    ldc: target.ldc_out,
                    c_step: if down { mr * target.ldc_out } else { nr },
                    c_in: target.inp.0.wrapping_add(ip * mr * target.ldc_in + jp * nr),
                    ldc_in: target.ldc_in,
                    c_in_step: if down { mr * target.ldc_in } else { nr },
                    alpha: s.alpha,
                    beta,
                    bias: epilogue
                        .bias
                        .map_or(std::ptr::null(), |bias| bias[jp * nr..].as_ptr()),
                    bias_step: if down { 0 } else { nr },
                    relu: epilogue.relu,
                };
                // SAFETY: as above; the CPU runs `K` (its `Simd` was detected).
                unsafe { K::tiles(&t) };
            };
            // SAFETY (of the edge tiles): as for the runs.
            let edge = |ip: usize, jp: usize| unsafe {
                tile::<K>(
                    s,
                    kc,
                    a_panel(ip),
                    b_panel(jp),
                    target,
                    ip * mr,
                    jp * nr,
                    beta,
                    last,
                )
            };
            let (full_rows, full_cols) = (s.m / mr, s.n / nr);
            if mc_panels > 1 {
                // Every panel of A is packed here, so one block's panels are consecutive.
                for ib in (ip0..ip1).step_by(mc_panels) {
                    let ib_end = (ib + mc_panels).min(ip1);
                    let full_end = ib_end.min(full_rows).max(ib);
                    for jp in jb..jb_end {
                        if jp < full_cols {
                            run(full_end - ib, ib, jp, true);
                            (full_end..ib_end).for_each(|ip| edge(ip, jp));
                        } else {
                            (ib..ib_end).for_each(|ip| edge(ip, jp));
                        }
                    }
                }
            } else {
                for ip in ip0..ip1 {
                    if ip >= full_rows {
                        (jb..jb_end).for_each(|jp| edge(ip, jp));
                        continue;
                    }
                    // Panels of B read in place, then packed ones: a run of each.
                    let full_end = jb_end.min(full_cols).max(jb);
                    let split = b_packed_from.clamp(jb, full_end);
                    run(split - jb, ip, jb, false);
                    run(full_end - split, ip, split, false);
                    (full_end..jb_end).for_each(|jp| edge(ip, jp));
                }
            }
        }
    }
}

/// Whether a task sums its slices of k in a buffer of its own (the stage), at a row
/// stride that is not a multiple of 2 KiB, the last slice reading the stage and writing C.
///
/// When C's rows are a multiple of 4 KiB apart (n = 1024, 2048), the six rows of a tile
/// fall in one set of L1, as do those of the tiles below it, which BLIS's order walks
/// down: they evict the panel of B that L1 holds for the next tiles. Measured on Zen 3,
/// one thread, C's rows padded by 16 floats against not (alternated call by call):
/// 1024^3 and 2048^3 2.5-3.5% faster, a cost paid on every slice of k. Staging pays it on
/// the last slice only; a copy of the stage into C instead cost as much as it saved.
///
/// Only for `beta == 0` (the last slice reads the stage, not C), more than one slice,
/// and a block of at most 32 MiB (the buffer stays with the thread, as the packing's do).
fn stages_c(s: &Shape, kc: usize, rows: usize, cols: usize) -> bool {
    s.beta == 0.0 && s.ldc.is_multiple_of(1024) && s.k > kc && rows * staged_stride(cols) <= 1 << 23
}

/// The row stride of a staged block `cols` wide: whole tiles, and not a multiple of 2 KiB.
fn staged_stride(cols: usize) -> usize {
    let ldc = cols.next_multiple_of(16);
    if ldc.is_multiple_of(512) {
        ldc + 16
    } else {
        ldc
    }
}

/// Whether the micro-kernel reads A where it lies rather than from packed panels.
///
/// Packing costs a pass over A and pays off only when each panel then meets many panels
/// of B. Measured on Zen 2 (`sgemm --shapes`, both ways): row-major A read in place is
/// 10-50% faster up to n = 1024 (the transformer's and MLP's products: 55 -> 85 GFLOP/s at
/// m = 1024, n = 64), and 25% slower at 2048 cubed, where A no longer fits the L3 and six
/// rows stream from memory for every block of B. A transposed A (the weight gradient's
/// `G^T`) gathers a cache line per step of k, which pays only when B is narrow or A short
/// (1024 x 64 x 1024: 33 -> 47 GFLOP/s; 1024 x 256 x 1024: 54 -> 45).
///
/// Not when A's rows are a multiple of 4 KiB apart: the panel's MR rows then fall in the
/// same sets of L1 and evict each other and B (see `reads_b_in_place` on L1's sets).
fn reads_a_in_place<K: MicroKernel>(s: &Shape, a: &MatRef) -> bool {
    if a.cs == 1 {
        s.n <= 4 * K::NC && !a.rs.is_multiple_of(1024)
    } else if a.rs == 1 {
        s.n <= 64 || (s.n <= 384 && s.m <= 512)
    } else {
        false
    }
}

/// Whether the micro-kernel reads B's rows where they lie (B row-major) rather than from
/// packed panels: when A is short, each panel of B meets few panels of A, and packing B
/// (the weight gradient's `X`, 1024 rows) costs as much as the product. Measured on Zen 2
/// (`sgemm --shapes`): 15-25% faster up to m = 128 (64 x 64 x 1024: 60 -> 71 GFLOP/s;
/// 94 x 384 x 1024: 67 -> 77), 5-8% slower from m = 192.
///
/// Not when B's rows are a multiple of 512 bytes apart: a panel's `kc` rows, one 64-byte
/// line each, then fall in at most 8 of L1's 64 sets (64 lines), evict each other, and
/// every call of the kernel reads them from L2 again; packed, the panel is contiguous
/// and stays in L1 from one panel of A to the next. Measured on Zen 3, in place against
/// packed: 128 x 512 x 256 (the MLP's input gradient, B rows 2 KiB apart) 40 against 52
/// GFLOP/s, 94 x 384 x 1024 (1.5 KiB) 43 against 46; 64 x 64 x 1024 (256 bytes, 16 sets)
/// 59 against 43.
fn reads_b_in_place(s: &Shape, b: &MatRef) -> bool {
    b.cs == 1 && s.m <= 128 && !b.rs.is_multiple_of(128)
}

/// A kc x NR panel of B for the micro-kernel: row `p` at `ptr + p * rs`.
#[derive(Clone, Copy)]
struct BPanel {
    ptr: *const f32,
    rs: usize,
}

/// An MR x kc panel of A for the micro-kernel: packed, or the operand itself.
#[derive(Clone, Copy)]
struct APanel {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: the GEMM tasks that share it write disjoint tiles.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

/// Where one slice of k writes its tiles and reads the sums of the slices before it: C,
/// or a task's staged block (`stages_c`). Element `(i, j)` of C, by C's indices, is at
/// `ptr + i * ldc + j` in each (wrapping: a stage's base lies before its buffer).
#[derive(Clone, Copy)]
struct CTarget {
    out: SyncPtr,
    ldc_out: usize,
    inp: SyncPtr,
    ldc_in: usize,
}

/// One MR x NR tile at (i0, j0) of `c`, with the epilogue when `last`; edge tiles (and
/// a tile that reads C apart from where it writes) go through a scratch tile, so the
/// kernel never writes outside C (or reads past the bias).
#[allow(clippy::too_many_arguments)]
unsafe fn tile<K: MicroKernel>(
    s: &Shape,
    kc: usize,
    a_panel: APanel,
    b_panel: BPanel,
    c: CTarget,
    i0: usize,
    j0: usize,
    beta: f32,
    last: bool,
) {
    let (rows, cols) = (K::MR.min(s.m - i0), K::NR.min(s.n - j0));
    let APanel {
        ptr: a,
        rs: rs_a,
        cs: cs_a,
    } = a_panel;
    let BPanel { ptr: b, rs: rs_b } = b_panel;
    let epilogue = if last {
        s.epilogue
    } else {
        Epilogue::default()
    };
    unsafe {
        let c_tile = c.out.0.wrapping_add(i0 * c.ldc_out + j0);
        let c_in = c.inp.0.wrapping_add(i0 * c.ldc_in + j0);
        if rows == K::MR && cols == K::NR && std::ptr::eq(c_tile, c_in) {
            let bias = epilogue
                .bias
                .map_or(std::ptr::null(), |bias| bias[j0..].as_ptr());
            K::kernel(
                kc,
                a,
                rs_a,
                cs_a,
                b,
                rs_b,
                c_tile,
                c.ldc_out,
                s.alpha,
                beta,
                bias,
                epilogue.relu,
            );
            return;
        }
        let mut scratch = [0f32; MAX_TILE];
        let null = std::ptr::null();
        K::kernel(
            kc,
            a,
            rs_a,
            cs_a,
            b,
            rs_b,
            scratch.as_mut_ptr(),
            K::NR,
            s.alpha,
            0.0,
            null,
            false,
        );
        for i in 0..rows {
            // Raw pointers, element by element: `c_in` may be the tile itself.
            let (out, prior) = (c_tile.add(i * c.ldc_out), c_in.add(i * c.ldc_in));
            for (j, &v) in scratch[i * K::NR..][..cols].iter().enumerate() {
                let z = if beta == 0.0 {
                    v
                } else {
                    v + beta * *prior.add(j)
                };
                *out.add(j) = epilogue.apply(z, j0 + j);
            }
        }
    }
}

#[cfg(test)]
mod tests;
