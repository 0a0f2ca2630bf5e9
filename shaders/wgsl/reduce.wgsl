// Prepended to the kernels that reduce within a workgroup of RW invocations (one
// workgroup per row or per output element).

const RW: u32 = 128u;

var<workgroup> red: array<f32, RW>;

fn wg_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    // Everyone has read red[0] before the next reduction overwrites it.
    workgroupBarrier();
    return total;
}

fn wg_max(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = RW / 2u; s > 0u; s >>= 1u) {
        if lid < s {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let top = red[0];
    workgroupBarrier();
    return top;
}

// Below every finite f32; a start value for running maxima.
const LOWEST: f32 = -3.4028234e38;
