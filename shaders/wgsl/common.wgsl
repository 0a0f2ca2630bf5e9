// Prepended to every kernel: launch geometry and the elementwise functions.

// A 1-D launch of more than 65535 workgroups is laid out on a 2-D grid (one grid dimension
// holds at most 65535 workgroups); this recovers the flat invocation index.
fn flat_index(wg: vec3<u32>, groups: vec3<u32>, lid: u32, wg_size: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * wg_size + lid;
}

// Workgroup index of a 1-D launch of workgroups (one workgroup per row, say).
fn flat_group(wg: vec3<u32>, groups: vec3<u32>) -> u32 {
    return wg.y * groups.x + wg.x;
}

// Unary op codes, in the order of `ringtrain_kernels::UnaryOp` (see gpu/params.rs).
const OP_NEG: u32 = 0u;
const OP_EXP: u32 = 1u;
const OP_LOG: u32 = 2u;
const OP_SQR: u32 = 3u;
const OP_SQRT: u32 = 4u;
const OP_RELU: u32 = 5u;
const OP_GELU: u32 = 6u;
const OP_TANH: u32 = 7u;
const OP_SIGMOID: u32 = 8u;
const OP_NONFINITE: u32 = 9u;
// Anything else (the GEMM epilogue's "no activation") is the identity.

const GELU_C: f32 = 0.7978845608028654; // sqrt(2 / pi)
const GELU_A: f32 = 0.044715;

// Drivers may compute tanh as a ratio of exponentials that overflows to NaN for |x| > ~44;
// tanh(15) is already 1 in f32.
fn tanh_f(x: f32) -> f32 {
    return tanh(clamp(x, -15.0, 15.0));
}

fn sigmoid_f(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

fn gelu_f(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh_f(GELU_C * (x + GELU_A * x * x * x)));
}

fn gelu_grad_f(x: f32) -> f32 {
    let x2 = x * x;
    let t = tanh_f(GELU_C * (x + GELU_A * x * x2));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * x2);
}

fn unary_f(op: u32, x: f32) -> f32 {
    switch op {
        case OP_NEG: { return -x; }
        case OP_EXP: { return exp(x); }
        case OP_LOG: { return log(x); }
        case OP_SQR: { return x * x; }
        case OP_SQRT: { return sqrt(x); }
        // `x < 0` rather than `x > 0`, so NaN stays NaN (as on the CPU).
        case OP_RELU: { return select(x, 0.0, x < 0.0); }
        case OP_GELU: { return gelu_f(x); }
        case OP_TANH: { return tanh_f(x); }
        case OP_SIGMOID: { return sigmoid_f(x); }
        // By the bits: WGSL lets a compiler assume floats are finite, so `x != x` may fold.
        case OP_NONFINITE: { return select(0.0, 1.0, (bitcast<u32>(x) & 0x7f800000u) == 0x7f800000u); }
        default: { return x; }
    }
}

// dy * f'(x), with y = f(x) for the ops whose derivative is cheapest in terms of it.
fn unary_grad_f(op: u32, x: f32, y: f32, dy: f32) -> f32 {
    switch op {
        case OP_NEG: { return -dy; }
        case OP_EXP: { return dy * y; }
        case OP_LOG: { return dy / x; }
        case OP_SQR: { return 2.0 * x * dy; }
        case OP_SQRT: { return 0.5 * dy / y; }
        case OP_RELU: { return select(0.0, dy, x > 0.0); }
        case OP_GELU: { return dy * gelu_grad_f(x); }
        case OP_TANH: { return dy * (1.0 - y * y); }
        case OP_SIGMOID: { return dy * y * (1.0 - y); }
        case OP_NONFINITE: { return 0.0; }
        default: { return dy; }
    }
}

// Input formats of mixed-precision products, in the order of `ringtrain_kernels::Precision`.
const FORMAT_F32: u32 = 0u;
const FORMAT_BF16: u32 = 1u;
const FORMAT_F16: u32 = 2u;

// x rounded to bfloat16 (nearest, ties to even) and back, on the bits, as the CPU does;
// a NaN stays a NaN (its payload could otherwise round into infinity).
fn round_bf16(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    if (u & 0x7fffffffu) > 0x7f800000u {
        return bitcast<f32>((u | 0x00400000u) & 0xffff0000u);
    }
    return bitcast<f32>((u + 0x7fffu + ((u >> 16u) & 1u)) & 0xffff0000u);
}

// x rounded to IEEE binary16 (nearest, ties to even) and back, without `enable f16`: 11
// significant bits from 2^-14 up, steps of 2^-24 below, infinite from 65520 on. The
// scalings are by powers of two (exact) and WGSL's `round` takes ties to even.
fn round_f16(x: f32) -> f32 {
    let u = bitcast<u32>(x);
    if (u & 0x7f800000u) == 0x7f800000u {
        return x;
    }
    let e = max(i32((u >> 23u) & 0xffu) - 127, -14);
    let step = bitcast<f32>(u32(e - 10 + 127) << 23u);
    let per_step = bitcast<f32>(u32(10 - e + 127) << 23u);
    let r = round(x * per_step) * step;
    if abs(r) > 65504.0 {
        return bitcast<f32>((u & 0x80000000u) | 0x7f800000u);
    }
    return r;
}

fn round_to(format: u32, x: f32) -> f32 {
    switch format {
        case FORMAT_BF16: { return round_bf16(x); }
        case FORMAT_F16: { return round_f16(x); }
        default: { return x; }
    }
}
