//! The schedules of the collectives, shared by every transport that runs them (threads
//! of one process, MPI processes): who sends what to whom at each step, and in which
//! order values are summed. The same schedule everywhere means the same summation
//! order, so a group over MPI gives the bits a group of threads of the same size gives.
//!
//! Five all-reduce algorithms, picked by message size ([`Algorithm::pick`]):
//!
//! - **Direct** (small messages): every peer sends its whole buffer to every other peer
//!   and sums the `n` buffers itself, in rank order `x0 + x1 + ... + x(n-1)`. One hop of
//!   latency, `(n - 1)` buffers sent per peer.
//! - **Tree** (small): a flat tree; every peer sends its buffer to peer 0, which sums
//!   them in rank order and sends the sum back: two hops, the least data moved and the
//!   fewest messages (`2 (n - 1)`), all through peer 0.
//! - **Recursive doubling** (medium): `log2 n` rounds; in round `k` peers whose ranks
//!   differ in bit `k` swap their partial sums and both add them (IEEE addition is
//!   commutative, so both get the same bits). For `n` not a power of two, the first
//!   `2 (n - p)` peers (`p` the largest power of two below `n`) pair up first: the even
//!   one hands its buffer to the odd one, which sums `x(2i) + x(2i+1)`, takes part in
//!   the rounds, and hands the result back. The sum is a fixed balanced tree.
//! - **Halving** (Rabenseifner's, medium, groups of a power of two): a reduce-scatter by
//!   recursive halving (in round `k` peers whose ranks differ in bit `log2 n - 1 - k`
//!   swap halves of the block they still share, each keeping the half its bit names and
//!   adding the partner's partial sum into it), then an all-gather by recursive doubling
//!   back up. The ring's bytes (`2 (n - 1) / n` of the buffer per peer) in `2 log2 n`
//!   steps instead of `2 (n - 1)`; each segment is summed by one peer, as a balanced
//!   tree over the ranks.
//! - **Ring** (large): reduce-scatter then all-gather, `2 (n - 1)` steps of `1 / n` of
//!   the buffer each; segment `j` is summed in ring order `x[j] + x[j+1] + ...`.
//!
//! All of them leave every peer with the same bits, but not the same bits as each other:
//! each sums in its own order, so a buffer whose size crosses a threshold rounds
//! differently (well within f32's rounding of the sum, and never between peers).

use super::{wire, CommError};
use crate::Precision;
use std::ops::Range;

/// Which part of a `len`-element buffer is segment `i` of `n`.
pub(super) fn segment(len: usize, n: usize, i: usize) -> Range<usize> {
    cut(len, n, i)..cut(len, n, i + 1)
}

/// Where segment `i` of `n` of a `len`-element buffer starts.
fn cut(len: usize, n: usize, i: usize) -> usize {
    ((i as u128 * len as u128) / n.max(1) as u128) as usize
}

/// The even cut of `len` elements into `n` parts (sizes differing by at most one), as
/// the `n + 1` offsets [`Communicator::reduce_scatter`](super::Communicator::reduce_scatter)
/// and `all_gather` take.
pub fn even_parts(len: usize, n: usize) -> Vec<usize> {
    (0..=n).map(|i| cut(len, n, i)).collect()
}

/// Checks that `parts` cuts a buffer of `len` elements into one part per peer of `n`:
/// `n + 1` non-decreasing offsets from 0 to `len`.
pub(crate) fn check_parts(len: usize, n: usize, parts: &[usize]) -> Result<(), CommError> {
    let ok = parts.len() == n + 1
        && parts.first() == Some(&0)
        && parts.last() == Some(&len)
        && parts.windows(2).all(|w| w[0] <= w[1]);
    if ok {
        Ok(())
    } else {
        Err(CommError::InvalidArgument(format!(
            "parts {parts:?} do not cut {len} elements into {n} parts (n + 1 non-decreasing \
             offsets from 0 to the length)"
        )))
    }
}

/// The all-reduce algorithm for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Direct,
    Tree,
    Doubling,
    Halving,
    Ring,
}

