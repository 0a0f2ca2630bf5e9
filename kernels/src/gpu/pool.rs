//! Device memory is recycled, not freed: a dropped [`GpuBuffer`] goes back to a free list
//! keyed by its size, and the next request of that size takes it. A training step asks for
//! the same sizes every time, so after the first step it allocates nothing.

use super::device::Shared;
use crate::{KernelError, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Buffer sizes are rounded up to this many bytes, which also makes every storage
/// binding a whole number of vec4s.
const GRANULE: u64 = 16;

/// The largest buffer the kernels can index (see [`Pool::take`]).
pub(super) const MAX_BUFFER_BYTES: u64 = (1 << 32) - GRANULE;

pub(super) struct Pool {
    usage: wgpu::BufferUsages,
    free: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    created: AtomicUsize,
}

impl Pool {
    pub fn new(usage: wgpu::BufferUsages) -> Self {
        Self {
            usage,
            free: Mutex::new(HashMap::new()),
            created: AtomicUsize::new(0),
        }
    }

    /// Buffers this pool has asked the device for, ever.
    pub fn created(&self) -> usize {
        self.created.load(Ordering::Relaxed)
    }

    fn free(&self) -> MutexGuard<'_, HashMap<u64, Vec<wgpu::Buffer>>> {
        // A panic elsewhere cannot leave the map half-updated: recover it.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of at least `bytes` (rounded up to [`GRANULE`]), recycled if one is free.
    pub fn take(&self, shared: &Shared, bytes: u64) -> Result<wgpu::Buffer> {
        let size = bytes.max(GRANULE).div_ceil(GRANULE) * GRANULE;
        if let Some(buf) = self.free().get_mut(&size).and_then(Vec::pop) {
            return Ok(buf);
        }
        let limits = &shared.limits;
        // Kernels index elements with u32; below 4 GiB no index, nor any grid past the
        // end of a buffer, can wrap around (Metal allows larger bindings).
        let max = limits
            .max_buffer_size
            .min(limits.max_storage_buffer_binding_size)
            .min(MAX_BUFFER_BYTES);
        if size > max {
            return Err(KernelError::Device(format!(
                "a buffer of {size} bytes exceeds this device's limit of {max} bytes per \
                 storage buffer"
            )));
        }
        match self.create(shared, size) {
            Ok(buf) => Ok(buf),
            // Out of memory: give back what the free lists hold and try once more.
            Err(_) if self.release_all() > 0 => self.create(shared, size),
            Err(e) => Err(e),
        }
    }

    fn create(&self, shared: &Shared, size: u64) -> Result<wgpu::Buffer> {
        let scope = shared
            .device
            .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buf = shared.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("ringtrain"),
            size,
            usage: self.usage,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(KernelError::Device(format!(
                "out of GPU memory allocating {size} bytes: {e}"
            )));
        }
        self.created.fetch_add(1, Ordering::Relaxed);
        Ok(buf)
    }

    /// Drops every free buffer; returns how many there were. Dropped, not destroyed:
    /// commands recorded before a buffer came back may still use it, and wgpu frees its
    /// memory once they have run.
    pub fn release_all(&self) -> usize {
        let mut free = self.free();
        let n = free.values().map(Vec::len).sum();
        free.clear();
        n
    }

    pub fn give_back(&self, buf: wgpu::Buffer) {
        self.free().entry(buf.size()).or_default().push(buf);
    }
}

/// f32 elements in device memory. Dropping it returns the memory to its device's pool;
/// commands already recorded that use it keep it alive until they have run.
pub struct GpuBuffer {
    pub(super) raw: wgpu::Buffer,
    pub(super) len: usize,
    pub(super) pool: Arc<Pool>,
}

impl GpuBuffer {
    /// Elements (f32) it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        self.pool.give_back(self.raw.clone());
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} f32)", self.len)
    }
}
