//! Checkpoints in the safetensors format: named f32 tensors (a model's parameters and
//! buffers by their module names, `"0.weight"` as PyTorch's `Sequential` names them, and
//! whatever else the caller adds) and string metadata, which also holds the positions of
//! the model's random streams (`ringtrain.rng.{name}`). `safetensors.torch.load_file`
//! reads them as they are, and a PyTorch module of the same structure takes them with
//! `load_state_dict(strict=True)`.
//!
//! Files are written atomically (a temporary file in the same folder, fsync, rename, fsync
//! of the folder), so a crash at any moment leaves the previous checkpoint whole. Reading
//! checks everything before trusting it: a truncated or corrupt file, a header that lies
//! about sizes (capped by the safetensors crate, checked against the file's length), a
//! dtype other than F32, F16 or BF16, or tensors that do not match the model are errors,
//! never panics or huge allocations.
//!
//! F16 and BF16 tensors (a half-precision export, [`Checkpoint::save_as`], or a file
//! PyTorch wrote from a half model) load as the f32 values they stand for, so a half
//! checkpoint restores into an f32 model.
//!
//! Int8 weights ([`Checkpoint::quantize`]) are an I8 tensor `name` beside an F32 tensor
//! `name_scale` of one scale per row of its first dimension (the layout of Hugging Face's
//! compressed-tensors `weight_scale`): they too load as the f32 values they stand for,
//! and [`Checkpoint::int8`] gives the int8 values themselves.
//!
//! ```
//! use ringtrain_models::checkpoint::Checkpoint;
//! use ringtrain_models::zoo::{mlp, Activation};
//! use ringtrain_runtime::{rng_from_seed, Device};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("mlp.safetensors");
//! let trained = mlp(4, &[8], 2, Activation::Relu, &Device::cpu(), &mut rng_from_seed(1))?;
//! let mut checkpoint = Checkpoint::of_module(&trained)?;
//! checkpoint.set_metadata("epoch", "10");
//! checkpoint.save(&path)?;
//!
//! let fresh = mlp(4, &[8], 2, Activation::Relu, &Device::cpu(), &mut rng_from_seed(2))?;
//! let loaded = Checkpoint::load(&path)?;
//! loaded.restore(&fresh, "")?; // every parameter, by name and shape, or an error
//! assert_eq!(loaded.metadata("epoch"), Some("10"));
//! # Ok(())
//! # }
//! ```

mod dir;

pub use dir::{CheckpointDir, Saved};

use crate::nn::ModuleState;
use ringtrain_runtime::optim::{Optimizer, StateTensor};
use ringtrain_runtime::{Int8Rows, Precision, Quantization, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What can go wrong with a checkpoint, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write checkpoint {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} is not a valid safetensors checkpoint: {reason}")]
    Corrupt { origin: String, reason: String },
    #[error(
        "{origin}: tensor `{name}` is {dtype}; ringtrain checkpoints hold F32, F16 or BF16 tensors"
    )]
    Dtype {
        origin: String,
        name: String,
        dtype: String,
    },
    #[error("the checkpoint does not fit the model: {0}")]
    Mismatch(String),
    #[error(transparent)]
    Tensor(#[from] ringtrain_runtime::Error),
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

/// Into the library's one error type, so `?` works in a function returning
/// `ringtrain::Result`: a tensor error comes back as itself, the rest as
/// [`Error::Other`](ringtrain_runtime::Error::Other) (downcast it to match on the kind).
impl From<CheckpointError> for ringtrain_runtime::Error {
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Tensor(e) => e,
            e => ringtrain_runtime::Error::other(e),
        }
    }
}

/// Metadata key prefix of random-stream positions: `ringtrain.rng.model.3.masks`.
const RNG_KEY: &str = "ringtrain.rng.";

