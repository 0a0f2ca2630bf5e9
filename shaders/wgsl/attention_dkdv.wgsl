// Attention backward, the key and value gradients: one invocation per key row walks the
// queries that see it, TILE at a time through workgroup memory, recomputing each weight
// from the saved log-sum-exp, and sums dk and dv in query order.

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> dsum: array<f32>;
@group(0) @binding(7) var<storage, read_write> dk: array<f32>;
@group(0) @binding(8) var<storage, read_write> dv: array<f32>;

var<workgroup> qs: array<f32, TILE * HEAD_DIM>;
var<workgroup> gs: array<f32, TILE * HEAD_DIM>;
var<workgroup> ls: array<f32, TILE>;
var<workgroup> dsums: array<f32, TILE>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = p.head_base + wg.y;
    let j0 = wg.x * BLOCK;
    let j = j0 + lid;
    let valid = j < p.tk;
    let row = (head * p.tk + j) * HEAD_DIM;
    var kv: array<f32, HEAD_DIM>;
    var vv: array<f32, HEAD_DIM>;
    var dkv: array<f32, HEAD_DIM>;
    var dvv: array<f32, HEAD_DIM>;
    for (var e = 0u; e < HEAD_DIM; e++) {
        kv[e] = select(0.0, k[row + e], valid);
        vv[e] = select(0.0, v[row + e], valid);
        dkv[e] = 0.0;
        dvv[e] = 0.0;
    }
    // Query i sees key j when j < key_end(i): under the causal mask, from i = j - (tk - tq).
    var start = 0u;
    if p.causal != 0u && j0 > p.tk - p.tq {
        start = j0 - (p.tk - p.tq);
    }
    for (var t0 = start; t0 < p.tq; t0 += TILE) {
        workgroupBarrier();
        for (var e = lid; e < TILE * HEAD_DIM; e += BLOCK) {
            let r = t0 + e / HEAD_DIM;
            let at = (head * p.tq + r) * HEAD_DIM + e % HEAD_DIM;
            qs[e] = select(0.0, q[at], r < p.tq);
            gs[e] = select(0.0, dout[at], r < p.tq);
        }
        if lid < TILE {
            let r = t0 + lid;
            ls[lid] = select(0.0, lse[head * p.tq + r], r < p.tq);
            dsums[lid] = select(0.0, dsum[head * p.tq + r], r < p.tq);
        }
        workgroupBarrier();
        if valid {
            let n = min(TILE, p.tq - t0);
            for (var r = 0u; r < n; r++) {
                let i = t0 + r;
                if j >= key_end(i) {
                    continue;
                }
                var s = 0.0;
                var dp = 0.0;
                for (var e = 0u; e < HEAD_DIM; e++) {
                    s = fma(qs[r * HEAD_DIM + e], kv[e], s);
                    dp = fma(gs[r * HEAD_DIM + e], vv[e], dp);
                }
                let w = exp(s * p.scale - ls[r]);
                let keep = keep_factor(head, i, j);
                let ds = w * (dp * keep - dsums[r]) * p.scale;
                let wd = w * keep;
                for (var e = 0u; e < HEAD_DIM; e++) {
                    dvv[e] = fma(wd, gs[r * HEAD_DIM + e], dvv[e]);
                    dkv[e] = fma(ds, qs[r * HEAD_DIM + e], dkv[e]);
                }
            }
        }
    }
    if valid {
        for (var e = 0u; e < HEAD_DIM; e++) {
            dk[row + e] = dkv[e];
            dv[row + e] = dvv[e];
        }
    }
}
