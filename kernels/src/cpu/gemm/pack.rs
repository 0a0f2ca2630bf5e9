//! Packing copies a block of an operand into the order the micro-kernel reads it, so the
//! inner loop streams contiguous memory whatever the operand's strides (transposes
//! included). Panels past the matrix edge are zero-padded: the micro-kernel always
//! computes a full tile and never branches.

use super::MatRef;

/// Packs rows `i0..i0+rows` x columns `p0..p0+kc` of `a` as `kc` groups of `mr` values
/// (column `p` of the panel is `dst[p*mr..(p+1)*mr]`).
pub(super) fn pack_a(
    dst: &mut [f32],
    a: &MatRef,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    debug_assert!(rows <= mr && dst.len() == kc * mr);
    if a.cs == 1 {
        // Rows are contiguous: read along them, scatter into the panel.
        for i in 0..rows {
            let row = &a.data[(i0 + i) * a.rs + p0..][..kc];
            for (p, &v) in row.iter().enumerate() {
                dst[p * mr + i] = v;
            }
        }
        if rows < mr {
            for col in dst.chunks_exact_mut(mr) {
                col[rows..].fill(0.0);
            }
        }
    } else {
        for (p, col) in dst.chunks_exact_mut(mr).enumerate() {
            let base = (p0 + p) * a.cs + i0 * a.rs;
            for (i, v) in col[..rows].iter_mut().enumerate() {
                *v = a.data[base + i * a.rs];
            }
            col[rows..].fill(0.0);
        }
    }
}

/// Packs rows `p0..p0+kc` x columns `j0..j0+cols` of `b` as `kc` groups of `nr` values
/// (row `p` of the panel is `dst[p*nr..(p+1)*nr]`).
pub(super) fn pack_b(
    dst: &mut [f32],
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
) {
    debug_assert!(cols <= nr && dst.len() == kc * nr);
    if b.cs == 1 {
        for (p, row) in dst.chunks_exact_mut(nr).enumerate() {
            row[..cols].copy_from_slice(&b.data[(p0 + p) * b.rs + j0..][..cols]);
            row[cols..].fill(0.0);
        }
    } else {
        // Columns are contiguous (a transposed operand): read along them.
        for j in 0..cols {
            let base = j0 * b.cs + j * b.cs + p0 * b.rs;
            for p in 0..kc {
                dst[p * nr + j] = b.data[base + p * b.rs];
            }
        }
        if cols < nr {
            for row in dst.chunks_exact_mut(nr) {
                row[cols..].fill(0.0);
            }
        }
    }
}
