//! The MNIST data layer against the embedded subset and against hand-built IDX files.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ringtrain_models::data::{
    normalise_pixel, parse_idx, read_idx, Batches, DataError, Dataset, IdxArray, Mnist,
    MNIST_CLASSES, MNIST_MEAN, MNIST_STD,
};

const EMBEDDED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mnist-10k");

const STANDARD_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// An unsigned-byte IDX file, header written out by hand.
fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    idx_bytes_typed(0x08, dims, data)
}

fn idx_bytes_typed(type_byte: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, type_byte, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(bytes).read_to_end(&mut out).unwrap();
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// `n` images of `rows x cols` whose pixels and labels are a function of the index.
fn synthetic_split(n: usize, rows: usize, cols: usize) -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| (i * 7 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let dims = [n as u32, rows as u32, cols as u32];
    (idx_bytes(&dims, &pixels), idx_bytes(&[n as u32], &labels))
}

/// Writes a loadable MNIST directory of small synthetic splits under the standard names.
fn write_synthetic_mnist(dir: &Path, train: usize, test: usize) {
    let (train_images, train_labels) = synthetic_split(train, 28, 28);
    let (test_images, test_labels) = synthetic_split(test, 28, 28);
    let files = [train_images, train_labels, test_images, test_labels];
    for (name, bytes) in STANDARD_NAMES.iter().zip(&files) {
        write(dir, name, bytes);
    }
}

/// A dataset whose sample `i` has label `i` and every pixel equal to `i`, so a batch
/// reveals exactly which samples it holds.
fn indexed_dataset(len: usize, features: usize) -> Dataset {
    Dataset {
        images: (0..len)
            .flat_map(|i| std::iter::repeat_n(i as f32, features))
            .collect(),
        labels: (0..len as u32).collect(),
        len,
        rows: 1,
        cols: features,
        num_classes: len,
    }
}

fn epoch_labels(dataset: &Dataset, batch_size: usize, seed: Option<u64>) -> Vec<u32> {
    Batches::new(dataset, batch_size, seed)
        .unwrap()
        .flat_map(|b| b.labels)
        .collect()
}

// ---- the embedded subset ----

#[test]
fn embedded_subset_loads_with_expected_shape_and_content() {
    let mnist = Mnist::load(Path::new(EMBEDDED)).unwrap();
    for (split, expected_len) in [(&mnist.train, 8000), (&mnist.test, 2000)] {
        assert_eq!(split.len, expected_len);
        assert_eq!((split.rows, split.cols), (28, 28));
        assert_eq!(split.features(), 784);
        assert_eq!(split.num_classes, MNIST_CLASSES);
        assert_eq!(split.images.len(), expected_len * 784);
        assert_eq!(split.labels.len(), expected_len);

        let mut histogram = [0usize; 10];
        for &label in &split.labels {
            histogram[label as usize] += 1;
        }
        // Every digit present, and no class absurdly rare (MNIST classes are 9-11% each).
        for (digit, &count) in histogram.iter().enumerate() {
            assert!(
                count > expected_len / 20,
                "digit {digit}: {count} of {expected_len}"
            );
        }

        // Pixels span exactly the normalised image of 0..=255: MNIST has both pure
        // background (0) and saturated ink (255).
        let lo = (0.0 - MNIST_MEAN) / MNIST_STD;
        let hi = (1.0 - MNIST_MEAN) / MNIST_STD;
        let min = split.images.iter().copied().fold(f32::INFINITY, f32::min);
        let max = split
            .images
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        assert!((min - lo).abs() < 1e-5, "min {min}, expected {lo}");
        assert!((max - hi).abs() < 1e-5, "max {max}, expected {hi}");

        // The constants are MNIST's own statistics, so normalised data is ~zero-mean,
        // unit-variance on a sample this size.
        let n = split.images.len() as f64;
        let mean = split.images.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = split
            .images
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.05, "std {}", var.sqrt());
    }
}

#[test]
fn gunzipped_copy_loads_identically() {
    let gz = Mnist::load(Path::new(EMBEDDED)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Training files under the standard names, test files under the dotted mirror names.
    let renamed = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images.idx3-ubyte",
        "t10k-labels.idx1-ubyte",
    ];
    for (standard, name) in STANDARD_NAMES.iter().zip(renamed) {
        let compressed = fs::read(Path::new(EMBEDDED).join(format!("{standard}.gz"))).unwrap();
        write(dir.path(), name, &gunzip(&compressed));
    }
    let plain = Mnist::load(dir.path()).unwrap();
    assert_eq!(plain, gz);
}

