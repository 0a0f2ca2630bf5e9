//! One conformance suite for every [`Backend`]: each method is checked against a plain
//! scalar f64 reference written here, independent of the kernels under test.
//!
//! The suite is written once, generically over `B: Backend`, and instantiated with
//! `conformance_suite!(module_name, <expression giving a Vec of backends>)`. A new backend
//! (the GPU one) is one more line at the bottom of this file.
//!
//! Sizes are chosen so that every kernel sees empty buffers, single elements, lengths that
//! leave SIMD tails (15, 17, 33), and at least one size above the CPU backend's
//! parallel threshold (2 * 32768 elements), so the rayon paths are checked too.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringtrain_kernels::cpu::{CpuBackend, Simd};
use ringtrain_kernels::gpu::GpuBackend;
use ringtrain_kernels::{
    contiguous_strides, AdamWParams, Backend, BinaryLayout, BinaryOp, GemmSpec, SgdParams,
    StridedLayout, UnaryOp, Window2d,
};

/// Above the CPU backend's parallel threshold (2 * PAR_CHUNK = 65536), with a ragged tail.
const BIG: usize = 2 * 32768 + 7;
/// Lengths that hit the empty, scalar, SIMD-tail and multi-threaded code paths.
const LENGTHS: &[usize] = &[0, 1, 15, 17, 33, BIG];

const UNARY_OPS: [UnaryOp; 10] = [
    UnaryOp::Neg,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqr,
    UnaryOp::Sqrt,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::NonFinite,
];

const BINARY_OPS: [BinaryOp; 4] = [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div];

// ---- helpers ------------------------------------------------------------------------------

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn uniform(len: usize, lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// Values with magnitude in `[lo, hi)` and a random sign: safe divisors.
fn away_from_zero(len: usize, lo: f32, hi: f32, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let v = rng.random_range(lo..hi);
            if rng.random_bool(0.5) {
                v
            } else {
                -v
            }
        })
        .collect()
}

fn up<B: Backend>(b: &B, data: &[f32]) -> B::Buffer {
    b.upload(data).expect("upload")
}

fn down<B: Backend>(b: &B, buf: &B::Buffer) -> Vec<f32> {
    b.download(buf).expect("download")
}

/// A buffer of `len` elements pre-filled with NaN, so any element an op forgets to write
/// shows up as a mismatch (outputs must be fully overwritten).
fn poisoned<B: Backend>(b: &B, len: usize) -> B::Buffer {
    let mut buf = b.zeros(len).expect("zeros");
    b.fill(&mut buf, f32::NAN).expect("fill");
    buf
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise (NaN never passes).
fn assert_close(ctx: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{ctx}: element {i} of {} is {g}, want {w} (error {err:e})",
            got.len()
        );
    }
}

/// Asserts `|got[i] - want[i]| <= tol[i]`, for errors that scale with something other
/// than the result (an input's magnitude, an incoming gradient).
fn assert_within(ctx: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= t,
            "{ctx}: element {i} of {} is {g}, want {w} (error {err:e} > {t:e})",
            got.len()
        );
    }
}

/// Asserts bitwise equality (for ops whose f32 result is exactly determined).
fn assert_exact(ctx: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{ctx}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{ctx}: element {i} of {} is {g}, want {w}",
            got.len()
        );
    }
}

/// Asserts that `result` is an error whose message contains every one of `needles`.
fn assert_err<T>(ctx: &str, result: ringtrain_kernels::Result<T>, needles: &[&str]) {
    match result {
        Ok(_) => panic!("{ctx}: expected an error, got Ok"),
        Err(e) => {
            let msg = e.to_string();
            for n in needles {
                assert!(
                    msg.contains(n),
                    "{ctx}: error `{msg}` does not mention `{n}`"
                );
            }
        }
    }
}

/// Buffer index of element `flat` (row-major over `shape`) read through `strides`.
fn strided_index(mut flat: usize, shape: &[usize], strides: &[usize], offset: usize) -> usize {
    let mut idx = offset;
    for d in (0..shape.len()).rev() {
        idx += (flat % shape[d]) * strides[d];
        flat /= shape[d];
    }
    idx
}

/// Smallest buffer a strided view over `shape` can be read from.
fn span(shape: &[usize], strides: &[usize]) -> usize {
    StridedLayout {
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        offset: 0,
    }
    .span()
    .max(1)
}

// ---- f64 references -----------------------------------------------------------------------

const GELU_C: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
const GELU_A: f64 = 0.044_715;

fn unary_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqr => x * x,
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Gelu => 0.5 * x * (1.0 + (GELU_C * (x + GELU_A * x.powi(3))).tanh()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::NonFinite => f64::from(u8::from(!x.is_finite())),
    }
}

fn unary_grad_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -1.0,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => 1.0 / x,
        UnaryOp::Sqr => 2.0 * x,
        UnaryOp::Sqrt => 0.5 / x.sqrt(),
        UnaryOp::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::Gelu => {
            let t = (GELU_C * (x + GELU_A * x.powi(3))).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x * x)
        }
        UnaryOp::Tanh => 1.0 - x.tanh().powi(2),
        UnaryOp::Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        UnaryOp::NonFinite => 0.0,
    }
}

/// Inputs inside each op's domain. Relu avoids a band around its kink, where the
/// derivative convention (0 at 0) is not what is being tested.
fn unary_inputs(op: UnaryOp, len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    match op {
        UnaryOp::Log | UnaryOp::Sqrt => uniform(len, 0.05, 20.0, rng),
        UnaryOp::Relu => away_from_zero(len, 0.01, 4.0, rng),
        UnaryOp::Exp => uniform(len, -20.0, 20.0, rng),
        // Every third value infinite or NaN, among large and tiny finite ones.
        UnaryOp::NonFinite => uniform(len, -6.0, 6.0, rng)
            .into_iter()
            .enumerate()
            .map(|(i, x)| match i % 6 {
                0 => f32::NAN,
                2 => f32::INFINITY,
                4 => f32::NEG_INFINITY,
                1 => f32::MAX * x.signum(),
                3 => f32::MIN_POSITIVE * x / 8.0,
                _ => x,
            })
            .collect(),
        _ => uniform(len, -6.0, 6.0, rng),
    }
}

fn binary_ref(op: BinaryOp, a: f32, b: f32) -> f32 {
    // +, -, *, / of two f32 are exact in f64, or rounded once; rounding that to f32 is the
    // correctly rounded f32 result, which IEEE requires of every backend.
    let (a, b) = (a as f64, b as f64);
    (match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
    }) as f32
}

fn log_softmax_ref(x: &[f32], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max
            + row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        out.extend(row.iter().map(|&v| v as f64 - lse));
    }
    out
}

// ---- the checks, generic over the backend ------------------------------------------------------

/// zeros / upload / download / fill / len.
fn memory<B: Backend>(b: &B) {
    let name = b.name();
    for &len in LENGTHS {
        let z = b.zeros(len).unwrap();
        assert_eq!(b.len(&z), len, "{name}: len of zeros({len})");
        assert!(
            down(b, &z).iter().all(|v| v.to_bits() == 0),
            "{name}: zeros({len}) is not all +0.0"
        );
        let data = uniform(len, -3.0, 3.0, &mut rng(len as u64));
        let mut buf = up(b, &data);
        assert_eq!(b.len(&buf), len, "{name}: len of upload({len})");
        assert_exact(&format!("{name}: round trip {len}"), &down(b, &buf), &data);
        b.fill(&mut buf, -2.5).unwrap();
        assert_eq!(b.len(&buf), len, "{name}: fill changed the length");
        assert!(
            down(b, &buf).iter().all(|&v| v == -2.5),
            "{name}: fill({len})"
        );
    }
    // Special values survive the round trip bit for bit.
    let special = [
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-45,
    ];
    assert_exact(
        &format!("{name}: special values"),
        &down(b, &up(b, &special)),
        &special,
    );
    // Several buffers read back at once, empty ones among them, each as it was written;
    // and the same buffer twice.
    let datas: Vec<Vec<f32>> = LENGTHS
        .iter()
        .chain(&[3, 0, 1])
        .map(|&len| uniform(len, -3.0, 3.0, &mut rng(100 + len as u64)))
        .collect();
    let bufs: Vec<B::Buffer> = datas.iter().map(|d| up(b, d)).collect();
    let mut refs: Vec<&B::Buffer> = bufs.iter().collect();
    refs.push(&bufs[2]);
    let got = b.download_many(&refs).expect("download_many");
    assert_eq!(got.len(), refs.len(), "{name}: download_many's count");
    for (i, g) in got.iter().enumerate() {
        let want = &datas[if i < datas.len() { i } else { 2 }];
        assert_exact(&format!("{name}: download_many buffer {i}"), g, want);
    }
    assert!(b
        .download_many(&[])
        .expect("download_many of none")
        .is_empty());
}

fn unary<B: Backend>(b: &B) {
    let name = b.name();
    for op in UNARY_OPS {
        for &len in LENGTHS {
            let ctx = format!("{name}: unary {op:?} len {len}");
            let x = unary_inputs(op, len, &mut rng(7 + len as u64));
            let xb = up(b, &x);
            let mut yb = poisoned(b, len);
            b.unary(op, &xb, &mut yb).unwrap();
            let want: Vec<f64> = x.iter().map(|&v| unary_ref(op, v as f64)).collect();
            // The transcendentals are polynomial approximations good to a few ulp.
            assert_close(&ctx, &down(b, &yb), &want, 1e-6, 2e-6);
        }
    }
}

