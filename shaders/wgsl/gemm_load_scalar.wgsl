// Loader of GEMM operand NAME element by element, for shapes whose contiguous dimension
// is not a multiple of four; elements outside the matrix read as zero.
@group(0) @binding(BINDING) var<storage, read> NAME: array<f32>;

fn load_NAME(off: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    var v = vec4<f32>();
    if row < rows {
        let base = off + row * cols;
        for (var j = 0u; j < 4u; j++) {
            if col + j < cols {
                v[j] = NAME[base + col + j];
            }
        }
    }
    return v;
}
