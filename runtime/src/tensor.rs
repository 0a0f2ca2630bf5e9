//! The user-facing tensor: an immutable, contiguous, row-major array on a device, of
//! element type [`DType`] (f32 values, or u32 indices, labels and masks), which remembers
//! the op that made it when it depends on a trainable [`crate::Var`].

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap, Storage};
use crate::{Device, Error, Result, Shape};
use rand::Rng as _;
use rand_distr::{Distribution, Normal};
use ringtrain_kernels::{Backend, DType};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The random number generator every initializer takes: ChaCha8, so a seed gives the same
/// numbers on every platform and release.
pub type Rng = rand_chacha::ChaCha8Rng;

/// A seeded [`Rng`].
pub fn rng_from_seed(seed: u64) -> Rng {
    rand::SeedableRng::seed_from_u64(seed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A cheap-to-clone handle to an n-dimensional array.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) id: TensorId,
    pub(crate) storage: Arc<RwLock<Storage>>,
    pub(crate) shape: Shape,
    pub(crate) device: Device,
    pub(crate) dtype: DType,
    /// For u32 tensors, a bound every element is known to be below (from the host data,
    /// or the op that made it), so indices are range-checked without reading them back.
    /// `None` when nothing is known.
    pub(crate) bound: Option<u64>,
    /// How this tensor was computed, kept only when gradients must flow through it.
    pub(crate) op: Option<Op>,
    /// A trainable leaf: gradients are collected for it.
    pub(crate) is_var: bool,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` without recording ops for backward (evaluation, and the backward pass itself).
pub fn no_grad<T>(f: impl FnOnce() -> T) -> T {
    with_grad(false, f)
}

/// Runs `f` recording ops for backward or not, as `enabled` says, whatever the thread
/// was doing: what work handed to another thread runs under, so that it records as its
/// caller would. The mode is per thread, and a pool thread that steals a job while it
/// waits inside a `no_grad` region of its own would otherwise run the job without
/// recording.
pub fn with_grad<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    let prev = GRAD_ENABLED.with(|g| g.replace(enabled));
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            GRAD_ENABLED.with(|g| g.set(self.0));
        }
    }
    let _restore = Restore(prev);
    f()
}

/// Whether ops on this thread are recorded for backward (not inside [`no_grad`]).
pub fn grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

impl Tensor {
    pub(crate) fn from_storage(
        storage: Storage,
        shape: Shape,
        device: Device,
        op: Option<Op>,
    ) -> Tensor {
        Tensor::from_storage_typed(storage, shape, device, DType::F32, None, op)
    }

    pub(crate) fn from_storage_typed(
        storage: Storage,
        shape: Shape,
        device: Device,
        dtype: DType,
        bound: Option<u64>,
        op: Option<Op>,
    ) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::next(),
            storage: Arc::new(RwLock::new(storage)),
            shape,
            device,
            dtype,
            bound,
            op: op.filter(|_| grad_enabled() && dtype == DType::F32),
            is_var: false,
        }))
    }

    pub(crate) fn new_var(storage: Storage, shape: Shape, device: Device) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::next(),
            storage: Arc::new(RwLock::new(storage)),
            shape,
            device,
            dtype: DType::F32,
            bound: None,
            op: None,
            is_var: true,
        }))
    }

    /// A tensor holding `data` (row-major) with the given shape.
    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::InvalidShape {
                op: "from_vec",
                reason: format!("{} values cannot fill shape {shape}", data.len()),
            });
        }
        let storage = on_device!(device, b => wrap(b, b.upload(&data)?));
        Ok(Tensor::from_storage(storage, shape, device.clone(), None))
    }

    pub fn from_slice(data: &[f32], shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A one-element tensor of shape `[]`.
    pub fn scalar(value: f32, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], Shape::scalar(), device)
    }

    pub fn full(value: f32, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let storage = on_device!(device, b => {
            let mut buf = b.alloc(shape.elem_count())?;
            b.fill(&mut buf, value)?;
            wrap(b, buf)
        });
        Ok(Tensor::from_storage(storage, shape, device.clone(), None))
    }

    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, device)
    }

    pub fn ones(shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, device)
    }

    /// Samples from N(mean, std^2).
    pub fn randn(
        mean: f32,
        std: f32,
        shape: impl Into<Shape>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        if !(std.is_finite() && std >= 0.0 && mean.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "randn needs a finite mean and std >= 0, got mean {mean}, std {std}"
            )));
        }
        let normal = Normal::new(mean, std)
            .map_err(|e| Error::InvalidArgument(format!("randn(mean {mean}, std {std}): {e}")))?;
        let data = (0..shape.elem_count())
            .map(|_| normal.sample(rng))
            .collect();
        Tensor::from_vec(data, shape, device)
    }

    /// Samples uniformly from `[lo, hi)`.
    pub fn rand_uniform(
        lo: f32,
        hi: f32,
        shape: impl Into<Shape>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Tensor> {
        if !(lo.is_finite() && hi.is_finite() && (hi - lo).is_finite() && lo < hi) {
            return Err(Error::InvalidArgument(format!(
                "rand_uniform needs finite lo < hi with a finite width, got [{lo}, {hi})"
            )));
        }
        let shape = shape.into();
        let data = (0..shape.elem_count())
            .map(|_| rng.random_range(lo..hi))
            .collect();
        Tensor::from_vec(data, shape, device)
    }

    pub fn id(&self) -> TensorId {
        self.0.id
    }

    pub fn shape(&self) -> &Shape {
        &self.0.shape
    }

    pub fn dims(&self) -> &[usize] {
        self.0.shape.dims()
    }

    pub fn rank(&self) -> usize {
        self.0.shape.rank()
    }

    pub fn elem_count(&self) -> usize {
        self.0.shape.elem_count()
    }

    pub fn device(&self) -> &Device {
        &self.0.device
    }

    /// Whether gradients flow through this tensor to some [`crate::Var`].
    pub fn tracks_grad(&self) -> bool {
        self.0.is_var || self.0.op.is_some()
    }

    pub fn is_var(&self) -> bool {
        self.0.is_var
    }

    /// The same values, cut off from the graph: no gradient flows back through it.
    pub fn detach(&self) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::next(),
            storage: self.0.storage.clone(),
            shape: self.0.shape.clone(),
            device: self.0.device.clone(),
            dtype: self.0.dtype,
            bound: self.0.bound,
            op: None,
            is_var: false,
        }))
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    /// An error unless the tensor holds `dtype` (ops call it on their operands).
    pub fn expect_dtype(&self, dtype: DType, op: &'static str) -> Result<()> {
        if self.dtype() == dtype {
            Ok(())
        } else {
            Err(Error::DTypeMismatch {
                op,
                expected: dtype,
                got: self.dtype(),
            })
        }
    }

    /// Copies the values to host memory (a sync point on asynchronous devices); those of
    /// an f16 or bf16 tensor widened to f32 (exactly).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        if self.quantization().is_some() {
            return self.dequantized()?.to_vec();
        }
        if self.dtype().half().is_some() {
            return self.to_dtype(DType::F32)?.to_vec();
        }
        self.expect_dtype(DType::F32, "to_vec")?;
        let storage = self.read();
        on_device!(&self.0.device, b => Ok(b.download(buf(b, &storage)?)?))
    }

    /// The values of several tensors in host memory, each as [`Tensor::to_vec`] gives
    /// it. Tensors on one GPU are read back together, with one synchronization where
    /// `to_vec` waits once per tensor.
    pub fn to_vecs(tensors: &[&Tensor]) -> Result<Vec<Vec<f32>>> {
        let Some(first) = tensors.first() else {
            return Ok(Vec::new());
        };
        if !tensors.iter().all(|t| t.device().same_kind(first.device())) {
            return tensors.iter().map(|t| t.to_vec()).collect();
        }
        // f32 views of 16-bit and quantized tensors (the ops on the device), so that one
        // readback serves them all.
        let wide: Vec<Tensor> = tensors
            .iter()
            .map(|t| {
                if t.quantization().is_some() {
                    t.dequantized()
                } else if t.dtype().half().is_some() {
                    t.to_dtype(DType::F32)
                } else {
                    t.expect_dtype(DType::F32, "to_vecs").map(|_| (*t).clone())
                }
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = wide.iter().collect();
        let (guards, lock_of) = Tensor::read_all(&refs);
        on_device!(first.device(), b => {
            let bufs = lock_of
                .iter()
                .map(|&i| buf(b, &guards[i]))
                .collect::<Result<Vec<_>>>()?;
            Ok(b.download_many(&bufs)?)
        })
    }

    /// The same values on `device` (a detached copy through host memory, or `self` when
    /// it already lives there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device().same_kind(device) {
            return Ok(self.clone());
        }
        match self.dtype() {
            DType::F32 => Tensor::from_vec(self.to_vec()?, self.shape().clone(), device),
            DType::U32 => Tensor::from_u32(self.to_vec_u32()?, self.shape().clone(), device),
            // Widened and narrowed again: exact.
            half => Tensor::from_vec(self.to_vec()?, self.shape().clone(), device)?.to_dtype(half),
        }
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape {
                op: "to_scalar",
                reason: format!("expected one element, got shape {}", self.shape()),
            });
        }
        Ok(self.to_vec()?[0])
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Storage> {
        // A writer only panics mid-update on a bug in a kernel; the data is still sound f32s.
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Read locks on the storages of `tensors`, each storage locked once (a second read
    /// lock from one thread can wait behind a writer), and which lock serves each tensor.
    pub(crate) fn read_all<'a>(
        tensors: &[&'a Tensor],
    ) -> (Vec<RwLockReadGuard<'a, Storage>>, Vec<usize>) {
        let mut owners: Vec<&Tensor> = Vec::new();
        let mut guards = Vec::new();
        let map = tensors
            .iter()
            .map(|t| match owners.iter().position(|o| o.shares_storage(t)) {
                Some(i) => i,
                None => {
                    owners.push(t);
                    guards.push(t.read());
                    guards.len() - 1
                }
            })
            .collect();
        (guards, map)
    }

    pub(crate) fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// A tensor sharing this one's memory under another shape (same element count).
    pub(crate) fn share_storage(&self, shape: Shape, op: Option<Op>) -> Tensor {
        Tensor(Arc::new(Inner {
            id: TensorId::next(),
            storage: self.0.storage.clone(),
            shape,
            device: self.0.device.clone(),
            dtype: self.0.dtype,
            bound: self.0.bound,
            op: op.filter(|_| grad_enabled()),
            is_var: false,
        }))
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.dtype() {
            DType::F32 => write!(f, "Tensor{}[{:?}]", self.shape(), self.device()),
            dtype => write!(f, "Tensor{}[{dtype}, {:?}]", self.shape(), self.device()),
        }
    }
}
