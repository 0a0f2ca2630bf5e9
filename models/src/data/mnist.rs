//! MNIST: handwritten digits as normalised `f32` images and `u32` class labels.
//!
//! [`Mnist::load`] reads the four standard IDX files from a directory. It does not care how
//! many samples they hold, so the full 60k/10k set and the 8k/2k subset embedded in this
//! repository (`data/mnist-10k`) load through the same code.

use std::path::{Path, PathBuf};

use super::idx::{read_idx, IdxArray};
use super::DataError;

/// Mean pixel intensity of the MNIST training set, on a 0..=1 scale.
///
/// With [`MNIST_STD`] this is the normalisation used throughout the literature (and by
/// PyTorch's examples), so published hyper-parameters carry over unchanged.
pub const MNIST_MEAN: f32 = 0.1307;
/// Standard deviation of MNIST training pixel intensities, on a 0..=1 scale.
pub const MNIST_STD: f32 = 0.3081;
/// Digits 0 to 9.
pub const MNIST_CLASSES: usize = 10;

/// Maps a raw pixel byte to the value models see: `(p / 255 - MNIST_MEAN) / MNIST_STD`.
pub fn normalise_pixel(p: u8) -> f32 {
    (f32::from(p) / 255.0 - MNIST_MEAN) / MNIST_STD
}

/// A labelled image set held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len * rows * cols` normalised pixels, one image after another, each row-major.
    pub images: Vec<f32>,
    /// One class index per image, each `< num_classes`.
    pub labels: Vec<u32>,
    pub len: usize,
    pub rows: usize,
    pub cols: usize,
    pub num_classes: usize,
}

impl Dataset {
    /// Pixels per image.
    pub fn features(&self) -> usize {
        self.rows * self.cols
    }

    /// Builds a dataset from an IDX image array (`count x rows x cols`) and an IDX label
    /// array (`count`), normalising pixels with [`normalise_pixel`].
    pub fn from_idx(
        images: IdxArray,
        labels: IdxArray,
        num_classes: usize,
    ) -> Result<Dataset, DataError> {
        let &[len, rows, cols] = images.dims.as_slice() else {
            return Err(shape(format!(
                "images must be 3-d (count, rows, cols), got dims {:?}",
                images.dims
            )));
        };
        let &[label_count] = labels.dims.as_slice() else {
            return Err(shape(format!(
                "labels must be 1-d (count), got dims {:?}",
                labels.dims
            )));
        };
        if len != label_count {
            return Err(shape(format!("{len} images but {label_count} labels")));
        }
        // IdxArray's fields are public, so a hand-built one can disagree with its own dims.
        if Some(images.data.len()) != len.checked_mul(rows).and_then(|n| n.checked_mul(cols)) {
            return Err(shape(format!(
                "image dims {:?} do not match {} data bytes",
                images.dims,
                images.data.len()
            )));
        }
        if labels.data.len() != len {
            return Err(shape(format!(
                "label dims {:?} do not match {} data bytes",
                labels.dims,
                labels.data.len()
            )));
        }
        if let Some((index, &label)) = labels
            .data
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= num_classes)
        {
            return Err(DataError::LabelOutOfRange {
                index,
                label: u32::from(label),
                num_classes,
            });
        }

        // 256 possible inputs: a table avoids a divide per pixel on 47M pixels (full MNIST).
        let table: [f32; 256] = std::array::from_fn(|p| normalise_pixel(p as u8));
        Ok(Dataset {
            images: images.data.iter().map(|&p| table[usize::from(p)]).collect(),
            labels: labels.data.iter().map(|&l| u32::from(l)).collect(),
            len,
            rows,
            cols,
            num_classes,
        })
    }

    /// Checks the public fields agree with each other, so code that indexes by them (the
    /// batch loader) cannot go out of bounds on a hand-built dataset.
    pub(crate) fn check_consistent(&self) -> Result<(), DataError> {
        let pixels = self
            .len
            .checked_mul(self.rows)
            .and_then(|n| n.checked_mul(self.cols));
        if pixels != Some(self.images.len()) {
            return Err(shape(format!(
                "dataset of {} {}x{} images holds {} pixels",
                self.len,
                self.rows,
                self.cols,
                self.images.len()
            )));
        }
        if self.labels.len() != self.len {
            return Err(shape(format!(
                "dataset of {} images holds {} labels",
                self.len,
                self.labels.len()
            )));
        }
        Ok(())
    }
}

/// The MNIST training and test splits.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    pub train: Dataset,
    pub test: Dataset,
}

/// Accepted base names for one file; each is also tried with `.gz`. The dotted spelling is
/// what several mirrors (and Kaggle's copy) use.
struct Part {
    what: &'static str,
    names: [&'static str; 2],
}

const TRAIN_IMAGES: Part = Part {
    what: "MNIST training images",
    names: ["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
};
const TRAIN_LABELS: Part = Part {
    what: "MNIST training labels",
    names: ["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
};
const TEST_IMAGES: Part = Part {
    what: "MNIST test images",
    names: ["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
};
const TEST_LABELS: Part = Part {
    what: "MNIST test labels",
    names: ["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
};

impl Mnist {
    /// Loads MNIST from `dir`, which holds the four IDX files under their standard names,
    /// each optionally gzipped.
    pub fn load(dir: &Path) -> Result<Mnist, DataError> {
        // Without this a wrong path reads as "file not found" four names deep; the
        // directory itself is the more useful thing to name.
        std::fs::metadata(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let train = load_split(dir, &TRAIN_IMAGES, &TRAIN_LABELS)?;
        let test = load_split(dir, &TEST_IMAGES, &TEST_LABELS)?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(shape(format!(
                "training images are {}x{} but test images are {}x{}",
                train.rows, train.cols, test.rows, test.cols
            )));
        }
        Ok(Mnist { train, test })
    }
}

fn load_split(dir: &Path, images: &Part, labels: &Part) -> Result<Dataset, DataError> {
    let images = read_idx(&find(dir, images)?)?;
    let labels = read_idx(&find(dir, labels)?)?;
    Dataset::from_idx(images, labels, MNIST_CLASSES)
}

/// The first candidate name that exists; uncompressed first, as it is cheaper to read.
fn find(dir: &Path, part: &Part) -> Result<PathBuf, DataError> {
    let tried: Vec<String> = part
        .names
        .iter()
        .flat_map(|name| [name.to_string(), format!("{name}.gz")])
        .collect();
    match tried
        .iter()
        .map(|name| dir.join(name))
        .find(|p| p.is_file())
    {
        Some(path) => Ok(path),
        None => Err(DataError::MissingFile {
            dir: dir.to_path_buf(),
            what: part.what,
            tried,
        }),
    }
}

fn shape(detail: String) -> DataError {
    DataError::Shape { detail }
}
