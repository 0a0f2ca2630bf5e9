// y = f(x), or y = x * mul + add for the affine op.

struct Params {
    len: u32,
    op: u32,
    mul: f32,
    add: f32,
}

const OP_AFFINE: u32 = 100u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

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
    if p.op == OP_AFFINE {
        y[i] = x[i] * p.mul + p.add;
    } else {
        y[i] = unary_f(p.op, x[i]);
    }
}
