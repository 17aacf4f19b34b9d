//! The layers a spec can hold, and how they become a network: each `[[layers]]` table is a
//! [`LayerSpec`], and [`ModelSpec::build_model`] turns the list into a [`Sequential`],
//! inferring each layer's input size from the one before. Adding a layer type touches this
//! file only.

use serde::{Deserialize, Serialize};

use super::ModelSpec;
use crate::nn::{self, Init, Mode, Module, Sequential};
use crate::train::{yes, Task};
use crate::{no_grad, Error, Result, Rng, Tensor};

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
    /// GELU (exact, with erf).
    Gelu,
    /// SiLU (swish).
    Silu,
    /// ELU.
    Elu {
        /// α, the negative inputs' saturation (default 1).
        #[serde(default = "one_f32")]
        alpha: f32,
    },
    /// Softplus.
    Softplus,
    /// Softmax over the last axis.
    Softmax,
    /// Layer normalisation over the last axis (features), with a learned scale and shift.
    LayerNorm {
        /// Added to the variance (default 1e-5).
        #[serde(default = "eps_default")]
        eps: f32,
    },
    /// Batch normalisation of `[N, C]` or `[N, C, L]` inputs, per channel (`BatchNorm1d`).
    BatchNorm1d {
        /// Added to the variance (default 1e-5).
        #[serde(default = "eps_default")]
        eps: f32,
        /// Weight of each batch in the running statistics (default 0.1).
        #[serde(default = "momentum_default")]
        momentum: f32,
    },
    /// Batch normalisation of `[N, C, H, W]` inputs, per channel (`BatchNorm2d`).
    BatchNorm2d {
        /// Added to the variance (default 1e-5).
        #[serde(default = "eps_default")]
        eps: f32,
        /// Weight of each batch in the running statistics (default 0.1).
        #[serde(default = "momentum_default")]
        momentum: f32,
    },
    /// Group normalisation of `[N, C, ..]` inputs: `groups` groups of channels.
    GroupNorm {
        /// Number of groups; must divide the channels.
        groups: usize,
        /// Added to the variance (default 1e-5).
        #[serde(default = "eps_default")]
        eps: f32,
    },
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
    /// Transposed 2-D convolution over `[N, C, H, W]` (learned upsampling); input channels
    /// inferred.
    ConvTranspose2d {
        /// Output channels.
        out_channels: usize,
        /// Kernel size: one number or `[height, width]`.
        kernel: Size2,
        /// Stride (default 1).
        #[serde(default = "one2")]
        stride: Size2,
        /// Removed from each side of the output (default 0).
        #[serde(default = "zero2")]
        padding: Size2,
        /// Added to one side of the output, smaller than the stride (default 0).
        #[serde(default = "zero2")]
        output_padding: Size2,
        /// Dilation (default 1).
        #[serde(default = "one2")]
        dilation: Size2,
        /// Whether the layer has a bias (default true).
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Average pooling of `[N, C, H, W]` to a fixed output size, whatever the input's.
    AdaptiveAvgPool2d {
        /// Output size: one number or `[height, width]`.
        size: Size2,
    },
    /// Upsampling of `[N, C, H, W]` by whole factors.
    Upsample {
        /// Factor: one number or `[height, width]` (default 2).
        #[serde(default = "two2")]
        scale: Size2,
        /// `nearest` (default) or `bilinear`.
        #[serde(default)]
        mode: UpsampleKind,
        /// For bilinear: align the corner pixels (default false).
        #[serde(default)]
        align_corners: bool,
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
    /// A stack of transformer encoder layers over `[N, T, D]` (batch first); `D` inferred.
    TransformerEncoder {
        /// Attention heads (must divide `D`).
        heads: usize,
        /// Units of the position-wise network (default 4·D).
        #[serde(default)]
        feedforward: Option<usize>,
        /// Dropout (default 0.1, as PyTorch).
        #[serde(default = "dropout_default")]
        dropout: f32,
        /// `relu` (default) or `gelu`.
        #[serde(default)]
        activation: FeedForwardKind,
        /// Pre-norm when true (default false: post-norm).
        #[serde(default)]
        norm_first: bool,
        /// Each position sees only itself and earlier ones (default false).
        #[serde(default)]
        causal: bool,
        /// Stacked layers (default 1).
        #[serde(default = "one")]
        layers: usize,
    },
    /// Adds a vector per position to `[N, T, D]` inputs: fixed sines and cosines, or learned.
    PositionalEncoding {
        /// `sinusoidal` (default) or `learned`.
        #[serde(default)]
        kind: PositionKind,
        /// Longest sequence (default: the input's length).
        #[serde(default)]
        max_len: Option<usize>,
    },
    /// A table of `num` learned vectors of size `dim`, looked up by index.
    Embedding {
        /// Number of entries (indices run from 0 to num - 1).
        num: usize,
        /// Vector size.
        dim: usize,
    },
}

/// A transformer's position-wise activation, as a spec writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedForwardKind {
    /// ReLU.
    #[default]
    Relu,
    /// GELU.
    Gelu,
}