fn unary_backward<B: Backend>(b: &B) {
    let name = b.name();
    for op in UNARY_OPS {
        for &len in LENGTHS {
            let ctx = format!("{name}: unary_backward {op:?} len {len}");
            let mut r = rng(11 + len as u64);
            let x = unary_inputs(op, len, &mut r);
            let dy = uniform(len, -2.0, 2.0, &mut r);
            let xb = up(b, &x);
            // y comes from the backend's own forward, as the runtime passes it.
            let mut yb = poisoned(b, len);
            b.unary(op, &xb, &mut yb).unwrap();
            let mut dxb = poisoned(b, len);
            b.unary_backward(op, &xb, &yb, &up(b, &dy), &mut dxb)
                .unwrap();
            let want: Vec<f64> = x
                .iter()
                .zip(&dy)
                .map(|(&x, &g)| g as f64 * unary_grad_ref(op, x as f64))
                .collect();
            // Derivatives computed in f32 lose relative accuracy where they are small:
            // 1 - y^2 and y (1 - y) from f32 outputs, and GELU's 0.5 (1 + tanh) for x < -3,
            // which cancels to an absolute error of ~2e-6 (times dy) in f32.
            let tol: Vec<f64> = want
                .iter()
                .zip(&dy)
                .map(|(w, &g)| 3e-6 * g.abs() as f64 + 1e-5 * w.abs())
                .collect();
            assert_within(&ctx, &down(b, &dxb), &want, &tol);
        }
    }
}

fn affine<B: Backend>(b: &B) {
    let name = b.name();
    for &len in LENGTHS {
        for (mul, add) in [(1.0f32, 0.0f32), (-1.5, 0.25), (0.0, 3.0), (2.0, -7.5)] {
            let x = uniform(len, -4.0, 4.0, &mut rng(3 + len as u64));
            let mut yb = poisoned(b, len);
            b.affine(&up(b, &x), &mut yb, mul, add).unwrap();
            let want: Vec<f64> = x
                .iter()
                .map(|&v| v as f64 * mul as f64 + add as f64)
                .collect();
            // One rounding (fused) or two (separate multiply and add) are both fine.
            assert_close(
                &format!("{name}: affine({mul}, {add}) len {len}"),
                &down(b, &yb),
                &want,
                1e-6,
                2.5e-7,
            );
        }
    }
}

/// One binary-op layout: output shape and the strides each operand is read with.
struct Case {
    label: &'static str,
    shape: Vec<usize>,
    lhs: Vec<usize>,
    rhs: Vec<usize>,
}

fn binary_cases() -> Vec<Case> {
    let c = |shape: &[usize]| contiguous_strides(shape);
    let case = |label, shape: &[usize], lhs: Vec<usize>, rhs: Vec<usize>| Case {
        label,
        shape: shape.to_vec(),
        lhs,
        rhs,
    };
    vec![
        case("empty", &[0], c(&[0]), c(&[0])),
        case("empty rows", &[0, 5], c(&[0, 5]), vec![0, 1]),
        case("scalar", &[], vec![], vec![]),
        case("one", &[1], c(&[1]), c(&[1])),
        case("flat 15", &[15], c(&[15]), c(&[15])),
        case("flat 17", &[17], c(&[17]), c(&[17])),
        case("same 3x33", &[3, 33], c(&[3, 33]), c(&[3, 33])),
        // [4, 17] op [17]: a bias row, rhs stride 0 on the rows.
        case("row broadcast", &[4, 17], c(&[4, 17]), vec![0, 1]),
        // [5, 7] op [5, 1]: a column, rhs stride 0 along the row.
        case("column broadcast", &[5, 7], c(&[5, 7]), vec![1, 0]),
        // [3, 1] op [1, 4]: both operands broadcast.
        case("outer broadcast", &[3, 4], vec![1, 0], vec![0, 1]),
        // lhs broadcast instead of rhs.
        case("lhs row broadcast", &[6, 15], vec![0, 1], c(&[6, 15])),
        // [2, 3, 4] op [3, 1].
        case("3-d middle", &[2, 3, 4], c(&[2, 3, 4]), vec![0, 1, 0]),
        // [2, 3, 4] op [2, 1, 4].
        case("3-d outer+inner", &[2, 3, 4], c(&[2, 3, 4]), vec![4, 0, 1]),
        // A scalar broadcast to everything.
        case("scalar broadcast", &[2, 3, 5], vec![0, 0, 0], c(&[2, 3, 5])),
        // Size-1 dims inside the shape.
        case(
            "unit dims",
            &[2, 1, 5, 1],
            c(&[2, 1, 5, 1]),
            vec![0, 0, 1, 0],
        ),
        // rhs read transposed: a [4, 3] buffer as [3, 4] (stride neither 0 nor 1).
        case("transposed rhs", &[3, 4], c(&[3, 4]), vec![1, 3]),
        // Big enough to split across threads: contiguous, and a bias broadcast.
        case("big flat", &[BIG], c(&[BIG]), c(&[BIG])),
        case("big row broadcast", &[300, 257], c(&[300, 257]), vec![0, 1]),
        // Parallel with short rows (inner < 64 takes the serial path on the CPU).
        case(
            "big column broadcast",
            &[5000, 20],
            c(&[5000, 20]),
            vec![1, 0],
        ),
    ]
}

fn binary<B: Backend>(b: &B) {
    let name = b.name();
    for case in binary_cases() {
        let n: usize = case.shape.iter().product();
        let mut r = rng(n as u64 + 5);
        let lhs = uniform(span(&case.shape, &case.lhs), -3.0, 3.0, &mut r);
        let rhs = away_from_zero(span(&case.shape, &case.rhs), 0.25, 3.0, &mut r);
        let layout = BinaryLayout {
            shape: case.shape.clone(),
            lhs_strides: case.lhs.clone(),
            rhs_strides: case.rhs.clone(),
        };
        let (lb, rb) = (up(b, &lhs), up(b, &rhs));
        for op in BINARY_OPS {
            let mut out = poisoned(b, n);
            b.binary(op, &layout, &lb, &rb, &mut out).unwrap();
            let want: Vec<f32> = (0..n)
                .map(|i| {
                    let a = lhs[strided_index(i, &case.shape, &case.lhs, 0)];
                    let c = rhs[strided_index(i, &case.shape, &case.rhs, 0)];
                    binary_ref(op, a, c)
                })
                .collect();
            let ctx = format!("{name}: binary {op:?} {} {:?}", case.label, case.shape);
            assert_exact(&ctx, &down(b, &out), &want);
        }
    }
}

fn copy_strided<B: Backend>(b: &B) {
    let name = b.name();
    let view = |shape: &[usize], strides: &[usize], offset| StridedLayout {
        shape: shape.to_vec(),
        strides: strides.to_vec(),
        offset,
    };
    let cases: Vec<(&str, usize, StridedLayout)> = vec![
        ("contiguous", 33, StridedLayout::contiguous(&[3, 11])),
        // A [3, 5] matrix read as its [5, 3] transpose.
        ("transpose", 15, view(&[5, 3], &[1, 5], 0)),
        // [4] repeated as [3, 4], and [3, 1] repeated as [3, 4].
        ("broadcast rows", 4, view(&[3, 4], &[0, 1], 0)),
        ("broadcast columns", 3, view(&[3, 4], &[1, 0], 0)),
        // The [2, 3] block at (2, 3) of a [6, 7] matrix.
        ("offset block", 42, view(&[2, 3], &[7, 1], 2 * 7 + 3)),
        // A single element far into the buffer.
        ("offset scalar", 10, view(&[], &[], 9)),
        // [2, 3, 4] permuted to [4, 2, 3] (dims 2, 0, 1).
        ("3-d permute", 24, view(&[4, 2, 3], &[1, 12, 4], 0)),
        // [2, 3, 4] with dims 1 and 2 swapped, starting after a 5-element header.
        ("3-d swap + offset", 29, view(&[2, 4, 3], &[12, 1, 4], 5)),
        ("empty", 0, view(&[0, 3], &[3, 1], 0)),
        // Big enough for the parallel path, both as a transpose and as a broadcast.
        ("big transpose", 300 * 301, view(&[301, 300], &[1, 301], 0)),
        ("big broadcast", 300, view(&[400, 300], &[0, 1], 0)),
        // A transformer's [b, t, 3, h, hd] projection as [3, b, h, t, hd]: rows of 16,
        // split across tasks mid-index.
        (
            "big head permute",
            6 * 70 * 3 * 4 * 16,
            view(&[3, 6, 4, 70, 16], &[64, 13440, 16, 192, 1], 0),
        ),
    ];
    for (label, src_len, layout) in cases {
        let src = uniform(src_len, -5.0, 5.0, &mut rng(src_len as u64));
        let n = layout.elem_count();
        let mut dst = poisoned(b, n);
        b.copy_strided(&up(b, &src), &layout, &mut dst).unwrap();
        let want: Vec<f32> = (0..n)
            .map(|i| src[strided_index(i, &layout.shape, &layout.strides, layout.offset)])
            .collect();
        assert_exact(
            &format!("{name}: copy_strided {label}"),
            &down(b, &dst),
            &want,
        );
    }
}

