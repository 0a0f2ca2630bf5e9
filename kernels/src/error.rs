use thiserror::Error;

/// Errors a kernel reports instead of panicking: lengths that do not match what an op was
/// told, and devices that cannot do what was asked.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    #[error("{op}: buffer `{buffer}` holds {got} elements, the op needs {expected}")]
    BufferLength {
        op: &'static str,
        buffer: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{op}: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
    #[error("device error: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// Checks that a buffer holds exactly `expected` elements.
pub(crate) fn check_len(
    op: &'static str,
    buffer: &'static str,
    expected: usize,
    got: usize,
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::BufferLength {
            op,
            buffer,
            expected,
            got,
        })
    }
}
