//! One error type for a whole program: `ringtrain::Error` takes the library's own errors,
//! the model crate's (checkpoints, data files), `std::io::Error` and a program's messages
//! through `?`, and prints as its message, which is what `main` shows when it returns one.

use ringtrain::checkpoint::{Checkpoint, CheckpointError};
use ringtrain::data::{DataError, Mnist};
use ringtrain::prelude::*;
use ringtrain::Error;
use std::path::Path;

/// Stands for a user's `main`: every kind of failure goes through `?`.
fn program(step: u32) -> ringtrain::Result<()> {
    match step {
        0 => {
            std::fs::read("/nonexistent/ringtrain/config.toml")?;
        }
        1 => {
            Checkpoint::load(Path::new("/nonexistent/run.safetensors"))?;
        }
        2 => {
            Mnist::load(Path::new("/nonexistent/mnist"))?;
        }
        3 => {
            let x = Tensor::zeros((2, 3), &Device::cpu())?;
            x.matmul(&x)?;
        }
        4 => {
            let value: Option<u32> = None;
            value.ok_or("no learning rate given")?;
        }
        5 => return Err(Error::msg(format!("epoch {} failed", 3))),
        _ => {
            "x".parse::<u32>().map_err(Error::msg)?;
        }
    }
    Ok(())
}

#[test]
fn every_kind_of_failure_converts_and_reads_as_its_message() {
    let cases: [(u32, &[&str]); 7] = [
        (0, &["No such file"]),
        (
            1,
            &["cannot read checkpoint", "/nonexistent/run.safetensors"],
        ),
        (2, &["/nonexistent/mnist"]),
        (3, &["matmul", "[2, 3]"]),
        (4, &["no learning rate given"]),
        (5, &["epoch 3 failed"]),
        (6, &["invalid digit"]),
    ];
    for (step, needles) in cases {
        let err = program(step).unwrap_err();
        let (shown, debug) = (err.to_string(), format!("{err:?}"));
        // What `fn main() -> ringtrain::Result<()>` prints is the Debug form.
        assert_eq!(shown, debug, "step {step}");
        for n in needles {
            assert!(shown.contains(n), "step {step}: `{shown}` lacks `{n}`");
        }
    }
}

#[test]
fn the_model_crates_errors_stay_reachable() {
    let err = program(1).unwrap_err();
    let Error::Other(inner) = &err else {
        panic!("a checkpoint error comes back as Error::Other, got {err}")
    };
    assert!(inner.downcast_ref::<CheckpointError>().is_some());
    let err = program(2).unwrap_err();
    let Error::Other(inner) = &err else {
        panic!("a data error comes back as Error::Other, got {err}")
    };
    assert!(inner.downcast_ref::<DataError>().is_some());
    // A tensor error inside a checkpoint error comes back as the tensor error itself.
    let tensor = CheckpointError::Tensor(Error::InvalidArgument("inner".into()));
    assert!(matches!(Error::from(tensor), Error::InvalidArgument(m) if m == "inner"));
    assert!(matches!(program(0).unwrap_err(), Error::Io(_)));
    let with_context = program(4).unwrap_err().context("reading the settings");
    assert_eq!(
        with_context.to_string(),
        "reading the settings: no learning rate given"
    );
}
