//! How test suites get a GPU. `cargo test` must pass on any machine, also one with no
//! Vulkan, Metal or DX12 driver at all: there a GPU test is skipped, saying so in one
//! line, rather than failing. CI is where every GPU test must run (on Mesa's software
//! Vulkan where there is no GPU): `RINGTRAIN_REQUIRE_GPU=1`, which `.ci/run` sets, turns
//! that skip into a failure. `RINGTRAIN_SKIP_GPU_TESTS=1` skips them where a GPU exists.

use super::GpuBackend;
use std::io::Write;

/// Set to `1`: a GPU test that finds no adapter fails instead of being skipped.
pub const REQUIRE_GPU_VAR: &str = "RINGTRAIN_REQUIRE_GPU";
/// Set to `1`: GPU tests are skipped even where there is a GPU (the CPU tests alone).
pub const SKIP_GPU_VAR: &str = "RINGTRAIN_SKIP_GPU_TESTS";

fn env_is_one(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// Says that the calling test skips its GPU part, in one line written straight to the
/// process's stderr (libtest captures only the print macros, so the line shows in a plain
/// `cargo test`), naming the test (libtest names its threads after the tests).
fn say_skipped(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a GPU test");
    let line = format!(
        "{test}: GPU part skipped ({why}); to run it, install a Vulkan driver (without a \
         GPU on Debian/Ubuntu: apt-get install mesa-vulkan-drivers) and set \
         WGPU_BACKEND=vulkan\n"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A GPU for a test: the best adapter there is (Mesa's lavapipe on a machine without a
/// GPU), or `None`, after one line saying the test's GPU part is skipped, when there is
/// none or `RINGTRAIN_SKIP_GPU_TESTS=1`. With `RINGTRAIN_REQUIRE_GPU=1`, no usable adapter
/// panics with the reason, so that CI cannot pass without running the GPU tests.
pub fn test_gpu() -> Option<GpuBackend> {
    if !gpu_tests_enabled() {
        return None;
    }
    GpuBackend::new().map_or_else(|e| skip_or_fail(&e.to_string()), Some)
}

/// Whether a test's GPU part should run, for tests that run a program on the GPU rather
/// than open one themselves: as [`test_gpu`], but enumerating adapters without opening
/// a device.
pub fn gpu_tests_enabled() -> bool {
    if env_is_one(SKIP_GPU_VAR) {
        say_skipped(&format!("{SKIP_GPU_VAR}=1"));
        return false;
    }
    match GpuBackend::adapters() {
        Ok(found) if !found.is_empty() => true,
        Ok(_) => {
            let filter = std::env::var("WGPU_BACKEND")
                .map(|b| format!(" with WGPU_BACKEND={b}"))
                .unwrap_or_default();
            skip_or_fail::<()>(&format!("no GPU adapter found{filter}")).is_some()
        }
        Err(e) => skip_or_fail::<()>(&e.to_string()).is_some(),
    }
}

/// `None` after saying so, or a panic under `RINGTRAIN_REQUIRE_GPU=1`.
fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if env_is_one(REQUIRE_GPU_VAR) {
        panic!(
            "{reason}\n({REQUIRE_GPU_VAR}=1: GPU tests must run here, not be skipped; \
             without a GPU on Debian/Ubuntu: apt-get install mesa-vulkan-drivers)"
        );
    }
    say_skipped(reason);
    None
}
