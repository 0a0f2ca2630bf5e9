//! GEMM against a naive f64 reference, for every instruction set this CPU supports.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use ringtrain_kernels::cpu::gemm::{gemm_mixed, sgemm, sgemm_with, Epilogue, MatRef};
use ringtrain_kernels::cpu::{Isa, Simd};
use ringtrain_kernels::Precision;

fn random(len: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// C = alpha * op(A) op(B) + beta * C in f64.
#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &MatRef,
    b: &MatRef,
    beta: f32,
    c: &[f32],
) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|p| a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64)
                .sum();
            let prior = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * n + j] as f64
            };
            out[i * n + j] = alpha as f64 * dot + prior;
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn check(
    simd: Simd,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    alpha: f32,
    beta: f32,
    rng: &mut ChaCha8Rng,
) {
    let a_data = random(m * k, rng);
    let b_data = random(k * n, rng);
    let a = MatRef::row_major(&a_data, m, k, ta);
    let b = MatRef::row_major(&b_data, k, n, tb);
    let c0 = random(m * n, rng);
    let want = reference(m, n, k, alpha, &a, &b, beta, &c0);
    let mut c = c0.clone();
    sgemm(simd, m, n, k, alpha, a, b, beta, &mut c, n).unwrap();
    // f32 accumulation error grows like sqrt(k); entries are O(sqrt(k)).
    let tol = 1e-5 * (k as f64 + 1.0) + 1e-5;
    for (idx, (&got, &want)) in c.iter().zip(&want).enumerate() {
        assert!(
            (got as f64 - want).abs() <= tol,
            "{:?} m={m} n={n} k={k} ta={ta} tb={tb} alpha={alpha} beta={beta}: C[{}, {}] = {got}, want {want}",
            simd.isa(),
            idx / n,
            idx % n
        );
    }
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 1, 7),
    (2, 3, 4),
    (7, 13, 5),
    (13, 17, 19),
    (31, 37, 41),
    (12, 32, 1),
    (24, 64, 256),
    (25, 65, 257),
    (97, 3, 300),
    (3, 97, 300),
    (500, 2, 3),
    (2, 500, 3),
    (1, 600, 40),
    (600, 1, 40),
    (130, 530, 70),
    (64, 10, 600),
    // Wide enough that even a row-major A is packed (the driver reads A in place only
    // while B is narrow, see `reads_a_in_place`).
    (20, 1700, 30),
    // Rows a multiple of 4 KiB apart (A, k = 1024) or of 512 bytes (B, n = 128): packed
    // where they would otherwise be read in place, for L1's sets.
    (20, 64, 1024),
    (40, 128, 64),
    // Packed A of more rows than a block of A that one panel of B meets (MC), the last
    // block and the last panel partial.
    (400, 1100, 20),
    // One row: with B's columns contiguous (tb), dot products that read B in place, k's
    // SIMD tails and, past the threading threshold, columns split across threads.
    (1, 70, 17),
    (1, 2100, 1000),
];

#[test]
fn every_isa_matches_reference_on_awkward_shapes() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for simd in Simd::available() {
        for &(m, n, k) in SHAPES {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                check(simd, m, n, k, ta, tb, 1.0, 0.0, &mut rng);
            }
        }
    }
}

#[test]
fn alpha_and_beta_scale_and_accumulate() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for simd in Simd::available() {
        for &(m, n, k) in &[(5, 7, 3), (24, 64, 300), (33, 70, 513)] {
            check(simd, m, n, k, false, false, 0.5, 1.0, &mut rng);
            check(simd, m, n, k, true, true, -2.0, 0.25, &mut rng);
        }
    }
}

#[test]
fn empty_dims_and_k_zero() {
    let simd = Simd::detect();
    let mut c = vec![3.0f32; 6];
    // k = 0: C = beta * C.
    sgemm(
        simd,
        2,
        3,
        0,
        1.0,
        MatRef::row_major(&[], 2, 0, false),
        MatRef::row_major(&[], 0, 3, false),
        0.5,
        &mut c,
        3,
    )
    .unwrap();
    assert_eq!(c, vec![1.5; 6]);
    sgemm(
        simd,
        2,
        3,
        0,
        1.0,
        MatRef::row_major(&[], 2, 0, false),
        MatRef::row_major(&[], 0, 3, false),
        0.0,
        &mut c,
        3,
    )
    .unwrap();
    assert_eq!(c, vec![0.0; 6]);
    // m = 0 or n = 0: nothing to do, nothing touched.
    let mut empty: Vec<f32> = vec![];
    sgemm(
        simd,
        0,
        3,
        4,
        1.0,
        MatRef::row_major(&[], 0, 4, false),
        MatRef::row_major(&[0.0; 12], 4, 3, false),
        0.0,
        &mut empty,
        3,
    )
    .unwrap();
    sgemm(
        simd,
        3,
        0,
        4,
        1.0,
        MatRef::row_major(&[0.0; 12], 3, 4, false),
        MatRef::row_major(&[], 4, 0, false),
        0.0,
        &mut empty,
        0,
    )
    .unwrap();
}

