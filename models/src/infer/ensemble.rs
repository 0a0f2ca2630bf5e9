//! Several models' predictions averaged: the ensemble of models trained apart (a bag,
//! or one model per site) that a federated deployment combines.

use super::{best_classes, Predictor};
use ringtrain_runtime::{Device, Error, Result};
use std::path::PathBuf;

/// Predictors of the same inputs and outputs whose probabilities (or outputs) are
/// averaged, with equal weights.
pub struct Ensemble {
    members: Vec<Predictor>,
}

impl Ensemble {
    pub fn new(members: Vec<Predictor>) -> Result<Ensemble> {
        let Some(first) = members.first() else {
            return Err(Error::InvalidArgument(
                "an ensemble needs at least one model".into(),
            ));
        };
        let (inputs, outputs) = (first.inputs(), first.outputs());
        if let Some(other) = members
            .iter()
            .find(|p| p.inputs() != inputs || p.outputs() != outputs)
        {
            return Err(Error::InvalidArgument(format!(
                "an ensemble's models take and give the same sizes: {} beside {}",
                first.describe(),
                other.describe()
            )));
        }
        Ok(Ensemble { members })
    }

    /// The models of these checkpoint files (or Trainer folders), on `device`.
    pub fn load(paths: &[PathBuf], device: &Device) -> Result<Ensemble> {
        let members = paths
            .iter()
            .map(|p| Predictor::load(p, device))
            .collect::<Result<Vec<_>>>()?;
        Self::new(members)
    }

    pub fn members(&self) -> &[Predictor] {
        &self.members
    }

    pub fn inputs(&self) -> usize {
        self.members[0].inputs()
    }

    /// The mean of the members' class probabilities.
    pub fn probabilities(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        self.mean(|p| p.probabilities(rows))
    }

    /// The mean of the members' outputs.
    pub fn outputs_of(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        self.mean(|p| p.outputs_of(rows))
    }

    pub fn classify(&self, rows: &[f32]) -> Result<Vec<(u32, f32)>> {
        let (probs, width) = self.probabilities(rows)?;
        Ok(best_classes(&probs, width))
    }

    fn mean(
        &self,
        each: impl Fn(&Predictor) -> Result<(Vec<f32>, usize)>,
    ) -> Result<(Vec<f32>, usize)> {
        let (mut sum, width) = each(&self.members[0])?;
        for member in &self.members[1..] {
            let (values, w) = each(member)?;
            if w != width || values.len() != sum.len() {
                return Err(Error::msg(
                    "ensemble members gave outputs of different sizes",
                ));
            }
            sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
        }
        let n = self.members.len() as f32;
        sum.iter_mut().for_each(|s| *s /= n);
        Ok((sum, width))
    }

    pub fn describe(&self) -> String {
        format!(
            "an ensemble of {} models ({})",
            self.members.len(),
            self.members[0].describe()
        )
    }
}
