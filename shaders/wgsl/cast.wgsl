// Converts between dtypes: mode 0 is u32 -> f32 by value; mode 1 is f32 -> u32,
// truncating toward zero, negative and NaN to 0, saturating at 2^32 - 1 (as Rust's `as`);
// modes 2 and 3 round f32 to bfloat16 and to binary16 and back (`round_to`).

struct Params {
    len: u32,
    mode: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

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
    let w = x[i];
    if p.mode == 0u {
        out[i] = bitcast<u32>(f32(w));
    } else if p.mode >= 2u {
        out[i] = bitcast<u32>(round_to(p.mode - 1u, bitcast<f32>(w)));
    } else {
        let v = bitcast<f32>(w);
        var r = 0u;
        if v >= 4294967296.0 {
            r = 0xffffffffu;
        } else if v > 0.0 {
            r = u32(v);
        }
        out[i] = r;
    }
}
