// out[r, c] = w[r, c] * scales[r]: the f32 values of an int8 weight laid out as
// linear_q8.wgsl reads it (rows of `kw` words, four values to a word).

struct Params {
    n: u32,
    k: u32,
    kw: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wg, groups, lid, 256u);
    if i < p.n * p.k {
        let r = i / p.k;
        let c = i % p.k;
        let word = w[r * p.kw + c / 4u];
        let q = bitcast<i32>(word << (24u - 8u * (c % 4u))) >> 24u;
        out[i] = f32(q) * scales[r];
    }
}
