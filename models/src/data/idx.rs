//! The IDX container format that MNIST ships in.
//!
//! Layout: two zero bytes, an element-type byte, a rank byte, `rank` big-endian `u32`
//! dimensions, then the elements in row-major order. Only unsigned bytes (type 0x08) are
//! supported because that is all MNIST and its look-alikes (Fashion-MNIST, KMNIST) use.
//!
//! Files may be gzipped; that is detected from the content, not the name, because mirrors
//! and users routinely gunzip files without renaming them (or the reverse).

use std::fs::File;
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::DataError;

/// Largest data section accepted, in bytes.
///
/// Real IDX files are far smaller (the full MNIST training images are 47 MB); the cap exists
/// so a corrupt header or a gzip bomb fails fast instead of exhausting memory.
pub const MAX_IDX_BYTES: usize = 1 << 31;

/// An IDX array of unsigned bytes: `data.len()` is the product of `dims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

const TYPE_U8: u8 = 0x08;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Zero, zero, type, rank.
const PREFIX_LEN: usize = 4;
/// The format allows more, but nothing real uses more than 4 and a small bound keeps a
/// garbage rank byte from being read as a long dimension list.
const MAX_RANK: usize = 4;
const MAX_HEADER_LEN: usize = PREFIX_LEN + 4 * MAX_RANK;

/// Reads an IDX file, gzipped or not.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let io_error = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let origin = path.display().to_string();
    let file = File::open(path).map_err(io_error)?;
    let bytes = read_capped(file, &origin, io_error)?;
    parse_idx(&bytes, &origin)
}

/// Parses IDX bytes already in memory, gunzipping first if they are gzip.
///
/// `origin` only labels error messages (typically the file path).
pub fn parse_idx(bytes: &[u8], origin: &str) -> Result<IdxArray, DataError> {
    if bytes.starts_with(&GZIP_MAGIC) {
        let raw = read_capped(GzDecoder::new(bytes), origin, |source| DataError::Gzip {
            origin: origin.to_string(),
            source,
        })?;
        parse_raw(&raw, origin)
    } else {
        parse_raw(bytes, origin)
    }
}

/// Human name of an IDX element-type byte, for error messages.
pub(crate) fn type_name(type_byte: u8) -> &'static str {
    match type_byte {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0b => "16-bit integer",
        0x0c => "32-bit integer",
        0x0d => "32-bit float",
        0x0e => "64-bit float",
        _ => "not an IDX type",
    }
}

/// Reads a whole stream, refusing to grow past what the largest legal file could need.
fn read_capped(
    reader: impl Read,
    origin: &str,
    on_error: impl FnOnce(std::io::Error) -> DataError,
) -> Result<Vec<u8>, DataError> {
    let limit = MAX_IDX_BYTES + MAX_HEADER_LEN;
    let mut bytes = Vec::new();
    // One byte past the limit distinguishes "exactly at the limit" from "over it".
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(on_error)?;
    if bytes.len() > limit {
        return Err(DataError::TooLarge {
            origin: origin.to_string(),
            detail: format!("more than {limit} bytes, over the IDX size limit"),
        });
    }
    Ok(bytes)
}

fn parse_raw(bytes: &[u8], origin: &str) -> Result<IdxArray, DataError> {
    // Check the magic before the length so that a short non-IDX file is reported as
    // "not an IDX file" rather than as a truncated one.
    let magic = &bytes[..bytes.len().min(2)];
    if magic.iter().any(|&b| b != 0) {
        return Err(DataError::BadMagic {
            origin: origin.to_string(),
            detail: format!("first bytes are {magic:02x?}, expected [00, 00]"),
        });
    }
    let Some(&[_, _, type_byte, rank]) = bytes.get(..PREFIX_LEN) else {
        return Err(truncated(origin, "header", PREFIX_LEN, bytes.len()));
    };
    if type_byte != TYPE_U8 {
        return Err(DataError::UnsupportedType {
            origin: origin.to_string(),
            type_byte,
        });
    }
    let rank = usize::from(rank);
    if !(1..=MAX_RANK).contains(&rank) {
        return Err(DataError::BadMagic {
            origin: origin.to_string(),
            detail: format!("rank byte is {rank}, expected 1 to {MAX_RANK}"),
        });
    }

    let header_len = PREFIX_LEN + 4 * rank;
    let Some(dim_bytes) = bytes.get(PREFIX_LEN..header_len) else {
        return Err(truncated(origin, "header", header_len, bytes.len()));
    };
    let dims: Vec<u64> = dim_bytes
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();

    // u64 holds any product of up to two u32s; checked_mul catches the rest.
    let size = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_BYTES as u64);
    let Some(expected) = size.and_then(|n| usize::try_from(n).ok()) else {
        return Err(DataError::TooLarge {
            origin: origin.to_string(),
            detail: format!("dimensions {dims:?} describe more than {MAX_IDX_BYTES} bytes"),
        });
    };

    let data = &bytes[header_len..];
    if data.len() < expected {
        return Err(truncated(origin, "data", expected, data.len()));
    }
    if data.len() > expected {
        return Err(DataError::TrailingBytes {
            origin: origin.to_string(),
            expected,
            extra: data.len() - expected,
        });
    }

    Ok(IdxArray {
        // A u32 fits in usize on every 32/64-bit target; saturate rather than panic elsewhere.
        dims: dims
            .iter()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect(),
        data: data.to_vec(),
    })
}

fn truncated(origin: &str, section: &'static str, expected: usize, got: usize) -> DataError {
    DataError::Truncated {
        origin: origin.to_string(),
        section,
        expected,
        got,
    }
}