#[test]
fn beta_zero_ignores_nan_in_c() {
    let simd = Simd::detect();
    let a = [1.0f32; 4 * 5];
    let b = [1.0f32; 5 * 6];
    let mut c = vec![f32::NAN; 4 * 6];
    sgemm(
        simd,
        4,
        6,
        5,
        1.0,
        MatRef::row_major(&a, 4, 5, false),
        MatRef::row_major(&b, 5, 6, false),
        0.0,
        &mut c,
        6,
    )
    .unwrap();
    assert!(c.iter().all(|&v| v == 5.0));
}

#[test]
fn short_buffers_are_errors_not_panics() {
    let simd = Simd::detect();
    let a = [0.0f32; 5];
    let b = [0.0f32; 6];
    let mut c = vec![0.0f32; 4];
    let err = sgemm(
        simd,
        2,
        2,
        3,
        1.0,
        MatRef::row_major(&a, 2, 3, false),
        MatRef::row_major(&b, 3, 2, false),
        0.0,
        &mut c,
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("A (2 x 3"), "{err}");
    let a = [0.0f32; 6];
    let mut c = vec![0.0f32; 3];
    let err = sgemm(
        simd,
        2,
        2,
        3,
        1.0,
        MatRef::row_major(&a, 2, 3, false),
        MatRef::row_major(&b, 3, 2, false),
        0.0,
        &mut c,
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("C (2 x 2"), "{err}");
}

#[test]
fn simd_paths_agree_with_portable_and_threads_do_not_change_bits() {
    // The second shape's 784 columns take several column blocks of every kernel (cut
    // into equal widths), and its k several slabs.
    // The third has a row-major B and few rows, so B is read in place.
    // The fourth is 1024 or more on every side, which an AVX-512 CPU that runs 512-bit
    // FMAs as two halves (Zen 4) gives to the AVX2 kernel, C staged (rows 4 KiB apart).
    for (m, n, k, tb) in [
        (200, 300, 520, true),
        (128, 784, 300, true),
        (90, 300, 1100, false),
        (1024, 1024, 1030, false),
        (1, 2100, 1000, true),
    ] {
        simd_paths_agree_at(m, n, k, tb);
    }
}

fn simd_paths_agree_at(m: usize, n: usize, k: usize, tb: bool) {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let a = random(m * k, &mut rng);
    let b = random(k * n, &mut rng);
    let run = |simd: Simd| {
        let mut c = vec![0.0f32; m * n];
        sgemm(
            simd,
            m,
            n,
            k,
            1.0,
            MatRef::row_major(&a, m, k, false),
            MatRef::row_major(&b, k, n, tb),
            0.0,
            &mut c,
            n,
        )
        .unwrap();
        c
    };
    let portable = run(Simd::portable());
    for simd in Simd::available() {
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| run(simd));
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| run(simd));
        assert_eq!(
            one,
            three,
            "{:?}: thread count changed the bits",
            simd.isa()
        );
        for (x, y) in one.iter().zip(&portable) {
            assert!(
                (x - y).abs() < 1e-3,
                "{:?} vs portable: {x} vs {y}",
                simd.isa()
            );
        }
    }
    // And the portable path against the definition, at spread elements.
    for (i, j) in [(0, 0), (m - 1, n - 1), (m / 2, n / 3), (7 % m, n - 5)] {
        let want: f64 = (0..k)
            .map(|p| {
                f64::from(a[i * k + p]) * f64::from(if tb { b[j * k + p] } else { b[p * n + j] })
            })
            .sum();
        let got = f64::from(portable[i * n + j]);
        assert!((got - want).abs() < 1e-3, "C[{i},{j}] = {got}, want {want}");
    }
    assert!(Simd::available().iter().any(|s| s.isa() == Isa::Portable));
}