#[test]
fn gzip_is_detected_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let raw = idx_bytes(&[3], &[1, 2, 3]);
    let gz_named_raw = write(dir.path(), "labels.gz", &raw);
    let raw_named_gz = write(dir.path(), "labels", &gzip(&raw));
    let expected = IdxArray {
        dims: vec![3],
        data: vec![1, 2, 3],
    };
    assert_eq!(read_idx(&gz_named_raw).unwrap(), expected);
    assert_eq!(read_idx(&raw_named_gz).unwrap(), expected);
}

// ---- a full-size-layout directory ----

#[test]
fn full_mnist_layout_loads() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_mnist(dir.path(), 60, 10);
    // Compress one file, keeping the others plain, as a partly-unpacked download would be.
    let images = dir.path().join("train-images-idx3-ubyte");
    let raw = fs::read(&images).unwrap();
    fs::remove_file(&images).unwrap();
    write(dir.path(), "train-images-idx3-ubyte.gz", &gzip(&raw));

    let mnist = Mnist::load(dir.path()).unwrap();
    assert_eq!((mnist.train.len, mnist.test.len), (60, 10));
    assert_eq!((mnist.train.rows, mnist.train.cols), (28, 28));
    let expected_labels: Vec<u32> = (0..60).map(|i| i % 10).collect();
    assert_eq!(mnist.train.labels, expected_labels);
    // Spot-check the normalisation on a known pixel: index 1 holds 7, index 37 holds 259 % 256 = 3.
    assert_eq!(mnist.train.images[1], normalise_pixel(7));
    assert_eq!(mnist.train.images[37], normalise_pixel(3));
    assert!((normalise_pixel(0) - -0.424_212_9).abs() < 1e-6);
    assert!((normalise_pixel(255) - 2.821_487_2).abs() < 1e-6);
}

#[test]
fn uncompressed_file_preferred_when_both_exist() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_mnist(dir.path(), 20, 10);
    // A stale .gz beside the plain file must not be read: make it unreadable garbage.
    write(
        dir.path(),
        "train-labels-idx1-ubyte.gz",
        &[0x1f, 0x8b, 0xff, 0xff],
    );
    assert_eq!(Mnist::load(dir.path()).unwrap().train.len, 20);
}

// ---- malformed IDX files ----

#[test]
fn wrong_magic_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_bytes(&[2], &[0, 1]);
    bytes[0] = 0x01;
    let path = write(dir.path(), "bad-magic", &bytes);
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    // Text, a common mistake (an HTML error page saved under the MNIST name).
    let err = parse_idx(b"<html>", "page").unwrap_err();
    assert!(matches!(err, DataError::BadMagic { .. }), "{err:?}");
}

#[test]
fn bad_rank_is_rejected() {
    for rank in [0u8, 5, 255] {
        let bytes = [0, 0, 0x08, rank, 0, 0, 0, 1, 7];
        let err = parse_idx(&bytes, "mem").unwrap_err();
        assert!(
            matches!(err, DataError::BadMagic { .. }),
            "rank {rank}: {err:?}"
        );
    }
}

