//! The ring all-reduce's schedule, shared by every transport that runs it (threads of one
//! process, MPI processes): which segment a peer sends and which it receives at each step,
//! and how a segment is cut into chunks. The same schedule everywhere means the same
//! summation order, so a ring over MPI gives the bits a ring of threads gives.

use std::ops::Range;

/// Which part of a `len`-element buffer is segment `i` of `n`.
pub(super) fn segment(len: usize, n: usize, i: usize) -> Range<usize> {
    let at = |i: usize| ((i as u128 * len as u128) / n as u128) as usize;
    at(i)..at(i + 1)
}

/// What a peer does with a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Combine {
    Add,
    Copy,
}

/// One step of a ring collective: send `out` to the successor while receiving `inc` from
/// the predecessor, combining it into place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Step {
    pub out: Range<usize>,
    pub inc: Range<usize>,
    pub combine: Combine,
}

/// The `2 (n - 1)` steps of peer `r`'s all-reduce of `len` elements: reduce-scatter, after
/// which peer `r` holds the full sum of segment `r + 1` (summed in ring order starting at
/// the segment's index: `x[j] + x[j+1] + ...`), then all-gather of the finished segments.
pub(super) fn all_reduce_steps(len: usize, n: usize, r: usize) -> impl Iterator<Item = Step> {
    let reduce = (0..n.saturating_sub(1)).map(move |s| Step {
        out: segment(len, n, (r + n - s) % n),
        inc: segment(len, n, (r + 2 * n - s - 1) % n),
        combine: Combine::Add,
    });
    let gather = (0..n.saturating_sub(1)).map(move |s| Step {
        out: segment(len, n, (r + 1 + n - s) % n),
        inc: segment(len, n, (r + n - s) % n),
        combine: Combine::Copy,
    });
    reduce.chain(gather)
}

/// Chunk `c` of `range` cut into chunks of `chunk` elements, if there is one.
pub(super) fn chunk(range: &Range<usize>, chunk: usize, c: usize) -> Option<Range<usize>> {
    let lo = range.start.checked_add(c.checked_mul(chunk)?)?;
    (lo < range.end).then(|| lo..(lo + chunk).min(range.end))
}

/// Chunks a step moves: enough for the larger of its two segments.
pub(super) fn chunks_in(step: &Step, chunk: usize) -> usize {
    step.out
        .len()
        .div_ceil(chunk)
        .max(step.inc.len().div_ceil(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates the schedule on `n` peers with exact integer "floats": every peer ends
    /// with the full sum, and each segment is summed once, in ring order.
    #[test]
    fn all_reduce_schedule_sums_every_segment() {
        for n in 1..6 {
            for len in [0, 1, 5, 17] {
                let mut bufs: Vec<Vec<f64>> = (0..n)
                    .map(|p| (0..len).map(|i| (p * 100 + i) as f64).collect())
                    .collect();
                let steps: Vec<Vec<Step>> = (0..n)
                    .map(|r| all_reduce_steps(len, n, r).collect())
                    .collect();
                for s in 0..2 * (n - 1) {
                    let sent: Vec<Vec<f64>> = (0..n)
                        .map(|r| bufs[r][steps[r][s].out.clone()].to_vec())
                        .collect();
                    for r in 0..n {
                        let prev = (r + n - 1) % n;
                        let st = &steps[r][s];
                        assert_eq!(st.inc.len(), sent[prev].len());
                        for (d, x) in bufs[r][st.inc.clone()].iter_mut().zip(&sent[prev]) {
                            match st.combine {
                                Combine::Add => *d += x,
                                Combine::Copy => *d = *x,
                            }
                        }
                    }
                }
                let want: Vec<f64> = (0..len)
                    .map(|i| (0..n).map(|p| (p * 100 + i) as f64).sum())
                    .collect();
                for b in &bufs {
                    assert_eq!(b, &want, "n {n} len {len}");
                }
            }
        }
    }

    #[test]
    fn chunks_cover_a_range_once() {
        let r = 3..14;
        let got: Vec<_> = (0..5).map_while(|c| chunk(&r, 4, c)).collect();
        assert_eq!(got, vec![3..7, 7..11, 11..14]);
        assert_eq!(chunk(&(0..0), 4, 0), None);
    }
}
