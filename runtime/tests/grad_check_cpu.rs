//! Every differentiable op's gradient against finite differences, on the CPU backend.

use ringtrain_runtime::Device;

fn dev() -> Device {
    Device::cpu()
}

include!("grad_check/checks.rs");
include!("grad_check/transformer.rs");
