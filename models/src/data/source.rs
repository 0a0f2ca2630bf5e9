//! Where a training run's samples come from: the [`DataSource`] trait the
//! [`Trainer`](crate::train::Trainer) draws batches through, and [`InMemory`], samples
//! held in memory with class labels or target values. MNIST's [`Dataset`] is one too.

use super::mnist::Dataset;
use ringtrain_runtime::{Device, Error, Result, Tensor};

/// `len` samples, any of which can be put into a batch in any order. A trainer draws a
/// seeded order of the samples each epoch and asks for the batch of the rows each replica
/// (and each micro-batch) computes, from the replica's own thread: `batch` must be cheap
/// and deterministic, and may run on several threads at once.
pub trait DataSource: Sync {
    /// What a loss function reads: host data, which the loss uploads to its device.
    type Batch;

    /// Samples in one epoch.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples `indices` (each below `len`), in that order.
    fn batch(&self, indices: &[usize]) -> Result<Self::Batch>;
}

/// What a sample is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One class per sample, each below `classes` (a classifier's labels).
    Classes { labels: Vec<u32>, classes: usize },
    /// `dims` values per sample (a regression's targets).
    Values { values: Vec<f32>, dims: Vec<usize> },
}

/// Samples in memory: inputs of any shape per sample (`sample_dims`), and targets.
///
/// ```
/// use ringtrain_models::data::{DataSource, InMemory};
/// use ringtrain_runtime::Device;
///
/// # fn main() -> ringtrain_runtime::Result<()> {
/// // Four samples of 2 features, a value to regress to for each.
/// let data = InMemory::regression(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &[2], vec![1.0, 5.0, 9.0, 13.0], &[1])?;
/// let batch = data.batch(&[3, 0])?;
/// assert_eq!(batch.inputs(&Device::cpu())?.to_vec()?, [6.0, 7.0, 0.0, 1.0]);
/// assert_eq!(batch.targets(&Device::cpu())?.dims(), &[2, 1]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct InMemory {
    inputs: Vec<f32>,
    sample_dims: Vec<usize>,
    targets: Targets,
    len: usize,
}

impl InMemory {
    /// Samples of `sample_dims` inputs each (row-major, one after another) with a class
    /// label each, below `classes`.
    pub fn classification(
        inputs: Vec<f32>,
        sample_dims: &[usize],
        labels: Vec<u32>,
        classes: usize,
    ) -> Result<Self> {
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::InvalidArgument(format!(
                "InMemory: label {l} of sample {i} is not a class below {classes}"
            )));
        }
        let len = labels.len();
        Self::new(
            inputs,
            sample_dims,
            Targets::Classes { labels, classes },
            len,
        )
    }

    /// Samples of `sample_dims` inputs each with `target_dims` target values each.
    pub fn regression(
        inputs: Vec<f32>,
        sample_dims: &[usize],
        targets: Vec<f32>,
        target_dims: &[usize],
    ) -> Result<Self> {
        let per: usize = target_dims.iter().product();
        if per == 0 || !targets.len().is_multiple_of(per) {
            return Err(Error::InvalidArgument(format!(
                "InMemory: {} target values do not make whole samples of {target_dims:?}",
                targets.len()
            )));
        }
        let len = targets.len() / per;
        let targets = Targets::Values {
            values: targets,
            dims: target_dims.to_vec(),
        };
        Self::new(inputs, sample_dims, targets, len)
    }

    fn new(inputs: Vec<f32>, sample_dims: &[usize], targets: Targets, len: usize) -> Result<Self> {
        let per: usize = sample_dims.iter().product();
        if per == 0 || inputs.len() != len.saturating_mul(per) {
            return Err(Error::InvalidArgument(format!(
                "InMemory: {} input values are not {len} samples of {sample_dims:?}",
                inputs.len()
            )));
        }
        Ok(Self {
            inputs,
            sample_dims: sample_dims.to_vec(),
            targets,
            len,
        })
    }

    pub fn sample_dims(&self) -> &[usize] {
        &self.sample_dims
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The first `n` samples and the rest (a validation split).
    pub fn split_at(&self, n: usize) -> Result<(InMemory, InMemory)> {
        if n > self.len {
            return Err(Error::InvalidArgument(format!(
                "InMemory: cannot split {} samples at {n}",
                self.len
            )));
        }
        let part = |range: std::ops::Range<usize>| self.subset(range);
        Ok((part(0..n), part(n..self.len)))
    }

    fn subset(&self, range: std::ops::Range<usize>) -> InMemory {
        let per: usize = self.sample_dims.iter().product();
        let targets = match &self.targets {
            Targets::Classes { labels, classes } => Targets::Classes {
                labels: labels[range.clone()].to_vec(),
                classes: *classes,
            },
            Targets::Values { values, dims } => {
                let t: usize = dims.iter().product();
                Targets::Values {
                    values: values[range.start * t..range.end * t].to_vec(),
                    dims: dims.clone(),
                }
            }
        };
        InMemory {
            inputs: self.inputs[range.start * per..range.end * per].to_vec(),
            sample_dims: self.sample_dims.clone(),
            targets,
            len: range.len(),
        }
    }
}

impl DataSource for InMemory {
    type Batch = InMemoryBatch;