/// Named tensors on the host (their values as f32, each stored as f32, f16 or bf16), and
/// string metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Checkpoint {
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// The 16-bit format a tensor is stored in, for those not stored as f32.
    formats: BTreeMap<String, Precision>,
    /// The int8 values of the tensors stored as int8 (whose `tensors` entry holds the
    /// values they stand for).
    int8: BTreeMap<String, Int8Rows>,
    metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn new() -> Self {
        Self::default()
    }

    /// The parameters and buffers of `model`, by name, copied to the host, and the
    /// positions of its random streams.
    pub fn of_module(model: &(impl ModuleState + ?Sized)) -> Result<Self> {
        let mut c = Self::new();
        c.insert_module("", model)?;
        Ok(c)
    }

    /// Adds `model`'s parameters and buffers under `prefix` (`"model."`, say, beside an
    /// optimizer's state under `"optimizer."`), and the positions of its random streams
    /// as metadata.
    pub fn insert_module(
        &mut self,
        prefix: &str,
        model: &(impl ModuleState + ?Sized),
    ) -> Result<()> {
        for (name, var) in model.named_parameters() {
            self.insert(&format!("{prefix}{name}"), var.as_tensor())?;
        }
        for (name, buffer) in model.named_buffers() {
            self.insert(&format!("{prefix}{name}"), &buffer.get())?;
        }
        for (name, stream) in model.named_rng_streams() {
            self.set_metadata(
                &format!("{RNG_KEY}{prefix}{name}"),
                stream.position().to_string(),
            );
        }
        Ok(())
    }

    /// Adds (or replaces) tensor `name`, copied to the host; an f16 or bf16 tensor is
    /// stored in its format (safetensors F16 or BF16), any other as f32.
    pub fn insert(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        self.insert_values(name, tensor.dims().to_vec(), tensor.to_vec()?)?;
        if let Some(p) = tensor.dtype().half() {
            self.formats.insert(name.to_string(), p);
        }
        Ok(())
    }

    /// The format tensor `name` is stored in (F32 unless it came from an f16 or bf16
    /// tensor or file).
    pub fn format(&self, name: &str) -> Option<Precision> {
        self.tensors
            .contains_key(name)
            .then(|| self.formats.get(name).copied().unwrap_or(Precision::F32))
    }

    /// Tensor `name` on `device`, in the dtype it is stored in (an f16 or bf16 tensor for
    /// a 16-bit one, whose values the format holds exactly).
    pub fn tensor(&self, name: &str, device: &ringtrain_runtime::Device) -> Result<Tensor> {
        let (shape, values) = self
            .get(name)
            .ok_or_else(|| CheckpointError::Mismatch(format!("no tensor `{name}`")))?;
        let t = Tensor::from_slice(values, shape.to_vec(), device)?;
        Ok(match self.formats.get(name) {
            Some(p) => t.to_dtype((*p).into())?,
            None => t,
        })
    }

    /// Adds (or replaces) tensor `name` from its shape and row-major values, stored as
    /// f32.
    pub fn insert_values(&mut self, name: &str, shape: Vec<usize>, values: Vec<f32>) -> Result<()> {
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if count != Some(values.len()) {
            return Err(CheckpointError::Mismatch(format!(
                "tensor `{name}` of shape {shape:?} cannot hold {} values",
                values.len()
            )));
        }
        self.tensors.insert(name.to_string(), (shape, values));
        self.formats.remove(name);
        self.int8.remove(name);
        Ok(())
    }

    /// Adds (or replaces) tensor `name` of `shape` stored as the int8 weight `w`, whose
    /// rows are `shape[0]` and columns the rest.
    pub fn insert_int8(&mut self, name: &str, shape: Vec<usize>, w: Int8Rows) -> Result<()> {
        let cols = shape
            .iter()
            .skip(1)
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        if shape.len() < 2 || shape[0] != w.rows() || cols != Some(w.cols()) {
            return Err(CheckpointError::Mismatch(format!(
                "tensor `{name}` of shape {shape:?} cannot hold an int8 weight of {}x{}",
                w.rows(),
                w.cols()
            )));
        }
        self.insert_values(name, shape, w.dequantize())?;
        self.int8.insert(name.to_string(), w);
        Ok(())
    }

    /// The int8 values and scales of tensor `name`, if it is stored as int8.
    pub fn int8(&self, name: &str) -> Option<&Int8Rows> {
        self.int8.get(name)
    }

    /// The compact format tensor `name` is stored in: int8, f16 or bf16, or `None` for
    /// f32 (and for a tensor it does not have).
    pub fn quantization(&self, name: &str) -> Option<Quantization> {
        if self.int8.contains_key(name) {
            return Some(Quantization::Int8);
        }
        match self.formats.get(name)? {
            Precision::F16 => Some(Quantization::F16),
            Precision::Bf16 => Some(Quantization::Bf16),
            Precision::F32 => None,
        }
    }

    /// Stores each tensor of `names` in `format` (int8 row by row; f16 or bf16 rounded
    /// to nearest), in place: what `save` then writes, and the values they now stand for.
    /// A value the format cannot hold is an error naming the tensor, and nothing after
    /// it is changed.
    pub fn quantize<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        format: Quantization,
    ) -> Result<()> {
        for name in names {
            let (shape, values) = self
                .tensors
                .get(name)
                .ok_or_else(|| {
                    CheckpointError::Mismatch(format!("no tensor `{name}` to quantize"))
                })?
                .clone();
            match format.half() {
                Some(precision) => {
                    encode(name, &values, precision)?;
                    let rounded = values.iter().map(|&v| precision.round(v)).collect();
                    self.insert_values(name, shape, rounded)?;
                    self.formats.insert(name.to_string(), precision);
                }
                None => {
                    let rows = shape.first().copied().unwrap_or(0);
                    let w = Int8Rows::quantize(&values, rows, values.len() / rows.max(1))
                        .map_err(|e| CheckpointError::Mismatch(format!("tensor `{name}`: {e}")))?;
                    self.insert_int8(name, shape, w)?;
                }
            }
        }
        Ok(())
    }

    /// Tensor `name`: its shape and values.
    pub fn get(&self, name: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .get(name)
            .map(|(s, v)| (s.as_slice(), v.as_slice()))
    }

    /// The first tensor, by name, holding an infinity or NaN, if any: a state not worth
    /// saving (an optimizer's moments can overflow while the parameters stay finite).
    pub fn first_nonfinite(&self) -> Option<&str> {
        self.tensors
            .iter()
            .find(|(_, (_, values))| values.iter().any(|v| !v.is_finite()))
            .map(|(name, _)| name.as_str())
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Adds an optimizer's state (see [`Optimizer::state`]) under `prefix`, e.g.
    /// `"optimizer."`.
    pub fn insert_optimizer(&mut self, prefix: &str, optimizer: &dyn Optimizer) -> Result<()> {
        self.insert_state(prefix, optimizer.state()?)
    }

    /// Adds named host tensors (an optimizer's state, say) under `prefix`.
    pub fn insert_state(&mut self, prefix: &str, state: Vec<StateTensor>) -> Result<()> {
        for (name, shape, values) in state {
            self.insert_values(&format!("{prefix}{name}"), shape, values)?;
        }
        Ok(())
    }

    /// The tensors under `prefix`, named without it, as [`Checkpoint::insert_state`]
    /// took them.
    pub fn state(&self, prefix: &str) -> Vec<StateTensor> {
        self.tensors
            .range(prefix.to_string()..)
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(name, (shape, values))| {
                (
                    name[prefix.len()..].to_string(),
                    shape.clone(),
                    values.clone(),
                )
            })
            .collect()
    }

    /// Loads the tensors under `prefix` into `optimizer` as its state (all or nothing).
    pub fn restore_optimizer(&self, prefix: &str, optimizer: &mut dyn Optimizer) -> Result<()> {
        optimizer
            .load_state(&self.state(prefix))
            .map_err(|e| CheckpointError::Mismatch(e.to_string()))
    }

    pub fn set_metadata(&mut self, key: &str, value: impl Into<String>) {
        self.metadata.insert(key.to_string(), value.into());
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Copies the checkpoint's tensors under `prefix` into `model`'s parameters and
    /// buffers, by name, and sets its random streams where the checkpoint has their
    /// positions (a file from elsewhere may have none). Every parameter and buffer must
    /// be there with its shape, and every tensor under `prefix` must be one of them: on
    /// any mismatch nothing is changed and the error lists what differs.
    pub fn restore(&self, model: &(impl ModuleState + ?Sized), prefix: &str) -> Result<()> {
        let params = model.named_parameters();
        let buffers = model.named_buffers();
        let expected: Vec<(String, Vec<usize>)> = params
            .iter()
            .map(|(n, v)| (format!("{prefix}{n}"), v.dims().to_vec()))
            .chain(
                buffers
                    .iter()
                    .map(|(n, b)| (format!("{prefix}{n}"), b.dims())),
            )
            .collect();
        let mut problems = Vec::new();
        for (name, dims) in &expected {
            match self.tensors.get(name) {
                None => problems.push(format!("`{name}` is missing")),
                Some((shape, _)) if shape != dims => problems.push(format!(
                    "`{name}` has shape {shape:?}, the model's is {dims:?}"
                )),
                Some(_) => {}
            }
        }
        let known: std::collections::HashSet<&str> =
            expected.iter().map(|(n, _)| n.as_str()).collect();
        for name in self.tensors.keys() {
            if name.starts_with(prefix) && !known.contains(name.as_str()) {
                problems.push(format!(
                    "`{name}` is not a parameter or buffer of the model"
                ));
            }
        }
        let mut positions = Vec::new();
        for (name, stream) in model.named_rng_streams() {
            let key = format!("{RNG_KEY}{prefix}{name}");
            match self.metadata(&key).map(str::parse::<u64>) {
                None => {}
                Some(Ok(p)) => positions.push((stream, p)),
                Some(Err(_)) => problems.push(format!("metadata `{key}` is not a position")),
            }
        }
        if !problems.is_empty() {
            return Err(CheckpointError::Mismatch(problems.join("; ")));
        }
        let value = |name: &str, device: &ringtrain_runtime::Device| -> Result<Tensor> {
            let (shape, values) = &self.tensors[&format!("{prefix}{name}")];
            Ok(Tensor::from_slice(values, shape.clone(), device)?)
        };
        for (name, var) in &params {
            var.set(&value(name, var.device())?)?;
        }
        for (name, buffer) in &buffers {
            let device = buffer.get().device().clone();
            buffer.set(&value(name, &device)?)?;
        }
        for (stream, position) in positions {
            stream.set_position(position);
        }
        Ok(())
    }

    /// The safetensors bytes of this checkpoint, each tensor in the format it is stored
    /// in ([`Checkpoint::format`]).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.serialize(|name| self.formats.get(name).copied().unwrap_or(Precision::F32))
    }

    /// The safetensors bytes with every tensor stored as `precision` (F32, F16 or BF16,
    /// each value rounded to nearest): half the size for a 16-bit format. A value that
    /// the format cannot hold (beyond f16's 65504, or rounding to infinity in bf16) is an
    /// error naming the tensor, not an infinity in the file.
    pub fn to_bytes_as(&self, precision: Precision) -> Result<Vec<u8>> {
        self.serialize(|_| precision)
    }

    /// Int8 tensors are written as int8 (with their scales) whatever `format` says.
    fn serialize(&self, format: impl Fn(&str) -> Precision) -> Result<Vec<u8>> {
        let dtype = |p: Precision| match p {
            Precision::F32 => Dtype::F32,
            Precision::F16 => Dtype::F16,
            Precision::Bf16 => Dtype::BF16,
        };
        // (name, dtype, shape, bytes) of every tensor the file holds.
        let mut entries: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> =
            Vec::with_capacity(self.tensors.len());
        for (name, (shape, v)) in &self.tensors {
            if let Some(w) = self.int8.get(name) {
                let scale_name = format!("{name}{SCALE_SUFFIX}");
                if self.tensors.contains_key(&scale_name) {
                    return Err(CheckpointError::Mismatch(format!(
                        "int8 tensor `{name}` needs the name `{scale_name}` for its scales, \
                         and the checkpoint has a tensor of that name"
                    )));
                }
                let values = w.values().iter().map(|&q| q as u8).collect();
                entries.push((name.clone(), Dtype::I8, shape.clone(), values));
                let scales = encode(&scale_name, w.scales(), Precision::F32)?;
                entries.push((scale_name, Dtype::F32, vec![w.rows()], scales));
                continue;
            }
            let p = format(name);
            entries.push((name.clone(), dtype(p), shape.clone(), encode(name, v, p)?));
        }
        if entries.is_empty() {
            return Ok(self.header_only());
        }
        let views = entries
            .iter()
            .map(|(name, dtype, shape, data)| {
                TensorView::new(*dtype, shape.clone(), data).map(|v| (name.as_str(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| CheckpointError::Mismatch(e.to_string()))?;
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Corrupt {
            origin: "a checkpoint being written".into(),
            reason: e.to_string(),
        })
    }

    /// The safetensors bytes of a checkpoint with no tensors: its header by hand, since
    /// `safetensors::serialize` 0.8 writes `{},"__metadata__":{..}}` for one (a leading
    /// `{}` and a stray comma), which no reader parses.
    fn header_only(&self) -> Vec<u8> {
        let mut header = serde_json::json!({});
        if !self.metadata.is_empty() {
            header["__metadata__"] = serde_json::json!(self.metadata);
        }
        let mut json = header.to_string().into_bytes();
        // The data that follows starts 8-byte aligned, the header padded with spaces.
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&json);
        bytes
    }

    /// Parses safetensors bytes; `origin` names them in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self> {
        let corrupt = |reason: String| CheckpointError::Corrupt {
            origin: origin.to_string(),
            reason,
        };
        let parsed = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
        let mut c = Self::new();
        for (name, view) in parsed.tensors() {
            let data = view.data();
            if let Some(weight) = name.strip_suffix(SCALE_SUFFIX) {
                if parsed.tensor(weight).is_ok_and(|w| w.dtype() == Dtype::I8) {
                    continue; // read with its int8 weight
                }
            }
            if view.dtype() == Dtype::I8 {
                let shape = view.shape().to_vec();
                let w = read_int8(&parsed, &name, &shape, data).map_err(corrupt)?;
                c.insert_int8(&name, shape, w)
                    .map_err(|e| corrupt(e.to_string()))?;
                continue;
            }
            let values = match view.dtype() {
                Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(CheckpointError::Dtype {
                        origin: origin.to_string(),
                        name,
                        dtype: format!("{other:?}"),
                    })
                }
            };
            c.insert_values(&name, view.shape().to_vec(), values)
                .map_err(|e| corrupt(e.to_string()))?;
            match view.dtype() {
                Dtype::F16 => c.formats.insert(name, Precision::F16),
                Dtype::BF16 => c.formats.insert(name, Precision::Bf16),
                _ => None,
            };
        }
        if let Some(m) = header.metadata() {
            c.metadata = m.clone().into_iter().collect();
        }
        Ok(c)
    }

    /// Writes the checkpoint to `path` atomically: a crash leaves either the old file or
    /// the new one, whole.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomically(path, |w| w.write_all(&bytes)).map_err(|source| CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// [`Checkpoint::save`] with every tensor stored as `precision` (see
    /// [`Checkpoint::to_bytes_as`]): a model exported in half the bytes. Keep training
    /// checkpoints f32: a resume from rounded weights is not the uninterrupted run.
    pub fn save_as(&self, path: &Path, precision: Precision) -> Result<()> {
        let bytes = self.to_bytes_as(precision)?;
        write_atomically(path, |w| w.write_all(&bytes)).map_err(|source| CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }
}

