// out = cond != 0 ? a : b over a contiguous output of up to 8 dimensions, each operand
// read through its strides (0 along broadcast dimensions). Words are copied as bits.

struct Params {
    len: u32,
    rank: u32,
    _pad0: u32,
    _pad1: u32,
    shape: array<vec4<u32>, 2>,
    cond_strides: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cond: array<u32>;
@group(0) @binding(2) var<storage, read> a: array<u32>;
@group(0) @binding(3) var<storage, read> b: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

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
    var ci = 0u;
    var ai = 0u;
    var bi = 0u;
    for (var d = p.rank; d > 0u; d--) {
        let q = (d - 1u) / 4u;
        let r = (d - 1u) % 4u;
        let n = p.shape[q][r];
        let at = rest % n;
        rest = rest / n;
        ci += at * p.cond_strides[q][r];
        ai += at * p.a_strides[q][r];
        bi += at * p.b_strides[q][r];
    }
    out[i] = select(b[bi], a[ai], cond[ci] != 0u);
}
