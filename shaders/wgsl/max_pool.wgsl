// y = the max of each window (padding never wins), argmax = the position of its first
// maximum in the window (ki kw + kj), as f32; one invocation per output element.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> argmax: array<f32>;

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
    var best = 0.0;
    var at = 0u;
    var found = false;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let t = tap(win.y, win.z, ki, kj);
            if t >= 0 {
                let v = x[base + u32(t)];
                // NaN propagates, as on the CPU (where the device honours NaN at all).
                if !found || v > best || (v != v && best == best) {
                    best = v;
                    at = ki * p.kernel_w + kj;
                    found = true;
                }
            }
        }
    }
    y[i] = best;
    argmax[i] = f32(at);
}
