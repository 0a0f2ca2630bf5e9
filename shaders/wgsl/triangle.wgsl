// Keeps the lower (col - row <= diagonal) or upper (col - row >= diagonal) triangle of
// each [rows, cols] matrix and zeroes the rest (bits, so any dtype).

struct Params {
    len: u32,
    rows: u32,
    cols: u32,
    diagonal: i32,
    upper: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
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
    let c = i32(i % p.cols);
    let r = i32((i / p.cols) % p.rows);
    var keep = c - r <= p.diagonal;
    if p.upper != 0u {
        keep = c - r >= p.diagonal;
    }
    out[i] = select(0u, x[i], keep);
}
