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
