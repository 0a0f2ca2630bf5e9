// Layer norm's input gradient, one workgroup per row:
// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, xhat = (x - mean) * rstd.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> stats: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

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
    let mean = stats[2u * row];
    let rstd = stats[2u * row + 1u];
    var a = 0.0;
    var b = 0.0;
    for (var c = lid; c < p.cols; c += RW) {
        let g = dy[base + c] * gamma[c];
        a += g;
        b += g * (x[base + c] - mean) * rstd;
    }
    let mean_g = wg_sum(a, lid) / f32(p.cols);
    let mean_gx = wg_sum(b, lid) / f32(p.cols);
    for (var c = lid; c < p.cols; c += RW) {
        let xhat = (x[base + c] - mean) * rstd;
        dx[base + c] = rstd * (dy[base + c] * gamma[c] - mean_g - xhat * mean_gx);
    }
}
