// Row-wise log-softmax of [rows, cols], one workgroup per row.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wg, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = LOWEST;
    for (var c = lid; c < p.cols; c += RW) {
        m = max(m, x[base + c]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += RW) {
        s += exp(x[base + c] - m);
    }
    let lse = m + log(wg_sum(s, lid));
    for (var c = lid; c < p.cols; c += RW) {
        y[base + c] = x[base + c] - lse;
    }
}
