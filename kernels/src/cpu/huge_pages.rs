//! Large host buffers on transparent huge pages. Where the kernel's THP setting is
//! `madvise` (the common default), only memory advised with `MADV_HUGEPAGE` gets 2 MiB
//! pages; numpy advises every array of 4 MiB and more, so its BLAS works on huge pages
//! while plain `Vec`s stay on 4 KiB ones. A GEMM whose operands span thousands of pages
//! then misses the TLB: on Zen 4, one thread, 1024^3 to 2048^3 ran 2% faster with all
//! three operands advised (alternated with unadvised runs, 5 pairs). The price is
//! numpy's too: where the system's THP `defrag` setting is `madvise`, a first touch may
//! wait for the kernel to compact memory into a free huge page.

/// Buffers of at least this many bytes are advised (numpy's threshold).
const MIN_ADVISED_BYTES: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// An empty buffer with room for exactly `len` floats (`None` if that cannot be
/// allocated), advised for huge pages when large, before any of it is touched: the
/// pages are faulted in as huge ones by the caller's first writes.
pub(crate) fn reserve(len: usize) -> Option<Vec<f32>> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).ok()?;
    if let Some((start, bytes)) = advised_range(buf.as_ptr() as usize, len * 4) {
        advise(start, bytes);
    }
    Some(buf)
}

/// The whole huge pages inside `bytes` bytes at address `addr`, as (start, length),
/// when the buffer is large enough to be advised and holds at least one.
fn advised_range(addr: usize, bytes: usize) -> Option<(usize, usize)> {
    if bytes < MIN_ADVISED_BYTES {
        return None;
    }
    let start = addr.checked_next_multiple_of(HUGE_PAGE)?;
    let end = addr.checked_add(bytes)? & !(HUGE_PAGE - 1);
    (end > start).then(|| (start, end - start))
}

#[cfg(target_os = "linux")]
fn advise(start: usize, bytes: usize) {
    // SAFETY: the range lies inside an allocation this process owns; MADV_HUGEPAGE
    // changes no contents, and its failure (a kernel built without THP, or THP set to
    // `never`) leaves the buffer on ordinary pages, which is all it costs.
    unsafe {
        libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn advise(_start: usize, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_huge_pages_of_large_buffers_are_advised() {
        let mib = 1 << 20;
        // Under 4 MiB: left alone, aligned or not.
        assert_eq!(advised_range(0, 4 * mib - 4), None);
        // An aligned 4 MiB buffer: both of its huge pages.
        assert_eq!(advised_range(2 * mib, 4 * mib), Some((2 * mib, 4 * mib)));
        // malloc's header puts a buffer 16 bytes past a page: the whole pages inside.
        let addr = 2 * mib + 16;
        assert_eq!(advised_range(addr, 5 * mib), Some((4 * mib, 2 * mib)));
        // 4 MiB from the middle of a huge page: the one whole page inside.
        assert_eq!(advised_range(mib + 16, 4 * mib), Some((2 * mib, 2 * mib)));
        // Near the top of the address space: no overflow.
        assert_eq!(advised_range(usize::MAX - mib, 8 * mib), None);
    }

    #[test]
    fn reserved_buffers_take_their_contents_as_any_vec() {
        let len = (8 << 20) / 4 + 3;
        let mut buf = reserve(len).expect("8 MiB of host memory");
        assert_eq!(buf.capacity(), len);
        buf.resize(len, 1.5);
        assert!(buf.iter().all(|&v| v == 1.5));
        assert!(
            reserve(usize::MAX / 8).is_none(),
            "an impossible size is refused"
        );
    }
}
