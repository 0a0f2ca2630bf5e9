// Layer norm's parameter gradients, one invocation per column, summing the rows in order
// (no atomics, the same result every run): dgamma = sum dy * xhat, dbeta = sum dy.

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let c = flat_index(wg, groups, lid, 64u);
    if c >= p.cols {
        return;
    }
    var g = 0.0;
    var b = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let d = dy[r * p.cols + c];
        g += d * (x[r * p.cols + c] - stats[2u * r]) * stats[2u * r + 1u];
        b += d;
    }
    dgamma[c] = g;
    dbeta[c] = b;
}