#[test]
fn row_stride_of_c_larger_than_n_leaves_the_gap_alone() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (m, n, k, ldc) = (13, 20, 9, 27);
    let a = random(m * k, &mut rng);
    let b = random(k * n, &mut rng);
    let (ar, br) = (
        MatRef::row_major(&a, m, k, false),
        MatRef::row_major(&b, k, n, false),
    );
    let want = reference(m, n, k, 1.0, &ar, &br, 0.0, &vec![0.0; m * n]);
    for simd in Simd::available() {
        let mut c = vec![7.0f32; (m - 1) * ldc + n];
        sgemm(simd, m, n, k, 1.0, ar, br, 0.0, &mut c, ldc).unwrap();
        for i in 0..m {
            for j in 0..n {
                assert!((c[i * ldc + j] as f64 - want[i * n + j]).abs() < 1e-4);
            }
            if i + 1 < m {
                assert!(
                    c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0),
                    "gap of row {i} written"
                );
            }
        }
    }
}

#[test]
fn bad_row_stride_and_overflowing_strides_are_errors() {
    let simd = Simd::detect();
    let a = [1.0f32; 6];
    let b = [1.0f32; 6];
    let mut c = vec![0.0f32; 8];
    // ldc < n, including the k = 0 fast path and m = 1.
    for (m, k) in [(1, 3), (2, 3), (1, 0)] {
        let ar = MatRef::row_major(&a[..m * k], m, k, false);
        let br = MatRef::row_major(&b[..k * 2], k, 2, false);
        assert!(
            sgemm(simd, m, 2, k, 1.0, ar, br, 0.0, &mut c, 1).is_err(),
            "m={m} k={k}"
        );
        assert!(
            sgemm(simd, m, 2, k, 1.0, ar, br, 0.0, &mut c, 0).is_err(),
            "m={m} k={k}"
        );
    }
    let huge = MatRef {
        data: &a,
        rs: usize::MAX / 2,
        cs: 1,
    };
    let err = sgemm(
        simd,
        3,
        2,
        2,
        1.0,
        huge,
        MatRef::row_major(&b[..4], 2, 2, false),
        0.0,
        &mut c,
        2,
    );
    assert!(err.is_err());
}

#[test]
fn epilogue_adds_the_bias_and_clamps_once_after_every_slice() {
    // k = 700 takes several slices of k; 37 rows and 45 columns leave edge tiles.
    let (m, n, k) = (37, 45, 700);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut a_data = random(m * k, &mut rng);
    // A NaN in row 3 of A: that row of C must stay NaN through the ReLU.
    a_data[3 * k + 5] = f32::NAN;
    let b_data = random(k * n, &mut rng);
    let bias = random(n, &mut rng);
    for simd in Simd::available() {
        for (beta, relu) in [(0.0, true), (0.5, true), (1.0, false)] {
            let c0 = random(m * n, &mut rng);
            let mut c = c0.clone();
            let (a, b) = (
                MatRef::row_major(&a_data, m, k, false),
                MatRef::row_major(&b_data, k, n, false),
            );
            let epilogue = Epilogue {
                bias: Some(&bias),
                relu,
            };
            sgemm_with(simd, m, n, k, 1.0, a, b, beta, &mut c, n, epilogue).unwrap();
            let want = reference(m, n, k, 1.0, &a, &b, beta, &c0);
            for i in 0..m {
                for j in 0..n {
                    let z = want[i * n + j] + f64::from(bias[j]);
                    let z = if relu && z < 0.0 { 0.0 } else { z };
                    let got = c[i * n + j];
                    if i == 3 {
                        assert!(
                            got.is_nan(),
                            "{:?}: C[3, {j}] = {got}, want NaN",
                            simd.isa()
                        );
                    } else {
                        assert!(
                            (f64::from(got) - z).abs() < 1e-3,
                            "{:?} beta={beta} relu={relu}: C[{i}, {j}] = {got}, want {z}",
                            simd.isa()
                        );
                    }
                }
            }
        }
    }
    let (a, b) = (
        MatRef::row_major(&a_data, m, k, false),
        MatRef::row_major(&b_data, k, n, false),
    );
    let short = Epilogue {
        bias: Some(&bias[..n - 1]),
        relu: false,
    };
    let err = sgemm_with(
        Simd::portable(),
        m,
        n,
        k,
        1.0,
        a,
        b,
        0.0,
        &mut vec![0.0; m * n],
        n,
        short,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bias"), "{err}");
}

#[test]
fn rows_of_c_a_multiple_of_4_kib_apart_give_the_bits_of_any_other_stride() {
    // C's rows 2048 floats apart: AVX2 sums the slices of k in a buffer of its own
    // (`stages_c`), the last slice writing C. 200 rows (more than one block of A, the last
    // panel partial), 1100 columns (wide enough that A is packed, the last panel partial),
    // k = 600 in three slices, with the bias and ReLU epilogue.
    let (m, n, k) = (200, 1100, 600);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (a_data, b_data) = (random(m * k, &mut rng), random(k * n, &mut rng));
    let bias = random(n, &mut rng);
    let (a, b) = (
        MatRef::row_major(&a_data, m, k, false),
        MatRef::row_major(&b_data, k, n, false),
    );
    let epilogue = Epilogue {
        bias: Some(&bias),
        relu: true,
    };
    let run = |simd: Simd, threads: usize, ldc: usize, beta: f32, c0: &[f32]| {
        let mut c = vec![7.0f32; (m - 1) * ldc + n];
        for i in 0..m {
            c[i * ldc..i * ldc + n].copy_from_slice(&c0[i * n..(i + 1) * n]);
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| sgemm_with(simd, m, n, k, 1.0, a, b, beta, &mut c, ldc, epilogue))
            .unwrap();
        for i in 0..m - 1 {
            assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0));
        }
        (0..m)
            .flat_map(|i| c[i * ldc..i * ldc + n].to_vec())
            .collect::<Vec<f32>>()
    };
    for simd in Simd::available() {
        for beta in [0.0, 0.5] {
            let c0 = random(m * n, &mut rng);
            let want = reference(m, n, k, 1.0, &a, &b, beta, &c0);
            let strided = run(simd, 1, 2048, beta, &c0);
            for (idx, (&got, &z)) in strided.iter().zip(&want).enumerate() {
                let z = z + f64::from(bias[idx % n]);
                let z = if z < 0.0 { 0.0 } else { z };
                assert!(
                    (f64::from(got) - z).abs() < 1e-3,
                    "{:?} beta={beta}: C[{idx}] = {got}, want {z}",
                    simd.isa()
                );
            }
            assert_eq!(
                strided,
                run(simd, 3, 2048, beta, &c0),
                "{:?}: threads",
                simd.isa()
            );
            if beta == 0.0 {
                let dense = run(simd, 1, 1104, beta, &c0);
                assert_eq!(
                    strided,
                    dense,
                    "{:?}: the stride changed the bits",
                    simd.isa()
                );
            }
        }
    }
}

