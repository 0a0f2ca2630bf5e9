//! Input rows for inference: one per line of CSV or JSON lines, or one per item of an
//! IDX array. Every parser returns an error for its row, never a panic, and never
//! accepts a value that is not finite.

use ringtrain_models::data::{normalise_pixel, parse_idx};
use std::io::BufRead;

/// How the rows of a stream are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RowFormat {
    /// An IDX array of unsigned bytes (MNIST's images), each item one row, its pixels
    /// normalised as `Mnist::load` does; gzipped or not.
    Idx,
    /// Comma-separated numbers, one row a line.
    Csv,
    /// A JSON array of numbers a line, or an object `{"features": [...]}` with an
    /// optional `"id"` (any JSON value) that the answer repeats.
    Jsonl,
}

/// A parsed row: its features and the id its answer carries, if it gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub features: Vec<f32>,
    pub id: Option<serde_json::Value>,
}

/// How rows are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowSpec {
    /// Features a row must hold.
    pub features: usize,
    /// Values are raw 0-255 pixel bytes, normalised as the MNIST loader does.
    pub pixels: bool,
}

impl RowSpec {
    /// Checks a row's values: the count, each finite (and a byte, for pixels), then
    /// normalises pixels.
    fn finish(&self, mut features: Vec<f32>, id: Option<serde_json::Value>) -> Result<Row, String> {
        if features.len() != self.features {
            return Err(format!(
                "a row of {} values; the model takes {}",
                features.len(),
                self.features
            ));
        }
        if let Some((i, v)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(format!("value {i} is {v}; rows hold finite numbers"));
        }
        if self.pixels {
            for (i, v) in features.iter_mut().enumerate() {
                if !(0.0..=255.0).contains(v) || v.fract() != 0.0 {
                    return Err(format!("value {i} is {v}, not a pixel byte (0 to 255)"));
                }
                *v = normalise_pixel(*v as u8);
            }
        }
        Ok(Row { features, id })
    }

    /// One CSV line.
    pub fn csv(&self, line: &str) -> Result<Row, String> {
        let line = line.trim();
        if line.is_empty() {
            return Err("an empty line".into());
        }
        let features = line
            .split(',')
            .enumerate()
            .map(|(i, field)| {
                field.trim().parse::<f32>().map_err(|_| {
                    format!("field {i} ({:?}) is not a number", truncate(field.trim()))
                })
            })
            .collect::<Result<Vec<f32>, String>>()?;
        self.finish(features, None)
    }

    /// One JSON line: an array of numbers, or `{"features": [...], "id": ...}`.
    pub fn jsonl(&self, line: &str) -> Result<Row, String> {
        let value: serde_json::Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("not JSON: {e}"))?;
        let (array, id) = match value {
            serde_json::Value::Array(a) => (a, None),
            serde_json::Value::Object(mut o) => {
                let id = o.remove("id");
                match o.remove("features") {
                    Some(serde_json::Value::Array(a)) => (a, id),
                    _ => return Err("an object without a \"features\" array".into()),
                }
            }
            _ => return Err("expected an array of numbers or {\"features\": [...]}".into()),
        };
        let features = array
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| format!("value {i} is not a number"))
            })
            .collect::<Result<Vec<f32>, String>>()?;
        self.finish(features, id)
    }

    /// One line in `format` (CSV or JSON lines).
    pub fn line(&self, format: RowFormat, line: &str) -> Result<Row, String> {
        match format {
            RowFormat::Csv => self.csv(line),
            RowFormat::Jsonl => self.jsonl(line),
            RowFormat::Idx => Err("IDX input is binary, not lines".into()),
        }
    }

    /// Every item of IDX bytes as a row: an error for the whole input when the bytes are
    /// not an IDX array of unsigned bytes whose items hold `features` values.
    pub fn idx(&self, bytes: &[u8], origin: &str) -> Result<Vec<Row>, String> {
        let array = parse_idx(bytes, origin).map_err(|e| e.to_string())?;
        let items = array.dims.first().copied().unwrap_or(0);
        let per_item: usize = array.dims.iter().skip(1).product();
        if per_item != self.features {
            return Err(format!(
                "{origin}: items of {} values ({:?}); the model takes {}",
                per_item, array.dims, self.features
            ));
        }
        Ok(array
            .data
            .chunks_exact(per_item.max(1))
            .take(items)
            .map(|item| Row {
                features: item.iter().map(|&p| normalise_pixel(p)).collect(),
                id: None,
            })
            .collect())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

/// A line read with a bound on its length.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than the bound (the rest of it was read and dropped), or not UTF-8.
    Bad(String),
}

