// C = act(alpha * op(A) op(B) + beta * C + bias), row-major, batched over workgroup_id.z;
// a launch covers the tiles from row p.row_base and column p.col_base on.
//
// Each 8 x 8 workgroup computes a 64 x 64 tile of C. A and B are staged through workgroup
// memory 16 deep in k; every invocation owns an 8 x 8 block of the tile, held in sixteen
// named vec4 accumulators (two per row) and updated with fma: per k step it reads two
// vec4s of A (rows 4y..4y+3 and 32+4y..32+4y+3) and two of B (columns 4x.. and 32+4x..)
// and does 64 multiply-adds, four per float read from workgroup memory. Splitting each
// invocation's rows and columns in two halves 32 apart keeps neighbouring invocations on
// neighbouring vec4s of workgroup memory.
//
// The loaders (`load_a`, `load_b`, prepended by the host) fetch four consecutive elements
// of the stored matrix along its contiguous dimension, as one vec4 load when that
// dimension is a multiple of four and element by element otherwise; anything outside the
// matrix reads as zero, so M, N and K are arbitrary.
//
// The tiles hold `TileElem` (declared by the host): f32, or f16 for f16 inputs on a
// device with `enable f16`. The values staged are already rounded to f16 then, so the
// f16 tiles hold them exactly, in half the workgroup memory; they are widened to f32 as
// they are read, and the products and sums stay f32: the same bits either way.

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
    row_base: u32,
    col_base: u32,
}

// A is stored k x m instead of m x k; B is stored n x k instead of k x n.
override TRANS_A: bool = false;
override TRANS_B: bool = false;
// The format A's and B's values enter the product in (FORMAT_*): rounded as they are
// loaded, the products summed in f32.
override INPUTS: u32 = 0u;

fn load_a_in(off: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    let v = load_a(off, row, col, rows, cols);
    if INPUTS == FORMAT_F32 {
        return v;
    }
    return vec4<f32>(round_to(INPUTS, v.x), round_to(INPUTS, v.y), round_to(INPUTS, v.z), round_to(INPUTS, v.w));
}

fn load_b_in(off: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    let v = load_b(off, row, col, rows, cols);
    if INPUTS == FORMAT_F32 {
        return v;
    }
    return vec4<f32>(round_to(INPUTS, v.x), round_to(INPUTS, v.y), round_to(INPUTS, v.z), round_to(INPUTS, v.w));
}

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

@group(0) @binding(0) var<uniform> p: Params;
// Bindings 1 (a) and 2 (b) are declared by the loaders.
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// As[k * 16 + i] holds rows 4i..4i+3 of the A tile at depth k; Bs[k * 16 + j] holds
// columns 4j..4j+3 of the B tile at depth k.
var<workgroup> As: array<vec4<TileElem>, 256>;
var<workgroup> Bs: array<vec4<TileElem>, 256>;