    fn len(&self) -> usize {
        self.len
    }

    fn batch(&self, indices: &[usize]) -> Result<InMemoryBatch> {
        let per: usize = self.sample_dims.iter().product();
        let gather = |values: &[f32], per: usize| -> Result<Vec<f32>> {
            let mut out = Vec::with_capacity(indices.len() * per);
            for &i in indices {
                let sample = values.get(i * per..(i + 1) * per).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "InMemory: sample {i} asked for, there are {}",
                        self.len
                    ))
                })?;
                out.extend_from_slice(sample);
            }
            Ok(out)
        };
        let inputs = gather(&self.inputs, per)?;
        let mut input_dims = vec![indices.len()];
        input_dims.extend(&self.sample_dims);
        let (labels, targets, target_dims) = match &self.targets {
            Targets::Classes { labels, .. } => (
                indices.iter().map(|&i| labels[i]).collect(),
                Vec::new(),
                Vec::new(),
            ),
            Targets::Values { values, dims } => {
                let mut target_dims = vec![indices.len()];
                target_dims.extend(dims);
                (
                    Vec::new(),
                    gather(values, dims.iter().product())?,
                    target_dims,
                )
            }
        };
        Ok(InMemoryBatch {
            inputs,
            input_dims,
            labels,
            targets,
            target_dims,
        })
    }
}

/// A batch of [`InMemory`] samples (or of a [`Dataset`]'s images), on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemoryBatch {
    /// Row-major inputs of shape `input_dims`: `[samples, sample dims..]`.
    pub inputs: Vec<f32>,
    pub input_dims: Vec<usize>,
    /// One class per sample (classification), or empty.
    pub labels: Vec<u32>,
    /// Target values of shape `target_dims` (regression), or empty.
    pub targets: Vec<f32>,
    pub target_dims: Vec<usize>,
}

impl InMemoryBatch {
    /// Samples in the batch.
    pub fn len(&self) -> usize {
        self.input_dims[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inputs as a tensor on `device`, `[samples, sample dims..]`.
    pub fn inputs(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.inputs, self.input_dims.clone(), device)
    }

    /// The target values as a tensor on `device`; an error for a classification batch.
    pub fn targets(&self, device: &Device) -> Result<Tensor> {
        if self.target_dims.is_empty() {
            return Err(Error::InvalidArgument(
                "this batch holds class labels, not target values: use `labels`".into(),
            ));
        }
        Tensor::from_slice(&self.targets, self.target_dims.clone(), device)
    }

    /// The class labels; an error for a regression batch.
    pub fn labels(&self) -> Result<&[u32]> {
        if self.labels.is_empty() && !self.is_empty() {
            return Err(Error::InvalidArgument(
                "this batch holds target values, not class labels: use `targets`".into(),
            ));
        }
        Ok(&self.labels)
    }
}

/// MNIST (or any labelled image set) as flat rows of `rows * cols` normalised pixels.
impl DataSource for Dataset {
    type Batch = InMemoryBatch;

    fn len(&self) -> usize {
        self.len
    }

    fn batch(&self, indices: &[usize]) -> Result<InMemoryBatch> {
        let features = self.features();
        let mut inputs = Vec::with_capacity(indices.len() * features);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let image = self
                .images
                .get(i * features..(i + 1) * features)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!("sample {i} asked for, there are {}", self.len))
                })?;
            inputs.extend_from_slice(image);
            labels.push(self.labels[i]);
        }
        Ok(InMemoryBatch {
            inputs,
            input_dims: vec![indices.len(), features],
            labels,
            targets: Vec::new(),
            target_dims: Vec::new(),
        })
    }
}

/// One member's part of a bag (bagging: `members` models, each trained on its own part
/// of the data, with no communication, whose predictions are then averaged): the
/// samples at positions `member, member + members, ..` of one seeded shuffle of `data`.
/// The members' parts are disjoint and together hold every sample; a part's size is
/// `len / members`, rounded up for the first `len % members` members.
pub struct Shard<'a, D> {
    data: &'a D,
    indices: Vec<usize>,
}

impl<'a, D: DataSource> Shard<'a, D> {
    /// Member `member` (from 0) of `members`; every member must use the same `seed`.
    pub fn new(data: &'a D, member: usize, members: usize, seed: u64) -> Result<Self> {
        if members == 0 || member >= members {
            return Err(Error::InvalidArgument(format!(
                "a bag member is one of the members: got member {member} of {members}"
            )));
        }
        if data.len() < members {
            return Err(Error::InvalidArgument(format!(
                "{} samples cannot be shared among {members} bag members",
                data.len()
            )));
        }
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
            seed ^ 0xba6_0f5a,
        ));
        let indices = order.into_iter().skip(member).step_by(members).collect();
        Ok(Shard { data, indices })
    }

    /// The positions in `data` of this member's samples.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl<D: DataSource> DataSource for Shard<'_, D> {
    type Batch = D::Batch;

    fn len(&self) -> usize {
        self.indices.len()
    }

    fn batch(&self, indices: &[usize]) -> Result<D::Batch> {
        let mapped: Vec<usize> = indices.iter().map(|&i| self.indices[i]).collect();
        self.data.batch(&mapped)
    }
}