/// Message sizes (bytes of f32 payload) below which the latency-bound algorithms run.
/// Below `direct_below`, the direct algorithm; below both the tree's and doubling's
/// bounds, whichever of the two takes fewer hops in the group (doubling in a group of
/// two, where it is one exchange; the tree's two hops otherwise); below one of them,
/// that one; then, below `halving_below` and in a group whose size is a power of two,
/// recursive halving; the ring above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub direct_below: usize,
    pub tree_below: usize,
    pub doubling_below: usize,
    pub halving_below: usize,
}

/// Where groups switch algorithm, in process and over MPI alike (so that both give the
/// same bits), from `allreduce --algorithm` on a 2-vCPU Zen 4 VM (docs/BENCHMARKS.md):
/// the tree (doubling for two peers) is ahead of the ring up to 64 KiB on 2-8 threads
/// and on 2-4 processes; halving from 128 KiB to 512 KiB on 4 and 8 threads and on 4
/// processes (on 2 it moves what the ring moves); the ring from 1 MiB, where halving
/// fell behind it on 8 threads. The direct exchange was never ahead.
impl Default for Thresholds {
    fn default() -> Self {
        Self {
            direct_below: 0,
            tree_below: 128 << 10,
            doubling_below: 128 << 10,
            halving_below: 1 << 20,
        }
    }
}

impl Thresholds {
    /// Thresholds under which every all-reduce runs `algorithm`, for tests and
    /// benchmarks that compare the algorithms (halving only where the group's size is a
    /// power of two; the ring elsewhere).
    pub fn only(algorithm: Algorithm) -> Thresholds {
        let mut t = Thresholds {
            direct_below: 0,
            tree_below: 0,
            doubling_below: 0,
            halving_below: 0,
        };
        match algorithm {
            Algorithm::Direct => t.direct_below = usize::MAX,
            Algorithm::Tree => t.tree_below = usize::MAX,
            Algorithm::Doubling => t.doubling_below = usize::MAX,
            Algorithm::Halving => t.halving_below = usize::MAX,
            Algorithm::Ring => {}
        }
        t
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "direct" => Ok(Self::Direct),
            "tree" => Ok(Self::Tree),
            "doubling" => Ok(Self::Doubling),
            "halving" => Ok(Self::Halving),
            "ring" => Ok(Self::Ring),
            _ => Err(format!(
                "unknown algorithm `{s}` (direct, tree, doubling, halving or ring)"
            )),
        }
    }
}

impl Algorithm {
    /// What a group of `n` runs on `bytes` of payload. Depends only on the size, the
    /// group and the thresholds, which every peer shares, so all peers pick alike.
    /// Whether this is one of the small-message algorithms, which move whole buffers
    /// in few hops; a reduce or broadcast of that size goes straight to or from its root.
    pub fn is_latency_bound(self) -> bool {
        matches!(
            self,
            Algorithm::Direct | Algorithm::Tree | Algorithm::Doubling
        )
    }

    pub fn pick(bytes: usize, n: usize, t: Thresholds) -> Algorithm {
        let (tree, doubles) = (bytes < t.tree_below, bytes < t.doubling_below);
        if n <= 1 {
            Algorithm::Ring
        } else if bytes < t.direct_below {
            Algorithm::Direct
        } else if doubles && (!tree || doubling_rounds(n) < 2) {
            Algorithm::Doubling
        } else if tree {
            Algorithm::Tree
        } else if bytes < t.halving_below && n.is_power_of_two() {
            Algorithm::Halving
        } else {
            Algorithm::Ring
        }
    }
}

