use super::*;
use crate::cpu::Simd;

/// Deterministic values in `-1..1` (a small LCG: no test dependency on `rand` here).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Every path this CPU runs (AVX-VNNI where the CPU has it, which no CPU with
/// AVX512-VNNI's path gets by `for_simd`), and that `for_simd` picks one of them.
fn paths() -> Vec<Q8Path> {
    let paths: Vec<Q8Path> = Q8Path::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect();
    for simd in Simd::available() {
        assert!(paths.contains(&Q8Path::for_simd(simd)));
    }
    paths
}

fn run(path: Q8Path, spec: &Q8Spec, x: &[f32], w: &Int8Rows, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0.0; spec.m * spec.n];
    linear(path, spec, x, &pack(w), w.scales(), bias, &mut out);
    out
}

#[test]
fn pack_and_unpack_round_trip() {
    for (n, k) in [(1, 1), (16, 4), (17, 5), (40, 129)] {
        let w = Int8Rows::quantize(&values(n * k, 7), n, k).unwrap();
        assert_eq!(pack(&w).len(), packed_len(n, k));
        assert_eq!(unpack(&pack(&w), n, k), w.values(), "{n}x{k}");
    }
}

#[test]
fn every_path_gives_the_portable_bits_and_the_f32_product_within_quantization_error() {
    // Shapes with remainders in every direction: rows past a tile, outputs past a block
    // and a task, inputs past a group; and one large enough to run in parallel.
    let shapes = [
        (1, 1, 1),
        (1, 10, 784),
        (3, 17, 5),
        (5, 70, 33),
        (64, 130, 200),
    ];
    for (m, n, k) in shapes {
        for relu in [false, true] {
            let x = values(m * k, 1);
            let w = Int8Rows::quantize(&values(n * k, 2), n, k).unwrap();
            let bias = values(n, 3);
            let spec = Q8Spec { m, n, k, relu };
            let reference = run(Q8Path::Portable, &spec, &x, &w, Some(&bias));
            for path in paths() {
                let got = run(path, &spec, &x, &w, Some(&bias));
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    reference.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{} {m}x{n}x{k}",
                    path.name()
                );
            }
            // Against f32 with the dequantized weights: each activation is off by at
            // most half its row's step.
            let wf = w.dequantize();
            for r in 0..m {
                let row = &x[r * k..(r + 1) * k];
                let step = row.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                for j in 0..n {
                    let wr = &wf[j * k..(j + 1) * k];
                    let mut exact: f32 = row.iter().zip(wr).map(|(a, b)| a * b).sum();
                    exact += bias[j];
                    if relu {
                        exact = exact.max(0.0);
                    }
                    let bound = step / 2.0 * wr.iter().map(|v| v.abs()).sum::<f32>() + 1e-4;
                    let got = reference[r * n + j];
                    assert!(
                        (got - exact).abs() <= bound,
                        "{m}x{n}x{k} [{r},{j}]: {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_row_of_zeros_gives_the_bias_and_a_nan_row_gives_nan() {
    let (m, n, k) = (3, 5, 8);
    let mut x = values(m * k, 4);
    x[..k].fill(0.0);
    x[2 * k + 3] = f32::NAN;
    let w = Int8Rows::quantize(&values(n * k, 5), n, k).unwrap();
    let bias = values(n, 6);
    for path in paths() {
        let out = run(
            path,
            &Q8Spec {
                m,
                n,
                k,
                relu: false,
            },
            &x,
            &w,
            Some(&bias),
        );
        assert_eq!(&out[..n], &bias[..]);
        assert!(out[n..2 * n].iter().all(|v| v.is_finite()));
        assert!(out[2 * n..].iter().all(|v| v.is_nan()));
    }
}
