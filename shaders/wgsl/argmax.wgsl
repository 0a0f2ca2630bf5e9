// Index (u32) of the first largest value along the middle axis of [outer, axis, inner];
// a NaN counts as largest. One invocation per output.

struct Params {
    len: u32,
    axis: u32,
    inner: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn is_nan_f(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let g = flat_index(wg, groups, lid, 256u);
    if g >= p.len {
        return;
    }
    let i = g % p.inner;
    let base = (g / p.inner) * p.axis * p.inner + i;
    var best = x[base];
    var at = 0u;
    for (var a = 1u; a < p.axis; a++) {
        let v = x[base + a * p.inner];
        // NaN tested on the bits (a compiler may assume `v != v` is false); a NaN best
        // stays best.
        if v > best || (is_nan_f(v) && !is_nan_f(best)) {
            best = v;
            at = a;
        }
    }
    out[g] = at;
}
