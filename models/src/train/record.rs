//! What a run reports at each evaluation: one [`Record`], printed as a line and kept as
//! a line of JSON.

use crate::checkpoint::write_atomically;
use ringtrain_runtime::{Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// Named scores of an evaluation (`("test_accuracy", 0.97)`), in the order they print.
pub type Scores = Vec<(String, f64)>;

/// One report: where the run stands, its train loss since the previous report, what the
/// evaluation scored, and how fast it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub epoch: u32,
    pub step: u64,
    /// Whether the report closes its epoch.
    pub epoch_end: bool,
    /// Mean loss of the steps since the previous report (NaN when all were skipped).
    pub train_loss: f64,
    pub scores: Scores,
    pub samples_per_sec: f64,
    /// For sequence models (`TrainConfig::tokens_per_sample`).
    pub tokens_per_sec: Option<f64>,
    pub devices: usize,
    pub seconds: f64,
    pub lr: f32,
    /// Steps skipped for non-finite values since the previous report (those whose f16
    /// gradients overflowed included).
    pub skipped_steps: u64,
    /// An f16 run's loss scale at the report.
    pub loss_scale: Option<f32>,
    /// Mean payload bytes one replica sent per step since the previous report (data
    /// parallel runs whose communicator counts them).
    pub bytes_sent_per_step: Option<f64>,
}

const FIXED: [&str; 12] = [
    "loss_scale",
    "bytes_sent_per_step",
    "epoch",
    "step",
    "epoch_end",
    "train_loss",
    "samples_per_sec",
    "tokens_per_sec",
    "devices",
    "samples_per_sec_per_device",
    "seconds",
    "lr",
];

impl Record {
    /// A score by name.
    pub fn score(&self, name: &str) -> Option<f64> {
        self.scores.iter().find(|(n, _)| n == name).map(|s| s.1)
    }

    /// As a JSON object: the fixed fields, then the scores (NaN is written as null).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("epoch".into(), self.epoch.into());
        m.insert("step".into(), self.step.into());
        m.insert("epoch_end".into(), self.epoch_end.into());
        m.insert("train_loss".into(), number(self.train_loss));
        m.insert("samples_per_sec".into(), number(self.samples_per_sec));
        if let Some(t) = self.tokens_per_sec {
            m.insert("tokens_per_sec".into(), number(t));
        }
        m.insert("devices".into(), self.devices.into());
        m.insert(
            "samples_per_sec_per_device".into(),
            number(self.samples_per_sec / self.devices.max(1) as f64),
        );
        m.insert("seconds".into(), number(self.seconds));
        m.insert("lr".into(), number(f64::from(self.lr)));
        m.insert("skipped_steps".into(), self.skipped_steps.into());
        if let Some(s) = self.loss_scale {
            m.insert("loss_scale".into(), number(f64::from(s)));
        }
        if let Some(b) = self.bytes_sent_per_step {
            m.insert("bytes_sent_per_step".into(), number(b));
        }
        for (name, v) in &self.scores {
            m.insert(name.clone(), number(*v));
        }
        Value::Object(m)
    }

    /// Back from [`Record::to_json`]: every field that is not a fixed one is a score.
    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("not a ringtrain metrics record: {v}"));
        let m = v.as_object().ok_or_else(bad)?;
        let f = |k: &str| m.get(k).map(|x| x.as_f64().unwrap_or(f64::NAN));
        let u = |k: &str| m.get(k).and_then(Value::as_u64).ok_or_else(bad);
        let scores = m
            .iter()
            .filter(|(k, _)| !FIXED.contains(&k.as_str()) && *k != "skipped_steps")
            .map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(f64::NAN)))
            .collect();
        Ok(Record {
            epoch: u32::try_from(u("epoch")?).map_err(|_| bad())?,
            step: u("step")?,
            epoch_end: m.get("epoch_end").and_then(Value::as_bool).unwrap_or(true),
            train_loss: f("train_loss").ok_or_else(bad)?,
            scores,
            samples_per_sec: f("samples_per_sec").unwrap_or(f64::NAN),
            tokens_per_sec: f("tokens_per_sec"),
            devices: u("devices")? as usize,
            seconds: f("seconds").unwrap_or(f64::NAN),
            lr: f("lr").unwrap_or(f64::NAN) as f32,
            skipped_steps: m.get("skipped_steps").and_then(Value::as_u64).unwrap_or(0),
            loss_scale: f("loss_scale").map(|s| s as f32),
            bytes_sent_per_step: f("bytes_sent_per_step"),
        })
    }

    /// The report line: `epoch   3  train loss 0.1234  test loss 0.1302  test accuracy
    /// 96.12%  50123 samples/s (25061 per device)  1.20s`.
    pub fn line(&self) -> String {
        let mut s = if self.epoch_end {
            format!("epoch {:>3}", self.epoch)
        } else {
            format!("step {:>6} (epoch {})", self.step, self.epoch)
        };
        s += &format!("  train loss {:.4}", self.train_loss);
        s += &format_scores(&self.scores);
        match self.tokens_per_sec {
            Some(t) => s += &format!("  {t:>8.0} tokens/s"),
            None => s += &format!("  {:>8.0} samples/s", self.samples_per_sec),
        }
        if self.devices > 1 {
            s += &format!(
                " ({:.0} per device)",
                self.samples_per_sec / self.devices as f64
            );
        }
        s += &format!("  {:.2}s", self.seconds);
        match self.skipped_steps {
            0 => {}
            1 => s += "  1 step skipped (non-finite)",
            n => s += &format!("  {n} steps skipped (non-finite)"),
        }
        if let Some(scale) = self.loss_scale {
            s += &format!("  loss scale {scale}");
        }
        if let Some(b) = self.bytes_sent_per_step {
            s += &format!("  {:.2} MB sent/step", b / 1e6);
        }
        s
    }
}

/// `  test loss 0.1302  test accuracy 96.12%`: underscores as spaces, accuracies as
/// percentages, other values to four places.
pub fn format_scores(scores: &Scores) -> String {
    scores
        .iter()
        .map(|(name, v)| {
            let shown = name.replace('_', " ");
            if name.ends_with("accuracy") {
                format!("  {shown} {:6.2}%", 100.0 * v)
            } else {
                format!("  {shown} {v:.4}")
            }
        })
        .collect()
}

fn number(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Writes `records` to `path` as JSON lines, atomically (a reader, or a crash, never sees
/// half a file).
pub fn write_jsonl(path: &Path, records: &[Record]) -> Result<()> {
    write_atomically(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, &r.to_json())?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
    .map_err(|e| {
        Error::msg(format!(
            "cannot write the metrics file {}: {e}",
            path.display()
        ))
    })
}
