// out = lhs op rhs over a contiguous output of up to 8 dimensions; the operands are read
// through their strides (0 along broadcast dimensions). The host merges dimensions that
// every operand walks contiguously first, so most calls run a loop of one or two steps.

struct Params {
    len: u32,
    rank: u32,
    op: u32,
    _pad: u32,
    shape: array<vec4<u32>, 2>,
    lhs_strides: array<vec4<u32>, 2>,
    rhs_strides: array<vec4<u32>, 2>,
}

const OP_ADD: u32 = 0u;
const OP_SUB: u32 = 1u;
const OP_MUL: u32 = 2u;
const OP_DIV: u32 = 3u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lhs: array<f32>;
@group(0) @binding(2) var<storage, read> rhs: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn binary_f(a: f32, b: f32) -> f32 {
    switch p.op {
        case OP_ADD: { return a + b; }
        case OP_SUB: { return a - b; }
        case OP_MUL: { return a * b; }
        default: { return a / b; }
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
    out[i] = binary_f(lhs[li], rhs[ri]);
}
