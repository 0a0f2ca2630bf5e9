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
    let q = i % p.out_w;
    let o = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_h * p.out_w);
    var sum = 0.0;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        let r = source(o, ki, p.stride_h, p.pad_h, p.height);
        if r < 0 {
            continue;
        }
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let c = source(q, kj, p.stride_w, p.pad_w, p.width);
            if c >= 0 {
                sum += x[(plane * p.height + u32(r)) * p.width + u32(c)];
            }
        }
    }
    y[i] = sum * p.scale;
}
