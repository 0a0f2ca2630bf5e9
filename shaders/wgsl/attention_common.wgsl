// Shared by the attention kernels, after the host's `const HEAD_DIM: u32` (the head
// size each pipeline is compiled for). Q is [batch, tq, HEAD_DIM], K and V [batch, tk,
// HEAD_DIM]; with `causal`, query i sees keys j < key_end(i), the queries being the last
// tq positions.

struct Params {
    tq: u32,
    tk: u32,
    causal: u32,
    head_base: u32,
    scale: f32,
    // Dropout keeps a weight when hash >= threshold; `dropout` is 0 or 1.
    threshold: u32,
    seed: u32,
    dropout: u32,
    inv_keep: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Rows per workgroup, and rows per tile staged in workgroup memory.
const BLOCK: u32 = 64u;
const TILE: u32 = 16u;
// The running maximum starts here rather than at -inf, so exp(m - m_new) is 0, not NaN.
const LOWEST: f32 = -3.0e38;

@group(0) @binding(0) var<uniform> p: Params;

fn key_end(i: u32) -> u32 {
    if p.causal != 0u {
        return min(i + 1u + (p.tk - p.tq), p.tk);
    }
    return p.tk;
}

// Wellons' lowbias32 on a counter, as `ringtrain_kernels::dropout_hash`.
fn dropout_hash(seed: u32, counter: u32) -> u32 {
    var x = counter ^ (seed * 0x9e3779b9u);
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// The dropout factor of weight (head, i, j): 0 when dropped, 1 / (1 - dropout) when kept.
fn keep_factor(head: u32, i: u32, j: u32) -> f32 {
    if p.dropout == 0u {
        return 1.0;
    }
    let counter = (head * p.tq + i) * p.tk + j;
    return select(0.0, p.inv_keep, dropout_hash(p.seed, counter) >= p.threshold);
}
