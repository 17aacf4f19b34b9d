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

use crate::data::csv::{read_csv, Target};
use crate::data::{idx::read_labelled_images, split, Dataset, LabelMap, Scaler, Scaling};
use crate::nn::{self, Init, Mode, Module, Sequential};
use crate::optim::{Adam, AdamConfig, AdamW, LrSchedule, Optimizer, RmsProp, Sgd};
use crate::train::{checkpoint, yes, EarlyStopping, FitConfig, LossKind, Task};
use crate::{no_grad, Error, Result, Rng, Tensor};

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
    /// The loss (default: cross_entropy for classification, mse for regression).
    #[serde(default)]
    pub loss: Option<LossKind>,
    /// The optimizer.
    pub optimizer: OptimizerSpec,
    /// Learning-rate schedule (default: constant).
    #[serde(default)]
    pub schedule: Option<LrSchedule>,
    /// Validation during training (holdout) or cross-validation settings (kfold, loo).
    #[serde(default)]
    pub validation: Option<ValidationSpec>,
    /// Early stopping on the validation loss (needs holdout validation).
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
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
    },
    /// A CSV table with a header row.
    Csv {
        /// The table.
        path: PathBuf,
        /// Name of the target column.
        label: String,
        /// `classification` (default) or `regression`.
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

/// Classification or regression, as written in a spec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Predict one of the label column's classes.
    #[default]
    Classification,
    /// Predict the label column's number.
    Regression,
}

/// One layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerSpec {
    /// Fully connected; its input size is inferred from the previous layer.
    Linear {
        /// Number of outputs.
        units: usize,
        /// Weight initialisation (default pytorch_default).
        #[serde(default)]
        init: Init,
        /// Whether the layer has a bias (default true).
        #[serde(default = "yes")]
        bias: bool,
    },
    /// ReLU.
    Relu,
    /// Leaky ReLU.
    LeakyRelu {
        /// Slope for negative inputs (default 0.01).
        #[serde(default = "leaky_default")]
        slope: f32,
    },
    /// Sigmoid.
    Sigmoid,
    /// Tanh.
    Tanh,
    /// Heaviside step (passes no gradient).
    Step,
    /// Softmax over the last axis.
    Softmax,
    /// Inverted dropout.
    Dropout {
        /// Drop probability.
        p: f32,
    },
    /// Flattens all axes after the batch axis.
    Flatten,
    /// Reshapes each sample (e.g. 784 pixels into `[1, 28, 28]`).
    Reshape {
        /// The per-sample shape.
        shape: Vec<usize>,
    },
    /// 2-D convolution over `[N, C, H, W]`; input channels inferred.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel size: one number or `[height, width]`.
        kernel: Size2,
        /// Stride (default 1).
        #[serde(default = "one2")]
        stride: Size2,
        /// Zero padding on each side (default 0).
        #[serde(default = "zero2")]
        padding: Size2,
        /// Dilation (default 1).
        #[serde(default = "one2")]
        dilation: Size2,
        /// Weight initialisation (default pytorch_default).
        #[serde(default)]
        init: Init,
        /// Whether the layer has a bias (default true).
        #[serde(default = "yes")]
        bias: bool,
    },
    /// 1-D convolution over `[N, C, L]`; input channels inferred.
    Conv1d {
        /// Output channels.
        out_channels: usize,
        /// Kernel size.
        kernel: usize,
        /// Stride (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on each side (default 0).
        #[serde(default)]
        padding: usize,
        /// Dilation (default 1).
        #[serde(default = "one")]
        dilation: usize,
    },
    /// Max pooling; the stride defaults to the kernel.
    MaxPool2d {
        /// Window size.
        kernel: Size2,
        /// Step between windows (default: the kernel).
        #[serde(default)]
        stride: Option<Size2>,
        /// Padding (default 0).
        #[serde(default = "zero2")]
        padding: Size2,
    },
    /// Average pooling; the stride defaults to the kernel.
    AvgPool2d {
        /// Window size.
        kernel: Size2,
        /// Step between windows (default: the kernel).
        #[serde(default)]
        stride: Option<Size2>,
        /// Padding (default 0).
        #[serde(default = "zero2")]
        padding: Size2,
    },
    /// Elman RNN over `[N, T, F]` (batch first); input size inferred.
    Rnn {
        /// Hidden units.
        hidden: usize,
        /// Stacked layers (default 1).
        #[serde(default = "one")]
        layers: usize,
    },
    /// LSTM over `[N, T, F]` (batch first); input size inferred.
    Lstm {
        /// Hidden units.
        hidden: usize,
        /// Stacked layers (default 1).
        #[serde(default = "one")]
        layers: usize,
    },
    /// GRU over `[N, T, F]` (batch first); input size inferred.
    Gru {
        /// Hidden units.
        hidden: usize,
        /// Stacked layers (default 1).
        #[serde(default = "one")]
        layers: usize,
    },
    /// The last step of a sequence `[N, T, F] -> [N, F]`.
    LastStep,
    /// A table of `num` learned vectors of size `dim`, looked up by index.
    Embedding {
        /// Number of entries (indices run from 0 to num - 1).
        num: usize,
        /// Vector size.
        dim: usize,
    },
}

