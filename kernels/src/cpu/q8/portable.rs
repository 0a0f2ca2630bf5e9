//! The int8 dot products in plain Rust: the reference every SIMD path matches.

use super::{Tile, BLOCK, TASK_WIDTH};

pub(super) fn tile(t: &Tile, sums: &mut [i32]) {
    for r in 0..t.rows() {
        let x = t.row(r);
        for b in t.first_block..t.first_block + t.blocks {
            let w = t.block(b);
            let mut acc = [0i32; BLOCK];
            for (g, quad) in x.chunks_exact(4).enumerate() {
                for (lane, a) in acc.iter_mut().enumerate() {
                    let word = &w[(g * BLOCK + lane) * 4..][..4];
                    for (&xu, &wq) in quad.iter().zip(word) {
                        // `xu` is `q + 128`: flipping the top bit gives `q` back.
                        *a += i32::from((xu ^ 0x80) as i8) * i32::from(wq as i8);
                    }
                }
            }
            sums[r * TASK_WIDTH + (b - t.first_block) * BLOCK..][..BLOCK].copy_from_slice(&acc);
        }
    }
}
