//! Sums in 16 lanes with a fixed tree at the end: loops the compiler vectorises (it does
//! not reassociate a single running sum), and the same bits on every instruction set,
//! since the order of additions is written out rather than left to the vector width.

/// Adds 16 partial sums pairwise in a fixed order.
#[inline(always)]
pub(crate) fn tree(acc: [f32; 16]) -> f32 {
    let mut v = acc;
    for width in [8, 4, 2, 1] {
        for i in 0..width {
            v[i] += v[i + width];
        }
    }
    v[0]
}

/// `sum_i f(a[i], b[i])`: lane `i % 16` takes element `i`.
#[inline(always)]
pub(crate) fn sum_zip(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += f(x[i], y[i]);
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += f(*x, *y);
    }
    tree(acc)
}

/// `sum_i f(a[i], b[i], c[i])`, as [`sum_zip`].
#[inline(always)]
pub(crate) fn sum_zip3(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb, cc) = (a.chunks_exact(16), b.chunks_exact(16), c.chunks_exact(16));
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..16 {
            acc[i] += f(x[i], y[i], z[i]);
        }
    }
    for (i, ((x, y), z)) in ra.iter().zip(rb).zip(rc).enumerate() {
        acc[i] += f(*x, *y, *z);
    }
    tree(acc)
}

/// `sum_i f(a[i])`, as [`sum_zip`].
#[inline(always)]
pub(crate) fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    sum_zip(a, a, |x, _| f(x))
}
