// The adjoint of gather: dx[o, r, i] = sum over j (in increasing order) of dy[o, j, i]
// where idx[o, j, i] == r. Invocation (o, part, i) owns the rows r with r % parts == part
// of column i: it zeroes them, then scans every index. Each sum has one owner and a fixed
// order, so there are no atomics and results repeat exactly.

struct Params {
    len: u32,
    n: u32,
    m: u32,
    inner: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    parts: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> idx: array<u32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

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
    let part = (g / p.inner) % p.parts;
    let o = g / (p.inner * p.parts);
    for (var r = part; r < p.n; r += p.parts) {
        dx[(o * p.n + r) * p.inner + i] = 0.0;
    }
    for (var j = 0u; j < p.m; j++) {
        let at = idx[o * p.s0 + j * p.s1 + i * p.s2];
        if at < p.n && at % p.parts == part {
            let d = (o * p.n + at) * p.inner + i;
            dx[d] = dx[d] + dy[(o * p.m + j) * p.inner + i];
        }
    }
}
