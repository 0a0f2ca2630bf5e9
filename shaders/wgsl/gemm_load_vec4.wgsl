// Loader of GEMM operand NAME as vec4s: the host checked that its contiguous dimension,
// its batch stride and its offset are multiples of four, so a quad is all inside the
// matrix or all outside.
@group(0) @binding(BINDING) var<storage, read> NAME: array<vec4<f32>>;

fn load_NAME(off: u32, row: u32, col: u32, rows: u32, cols: u32) -> vec4<f32> {
    if row < rows && col < cols {
        return NAME[(off + row * cols + col) / 4u];
    }
    return vec4<f32>();
}
