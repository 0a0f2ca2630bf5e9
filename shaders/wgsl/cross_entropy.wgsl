// Fused softmax + cross-entropy of [rows, cols] logits, one workgroup per row: writes the
// row softmax (kept for the backward pass) and each row's loss, lse - logit[label]. The
// host then averages the row losses with sum_axis.

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<u32>;
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;

@compute @workgroup_size(128)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wg, groups);
    if row >= p.rows {
        return;
    }
    let base = row * p.cols;
    var m = LOWEST;
    for (var c = lid; c < p.cols; c += RW) {
        m = max(m, logits[base + c]);
    }
    m = wg_max(m, lid);
    var s = 0.0;
    for (var c = lid; c < p.cols; c += RW) {
        s += exp(logits[base + c] - m);
    }
    s = wg_sum(s, lid);
    let inv = 1.0 / s;
    for (var c = lid; c < p.cols; c += RW) {
        probs[base + c] = exp(logits[base + c] - m) * inv;
    }
    if lid == 0u {
        // A label out of range (never checked on the host for device labels) poisons
        // the loss rather than reading another row.
        let label = labels[row];
        var loss = bitcast<f32>(0x7fc00000u);
        if label < p.cols {
            loss = m + log(s) - logits[base + label];
        }
        row_loss[row] = loss;
    }
}
