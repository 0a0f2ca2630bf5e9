// The first step of the attention backward pass: dsum[i] = dout[i] . out[i] per query
// row (the softmax's correction term, as in flash attention 2).

@group(0) @binding(1) var<storage, read> out: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> dsum: array<f32>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let head = p.head_base + wg.y;
    let i = wg.x * BLOCK + lid;
    if i >= p.tq {
        return;
    }
    let row = (head * p.tq + i) * HEAD_DIM;
    var acc = 0.0;
    for (var e = 0u; e < HEAD_DIM; e++) {
        acc = fma(dout[row + e], out[row + e], acc);
    }
    dsum[head * p.tq + i] = acc;
}
