//! Mini-batches over a [`Dataset`], optionally in a seeded shuffled order.

use std::iter::FusedIterator;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::mnist::Dataset;
use super::DataError;

/// One mini-batch, copied out of the dataset so it can be handed to a device on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `len * features` pixels: one image after another, each row-major.
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    /// Samples in this batch: the batch size, or fewer for the last batch of an epoch.
    pub len: usize,
}

/// One epoch of mini-batches. Every sample appears exactly once; the last batch holds
/// the remainder when the batch size does not divide the dataset.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    dataset: &'a Dataset,
    order: Vec<usize>,
    batch_size: usize,
    next: usize,
}

impl<'a> Batches<'a> {
    /// Starts an epoch over `dataset`.
    ///
    /// With `shuffle: Some(seed)` the sample order is a permutation that depends only on
    /// `seed` (ChaCha8, so it is the same on every platform and run). A `Batches` covers
    /// one epoch, so to reshuffle each epoch the caller derives a per-epoch seed, e.g.
    /// `Some(seed ^ epoch)`; reusing one seed repeats the same order every epoch.
    /// With `None` samples come in dataset order.
    pub fn new(
        dataset: &'a Dataset,
        batch_size: usize,
        shuffle: Option<u64>,
    ) -> Result<Batches<'a>, DataError> {
        if batch_size == 0 {
            return Err(DataError::InvalidBatchSize);
        }
        dataset.check_consistent()?;
        let mut order: Vec<usize> = (0..dataset.len).collect();
        if let Some(seed) = shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        Ok(Batches {
            dataset,
            order,
            batch_size,
            next: 0,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let end = self
            .order
            .len()
            .min(self.next.saturating_add(self.batch_size));
        let indices = self.order.get(self.next..end).filter(|s| !s.is_empty())?;
        self.next = end;

        let features = self.dataset.features();
        let mut images = Vec::with_capacity(indices.len() * features);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            // In bounds: `new` checked images.len() == len * features and every i < len.
            images.extend_from_slice(&self.dataset.images[i * features..(i + 1) * features]);
            labels.push(self.dataset.labels[i]);
        }
        Some(Batch {
            images,
            labels,
            len: indices.len(),
        })
    }

    /// Skips `n` batches without copying them out, so a run resumed mid-epoch starts at
    /// its batch at once.
    fn nth(&mut self, n: usize) -> Option<Batch> {
        let skipped = n.saturating_mul(self.batch_size);
        self.next = self.order.len().min(self.next.saturating_add(skipped));
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let batches = (self.order.len() - self.next).div_ceil(self.batch_size);
        (batches, Some(batches))
    }
}

impl ExactSizeIterator for Batches<'_> {}

impl FusedIterator for Batches<'_> {}
