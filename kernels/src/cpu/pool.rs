//! Recycled host memory for large buffers. glibc hands blocks of megabytes back to the
//! OS when they are freed, so a training step that allocates the same large buffers
//! every time (a CNN's im2col columns are megabytes) would fault every page in again,
//! every step: a third of a CNN step's time before this pool. Buffers of at least
//! [`MIN_POOLED`] elements that the runtime drops come back here, keyed by length, and the
//! next request of that length takes one. Small buffers go to the allocator, which
//! recycles those well.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// Buffers shorter than this (256 KiB) are not pooled.
pub const MIN_POOLED: usize = 1 << 16;
/// The most memory the pool keeps idle; beyond it, returned buffers are freed.
const MAX_POOLED_BYTES: usize = 1 << 30;

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn pool() -> MutexGuard<'static, Option<Pool>> {
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A recycled buffer of exactly `len` elements (old contents), if one is idle.
pub(crate) fn take(len: usize) -> Option<Vec<f32>> {
    if len < MIN_POOLED {
        return None;
    }
    let mut guard = pool();
    let p = guard.as_mut()?;
    let list = p.free.get_mut(&len)?;
    let buf = list.pop()?;
    if list.is_empty() {
        p.free.remove(&len);
    }
    p.bytes -= len * 4;
    Some(buf)
}

/// Returns a buffer for reuse (or frees it, if it is small or the pool is full).
pub fn recycle(buf: Vec<f32>) {
    let len = buf.len();
    if len < MIN_POOLED || buf.capacity() != len {
        return;
    }
    let mut guard = pool();
    let p = guard.get_or_insert_with(Pool::default);
    // Full: make room by freeing buffers of other lengths (an evaluation batch, a last
    // partial batch), so the sizes in use now keep being recycled.
    while p.bytes + len * 4 > MAX_POOLED_BYTES {
        let Some(other) = p.free.keys().copied().find(|&l| l != len) else {
            return;
        };
        let list = p.free.get_mut(&other).expect("key just found");
        if list.pop().is_some() {
            p.bytes -= other * 4;
        }
        if list.is_empty() {
            p.free.remove(&other);
        }
    }
    p.bytes += len * 4;
    p.free.entry(len).or_default().push(buf);
}

/// Frees every idle pooled buffer; returns how many bytes that gave back.
pub fn release_pooled() -> usize {
    let mut guard = pool();
    guard.take().map_or(0, |p| p.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::CpuBackend;
    use crate::Backend;

    #[test]
    fn large_buffers_are_reused_and_zeros_really_are_zeros() {
        // A length no other test uses: the pool is process-wide.
        let len = MIN_POOLED + 12_345;
        let cpu = CpuBackend::new();
        let first = vec![7.0f32; len];
        let ptr = first.as_ptr();
        recycle(first);
        let again = cpu.zeros(len).unwrap();
        assert_eq!(
            again.as_ptr(),
            ptr,
            "the recycled block is handed out again"
        );
        assert!(
            again.iter().all(|&v| v == 0.0),
            "zeros must clear old contents"
        );
        recycle(again);
        let uploaded = cpu.upload(&vec![3.0; len]).unwrap();
        assert_eq!(uploaded.as_ptr(), ptr);
        assert!(uploaded.iter().all(|&v| v == 3.0));
        // Small buffers and buffers with spare capacity are left to the allocator.
        recycle(vec![1.0; 10]);
        assert!(take(10).is_none());
        let mut spare = Vec::with_capacity(len + 1);
        spare.resize(len, 0.0);
        recycle(spare);
        assert!(take(len).is_none());
    }
}