/// One transport's part in each algorithm; [`Algorithms::all_reduce_by_size`] chooses
/// among them as every transport does, so that groups over threads and over MPI sum
/// alike.
pub(super) trait Algorithms {
    fn size_rank(&self) -> (usize, usize);
    fn thresholds(&self) -> Thresholds;
    /// Every peer's buffer to every other (or to `root` only), summed in rank order
    /// where it arrives.
    fn direct(
        &mut self,
        data: &mut [f32],
        wire: Precision,
        root: Option<usize>,
    ) -> Result<(), CommError>;
    /// `root`'s buffer (values already in `wire`'s format) to every other peer.
    fn fan_out(&mut self, data: &mut [f32], root: usize, wire: Precision) -> Result<(), CommError>;
    fn doubling(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError>;
    /// One [`Step`]: `step.out` to `step.to` while `step.inc` comes from `step.from`.
    fn run_step(&mut self, data: &mut [f32], step: &Step, wire: Precision)
        -> Result<(), CommError>;
    /// Rounds this peer's finished sums in `range` to the wire, as the others will
    /// receive them.
    fn round_own(
        &mut self,
        data: &mut [f32],
        range: Range<usize>,
        wire: Precision,
    ) -> Result<(), CommError> {
        wire::round(wire, &mut data[range]);
        Ok(())
    }
    /// Completes whatever the steps left in flight.
    fn finish_steps(&mut self) -> Result<(), CommError> {
        Ok(())
    }

    /// Runs a collective's [`Step`]s in order. The first step that copies rather than
    /// adds starts the gather: its outgoing range is this peer's finished sum, which it
    /// rounds to the wire first, so that it keeps what the others receive.
    fn run_steps(
        &mut self,
        data: &mut [f32],
        steps: &[Step],
        wire: Precision,
    ) -> Result<(), CommError> {
        let gather = steps.iter().position(|s| s.combine == Combine::Copy);
        for (i, step) in steps.iter().enumerate() {
            if gather == Some(i) {
                self.round_own(data, step.out.clone(), wire)?;
            }
            self.run_step(data, step, wire)?;
        }
        self.finish_steps()
    }

    /// An all-reduce by the algorithm [`Algorithm::pick`] names for its size.
    fn all_reduce_by_size(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        let (n, r) = self.size_rank();
        match Algorithm::pick(4 * data.len(), n, self.thresholds()) {
            Algorithm::Direct => self.direct(data, wire, None),
            // The flat tree: everything to peer 0, which sums in rank order, and back.
            Algorithm::Tree => {
                self.direct(data, wire, Some(0))?;
                self.fan_out(data, 0, wire)
            }
            Algorithm::Doubling => self.doubling(data, wire),
            Algorithm::Halving => self.run_steps(data, &halving_steps(data.len(), n, r), wire),
            Algorithm::Ring => self.run_steps(data, &all_reduce_steps(data.len(), n, r), wire),
        }
    }
}

/// Hops of recursive doubling in a group of `n`: `log2 p` rounds, and two more to fold
/// in and out the peers beyond `p`, the largest power of two not above `n`.
fn doubling_rounds(n: usize) -> u32 {
    let p = if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    };
    p.trailing_zeros() + if p == n { 0 } else { 2 }
}

/// Peer `r`'s part in recursive doubling over `n` peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Doubling {
    /// For `n` not a power of two: the peer this one pairs with before and after the
    /// rounds, and whether this one sits out (hands its buffer over and waits for the
    /// result) or stays in.
    pub fold: Option<(usize, bool)>,
    /// This peer's rank among the `2^rounds` that take part in the rounds (none for a
    /// peer that sits out), and how many peers fold in before them.
    virtual_rank: Option<usize>,
    rounds: u32,
    extra: usize,
}

impl Doubling {
    /// The partner of each round (none for a peer that sits out).
    pub fn partners(&self) -> impl Iterator<Item = usize> + '_ {
        self.virtual_rank
            .into_iter()
            .flat_map(move |v| (0..self.rounds).map(move |bit| self.real(v ^ (1 << bit))))
    }

    /// The rank of the peer that takes part in the rounds as `v`.
    fn real(&self, v: usize) -> usize {
        if v < self.extra {
            2 * v + 1
        } else {
            v + self.extra
        }
    }
}

pub(super) fn doubling(n: usize, r: usize) -> Doubling {
    let p = if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    };
    let extra = n - p;
    let (fold, virtual_rank) = if r < 2 * extra {
        if r.is_multiple_of(2) {
            (Some((r + 1, true)), None)
        } else {
            (Some((r - 1, false)), Some(r / 2))
        }
    } else {
        (None, Some(r - extra))
    };
    Doubling {
        fold,
        virtual_rank,
        rounds: p.trailing_zeros(),
        extra,
    }
}

