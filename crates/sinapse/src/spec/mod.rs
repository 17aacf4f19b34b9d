//! Model specs: a whole training job in one TOML file (data, layers, loss, optimizer,
//! schedule, validation, early stopping, seed), and the model directory a trained job saves.
//!
//! ```toml
//! seed = 0
//! epochs = 15
//! batch_size = 128
//!
//! [data]
//! format = "idx"
//! train_images = "../data/mnist-10k/train-images-idx3-ubyte.gz"
//! train_labels = "../data/mnist-10k/train-labels-idx1-ubyte.gz"
//!
//! [[layers]]
//! type = "linear"
//! units = 256
//!
//! [[layers]]
//! type = "relu"
//!
//! [optimizer]
//! type = "sgd"
//! lr = 0.1
//! ```
//!
//! Paths are relative to the spec file. Unknown keys, layers, activations, losses or
//! optimizers are errors that name the offender and list what is valid.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::Scaling;
use crate::optim::{Adam, AdamConfig, AdamW, Optimizer, RmsProp, Schedule, Sgd};
use crate::train::{yes, EarlyStopping, FitConfig, LossKind, Task};
use crate::{Device, Error, Result, Tensor};

mod data;
mod layers;
mod model_dir;
pub mod onnx;

pub use data::{class_indices, RawData};
pub use layers::{LayerSpec, Size2};
pub use model_dir::{ModelCard, TrainedModel, CARD_FILE, WEIGHTS_FILE};

/// A training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Seed of every random choice (initialisation, shuffling, splits, dropout).
    #[serde(default)]
    pub seed: u64,
    /// Passes over the training data.
    pub epochs: usize,
    /// Samples per minibatch.
    pub batch_size: usize,
    /// Where the data comes from and how it is prepared.
    pub data: DataSpec,
    /// The layers, input to output.
    pub layers: Vec<LayerSpec>,
    /// The loss (default: cross_entropy for classification, mse for regression and
    /// reconstruction; binary_cross_entropy for reconstruction of values in [0, 1]).
    #[serde(default)]
    pub loss: Option<LossKind>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule (default: constant).
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Validation during training (holdout) or cross-validation settings (kfold, loo).
    #[serde(default)]
    pub validation: Option<ValidationSpec>,
    /// Early stopping on the validation loss (needs holdout validation).
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
    /// Where to train and evaluate: `cpu` (the default), `cuda`, `cuda:N`, or `auto` (the
    /// fastest device present). The CLI's `--device` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Let GPU matrix products use TF32 tensor cores (faster, inputs rounded to 10 mantissa
    /// bits); off by default, as in PyTorch. The CLI's `--tf32` turns it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<bool>,
    /// Capture each training step into a CUDA graph and replay it (see
    /// [`crate::train::FitConfig::cuda_graph`]); ignored on the CPU, so that one spec serves
    /// `device = "auto"` on any machine. The CLI's `--cuda-graph` turns it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_graph: Option<bool>,
}

/// The data of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSpec {
    /// MNIST-style IDX files: images (bytes scaled to [0, 1], flattened) and labels.
    Idx {
        /// Training images (IDX of rank 2 or more, `.gz` or plain).
        train_images: PathBuf,
        /// Training labels (rank 1 IDX).
        train_labels: PathBuf,
        /// Test images.
        #[serde(default)]
        test_images: Option<PathBuf>,
        /// Test labels.
        #[serde(default)]
        test_labels: Option<PathBuf>,
        /// Feature scaling fitted on the training part.
        #[serde(default)]
        scaling: Scaling,
        /// `classification` of the labels (default), or `reconstruction` of the images
        /// themselves (an autoencoder; the labels then only colour its plots).
        #[serde(default)]
        task: TaskKind,
    },
    /// A CSV table with a header row.
    Csv {
        /// The table.
        path: PathBuf,
        /// Name of the target column.
        label: String,
        /// `classification` (default), `regression`, or `reconstruction` of the feature columns
        /// (the label column then only colours the plots).
        #[serde(default)]
        task: TaskKind,
        /// Feature scaling fitted on the training part.
        #[serde(default)]
        scaling: Scaling,
        /// A separate test table with the same columns.
        #[serde(default)]
        test_path: Option<PathBuf>,
        /// Or: this fraction of the rows held out as the test set (stratified for
        /// classification).
        #[serde(default)]
        test_fraction: Option<f64>,
    },
}

/// Classification, regression or reconstruction, as written in a spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Predict one of the label column's classes.
    #[default]
    Classification,
    /// Predict the label column's number.
    Regression,
    /// Reproduce the input itself (unsupervised: an autoencoder).
    Reconstruction,
}