/// A size given as one number (both axes) or as `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size2 {
    /// The same size on both axes.
    Square(usize),
    /// `[height, width]`.
    Pair([usize; 2]),
}

impl Size2 {
    /// As `[height, width]`.
    pub fn pair(self) -> [usize; 2] {
        match self {
            Size2::Square(s) => [s, s],
            Size2::Pair(p) => p,
        }
    }
}

fn one() -> usize {
    1
}

fn one2() -> Size2 {
    Size2::Square(1)
}

fn zero2() -> Size2 {
    Size2::Square(0)
}

fn leaky_default() -> f32 {
    0.01
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

/// A spec's data, read but not yet scaled.
#[derive(Clone, Debug)]
pub struct RawData {
    /// Training inputs `[N, F]` and targets `[N]`.
    pub train: Dataset,
    /// Test inputs and targets, when the spec has a test set.
    pub test: Option<Dataset>,
    /// What the targets are.
    pub task: Task,
    /// Names of the input features.
    pub feature_names: Vec<String>,
    /// Class names (classification).
    pub classes: Option<LabelMap>,
}

impl ModelSpec {
    /// Reads and checks a spec file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<ModelSpec> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
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
            DataSpec::Idx { .. } => true,
            DataSpec::Csv { task, .. } => *task == TaskKind::Classification,
        };
        let cross_entropy = match self.loss {
            Some(l) => l == LossKind::CrossEntropy,
            None => classification,
        };
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

    /// The feature scaling the spec asks for.
    pub fn scaling(&self) -> Scaling {
        match &self.data {
            DataSpec::Idx { scaling, .. } | DataSpec::Csv { scaling, .. } => *scaling,
        }
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
        }
    }

    /// Reads the spec's data; relative paths are resolved against `base` (the spec's folder).
    pub fn load_data(&self, base: &Path) -> Result<RawData> {
        let at = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        match &self.data {
            DataSpec::Idx { train_images, train_labels, test_images, test_labels, .. } => {
                let train = read_labelled_images(&at(train_images), &at(train_labels))?;
                let test = match (test_images, test_labels) {
                    (Some(i), Some(l)) => Some(read_labelled_images(&at(i), &at(l))?),
                    (None, None) => None,
                    _ => return Err(Error::invalid("spec", "give both test_images and test_labels, or neither")),
                };
                let max_label = train.y().to_vec().iter().fold(0.0f32, |m, &v| m.max(v)) as usize;
                let classes = LabelMap { classes: (0..=max_label).map(|c| c.to_string()).collect() };
                let features = train.x().shape()[1];
                Ok(RawData {
                    train,
                    test,
                    task: Task::Classification { classes: classes.len() },
                    feature_names: (0..features).map(|i| format!("pixel{i}")).collect(),
                    classes: Some(classes),
                })
            }
            DataSpec::Csv { path, label, task, test_path, test_fraction, .. } => {
                let target = match task {
                    TaskKind::Classification => Target::Class,
                    TaskKind::Regression => Target::Value,
                };
                let table = read_csv(at(path), Some(label), target, None)?;
                let targets =
                    table.targets.clone().ok_or_else(|| Error::invalid("spec", "the CSV has no label column"))?;
                let all = Dataset::new(table.features.clone(), targets)?;
                let task = match &table.classes {
                    Some(c) => Task::Classification { classes: c.len() },
                    None => Task::Regression,
                };
                let (train, test) = match (test_path, test_fraction) {
                    (Some(tp), _) => {
                        let t = read_csv(at(tp), Some(label), target, table.classes.as_ref())?;
                        if t.feature_names != table.feature_names {
                            return Err(Error::invalid(
                                "spec",
                                format!(
                                    "test columns {:?} differ from training columns {:?}",
                                    t.feature_names, table.feature_names
                                ),
                            ));
                        }
                        let ty = t.targets.ok_or_else(|| Error::invalid("spec", "the test CSV has no label column"))?;
                        (all, Some(Dataset::new(t.features, ty)?))
                    }
                    (None, Some(f)) => {
                        let strata = class_indices(&all, &task);
                        let fold = split::holdout(
                            all.len(),
                            1.0 - f,
                            strata.as_deref(),
                            &mut Rng::seed(self.seed ^ TEST_SALT),
                        )?;
                        (all.subset(&fold.train)?, Some(all.subset(&fold.test)?))
                    }
                    (None, None) => (all, None),
                };
                Ok(RawData { train, test, task, feature_names: table.feature_names, classes: table.classes })
            }
        }
    }

    /// Builds the layers for inputs of `input_shape` (without the batch axis), inferring each
    /// linear layer's input size by running a zero sample through the layers before it. The
    /// output must have `task.outputs()` values per sample.
    pub fn build_model(&self, input_shape: &[usize], task: &Task, rng: &mut Rng) -> Result<Sequential> {
        let _off = no_grad();
        let mut shape = vec![1];
        shape.extend_from_slice(input_shape);
        let mut probe = Tensor::zeros(&shape);
        let mut model = Sequential::new();
        for (i, l) in self.layers.iter().enumerate() {
            let layer: Box<dyn Module> = match l {
                LayerSpec::Linear { units, init, bias } => {
                    let in_features = *probe.shape().last().unwrap_or(&1);
                    if probe.rank() != 2 {
                        return Err(Error::invalid(
                            "spec",
                            format!(
                                "layer {i} (linear) needs inputs [batch, features], got {:?}; add a flatten layer",
                                probe.shape()
                            ),
                        ));
                    }
                    let mut lin = nn::Linear::with_init(in_features, *units, *init, rng)?;
                    if !bias {
                        lin.bias = None;
                    }
                    Box::new(lin)
                }
                LayerSpec::Relu => Box::new(nn::Relu),
                LayerSpec::LeakyRelu { slope } => Box::new(nn::LeakyRelu(*slope)),
                LayerSpec::Sigmoid => Box::new(nn::Sigmoid),
                LayerSpec::Tanh => Box::new(nn::Tanh),
                LayerSpec::Step => Box::new(nn::Step),
                LayerSpec::Softmax => Box::new(nn::Softmax),
                LayerSpec::Dropout { p } => Box::new(nn::Dropout::new(*p, rng)?),
                LayerSpec::Flatten => Box::new(nn::Flatten),
                LayerSpec::Reshape { shape } => Box::new(nn::Reshape(shape.clone())),
                LayerSpec::Conv2d { out_channels, kernel, stride, padding, dilation, init, bias } => {
                    let channels = input_axis(&probe, i, "conv2d", 4, 1)?;
                    let conv = nn::Conv2d::with_init(channels, *out_channels, kernel.pair(), *init, rng)?
                        .stride(stride.pair())
                        .padding(padding.pair())
                        .dilation(dilation.pair());
                    Box::new(if *bias { conv } else { conv.without_bias() })
                }
                LayerSpec::Conv1d { out_channels, kernel, stride, padding, dilation } => {
                    let channels = input_axis(&probe, i, "conv1d", 3, 1)?;
                    let mut conv = nn::Conv1d::new(channels, *out_channels, *kernel, rng)?;
                    (conv.stride, conv.padding, conv.dilation) = (*stride, *padding, *dilation);
                    Box::new(conv)
                }
                LayerSpec::MaxPool2d { kernel, stride, padding } | LayerSpec::AvgPool2d { kernel, stride, padding } => {
                    let kind =
                        if matches!(l, LayerSpec::MaxPool2d { .. }) { nn::PoolKind::Max } else { nn::PoolKind::Avg };
                    let kernel = kernel.pair();
                    let stride = stride.map_or(kernel, Size2::pair);
                    Box::new(nn::Pool2d { kind, kernel, stride, padding: padding.pair() })
                }
                LayerSpec::Rnn { hidden, layers }
                | LayerSpec::Lstm { hidden, layers }
                | LayerSpec::Gru { hidden, layers } => {
                    let kind = match l {
                        LayerSpec::Rnn { .. } => nn::CellKind::Rnn,
                        LayerSpec::Lstm { .. } => nn::CellKind::Lstm,
                        _ => nn::CellKind::Gru,
                    };
                    let features = input_axis(&probe, i, "recurrent", 3, 2)?;
                    Box::new(nn::Recurrent::new(kind, features, *hidden, *layers, true, rng)?)
                }
                LayerSpec::LastStep => Box::new(nn::LastStep),
                LayerSpec::Embedding { num, dim } => Box::new(nn::Embedding::new(*num, *dim, rng)?),
            };
            probe = layer.forward(&probe, Mode::Eval)?;
            model.push(layer);
        }
        let out = probe.shape();
        if out.len() != 2 || out[1] != task.outputs() {
            let need = match task {
                Task::Classification { classes } => format!("{classes} outputs, one per class"),
                Task::Regression => "1 output".to_string(),
            };
            return Err(Error::invalid(
                "spec",
                format!("the model's output per sample is {:?} but the task needs {need}", &out[1..]),
            ));
        }
        Ok(model)
    }
}

