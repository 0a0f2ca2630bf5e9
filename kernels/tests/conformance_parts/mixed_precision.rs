// The mixed-precision checks of the conformance suite (included by conformance.rs):
// GEMMs whose inputs are rounded to bf16 or f16, the `round_to` op, and 16-bit storage
// (casts packing two values to a word), on every backend.

use ringtrain_kernels::Precision;

/// `|x|` summed over a product's terms, per element of C: what rounding errors scale with.
fn gemm_abs_ref(s: &GemmSpec, a: &[f32], b: &[f32]) -> Vec<f64> {
    let abs = |v: &[f32]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
    let unit = GemmSpec {
        alpha: 1.0,
        beta: 0.0,
        ..*s
    };
    gemm_ref(&unit, &abs(a), &abs(b), &[])
}

/// A GEMM with bf16 or f16 inputs against two f64 references. Against the product of
/// the rounded inputs (exact in f64) it may differ only by f32 accumulation, `k * 2^-24`
/// of the sum of |terms| (catches a wrong rounding, or none); against the product of the
/// inputs as given, also by the inputs' rounding, `2u + u^2` with `u` the format's unit
/// roundoff (the bound of a product of two rounded values).
fn mixed_gemm<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(4242);
    // Odd k (a bf16 pair padded with zero), k past one slice (512 on AVX512-BF16), edges
    // of every tile size, above the CPU's threading threshold, and a batch.
    let shapes = [
        (1, 1, 1, 1),
        (13, 33, 7, 1),
        (12, 32, 64, 1),
        (25, 70, 1030, 1),
        (150, 130, 120, 1),
        (5, 7, 9, 3),
    ];
    for precision in [Precision::Bf16, Precision::F16] {
        let u = precision.unit_roundoff() as f64;
        for (m, n, k, batch) in shapes {
            for (trans_a, trans_b) in [(false, false), (false, true), (true, false)] {
                for (alpha, beta) in [(1.0f32, 0.0f32), (-0.5, 0.75)] {
                    let spec = GemmSpec {
                        batch,
                        alpha,
                        beta,
                        ..GemmSpec::new(m, n, k, trans_a, trans_b)
                    }
                    .with_precision(precision);
                    let (la, lb, lc) = spec.buffer_lens();
                    let a = uniform(la, -2.0, 2.0, &mut r);
                    let bm = uniform(lb, -2.0, 2.0, &mut r);
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; lc]
                    } else {
                        uniform(lc, -1.0, 1.0, &mut r)
                    };
                    let mut c = up(b, &c0);
                    b.gemm(&spec, &up(b, &a), &up(b, &bm), &mut c).unwrap();
                    let got = down(b, &c);
                    let round = |v: &[f32]| v.iter().map(|&x| precision.round(x)).collect::<Vec<_>>();
                    let (ar, br) = (round(&a), round(&bm));
                    let terms: Vec<f64> = gemm_abs_ref(&spec, &a, &bm)
                        .iter()
                        .map(|t| t * alpha.abs() as f64 + 1.0)
                        .collect();
                    let ctx = format!("{name}: {precision} gemm {spec:?}");
                    let accumulation = (k as f64 + 2.0) * f32::EPSILON as f64;
                    let tol: Vec<f64> = terms.iter().map(|t| t * accumulation).collect();
                    let rounded_ref = gemm_ref(&spec, &ar, &br, &c0);
                    assert_within(&format!("{ctx} (rounded inputs)"), &got, &rounded_ref, &tol);
                    let tol: Vec<f64> = terms
                        .iter()
                        .map(|t| t * (accumulation + 2.0 * u + u * u))
                        .collect();
                    let exact_ref = gemm_ref(&spec, &a, &bm, &c0);
                    assert_within(&format!("{ctx} (exact inputs)"), &got, &exact_ref, &tol);
                }
            }
        }
        // The fused epilogue keeps the rounding: ReLU(A B + bias), several slices of k.
        let spec = GemmSpec::new(20, 40, 600, false, true).with_precision(precision);
        let (la, lb, lc) = spec.buffer_lens();
        let (a, bm, bias) = (
            uniform(la, -1.0, 1.0, &mut r),
            uniform(lb, -1.0, 1.0, &mut r),
            uniform(40, -1.0, 1.0, &mut r),
        );
        let mut c = poisoned(b, lc);
        let act = Some(UnaryOp::Relu);
        b.gemm_bias_act(&spec, &up(b, &a), &up(b, &bm), &up(b, &bias), act, &mut c)
            .unwrap();
        let round = |v: &[f32]| v.iter().map(|&x| precision.round(x)).collect::<Vec<_>>();
        let want: Vec<f64> = gemm_ref(&spec, &round(&a), &round(&bm), &vec![0.0; lc])
            .iter()
            .enumerate()
            .map(|(i, &v)| (v + bias[i % 40] as f64).max(0.0))
            .collect();
        let ctx = format!("{name}: {precision} gemm_bias_act");
        assert_close(&ctx, &down(b, &c), &want, 1e-5 * 602.0, 1e-5);
    }
    // f16's range: 300 * 300 is finite in f32, but 70000 is not an f16.
    let spec = GemmSpec::new(1, 2, 1, false, false).with_precision(Precision::F16);
    let mut c = b.zeros(2).unwrap();
    b.gemm(&spec, &up(b, &[300.0]), &up(b, &[300.0, 70000.0]), &mut c)
        .unwrap();
    let got = down(b, &c);
    assert_eq!(got[0], 90000.0, "{name}: f16 products sum in f32");
    assert_eq!(got[1], f32::INFINITY, "{name}: an f16 input past 65504 is infinite");
}

