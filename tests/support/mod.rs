//! Running the example binaries as a user would. A plain `cargo test` builds the examples
//! next to the test binaries, so they are found relative to the running test (`cargo test
//! --test NAME` alone does not build them: add `--examples`, or build them first).

#![allow(dead_code)] // each test file uses part of it

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of example `name`, which must have been built.
pub fn example(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is not built (a plain `cargo test` builds the examples; tests/mpi.rs needs \
         `cargo build --release --features mpi --examples` first)",
        bin.display()
    );
    bin
}

/// Runs example `name` with `args` in the repository root and waits for it.
pub fn run_example(name: &str, args: &[&str]) -> Output {
    Command::new(example(name))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("run the {name} example: {e}"))
}