fn sum_axis<B: Backend>(b: &B) {
    let name = b.name();
    let cases = [
        (1, 0, 1),
        (3, 0, 5), // an empty axis sums to zeros
        (0, 4, 3),
        (1, 1, 1),
        (1, 17, 1),
        (4, 33, 1),
        (5, 7, 3),
        (2, 15, 17),
        (3, 1, 33),
        // Parallel: a 300 x 700 matrix summed over each of its axes.
        (1, 300, 700),
        (300, 700, 1),
        // Parallel with a short inner dimension: the bias gradient of [8192, 10] logits,
        // and a 3-d tensor summed over its middle axis.
        (1, 8192, 10),
        (2000, 50, 3),
        (10, 5000, 2),
        // Parallel across pieces of wide rows (summed by columns, not by blocks of rows).
        (2, 3, 20000),
    ];
    for (outer, axis, inner) in cases {
        let ctx = format!("{name}: sum_axis outer {outer} axis {axis} inner {inner}");
        let x = uniform(outer * axis * inner, -1.0, 1.0, &mut rng(axis as u64));
        let mut out = poisoned(b, outer * inner);
        b.sum_axis(&up(b, &x), &mut out, outer, axis, inner)
            .unwrap();
        let got = down(b, &out);
        assert_eq!(got.len(), outer * inner, "{ctx}: length");
        for o in 0..outer {
            for i in 0..inner {
                let terms = (0..axis).map(|a| x[(o * axis + a) * inner + i] as f64);
                let want: f64 = terms.clone().sum();
                let abs: f64 = terms.map(f64::abs).sum();
                // Error bound of any f32 summation order: (n - 1) u sum|x|.
                let tol = axis as f64 * f32::EPSILON as f64 * 0.5 * abs + 1e-30;
                let g = got[o * inner + i] as f64;
                assert!(
                    (g - want).abs() <= tol,
                    "{ctx}: out[{o}, {i}] = {g}, want {want}"
                );
            }
        }
    }
}

fn log_softmax<B: Backend>(b: &B) {
    let name = b.name();
    for (rows, cols) in [(0, 5), (1, 1), (3, 5), (2, 17), (4, 33), (1000, 70)] {
        let ctx = format!("{name}: log_softmax {rows}x{cols}");
        let mut r = rng((rows * cols) as u64);
        let mut x = uniform(rows * cols, -8.0, 8.0, &mut r);
        // A row of huge logits: only a max-shifted implementation stays finite.
        if rows > 1 {
            x[cols..2 * cols]
                .iter_mut()
                .enumerate()
                .for_each(|(j, v)| *v = 1000.0 + j as f32);
        }
        let xb = up(b, &x);
        let mut yb = poisoned(b, rows * cols);
        b.log_softmax(&xb, &mut yb, rows, cols).unwrap();
        let want = log_softmax_ref(&x, cols.max(1));
        // An f32 result of x - logsumexp(x) is only good to a couple of ulp of the row's
        // largest |x| (6e-5 for logits near 1000), however the kernel computes it.
        let tol: Vec<f64> = x
            .chunks(cols.max(1))
            .flat_map(|row| {
                let big = row.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
                std::iter::repeat_n(1e-5 + 2.0 * f32::EPSILON as f64 * big, row.len())
            })
            .collect();
        let y = down(b, &yb);
        assert_within(&ctx, &y, &want, &tol);

        // Backward: dx = dy - exp(y) * rowsum(dy). The reference reads the backend's own f32
        // y, as the kernel does, so forward rounding is not charged to the backward.
        let dy = uniform(rows * cols, -1.0, 1.0, &mut r);
        let mut dxb = poisoned(b, rows * cols);
        b.log_softmax_backward(&yb, &up(b, &dy), &mut dxb, rows, cols)
            .unwrap();
        let mut want_dx = Vec::with_capacity(rows * cols);
        for (dy_row, y_row) in dy.chunks(cols.max(1)).zip(y.chunks(cols.max(1))) {
            let s: f64 = dy_row.iter().map(|&v| v as f64).sum();
            want_dx.extend(
                dy_row
                    .iter()
                    .zip(y_row)
                    .map(|(&g, &y)| g as f64 - (y as f64).exp() * s),
            );
        }
        assert_close(
            &format!("{ctx} backward"),
            &down(b, &dxb),
            &want_dx,
            1e-5,
            1e-5,
        );
    }
}

fn softmax_cross_entropy<B: Backend>(b: &B) {
    let name = b.name();
    for (rows, cols) in [(1, 1), (3, 5), (5, 17), (2, 33), (7, 2), (2048, 40)] {
        let ctx = format!("{name}: softmax_cross_entropy {rows}x{cols}");
        let mut r = rng(100 + (rows * cols) as u64);
        let mut logits = uniform(rows * cols, -6.0, 6.0, &mut r);
        // Huge logits in one row: a naive exp overflows.
        if rows > 1 {
            logits[cols..2 * cols].iter_mut().for_each(|v| *v += 500.0);
        }
        let labels: Vec<u32> = (0..rows).map(|_| r.random_range(0..cols as u32)).collect();
        let lb = up(b, &logits);
        let labels_buf = b.upload_u32(&labels).unwrap();
        let mut probs = poisoned(b, rows * cols);
        let mut loss = poisoned(b, 1);
        b.softmax_cross_entropy(&lb, &labels_buf, &mut probs, &mut loss, rows, cols)
            .unwrap();

        let logp = log_softmax_ref(&logits, cols);
        let want_loss = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| -logp[i * cols + l as usize])
            .sum::<f64>()
            / rows as f64;
        let want_probs: Vec<f64> = logp.iter().map(|v| v.exp()).collect();
        assert_close(
            &format!("{ctx} loss"),
            &down(b, &loss),
            &[want_loss],
            1e-5,
            1e-5,
        );
        assert_close(
            &format!("{ctx} probs"),
            &down(b, &probs),
            &want_probs,
            1e-6,
            1e-5,
        );

        // Backward: (probs - onehot) * dloss / rows, reading the backend's own probs.
        let dloss = 0.7f32;
        let mut dlogits = poisoned(b, rows * cols);
        b.softmax_cross_entropy_backward(
            &probs,
            &labels_buf,
            &up(b, &[dloss]),
            &mut dlogits,
            rows,
            cols,
        )
        .unwrap();
        let want_d: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let onehot = if labels[i / cols] as usize == i % cols {
                    1.0
                } else {
                    0.0
                };
                (want_probs[i] - onehot) * dloss as f64 / rows as f64
            })
            .collect();
        assert_close(
            &format!("{ctx} backward"),
            &down(b, &dlogits),
            &want_d,
            1e-7,
            1e-5,
        );
    }
}

/// PyTorch SGD in f64: `g += wd p; buf = m buf + g; p -= lr (nesterov ? g + m buf : buf)`.
fn sgd_ref(hp: &SgdParams, p: &mut [f64], g: &[f32], buf: &mut [f64]) {
    let (lr, m, wd) = (hp.lr as f64, hp.momentum as f64, hp.weight_decay as f64);
    for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
        let g = g as f64 + wd * *p;
        if m == 0.0 {
            *p -= lr * g;
            continue;
        }
        *b = m * *b + g;
        *p -= lr * if hp.nesterov { g + m * *b } else { *b };
    }
}

fn sgd_step<B: Backend>(b: &B) {
    let name = b.name();
    let configs = [
        (0.1, 0.0, 0.0, false),
        (0.05, 0.0, 0.1, false),
        (0.1, 0.9, 0.0, false),
        (0.05, 0.8, 0.01, false),
        (0.05, 0.9, 0.01, true),
    ];
    for &len in LENGTHS {
        for (lr, momentum, weight_decay, nesterov) in configs {
            let hp = SgdParams {
                lr,
                momentum,
                weight_decay,
                nesterov,
            };
            let ctx = format!("{name}: sgd_step {hp:?} len {len}");
            let mut r = rng(len as u64 + 31);
            let p0 = uniform(len, -2.0, 2.0, &mut r);
            let mut param = up(b, &p0);
            let mut buf = b.zeros(len).unwrap();
            let mut want_p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
            let mut want_buf = vec![0f64; len];
            for step in 0..3 {
                let g = uniform(len, -1.0, 1.0, &mut r);
                let mom = (momentum != 0.0).then_some(&mut buf);
                b.sgd_step(&hp, &mut param, &up(b, &g), mom).unwrap();
                sgd_ref(&hp, &mut want_p, &g, &mut want_buf);
                let ctx = format!("{ctx} step {step}");
                assert_close(
                    &format!("{ctx} param"),
                    &down(b, &param),
                    &want_p,
                    1e-6,
                    1e-6,
                );
                if momentum != 0.0 {
                    assert_close(
                        &format!("{ctx} buffer"),
                        &down(b, &buf),
                        &want_buf,
                        1e-6,
                        1e-6,
                    );
                }
            }
        }
    }
    // With momentum 0 a buffer may be passed; it is ignored and left untouched.
    let hp = SgdParams {
        lr: 0.5,
        momentum: 0.0,
        weight_decay: 0.0,
        nesterov: false,
    };
    let mut param = up(b, &[1.0, 2.0, 3.0]);
    let mut buf = up(b, &[9.0, 9.0, 9.0]);
    b.sgd_step(&hp, &mut param, &up(b, &[1.0, -1.0, 2.0]), Some(&mut buf))
        .unwrap();
    assert_exact(
        &format!("{name}: sgd momentum 0"),
        &down(b, &param),
        &[0.5, 2.5, 2.0],
    );
    assert_exact(
        &format!("{name}: sgd unused buffer"),
        &down(b, &buf),
        &[9.0; 3],
    );
}

