// The indexing, mask and attention checks of the conformance suite (included by
// conformance.rs, so they share its helpers and run against every backend).

use ringtrain_kernels::{dropout_hash, AttentionSpec, CompareOp, DType, GatherSpec, SelectLayout};

fn up_u32<B: Backend>(b: &B, data: &[u32]) -> B::Buffer {
    b.upload_u32(data).expect("upload_u32")
}

fn down_u32<B: Backend>(b: &B, buf: &B::Buffer) -> Vec<u32> {
    b.download_u32(buf).expect("download_u32")
}

fn gather<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(300);
    for (outer, n, m, inner) in [(1, 1, 1, 1), (1, 7, 5, 3), (3, 4, 6, 17), (2, 94, 300, 16), (1, 50, 3000, 33)] {
        for per_element in [false, true] {
            let ctx = format!("{name}: gather {outer}x{n}->{m}x{inner} per_element={per_element}");
            let spec = if per_element {
                GatherSpec::per_element(outer, n, m, inner)
            } else {
                GatherSpec::select(outer, n, m, inner)
            };
            let x = uniform(outer * n * inner, -2.0, 2.0, &mut r);
            let idx_len = if per_element { outer * m * inner } else { m };
            // Every index in range but the last, which must read as zero.
            let mut idx: Vec<u32> = (0..idx_len).map(|_| r.random_range(0..n as u32)).collect();
            if let Some(last) = idx.last_mut() {
                *last = n as u32 + 3;
            }
            let mut out = poisoned(b, spec.out_len());
            b.gather(&spec, &up(b, &x), &up_u32(b, &idx), &mut out).unwrap();
            let mut want = vec![0f32; spec.out_len()];
            for o in 0..outer {
                for j in 0..m {
                    for i in 0..inner {
                        let at = idx[o * spec.idx_strides[0] + j * spec.idx_strides[1] + i * spec.idx_strides[2]] as usize;
                        want[(o * m + j) * inner + i] = if at < n { x[(o * n + at) * inner + i] } else { 0.0 };
                    }
                }
            }
            assert_exact(&ctx, &down(b, &out), &want);

            // The adjoint, summed in index order.
            let dy = uniform(spec.out_len(), -1.0, 1.0, &mut r);
            let mut dx = poisoned(b, spec.src_len());
            b.scatter_add(&spec, &up(b, &dy), &up_u32(b, &idx), &mut dx).unwrap();
            let mut want = vec![0f64; spec.src_len()];
            for o in 0..outer {
                for j in 0..m {
                    for i in 0..inner {
                        let at = idx[o * spec.idx_strides[0] + j * spec.idx_strides[1] + i * spec.idx_strides[2]] as usize;
                        if at < n {
                            want[(o * n + at) * inner + i] += dy[(o * m + j) * inner + i] as f64;
                        }
                    }
                }
            }
            let first = down(b, &dx);
            assert_close(&format!("{ctx} scatter_add"), &first, &want, 1e-5, 1e-5);
            let mut again = poisoned(b, spec.src_len());
            b.scatter_add(&spec, &up(b, &dy), &up_u32(b, &idx), &mut again).unwrap();
            assert_exact(&format!("{ctx} scatter_add repeats"), &down(b, &again), &first);
        }
    }
    // Errors: lengths.
    let spec = GatherSpec::select(1, 4, 2, 3);
    assert_err(
        &format!("{name}: gather src"),
        b.gather(&spec, &up(b, &[0.0; 11]), &up_u32(b, &[0, 1]), &mut poisoned(b, 6)),
        &["src"],
    );
    assert_err(
        &format!("{name}: gather idx"),
        b.gather(&spec, &up(b, &[0.0; 12]), &up_u32(b, &[0]), &mut poisoned(b, 6)),
        &["index"],
    );
}