#[test]
fn truncated_image_data_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = idx_bytes(&[2, 28, 28], &[0; 1000]);
    let path = write(dir.path(), "short-images", &bytes);
    let err = read_idx(&path).unwrap_err();
    match &err {
        DataError::Truncated { expected, got, .. } => assert_eq!((*expected, *got), (1568, 1000)),
        other => panic!("expected Truncated, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("expected 1568 bytes, got 1000"), "{msg}");
}

#[test]
fn truncated_header_is_rejected() {
    for bytes in [&[][..], &[0, 0, 0x08], &[0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0]] {
        let err = parse_idx(bytes, "mem").unwrap_err();
        assert!(
            matches!(err, DataError::Truncated { .. }),
            "{bytes:?}: {err:?}"
        );
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "long", &idx_bytes(&[3], &[1, 2, 3, 4, 5]));
    let err = read_idx(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TrailingBytes {
                expected: 3,
                extra: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn unsupported_type_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let floats = idx_bytes_typed(0x0d, &[1], &1.0f32.to_be_bytes());
    let path = write(dir.path(), "floats", &floats);
    let err = read_idx(&path).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::UnsupportedType {
                type_byte: 0x0d,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("0x0d") && msg.contains("32-bit float"),
        "{msg}"
    );
}

#[test]
fn oversized_dims_are_rejected() {
    // Product overflows u64, and a product that fits but exceeds the cap.
    for dims in [[u32::MAX; 4], [65536, 65536, 1, 1]] {
        let err = parse_idx(&idx_bytes(&dims, &[0; 16]), "mem").unwrap_err();
        assert!(
            matches!(err, DataError::TooLarge { .. }),
            "{dims:?}: {err:?}"
        );
    }
}

#[test]
fn corrupt_gzip_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let good = gzip(&idx_bytes(&[100], &[7; 100]));

    let cut = write(dir.path(), "cut.gz", &good[..good.len() / 2]);
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    flipped[mid + 1] ^= 0xff;
    let flipped = write(dir.path(), "flipped.gz", &flipped);
    let garbage = write(dir.path(), "garbage.gz", &[0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7]);

    for path in [cut, flipped, garbage] {
        let err = read_idx(&path).unwrap_err();
        assert!(
            matches!(err, DataError::Gzip { .. }),
            "{}: {err:?}",
            path.display()
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope-idx1-ubyte");
    let err = read_idx(&path).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

// ---- dataset validation ----

#[test]
fn label_out_of_range_is_reported_with_index_and_value() {
    let images = parse_idx(&idx_bytes(&[3, 2, 2], &[0; 12]), "images").unwrap();
    let labels = parse_idx(&idx_bytes(&[3], &[0, 9, 10]), "labels").unwrap();
    let err = Dataset::from_idx(images, labels, 10).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 2,
                label: 10,
                num_classes: 10
            }
        ),
        "{err:?}"
    );

    // And through the loader, from a file on disk.
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_mnist(dir.path(), 10, 10);
    write(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_bytes(&[10], &[3, 10, 0, 0, 0, 0, 0, 0, 0, 0]),
    );
    let err = Mnist::load(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 10,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn count_mismatch_is_rejected() {
    let images = parse_idx(&idx_bytes(&[3, 2, 2], &[0; 12]), "images").unwrap();
    let labels = parse_idx(&idx_bytes(&[2], &[0, 1]), "labels").unwrap();
    let err = Dataset::from_idx(images, labels, 10).unwrap_err();
    assert!(matches!(err, DataError::Shape { .. }), "{err:?}");
    assert!(err.to_string().contains("3 images but 2 labels"), "{err}");
}

#[test]
fn wrong_rank_and_inconsistent_arrays_are_rejected() {
    let labels = IdxArray {
        dims: vec![2],
        data: vec![0, 1],
    };
    let flat_images = IdxArray {
        dims: vec![2, 4],
        data: vec![0; 8],
    };
    let err = Dataset::from_idx(flat_images, labels.clone(), 10).unwrap_err();
    assert!(matches!(err, DataError::Shape { .. }), "{err:?}");

    // Hand-built: dims say 2x2x2 but only 5 bytes.
    let lying = IdxArray {
        dims: vec![2, 2, 2],
        data: vec![0; 5],
    };
    let err = Dataset::from_idx(lying, labels, 10).unwrap_err();
    assert!(matches!(err, DataError::Shape { .. }), "{err:?}");
}

// ---- locating files ----

#[test]
fn missing_dir_error_names_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-mnist");
    let err = Mnist::load(&missing).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_file_error_lists_names_tried() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_mnist(dir.path(), 10, 10);
    fs::remove_file(dir.path().join("t10k-images-idx3-ubyte")).unwrap();
    let err = Mnist::load(dir.path()).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    for name in [
        "t10k-images-idx3-ubyte",
        "t10k-images-idx3-ubyte.gz",
        "t10k-images.idx3-ubyte",
        "t10k-images.idx3-ubyte.gz",
    ] {
        assert!(msg.contains(name), "{name} not in: {msg}");
    }
}

// ---- batching ----

#[test]
fn batch_count_includes_partial_last_batch() {
    let dataset = indexed_dataset(10, 3);
    let batches = Batches::new(&dataset, 4, None).unwrap();
    assert_eq!(batches.len(), 3);
    let lens: Vec<usize> = batches.map(|b| b.len).collect();
    assert_eq!(lens, [4, 4, 2]);

    // len() counts down as batches are taken, and a batch larger than the set is one batch.
    let mut batches = Batches::new(&dataset, 4, Some(1)).unwrap();
    batches.next();
    assert_eq!(batches.len(), 2);
    assert_eq!(Batches::new(&dataset, 64, None).unwrap().len(), 1);
    assert_eq!(Batches::new(&dataset, 5, None).unwrap().len(), 2);
}

#[test]
fn unshuffled_batches_are_in_order_with_matching_rows() {
    let dataset = indexed_dataset(7, 3);
    let batches: Vec<_> = Batches::new(&dataset, 3, None).unwrap().collect();
    assert_eq!(batches[0].labels, [0, 1, 2]);
    assert_eq!(batches[0].images, [0., 0., 0., 1., 1., 1., 2., 2., 2.]);
    assert_eq!(batches[2].labels, [6]);
    assert_eq!(batches[2].images, [6., 6., 6.]);
}

#[test]
fn shuffled_epoch_covers_every_index_once_with_matching_rows() {
    let dataset = indexed_dataset(103, 5);
    let mut seen = Vec::new();
    for batch in Batches::new(&dataset, 16, Some(42)).unwrap() {
        assert_eq!(batch.images.len(), batch.len * 5);
        assert_eq!(batch.labels.len(), batch.len);
        // Each row carries its sample's index: images and labels were permuted together.
        for (row, &label) in batch.images.chunks(5).zip(&batch.labels) {
            assert!(row.iter().all(|&p| p == label as f32));
        }
        seen.extend(batch.labels);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..103).collect::<Vec<u32>>());
    assert_ne!(seen, sorted, "seeded order should be shuffled");
}

#[test]
fn shuffle_is_determined_by_seed() {
    let dataset = indexed_dataset(200, 1);
    let a = epoch_labels(&dataset, 32, Some(7));
    assert_eq!(a, epoch_labels(&dataset, 32, Some(7)));
    // The order depends on the seed alone, not on how it is cut into batches.
    assert_eq!(a, epoch_labels(&dataset, 5, Some(7)));

    let distinct: HashSet<Vec<u32>> = (0..8u64)
        .map(|epoch| epoch_labels(&dataset, 32, Some(7 ^ epoch)))
        .collect();
    assert_eq!(
        distinct.len(),
        8,
        "per-epoch seeds should give different orders"
    );
}

#[test]
fn zero_batch_size_is_an_error() {
    let dataset = indexed_dataset(4, 1);
    let err = Batches::new(&dataset, 0, None).unwrap_err();
    assert!(matches!(err, DataError::InvalidBatchSize), "{err:?}");
}

#[test]
fn inconsistent_dataset_is_rejected_by_loader() {
    let mut dataset = indexed_dataset(4, 2);
    dataset.len = 5;
    let err = Batches::new(&dataset, 2, None).unwrap_err();
    assert!(matches!(err, DataError::Shape { .. }), "{err:?}");
}

#[test]
fn empty_dataset_yields_no_batches() {
    let dataset = indexed_dataset(0, 4);
    let batches = Batches::new(&dataset, 8, Some(3)).unwrap();
    assert_eq!(batches.len(), 0);
    assert_eq!(batches.count(), 0);
}

#[test]
fn skipping_batches_resumes_the_same_epoch_order() {
    let dataset = indexed_dataset(103, 5);
    let all: Vec<_> = Batches::new(&dataset, 16, Some(9)).unwrap().collect();
    for skip in [0, 1, 3, 6, 7, 50] {
        let rest: Vec<_> = Batches::new(&dataset, 16, Some(9))
            .unwrap()
            .enumerate()
            .skip(skip)
            .collect();
        let want: Vec<_> = all.iter().cloned().enumerate().skip(skip).collect();
        assert_eq!(rest, want, "skipping {skip}");
    }
    let mut batches = Batches::new(&dataset, 16, Some(9)).unwrap();
    assert_eq!(batches.nth(usize::MAX), None);
    assert_eq!(batches.len(), 0);
}

// ---- DataSource: InMemory and MNIST's Dataset ----------------------------------------------

mod source {
    use ringtrain_models::data::{DataSource, InMemory};
    use ringtrain_runtime::Device;

    #[test]
    fn in_memory_batches_in_the_order_asked() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let data = InMemory::classification(x.clone(), &[2, 2], vec![0, 2, 1], 3).unwrap();
        assert_eq!(data.len(), 3);
        let b = data.batch(&[2, 0]).unwrap();
        assert_eq!(b.input_dims, [2, 2, 2]);
        assert_eq!(b.inputs, [8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0]);
        assert_eq!(b.labels().unwrap(), [1, 0]);
        assert!(
            b.targets(&Device::cpu()).is_err(),
            "a classification batch has labels"
        );
        let t = b.inputs(&Device::cpu()).unwrap();
        assert_eq!(t.dims(), &[2, 2, 2]);

        let reg = InMemory::regression(x, &[4], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2]).unwrap();
        let b = reg.batch(&[1]).unwrap();
        assert_eq!(
            b.targets(&Device::cpu()).unwrap().to_vec().unwrap(),
            [3.0, 4.0]
        );
        assert!(b.labels().is_err(), "a regression batch has targets");
        let (head, tail) = reg.split_at(1).unwrap();
        assert_eq!((head.len(), tail.len()), (1, 2));
        assert_eq!(tail.batch(&[0]).unwrap().inputs[0], 4.0);
        assert!(reg.split_at(4).is_err());
        assert!(reg.batch(&[3]).is_err(), "sample 3 of 3");
    }

    #[test]
    fn inconsistent_samples_are_refused() {
        let err = InMemory::classification(vec![0.0; 5], &[2], vec![0, 1], 2).unwrap_err();
        assert!(err.to_string().contains("5 input values"), "{err}");
        let err = InMemory::classification(vec![0.0; 4], &[2], vec![0, 2], 2).unwrap_err();
        assert!(err.to_string().contains("label 2"), "{err}");
        assert!(InMemory::regression(vec![0.0; 4], &[2], vec![0.0; 3], &[2]).is_err());
        assert!(InMemory::regression(vec![0.0; 4], &[0], vec![0.0; 2], &[1]).is_err());
    }

    #[test]
    fn mnist_is_a_data_source_of_flat_rows() {
        let mnist = ringtrain_models::data::Mnist::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mnist-10k"),
        )
        .unwrap();
        let b = mnist.train.batch(&[5, 1]).unwrap();
        assert_eq!(b.input_dims, [2, 784]);
        assert_eq!(
            b.labels().unwrap(),
            [mnist.train.labels[5], mnist.train.labels[1]]
        );
        assert_eq!(&b.inputs[..784], &mnist.train.images[5 * 784..6 * 784]);
        assert!(mnist.train.batch(&[8000]).is_err());
    }
}

