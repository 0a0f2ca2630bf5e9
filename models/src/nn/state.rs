//! State a module carries besides its trainable parameters, which a checkpoint must keep
//! for a resumed run to continue exactly: buffers (batch norm's running estimates) and the
//! positions of random streams (dropout masks drawn so far).

use ringtrain_runtime::{Error, Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A non-trainable tensor a module updates as it runs, shared by handle like a
/// [`Var`](ringtrain_runtime::Var): PyTorch's buffers (`running_mean`, `running_var`).
/// An optimizer never sees it; a checkpoint saves and restores it by name.
#[derive(Clone)]
pub struct Buffer(Arc<Mutex<Tensor>>);

impl Buffer {
    pub fn new(value: Tensor) -> Self {
        Self(Arc::new(Mutex::new(value)))
    }

    pub fn get(&self) -> Tensor {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn dims(&self) -> Vec<usize> {
        self.get().dims().to_vec()
    }

    /// Replaces the value with `value`, moved to the buffer's device; the shape must stay.
    pub fn set(&self, value: &Tensor) -> Result<()> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if value.dims() != slot.dims() {
            return Err(Error::InvalidShape {
                op: "Buffer::set",
                reason: format!(
                    "a buffer of shape {} cannot take a value of shape {}",
                    slot.shape(),
                    value.shape()
                ),
            });
        }
        *slot = value.detach().to_device(slot.device())?;
        Ok(())
    }
}

/// Where a module's random stream stands: how many draws (a dropout layer's masks) it has
/// made. Each draw is seeded from the module's seed and this position, so a module whose
/// position is restored draws exactly what it would have drawn next.
#[derive(Clone, Default)]
pub struct RngStream(Arc<AtomicU64>);

impl RngStream {
    pub fn position(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set_position(&self, position: u64) {
        self.0.store(position, Ordering::Relaxed);
    }

    /// The position of this draw; the stream moves on by one.
    pub fn advance(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}
