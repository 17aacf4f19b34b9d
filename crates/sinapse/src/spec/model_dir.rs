//! The model directory a trained job saves: `model.toml` (the [`ModelCard`]: spec,
//! preprocessing, class names) and `model.safetensors` (the weights), written atomically, and
//! read back into a [`TrainedModel`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ModelSpec;
use crate::data::{LabelMap, Scaler};
use crate::nn::{Module, Sequential};
use crate::train::{checkpoint, Task};
use crate::{Error, Result, Rng, Tensor};

/// What a trained model needs besides its weights: the spec that built it, the input layout,
/// the fitted preprocessing and the label mapping. Saved as `model.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    /// Format version of the model directory.
    pub format: u32,
    /// What the model predicts.
    pub task: Task,
    /// Input feature names, in order.
    pub feature_names: Vec<String>,
    /// Shape of one input sample.
    pub input_shape: Vec<usize>,
    /// Class names (classification).
    #[serde(default)]
    pub classes: Option<LabelMap>,
    /// The feature scaling fitted on the training data.
    pub scaler: Scaler,
    /// The job that trained it.
    pub spec: ModelSpec,
}

impl ModelCard {
    /// Reads and checks the text of a `model.toml` (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ModelCard> {
        let card: ModelCard = toml::from_str(text)
            .map_err(|e| Error::Format { path: path.to_path_buf(), msg: e.message().to_string() })?;
        card.validate().map_err(|e| Error::Format { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(card)
    }

    /// Checks that the card's parts agree: a valid spec, one class name per output, one
    /// feature name per input value, and a scaler for that many features.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        let bad = |msg: String| Err(Error::invalid("model card", msg));
        if let (Task::Classification { classes }, Some(map)) = (&self.task, &self.classes) {
            if map.len() != *classes {
                return bad(format!("{} class names for {classes} classes", map.len()));
            }
        }
        let inputs = crate::layout::checked_elem_count("model card", &self.input_shape)?;
        if self.feature_names.len() != inputs {
            return bad(format!(
                "{} feature names for inputs of shape {:?}",
                self.feature_names.len(),
                self.input_shape
            ));
        }
        let scaled = match &self.scaler {
            Scaler::None => None,
            Scaler::Standard { mean, std } => Some((mean.len(), std.len())),
            Scaler::MinMax { min, max } => Some((min.len(), max.len())),
        };
        if let Some((a, b)) = scaled {
            if a != inputs || b != inputs {
                return bad(format!("the scaler has {a} and {b} values for {inputs} features"));
            }
        }
        self.scaler.validate()
    }
}

/// A model with everything needed to use it on new data.
pub struct TrainedModel {
    /// Metadata and preprocessing.
    pub card: ModelCard,
    /// The network.
    pub model: Sequential,
}

/// File names inside a model directory.
pub const CARD_FILE: &str = "model.toml";
/// The weights file inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// A model directory, as [`crate::atomic`] sees it: one whose `model.toml` reads as a model
/// card, and which a save may replace when it holds only what a save wrote.
const MODEL_DIR: crate::atomic::Owner<'static> = crate::atomic::Owner {
    what: "Sinapse model directory",
    recognise: &is_model_dir,
    // What the CLI's saves wrote before directories had a manifest.
    legacy_names: &[
        CARD_FILE,
        WEIGHTS_FILE,
        "history.csv",
        "loss.png",
        "accuracy.png",
        "confusion.png",
        "confusion.txt",
    ],
};

/// True when `dir` holds a `model.toml` that reads as a model card.
fn is_model_dir(dir: &Path) -> bool {
    crate::data::files::read_text(&dir.join(CARD_FILE)).is_ok_and(|text| toml::from_str::<ModelCard>(&text).is_ok())
}