fn copy_into<B: Backend>(b: &B) {
    let name = b.name();
    // Write a [2, 3] block into column 2.. of a [4, 6] matrix at row 1, and a transposed
    // view, and a long contiguous run.
    for (shape, strides, offset, dst_len) in [
        (vec![2, 3], vec![6, 1], 8, 24),
        (vec![3, 2], vec![1, 6], 1, 24),
        (vec![BIG], vec![1], 5, BIG + 9),
        (vec![0, 3], vec![3, 1], 0, 4),
    ] {
        let ctx = format!("{name}: copy_into {shape:?}");
        let layout = StridedLayout { shape: shape.clone(), strides: strides.clone(), offset };
        let src = uniform(layout.elem_count(), -1.0, 1.0, &mut rng(301));
        let base = uniform(dst_len, 5.0, 6.0, &mut rng(302));
        let mut dst = up(b, &base);
        b.copy_into(&up(b, &src), &mut dst, &layout).unwrap();
        let mut want = base.clone();
        for (i, &v) in src.iter().enumerate() {
            want[strided_index(i, &shape, &strides, offset)] = v;
        }
        assert_exact(&ctx, &down(b, &dst), &want);
    }
    let layout = StridedLayout { shape: vec![2, 3], strides: vec![6, 1], offset: 20 };
    assert_err(
        &format!("{name}: copy_into past the end"),
        b.copy_into(&up(b, &[0.0; 6]), &mut up(b, &[0.0; 24]), &layout),
        &["copy_into", "destination"],
    );
}

fn select<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(303);
    // [4, 5] from a [4, 1] condition, a [5] and a [4, 5] operand; and a big flat one.
    for (shape, cs, a_s, bs) in [
        (vec![4, 5], vec![1, 0], vec![0, 1], vec![5, 1]),
        (vec![BIG], vec![1], vec![1], vec![0]),
        (vec![2, 3, 4], vec![0, 4, 1], vec![12, 4, 1], vec![0, 0, 0]),
    ] {
        let ctx = format!("{name}: select {shape:?}");
        let span = |s: &[usize]| StridedLayout { shape: shape.clone(), strides: s.to_vec(), offset: 0 }.span();
        let cond: Vec<u32> = (0..span(&cs)).map(|_| r.random_range(0..3)).collect();
        let a = uniform(span(&a_s), -1.0, 1.0, &mut r);
        let bv = uniform(span(&bs), -1.0, 1.0, &mut r);
        let layout = SelectLayout { shape: shape.clone(), cond_strides: cs.clone(), a_strides: a_s.clone(), b_strides: bs.clone() };
        let mut out = poisoned(b, layout.elem_count());
        b.select(&layout, &up_u32(b, &cond), &up(b, &a), &up(b, &bv), &mut out).unwrap();
        let want: Vec<f32> = (0..layout.elem_count())
            .map(|i| {
                if cond[strided_index(i, &shape, &cs, 0)] != 0 {
                    a[strided_index(i, &shape, &a_s, 0)]
                } else {
                    bv[strided_index(i, &shape, &bs, 0)]
                }
            })
            .collect();
        assert_exact(&ctx, &down(b, &out), &want);
    }
}

fn compare<B: Backend>(b: &B) {
    let name = b.name();
    let ops = [CompareOp::Eq, CompareOp::Ne, CompareOp::Lt, CompareOp::Le, CompareOp::Gt, CompareOp::Ge];
    let lhs = [1.0, 2.0, f32::NAN, -0.0, 3.0, f32::INFINITY];
    let rhs = [1.0, 1.0, 1.0, 0.0, 4.0, f32::INFINITY];
    let layout = BinaryLayout::same_shape(&[6]);
    let lw: Vec<u32> = vec![1, 2, 7, 0, 3, u32::MAX];
    let rw: Vec<u32> = vec![1, 1, 1, 0, 4, 5];
    for op in ops {
        let ctx = format!("{name}: compare {op:?}");
        let mut out = poisoned(b, 6);
        b.compare(op, DType::F32, &layout, &up(b, &lhs), &up(b, &rhs), &mut out).unwrap();
        let want: Vec<u32> = lhs.iter().zip(&rhs).map(|(&x, &y)| u32::from(op.eval(x, y))).collect();
        assert_eq!(down_u32(b, &out), want, "{ctx} f32");
        b.compare(op, DType::U32, &layout, &up_u32(b, &lw), &up_u32(b, &rw), &mut out).unwrap();
        let want: Vec<u32> = lw.iter().zip(&rw).map(|(&x, &y)| u32::from(op.eval(x, y))).collect();
        assert_eq!(down_u32(b, &out), want, "{ctx} u32");
    }
    // Broadcast: positions [4, 1] >= [1, 4] is a lower-triangular mask.
    let layout = BinaryLayout { shape: vec![4, 4], lhs_strides: vec![1, 0], rhs_strides: vec![0, 1] };
    let pos = up_u32(b, &[0, 1, 2, 3]);
    let mut out = poisoned(b, 16);
    b.compare(CompareOp::Ge, DType::U32, &layout, &pos, &pos, &mut out).unwrap();
    let want: Vec<u32> = (0..16).map(|i| u32::from(i / 4 >= i % 4)).collect();
    assert_eq!(down_u32(b, &out), want, "{name}: compare broadcast");
}