fn adamw_step<B: Backend>(b: &B) {
    let name = b.name();
    for &len in LENGTHS {
        for (lr, weight_decay) in [(1e-2f32, 0.0f32), (3e-3, 0.1)] {
            let mut hp = AdamWParams {
                lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
                step: 0,
            };
            let ctx = format!("{name}: adamw_step lr {lr} wd {weight_decay} len {len}");
            let mut r = rng(len as u64 + 77);
            let p0 = uniform(len, -2.0, 2.0, &mut r);
            let (mut param, mut m, mut v) =
                (up(b, &p0), b.zeros(len).unwrap(), b.zeros(len).unwrap());
            let mut want_p: Vec<f64> = p0.iter().map(|&x| x as f64).collect();
            let (mut want_m, mut want_v) = (vec![0f64; len], vec![0f64; len]);
            let (b1, b2, eps) = (hp.beta1 as f64, hp.beta2 as f64, hp.eps as f64);
            for t in 1..=3u64 {
                hp.step = t;
                let g = uniform(len, -1.0, 1.0, &mut r);
                b.adamw_step(&hp, &mut param, &up(b, &g), &mut m, &mut v)
                    .unwrap();
                for i in 0..len {
                    let g = g[i] as f64;
                    want_p[i] *= 1.0 - lr as f64 * weight_decay as f64;
                    want_m[i] = b1 * want_m[i] + (1.0 - b1) * g;
                    want_v[i] = b2 * want_v[i] + (1.0 - b2) * g * g;
                    let m_hat = want_m[i] / (1.0 - b1.powi(t as i32));
                    let v_hat = want_v[i] / (1.0 - b2.powi(t as i32));
                    want_p[i] -= lr as f64 * m_hat / (v_hat.sqrt() + eps);
                }
                let ctx = format!("{ctx} step {t}");
                assert_close(
                    &format!("{ctx} param"),
                    &down(b, &param),
                    &want_p,
                    1e-6,
                    1e-6,
                );
                assert_close(&format!("{ctx} m"), &down(b, &m), &want_m, 1e-7, 1e-5);
                assert_close(&format!("{ctx} v"), &down(b, &v), &want_v, 1e-9, 1e-5);
            }
        }
    }
}

/// `C = alpha op(A) op(B) + beta C` in f64, for every product in the batch.
fn gemm_ref(s: &GemmSpec, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f64> {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut out = vec![0f64; s.batch * m * n];
    for bi in 0..s.batch {
        let (a, b) = (&a[bi * s.stride_a..], &b[bi * s.stride_b..]);
        for i in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k)
                    .map(|p| {
                        let av = if s.trans_a {
                            a[p * m + i]
                        } else {
                            a[i * k + p]
                        };
                        let bv = if s.trans_b {
                            b[j * k + p]
                        } else {
                            b[p * n + j]
                        };
                        av as f64 * bv as f64
                    })
                    .sum();
                let at = bi * m * n + i * n + j;
                let prior = if s.beta == 0.0 {
                    0.0
                } else {
                    s.beta as f64 * c[at] as f64
                };
                out[at] = s.alpha as f64 * dot + prior;
            }
        }
    }
    out
}

fn gemm<B: Backend>(b: &B) {
    let name = b.name();
    // (m, n, k, batch, share): share 0 = separate operands, 1 = one A for the batch
    // (stride_a 0), 2 = one B for the batch (stride_b 0).
    let shapes = [
        (1, 1, 1, 1, 0),
        (0, 3, 4, 1, 0),
        (3, 0, 4, 1, 0),
        (3, 4, 0, 1, 0),
        (2, 3, 4, 1, 0),
        (15, 17, 33, 1, 0),
        (17, 15, 1, 1, 0),
        (5, 7, 9, 3, 0),
        (5, 7, 9, 3, 1),
        (5, 7, 9, 4, 2),
        (4, 6, 8, 0, 0),
        // Above the CPU's 2^21 multiply-add threshold for splitting across threads.
        (150, 130, 120, 1, 0),
        (70, 80, 200, 2, 2),
        // Several 64 x 64 GPU tiles, every operand readable as vec4s (and a ragged edge).
        (96, 64, 36, 3, 0),
        (65, 130, 64, 1, 0),
    ];
    let mut r = rng(2024);
    for (m, n, k, batch, share) in shapes {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (-0.5, 0.75)] {
                let spec = GemmSpec {
                    batch,
                    stride_a: if share == 1 { 0 } else { m * k },
                    stride_b: if share == 2 { 0 } else { k * n },
                    alpha,
                    beta,
                    ..GemmSpec::new(m, n, k, trans_a, trans_b)
                };
                let (la, lb, lc) = spec.buffer_lens();
                let a = uniform(la, -1.0, 1.0, &mut r);
                let bm = uniform(lb, -1.0, 1.0, &mut r);
                // With beta == 0, C must not be read: NaN there must not leak into the result.
                let c0 = if beta == 0.0 {
                    vec![f32::NAN; lc]
                } else {
                    uniform(lc, -1.0, 1.0, &mut r)
                };
                let mut c = up(b, &c0);
                b.gemm(&spec, &up(b, &a), &up(b, &bm), &mut c).unwrap();
                let want = gemm_ref(&spec, &a, &bm, &c0);
                let ctx = format!("{name}: gemm {spec:?}");
                // f32 accumulation error grows with k; entries are O(sqrt(k)).
                let tol = 1e-5 * (k as f64 + 1.0);
                assert_close(&ctx, &down(b, &c), &want, tol, 0.0);
            }
        }
    }
}

/// The fused linear-layer epilogue: `act(alpha * A B + beta * C + bias)`.
fn gemm_bias_act<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(77);
    let acts = [
        None,
        Some(UnaryOp::Relu),
        Some(UnaryOp::Gelu),
        Some(UnaryOp::Tanh),
    ];
    // The last takes several slices of k on the CPU: the epilogue runs once, at the end.
    for (m, n, k, batch) in [
        (1, 1, 1, 1),
        (7, 9, 5, 1),
        (33, 70, 20, 2),
        (64, 64, 16, 1),
        (20, 40, 600, 1),
    ] {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false)] {
            for act in acts {
                let spec = GemmSpec {
                    batch,
                    stride_a: m * k,
                    stride_b: k * n,
                    ..GemmSpec::new(m, n, k, trans_a, trans_b)
                };
                let (la, lb, lc) = spec.buffer_lens();
                let a = uniform(la, -1.0, 1.0, &mut r);
                let bm = uniform(lb, -1.0, 1.0, &mut r);
                let bias = uniform(n, -1.0, 1.0, &mut r);
                let mut c = poisoned(b, lc);
                let (ab, bb, biasb) = (up(b, &a), up(b, &bm), up(b, &bias));
                b.gemm_bias_act(&spec, &ab, &bb, &biasb, act, &mut c)
                    .unwrap();
                let want: Vec<f64> = gemm_ref(&spec, &a, &bm, &vec![0.0; lc])
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let z = v + bias[i % n] as f64;
                        act.map_or(z, |op| unary_ref(op, z))
                    })
                    .collect();
                let ctx = format!("{name}: gemm_bias_act {act:?} {spec:?}");
                assert_close(&ctx, &down(b, &c), &want, 1e-5 * (k as f64 + 2.0), 1e-5);
            }
        }
    }
    let (a, bm) = (up(b, &[1.0; 6]), up(b, &[1.0; 6]));
    let mut c = b.zeros(4).unwrap();
    assert_err(
        &format!("{name}: gemm_bias_act bias"),
        b.gemm_bias_act(
            &GemmSpec::new(2, 2, 3, false, false),
            &a,
            &bm,
            &up(b, &[0.0; 3]),
            None,
            &mut c,
        ),
        &["gemm_bias_act", "bias", "2", "3"],
    );
}

// ---- sliding windows ------------------------------------------------------------------------

/// Geometries with odd sizes, padding, strides, non-square kernels, several images and
/// channels, and one above the CPU's parallel threshold.
fn windows() -> Vec<Window2d> {
    let g = |batch, channels, height, width, kernel, stride, pad| {
        Window2d::new(batch, channels, (height, width), kernel, stride, pad)
    };
    vec![
        g(1, 1, 1, 1, (1, 1), (1, 1), (0, 0)),
        g(2, 3, 7, 5, (3, 3), (1, 1), (1, 1)),
        g(1, 2, 9, 8, (2, 3), (2, 1), (1, 1)),
        g(3, 1, 6, 6, (2, 2), (2, 2), (0, 0)),
        g(2, 3, 7, 5, (2, 2), (2, 2), (0, 0)),
        g(2, 2, 5, 7, (3, 2), (2, 3), (1, 0)),
        g(1, 1, 4, 4, (4, 4), (1, 1), (0, 0)),
        g(4, 8, 40, 40, (3, 3), (1, 1), (1, 1)),
    ]
}

