//! ZeRO stage 1: the optimizer state sharded across the replicas, as DeepSpeed's ZeRO-1
//! and PyTorch's `ZeroRedundancyOptimizer` do it.
//!
//! Each parameter belongs to one replica, whose optimizer alone updates it and so alone
//! holds its state (momentum, moment estimates): optimizers create a variable's state
//! on its first update, so a replica's optimizer holds state for its own parameters
//! only, about `1 / N` of the whole. A step reduce-scatters each gradient bucket, so
//! that each replica receives the summed gradients of its own parameters (half the
//! bytes of an all-reduce), updates them with the optimizer's fused kernel, and then
//! all-gathers the updated parameters (the other half), so every replica ends the step
//! with the same parameters, as under plain data parallelism.
//!
//! Parameters are owned whole (as PyTorch shards them), cut from the model's gradient
//! order into `N` contiguous runs of about equal size: a replica's share is within one
//! parameter of `1 / N`, so a model whose largest parameter is more than `1 / N` of it
//! (a small MLP's first layer) saves less.

use super::buckets::Layout;
use ringtrain_runtime::comm::Communicator;
use ringtrain_runtime::optim::{Optimizer, StateTensor};
use ringtrain_runtime::{Device, Error, Result, Tensor, Var};
use std::ops::Range;

/// Which replica updates each parameter, and how that cuts each gradient bucket.
#[derive(Debug, Clone)]
pub(super) struct Sharding {
    /// By parameter index: the rank that owns it.
    pub owner: Vec<usize>,
    /// By bucket: `n + 1` offsets, rank `r`'s parameters at `parts[r]..parts[r + 1]`.
    pub parts: Vec<Vec<usize>>,
}

impl Sharding {
    pub fn new(layout: &Layout, n: usize) -> Sharding {
        let mut order: Vec<usize> = (0..layout.slots.len()).collect();
        order.sort_by_key(|&i| (layout.slots[i].bucket, layout.slots[i].offset));
        let total: usize = layout.slots.iter().map(|s| s.len).sum();
        let mut owner = vec![0; layout.slots.len()];
        let mut at = 0u128;
        for &i in &order {
            let len = layout.slots[i].len as u128;
            // The rank whose even share of the whole holds this parameter's middle: the
            // owners rise along the order, so each bucket's parts are contiguous.
            let twice_mid = 2 * at + len;
            let r = (twice_mid * n as u128) / (2 * total.max(1) as u128);
            owner[i] = (r as usize).min(n - 1);
            at += len;
        }
        let parts = (0..layout.bucket_lens.len())
            .map(|b| {
                let in_bucket: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&i| layout.slots[i].bucket == b)
                    .collect();
                let mut cut: Vec<usize> = (0..=n)
                    .map(|r| {
                        in_bucket
                            .iter()
                            .find(|&&i| owner[i] >= r)
                            .map_or(layout.bucket_lens[b], |&i| layout.slots[i].offset)
                    })
                    .collect();
                cut[0] = 0;
                cut[n] = layout.bucket_lens[b];
                cut
            })
            .collect();
        Sharding { owner, parts }
    }

    /// Rank `rank`'s part of bucket `b`.
    pub fn own(&self, rank: usize, b: usize) -> Range<usize> {
        self.parts[b][rank]..self.parts[b][rank + 1]
    }

    /// Elements rank `rank` owns.
    #[cfg(test)]
    pub fn share(&self, layout: &Layout, rank: usize) -> usize {
        (0..layout.slots.len())
            .filter(|&i| self.owner[i] == rank)
            .map(|i| layout.slots[i].len)
            .sum()
    }
}

/// What every replica must agree on after a sharded reduction, each knowing only its
/// parts: the sum of squares of the gradient (for clipping) and which parameters have a
/// non-finite gradient. All-reduced, so every replica decides alike.
pub(super) struct GroupCheck {
    pub squares: f64,
    pub nonfinite: usize,
    /// The first parameter (model order) with a non-finite gradient.
    pub first: Option<usize>,
}

