//! What the GPU tests of this crate share.

use ringtrain_kernels::gpu::GpuBackend;

/// The GPU wgpu picks (lavapipe where there is no hardware one), or `None` when
/// `RINGTRAIN_SKIP_GPU_TESTS=1` asks to run the CPU tests alone. No adapter at all is a
/// failure that says so: the GPU tests run, they are not skipped silently.
pub fn gpu() -> Option<GpuBackend> {
    if std::env::var_os("RINGTRAIN_SKIP_GPU_TESTS").is_some_and(|v| v == "1") {
        return None;
    }
    match GpuBackend::new() {
        Ok(b) => Some(b),
        Err(e) => panic!("{e}\n(set RINGTRAIN_SKIP_GPU_TESTS=1 to run the CPU tests alone)"),
    }
}