fn store_quad(batch: u32, row: u32, col: u32, v: vec4<f32>) {
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

@compute @workgroup_size(8, 8)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let batch = p.batch_base + wg.z;
    let a_off = batch * p.stride_a;
    let b_off = batch * p.stride_b;
    let m0 = p.row_base + wg.y * BM;
    let n0 = p.col_base + wg.x * BN;

    // acc<r><h>: row r of the block (0-3 from the first row quad, 4-7 from the second),
    // columns of quad h (0: 4x.., 1: 32+4x..).
    var acc00 = vec4<f32>(); var acc01 = vec4<f32>();
    var acc10 = vec4<f32>(); var acc11 = vec4<f32>();
    var acc20 = vec4<f32>(); var acc21 = vec4<f32>();
    var acc30 = vec4<f32>(); var acc31 = vec4<f32>();
    var acc40 = vec4<f32>(); var acc41 = vec4<f32>();
    var acc50 = vec4<f32>(); var acc51 = vec4<f32>();
    var acc60 = vec4<f32>(); var acc61 = vec4<f32>();
    var acc70 = vec4<f32>(); var acc71 = vec4<f32>();

    let tiles = (p.k + BK - 1u) / BK;
    for (var kt = 0u; kt < tiles; kt++) {
        let k0 = kt * BK;
        // Each of the 64 invocations stages four of the 256 quads of each slab.
        for (var s = 0u; s < 4u; s++) {
            let q = t + 64u * s;
            let row_of_quad = q / 4u;   // a 64-row tile edge, 4 quads per 16-deep row
            let k_quad = q % 4u;
            let depth = q / 16u;        // a 16-deep tile, 16 quads per 64-wide row
            let wide_quad = q % 16u;
            if TRANS_A {
                // Stored k x m: a quad runs along m, straight into As.
                As[depth * 16u + wide_quad] = vec4<TileElem>(load_a_in(a_off, k0 + depth, m0 + 4u * wide_quad, p.k, p.m));
            } else {
                // Stored m x k: a quad runs along k and is transposed into As.
                let v = load_a_in(a_off, m0 + row_of_quad, k0 + 4u * k_quad, p.m, p.k);
                for (var j = 0u; j < 4u; j++) {
                    As[(4u * k_quad + j) * 16u + row_of_quad / 4u][row_of_quad % 4u] = TileElem(v[j]);
                }
            }
            if TRANS_B {
                // Stored n x k: a quad runs along k and is transposed into Bs.
                let v = load_b_in(b_off, n0 + row_of_quad, k0 + 4u * k_quad, p.n, p.k);
                for (var j = 0u; j < 4u; j++) {
                    Bs[(4u * k_quad + j) * 16u + row_of_quad / 4u][row_of_quad % 4u] = TileElem(v[j]);
                }
            } else {
                // Stored k x n: a quad runs along n, straight into Bs.
                Bs[depth * 16u + wide_quad] = vec4<TileElem>(load_b_in(b_off, k0 + depth, n0 + 4u * wide_quad, p.k, p.n));
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = vec4<f32>(As[kk * 16u + lid.y]);
            let a1 = vec4<f32>(As[kk * 16u + lid.y + 8u]);
            let b0 = vec4<f32>(Bs[kk * 16u + lid.x]);
            let b1 = vec4<f32>(Bs[kk * 16u + lid.x + 8u]);
            acc00 = fma(vec4<f32>(a0.x), b0, acc00); acc01 = fma(vec4<f32>(a0.x), b1, acc01);
            acc10 = fma(vec4<f32>(a0.y), b0, acc10); acc11 = fma(vec4<f32>(a0.y), b1, acc11);
            acc20 = fma(vec4<f32>(a0.z), b0, acc20); acc21 = fma(vec4<f32>(a0.z), b1, acc21);
            acc30 = fma(vec4<f32>(a0.w), b0, acc30); acc31 = fma(vec4<f32>(a0.w), b1, acc31);
            acc40 = fma(vec4<f32>(a1.x), b0, acc40); acc41 = fma(vec4<f32>(a1.x), b1, acc41);
            acc50 = fma(vec4<f32>(a1.y), b0, acc50); acc51 = fma(vec4<f32>(a1.y), b1, acc51);
            acc60 = fma(vec4<f32>(a1.z), b0, acc60); acc61 = fma(vec4<f32>(a1.z), b1, acc61);
            acc70 = fma(vec4<f32>(a1.w), b0, acc70); acc71 = fma(vec4<f32>(a1.w), b1, acc71);
        }
        workgroupBarrier();
    }

    let r0 = m0 + 4u * lid.y;
    let r1 = r0 + 32u;
    let c0 = n0 + 4u * lid.x;
    let c1 = c0 + 32u;
    store_quad(batch, r0, c0, acc00); store_quad(batch, r0, c1, acc01);
    store_quad(batch, r0 + 1u, c0, acc10); store_quad(batch, r0 + 1u, c1, acc11);
    store_quad(batch, r0 + 2u, c0, acc20); store_quad(batch, r0 + 2u, c1, acc21);
    store_quad(batch, r0 + 3u, c0, acc30); store_quad(batch, r0 + 3u, c1, acc31);
    store_quad(batch, r1, c0, acc40); store_quad(batch, r1, c1, acc41);
    store_quad(batch, r1 + 1u, c0, acc50); store_quad(batch, r1 + 1u, c1, acc51);
    store_quad(batch, r1 + 2u, c0, acc60); store_quad(batch, r1 + 2u, c1, acc61);
    store_quad(batch, r1 + 3u, c0, acc70); store_quad(batch, r1 + 3u, c1, acc71);
}