/// bf16 and f16 inputs at every pair of operand layouts the packing distinguishes (k
/// contiguous, lanes contiguous, neither), odd k, partial tiles, on every path (the
/// AVX512-BF16 kernel packs each layout its own way): the product of the rounded inputs,
/// to f32 accumulation.
#[test]
fn mixed_precision_inputs_at_any_strides() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (m, n, k) = (14, 37, 23);
    // (row stride, column stride) of an r x c operand stored in a buffer three times
    // its size: row-major, column-major, and neither (every third element).
    let layouts = |r: usize, c: usize| [(c, 1), (1, r), (3 * c, 3)];
    let a_buf = random(3 * m * k, &mut rng);
    let b_buf = random(3 * k * n, &mut rng);
    for precision in [Precision::Bf16, Precision::F16] {
        let round = |v: &[f32]| v.iter().map(|&x| precision.round(x)).collect::<Vec<_>>();
        let (a_round, b_round) = (round(&a_buf), round(&b_buf));
        for (a_rs, a_cs) in layouts(m, k) {
            for (b_rs, b_cs) in layouts(k, n) {
                let a = MatRef {
                    data: &a_buf,
                    rs: a_rs,
                    cs: a_cs,
                };
                let b = MatRef {
                    data: &b_buf,
                    rs: b_rs,
                    cs: b_cs,
                };
                let ar = MatRef {
                    data: &a_round,
                    ..a
                };
                let br = MatRef {
                    data: &b_round,
                    ..b
                };
                let want = reference(m, n, k, 1.0, &ar, &br, 0.0, &[]);
                for simd in Simd::available() {
                    let mut c = vec![f32::NAN; m * n];
                    let none = Epilogue::default();
                    gemm_mixed(simd, precision, m, n, k, 1.0, a, b, 0.0, &mut c, n, none).unwrap();
                    for (i, (&got, &w)) in c.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(got) - w).abs() < 1e-5 * (k as f64),
                            "{precision} {simd} A ({a_rs}, {a_cs}) B ({b_rs}, {b_cs}): \
                             element {i} is {got}, want {w}"
                        );
                    }
                }
            }
        }
    }
}
