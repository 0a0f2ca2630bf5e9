// Attention backward, the query gradient: one invocation per query row recomputes its
// weights tile by tile from the saved log-sum-exp and sums dq in key order.

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> dsum: array<f32>;
@group(0) @binding(7) var<storage, read_write> dq: array<f32>;

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
    let row = (head * p.tq + i) * HEAD_DIM;
    var qv: array<f32, HEAD_DIM>;
    var gv: array<f32, HEAD_DIM>;
    var acc: array<f32, HEAD_DIM>;
    for (var e = 0u; e < HEAD_DIM; e++) {
        qv[e] = select(0.0, q[row + e], valid);
        gv[e] = select(0.0, dout[row + e], valid);
        acc[e] = 0.0;
    }
    var li = 0.0;
    var di = 0.0;
    if valid {
        li = lse[head * p.tq + i];
        di = dsum[head * p.tq + i];
    }
    let end = key_end(min(i0 + BLOCK, p.tq) - 1u);
    let mine = select(0u, key_end(i), valid);
    for (var c0 = 0u; c0 < end; c0 += TILE) {
        workgroupBarrier();
        for (var e = lid; e < TILE * HEAD_DIM; e += BLOCK) {
            let r = c0 + e / HEAD_DIM;
            let at = (head * p.tk + r) * HEAD_DIM + e % HEAD_DIM;
            ks[e] = select(0.0, k[at], r < p.tk);
            vs[e] = select(0.0, v[at], r < p.tk);
        }
        workgroupBarrier();
        var n = 0u;
        if mine > c0 {
            n = min(TILE, mine - c0);
        }
        for (var c = 0u; c < n; c++) {
            var s = 0.0;
            var dp = 0.0;
            for (var e = 0u; e < HEAD_DIM; e++) {
                s = fma(qv[e], ks[c * HEAD_DIM + e], s);
                dp = fma(gv[e], vs[c * HEAD_DIM + e], dp);
            }
            let w = exp(s * p.scale - li);
            let ds = w * (dp * keep_factor(head, i, c0 + c) - di) * p.scale;
            for (var e = 0u; e < HEAD_DIM; e++) {
                acc[e] = fma(ds, ks[c * HEAD_DIM + e], acc[e]);
            }
        }
    }
    if valid {
        for (var e = 0u; e < HEAD_DIM; e++) {
            dq[row + e] = acc[e];
        }
    }
}
