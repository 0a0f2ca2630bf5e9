// x[n][c][h][w] = the sum of the column entries im2col copied it to; one invocation per
// input element.

@group(0) @binding(1) var<storage, read> cols: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;

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
    let at = input_position(i);
    let area = p.out_h * p.out_w;
    var sum = 0.0;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let win = window_at(at.y, at.z, ki, kj);
            if win >= 0 {
                let row = (at.x * p.kernel_h + ki) * p.kernel_w + kj;
                sum += cols[row * area + u32(win)];
            }
        }
    }
    x[i] = sum;
}
