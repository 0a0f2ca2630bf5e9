// cols[n][c kh kw + ki kw + kj][o ow + q] = x[n][c][o sh + ki - ph][q sw + kj - pw], zero in
// the padding; one invocation per column entry.

@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cols: array<f32>;

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
    // Column entries run window by window within each (plane, ki, kj) row.
    let win = window_position(i);
    let row = win.x;
    let kj = row % p.kernel_w;
    let ki = (row / p.kernel_w) % p.kernel_h;
    let plane = row / (p.kernel_w * p.kernel_h);
    let at = tap(win.y, win.z, ki, kj);
    var v = 0.0;
    if at >= 0 {
        v = x[plane * p.height * p.width + u32(at)];
    }
    cols[i] = v;
}
