// Layer norm of [rows, cols], one workgroup per row: y = (x - mean) * rstd * gamma + beta,
// rstd = 1 / sqrt(var + eps) (biased variance); the row's mean and rstd are kept for the
// backward pass.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;

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
    var s = 0.0;
    for (var c = lid; c < p.cols; c += RW) {
        s += x[base + c];
    }
    let mean = wg_sum(s, lid) / f32(p.cols);
    var v = 0.0;
    for (var c = lid; c < p.cols; c += RW) {
        let d = x[base + c] - mean;
        v += d * d;
    }
    let rstd = inverseSqrt(wg_sum(v, lid) / f32(p.cols) + p.eps);
    for (var c = lid; c < p.cols; c += RW) {
        y[base + c] = (x[base + c] - mean) * rstd * gamma[c] + beta[c];
    }
    if lid == 0u {
        stats[2u * row] = mean;
        stats[2u * row + 1u] = rstd;
    }
}