impl TrainedModel {
    /// Writes the model directory atomically: `model.toml`, `model.safetensors`, and whatever
    /// `extra` writes into the same (temporary) directory (history, plots). An existing `dir`
    /// is replaced only when it is a model directory or empty ([`TrainedModel::check_out_dir`]).
    pub fn save(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let card = toml::to_string(&self.card).map_err(|e| Error::invalid("save model", e.to_string()))?;
        let weights = checkpoint::weights_to_bytes(&self.model.state_dict())?;
        crate::atomic::write_dir_atomically(dir, &MODEL_DIR, |tmp| {
            let write = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|source| Error::Io { path: p, source })
            };
            write(CARD_FILE, card.as_bytes())?;
            write(WEIGHTS_FILE, &weights)?;
            extra(tmp)
        })
    }

    /// Checks, before any work, that [`TrainedModel::save`] may write to `dir`: it does not
    /// exist, is empty, or is a model directory (its `model.toml` reads as a model card) that
    /// holds only what a save wrote there. Anything else (a file, the user's folder, `..`, a
    /// model directory the user added files to) is an error naming it.
    pub fn check_out_dir(dir: &Path) -> Result<()> {
        crate::atomic::check_replaceable(dir, &MODEL_DIR)
    }

    /// Reads a model directory: rebuilds the network from the card and loads the weights,
    /// checking every name and shape.
    pub fn load(dir: &Path) -> Result<TrainedModel> {
        let card_path = dir.join(CARD_FILE);
        let card = ModelCard::parse(&crate::data::files::read_text(&card_path)?, &card_path)?;
        let model = card.spec.build_model(&card.input_shape, &card.task, &mut Rng::seed(card.spec.seed))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        checkpoint::load_into(&model, &checkpoint::load_weights(&weights_path)?, &weights_path)?;
        Ok(TrainedModel { card, model })
    }

    /// Reconstruction models: the codes of raw features `[N, F]`, the output of the
    /// network's narrowest layer before the last (the bottleneck; of layers equally narrow,
    /// the last, so that an activation after it is included), `[N, width]`. An error when no
    /// layer is narrower than the input (an overcomplete autoencoder has no bottleneck).
    pub fn codes(&self, raw_features: &Tensor) -> Result<Tensor> {
        if !matches!(self.card.task, Task::Reconstruction { .. }) {
            return Err(Error::invalid("codes", "only an autoencoder (task = \"reconstruction\") has codes"));
        }
        let x = self.card.scaler.transform(raw_features)?;
        let _guard = crate::no_grad();
        let layers = self.model.layers();
        let device = self.model.device();
        // The narrowest output before the last layer, found on one probe sample.
        let mut one = x.shape().to_vec();
        one[0] = 1;
        let inputs: usize = one.iter().product();
        let mut probe = Tensor::zeros(&one).to(device)?;
        let mut bottleneck = (inputs, None);
        for (i, layer) in layers.iter().enumerate().take(layers.len().saturating_sub(1)) {
            probe = layer.forward(&probe, crate::nn::Mode::Eval)?;
            if probe.elem_count() <= bottleneck.0 && (probe.elem_count() < inputs || bottleneck.1.is_some()) {
                bottleneck = (probe.elem_count(), Some(i));
            }
        }
        let Some(last) = bottleneck.1 else {
            return Err(Error::invalid("codes", "no layer is narrower than the input: the network has no bottleneck"));
        };
        // In batches, as `outputs` runs them.
        let n = x.shape()[0];
        let mut parts = Vec::new();
        for start in (0..n).step_by(1024) {
            let mut h = x.narrow(0, start, 1024.min(n - start))?.to(device)?;
            for layer in &layers[..=last] {
                h = layer.forward(&h, crate::nn::Mode::Eval)?;
            }
            // One row per sample, whatever the layer's shape (a convolution's maps).
            let rows = h.shape()[0];
            parts.push(h.reshape(&[rows, bottleneck.0])?.to(crate::Device::Cpu)?);
        }
        if parts.is_empty() {
            return Ok(Tensor::zeros(&[0, bottleneck.0]));
        }
        Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
    }

    /// Reconstruction models: the reconstructions of raw features `[N, F]` (the outputs, or
    /// their sigmoid when trained with binary cross-entropy), in the features' own units
    /// (the scaler undone).
    pub fn reconstructions(&self, raw_features: &Tensor) -> Result<Tensor> {
        if !matches!(self.card.task, Task::Reconstruction { .. }) {
            return Err(Error::invalid("reconstructions", "only an autoencoder (task = \"reconstruction\") has them"));
        }
        let scaled = self.card.spec.loss_for(&self.card.task).prediction(&self.outputs(raw_features)?)?;
        self.card.scaler.inverse_transform(&scaled)
    }

    /// Scales raw features `[N, F]` with the fitted scaler and runs the network (evaluation
    /// mode, no gradients).
    pub fn outputs(&self, raw_features: &Tensor) -> Result<Tensor> {
        let x = self.card.scaler.transform(raw_features)?;
        let out = crate::train::predict(&self.model, &x, 1024)?;
        // A NaN answer is an error, not a prediction.
        let cols = out.shape().get(1).copied().unwrap_or(1).max(1);
        let values = out.try_to_vec()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("the model's output for row {} (its inputs or weights are out of range)", i / cols + 1),
                value: values[i],
            });
        }
        Ok(out)
    }
}
