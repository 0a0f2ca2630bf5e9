// The int8 checks of the conformance suite (included by conformance.rs): packing, the
// f32 values of a packed weight, and the int8 linear layer, on every backend.

use ringtrain_kernels::{Int8Rows, Q8Spec};

/// Packing keeps the values, dequantizing gives `Int8Rows::dequantize`'s bits, and the
/// int8 linear layer is the f32 product with the dequantized weights to within what
/// quantizing the activations may cost: nothing on a backend that multiplies in f32 (the
/// GPU: f32 rounding only), half an activation step per term on one that quantizes them
/// (the CPU).
fn linear_q8<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(8080);
    // Edges of the GPU's 64 x 64 tile and 16-deep k, the CPU's blocks of 16 outputs,
    // 4-input groups and 4-block tasks, and a shape above the CPU's threading threshold.
    let shapes = [(1, 1, 1), (1, 10, 784), (3, 17, 5), (65, 70, 33), (64, 130, 200)];
    for (m, n, k) in shapes {
        let w = Int8Rows::quantize(&uniform(n * k, -1.0, 1.0, &mut r), n, k).unwrap();
        let (packed, scales) = b.pack_q8(&w).unwrap();
        assert_eq!(b.unpack_q8(&packed, n, k).unwrap(), w.values(), "{name} {n}x{k}");
        let mut wf = poisoned(b, n * k);
        b.dequantize_q8(n, k, &packed, &scales, &mut wf).unwrap();
        assert_eq!(
            down(b, &wf).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.dequantize().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name} dequantize {n}x{k}"
        );
        let x = uniform(m * k, -2.0, 2.0, &mut r);
        let bias = uniform(n, -1.0, 1.0, &mut r);
        let wd = w.dequantize();
        for (relu, with_bias) in [(false, true), (true, true), (false, false)] {
            let spec = Q8Spec { m, n, k, relu };
            let mut out = poisoned(b, m * n);
            let bias_buf = up(b, &bias);
            b.linear_q8(&spec, &up(b, &x), &packed, &scales, with_bias.then_some(&bias_buf), &mut out)
                .unwrap();
            let got = down(b, &out);
            for i in 0..m {
                let row = &x[i * k..(i + 1) * k];
                let step = row.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
                for j in 0..n {
                    let wr = &wd[j * k..(j + 1) * k];
                    let mut exact: f64 = row.iter().zip(wr).map(|(&a, &c)| a as f64 * c as f64).sum();
                    let abs: f64 = row.iter().zip(wr).map(|(&a, &c)| (a as f64 * c as f64).abs()).sum();
                    if with_bias {
                        exact += bias[j] as f64;
                    }
                    if relu {
                        exact = exact.max(0.0);
                    }
                    let wabs: f64 = wr.iter().map(|&c| c.abs() as f64).sum();
                    let bound = step / 2.0 * wabs + k as f64 * 2f64.powi(-23) * abs + 1e-5;
                    let v = got[i * n + j] as f64;
                    assert!(
                        (v - exact).abs() <= bound,
                        "{name} {m}x{n}x{k} relu {relu} bias {with_bias} [{i},{j}]: {v} vs {exact}"
                    );
                }
            }
        }
    }
    // Shapes that do not fit the buffers are errors.
    let w = Int8Rows::quantize(&uniform(12, -1.0, 1.0, &mut r), 3, 4).unwrap();
    let (packed, scales) = b.pack_q8(&w).unwrap();
    let spec = Q8Spec { m: 2, n: 3, k: 4, relu: false };
    let (x, mut out) = (up(b, &[0.5; 8]), poisoned(b, 6));
    assert!(b.linear_q8(&spec, &up(b, &[0.5; 7]), &packed, &scales, None, &mut out).is_err());
    assert!(b.linear_q8(&spec, &x, &packed, &scales, Some(&up(b, &[0.0; 2])), &mut out).is_err());
    assert!(b.linear_q8(&spec, &x, &packed, &scales, None, &mut poisoned(b, 5)).is_err());
    let wide = Q8Spec { n: 4, ..spec };
    assert!(b.linear_q8(&wide, &x, &packed, &scales, None, &mut poisoned(b, 8)).is_err());
}