pub(super) fn check_group(
    comm: &mut dyn Communicator,
    layout: &Layout,
    sharding: &Sharding,
    buckets: &[Vec<f32>],
) -> Result<GroupCheck> {
    let rank = comm.rank();
    let n_params = layout.slots.len();
    // [sum of squares, non-finite count, one flag per parameter].
    let mut stats = vec![0.0f32; 2 + n_params];
    let mut squares = 0.0f64;
    for (i, slot) in layout.slots.iter().enumerate() {
        if sharding.owner[i] != rank {
            continue;
        }
        let g = &buckets[slot.bucket][slot.offset..slot.offset + slot.len];
        let bad = g.iter().filter(|x| !x.is_finite()).count();
        squares += g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>();
        stats[1] += bad as f32;
        stats[2 + i] = f32::from(u8::from(bad > 0));
    }
    stats[0] = squares as f32;
    comm.all_reduce(&mut stats)?;
    Ok(GroupCheck {
        squares: f64::from(stats[0]),
        nonfinite: stats[1] as usize,
        first: (0..n_params).find(|&i| stats[2 + i] > 0.0),
    })
}

/// After this replica's optimizer updated its own parameters: every bucket's parameters
/// gathered from their owners, bucket by bucket, and the others' set on this replica.
pub(super) fn gather_parameters(
    comm: &mut dyn Communicator,
    params: &[Var],
    device: &Device,
    layout: &Layout,
    sharding: &Sharding,
    buckets: &mut [Vec<f32>],
) -> Result<()> {
    let rank = comm.rank();
    for (b, buf) in buckets.iter_mut().enumerate() {
        // This replica's parameters of the bucket, read back from a GPU in one wait.
        let own: Vec<usize> = (0..layout.slots.len())
            .filter(|&i| layout.slots[i].bucket == b && sharding.owner[i] == rank)
            .collect();
        let tensors: Vec<&Tensor> = own.iter().map(|&i| params[i].as_tensor()).collect();
        for (&i, values) in own.iter().zip(Tensor::to_vecs(&tensors)?) {
            let slot = &layout.slots[i];
            buf[slot.offset..slot.offset + slot.len].copy_from_slice(&values);
        }
        comm.all_gather(buf, &sharding.parts[b])?;
        for (i, slot) in layout.slots.iter().enumerate() {
            if slot.bucket == b && sharding.owner[i] != rank {
                let src = &buf[slot.offset..slot.offset + slot.len];
                params[i].set(&Tensor::from_slice(src, slot.shape.clone(), device)?)?;
            }
        }
    }
    Ok(())
}

/// The tensors of `state` this replica keeps: its own parameters', and the optimizer's
/// own (step counts, learning rate), which every replica keeps alike.
pub(super) fn own_state<O: Optimizer>(
    optimizer: &O,
    state: &[StateTensor],
    sharding: &Sharding,
    rank: usize,
) -> Vec<StateTensor> {
    state
        .iter()
        .filter(|(name, _, _)| {
            optimizer
                .state_var(name)
                .is_none_or(|i| sharding.owner.get(i) == Some(&rank))
        })
        .cloned()
        .collect()
}

/// The whole optimizer state, as one optimizer of plain data parallelism would hold it,
/// gathered from the replicas that own its parts. A collective.
pub(super) fn gather_state<O: Optimizer>(
    comm: &mut dyn Communicator,
    optimizer: &O,
    sharding: &Sharding,
) -> Result<Vec<StateTensor>> {
    let (rank, n) = (comm.rank(), comm.size());
    // Rank 0 gives the optimizer's own tensors; each rank its parameters'.
    let mine: Vec<StateTensor> = optimizer
        .state()?
        .into_iter()
        .filter(|(name, _, _)| match optimizer.state_var(name) {
            Some(i) => sharding.owner.get(i) == Some(&rank),
            None => rank == 0,
        })
        .collect();
    let mut words = Vec::new();
    encode(&mine, &mut words);
    // Lengths, in two exact 24-bit halves.
    let mut lens = vec![0.0f32; 2 * n];
    lens[2 * rank] = (words.len() >> 24) as f32;
    lens[2 * rank + 1] = (words.len() & 0xff_ffff) as f32;
    comm.all_reduce(&mut lens)?;
    let mut parts = vec![0usize];
    for r in 0..n {
        let len = ((lens[2 * r] as usize) << 24) | lens[2 * r + 1] as usize;
        parts.push(parts[r] + len);
    }
    let mut all = vec![0.0f32; parts[n]];
    all[parts[rank]..parts[rank + 1]].copy_from_slice(&words);
    comm.all_gather(&mut all, &parts)?;
    let mut state = Vec::new();
    for r in 0..n {
        state.extend(decode(&all[parts[r]..parts[r + 1]])?);
    }
    Ok(state)
}