/// Values that test a rounding to bf16 or f16: zeros, the edges of f16's range,
/// subnormals of both, infinities, NaNs (one negative with a payload), random bit
/// patterns with exact ties of both formats beside them, and a long ordinary run (above
/// the CPU's threading threshold).
fn hard_to_round(seed: u64) -> Vec<f32> {
    let mut x = vec![0.0f32, -0.0, 1.0, 65504.0, 65519.0, 65520.0, -1e6, 1e-8, 6e-8, 3e-5];
    x.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX, f32::MIN_POSITIVE]);
    x.push(f32::from_bits(0xffc0_1234));
    let mut r = rng(seed);
    for _ in 0..3000 {
        let bits: u32 = r.random();
        x.push(f32::from_bits(bits));
        // Exact ties of both formats.
        x.push(f32::from_bits((bits & 0xffff_0000) | 0x8000));
        x.push(f32::from_bits((bits & 0xffff_e000) | 0x1000));
    }
    x.extend(uniform(BIG, -3.0, 3.0, &mut r));
    x
}

/// `round_to` rounds exactly as `Precision::round`, ties, subnormals, overflow and NaN
/// included.
fn round_to<B: Backend>(b: &B) {
    let name = b.name();
    let x = hard_to_round(99);
    for precision in Precision::ALL {
        let mut y = poisoned(b, x.len());
        b.round_to(precision, &up(b, &x), &mut y).unwrap();
        let got = down(b, &y);
        for (i, (&xi, &g)) in x.iter().zip(&got).enumerate() {
            let want = precision.round(xi);
            assert!(
                g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                "{name}: round_to {precision}: element {i}, {xi:e} ({:#x}) -> {g:e}, want {want:e}",
                xi.to_bits()
            );
        }
    }
    let mut short = b.zeros(2).unwrap();
    assert_err(
        &format!("{name}: round_to length"),
        b.round_to(Precision::Bf16, &up(b, &[1.0; 3]), &mut short),
        &["round_to", "3", "2"],
    );
}

