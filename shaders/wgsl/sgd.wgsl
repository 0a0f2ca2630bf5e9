// One SGD step over a whole parameter (PyTorch semantics: weight decay joins the gradient,
// momentum buffer b = momentum * b + g, optional Nesterov).

struct Params {
    len: u32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> buf: array<f32>;

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
    let g = grad[i] + p.weight_decay * param[i];
    if p.momentum == 0.0 {
        param[i] -= p.lr * g;
        return;
    }
    let b = p.momentum * buf[i] + g;
    buf[i] = b;
    if p.nesterov != 0u {
        param[i] -= p.lr * (g + p.momentum * b);
    } else {
        param[i] -= p.lr * b;
    }
}