fn triangle<B: Backend>(b: &B) {
    let name = b.name();
    let (batch, rows, cols) = (3, 5, 7);
    let x = uniform(batch * rows * cols, -1.0, 1.0, &mut rng(304));
    for diagonal in [-2i64, 0, 1, 9, -100] {
        for upper in [false, true] {
            let mut out = poisoned(b, x.len());
            b.triangle(&up(b, &x), &mut out, rows, cols, diagonal, upper).unwrap();
            let want: Vec<f32> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let k = (i % cols) as i64 - ((i / cols) % rows) as i64;
                    if (upper && k >= diagonal) || (!upper && k <= diagonal) { v } else { 0.0 }
                })
                .collect();
            assert_exact(&format!("{name}: triangle {diagonal} upper={upper}"), &down(b, &out), &want);
        }
    }
    assert_err(
        &format!("{name}: triangle shape"),
        b.triangle(&up(b, &[0.0; 10]), &mut poisoned(b, 10), 3, 3, 0, false),
        &["3 x 3"],
    );
}

fn arange_and_cast<B: Backend>(b: &B) {
    let name = b.name();
    for len in [0, 1, 17, BIG] {
        let mut out = poisoned(b, len);
        b.arange(&mut out, 5, 3).unwrap();
        let want: Vec<u32> = (0..len as u32).map(|i| 5 + 3 * i).collect();
        assert_eq!(down_u32(b, &out), want, "{name}: arange {len}");
    }
    let words = [0u32, 1, 7, 16_777_217, u32::MAX];
    let mut out = poisoned(b, words.len());
    b.cast(&up_u32(b, &words), DType::U32, DType::F32, &mut out).unwrap();
    let want: Vec<f32> = words.iter().map(|&w| w as f32).collect();
    assert_exact(&format!("{name}: cast u32 -> f32"), &down(b, &out), &want);
    let floats = [0.0, 1.9, -3.5, f32::NAN, 4.0e9, 5.0e9, 123.0];
    let mut out = poisoned(b, floats.len());
    b.cast(&up(b, &floats), DType::F32, DType::U32, &mut out).unwrap();
    let want: Vec<u32> = floats.iter().map(|&v| v as u32).collect();
    assert_eq!(down_u32(b, &out), want, "{name}: cast f32 -> u32");
}

fn argmax<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(305);
    for (outer, axis, inner) in [(1, 1, 1), (3, 17, 1), (4, 5, 6), (BIG / 64, 64, 1)] {
        let mut x: Vec<f32> = (0..outer * axis * inner).map(|_| r.random_range(0..5) as f32).collect();
        if x.len() > 3 {
            x[2] = f32::NAN;
        }
        let mut out = poisoned(b, outer * inner);
        b.argmax_axis(&up(b, &x), &mut out, outer, axis, inner).unwrap();
        let want: Vec<u32> = (0..outer * inner)
            .map(|g| {
                let (o, i) = (g / inner, g % inner);
                let at = |a: usize| x[(o * axis + a) * inner + i];
                let mut best = 0;
                for a in 1..axis {
                    if at(a) > at(best) || (at(a).is_nan() && !at(best).is_nan()) {
                        best = a;
                    }
                }
                best as u32
            })
            .collect();
        assert_eq!(down_u32(b, &out), want, "{name}: argmax {outer}x{axis}x{inner}");
    }
    assert_err(
        &format!("{name}: argmax empty axis"),
        b.argmax_axis(&up(b, &[]), &mut poisoned(b, 2), 2, 0, 1),
        &["empty"],
    );
}

