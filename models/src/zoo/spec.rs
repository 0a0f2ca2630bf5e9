//! Which zoo model a checkpoint holds, and its configuration: what the [`Trainer`]
//! writes into every checkpoint's metadata (`ringtrain.model`) when its
//! [`TrainConfig::model`] says, so that a checkpoint alone rebuilds its model
//! ([`crate::infer::Predictor`]).
//!
//! [`Trainer`]: crate::train::Trainer
//! [`TrainConfig::model`]: crate::train::TrainConfig::model

use super::{mlp, Activation, Cnn};
use crate::nn::Module;
use ringtrain_runtime::{Device, Error, Result, Rng};
use serde::{Deserialize, Serialize};

/// The metadata key of a checkpoint's [`ModelSpec`], as JSON.
pub const MODEL_KEY: &str = "ringtrain.model";

/// A zoo model and everything its constructor takes but the device and the random
/// stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSpec {
    /// [`mlp`]`(inputs, hidden, outputs, activation)`.
    Mlp {
        inputs: usize,
        hidden: Vec<usize>,
        outputs: usize,
        #[serde(with = "activation_name")]
        activation: Activation,
    },
    /// [`Cnn::new`]`((channels, height, width), classes)`.
    Cnn {
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
    },
}

/// A model the zoo builds: boxed, so that a program picks one at run time.
pub type ZooModel = Box<dyn Module + Send + Sync>;

impl ModelSpec {
    /// A fresh model of this spec, its parameters drawn from `rng`.
    pub fn build(&self, device: &Device, rng: &mut Rng) -> Result<ZooModel> {
        Ok(match self {
            ModelSpec::Mlp {
                inputs,
                hidden,
                outputs,
                activation,
            } => Box::new(mlp(*inputs, hidden, *outputs, *activation, device, rng)?),
            ModelSpec::Cnn {
                channels,
                height,
                width,
                classes,
            } => Box::new(Cnn::new(
                (*channels, *height, *width),
                *classes,
                device,
                rng,
            )?),
        })
    }

    /// Input features per sample.
    pub fn inputs(&self) -> usize {
        match self {
            ModelSpec::Mlp { inputs, .. } => *inputs,
            ModelSpec::Cnn {
                channels,
                height,
                width,
                ..
            } => channels * height * width,
        }
    }

    /// Outputs per sample (classes, for a classifier).
    pub fn outputs(&self) -> usize {
        match self {
            ModelSpec::Mlp { outputs, .. } => *outputs,
            ModelSpec::Cnn { classes, .. } => *classes,
        }
    }

    /// One line saying what it is: `mlp 784-512-256-10`, `cnn 1x28x28 -> 10`.
    pub fn describe(&self) -> String {
        match self {
            ModelSpec::Mlp {
                inputs,
                hidden,
                outputs,
                ..
            } => {
                let widths: Vec<String> = std::iter::once(inputs)
                    .chain(hidden)
                    .chain([outputs])
                    .map(|w| w.to_string())
                    .collect();
                format!("mlp {}", widths.join("-"))
            }
            ModelSpec::Cnn {
                channels,
                height,
                width,
                classes,
            } => format!("cnn {channels}x{height}x{width} -> {classes}"),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ModelSpec always serializes")
    }

    /// A spec from its JSON (a checkpoint's `ringtrain.model`), checked: no zero sizes.
    pub fn from_json(json: &str) -> Result<ModelSpec> {
        let spec: ModelSpec = serde_json::from_str(json).map_err(|e| {
            Error::InvalidArgument(format!("`{MODEL_KEY}` is not a model ringtrain knows: {e}"))
        })?;
        let sizes: Vec<usize> = match &spec {
            ModelSpec::Mlp {
                inputs,
                hidden,
                outputs,
                ..
            } => [*inputs, *outputs]
                .into_iter()
                .chain(hidden.iter().copied())
                .collect(),
            ModelSpec::Cnn {
                channels,
                height,
                width,
                classes,
            } => vec![*channels, *height, *width, *classes],
        };
        if sizes.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "`{MODEL_KEY}`: a model with a size of zero ({json})"
            )));
        }
        Ok(spec)
    }
}

/// An [`Activation`] as its name in JSON (`"relu"`).
mod activation_name {
    use super::Activation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Activation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Activation, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_json_and_bad_ones_are_errors() {
        let specs = [
            ModelSpec::Mlp {
                inputs: 784,
                hidden: vec![512, 256],
                outputs: 10,
                activation: Activation::Gelu,
            },
            ModelSpec::Cnn {
                channels: 1,
                height: 28,
                width: 28,
                classes: 10,
            },
        ];
        for spec in specs {
            assert_eq!(ModelSpec::from_json(&spec.to_json()).unwrap(), spec);
        }
        for bad in [
            "",
            "{}",
            r#"{"kind":"rnn"}"#,
            r#"{"kind":"cnn","channels":1,"height":0,"width":28,"classes":10}"#,
            r#"{"kind":"mlp","inputs":4,"hidden":[],"outputs":2,"activation":"swish"}"#,
        ] {
            assert!(ModelSpec::from_json(bad).is_err(), "{bad}");
        }
    }
}
