//! What the GPU tests of this crate share.

use ringtrain_kernels::gpu::GpuBackend;

/// The GPU wgpu picks (lavapipe where there is no hardware one), or `None`, saying so,
/// where there is no adapter or `RINGTRAIN_SKIP_GPU_TESTS=1` (see
/// `ringtrain_kernels::gpu::testing`; `RINGTRAIN_REQUIRE_GPU=1` makes no adapter a
/// failure, as in CI).
pub fn gpu() -> Option<GpuBackend> {
    ringtrain_kernels::gpu::testing::test_gpu()
}
