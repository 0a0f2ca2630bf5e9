//! The GPU at its limits, and misused: work that does not fit one grid dimension is
//! spread or split and still computes the right answer; what cannot run (a buffer too
//! large, a buffer of another device) is a clear error, never a validation panic inside
//! wgpu. Shapes are derived from the device's own limits, so each check runs where it can
//! be reached without gigabytes of memory (lavapipe, whose grid is 65,535 workgroups per
//! dimension) and says so where it cannot.

mod support;

use ringtrain_kernels::gpu::GpuBackend;
use ringtrain_kernels::{Backend, GemmSpec};
use support::gpu;

/// Buffers past this are not worth allocating in a test.
const TEST_BYTES: u64 = 256 << 20;

fn max_groups(gpu: &GpuBackend) -> usize {
    gpu.limits().max_compute_workgroups_per_dimension as usize
}

fn err_text<T>(r: ringtrain_kernels::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn buffers_past_the_device_limit_are_errors() {
    let Some(gpu) = gpu() else { return };
    let l = gpu.limits();
    // Capped at 4 GiB too: the kernels index with u32.
    let max = l
        .max_buffer_size
        .min(l.max_storage_buffer_binding_size)
        .min((1 << 32) - 16);
    let too_many = (max / 4 + 1) as usize;
    let msg = err_text(gpu.alloc(too_many));
    assert!(
        msg.contains("exceeds") && msg.contains(&max.to_string()),
        "{msg}"
    );
    let msg = err_text(gpu.zeros(usize::MAX / 2));
    assert!(msg.contains("beyond any device"), "{msg}");
    // The device is still usable afterwards.
    let b = gpu.upload(&[1.0, 2.0]).unwrap();
    assert_eq!(gpu.download(&b).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn elementwise_ops_spread_past_one_grid_dimension() {
    let Some(gpu) = gpu() else { return };
    // 256 invocations per workgroup: one more workgroup than a dimension holds.
    let len = max_groups(&gpu) * 256 + 257;
    if (len as u64) * 4 > TEST_BYTES {
        eprintln!("skipped: this device's grid needs {len} elements to overflow");
        return;
    }
    let x: Vec<f32> = (0..len).map(|i| (i % 1000) as f32).collect();
    let xb = gpu.upload(&x).unwrap();
    let mut y = gpu.alloc(len).unwrap();
    gpu.affine(&xb, &mut y, 2.0, 1.0).unwrap();
    let y = gpu.download(&y).unwrap();
    for i in [0, 1, 256 * 1000 + 3, len - 258, len - 2, len - 1] {
        assert_eq!(y[i], x[i] * 2.0 + 1.0, "element {i} of {len}");
    }
    let bad = y.iter().zip(&x).position(|(y, x)| *y != x * 2.0 + 1.0);
    assert_eq!(bad, None);
}

#[test]
fn batched_gemm_splits_past_one_grid_dimension() {
    let Some(gpu) = gpu() else { return };
    let batch = max_groups(&gpu) + 3;
    let (m, n, k) = (2, 3, 2);
    if (batch * m * n) as u64 * 4 > TEST_BYTES {
        eprintln!("skipped: this device's grid needs a batch of {batch} to overflow");
        return;
    }
    let a: Vec<f32> = (0..batch * m * k).map(|i| (i % 7) as f32 - 3.0).collect();
    let b: Vec<f32> = (0..batch * k * n).map(|i| (i % 5) as f32 - 2.0).collect();
    let spec = GemmSpec {
        batch,
        stride_a: m * k,
        stride_b: k * n,
        ..GemmSpec::new(m, n, k, false, false)
    };
    let (ab, bb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut c = gpu.alloc(batch * m * n).unwrap();
    gpu.gemm(&spec, &ab, &bb, &mut c).unwrap();
    let c = gpu.download(&c).unwrap();
    for t in [0, 1, batch / 2, batch - 3, batch - 2, batch - 1] {
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k)
                    .map(|p| a[t * m * k + i * k + p] * b[t * k * n + p * n + j])
                    .sum();
                assert_eq!(c[(t * m + i) * n + j], want, "batch item {t} of {batch}");
            }
        }
    }
}

/// `m x n` times `n`-column B with deterministic operands; every element checked.
fn check_gemm(gpu: &GpuBackend, m: usize, n: usize, k: usize) {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.5 - 1.5).collect();
    let (ab, bb) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
    let mut c = gpu.alloc(m * n).unwrap();
    gpu.gemm(&GemmSpec::new(m, n, k, false, false), &ab, &bb, &mut c)
        .unwrap();
    let c = gpu.download(&c).unwrap();
    let bad = (0..m * n).find(|&e| {
        let (i, j) = (e / n, e % n);
        let want: f32 = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        c[e] != want
    });
    assert_eq!(bad, None, "first wrong element of a {m} x {n} product");
}

/// 64 x 64 tiles: one row (or column) more than a grid dimension of tiles covers.
fn past_the_grid(gpu: &GpuBackend) -> Option<usize> {
    let len = max_groups(gpu) * 64 + 1;
    if (len * 3) as u64 * 4 > TEST_BYTES {
        eprintln!("skipped: this device's grid needs {len} rows to overflow");
        return None;
    }
    Some(len)
}

#[test]
fn gemm_taller_than_one_grid_dimension_takes_several_launches() {
    let Some(gpu) = gpu() else { return };
    let Some(m) = past_the_grid(&gpu) else { return };
    check_gemm(&gpu, m, 2, 3);
}

#[test]
fn gemm_wider_than_one_grid_dimension_takes_several_launches() {
    let Some(gpu) = gpu() else { return };
    let Some(n) = past_the_grid(&gpu) else { return };
    check_gemm(&gpu, 2, n, 3);
}

#[test]
fn buffers_of_another_device_are_refused_before_recording() {
    let Some(a) = gpu() else { return };
    let b = GpuBackend::new().unwrap();
    let on_a = a.upload(&[1.0, -2.0]).unwrap();
    let mut on_b = b.alloc(2).unwrap();
    let msg = err_text(b.affine(&on_a, &mut on_b, 2.0, 0.0));
    assert!(msg.contains("another GPU device"), "{msg}");
    // Refused up front, so nothing bad was recorded: both devices still work.
    let x = b.upload(&[3.0, 4.0]).unwrap();
    b.affine(&x, &mut on_b, 2.0, 1.0).unwrap();
    assert_eq!(b.download(&on_b).unwrap(), vec![7.0, 9.0]);
    assert_eq!(a.download(&on_a).unwrap(), vec![1.0, -2.0]);
}
