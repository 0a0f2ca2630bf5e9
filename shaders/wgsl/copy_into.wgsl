// Writes the contiguous src into a strided view (up to 8 dimensions after merging) of
// dst, leaving the rest of dst alone. Words are copied as bits.

struct Params {
    len: u32,
    rank: u32,
    offset: u32,
    _pad: u32,
    shape: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wg, groups, lid, 256u);
    if i >= p.len {
        return;
    }
    var rest = i;
    var di = p.offset;
    for (var d = p.rank; d > 0u; d--) {
        let q = (d - 1u) / 4u;
        let r = (d - 1u) % 4u;
        let n = p.shape[q][r];
        di += (rest % n) * p.strides[q][r];
        rest = rest / n;
    }
    dst[di] = src[i];
}
