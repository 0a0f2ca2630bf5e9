// out[o, j] = scale * sum_a x[o, a, j], for x viewed as [outer, axis, inner].

struct Params {
    outer: u32,
    axis: u32,
    inner: u32,
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

// One invocation per output element: for many outputs (a bias gradient, column sums),
// where neighbouring invocations read neighbouring elements.
@compute @workgroup_size(256)
fn by_thread(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_index(wg, groups, lid, 256u);
    if i >= p.outer * p.inner {
        return;
    }
    let o = i / p.inner;
    var at = o * p.axis * p.inner + i % p.inner;
    var s = 0.0;
    for (var a = 0u; a < p.axis; a++) {
        s += x[at];
        at += p.inner;
    }
    out[i] = s * p.scale;
}

// One workgroup per output element: for few outputs over a long axis (a full sum, row
// sums), where one invocation per output would leave the GPU idle.
@compute @workgroup_size(128)
fn by_workgroup(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = flat_group(wg, groups);
    if i >= p.outer * p.inner {
        return;
    }
    let base = (i / p.inner) * p.axis * p.inner + i % p.inner;
    var s = 0.0;
    for (var a = lid; a < p.axis; a += RW) {
        s += x[base + a * p.inner];
    }
    s = wg_sum(s, lid);
    if lid == 0u {
        out[i] = s * p.scale;
    }
}
