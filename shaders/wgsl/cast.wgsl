// Converts between dtypes, one output word per invocation: mode 0 is u32 -> f32 by
// value; mode 1 is f32 -> u32, truncating toward zero, negative and NaN to 0, saturating
// at 2^32 - 1 (as Rust's `as`); modes 2 and 3 round f32 to bfloat16 and to binary16 and
// back (`round_to`); modes 4 and 5 pack f32 into bfloat16 and binary16, two to a word
// (element 2i in the low half), and 6 and 7 unpack them. The 16-bit bits are built by
// hand, without `enable f16`, so every adapter runs them, bit for bit as the CPU.

struct Params {
    len: u32,
    mode: u32,
    // Elements of the f32 side (modes 4-7).
    n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

// The binary16 bits of f32 bits `u`, rounded to nearest, ties to even; NaN stays NaN
// (quiet, its payload's top bits kept), as `half` and F16C convert.
fn f16_bits(u: u32) -> u32 {
    let sign = (u >> 16u) & 0x8000u;
    let mag = u & 0x7fffffffu;
    if mag >= 0x7f800000u {
        let nan = select(0u, 0x0200u | ((mag & 0x007fffffu) >> 13u), mag > 0x7f800000u);
        return sign | 0x7c00u | nan;
    }
    let a = abs(round_f16(bitcast<f32>(u)));
    if a > 65504.0 {
        return sign | 0x7c00u;
    }
    if a < 6.103515625e-05 {
        // Subnormal (or zero): a whole number of 2^-24 steps, below 1024.
        return sign | u32(a * 16777216.0);
    }
    let r = bitcast<u32>(a);
    return sign | ((((r >> 23u) & 0xffu) - 112u) << 10u) | ((r >> 13u) & 0x3ffu);
}

fn f16_value(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let m = h & 0x3ffu;
    if e == 0u {
        return sign | bitcast<u32>(f32(m) * 5.9604644775390625e-08);
    }
    if e == 31u {
        return sign | 0x7f800000u | (m << 13u);
    }
    return sign | ((e + 112u) << 23u) | (m << 13u);
}

fn pack_one(mode: u32, u: u32) -> u32 {
    if mode == 4u {
        return bitcast<u32>(round_bf16(bitcast<f32>(u))) >> 16u;
    }
    return f16_bits(u);
}

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
    if p.mode == 4u || p.mode == 5u {
        let lo = pack_one(p.mode, x[2u * i]);
        var hi = 0u;
        if 2u * i + 1u < p.n {
            hi = pack_one(p.mode, x[2u * i + 1u]);
        }
        out[i] = lo | (hi << 16u);
        return;
    }
    if p.mode >= 6u {
        let h = (x[i / 2u] >> (16u * (i & 1u))) & 0xffffu;
        out[i] = select(f16_value(h), h << 16u, p.mode == 6u);
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
