//! Transcendentals written as straight-line arithmetic, so loops that call them vectorise
//! (a libm call in a loop does not). Accuracy is a few ulp, well inside what training
//! needs; NaN propagates and infinities saturate as IEEE says.

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split into a part exact in f32 and the rest (Cody-Waite), so x - n*ln2 is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
// Adding then subtracting 1.5 * 2^23 rounds to the nearest integer without a call.
const ROUND_MAGIC: f32 = 12_582_912.0;
// ln(f32::MAX) and ln(f32::MIN_POSITIVE): beyond them e^x is infinite or subnormal.
const EXP_HI: f32 = 88.722_83;
const EXP_LO: f32 = -87.336_55;

/// e^x.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Comparisons, not min/max/clamp, so NaN passes through untouched.
    #[allow(clippy::manual_clamp)]
    let xc = if x > EXP_HI {
        EXP_HI
    } else if x < EXP_LO {
        EXP_LO
    } else {
        x
    };
    let t = xc * LOG2_E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let n_bits = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // Minimax polynomial for e^r on [-ln2/2, ln2/2] (Cephes expf), evaluated by Estrin's
    // scheme rather than Horner's: three dependent multiply-adds instead of five, and the
    // vectorised loops that call this are bound by that chain's latency (Zen 3, one
    // thread, 262144 values: e^x 237 -> 215 us, GELU 366 -> 331, its gradient 505 -> 460).
    let r2 = r * r;
    let lo = 1.666_666_5e-1 * r + 0.5;
    let mid = 8.333_452e-3 * r + 4.166_579_6e-2;
    let hi = 1.987_569_1e-4 * r + 1.398_199_9e-3;
    let p = (hi * r2 + mid) * r2 + lo;
    let er = p * r2 + r + 1.0;
    // 2^n as two factors: n reaches 128 near EXP_HI, one past the largest f32 exponent.
    let n_half = n_bits >> 1;
    let pow2 = |e: i32| f32::from_bits(((e + 127) << 23) as u32);
    let y = er * pow2(n_half) * pow2(n_bits - n_half);
    if x > EXP_HI {
        f32::INFINITY
    } else if x < EXP_LO {
        0.0
    } else {
        y
    }
}

/// tanh(x) = 1 - 2 / (e^{2x} + 1): exact limits at +-inf, absolute error ~1e-7.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// The logistic function 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)
pub const GELU_A: f32 = 0.044_715;

/// GELU, tanh approximation: x/2 (1 + tanh(u)) with u = c (x + a x^3), computed as
/// x sigmoid(2u), the same function in fewer operations (262144 values on Zen 3, one
/// thread: 344-368 -> 288-320 us, its gradient 463-478 -> 387-437).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x / (1.0 + exp(-2.0 * GELU_C * (x + GELU_A * x * x * x)))
}

/// d gelu / dx for the tanh approximation: s + 2 x s (1 - s) u' with s = sigmoid(2u),
/// since 1 - tanh(u)^2 = 4 s (1 - s).
#[inline(always)]
pub fn gelu_grad(x: f32) -> f32 {
    let x2 = x * x;
    let s = 1.0 / (1.0 + exp(-2.0 * GELU_C * (x + GELU_A * x * x2)));
    s + 2.0 * x * s * (1.0 - s) * GELU_C * (1.0 + 3.0 * GELU_A * x2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_to_a_few_ulp() {
        let mut x = -87.0f32;
        while x < 88.72 {
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
            x += 0.0137;
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(88.73), f32::INFINITY);
        let top = exp(88.7);
        let want = (88.7f32 as f64).exp();
        assert!(
            ((top as f64 - want) / want).abs() < 1e-6,
            "exp(88.7) = {top}, want {want}"
        );
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_sigmoid_gelu_match_reference() {
        for i in -400..=400 {
            let x = i as f32 * 0.025;
            assert!((tanh(x) - x.tanh()).abs() < 2e-7, "tanh({x})");
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            assert!((sigmoid(x) as f64 - s).abs() < 2e-7, "sigmoid({x})");
            let xd = x as f64;
            let g = 0.5
                * xd
                * (1.0
                    + ((2.0 / std::f64::consts::PI).sqrt() * (xd + 0.044715 * xd.powi(3))).tanh());
            assert!((gelu(x) as f64 - g).abs() < 1e-6, "gelu({x})");
            let h = 1e-3;
            let fd = (gelu(x + h) as f64 - gelu(x - h) as f64) / (2.0 * h as f64);
            assert!((gelu_grad(x) as f64 - fd).abs() < 2e-3, "gelu'({x})");
        }
        assert_eq!(tanh(50.0), 1.0);
        assert_eq!(tanh(-50.0), -1.0);
    }
}
