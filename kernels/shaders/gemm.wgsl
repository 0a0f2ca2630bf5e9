// C = act(alpha * op(A) op(B) + beta * C + bias), row-major, batched over workgroup_id.z.
//
// Each 16 x 16 workgroup computes a 64 x 64 tile of C. A and B are staged through
// workgroup memory 16 deep in k; every invocation owns a 4 x 4 block of the tile, held in
// four vec4 accumulators (one per row) and updated with fma: per k step it reads one vec4
// of A (its four rows) and one of B (its four columns) and does 16 multiply-adds.
//
// The loaders (`load_a`, `load_b`, prepended by the host) fetch four consecutive elements
// of the stored matrix along its contiguous dimension, as one vec4 load when that
// dimension is a multiple of four and element by element otherwise; anything outside the
// matrix reads as zero, so M, N and K are arbitrary.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_base: u32,
    stride_a: u32,
    stride_b: u32,
    alpha: f32,
    beta: f32,
    act: u32,
    has_bias: u32,
    _pad0: u32,
    _pad1: u32,
}

// A is stored k x m instead of m x k; B is stored n x k instead of k x n.
override TRANS_A: bool = false;
override TRANS_B: bool = false;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
// Bindings 1 (a) and 2 (b) are declared by the loaders.
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// As[k * 16 + i] holds rows 4i..4i+3 of the A tile at depth k; Bs[k * 16 + j] holds
// columns 4j..4j+3 of the B tile at depth k.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

fn store_row(batch: u32, row: u32, col: u32, v: vec4<f32>) {
    if row >= p.m {
        return;
    }
    let base = (batch * p.m + row) * p.n;
    for (var j = 0u; j < 4u; j++) {
        let cj = col + j;
        if cj < p.n {
            var r = p.alpha * v[j];
            if p.beta != 0.0 {
                r = fma(p.beta, c[base + cj], r);
            }
            if p.has_bias != 0u {
                r += bias[cj];
            }
            c[base + cj] = unary_f(p.act, r);
        }
    }
}

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let batch = p.batch_base + wg.z;
    let a_off = batch * p.stride_a;
    let b_off = batch * p.stride_b;
    let m0 = wg.y * BM;
    let n0 = wg.x * BN;

    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();

    // Each of the 256 invocations stages one quad of A and one of B per k tile.
    let row_of_quad = t / 4u;   // a 64-row tile edge, 4 quads per 16-deep row
    let k_quad = t % 4u;
    let depth = t / 16u;        // a 16-deep tile, 16 quads per 64-wide row
    let wide_quad = t % 16u;

    let tiles = (p.k + BK - 1u) / BK;
    for (var kt = 0u; kt < tiles; kt++) {
        let k0 = kt * BK;
        if TRANS_A {
            // Stored k x m: a quad runs along m, straight into As.
            As[depth * 16u + wide_quad] = load_a(a_off, k0 + depth, m0 + 4u * wide_quad, p.k, p.m);
        } else {
            // Stored m x k: a quad runs along k and is transposed into As.
            let v = load_a(a_off, m0 + row_of_quad, k0 + 4u * k_quad, p.m, p.k);
            for (var j = 0u; j < 4u; j++) {
                As[(4u * k_quad + j) * 16u + row_of_quad / 4u][row_of_quad % 4u] = v[j];
            }
        }
        if TRANS_B {
            // Stored n x k: a quad runs along k and is transposed into Bs.
            let v = load_b(b_off, n0 + row_of_quad, k0 + 4u * k_quad, p.n, p.k);
            for (var j = 0u; j < 4u; j++) {
                Bs[(4u * k_quad + j) * 16u + row_of_quad / 4u][row_of_quad % 4u] = v[j];
            }
        } else {
            // Stored k x n: a quad runs along n, straight into Bs.
            Bs[depth * 16u + wide_quad] = load_b(b_off, k0 + depth, n0 + 4u * wide_quad, p.k, p.n);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = As[kk * 16u + lid.y];
            let b = Bs[kk * 16u + lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    let row = m0 + 4u * lid.y;
    let col = n0 + 4u * lid.x;
    store_row(batch, row, col, acc0);
    store_row(batch, row + 1u, col, acc1);
    store_row(batch, row + 2u, col, acc2);
    store_row(batch, row + 3u, col, acc3);
}