/// The size of axis `axis` of the probe, which must have rank `rank`, for layer `i`'s input.
fn input_axis(probe: &Tensor, i: usize, kind: &str, rank: usize, axis: usize) -> Result<usize> {
    let layouts = ["", "", "[N, F]", "[N, C, L] or [N, T, F]", "[N, C, H, W]"];
    if probe.rank() != rank {
        return Err(Error::invalid(
            "spec",
            format!(
                "layer {i} ({kind}) needs inputs {}, got {:?}; add a reshape, flatten or last_step layer before it",
                layouts[rank],
                probe.shape()
            ),
        ));
    }
    Ok(probe.shape()[axis])
}

/// Class index per row, for stratified splits (None for regression).
pub fn class_indices(data: &Dataset, task: &Task) -> Option<Vec<usize>> {
    match task {
        Task::Classification { .. } => Some(data.y().to_vec().iter().map(|&c| c as usize).collect()),
        Task::Regression => None,
    }
}

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
        let inputs = crate::tensor::checked_elem_count("model card", &self.input_shape)?;
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
        Ok(())
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

impl TrainedModel {
    /// Writes the model directory atomically: `model.toml`, `model.safetensors`, and whatever
    /// `extra` writes into the same (temporary) directory (history, plots).
    pub fn save(&self, dir: &Path, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let card = toml::to_string(&self.card).map_err(|e| Error::invalid("save model", e.to_string()))?;
        let weights = checkpoint::weights_to_bytes(&self.model.named_parameters())?;
        checkpoint::write_dir_atomically(dir, |tmp| {
            let write = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|source| Error::Io { path: p, source })
            };
            write(CARD_FILE, card.as_bytes())?;
            write(WEIGHTS_FILE, &weights)?;
            extra(tmp)
        })
    }

    /// Reads a model directory: rebuilds the network from the card and loads the weights,
    /// checking every name and shape.
    pub fn load(dir: &Path) -> Result<TrainedModel> {
        let card_path = dir.join(CARD_FILE);
        let text =
            std::fs::read_to_string(&card_path).map_err(|source| Error::Io { path: card_path.clone(), source })?;
        let card: ModelCard = toml::from_str(&text)
            .map_err(|e| Error::Format { path: card_path.clone(), msg: e.message().to_string() })?;
        card.validate().map_err(|e| Error::Format { path: card_path.clone(), msg: e.to_string() })?;
        let model = card.spec.build_model(&card.input_shape, &card.task, &mut Rng::seed(card.spec.seed))?;
        let weights_path = dir.join(WEIGHTS_FILE);
        checkpoint::load_into(&model, &checkpoint::load_weights(&weights_path)?, &weights_path)?;
        Ok(TrainedModel { card, model })
    }

    /// Scales raw features `[N, F]` with the fitted scaler and runs the network (evaluation
    /// mode, no gradients).
    pub fn outputs(&self, raw_features: &Tensor) -> Result<Tensor> {
        let x = self.card.scaler.transform(raw_features)?;
        crate::train::predict(&self.model, &x, 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_output_layer_must_fit_the_task() {
        let s = parse(MINIMAL).unwrap();
        let e = s.build_model(&[4], &Task::Classification { classes: 3 }, &mut Rng::seed(0)).err().unwrap();
        assert!(e.to_string().contains("output per sample is [2] but the task needs 3 outputs"), "{e}");
        let m = s.build_model(&[4], &Task::Classification { classes: 2 }, &mut Rng::seed(0)).unwrap();
        assert_eq!(m.num_parameters(), 4 * 2 + 2);
    }
}
