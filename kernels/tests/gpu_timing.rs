//! Timing kernels on the GPU with timestamp queries, as benchmarks do: a timed region's
//! result is the ops' result; its GPU time is positive and fits inside the wall-clock
//! time of the same region; a region with more passes than can be timed says so rather
//! than under-reporting.

mod support;

use ringtrain_kernels::{Backend, GemmSpec};
use std::time::Instant;
use support::gpu;

#[test]
fn a_timed_region_reports_gpu_time_within_its_wall_time() {
    let Some(gpu) = gpu() else { return };
    let n = 96;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let (ab, bb) = (gpu.upload(&a).unwrap(), gpu.upload(&a).unwrap());
    let mut c = gpu.alloc(n * n).unwrap();
    let spec = GemmSpec::new(n, n, n, false, false);
    gpu.synchronize().unwrap();
    let start = Instant::now();
    let ((), gpu_time) = gpu
        .timed(|| {
            for _ in 0..4 {
                gpu.gemm(&spec, &ab, &bb, &mut c)?;
            }
            gpu.synchronize()
        })
        .unwrap();
    let wall = start.elapsed();
    let got = gpu.download(&c).unwrap();
    let want: f32 = (0..n).map(|p| a[p] * a[p * n]).sum();
    assert!(
        (got[0] - want).abs() < 1e-3 * want.abs().max(1.0),
        "{} vs {want}",
        got[0]
    );
    match gpu_time {
        Some(t) => {
            assert!(gpu.has_timestamps());
            assert!(t.as_nanos() > 0, "four GEMMs took no GPU time");
            assert!(
                t <= wall,
                "GPU time {t:?} exceeds the region's wall time {wall:?}"
            );
        }
        None => assert!(!gpu.has_timestamps(), "timestamps exist but gave no time"),
    }
}

#[test]
fn a_region_with_more_passes_than_timestamps_is_not_timed() {
    let Some(gpu) = gpu() else { return };
    if !gpu.has_timestamps() {
        return;
    }
    let x = gpu.upload(&[1.0; 16]).unwrap();
    let mut y = gpu.alloc(16).unwrap();
    // Each download ends a submission, so every affine below gets a pass of its own.
    let (_, time) = gpu
        .timed(|| {
            for _ in 0..513 {
                gpu.affine(&x, &mut y, 2.0, 0.0)?;
                gpu.download(&y)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(time, None, "513 passes cannot all be timed");
    // The device is still usable, and the next region is timed again.
    let (_, time) = gpu.timed(|| gpu.affine(&x, &mut y, 2.0, 0.0)).unwrap();
    assert!(time.is_some());
    assert_eq!(gpu.download(&y).unwrap(), vec![2.0; 16]);
}