#[test]
fn token_sequences_for_language_models() {
    use ringtrain_models::data::sequence::{Addition, EQUALS, PLUS};
    use ringtrain_models::data::{CharVocab, DataSource, TextCorpus, TokenWindows};

    let vocab = CharVocab::from_text("hello world");
    assert_eq!(vocab.as_string(), " dehlorw");
    let ids = vocab.encode("hold").unwrap();
    assert_eq!(vocab.decode(&ids), "hold");
    assert!(vocab.encode("hex").is_err(), "x is not in the vocabulary");
    assert_eq!(CharVocab::from_chars(&vocab.as_string()).unwrap(), vocab);
    assert!(CharVocab::from_chars("ba").is_err());

    // Windows: inputs and the next token of each.
    let w = TokenWindows::new((0..10).collect(), 4).unwrap();
    assert_eq!(w.len(), 6);
    let b = w.batch(&[5, 0]).unwrap();
    assert_eq!(b.inputs, [5, 6, 7, 8, 0, 1, 2, 3]);
    assert_eq!(b.targets, [6, 7, 8, 9, 1, 2, 3, 4]);
    assert!(w.batch(&[6]).is_err());
    assert!(TokenWindows::new(vec![1, 2, 3], 3).is_err());
    let corpus = TextCorpus::from_text(&"abcdefgh".repeat(20), 8, 0.1).unwrap();
    assert_eq!(corpus.vocab.len(), 8);
    assert!(TextCorpus::from_text("short", 8, 0.1).is_err());

    // Addition: every problem once, answers least significant digit first.
    let (train, test) = Addition::split(2, 100, 7).unwrap();
    assert_eq!((train.len(), test.len()), (9_900, 100));
    let mut seen = std::collections::HashSet::new();
    for i in 0..train.len() {
        let s = train.sequence(i).unwrap();
        assert_eq!((s[2], s[5]), (PLUS, EQUALS));
        let a = s[0] * 10 + s[1];
        let b = s[3] * 10 + s[4];
        assert_eq!(s[6] + 10 * s[7] + 100 * s[8], a + b, "{s:?}");
        assert!(seen.insert((a, b)));
    }
    let s = train.sequence(0).unwrap();
    let batch = train.batch(&[0]).unwrap();
    assert_eq!(batch.inputs, s[..8]);
    assert_eq!(batch.targets, s[1..]);
    assert_eq!(
        batch.loss_from, 5,
        "the position of `=` predicts the first answer digit"
    );
    assert!(train.describe(&s).contains('+'));
    assert!(Addition::split(4, 10, 0).is_err());
}