/// How an `upsample` layer fills new pixels, as a spec writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpsampleKind {
    /// Copies of the nearest pixel.
    #[default]
    Nearest,
    /// Linear interpolation on both axes.
    Bilinear,
}

/// Which positional encoding, as a spec writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionKind {
    /// Fixed sines and cosines.
    #[default]
    Sinusoidal,
    /// A learned table.
    Learned,
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

fn two2() -> Size2 {
    Size2::Square(2)
}

fn zero2() -> Size2 {
    Size2::Square(0)
}

fn eps_default() -> f32 {
    nn::DEFAULT_EPS
}

fn dropout_default() -> f32 {
    0.1
}

fn momentum_default() -> f32 {
    nn::DEFAULT_MOMENTUM
}

fn one_f32() -> f32 {
    1.0
}

fn leaky_default() -> f32 {
    0.01
}

impl LayerSpec {
    /// The layer's type as a spec writes it (`linear`, `conv2d`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Relu => "relu",
            LayerSpec::LeakyRelu { .. } => "leaky_relu",
            LayerSpec::Sigmoid => "sigmoid",
            LayerSpec::Tanh => "tanh",
            LayerSpec::Step => "step",
            LayerSpec::Gelu => "gelu",
            LayerSpec::Silu => "silu",
            LayerSpec::Elu { .. } => "elu",
            LayerSpec::Softplus => "softplus",
            LayerSpec::Softmax => "softmax",
            LayerSpec::LayerNorm { .. } => "layer_norm",
            LayerSpec::GroupNorm { .. } => "group_norm",
            LayerSpec::BatchNorm1d { .. } => "batch_norm1d",
            LayerSpec::BatchNorm2d { .. } => "batch_norm2d",
            LayerSpec::Dropout { .. } => "dropout",
            LayerSpec::Flatten => "flatten",
            LayerSpec::Reshape { .. } => "reshape",
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Conv1d { .. } => "conv1d",
            LayerSpec::ConvTranspose2d { .. } => "conv_transpose2d",
            LayerSpec::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d",
            LayerSpec::Upsample { .. } => "upsample",
            LayerSpec::MaxPool2d { .. } => "max_pool2d",
            LayerSpec::AvgPool2d { .. } => "avg_pool2d",
            LayerSpec::Rnn { .. } => "rnn",
            LayerSpec::Lstm { .. } => "lstm",
            LayerSpec::Gru { .. } => "gru",
            LayerSpec::LastStep => "last_step",
            LayerSpec::TransformerEncoder { .. } => "transformer_encoder",
            LayerSpec::PositionalEncoding { .. } => "positional_encoding",
            LayerSpec::Embedding { .. } => "embedding",
        }
    }
}