/// A count as two exact f32s of 24 bits each.
fn push_count(out: &mut Vec<f32>, n: usize) {
    out.push((n >> 24) as f32);
    out.push((n & 0xff_ffff) as f32);
}

/// State tensors as f32 words: each as name length, name bytes, rank, dimensions,
/// value count, values (counts as [`push_count`] writes them).
fn encode(state: &[StateTensor], out: &mut Vec<f32>) {
    for (name, shape, values) in state {
        push_count(out, name.len());
        out.extend(name.bytes().map(f32::from));
        push_count(out, shape.len());
        for &d in shape {
            push_count(out, d);
        }
        push_count(out, values.len());
        out.extend_from_slice(values);
    }
}

fn decode(mut words: &[f32]) -> Result<Vec<StateTensor>> {
    let corrupt = || Error::InvalidArgument("gathered optimizer state is malformed".into());
    let count = |words: &mut &[f32]| -> Result<usize> {
        let [hi, lo, rest @ ..] = *words else {
            return Err(corrupt());
        };
        *words = rest;
        Ok(((*hi as usize) << 24) | *lo as usize)
    };
    let take = |words: &mut &[f32], n: usize| -> Result<Vec<f32>> {
        if words.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = words.split_at(n);
        *words = rest;
        Ok(head.to_vec())
    };
    let mut state = Vec::new();
    while !words.is_empty() {
        let len = count(&mut words)?;
        let name: Vec<u8> = take(&mut words, len)?.iter().map(|&b| b as u8).collect();
        let name = String::from_utf8(name).map_err(|_| corrupt())?;
        let dims = count(&mut words)?;
        let shape = (0..dims)
            .map(|_| count(&mut words))
            .collect::<Result<Vec<usize>>>()?;
        let values = count(&mut words)?;
        state.push((name, shape, take(&mut words, values)?));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_its_encoding() {
        let state: Vec<StateTensor> = vec![
            ("step.0".into(), vec![2], vec![0.0, 3.0]),
            (
                "m.12".into(),
                vec![2, 3],
                (0..6).map(|i| i as f32 * 0.5).collect(),
            ),
            ("t.0".into(), vec![], vec![]),
        ];
        let mut words = Vec::new();
        encode(&state, &mut words);
        assert_eq!(decode(&words).unwrap(), state);
        assert!(decode(&words[..words.len() - 1]).is_err());
    }

    #[test]
    fn owners_rise_along_the_buckets_and_share_the_elements() {
        let shapes: Vec<ringtrain_runtime::Shape> = [[8, 4], [4, 1], [4, 4], [4, 1], [2, 4]]
            .iter()
            .map(|d| ringtrain_runtime::Shape::from(d.to_vec()))
            .collect();
        let names = ["a.w", "a.b", "b.w", "b.b", "c.w"];
        let layout = Layout::new(&shapes, &names, 4 * 20, 4 * 40);
        for n in 1..5 {
            let s = Sharding::new(&layout, n);
            for (b, cut) in s.parts.iter().enumerate() {
                assert_eq!(cut.len(), n + 1);
                assert!(cut.windows(2).all(|w| w[0] <= w[1]));
                for (i, slot) in layout.slots.iter().enumerate() {
                    if slot.bucket == b {
                        let own = s.own(s.owner[i], b);
                        assert!(own.start <= slot.offset && slot.offset + slot.len <= own.end);
                    }
                }
            }
            let total: usize = (0..n).map(|r| s.share(&layout, r)).sum();
            assert_eq!(total, 8 * 4 + 4 + 16 + 4 + 8);
        }
    }
}
