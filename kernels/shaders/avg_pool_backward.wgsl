// dx[h][w] = the sum of dy over the windows covering (h, w), over the window area; one
// invocation per input element.

@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;

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
    let c = i % p.width;
    let r = (i / p.width) % p.height;
    let plane = i / (p.width * p.height);
    var sum = 0.0;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        let o = covering(r, ki, p.stride_h, p.pad_h, p.out_h);
        if o < 0 {
            continue;
        }
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let q = covering(c, kj, p.stride_w, p.pad_w, p.out_w);
            if q >= 0 {
                sum += dy[(plane * p.out_h + u32(o)) * p.out_w + u32(q)];
            }
        }
    }
    dx[i] = sum * p.scale;
}
