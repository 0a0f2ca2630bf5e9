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

/// The last file in `dir` by name (the newest checkpoint).
pub fn newest_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.pop().unwrap()
}

/// Every tensor of two checkpoints, compared bit for bit.
pub fn same_tensors(a: &std::path::Path, b: &std::path::Path) -> Result<(), String> {
    use ringtrain::checkpoint::Checkpoint;
    let (a, b) = (Checkpoint::load(a).unwrap(), Checkpoint::load(b).unwrap());
    let names: Vec<&str> = a.names().collect();
    if names != b.names().collect::<Vec<_>>() {
        return Err(format!("names differ: {names:?}"));
    }
    for name in names {
        let (sa, va) = a.get(name).unwrap();
        let (sb, vb) = b.get(name).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        if sa != sb || bits(va) != bits(vb) {
            return Err(format!("`{name}` differs"));
        }
    }
    Ok(())
}