/// Casts from f32 to bf16 and f16 storage and back: the 16-bit bits are the `half` crate's
/// (round to nearest, ties to even; NaN quiet; overflow to infinity; subnormals), two to
/// a word, element 2i low; an odd count's spare half is zero; the way back is exact. Casts
/// no kernel does, and buffers of the wrong size, are errors.
fn half_storage<B: Backend>(b: &B) {
    let name = b.name();
    let x = hard_to_round(77);
    for len in [1, 2, 5, x.len()] {
        let x = &x[..len];
        for dtype in [DType::Bf16, DType::F16] {
            let want: Vec<u16> = x
                .iter()
                .map(|&v| match dtype {
                    DType::F16 => half::f16::from_f32(v).to_bits(),
                    _ => half::bf16::from_f32(v).to_bits(),
                })
                .collect();
            let mut packed = poisoned(b, dtype.words(len));
            b.cast(&up(b, x), DType::F32, dtype, &mut packed).unwrap();
            let words: Vec<u32> = down(b, &packed).iter().map(|w| w.to_bits()).collect();
            for (i, &w) in want.iter().enumerate() {
                let got = (words[i / 2] >> (16 * (i % 2))) as u16;
                assert_eq!(
                    got,
                    w,
                    "{name}: {dtype} of element {i} ({:e}, {:#x}): {got:#06x}, want {w:#06x}",
                    x[i],
                    x[i].to_bits()
                );
            }
            if len % 2 == 1 {
                assert_eq!(words[len / 2] >> 16, 0, "{name}: {dtype}: the spare half");
            }
            let mut back = poisoned(b, len);
            b.cast(&packed, dtype, DType::F32, &mut back).unwrap();
            let back = down(b, &back);
            for (i, (&v, &w)) in back.iter().zip(&want).enumerate() {
                let exact = match dtype {
                    DType::F16 => half::f16::from_bits(w).to_f32(),
                    _ => half::bf16::from_bits(w).to_f32(),
                };
                assert!(
                    v.to_bits() == exact.to_bits(),
                    "{name}: {dtype} back to f32, element {i}: {v:e}, want {exact:e}"
                );
            }
        }
    }
    let three = up(b, &[1.0; 3]);
    let mut one_word = b.zeros(1).unwrap();
    assert_err(
        &format!("{name}: a bf16 buffer too short"),
        b.cast(&three, DType::F32, DType::Bf16, &mut one_word),
        &["cast", "2", "1"],
    );
    let mut two_words = b.zeros(2).unwrap();
    assert_err(
        &format!("{name}: bf16 to f16"),
        b.cast(&up(b, &[0.0; 2]), DType::Bf16, DType::F16, &mut two_words),
        &["bf16", "f16", "f32"],
    );
    assert_err(
        &format!("{name}: u32 to bf16"),
        b.cast(&up(b, &[0.0; 4]), DType::U32, DType::Bf16, &mut two_words),
        &["u32", "bf16"],
    );
}

