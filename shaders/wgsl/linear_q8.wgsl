// out = act(x w^T * scale + bias) for int8 weights w, [n, k] row-major, four to a word
// (value 4i + j in byte j of word i of its row), each row padded to `kw` words with
// zeros: a linear layer's inference over weights a quarter of f32's size.
//
// Each 16 x 16 workgroup computes a 64 x 64 tile of `out`, each invocation a 4 x 4 block
// of it (rows ly + 16i, columns lx + 16j). The tiles are staged 16 deep in k: 64 rows of
// x as f32, and 64 rows of weights, which every invocation loads as one word of four
// int8 values and dequantizes there, in the load, to f32 (the scale, one per output,
// waits for the epilogue). Products and sums are f32, with fma.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Words per weight row: ceil(k / 4).
    kw: u32,
    has_bias: u32,
    relu: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
// Rows of the staged tiles, padded by one against bank conflicts.
const STRIDE: u32 = 17u;

var<workgroup> xs: array<f32, 1088>; // TILE * STRIDE
var<workgroup> ws: array<f32, 1088>;

// Byte `j` of `word` as a signed value.
fn int8_at(word: u32, j: u32) -> f32 {
    return f32(bitcast<i32>(word << (24u - 8u * j)) >> 24u);
}

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wg.y * TILE;
    let col0 = wg.x * TILE;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        // x: 64 x 16 values, four per invocation.
        for (var e = 0u; e < 4u; e++) {
            let flat = li * 4u + e;
            let r = flat / DEPTH;
            let c = flat % DEPTH;
            var v = 0.0;
            if row0 + r < p.m && k0 + c < p.k {
                v = x[(row0 + r) * p.k + k0 + c];
            }
            xs[r * STRIDE + c] = v;
        }
        // w: 64 rows x 4 words, one word per invocation, dequantized as it is loaded.
        let r = li / 4u;
        let word_in_tile = li % 4u;
        let word_index = k0 / 4u + word_in_tile;
        var word = 0u;
        if col0 + r < p.n && word_index < p.kw {
            word = w[(col0 + r) * p.kw + word_index];
        }
        for (var j = 0u; j < 4u; j++) {
            ws[r * STRIDE + word_in_tile * 4u + j] = int8_at(word, j);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < DEPTH; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(lid.y + 16u * i) * STRIDE + kk];
                b[i] = ws[(lid.x + 16u * i) * STRIDE + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(a[i], b[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if row < p.m && col < p.n {
                var y = acc[i][j] * scales[col];
                if p.has_bias != 0u {
                    y += bias[col];
                }
                if p.relu != 0u {
                    y = max(y, 0.0);
                }
                out[row * p.n + col] = y;
            }
        }
    }
}