/// The suffix of an int8 tensor's scales: `fc1.weight_scale` beside `fc1.weight`.
pub const SCALE_SUFFIX: &str = "_scale";

/// The int8 weight `name` of a file: its values `data` and the scales beside it, checked.
fn read_int8(
    parsed: &SafeTensors,
    name: &str,
    shape: &[usize],
    data: &[u8],
) -> std::result::Result<Int8Rows, String> {
    let scale_name = format!("{name}{SCALE_SUFFIX}");
    let scales = parsed
        .tensor(&scale_name)
        .map_err(|_| format!("int8 tensor `{name}` has no `{scale_name}` scales beside it"))?;
    if scales.dtype() != Dtype::F32 {
        return Err(format!("`{scale_name}` is {:?}, not F32", scales.dtype()));
    }
    let rows = shape.first().copied().unwrap_or(0);
    if shape.len() < 2 || scales.shape() != [rows] {
        return Err(format!(
            "int8 tensor `{name}` of shape {shape:?} needs {rows} scales and two or more \
             dimensions; `{scale_name}` has shape {:?}",
            scales.shape()
        ));
    }
    let values: Vec<i8> = data.iter().map(|&b| b as i8).collect();
    let scales: Vec<f32> = scales
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let cols = values.len() / rows.max(1);
    Int8Rows::new(rows, cols, values, scales).map_err(|e| format!("int8 tensor `{name}`: {e}"))
}

/// `values` as little-endian bytes of `precision`, or an error naming `name` where a
/// finite value would not stay finite.
fn encode(name: &str, values: &[f32], precision: Precision) -> Result<Vec<u8>> {
    if let Some(x) = values
        .iter()
        .find(|x| x.is_finite() && !precision.round(**x).is_finite())
    {
        return Err(CheckpointError::Mismatch(format!(
            "tensor `{name}` holds {x}, which {precision} cannot (it would be infinite)"
        )));
    }
    Ok(match precision {
        Precision::F32 => values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Precision::F16 => values
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect(),
        Precision::Bf16 => values
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect(),
    })
}

/// Writes a file through `write`, atomically: into a temporary file beside `path`, synced
/// to disk, then renamed over `path` and the folder synced, so that readers (and a crash
/// at any moment) see the old file or the new one, never part of one. On an error the
/// temporary file is removed and `path` is untouched.
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself reaches the disk when the folder does (where the OS allows
        // opening a folder).
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