/// What a peer does with a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Combine {
    Add,
    Copy,
}

/// One step of a collective: send `out` to peer `to` while receiving `inc` from peer
/// `from`, combining it into place. `out` and `inc` never overlap; either may be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Step {
    pub to: usize,
    pub from: usize,
    pub out: Range<usize>,
    pub inc: Range<usize>,
    pub combine: Combine,
}

/// The ring's `n - 1` reduce-scatter steps for peer `r`, segment `j` of the buffer being
/// `seg(j)`: afterwards peer `r` holds the full sum of segment `r + 1`, summed in ring
/// order from the segment's index: `x[j] + x[j+1] + ...`.
pub(super) fn reduce_scatter_steps(
    n: usize,
    r: usize,
    seg: impl Fn(usize) -> Range<usize>,
) -> Vec<Step> {
    (0..n.saturating_sub(1))
        .map(|s| Step {
            to: (r + 1) % n,
            from: (r + n - 1) % n,
            out: seg((r + n - s) % n),
            inc: seg((r + 2 * n - s - 1) % n),
            combine: Combine::Add,
        })
        .collect()
}

/// The ring's `n - 1` all-gather steps for peer `r`, which holds segment `r + 1`: every
/// finished segment travels round to every peer.
pub(super) fn all_gather_steps(
    n: usize,
    r: usize,
    seg: impl Fn(usize) -> Range<usize>,
) -> Vec<Step> {
    (0..n.saturating_sub(1))
        .map(|s| Step {
            to: (r + 1) % n,
            from: (r + n - 1) % n,
            out: seg((r + 1 + n - s) % n),
            inc: seg((r + n - s) % n),
            combine: Combine::Copy,
        })
        .collect()
}

/// The `2 (n - 1)` steps of peer `r`'s ring all-reduce of `len` elements, in even
/// segments.
pub(super) fn all_reduce_steps(len: usize, n: usize, r: usize) -> Vec<Step> {
    let seg = |j| segment(len, n, j);
    let mut steps = reduce_scatter_steps(n, r, seg);
    steps.extend(all_gather_steps(n, r, seg));
    steps
}

/// The `2 log2 n` steps of peer `r`'s all-reduce of `len` elements by recursive halving
/// then doubling (Rabenseifner's), for `n` a power of two. The buffer is cut into `n`
/// even segments; peer `r` ends the halving holding the sum of segment `r`.
pub(super) fn halving_steps(len: usize, n: usize, r: usize) -> Vec<Step> {
    debug_assert!(
        n.is_power_of_two() && r < n,
        "halving needs a power-of-two group"
    );
    let seg = |(a, b): (usize, usize)| cut(len, n, a)..cut(len, n, b);
    let (mut scatter, mut gather) = (Vec::new(), Vec::new());
    // The segments `lo..hi` this peer still shares with its partners.
    let (mut lo, mut hi) = (0, n);
    for bit in (0..n.trailing_zeros()).rev() {
        let partner = r ^ (1 << bit);
        let mid = (lo + hi) / 2;
        let (keep, give) = if r & (1 << bit) == 0 {
            ((lo, mid), (mid, hi))
        } else {
            ((mid, hi), (lo, mid))
        };
        scatter.push(Step {
            to: partner,
            from: partner,
            out: seg(give),
            inc: seg(keep),
            combine: Combine::Add,
        });
        gather.push(Step {
            to: partner,
            from: partner,
            out: seg(keep),
            inc: seg(give),
            combine: Combine::Copy,
        });
        (lo, hi) = keep;
    }
    scatter.extend(gather.into_iter().rev());
    scatter
}

