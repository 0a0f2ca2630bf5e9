//! Micro-kernel in plain Rust: the compiler vectorises the NR-wide rows for whatever the
//! build target's baseline offers (SSE2 on x86-64).

use super::MicroKernel;

pub(super) struct Portable;

const MR: usize = 4;
const NR: usize = 8;

impl MicroKernel for Portable {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const NC: usize = 512;
    const MC: usize = MR;

    const STRIDED_A: bool = true;
    const STRIDED_B: bool = true;

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
    ) {
        let mut acc = [[0f32; NR]; MR];
        for p in 0..kc {
            // SAFETY: the panels hold MR x kc and kc x NR values at these strides.
            let (ap, bp) = unsafe {
                (
                    std::array::from_fn::<f32, MR, _>(|i| *a.add(i * rs_a + p * cs_a)),
                    &*(b.add(p * rs_b) as *const [f32; NR]),
                )
            };
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] += ap[i] * bp[j];
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees an MR x NR tile at c with row stride ldc.
            let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) };
            for (j, (o, &v)) in out.iter_mut().zip(row).enumerate() {
                let mut z = if beta == 0.0 {
                    alpha * v
                } else {
                    alpha * v + beta * *o
                };
                if !bias.is_null() {
                    // SAFETY: a non-null bias holds NR values.
                    z += unsafe { *bias.add(j) };
                }
                // `z < 0`, so NaN stays NaN.
                *o = if relu && z < 0.0 { 0.0 } else { z };
            }
        }
    }
}