/// The next line of `reader` without its newline, reading at most `limit` bytes of it
/// into memory (a longer line is consumed and reported), or `None` at the end.
pub fn read_line(reader: &mut impl BufRead, limit: usize) -> std::io::Result<Option<Line>> {
    let mut line = PartLine::new(limit);
    loop {
        let chunk = reader.fill_buf()?;
        let (used, done) = line.take(chunk);
        reader.consume(used);
        if done {
            return Ok(line.finish());
        }
    }
}

/// A line being read a buffer's worth at a time, by [`read_line`] and its asynchronous
/// twin in the server.
pub(crate) struct PartLine {
    bytes: Vec<u8>,
    limit: usize,
    any: bool,
    oversized: bool,
}

impl PartLine {
    pub(crate) fn new(limit: usize) -> Self {
        PartLine {
            bytes: Vec::new(),
            limit,
            any: false,
            oversized: false,
        }
    }

    /// Takes what of `chunk` belongs to the line: the bytes used, and whether the line
    /// is over (a newline, or the end of the input: an empty chunk).
    pub(crate) fn take(&mut self, chunk: &[u8]) -> (usize, bool) {
        if chunk.is_empty() {
            return (0, true);
        }
        self.any = true;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let part = &chunk[..newline.unwrap_or(chunk.len())];
        if !self.oversized {
            if self.bytes.len() + part.len() > self.limit {
                self.oversized = true;
                self.bytes = Vec::new();
            } else {
                self.bytes.extend_from_slice(part);
            }
        }
        (newline.map_or(chunk.len(), |i| i + 1), newline.is_some())
    }

    /// The line read, or `None` where the input had ended before it.
    pub(crate) fn finish(self) -> Option<Line> {
        finish_line(self.bytes, self.any, self.oversized, self.limit)
    }
}

/// The line `bytes` hold (without its newline; a trailing `\r` dropped), once read.
fn finish_line(mut bytes: Vec<u8>, any: bool, oversized: bool, limit: usize) -> Option<Line> {
    if !any {
        return None;
    }
    if oversized {
        return Some(Line::Bad(format!("a line longer than {limit} bytes")));
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Some(match String::from_utf8(bytes) {
        Ok(s) => Line::Text(s),
        Err(_) => Line::Bad("a line that is not UTF-8".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: RowSpec = RowSpec {
        features: 3,
        pixels: false,
    };

    #[test]
    fn csv_and_json_rows_parse_and_bad_ones_are_errors() {
        assert_eq!(SPEC.csv("1, 2.5,-3e-1").unwrap().features, [1.0, 2.5, -0.3]);
        let row = SPEC
            .jsonl(r#"{"id": "a7", "features": [1, 2, 3]}"#)
            .unwrap();
        assert_eq!(row.id, Some(serde_json::json!("a7")));
        assert_eq!(SPEC.jsonl("[0.5, 0, 1]").unwrap().features, [0.5, 0.0, 1.0]);
        for bad in ["", "1,2", "1,2,3,4", "1,x,3", "1,NaN,3", "1,inf,3", "1,,3"] {
            assert!(SPEC.csv(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "[1,2]",
            "{\"features\": 3}",
            "[1,\"2\",3]",
            "{",
            "7",
            "[1e999,0,0]",
        ] {
            assert!(SPEC.jsonl(bad).is_err(), "{bad:?}");
        }
        let pixels = RowSpec {
            pixels: true,
            ..SPEC
        };
        assert_eq!(
            pixels.csv("0,255,128").unwrap().features[0],
            normalise_pixel(0)
        );
        assert!(pixels.csv("0,256,1").is_err());
        assert!(pixels.csv("0,1.5,1").is_err());
    }

    #[test]
    fn lines_are_read_with_a_bound() {
        let text = b"short\r\n0123456789abcdef\nok\n\xff\xfe\nlast";
        let mut r = std::io::BufReader::with_capacity(4, &text[..]);
        let lines: Vec<Line> = std::iter::from_fn(|| read_line(&mut r, 8).unwrap()).collect();
        assert_eq!(lines[0], Line::Text("short".into()));
        assert!(matches!(lines[1], Line::Bad(_)));
        assert_eq!(lines[2], Line::Text("ok".into()));
        assert!(matches!(lines[3], Line::Bad(_)));
        assert_eq!(lines[4], Line::Text("last".into()));
        assert_eq!(lines.len(), 5);
    }
}
