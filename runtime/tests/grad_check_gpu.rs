//! Every differentiable op's gradient against finite differences, on the GPU backend
//! (Mesa's software Vulkan where there is no GPU). With no adapter at all they run on the
//! CPU instead, saying so (`RINGTRAIN_REQUIRE_GPU=1`, as in CI, makes that a failure).

use ringtrain_runtime::Device;
use std::sync::OnceLock;

/// One device for every test of the file: tensors of two devices do not mix.
fn dev() -> Device {
    static GPU: OnceLock<Device> = OnceLock::new();
    GPU.get_or_init(|| Device::test_gpu().unwrap_or_else(Device::cpu))
        .clone()
}

include!("grad_check/checks.rs");
include!("grad_check/transformer.rs");