/// Visits every (image-channel plane, window row, window column, kernel row, kernel
/// column) with the input position it reads, `None` in the padding.
fn each_window_tap(
    g: &Window2d,
    mut f: impl FnMut(usize, usize, usize, usize, usize, Option<usize>),
) {
    for plane in 0..g.batch * g.channels {
        for o in 0..g.out_h() {
            for q in 0..g.out_w() {
                for ki in 0..g.kernel_h {
                    for kj in 0..g.kernel_w {
                        let h = (o * g.stride_h + ki) as i64 - g.pad_h as i64;
                        let w = (q * g.stride_w + kj) as i64 - g.pad_w as i64;
                        let inside =
                            h >= 0 && w >= 0 && (h as usize) < g.height && (w as usize) < g.width;
                        let at =
                            inside.then(|| (plane * g.height + h as usize) * g.width + w as usize);
                        f(plane, o, q, ki, kj, at);
                    }
                }
            }
        }
    }
}

fn im2col<B: Backend>(b: &B) {
    let mut r = rng(61);
    for g in windows() {
        let ctx = format!("{} im2col {g:?}", b.name());
        let x = uniform(g.input_len(), -1.0, 1.0, &mut r);
        let (oh, ow) = (g.out_h(), g.out_w());
        let mut want = vec![0.0f32; g.cols_len()];
        each_window_tap(&g, |plane, o, q, ki, kj, at| {
            let row = (plane * g.kernel_h + ki) * g.kernel_w + kj;
            want[(row * oh + o) * ow + q] = at.map_or(0.0, |i| x[i]);
        });
        let mut cols = poisoned(b, g.cols_len());
        b.im2col(&up(b, &x), &mut cols, &g).unwrap();
        assert_exact(&ctx, &down(b, &cols), &want);

        // col2im is im2col's adjoint: scatter-add each column entry back.
        let c = uniform(g.cols_len(), -1.0, 1.0, &mut r);
        let mut want = vec![0.0f64; g.input_len()];
        each_window_tap(&g, |plane, o, q, ki, kj, at| {
            let row = (plane * g.kernel_h + ki) * g.kernel_w + kj;
            if let Some(i) = at {
                want[i] += c[(row * oh + o) * ow + q] as f64;
            }
        });
        let mut dx = poisoned(b, g.input_len());
        b.col2im(&up(b, &c), &mut dx, &g).unwrap();
        assert_close(&format!("{ctx} col2im"), &down(b, &dx), &want, 1e-5, 1e-5);
    }
}

/// A convolution with and without a bias, and its gradients, against a direct f64
/// convolution over every geometry of `windows`.
fn conv2d<B: Backend>(b: &B) {
    let mut r = rng(63);
    for g in windows() {
        let ctx = format!("{} conv2d {g:?}", b.name());
        let out_channels = 3;
        let (k, oh, ow) = (g.patch_len(), g.out_h(), g.out_w());
        let area = oh * ow;
        let x = uniform(g.input_len(), -1.0, 1.0, &mut r);
        let w = uniform(out_channels * k, -1.0, 1.0, &mut r);
        let bias = uniform(out_channels, -1.0, 1.0, &mut r);
        let dy = uniform(g.batch * out_channels * area, -1.0, 1.0, &mut r);
        let (mut y, mut dx, mut dw, mut db) = (
            vec![0.0f64; g.batch * out_channels * area],
            vec![0.0f64; g.input_len()],
            vec![0.0f64; out_channels * k],
            vec![0.0f64; out_channels],
        );
        each_window_tap(&g, |plane, o, q, ki, kj, at| {
            let (n, c) = (plane / g.channels, plane % g.channels);
            let Some(i) = at else { return };
            for oc in 0..out_channels {
                let tap = (c * g.kernel_h + ki) * g.kernel_w + kj;
                let out = (n * out_channels + oc) * area + o * ow + q;
                y[out] += w[oc * k + tap] as f64 * x[i] as f64;
                dx[i] += w[oc * k + tap] as f64 * dy[out] as f64;
                dw[oc * k + tap] += x[i] as f64 * dy[out] as f64;
            }
        });
        for (i, &d) in dy.iter().enumerate() {
            db[(i / area) % out_channels] += d as f64;
        }
        let biased: Vec<f64> = y
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[(i / area) % out_channels] as f64)
            .collect();
        let (xb, wb, bb, dyb) = (up(b, &x), up(b, &w), up(b, &bias), up(b, &dy));
        let tol = 1e-4 * (k as f64).sqrt();
        let mut got = poisoned(b, y.len());
        b.conv2d(&xb, &wb, None, false, &mut got, &g, out_channels)
            .unwrap();
        assert_close(&format!("{ctx} y"), &down(b, &got), &y, tol, tol);
        b.conv2d(&xb, &wb, Some(&bb), false, &mut got, &g, out_channels)
            .unwrap();
        assert_close(
            &format!("{ctx} y + bias"),
            &down(b, &got),
            &biased,
            tol,
            tol,
        );

        let (mut gdx, mut gdw, mut gdb) = (
            poisoned(b, dx.len()),
            poisoned(b, dw.len()),
            poisoned(b, db.len()),
        );
        b.conv2d_backward(
            &xb,
            &wb,
            &dyb,
            None,
            &g,
            out_channels,
            Some(&mut gdx),
            &mut gdw,
            Some(&mut gdb),
        )
        .unwrap();
        let tol = 1e-4 * ((g.batch * area) as f64).sqrt();
        assert_close(&format!("{ctx} dx"), &down(b, &gdx), &dx, tol, tol);
        assert_close(&format!("{ctx} dweight"), &down(b, &gdw), &dw, tol, tol);
        assert_close(&format!("{ctx} dbias"), &down(b, &gdb), &db, tol, tol);
        // Only the weight's gradient, as for a first layer.
        let mut only = poisoned(b, dw.len());
        b.conv2d_backward(
            &xb,
            &wb,
            &dyb,
            None,
            &g,
            out_channels,
            None,
            &mut only,
            None,
        )
        .unwrap();
        assert_close(
            &format!("{ctx} dweight alone"),
            &down(b, &only),
            &dw,
            tol,
            tol,
        );
        // With the ReLU: the output clamped, and dy masked by it before every gradient.
        let clamped: Vec<f64> = biased.iter().map(|&v| v.max(0.0)).collect();
        let mut relu_y = poisoned(b, y.len());
        b.conv2d(&xb, &wb, Some(&bb), true, &mut relu_y, &g, out_channels)
            .unwrap();
        let tol_y = 1e-4 * (k as f64).sqrt();
        let got_y = down(b, &relu_y);
        assert_close(&format!("{ctx} relu y"), &got_y, &clamped, tol_y, tol_y);
        // The reference gradients for dy masked where the computed output is zero.
        let masked: Vec<f32> = dy
            .iter()
            .zip(&got_y)
            .map(|(&d, &v)| if v > 0.0 { d } else { 0.0 })
            .collect();
        let (mut mdx, mut mdw, mut mdb) = (
            poisoned(b, dx.len()),
            poisoned(b, dw.len()),
            poisoned(b, db.len()),
        );
        b.conv2d_backward(
            &xb,
            &wb,
            &up(b, &masked),
            None,
            &g,
            out_channels,
            Some(&mut mdx),
            &mut mdw,
            Some(&mut mdb),
        )
        .unwrap();
        let (mut rdx, mut rdw, mut rdb) = (
            poisoned(b, dx.len()),
            poisoned(b, dw.len()),
            poisoned(b, db.len()),
        );
        b.conv2d_backward(
            &xb,
            &wb,
            &dyb,
            Some(&relu_y),
            &g,
            out_channels,
            Some(&mut rdx),
            &mut rdw,
            Some(&mut rdb),
        )
        .unwrap();
        // Masking inside the op is the same arithmetic as masking first: equal bits.
        for (what, got, want) in [
            ("dx", &rdx, &mdx),
            ("dweight", &rdw, &mdw),
            ("dbias", &rdb, &mdb),
        ] {
            let (got, want) = (down(b, got), down(b, want));
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{ctx} relu {what}: masked in the op differs from masked first"
            );
        }
    }
    let g = windows()[1];
    let (x, w) = (up(b, &[0.0; 210]), up(b, &[0.0; 27 * 2]));
    let mut y = poisoned(b, 2 * 2 * 35);
    assert_err(
        &format!("{} conv2d bias length", b.name()),
        b.conv2d(&x, &w, Some(&up(b, &[0.0; 3])), false, &mut y, &g, 2),
        &["conv2d", "bias", "2", "3"],
    );
    assert_err(
        &format!("{} conv2d weight length", b.name()),
        b.conv2d(&x, &w, None, false, &mut y, &g, 3),
        &["conv2d", "weight"],
    );
}

