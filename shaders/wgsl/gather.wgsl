// out[o, j, i] = x[o, idx[o*s0 + j*s1 + i*s2], i] over x [outer, n, inner] and out
// [outer, m, inner]; an index >= n reads 0. Words are copied as bits (any dtype).

struct Params {
    len: u32,
    n: u32,
    m: u32,
    inner: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = flat_index(wg, groups, lid, 256u);
    if g >= p.len {
        return;
    }
    let i = g % p.inner;
    let j = (g / p.inner) % p.m;
    let o = g / (p.inner * p.m);
    let at = idx[o * p.s0 + j * p.s1 + i * p.s2];
    var v = 0u;
    if at < p.n {
        v = x[(o * p.n + at) * p.inner + i];
    }
    out[g] = v;
}
