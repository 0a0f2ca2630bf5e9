//! Reads the resolved burn and wgpu versions out of Cargo.lock so the report names exactly
//! what was timed (the lock file pins them).

use std::fs;

fn locked_version(lock: &str, name: &str) -> String {
    let needle = format!("name = \"{name}\"\n");
    lock.split("[[package]]")
        .find(|pkg| pkg.trim_start().starts_with(needle.trim_end()))
        .and_then(|pkg| pkg.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = fs::read_to_string("Cargo.lock").unwrap_or_default();
    println!(
        "cargo:rustc-env=BURN_VERSION={}",
        locked_version(&lock, "burn")
    );
    println!(
        "cargo:rustc-env=WGPU_VERSION={}",
        locked_version(&lock, "wgpu")
    );
}