fn pooling<B: Backend>(b: &B) {
    let mut r = rng(62);
    for g in windows()
        .into_iter()
        .filter(|g| 2 * g.pad_h <= g.kernel_h && 2 * g.pad_w <= g.kernel_w)
    {
        let ctx = format!("{} pooling {g:?}", b.name());
        let area = (g.kernel_h * g.kernel_w) as f64;
        let x = uniform(g.input_len(), -1.0, 1.0, &mut r);
        let dy = uniform(g.output_len(), -1.0, 1.0, &mut r);
        let (oh, ow) = (g.out_h(), g.out_w());
        let (mut max, mut argmax, mut avg) = (
            vec![f32::NEG_INFINITY; g.output_len()],
            vec![-1.0f32; g.output_len()],
            vec![0.0f64; g.output_len()],
        );
        let mut argmax_at = vec![usize::MAX; g.output_len()];
        each_window_tap(&g, |plane, o, q, ki, kj, at| {
            let win = (plane * oh + o) * ow + q;
            if let Some(i) = at {
                avg[win] += x[i] as f64 / area;
                if x[i] > max[win] {
                    (max[win], argmax[win], argmax_at[win]) =
                        (x[i], (ki * g.kernel_w + kj) as f32, i);
                }
            }
        });
        let (mut y, mut arg) = (poisoned(b, g.output_len()), poisoned(b, g.output_len()));
        let xb = up(b, &x);
        b.max_pool2d(&xb, &mut y, &mut arg, &g).unwrap();
        assert_exact(&format!("{ctx} max"), &down(b, &y), &max);
        assert_exact(&format!("{ctx} argmax"), &down(b, &arg), &argmax);

        let mut want = vec![0.0f64; g.input_len()];
        for (win, &i) in argmax_at.iter().enumerate() {
            want[i] += dy[win] as f64;
        }
        let mut dx = poisoned(b, g.input_len());
        b.max_pool2d_backward(&up(b, &dy), &up(b, &argmax), &mut dx, &g)
            .unwrap();
        assert_close(
            &format!("{ctx} max backward"),
            &down(b, &dx),
            &want,
            1e-6,
            1e-6,
        );

        let mut y = poisoned(b, g.output_len());
        b.avg_pool2d(&xb, &mut y, &g).unwrap();
        assert_close(&format!("{ctx} avg"), &down(b, &y), &avg, 1e-6, 1e-5);
        let mut want = vec![0.0f64; g.input_len()];
        each_window_tap(&g, |plane, o, q, _, _, at| {
            if let Some(i) = at {
                want[i] += dy[(plane * oh + o) * ow + q] as f64 / area;
            }
        });
        let mut dx = poisoned(b, g.input_len());
        b.avg_pool2d_backward(&up(b, &dy), &mut dx, &g).unwrap();
        assert_close(
            &format!("{ctx} avg backward"),
            &down(b, &dx),
            &want,
            1e-6,
            1e-5,
        );
    }
}

/// Every op rejects buffers whose lengths do not match its arguments, and bad arguments.
fn errors<B: Backend>(b: &B) {
    let name = b.name();
    let buf = |len: usize| b.zeros(len).unwrap();
    let ctx = |what: &str| format!("{name}: {what}");

    let g = Window2d::new(1, 1, (4, 4), (3, 3), (1, 1), (0, 0));
    let (x16, mut cols) = (buf(16), buf(g.cols_len()));
    assert_err(
        &ctx("im2col stride 0"),
        b.im2col(&x16, &mut cols, &Window2d { stride_h: 0, ..g }),
        &["im2col", "stride"],
    );
    assert_err(
        &ctx("im2col window too big"),
        b.im2col(&x16, &mut cols, &Window2d { kernel_h: 5, ..g }),
        &["does not fit"],
    );
    assert_err(
        &ctx("im2col cols length"),
        b.im2col(&x16, &mut buf(3), &g),
        &["im2col", "cols"],
    );
    let (mut p1, mut p2) = (buf(4), buf(4));
    assert_err(
        &ctx("pool padding"),
        b.max_pool2d(
            &x16,
            &mut p1,
            &mut p2,
            &Window2d {
                kernel_h: 2,
                kernel_w: 2,
                pad_h: 2,
                ..g
            },
        ),
        &["max_pool2d", "padding"],
    );
    assert_err(
        &ctx("avg_pool2d y length"),
        b.avg_pool2d(&x16, &mut buf(5), &g),
        &["avg_pool2d", "y"],
    );

    let (x, mut y4) = (buf(5), buf(4));
    assert_err(
        &ctx("unary y"),
        b.unary(UnaryOp::Exp, &x, &mut y4),
        &["unary", "y", "5", "4"],
    );
    let mut y5 = buf(5);
    assert_err(
        &ctx("unary_backward dy"),
        b.unary_backward(UnaryOp::Tanh, &x, &x, &buf(6), &mut y5),
        &["unary_backward", "dy"],
    );
    assert_err(
        &ctx("unary_backward dx"),
        b.unary_backward(UnaryOp::Tanh, &x, &x, &x, &mut y4),
        &["unary_backward", "dx"],
    );
    assert_err(&ctx("affine"), b.affine(&x, &mut y4, 1.0, 0.0), &["affine"]);

    // binary: output too short, an operand too short for its strides, rank mismatch.
    let layout = BinaryLayout::same_shape(&[2, 3]);
    let (six, mut out6) = (buf(6), buf(6));
    assert_err(
        &ctx("binary out"),
        b.binary(BinaryOp::Add, &layout, &six, &six, &mut y5),
        &["binary", "out"],
    );
    assert_err(
        &ctx("binary short rhs"),
        b.binary(BinaryOp::Add, &layout, &six, &x, &mut out6),
        &["binary"],
    );
    let bad_rank = BinaryLayout {
        shape: vec![2, 3],
        lhs_strides: vec![3, 1],
        rhs_strides: vec![1],
    };
    assert_err(
        &ctx("binary rank"),
        b.binary(BinaryOp::Mul, &bad_rank, &six, &six, &mut out6),
        &["binary", "rank"],
    );

    // copy_strided: a view past the end of the source, a wrong-sized destination.
    let past_end = StridedLayout {
        shape: vec![3, 2],
        strides: vec![1, 3],
        offset: 1,
    };
    assert_err(
        &ctx("copy_strided span"),
        b.copy_strided(&six, &past_end, &mut out6),
        &["copy_strided"],
    );
    assert_err(
        &ctx("copy_strided dst"),
        b.copy_strided(&six, &StridedLayout::contiguous(&[2, 3]), &mut y5),
        &["copy_strided", "dst"],
    );

    assert_err(
        &ctx("sum_axis x"),
        b.sum_axis(&x, &mut buf(2), 2, 3, 1),
        &["sum_axis", "x"],
    );
    assert_err(
        &ctx("sum_axis out"),
        b.sum_axis(&six, &mut buf(3), 2, 3, 1),
        &["sum_axis", "out"],
    );

    assert_err(
        &ctx("log_softmax x"),
        b.log_softmax(&x, &mut out6, 2, 3),
        &["log_softmax"],
    );
    assert_err(
        &ctx("log_softmax y"),
        b.log_softmax(&six, &mut y5, 2, 3),
        &["log_softmax"],
    );
    assert_err(
        &ctx("log_softmax_backward"),
        b.log_softmax_backward(&six, &x, &mut out6, 2, 3),
        &["log_softmax_backward", "dy"],
    );

    // Cross-entropy: a label out of range (== classes) poisons the loss rather than
    // reading another row (the runtime rejects it before a launch); wrong label count,
    // wrong buffers.
    let labels = |l: &[u32]| b.upload_u32(l).unwrap();
    let (mut probs, mut loss) = (buf(6), buf(1));
    b.softmax_cross_entropy(&six, &labels(&[0, 3]), &mut probs, &mut loss, 2, 3)
        .unwrap();
    assert!(
        down(b, &loss)[0].is_nan(),
        "{}",
        ctx("xent label out of range")
    );
    assert_err(
        &ctx("xent label count"),
        b.softmax_cross_entropy(&six, &labels(&[0]), &mut probs, &mut loss, 2, 3),
        &["labels"],
    );
    assert_err(
        &ctx("xent loss len"),
        b.softmax_cross_entropy(&six, &labels(&[0, 1]), &mut probs, &mut buf(2), 2, 3),
        &["loss"],
    );
    assert_err(
        &ctx("xent probs len"),
        b.softmax_cross_entropy(&six, &labels(&[0, 1]), &mut y5, &mut loss, 2, 3),
        &["probs"],
    );
    assert_err(
        &ctx("xent backward dloss"),
        b.softmax_cross_entropy_backward(&six, &labels(&[0, 0]), &buf(2), &mut out6, 2, 3),
        &["dloss"],
    );

    // SGD: momentum > 0 needs a buffer; lengths must agree.
    let momentum = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
        nesterov: false,
    };
    let mut p = buf(5);
    assert_err(
        &ctx("sgd without buffer"),
        b.sgd_step(&momentum, &mut p, &x, None),
        &["momentum"],
    );
    assert_err(
        &ctx("sgd buffer len"),
        b.sgd_step(&momentum, &mut p, &x, Some(&mut buf(4))),
        &["momentum"],
    );
    assert_err(
        &ctx("sgd grad len"),
        b.sgd_step(&momentum, &mut p, &buf(4), Some(&mut buf(5))),
        &["grad"],
    );

    let adam = AdamWParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        step: 1,
    };
    assert_err(
        &ctx("adamw grad"),
        b.adamw_step(&adam, &mut p, &buf(4), &mut buf(5), &mut buf(5)),
        &["adamw_step", "grad"],
    );
    assert_err(
        &ctx("adamw m"),
        b.adamw_step(&adam, &mut p, &x, &mut buf(6), &mut buf(5)),
        &["adamw_step", "m"],
    );
    assert_err(
        &ctx("adamw v"),
        b.adamw_step(&adam, &mut p, &x, &mut buf(5), &mut buf(0)),
        &["adamw_step", "v"],
    );

    // GEMM: operands shorter than the spec reads, a wrong-sized C.
    let spec = GemmSpec::new(2, 3, 4, false, false);
    let (a8, b12) = (buf(8), buf(12));
    assert_err(
        &ctx("gemm a"),
        b.gemm(&spec, &buf(7), &b12, &mut out6),
        &["gemm"],
    );
    assert_err(
        &ctx("gemm b"),
        b.gemm(&spec, &a8, &buf(11), &mut out6),
        &["gemm"],
    );
    assert_err(
        &ctx("gemm c"),
        b.gemm(&spec, &a8, &b12, &mut buf(7)),
        &["gemm"],
    );
    let batched = GemmSpec { batch: 2, ..spec };
    assert_err(
        &ctx("gemm batch"),
        b.gemm(&batched, &a8, &b12, &mut buf(12)),
        &["gemm"],
    );
}