/// Ring segment `j` when the buffer is cut into `parts` (one per peer): part
/// `j - 1`, so that peer `p` ends a reduce-scatter holding its own part `p`.
pub(super) fn part_segment(parts: &[usize], j: usize) -> Range<usize> {
    let n = parts.len() - 1;
    let p = (j + n - 1) % n;
    parts[p]..parts[p + 1]
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

    /// Runs each peer's steps on exact integer "floats", as the transports do: a send
    /// never waits, a receive waits for the message from its peer, messages between two
    /// peers arrive in order. Fails on a mismatched length or a deadlock.
    fn simulate(bufs: &mut [Vec<f64>], steps: &[Vec<Step>]) {
        use std::collections::{HashMap, VecDeque};
        let n = bufs.len();
        let mut queues: HashMap<(usize, usize), VecDeque<Vec<f64>>> = HashMap::new();
        let (mut at, mut sent) = (vec![0; n], vec![false; n]);
        while (0..n).any(|r| at[r] < steps[r].len()) {
            let mut progress = false;
            for r in 0..n {
                if at[r] == steps[r].len() {
                    continue;
                }
                let st = &steps[r][at[r]];
                if !sent[r] && !st.out.is_empty() {
                    let msg = bufs[r][st.out.clone()].to_vec();
                    queues.entry((r, st.to)).or_default().push_back(msg);
                }
                sent[r] = true;
                if !st.inc.is_empty() {
                    let Some(msg) = queues.entry((st.from, r)).or_default().pop_front() else {
                        continue;
                    };
                    assert_eq!(st.inc.len(), msg.len(), "peer {r} step {}", at[r]);
                    for (d, x) in bufs[r][st.inc.clone()].iter_mut().zip(&msg) {
                        match st.combine {
                            Combine::Add => *d += x,
                            Combine::Copy => *d = *x,
                        }
                    }
                }
                (at[r], sent[r], progress) = (at[r] + 1, false, true);
            }
            assert!(progress, "deadlock at steps {at:?}");
        }
        assert!(
            queues.values().all(|q| q.is_empty()),
            "messages never received"
        );
    }

    fn inputs(n: usize, len: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|p| (0..len).map(|i| (p * 100 + i) as f64).collect())
            .collect()
    }

    fn sums(n: usize, len: usize) -> Vec<f64> {
        (0..len)
            .map(|i| (0..n).map(|p| (p * 100 + i) as f64).sum())
            .collect()
    }

    #[test]
    fn all_reduce_schedule_sums_every_segment() {
        for n in 1..6 {
            for len in [0, 1, 5, 17] {
                let mut bufs = inputs(n, len);
                let steps: Vec<_> = (0..n).map(|r| all_reduce_steps(len, n, r)).collect();
                simulate(&mut bufs, &steps);
                for b in &bufs {
                    assert_eq!(b, &sums(n, len), "n {n} len {len}");
                }
            }
        }
    }

    #[test]
    fn halving_sums_every_segment_in_2_log_n_steps() {
        for n in [1, 2, 4, 8, 16] {
            for len in [0, 1, 5, 17, 64] {
                let mut bufs = inputs(n, len);
                let steps: Vec<_> = (0..n).map(|r| halving_steps(len, n, r)).collect();
                for s in &steps {
                    assert_eq!(s.len(), 2 * n.trailing_zeros() as usize);
                }
                simulate(&mut bufs, &steps);
                for b in &bufs {
                    assert_eq!(b, &sums(n, len), "n {n} len {len}");
                }
            }
        }
        // The ring's bytes: each peer sends (n - 1) / n of the buffer twice.
        let sent: usize = halving_steps(1024, 8, 3).iter().map(|s| s.out.len()).sum();
        assert_eq!(sent, 2 * 1024 * 7 / 8);
    }

    #[test]
    fn reduce_scatter_leaves_each_peer_its_own_part() {
        for n in 1..6 {
            let len = 23;
            // Uneven parts, some empty.
            let mut parts: Vec<usize> = (0..=n).map(|i| (i * i * len) / (n * n)).collect();
            parts[n] = len;
            check_parts(len, n, &parts).unwrap();
            let mut bufs = inputs(n, len);
            let seg = |j| part_segment(&parts, j);
            let rs: Vec<_> = (0..n).map(|r| reduce_scatter_steps(n, r, seg)).collect();
            simulate(&mut bufs, &rs);
            let want = sums(n, len);
            for (p, b) in bufs.iter().enumerate() {
                let own = parts[p]..parts[p + 1];
                assert_eq!(b[own.clone()], want[own], "n {n} peer {p}");
            }
            let ag: Vec<_> = (0..n).map(|r| all_gather_steps(n, r, seg)).collect();
            simulate(&mut bufs, &ag);
            for b in &bufs {
                assert_eq!(b, &want, "n {n}");
            }
        }
    }

    /// Every peer of every group size takes part in the same rounds as its partners, and
    /// the simulated sums are complete.
    #[test]
    fn recursive_doubling_pairs_up_and_sums_all() {
        for n in 1..=13 {
            let plans: Vec<Doubling> = (0..n).map(|r| doubling(n, r)).collect();
            let mut vals: Vec<u64> = (0..n).map(|r| 1 << r).collect();
            for (r, p) in plans.iter().enumerate() {
                if let Some((q, sits_out)) = p.fold {
                    assert_eq!(plans[q].fold, Some((r, !sits_out)), "n {n}");
                    if sits_out {
                        assert!(p.partners().next().is_none());
                    }
                }
            }
            for r in 0..n {
                if let Some((q, false)) = plans[r].fold {
                    vals[r] |= vals[q];
                }
            }
            let rounds = plans.iter().map(|p| p.partners().count()).max().unwrap();
            for k in 0..rounds {
                let before = vals.clone();
                for r in 0..n {
                    if let Some(q) = plans[r].partners().nth(k) {
                        assert_eq!(plans[q].partners().nth(k), Some(r), "n {n} round {k}");
                        vals[r] = before[r] | before[q];
                    }
                }
            }
            for r in 0..n {
                if let Some((q, true)) = plans[r].fold {
                    vals[r] = vals[q];
                }
            }
            assert!(vals.iter().all(|&v| v == (1 << n) - 1), "n {n}: {vals:?}");
        }
    }

    #[test]
    fn algorithms_switch_at_the_thresholds() {
        let t = Thresholds {
            direct_below: 100,
            tree_below: 500,
            doubling_below: 1000,
            halving_below: 2000,
        };
        assert_eq!(Algorithm::pick(99, 4, t), Algorithm::Direct);
        // Both apply: doubling where it is one exchange, the tree's two hops elsewhere.
        assert_eq!(Algorithm::pick(100, 4, t), Algorithm::Tree);
        assert_eq!(Algorithm::pick(100, 2, t), Algorithm::Doubling);
        assert_eq!(Algorithm::pick(500, 4, t), Algorithm::Doubling);
        assert_eq!(Algorithm::pick(1000, 4, t), Algorithm::Halving);
        // Halving only where the group's size is a power of two.
        assert_eq!(Algorithm::pick(1000, 6, t), Algorithm::Ring);
        assert_eq!(Algorithm::pick(2000, 4, t), Algorithm::Ring);
        assert_eq!(Algorithm::pick(4, 1, t), Algorithm::Ring);
        for a in [
            Algorithm::Direct,
            Algorithm::Tree,
            Algorithm::Doubling,
            Algorithm::Halving,
            Algorithm::Ring,
        ] {
            for n in 2..9usize {
                let want = if a == Algorithm::Halving && !n.is_power_of_two() {
                    Algorithm::Ring
                } else {
                    a
                };
                assert_eq!(Algorithm::pick(12345, n, Thresholds::only(a)), want);
            }
        }
        assert_eq!(
            (1..10).map(doubling_rounds).collect::<Vec<_>>(),
            vec![0, 1, 3, 2, 4, 4, 4, 3, 5]
        );
        assert_eq!(even_parts(10, 3), vec![0, 3, 6, 10]);
    }

    #[test]
    fn chunks_cover_a_range_once() {
        let r = 3..14;
        let got: Vec<_> = (0..5).map_while(|c| chunk(&r, 4, c)).collect();
        assert_eq!(got, vec![3..7, 7..11, 11..14]);
        assert_eq!(chunk(&(0..0), 4, 0), None);
    }
}
