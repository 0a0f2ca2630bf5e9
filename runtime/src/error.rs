use crate::comm::CommError;
use crate::Shape;
use ringtrain_kernels::KernelError;
use thiserror::Error;

/// Everything a user of ringtrain can get wrong, reported instead of panicking: the one
/// error type of the library. The model crate's errors (checkpoints, data files) convert
/// into it, so do `std::io::Error` and a program's own messages ([`Error::msg`], or a
/// `String`/`&str` through `?`), so `fn main() -> ringtrain::Result<()>` serves a whole
/// program. `Debug` prints the message, which is what `main` shows when it returns one.
#[derive(Error)]
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
        /// As given: negative counts from the end.
        dim: i64,
        rank: usize,
    },
    #[error("{op}: operands live on different devices ({lhs} and {rhs})")]
    DeviceMismatch {
        op: &'static str,
        lhs: String,
        rhs: String,
    },
    #[error("{op}: expected a {expected} tensor, got {got}{}", widen_hint(*got))]
    DTypeMismatch {
        op: &'static str,
        expected: ringtrain_kernels::DType,
        got: ringtrain_kernels::DType,
    },
    #[error("backward needs a scalar loss, got a tensor of shape {0}")]
    NotScalar(Shape),
    /// `backward` on a loss that no trainable variable reaches: there is nothing to
    /// train, which is almost always a bug (a detached tensor, a model with no `Var`s, a
    /// loss computed under `no_grad`).
    #[error(
        "backward: the loss depends on no trainable variable (no Var reaches it: was it \
         computed under no_grad, from detached tensors, or by a model without parameters?)"
    )]
    NoGradient,
    /// A training step's loss or gradients hold an infinity or NaN (what, where); the
    /// step was not applied.
    #[error("{0}; the step was not applied, the parameters are as before it")]
    NonFinite(String),
    /// A training run stopped because its loss or parameters became infinite or NaN (the
    /// message says at which step and what to try).
    #[error("{0}")]
    Diverged(String),
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Comm(#[from] CommError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A message of the program's own.
    #[error("{0}")]
    Msg(String),
    /// An error of another library (a checkpoint or data file error of
    /// `ringtrain-models`, say), kept whole so that callers can downcast it.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl Error {
    /// An error with a message of the caller's: `Err(Error::msg("no such run"))?`, or
    /// `.map_err(Error::msg)` on another crate's error.
    pub fn msg(message: impl std::fmt::Display) -> Self {
        Error::Msg(message.to_string())
    }

    /// Wraps another library's error, keeping it for [`std::error::Error::source`] and
    /// downcasting.
    pub fn other(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Other(Box::new(error))
    }

    /// The same error with `context` in front of its message (`"reading data/x: ..."`).
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        Error::Msg(format!("{context}: {self}"))
    }
}

/// The message, as `Display` gives it: a `main` that returns an error prints this, and a
/// message is what a user needs (the variant is visible through `match`).
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::Msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::Msg(message.to_string())
    }
}

impl From<Box<dyn std::error::Error + Send + Sync + 'static>> for Error {
    fn from(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Error::Other(error)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn widen_hint(got: ringtrain_kernels::DType) -> &'static str {
    if got.half().is_some() {
        " (only casts, matrix products and reading values back take 16-bit tensors: widen it \
         with `to_dtype(DType::F32)`)"
    } else {
        ""
    }
}