/// Attention in f64, the plain way: scores, mask, softmax, dropout, product; and its
/// gradients by the chain rule through each of those.
#[allow(clippy::type_complexity)]
fn attention_ref(
    s: &AttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let AttentionSpec { batch, tq, tk, d, .. } = *s;
    let (mut out, mut lse) = (vec![0f64; batch * tq * d], vec![0f64; batch * tq]);
    let (mut dq, mut dk, mut dv) = (vec![0f64; q.len()], vec![0f64; k.len()], vec![0f64; v.len()]);
    let threshold = s.drop_threshold();
    let keep = 1.0 / (1.0 - s.dropout as f64);
    for h in 0..batch {
        for i in 0..tq {
            let end = s.key_end(i);
            let qi = |e: usize| q[(h * tq + i) * d + e] as f64;
            let sc: Vec<f64> = (0..end)
                .map(|j| (0..d).map(|e| qi(e) * k[(h * tk + j) * d + e] as f64).sum::<f64>() * s.scale as f64)
                .collect();
            let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
            lse[h * tq + i] = m + z.ln();
            let p: Vec<f64> = sc.iter().map(|x| (x - m).exp() / z).collect();
            let mask: Vec<f64> = (0..end)
                .map(|j| {
                    if s.dropout == 0.0 {
                        1.0
                    } else if dropout_hash(s.seed, ((h * tq + i) * tk + j) as u32) >= threshold {
                        keep
                    } else {
                        0.0
                    }
                })
                .collect();
            let g = |e: usize| dout[(h * tq + i) * d + e] as f64;
            let mut dp = vec![0f64; end];
            for j in 0..end {
                for e in 0..d {
                    out[(h * tq + i) * d + e] += p[j] * mask[j] * v[(h * tk + j) * d + e] as f64;
                    dv[(h * tk + j) * d + e] += p[j] * mask[j] * g(e);
                    dp[j] += g(e) * v[(h * tk + j) * d + e] as f64 * mask[j];
                }
            }
            let dot: f64 = (0..end).map(|j| p[j] * dp[j]).sum();
            for j in 0..end {
                let ds = p[j] * (dp[j] - dot) * s.scale as f64;
                for e in 0..d {
                    dq[(h * tq + i) * d + e] += ds * k[(h * tk + j) * d + e] as f64;
                    dk[(h * tk + j) * d + e] += ds * qi(e);
                }
            }
        }
    }
    (out, lse, dq, dk, dv)
}

fn attention<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(306);
    let cases = [
        (1, 1, 1, 1, true, 0.0),
        (2, 5, 5, 4, false, 0.0),
        (3, 70, 70, 16, true, 0.0),
        (2, 3, 9, 8, true, 0.0),
        (2, 33, 40, 7, false, 0.0),
        (4, 20, 20, 16, true, 0.3),
        (1, 130, 130, 64, true, 0.0),
        (2, 50, 50, 32, false, 0.1),
    ];
    for (batch, tq, tk, d, causal, dropout) in cases {
        let ctx = format!("{name}: attention b{batch} tq{tq} tk{tk} d{d} causal={causal} dropout={dropout}");
        let spec = AttentionSpec {
            batch,
            tq,
            tk,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            causal,
            dropout,
            seed: 1234,
        };
        let q = uniform(spec.q_len(), -2.0, 2.0, &mut r);
        let k = uniform(spec.kv_len(), -2.0, 2.0, &mut r);
        let v = uniform(spec.kv_len(), -1.0, 1.0, &mut r);
        let dout = uniform(spec.q_len(), -1.0, 1.0, &mut r);
        let (want_out, want_lse, want_dq, want_dk, want_dv) = attention_ref(&spec, &q, &k, &v, &dout);
        let (qb, kb, vb) = (up(b, &q), up(b, &k), up(b, &v));
        let mut out = poisoned(b, spec.q_len());
        let mut lse = poisoned(b, spec.lse_len());
        b.attention(&spec, &qb, &kb, &vb, &mut out, &mut lse).unwrap();
        assert_close(&format!("{ctx} out"), &down(b, &out), &want_out, 1e-5, 1e-4);
        assert_close(&format!("{ctx} lse"), &down(b, &lse), &want_lse, 1e-5, 1e-5);
        let (mut dq, mut dk, mut dv) = (poisoned(b, q.len()), poisoned(b, k.len()), poisoned(b, v.len()));
        b.attention_backward(&spec, &qb, &kb, &vb, &out, &lse, &up(b, &dout), &mut dq, &mut dk, &mut dv)
            .unwrap();
        assert_close(&format!("{ctx} dq"), &down(b, &dq), &want_dq, 1e-4, 1e-3);
        assert_close(&format!("{ctx} dk"), &down(b, &dk), &want_dk, 1e-4, 1e-3);
        assert_close(&format!("{ctx} dv"), &down(b, &dv), &want_dv, 1e-4, 1e-3);
    }
    let spec = AttentionSpec { batch: 1, tq: 4, tk: 2, d: 2, scale: 1.0, causal: true, dropout: 0.0, seed: 0 };
    assert_err(
        &format!("{name}: attention causal tq > tk"),
        b.attention(&spec, &up(b, &[0.0; 8]), &up(b, &[0.0; 4]), &up(b, &[0.0; 4]), &mut poisoned(b, 8), &mut poisoned(b, 4)),
        &["tq <= tk"],
    );
    let spec = AttentionSpec { causal: false, dropout: 1.0, ..spec };
    assert_err(
        &format!("{name}: attention dropout 1"),
        b.attention(&spec, &up(b, &[0.0; 8]), &up(b, &[0.0; 4]), &up(b, &[0.0; 4]), &mut poisoned(b, 8), &mut poisoned(b, 4)),
        &["dropout"],
    );
}