include!("conformance_parts/indexing.rs");
include!("conformance_parts/mixed_precision.rs");
include!("conformance_parts/quantized.rs");

/// Defines a module of tests running the whole suite on each backend `$backends`
/// evaluates to (a `Vec`, so one line can cover a family such as every SIMD level; an
/// empty `Vec` -- no such device here -- makes the tests pass vacuously, with a note).
macro_rules! conformance_suite {
    ($module:ident, $backends:expr) => {
        mod $module {
            use super::*;

            conformance_suite!(@tests $backends; memory, unary, unary_backward, affine,
                binary, copy_strided, sum_axis, log_softmax, softmax_cross_entropy,
                sgd_step, adamw_step, gemm, gemm_bias_act, im2col, conv2d, pooling, errors,
                gather, copy_into, select, compare, triangle, arange_and_cast, argmax,
                attention, layer_norm, mixed_gemm, round_to, half_storage, conv2d_mixed,
                linear_q8);
        }
    };
    (@tests $backends:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                let backends = $backends;
                if backends.is_empty() {
                    eprintln!("no backend of this kind on this machine; skipped");
                }
                for backend in &backends {
                    super::$check(backend);
                }
            }
        )*
    };
}

// One line per backend (or family of backends).
conformance_suite!(cpu_default, vec![CpuBackend::new()]);
conformance_suite!(
    cpu_every_simd,
    Simd::available()
        .into_iter()
        .map(CpuBackend::with_simd)
        .collect::<Vec<_>>()
);
conformance_suite!(gpu, gpu_backends());

/// The GPU every GPU test runs on: the best adapter there is, which on a machine without a
/// GPU is Mesa's software Vulkan (lavapipe). With no adapter at all each GPU test says in
/// one line that it was skipped (`RINGTRAIN_REQUIRE_GPU=1`, as in CI, makes it fail).
fn gpu_backends() -> Vec<GpuBackend> {
    ringtrain_kernels::gpu::testing::test_gpu()
        .into_iter()
        .collect()
}

/// f16 GEMMs on a device with `enable f16` stage their tiles as f16: the same bits as the
/// f32 tiles the kernel keeps without it, on every layout, odd sizes, a batch, beta and
/// the fused bias. Lavapipe on x86 has `SHADER_F16`, so CI runs both; without it the
/// test says so and checks that the backend does not claim the kernel.
#[test]
fn gpu_f16_tiles_give_the_f32_tiles_bits() {
    let Some(b) = gpu_backends().into_iter().next() else {
        return;
    };
    if !b.has_shader_f16() {
        assert!(!b.f16_kernels());
        eprintln!("{}: no SHADER_F16, f16 GEMMs keep f32 tiles", b.name());
        return;
    }
    assert!(b.f16_kernels());
    let plain = b.without_f16_kernels();
    assert!(!plain.f16_kernels());
    let mut r = rng(1616);
    for (m, n, k, batch) in [
        (1, 1, 1, 1),
        (70, 33, 45, 1),
        (64, 64, 64, 2),
        (5, 130, 17, 3),
    ] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let spec = GemmSpec {
                batch,
                alpha: 0.5,
                beta: 0.25,
                ..GemmSpec::new(m, n, k, trans_a, trans_b)
            }
            .with_precision(Precision::F16);
            let (la, lb, lc) = spec.buffer_lens();
            let (a, bm, c0) = (
                uniform(la, -3.0, 3.0, &mut r),
                uniform(lb, -3.0, 3.0, &mut r),
                uniform(lc, -1.0, 1.0, &mut r),
            );
            let bias = uniform(n, -1.0, 1.0, &mut r);
            let run = |be: &GpuBackend| {
                let mut c = up(be, &c0);
                be.gemm(&spec, &up(be, &a), &up(be, &bm), &mut c).unwrap();
                let mut d = up(be, &c0);
                let act = Some(UnaryOp::Relu);
                be.gemm_bias_act(
                    &spec,
                    &up(be, &a),
                    &up(be, &bm),
                    &up(be, &bias),
                    act,
                    &mut d,
                )
                .unwrap();
                (down(be, &c), down(be, &d))
            };
            let (f16_tiles, f32_tiles) = (run(&b), run(&plain));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let what = format!("{m}x{n}x{k} batch {batch}, trans {trans_a} {trans_b}");
            assert_eq!(bits(&f16_tiles.0), bits(&f32_tiles.0), "gemm {what}");
            assert_eq!(
                bits(&f16_tiles.1),
                bits(&f32_tiles.1),
                "gemm_bias_act {what}"
            );
        }
    }
}

// ---- CPU-specific promises ------------------------------------------------------------------

/// Runs `f` on a dedicated rayon pool of `threads` threads.
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

/// Outputs of the reductions and row-wise ops on inputs big enough to be split.
fn reduction_outputs(b: &CpuBackend) -> Vec<Vec<f32>> {
    let x = uniform(300 * 700, -1.0, 1.0, &mut rng(9));
    let labels: Vec<u32> = (0..3000).map(|i| (i * 7 % 70) as u32).collect();
    let xb = up(b, &x);
    let mut outs = Vec::new();
    let shapes = [
        (1, 300, 700),
        (300, 700, 1),
        (1, 21000, 10),
        (7000, 10, 3),
        (1, 21, 10000),
    ];
    for (outer, axis, inner) in shapes {
        let mut out = b.zeros(outer * inner).unwrap();
        b.sum_axis(&xb, &mut out, outer, axis, inner).unwrap();
        outs.push(down(b, &out));
    }
    let mut y = b.zeros(x.len()).unwrap();
    b.log_softmax(&xb, &mut y, 3000, 70).unwrap();
    let mut dx = b.zeros(x.len()).unwrap();
    b.log_softmax_backward(&y, &xb, &mut dx, 3000, 70).unwrap();
    outs.extend([down(b, &y), down(b, &dx)]);
    // Layer norm over rows of 700 (a tail past the 16 lanes) and its gradients.
    let (gamma, beta) = (up(b, &x[..700]), up(b, &x[700..1400]));
    let (mut ln, mut stats) = (b.zeros(x.len()).unwrap(), b.zeros(2 * 300).unwrap());
    b.layer_norm(&xb, &gamma, &beta, &mut ln, &mut stats, 300, 700, 1e-5)
        .unwrap();
    let (mut ldx, mut dg, mut dbeta) = (
        b.zeros(x.len()).unwrap(),
        b.zeros(700).unwrap(),
        b.zeros(700).unwrap(),
    );
    b.layer_norm_backward(
        &xb, &gamma, &stats, &ln, &mut ldx, &mut dg, &mut dbeta, 300, 700,
    )
    .unwrap();
    outs.extend([
        down(b, &ln),
        down(b, &stats),
        down(b, &ldx),
        down(b, &dg),
        down(b, &dbeta),
    ]);
    let (mut probs, mut loss) = (b.zeros(x.len()).unwrap(), b.zeros(1).unwrap());
    let labels = b.upload_u32(&labels).unwrap();
    b.softmax_cross_entropy(&xb, &labels, &mut probs, &mut loss, 3000, 70)
        .unwrap();
    outs.extend([down(b, &probs), down(b, &loss)]);
    outs
}

/// Elementwise outputs on inputs big enough to be split across threads.
fn elementwise_outputs(b: &CpuBackend) -> Vec<Vec<f32>> {
    let x = uniform(BIG, 0.1, 4.0, &mut rng(10));
    let xb = up(b, &x);
    let mut outs = Vec::new();
    for op in UNARY_OPS {
        let mut y = b.zeros(BIG).unwrap();
        b.unary(op, &xb, &mut y).unwrap();
        let mut dx = b.zeros(BIG).unwrap();
        b.unary_backward(op, &xb, &y, &xb, &mut dx).unwrap();
        outs.extend([down(b, &y), down(b, &dx)]);
    }
    let layout = BinaryLayout {
        shape: vec![BIG / 257, 257],
        lhs_strides: vec![257, 1],
        rhs_strides: vec![0, 1],
    };
    let mut out = b.zeros(layout.elem_count()).unwrap();
    b.binary(BinaryOp::Div, &layout, &xb, &xb, &mut out)
        .unwrap();
    outs.push(down(b, &out));
    // Rows longer than one task's share, cut into pieces: a contiguous op (one row once
    // collapsed), two rows that read the same right-hand row, and a copy of every other
    // element from an offset (pieces must step through the source at its stride).
    let half = BIG / 2;
    let yb = up(b, &uniform(BIG, 0.1, 4.0, &mut rng(11)));
    let long_rows = [
        (vec![BIG], vec![1], vec![1]),
        (vec![2, half], vec![half, 1], vec![0, 1]),
    ];
    for (shape, lhs_strides, rhs_strides) in long_rows {
        let layout = BinaryLayout {
            shape,
            lhs_strides,
            rhs_strides,
        };
        let mut out = b.zeros(layout.elem_count()).unwrap();
        b.binary(BinaryOp::Sub, &layout, &xb, &yb, &mut out)
            .unwrap();
        outs.push(down(b, &out));
    }
    let src = up(b, &uniform(2 * BIG + 3, -1.0, 1.0, &mut rng(12)));
    let every_other = StridedLayout {
        shape: vec![BIG],
        strides: vec![2],
        offset: 3,
    };
    let mut copy = b.zeros(BIG).unwrap();
    b.copy_strided(&src, &every_other, &mut copy).unwrap();
    outs.push(down(b, &copy));
    outs
}