/// The optimizer and its settings (PyTorch's defaults where omitted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerSpec {
    /// SGD with optional momentum, Nesterov and weight decay.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum (default 0).
        #[serde(default)]
        momentum: f32,
        /// Nesterov momentum (default false).
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay (default 0).
        #[serde(default)]
        weight_decay: f32,
    },
    /// Adam.
    Adam {
        /// Learning rate (default 1e-3).
        #[serde(default = "adam_lr")]
        lr: f32,
        /// β1 (default 0.9).
        #[serde(default = "beta1")]
        beta1: f32,
        /// β2 (default 0.999).
        #[serde(default = "beta2")]
        beta2: f32,
        /// eps (default 1e-8).
        #[serde(default = "adam_eps")]
        eps: f32,
        /// L2 weight decay (default 0).
        #[serde(default)]
        weight_decay: f32,
    },
    /// AdamW.
    Adamw {
        /// Learning rate (default 1e-3).
        #[serde(default = "adam_lr")]
        lr: f32,
        /// β1 (default 0.9).
        #[serde(default = "beta1")]
        beta1: f32,
        /// β2 (default 0.999).
        #[serde(default = "beta2")]
        beta2: f32,
        /// eps (default 1e-8).
        #[serde(default = "adam_eps")]
        eps: f32,
        /// Decoupled weight decay (default 0.01).
        #[serde(default = "adamw_decay")]
        weight_decay: f32,
    },
    /// RMSprop.
    Rmsprop {
        /// Learning rate (default 0.01).
        #[serde(default = "rms_lr")]
        lr: f32,
        /// Smoothing constant α (default 0.99).
        #[serde(default = "rms_alpha")]
        alpha: f32,
        /// eps (default 1e-8).
        #[serde(default = "adam_eps")]
        eps: f32,
        /// Momentum (default 0).
        #[serde(default)]
        momentum: f32,
        /// L2 weight decay (default 0).
        #[serde(default)]
        weight_decay: f32,
    },
}

fn adam_lr() -> f32 {
    1e-3
}
fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn adam_eps() -> f32 {
    1e-8
}
fn adamw_decay() -> f32 {
    0.01
}
fn rms_lr() -> f32 {
    0.01
}
fn rms_alpha() -> f32 {
    0.99
}

impl OptimizerSpec {
    /// The optimizer over `params`.
    pub fn build(&self, params: Vec<Tensor>) -> Result<Box<dyn Optimizer>> {
        Ok(match *self {
            OptimizerSpec::Sgd { lr, momentum, nesterov, weight_decay } => {
                Box::new(Sgd::with_options(params, lr, momentum, nesterov, weight_decay)?)
            }
            OptimizerSpec::Adam { lr, beta1, beta2, eps, weight_decay } => {
                Box::new(Adam::with_config(params, AdamConfig { lr, beta1, beta2, eps, weight_decay })?)
            }
            OptimizerSpec::Adamw { lr, beta1, beta2, eps, weight_decay } => {
                Box::new(AdamW::with_config(params, AdamConfig { lr, beta1, beta2, eps, weight_decay })?)
            }
            OptimizerSpec::Rmsprop { lr, alpha, eps, momentum, weight_decay } => {
                Box::new(RmsProp::with_options(params, lr, alpha, eps, momentum, weight_decay)?)
            }
        })
    }
}

/// How a job is validated.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum ValidationSpec {
    /// Hold out part of the training data and validate on it after every epoch (the
    /// course's holdout; `train_fraction` 2/3 by default).
    Holdout {
        /// Fraction of the training data to train on.
        #[serde(default = "two_thirds")]
        train_fraction: f64,
        /// Keep class proportions in both parts (classification; default true).
        #[serde(default = "yes")]
        stratified: bool,
    },
    /// k-fold cross-validation (`sinapse cv`).
    Kfold {
        /// Number of folds.
        folds: usize,
        /// Stratified folds (default true).
        #[serde(default = "yes")]
        stratified: bool,
    },
    /// Leave-one-out cross-validation (`sinapse cv`).
    Loo,
}

fn two_thirds() -> f64 {
    2.0 / 3.0
}

/// Mixed into the spec's seed for the test split, so it is its own random stream.
const TEST_SALT: u64 = 0x7e57_7e57;
/// Mixed into the spec's seed for validation splits (holdout, folds).
pub const SPLIT_SALT: u64 = 0x5b11_75ee;
/// Mixed into the spec's seed for the training shuffle.
const SHUFFLE_SALT: u64 = 0x5ffe_1e5e;