/// A convolution whose window asks for bf16 or f16 inputs, forward and backward, with
/// and without the fused ReLU, on a patch the CPU multiplies without a GEMM (k = 27)
/// and one it takes through the GEMM (k = 54): the products are those of the rounded
/// input, weight and output gradient, summed in f32; the bias's gradient sums the
/// gradient as given.
fn conv2d_mixed<B: Backend>(b: &B) {
    let mut r = rng(6464);
    for precision in [Precision::Bf16, Precision::F16] {
        for shape in [
            Window2d::new(2, 3, (7, 5), (3, 3), (1, 1), (1, 1)),
            Window2d::new(2, 6, (9, 8), (3, 3), (1, 1), (1, 1)),
        ] {
            let g = shape.with_precision(precision);
            let ctx = format!("{} {precision} conv2d {g:?}", b.name());
            let out_channels = 4;
            let (k, area, ow) = (g.patch_len(), g.out_h() * g.out_w(), g.out_w());
            let x = uniform(g.input_len(), -2.0, 2.0, &mut r);
            let w = uniform(out_channels * k, -2.0, 2.0, &mut r);
            let bias = uniform(out_channels, -1.0, 1.0, &mut r);
            let dy = uniform(g.batch * out_channels * area, -2.0, 2.0, &mut r);
            let rd = |v: f32| f64::from(precision.round(v));
            let (mut y, mut dx, mut dw) = (
                vec![0.0f64; g.batch * out_channels * area],
                vec![0.0f64; g.input_len()],
                vec![0.0f64; out_channels * k],
            );
            // With the ReLU, the gradient is masked by the output first, then rounded.
            let (mut y_relu, mut dw_relu, mut db_relu) = (
                vec![0.0f64; y.len()],
                vec![0.0f64; out_channels * k],
                vec![0.0f64; out_channels],
            );
            each_window_tap(&g, |plane, o, q, ki, kj, at| {
                let (n, c) = (plane / g.channels, plane % g.channels);
                let Some(i) = at else { return };
                for oc in 0..out_channels {
                    let tap = (c * g.kernel_h + ki) * g.kernel_w + kj;
                    let out = (n * out_channels + oc) * area + o * ow + q;
                    y[out] += rd(w[oc * k + tap]) * rd(x[i]);
                    dx[i] += rd(w[oc * k + tap]) * rd(dy[out]);
                    dw[oc * k + tap] += rd(x[i]) * rd(dy[out]);
                }
            });
            for (i, v) in y.iter().enumerate() {
                y_relu[i] = (v + f64::from(bias[(i / area) % out_channels])).max(0.0);
            }
            each_window_tap(&g, |plane, o, q, ki, kj, at| {
                let (n, c) = (plane / g.channels, plane % g.channels);
                let Some(i) = at else { return };
                for oc in 0..out_channels {
                    let tap = (c * g.kernel_h + ki) * g.kernel_w + kj;
                    let out = (n * out_channels + oc) * area + o * ow + q;
                    if y_relu[out] > 0.0 {
                        dw_relu[oc * k + tap] += rd(x[i]) * rd(dy[out]);
                    }
                }
            });
            for (i, &d) in dy.iter().enumerate() {
                if y_relu[i] > 0.0 {
                    db_relu[(i / area) % out_channels] += f64::from(d);
                }
            }
            let (xb, wb, bb, dyb) = (up(b, &x), up(b, &w), up(b, &bias), up(b, &dy));
            let tol = 1e-5 * (k as f64) * 4.0;
            let mut got = poisoned(b, y.len());
            b.conv2d(&xb, &wb, None, false, &mut got, &g, out_channels).unwrap();
            assert_close(&format!("{ctx} y"), &down(b, &got), &y, tol, 1e-5);
            let (mut gdx, mut gdw) = (poisoned(b, dx.len()), poisoned(b, dw.len()));
            b.conv2d_backward(&xb, &wb, &dyb, None, &g, out_channels, Some(&mut gdx), &mut gdw, None)
                .unwrap();
            let tol_b = 1e-5 * ((g.batch * area) as f64) * 4.0;
            assert_close(&format!("{ctx} dx"), &down(b, &gdx), &dx, tol_b, 1e-5);
            assert_close(&format!("{ctx} dweight"), &down(b, &gdw), &dw, tol_b, 1e-5);
            // The fused bias and ReLU, and the backward that masks by the output.
            let mut fused = poisoned(b, y.len());
            b.conv2d(&xb, &wb, Some(&bb), true, &mut fused, &g, out_channels).unwrap();
            let fused_host = down(b, &fused);
            assert_close(&format!("{ctx} relu(y + bias)"), &fused_host, &y_relu, tol, 1e-5);
            let (mut gdw, mut gdb) = (poisoned(b, dw.len()), poisoned(b, out_channels));
            b.conv2d_backward(
                &xb,
                &wb,
                &dyb,
                Some(&fused),
                &g,
                out_channels,
                None,
                &mut gdw,
                Some(&mut gdb),
            )
            .unwrap();
            assert_close(&format!("{ctx} relu dweight"), &down(b, &gdw), &dw_relu, tol_b, 1e-5);
            assert_close(&format!("{ctx} relu dbias"), &down(b, &gdb), &db_relu, tol_b, 1e-5);
        }
    }
}
