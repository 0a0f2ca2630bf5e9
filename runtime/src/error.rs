use crate::comm::CommError;
use crate::Shape;
use ringtrain_kernels::KernelError;
use thiserror::Error;

/// Everything a user of tensors can get wrong, reported instead of panicking.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{op}: shapes {lhs} and {rhs} do not match{hint}")]
    ShapeMismatch {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
        hint: &'static str,
    },
    #[error("{op}: {reason}")]
    InvalidShape { op: &'static str, reason: String },
    #[error("{op}: dimension {dim} is out of range for a tensor of rank {rank}")]
    DimOutOfRange {
        op: &'static str,
        dim: usize,
        rank: usize,
    },
    #[error("{op}: operands live on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },
    #[error("backward needs a scalar loss, got a tensor of shape {0}")]
    NotScalar(Shape),
    /// A training step's loss or gradients hold an infinity or NaN (what, where); the
    /// step was not applied.
    #[error("{0}; the step was not applied, the parameters are as before it")]
    NonFinite(String),
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Comm(#[from] CommError),
}

pub type Result<T> = std::result::Result<T, Error>;