fn assert_all_bitwise_equal(what: &str, runs: &[(String, Vec<Vec<f32>>)]) {
    let (first_name, first) = &runs[0];
    for (name, run) in &runs[1..] {
        for (i, (a, b)) in first.iter().zip(run).enumerate() {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(
                same,
                "{what}: output {i} differs between {first_name} and {name}"
            );
        }
    }
}

/// Every non-GEMM CPU kernel gives the same bits on every instruction set and thread count.
#[test]
fn cpu_results_do_not_depend_on_isa_or_thread_count() {
    // Rust never contracts a * b + c into an FMA on its own and every kernel fixes its
    // summation order, so reductions and elementwise ops alike give the same bits on every
    // instruction set and thread count.
    let mut reductions = Vec::new();
    let mut elementwise = Vec::new();
    let mut attention = Vec::new();
    for simd in Simd::available() {
        let b = CpuBackend::with_simd(simd);
        for threads in [1, 2, 3] {
            let name = format!("{} on {threads} threads", simd.isa());
            reductions.push((
                name.clone(),
                with_threads(threads, || reduction_outputs(&b)),
            ));
            elementwise.push((
                name.clone(),
                with_threads(threads, || elementwise_outputs(&b)),
            ));
            attention.push((name, with_threads(threads, || attention_outputs(&b))));
        }
    }
    assert_all_bitwise_equal("elementwise", &elementwise);
    assert_all_bitwise_equal("reductions", &reductions);
    assert_all_bitwise_equal("attention", &attention);
}

/// The fused attention and its gradients at head sizes with their own code paths (16,
/// 64) and without (24), causal with an odd number of queries and several key blocks,
/// and with dropout: rows are paired on AVX-512 only, which must not change the bits.
fn attention_outputs(b: &CpuBackend) -> Vec<Vec<f32>> {
    let mut outputs = Vec::new();
    for (d, t, causal, dropout) in [
        (16, 77, true, 0.0),
        (64, 70, true, 0.2),
        (24, 33, false, 0.0),
    ] {
        let spec = AttentionSpec {
            batch: 3,
            tq: t,
            tk: t,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
            dropout,
            seed: 7,
        };
        let operand = |len: usize, seed: u64| up(b, &uniform(len, -2.0, 2.0, &mut rng(seed)));
        let (q, k, v) = (
            operand(spec.q_len(), 21),
            operand(spec.kv_len(), 22),
            operand(spec.kv_len(), 23),
        );
        let dout = operand(spec.q_len(), 24);
        let (mut out, mut lse) = (
            b.zeros(spec.q_len()).unwrap(),
            b.zeros(spec.lse_len()).unwrap(),
        );
        b.attention(&spec, &q, &k, &v, &mut out, &mut lse).unwrap();
        let (mut dq, mut dk, mut dv) = (
            b.zeros(spec.q_len()).unwrap(),
            b.zeros(spec.kv_len()).unwrap(),
            b.zeros(spec.kv_len()).unwrap(),
        );
        b.attention_backward(
            &spec, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv,
        )
        .unwrap();
        outputs.extend([out, lse, dq, dk, dv].iter().map(|x| down(b, x)));
    }
    outputs
}

/// A convolution's kernels on a batch big enough to be shared out: the per-image GEMMs
/// (run several images per task) and the window kernels.
fn convolution_outputs(b: &CpuBackend) -> Vec<Vec<f32>> {
    let g = Window2d::new(32, 4, (20, 20), (3, 3), (1, 1), (1, 1));
    let x = uniform(g.input_len(), -1.0, 1.0, &mut rng(11));
    let out_channels = 6;
    let (k, area) = (g.patch_len(), g.out_h() * g.out_w());
    let w = uniform(out_channels * k, -1.0, 1.0, &mut rng(12));
    let mut cols = b.zeros(g.cols_len()).unwrap();
    b.im2col(&up(b, &x), &mut cols, &g).unwrap();
    let spec = GemmSpec {
        batch: g.batch,
        stride_a: 0,
        stride_b: k * area,
        ..GemmSpec::new(out_channels, area, k, false, false)
    };
    let mut y = b.zeros(g.batch * out_channels * area).unwrap();
    b.gemm(&spec, &up(b, &w), &cols, &mut y).unwrap();
    let weight_grad = GemmSpec {
        batch: g.batch,
        stride_a: out_channels * area,
        stride_b: k * area,
        ..GemmSpec::new(out_channels, k, area, false, true)
    };
    let mut dw = b.zeros(g.batch * out_channels * k).unwrap();
    b.gemm(&weight_grad, &y, &cols, &mut dw).unwrap();
    let mut dx = b.zeros(g.input_len()).unwrap();
    b.col2im(&cols, &mut dx, &g).unwrap();
    let pool = Window2d::new(32, 6, (20, 20), (2, 2), (2, 2), (0, 0));
    let (mut pooled, mut argmax) = (
        b.zeros(pool.output_len()).unwrap(),
        b.zeros(pool.output_len()).unwrap(),
    );
    b.max_pool2d(&y, &mut pooled, &mut argmax, &pool).unwrap();
    let mut dpool = b.zeros(pool.input_len()).unwrap();
    b.max_pool2d_backward(&pooled, &argmax, &mut dpool, &pool)
        .unwrap();
    // The fused convolution and its gradients (image groups on several threads).
    let bias = up(b, &uniform(out_channels, -1.0, 1.0, &mut rng(13)));
    let mut fused = b.zeros(g.batch * out_channels * area).unwrap();
    b.conv2d(
        &up(b, &x),
        &up(b, &w),
        Some(&bias),
        true,
        &mut fused,
        &g,
        out_channels,
    )
    .unwrap();
    let (mut fdx, mut fdw, mut fdb) = (
        b.zeros(g.input_len()).unwrap(),
        b.zeros(out_channels * k).unwrap(),
        b.zeros(out_channels).unwrap(),
    );
    let (xb, wb) = (up(b, &x), up(b, &w));
    let grads = (Some(&mut fdx), &mut fdw, Some(&mut fdb));
    b.conv2d_backward(
        &xb,
        &wb,
        &fused,
        Some(&fused),
        &g,
        out_channels,
        grads.0,
        grads.1,
        grads.2,
    )
    .unwrap();
    vec![
        down(b, &fused),
        down(b, &fdx),
        down(b, &fdw),
        down(b, &fdb),
        down(b, &cols),
        down(b, &y),
        down(b, &dw),
        down(b, &dx),
        down(b, &pooled),
        down(b, &dpool),
    ]
}

/// The convolution's GEMMs and window kernels give the same bits on any thread count
/// (GEMMs may differ between instruction sets: FMA rounds once).
#[test]
fn convolution_kernels_do_not_depend_on_thread_count() {
    for simd in Simd::available() {
        let b = CpuBackend::with_simd(simd);
        let runs: Vec<(String, Vec<Vec<f32>>)> = [1, 2, 3]
            .into_iter()
            .map(|t| {
                let name = format!("{} on {t} threads", simd.isa());
                (name, with_threads(t, || convolution_outputs(&b)))
            })
            .collect();
        assert_all_bitwise_equal("convolution", &runs);
    }
}

/// 2x2 max pooling on every instruction set against the portable path, bit for bit and
/// position for position, on rows of full SIMD blocks and tails, with ties, NaNs and
/// infinities (the first maximum wins; NaN wins over numbers).
#[test]
fn max_pool_2x2_agrees_on_every_isa_with_ties_and_nan() {
    let g = Window2d::new(2, 3, (9, 75), (2, 2), (2, 2), (0, 0));
    let mut x = uniform(g.input_len(), -1.0, 1.0, &mut rng(14));
    for (i, v) in x.iter_mut().enumerate() {
        match i % 23 {
            0 => *v = f32::NAN,
            5 | 6 => *v = 0.5, // neighbours: ties inside a window
            9 => *v = f32::NEG_INFINITY,
            13 => *v = f32::INFINITY,
            _ => {}
        }
    }
    let run = |simd: Simd| {
        let b = CpuBackend::with_simd(simd);
        let (mut y, mut at) = (poisoned(&b, g.output_len()), poisoned(&b, g.output_len()));
        b.max_pool2d(&up(&b, &x), &mut y, &mut at, &g).unwrap();
        (down(&b, &y), down(&b, &at))
    };
    let (want_y, want_at) = run(Simd::portable());
    assert!(
        want_y.iter().any(|v| v.is_nan()),
        "the input has windows with NaN"
    );
    for simd in Simd::available() {
        let (y, at) = run(simd);
        let same = y
            .iter()
            .zip(&want_y)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && at == want_at,
            "{} differs from the portable path",
            simd.isa()
        );
    }
}
