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
    let q = i % p.out_w;
    let o = (i / p.out_w) % p.out_h;
    let plane = i / (p.out_h * p.out_w);
    var best = 0.0;
    var at = 0u;
    var found = false;
    for (var ki = 0u; ki < p.kernel_h; ki++) {
        let r = source(o, ki, p.stride_h, p.pad_h, p.height);
        if r < 0 {
            continue;
        }
        for (var kj = 0u; kj < p.kernel_w; kj++) {
            let c = source(q, kj, p.stride_w, p.pad_w, p.width);
            if c < 0 {
                continue;
            }
            let v = x[(plane * p.height + u32(r)) * p.width + u32(c)];
            if !found || v > best {
                best = v;
                at = ki * p.kernel_w + kj;
                found = true;
            }
        }
    }
    y[i] = best;
    argmax[i] = f32(at);
}