fn layer_norm<B: Backend>(b: &B) {
    let name = b.name();
    let mut r = rng(307);
    for (rows, cols) in [(1, 1), (3, 5), (7, 64), (2, 300), (1100, 64)] {
        let ctx = format!("{name}: layer_norm {rows}x{cols}");
        let x = uniform(rows * cols, -3.0, 3.0, &mut r);
        let gamma = uniform(cols, 0.5, 1.5, &mut r);
        let beta = uniform(cols, -0.5, 0.5, &mut r);
        let dy = uniform(rows * cols, -1.0, 1.0, &mut r);
        let eps = 1e-5f64;
        let (mut want_y, mut want_dx) = (vec![0f64; x.len()], vec![0f64; x.len()]);
        let (mut want_dg, mut want_db) = (vec![0f64; cols], vec![0f64; cols]);
        for row in 0..rows {
            let xs: Vec<f64> = x[row * cols..(row + 1) * cols].iter().map(|&v| v as f64).collect();
            let mean = xs.iter().sum::<f64>() / cols as f64;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            let xhat: Vec<f64> = xs.iter().map(|v| (v - mean) * rstd).collect();
            let g: Vec<f64> = (0..cols).map(|c| dy[row * cols + c] as f64 * gamma[c] as f64).collect();
            let mean_g = g.iter().sum::<f64>() / cols as f64;
            let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
            for c in 0..cols {
                want_y[row * cols + c] = xhat[c] * gamma[c] as f64 + beta[c] as f64;
                want_dx[row * cols + c] = rstd * (g[c] - mean_g - xhat[c] * mean_gx);
                want_dg[c] += dy[row * cols + c] as f64 * xhat[c];
                want_db[c] += dy[row * cols + c] as f64;
            }
        }
        let (xb, gb) = (up(b, &x), up(b, &gamma));
        let mut y = poisoned(b, x.len());
        let mut stats = poisoned(b, 2 * rows);
        b.layer_norm(&xb, &gb, &up(b, &beta), &mut y, &mut stats, rows, cols, eps as f32).unwrap();
        assert_close(&format!("{ctx} y"), &down(b, &y), &want_y, 1e-5, 1e-5);
        let (mut dx, mut dg, mut db) = (poisoned(b, x.len()), poisoned(b, cols), poisoned(b, cols));
        b.layer_norm_backward(&xb, &gb, &stats, &up(b, &dy), &mut dx, &mut dg, &mut db, rows, cols)
            .unwrap();
        assert_close(&format!("{ctx} dx"), &down(b, &dx), &want_dx, 1e-4, 1e-4);
        assert_close(&format!("{ctx} dgamma"), &down(b, &dg), &want_dg, 1e-4, 1e-4);
        assert_close(&format!("{ctx} dbeta"), &down(b, &db), &want_db, 1e-4, 1e-4);
    }
    assert_err(
        &format!("{name}: layer_norm gamma"),
        b.layer_norm(&up(b, &[0.0; 6]), &up(b, &[1.0; 2]), &up(b, &[0.0; 3]), &mut poisoned(b, 6), &mut poisoned(b, 4), 2, 3, 1e-5),
        &["gamma"],
    );
}