impl ModelSpec {
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
            // Errors from inside a layer (its sizes, its memory, its forward pass) name it.
            let wrap = |e: Error| Error::InLayer { index: i, kind: l.kind().to_string(), source: Box::new(e) };
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
                    let mut lin = nn::Linear::with_init(in_features, *units, *init, rng).map_err(wrap)?;
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
                LayerSpec::Gelu => Box::new(nn::Gelu),
                LayerSpec::Silu => Box::new(nn::Silu),
                LayerSpec::Elu { alpha } => Box::new(nn::Elu(*alpha)),
                LayerSpec::Softplus => Box::new(nn::Softplus),
                LayerSpec::Softmax => Box::new(nn::Softmax),
                LayerSpec::LayerNorm { eps } => {
                    let features = *probe.shape().last().unwrap_or(&1);
                    Box::new(nn::LayerNorm::new(features, *eps).map_err(wrap)?)
                }
                LayerSpec::GroupNorm { groups, eps } => {
                    // Inputs [N, C, ..] of any rank from 2.
                    let channels = probe.shape().get(1).copied().unwrap_or(0);
                    Box::new(nn::GroupNorm::new(*groups, channels, *eps).map_err(wrap)?)
                }
                LayerSpec::BatchNorm1d { eps, momentum } => {
                    let channels = probe.shape().get(1).copied().unwrap_or(0);
                    Box::new(
                        nn::BatchNorm::new_1d(channels)
                            .and_then(|b| b.with_eps_momentum(*eps, Some(*momentum)))
                            .map_err(wrap)?,
                    )
                }
                LayerSpec::BatchNorm2d { eps, momentum } => {
                    let channels = input_axis(&probe, i, "batch_norm2d", 4, 1)?;
                    Box::new(
                        nn::BatchNorm::new_2d(channels)
                            .and_then(|b| b.with_eps_momentum(*eps, Some(*momentum)))
                            .map_err(wrap)?,
                    )
                }
                LayerSpec::Dropout { p } => Box::new(nn::Dropout::new(*p, rng).map_err(wrap)?),
                LayerSpec::Flatten => Box::new(nn::Flatten),
                LayerSpec::Reshape { shape } => Box::new(nn::Reshape(shape.clone())),
                LayerSpec::Conv2d { out_channels, kernel, stride, padding, dilation, init, bias } => {
                    let channels = input_axis(&probe, i, "conv2d", 4, 1)?;
                    let conv = nn::Conv2d::with_init(channels, *out_channels, kernel.pair(), *init, rng)
                        .map_err(wrap)?
                        .stride(stride.pair())
                        .padding(padding.pair())
                        .dilation(dilation.pair());
                    Box::new(if *bias { conv } else { conv.without_bias() })
                }
                LayerSpec::ConvTranspose2d {
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    output_padding,
                    dilation,
                    bias,
                } => {
                    let channels = input_axis(&probe, i, "conv_transpose2d", 4, 1)?;
                    let mut conv =
                        nn::ConvTranspose2d::new(channels, *out_channels, kernel.pair(), rng).map_err(wrap)?;
                    (conv.stride, conv.padding, conv.output_padding, conv.dilation) =
                        (stride.pair(), padding.pair(), output_padding.pair(), dilation.pair());
                    if !bias {
                        conv.bias = None;
                    }
                    Box::new(conv)
                }
                LayerSpec::AdaptiveAvgPool2d { size } => Box::new(nn::AdaptiveAvgPool2d { size: size.pair() }),
                LayerSpec::Upsample { scale, mode, align_corners } => {
                    let mode = match (mode, align_corners) {
                        (UpsampleKind::Nearest, false) => nn::UpsampleMode::Nearest,
                        (UpsampleKind::Nearest, true) => {
                            return Err(wrap(Error::invalid(
                                "spec",
                                "align_corners applies to bilinear upsampling only",
                            )))
                        }
                        (UpsampleKind::Bilinear, false) => nn::UpsampleMode::Bilinear,
                        (UpsampleKind::Bilinear, true) => nn::UpsampleMode::BilinearAlignCorners,
                    };
                    if scale.pair().contains(&0) {
                        return Err(wrap(Error::invalid("spec", "the upsampling scale must be at least 1")));
                    }
                    Box::new(nn::Upsample { scale: scale.pair(), mode })
                }
                LayerSpec::Conv1d { out_channels, kernel, stride, padding, dilation } => {
                    let channels = input_axis(&probe, i, "conv1d", 3, 1)?;
                    let mut conv = nn::Conv1d::new(channels, *out_channels, *kernel, rng).map_err(wrap)?;
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
                    Box::new(nn::Recurrent::new(kind, features, *hidden, *layers, true, rng).map_err(wrap)?)
                }
                LayerSpec::LastStep => Box::new(nn::LastStep),
                LayerSpec::TransformerEncoder {
                    heads,
                    feedforward,
                    dropout,
                    activation,
                    norm_first,
                    causal,
                    layers,
                } => {
                    let d = input_axis(&probe, i, "transformer_encoder", 3, 2)?;
                    let mut stack = Vec::with_capacity(*layers);
                    for _ in 0..(*layers).max(1) {
                        let mut l =
                            nn::TransformerEncoderLayer::new(d, *heads, feedforward.unwrap_or(4 * d), *dropout, rng)
                                .map_err(wrap)?;
                        l.activation = match activation {
                            FeedForwardKind::Relu => nn::FeedForwardActivation::Relu,
                            FeedForwardKind::Gelu => nn::FeedForwardActivation::Gelu,
                        };
                        (l.norm_first, l.causal) = (*norm_first, *causal);
                        stack.push(l);
                    }
                    Box::new(nn::TransformerEncoder { layers: stack })
                }
                LayerSpec::PositionalEncoding { kind, max_len } => {
                    let (length, d) = (input_axis(&probe, i, "positional_encoding", 3, 1)?, probe.shape()[2]);
                    let max_len = max_len.unwrap_or(length);
                    Box::new(
                        match kind {
                            PositionKind::Sinusoidal => nn::PositionalEncoding::sinusoidal(max_len, d),
                            PositionKind::Learned => nn::PositionalEncoding::learned(max_len, d, rng),
                        }
                        .map_err(wrap)?,
                    )
                }
                LayerSpec::Embedding { num, dim } => Box::new(nn::Embedding::new(*num, *dim, rng).map_err(wrap)?),
            };
            probe = layer.forward(&probe, Mode::Eval).map_err(wrap)?;
            model.push(layer);
        }
        let out = probe.shape();
        if out.len() != 2 || out[1] != task.outputs() {
            let need = match task {
                Task::Classification { classes } => format!("{classes} outputs, one per class"),
                Task::Regression => "1 output".to_string(),
                Task::Reconstruction { features } => format!("{features} outputs, one per input value"),
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