impl ModelSpec {
    /// Reads and checks a spec file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ModelSpec> {
        let path = path.as_ref();
        let text = crate::data::files::read_text(path)?;
        ModelSpec::parse(&text, path)
    }

    /// Parses and checks spec text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<ModelSpec> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let at = line.map_or(String::new(), |l| format!("line {l}: "));
            Error::Format { path: path.to_path_buf(), msg: format!("{at}{}", e.message().trim()) }
        })?;
        spec.validate().map_err(|e| Error::Format { path: path.to_path_buf(), msg: e.to_string() })?;
        Ok(spec)
    }

    /// Checks the values that TOML's types cannot.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("spec", msg));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1".into());
        }
        if self.layers.is_empty() {
            return bad("a model needs at least one layer".into());
        }
        // The name only: whether the device is there is checked where it is used (`auto`
        // would open every GPU just to read a spec).
        if let Some(name) = &self.device {
            Device::check_name(name)?;
        }
        if let Some(s) = &self.schedule {
            s.validate()?;
        }
        match self.validation {
            Some(ValidationSpec::Holdout { train_fraction, .. }) if !(train_fraction > 0.0 && train_fraction < 1.0) => {
                return bad(format!("validation train_fraction must be in (0, 1), got {train_fraction}"));
            }
            Some(ValidationSpec::Kfold { folds, .. }) if folds < 2 => {
                return bad(format!("validation folds must be at least 2, got {folds}"));
            }
            _ => {}
        }
        if self.early_stopping.is_some() && !matches!(self.validation, Some(ValidationSpec::Holdout { .. })) {
            return bad("early_stopping needs [validation] method = \"holdout\"".into());
        }
        if let DataSpec::Csv { test_path: Some(_), test_fraction: Some(_), .. } = &self.data {
            return bad("give either test_path or test_fraction, not both".into());
        }
        if let DataSpec::Csv { test_fraction: Some(f), .. } = &self.data {
            if !(*f > 0.0 && *f < 1.0) {
                return bad(format!("test_fraction must be in (0, 1), got {f}"));
            }
        }
        let classification = match &self.data {
            DataSpec::Idx { task, .. } | DataSpec::Csv { task, .. } => *task == TaskKind::Classification,
        };
        if let DataSpec::Idx { task: TaskKind::Regression, .. } = &self.data {
            return bad("IDX data has class labels: its task is classification or reconstruction".into());
        }
        let cross_entropy = match self.loss {
            Some(l) => l == LossKind::CrossEntropy,
            None => classification,
        };
        if self.loss == Some(LossKind::BinaryCrossEntropy) {
            if matches!(self.layers.last(), Some(LayerSpec::Sigmoid)) {
                return bad("binary_cross_entropy applies the sigmoid to the model's outputs itself: remove the \
                            final sigmoid layer (the reconstructions are still its sigmoid)"
                    .into());
            }
            if self.scaling() == Scaling::Standard {
                return bad("binary_cross_entropy needs targets in [0, 1]; standard scaling makes them any \
                            number: use scaling = \"none\" or \"min_max\", or the mse loss"
                    .into());
            }
        }
        if cross_entropy && matches!(self.layers.last(), Some(LayerSpec::Softmax)) {
            return bad("cross_entropy applies softmax to the model's outputs itself: remove the final \
                        softmax layer (predict still reports probabilities)"
                .into());
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return bad(format!("clip_grad_norm must be > 0, got {c}"));
            }
        }
        Ok(())
    }

    /// The task the spec's data section names.
    pub fn task_kind(&self) -> TaskKind {
        match &self.data {
            DataSpec::Idx { task, .. } | DataSpec::Csv { task, .. } => *task,
        }
    }

    /// The feature scaling the spec asks for.
    pub fn scaling(&self) -> Scaling {
        match &self.data {
            DataSpec::Idx { scaling, .. } | DataSpec::Csv { scaling, .. } => *scaling,
        }
    }

    /// The device named by the spec (the CPU when it names none). Naming is checked here;
    /// whether the device is present is checked when it is used.
    pub fn device(&self) -> Result<Device> {
        self.device.as_deref().map_or(Ok(Device::Cpu), Device::parse)
    }

    /// The loss: as given, or the task's default.
    pub fn loss_for(&self, task: &Task) -> LossKind {
        self.loss.unwrap_or_else(|| LossKind::default_for(task))
    }

    /// The settings of [`crate::train::fit`] for this job.
    pub fn fit_config(&self, task: Task) -> FitConfig {
        FitConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            task,
            loss: self.loss_for(&task),
            schedule: self.schedule.unwrap_or_default(),
            early_stopping: self.early_stopping,
            clip_grad_norm: self.clip_grad_norm,
            // Its own stream: the shuffle order should not mirror the initial weights' draws.
            seed: self.seed ^ SHUFFLE_SALT,
            progress_every: None,
            communicator: None,
            cuda_graph: self.cuda_graph.unwrap_or(false) && self.device().is_ok_and(|d| d != Device::Cpu),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Scaling;
    use crate::nn::{Init, Module};
    use crate::Rng;

    const MINIMAL: &str = r#"
epochs = 3
batch_size = 4
[data]
format = "csv"
path = "t.csv"
label = "y"
[[layers]]
type = "linear"
units = 2
[optimizer]
type = "sgd"
lr = 0.1
"#;

    fn parse(text: &str) -> Result<ModelSpec> {
        ModelSpec::parse(text, Path::new("spec.toml"))
    }

    #[test]
    fn cuda_graph_is_read_and_left_off_on_the_cpu() {
        let on = parse(&format!("cuda_graph = true\n{MINIMAL}")).unwrap();
        assert_eq!(on.cuda_graph, Some(true));
        let task = crate::train::Task::Classification { classes: 2 };
        assert!(!on.fit_config(task).cuda_graph, "the spec's device is the CPU");
        assert!(!parse(MINIMAL).unwrap().fit_config(task).cuda_graph);
        let round = toml::to_string(&on).unwrap();
        assert_eq!(parse(&round).unwrap(), on, "kept when saved:\n{round}");
    }

    #[test]
    fn a_minimal_spec_parses_with_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.seed, 0);
        assert_eq!(s.layers, vec![LayerSpec::Linear { units: 2, init: Init::PytorchDefault, bias: true }]);
        assert!(matches!(s.data, DataSpec::Csv { task: TaskKind::Classification, scaling: Scaling::None, .. }));
        let round = toml::to_string(&s).unwrap();
        assert_eq!(parse(&round).unwrap(), s, "a spec survives saving:\n{round}");
    }

    #[test]
    fn unknown_names_are_errors_that_list_the_valid_ones() {
        let e = parse(&MINIMAL.replace("type = \"linear\"", "type = \"conv9d\"")).unwrap_err().to_string();
        assert!(e.contains("conv9d") && e.contains("linear") && e.contains("dropout"), "{e}");
        assert!(e.contains("line "), "{e}");
        let e = parse(&MINIMAL.replace("epochs = 3", "epochs = 3\nepoch = 4")).unwrap_err().to_string();
        assert!(e.contains("unknown field `epoch`") && e.contains("batch_size"), "{e}");
        let e = parse(&MINIMAL.replace("units = 2", "units = 2\nactivation = \"relu\"")).unwrap_err().to_string();
        assert!(e.contains("unknown field `activation`"), "{e}");
        let e = parse(&MINIMAL.replace("type = \"sgd\"", "type = \"adagrad\"")).unwrap_err().to_string();
        assert!(e.contains("adagrad") && e.contains("adamw") && e.contains("rmsprop"), "{e}");
        let e = parse(&format!("loss = \"hinge\"\n{MINIMAL}")).unwrap_err().to_string();
        assert!(e.contains("hinge") && e.contains("cross_entropy"), "{e}");
        let e = parse(&MINIMAL.replace("units = 2", "units = 2\ninit = \"glorot\"")).unwrap_err().to_string();
        assert!(e.contains("glorot") && e.contains("xavier_uniform"), "{e}");
        let e = parse(&MINIMAL.replace("epochs = 3", "epochs = 0")).unwrap_err().to_string();
        assert!(e.contains("epochs must be at least 1"), "{e}");
        let softmax_last = MINIMAL.replace("[optimizer]", "[[layers]]\ntype = \"softmax\"\n[optimizer]");
        let e = parse(&softmax_last).unwrap_err().to_string();
        assert!(e.contains("cross_entropy applies softmax"), "{e}");
    }

    #[test]
    fn transformer_and_batch_norm_layers_build_from_a_spec() {
        let layers = r#"
[[layers]]
type = "reshape"
shape = [6, 8]
[[layers]]
type = "positional_encoding"
kind = "learned"
[[layers]]
type = "transformer_encoder"
heads = 2
layers = 2
norm_first = true
[[layers]]
type = "last_step"
[[layers]]
type = "batch_norm1d"
[[layers]]
type = "linear"
units = 2
"#;
        let text = MINIMAL.replace("[[layers]]\ntype = \"linear\"\nunits = 2\n", layers);
        let s = parse(&text).unwrap();
        let task = crate::train::Task::Classification { classes: 2 };
        let model = s.build_model(&[48], &task, &mut Rng::seed(0)).unwrap();
        let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
        for want in [
            "1.weight",
            "2.layers.0.self_attn.in_proj_weight",
            "2.layers.1.self_attn.out_proj.bias",
            "2.layers.1.linear1.weight",
            "2.layers.1.norm2.bias",
            "4.running_var",
            "4.num_batches_tracked",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        // Feed-forward width 4·d by default.
        assert!(model.layers()[2].describe().contains("feed-forward 32, pre-norm"), "{}", model.layers()[2].describe());
        // Heads that do not divide the width: an error naming the layer.
        let mut bad = s.clone();
        bad.layers[2] = LayerSpec::TransformerEncoder {
            heads: 3,
            feedforward: None,
            dropout: 0.1,
            activation: layers::FeedForwardKind::Relu,
            norm_first: false,
            causal: false,
            layers: 1,
        };
        let e = bad.build_model(&[48], &task, &mut Rng::seed(0)).err().unwrap().to_string();
        assert!(e.contains("layer 2 (transformer_encoder)") && e.contains("multiple of the heads"), "{e}");
    }

    #[test]
    fn binary_cross_entropy_needs_logits_and_targets_in_0_1() {
        let with = |extra: &str, scaling: &str| {
            let text = MINIMAL
                .replace("epochs = 3", "epochs = 3\nloss = \"binary_cross_entropy\"")
                .replace("label = \"y\"", &format!("label = \"y\"\ntask = \"reconstruction\"\nscaling = \"{scaling}\""))
                .replace("[optimizer]", &format!("{extra}[optimizer]"));
            parse(&text)
        };
        assert!(with("", "none").is_ok());
        assert!(with("", "min_max").is_ok());
        let e = with("", "standard").unwrap_err().to_string();
        assert!(e.contains("[0, 1]") && e.contains("standard"), "{e}");
        let e = with("[[layers]]\ntype = \"sigmoid\"\n", "none").unwrap_err().to_string();
        assert!(e.contains("remove the final sigmoid"), "{e}");
        // A device name is checked, not opened: `auto` reads without looking for a GPU.
        let auto = MINIMAL.replace("epochs = 3", "epochs = 3\ndevice = \"auto\"");
        assert!(parse(&auto).is_ok());
        let bad = MINIMAL.replace("epochs = 3", "epochs = 3\ndevice = \"gpu\"");
        assert!(parse(&bad).unwrap_err().to_string().contains("unknown device"));
    }

    #[test]
    fn the_output_layer_must_fit_the_task() {
        let s = parse(MINIMAL).unwrap();
        let e = s.build_model(&[4], &Task::Classification { classes: 3 }, &mut Rng::seed(0)).err().unwrap();
        assert!(e.to_string().contains("output per sample is [2] but the task needs 3 outputs"), "{e}");
        let m = s.build_model(&[4], &Task::Classification { classes: 2 }, &mut Rng::seed(0)).unwrap();
        assert_eq!(m.num_parameters(), 4 * 2 + 2);
    }

    #[test]
    fn schedules_in_a_spec_step_per_batch_with_warmup() {
        use crate::optim::{LrSchedule, Per, Schedule};
        let with = |table: &str| parse(&format!("{MINIMAL}[schedule]\n{table}"));
        let s = with("type = \"cosine\"\nt_max = 100\nper = \"batch\"\nwarmup = 10\n").unwrap();
        let want = Schedule { kind: LrSchedule::Cosine { t_max: 100, eta_min: 0.0 }, per: Per::Batch, warmup: 10 };
        assert_eq!(s.schedule, Some(want));
        assert_eq!(parse(&toml::to_string(&s).unwrap()).unwrap(), s, "it survives saving");
        // Older specs (no per, no warmup) read as before.
        let s = with("type = \"step\"\nstep_size = 3\ngamma = 0.5\n").unwrap();
        assert_eq!(s.schedule, Some(LrSchedule::Step { step_size: 3, gamma: 0.5 }.into()));
        for (table, says) in [
            ("type = \"linear\"\n", "unknown schedule type `linear`"),
            ("type = \"cosine\"\n", "needs `t_max`"),
            ("type = \"exponential\"\ngamma = 0.9\nt_max = 3\n", "takes no `t_max`"),
            ("type = \"constant\"\nper = \"week\"\n", "week"),
            ("type = \"constant\"\nwarmpu = 3\n", "unknown field `warmpu`"),
        ] {
            let e = with(table).unwrap_err().to_string();
            assert!(e.contains(says), "{table}: {e}");
        }
    }
}
