//! Every differentiable op's gradient against finite differences, on the GPU backend
//! (Mesa's software Vulkan where there is no GPU). With no adapter at all these tests fail
//! rather than pass vacuously; `RINGTRAIN_SKIP_GPU_TESTS=1` runs them on the CPU instead.

use ringtrain_runtime::Device;
use std::sync::OnceLock;

/// One device for every test of the file: tensors of two devices do not mix.
fn dev() -> Device {
    static GPU: OnceLock<Device> = OnceLock::new();
    GPU.get_or_init(|| match Device::gpu() {
        _ if std::env::var_os("RINGTRAIN_SKIP_GPU_TESTS").is_some_and(|v| v == "1") => {
            Device::cpu()
        }
        Ok(d) => d,
        Err(e) => panic!("{e}\n(set RINGTRAIN_SKIP_GPU_TESTS=1 to run the CPU tests alone)"),
    })
    .clone()
}

include!("grad_check/checks.rs");
