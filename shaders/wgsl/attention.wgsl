// Fused attention forward, flash-attention style: a workgroup takes BLOCK queries of one
// head, one per invocation, and walks the keys TILE at a time through workgroup memory
// with an online softmax; the [tq, tk] scores are never stored. Writes the output and the
// row log-sum-exp of the scaled scores (for the backward pass).

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

var<workgroup> ks: array<f32, TILE * HEAD_DIM>;
var<workgroup> vs: array<f32, TILE * HEAD_DIM>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = p.head_base + wg.y;
    let i0 = wg.x * BLOCK;
    let i = i0 + lid;
    let valid = i < p.tq;
    let qrow = (head * p.tq + i) * HEAD_DIM;
    var qv: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    for (var e = 0u; e < HEAD_DIM; e++) {
        qv[e] = select(0.0, q[qrow + e], valid);
        acc[e] = 0.0;
    }
    var m = LOWEST;
    var l = 0.0;
    let end = key_end(min(i0 + BLOCK, p.tq) - 1u);
    let mine = select(0u, key_end(i), valid);
    for (var c0 = 0u; c0 < end; c0 += TILE) {
        workgroupBarrier();
        for (var e = lid; e < TILE * HEAD_DIM; e += BLOCK) {
            let row = c0 + e / HEAD_DIM;
            let at = (head * p.tk + row) * HEAD_DIM + e % HEAD_DIM;
            ks[e] = select(0.0, k[at], row < p.tk);
            vs[e] = select(0.0, v[at], row < p.tk);
        }
        workgroupBarrier();
        var n = 0u;
        if mine > c0 {
            n = min(TILE, mine - c0);
        }
        var s: array<f32, TILE>;
        var tile_max = LOWEST;
        for (var c = 0u; c < n; c++) {
            var dot = 0.0;
            for (var e = 0u; e < HEAD_DIM; e++) {
                dot = fma(qv[e], ks[c * HEAD_DIM + e], dot);
            }
            s[c] = dot * p.scale;
            tile_max = max(tile_max, s[c]);
        }
        if n > 0u {
            let m_new = max(m, tile_max);
            let correction = exp(m - m_new);
            l *= correction;
            for (var e = 0u; e < HEAD_DIM; e++) {
                acc[e] *= correction;
            }
            for (var c = 0u; c < n; c++) {
                let w = exp(s[c] - m_new);
                l += w;
                let wd = w * keep_factor(head, i, c0 + c);
                for (var e = 0u; e < HEAD_DIM; e++) {
                    acc[e] = fma(wd, vs[c * HEAD_DIM + e], acc[e]);
                }
            }
            m = m_new;
        }
    }
    if valid {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var e = 0u; e < HEAD_DIM; e++) {
            out[qrow + e] = acc[e] * inv;
        }
        lse[head * p.tq + i] = select(bitcast<f32>(0xff800000u), m + log(l), l > 0.0);
    }
}
