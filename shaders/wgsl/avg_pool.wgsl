// y = the mean of each window, padding counted as zeros; one invocation per output.

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
    let win = window_position(i);
    let base = win.x * p.height * p.width;
    var sum = 0.0;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let t = tap(win.y, win.z, ki, kj);
            if t >= 0 {
                sum += x[base + u32(t)];
            }
        }
    }
    y[i] = sum * p.scale;
}
