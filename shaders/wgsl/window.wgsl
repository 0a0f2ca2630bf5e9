// Geometry of a 2-D window sliding over NCHW planes (kernels/src/window.rs), shared by
// im2col, col2im and the pooling kernels, with the two index maps they all use. The
// adjoint kernels gather (one invocation per input element, summing the windows that
// cover it) rather than scatter, so they need no atomics and sum in a fixed order, the
// same as the CPU backend's.

struct Params {
    len: u32,
    height: u32,
    width: u32,
    kernel_h: u32,
    kernel_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_h: u32,
    pad_w: u32,
    out_h: u32,
    out_w: u32,
    // 1 / (kernel_h kernel_w), for average pooling.
    scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// The input row (or column) that window position `o` reads at kernel offset `k`, or -1
// inside the padding.
fn source(o: u32, k: u32, stride: u32, pad: u32, size: u32) -> i32 {
    let hp = o * stride + k;
    if hp < pad || hp - pad >= size {
        return -1;
    }
    return i32(hp - pad);
}

// The window position whose kernel offset `k` lands on input row (or column) `h`, or -1.
fn covering(h: u32, k: u32, stride: u32, pad: u32, out: u32) -> i32 {
    let hp = h + pad;
    if hp < k || (hp - k) % stride != 0u {
        return -1;
    }
    let o = (hp - k) / stride;
    if o >= out {
        return -1;
    }
    return i32(o);
}

// Invocation `i` of a grid over input elements, as (plane, row, column).
fn input_position(i: u32) -> vec3<u32> {
    return vec3<u32>(i / (p.width * p.height), (i / p.width) % p.height, i % p.width);
}

// Invocation `i` of a grid over windows, as (plane, window row, window column).
fn window_position(i: u32) -> vec3<u32> {
    return vec3<u32>(i / (p.out_h * p.out_w), (i / p.out_w) % p.out_h, i % p.out_w);
}

// Where window (o, q) reads at kernel tap (ki, kj): the offset within its input plane,
// or -1 inside the padding.
fn tap(o: u32, q: u32, ki: u32, kj: u32) -> i32 {
    let r = source(o, ki, p.stride_h, p.pad_h, p.height);
    let c = source(q, kj, p.stride_w, p.pad_w, p.width);
    if r < 0 || c < 0 {
        return -1;
    }
    return r * i32(p.width) + c;
}

// The window whose kernel tap (ki, kj) lands on input (r, c): its offset within the
// output plane, or -1 if there is none.
fn window_at(r: u32, c: u32, ki: u32, kj: u32) -> i32 {
    let o = covering(r, ki, p.stride_h, p.pad_h, p.out_h);
    let q = covering(c, kj, p.stride_w, p.pad_w, p.out_w);
    if o < 0 || q < 0 {
        return -1;
    }
    return o * i32(p.out_w) + q;
}
