// out = u32(lhs op rhs) over a contiguous output of up to 8 dimensions, operands read
// through their strides as f32 or u32.

struct Params {
    len: u32,
    rank: u32,
    op: u32,
    is_f32: u32,
    shape: array<vec4<u32>, 2>,
    lhs_strides: array<vec4<u32>, 2>,
    rhs_strides: array<vec4<u32>, 2>,
}

// In the order of `ringtrain_kernels::CompareOp`.
const CMP_EQ: u32 = 0u;
const CMP_NE: u32 = 1u;
const CMP_LT: u32 = 2u;
const CMP_LE: u32 = 3u;
const CMP_GT: u32 = 4u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lhs: array<u32>;
@group(0) @binding(2) var<storage, read> rhs: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

fn cmp_f32(a: f32, b: f32) -> bool {
    switch p.op {
        case CMP_EQ: { return a == b; }
        // Not `a != b`: that may compile to an ordered comparison, false for NaN.
        case CMP_NE: { return !(a == b); }
        case CMP_LT: { return a < b; }
        case CMP_LE: { return a <= b; }
        case CMP_GT: { return a > b; }
        default: { return a >= b; }
    }
}

fn cmp_u32(a: u32, b: u32) -> bool {
    switch p.op {
        case CMP_EQ: { return a == b; }
        case CMP_NE: { return a != b; }
        case CMP_LT: { return a < b; }
        case CMP_LE: { return a <= b; }
        case CMP_GT: { return a > b; }
        default: { return a >= b; }
    }
}

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
    var li = 0u;
    var ri = 0u;
    for (var d = p.rank; d > 0u; d--) {
        let q = (d - 1u) / 4u;
        let r = (d - 1u) % 4u;
        let n = p.shape[q][r];
        let at = rest % n;
        rest = rest / n;
        li += at * p.lhs_strides[q][r];
        ri += at * p.rhs_strides[q][r];
    }
    var t: bool;
    if p.is_f32 != 0u {
        t = cmp_f32(bitcast<f32>(lhs[li]), bitcast<f32>(rhs[ri]));
    } else {
        t = cmp_u32(lhs[li], rhs[ri]);
    }
    out[i] = select(0u, 1u, t);
}
