//! Normalisation layers: each sample's values shifted to mean 0 and scaled to variance 1 over
//! some of its axes, then given a learned scale and shift (PyTorch's `LayerNorm` and
//! `GroupNorm`). Written in tensor ops, so they run on every device and differentiate
//! through autograd.

use super::{Mode, Module, Parameters};
use crate::{Error, Result, Tensor};

/// PyTorch's default ε, added to the variance before the square root.
pub const DEFAULT_EPS: f32 = 1e-5;

/// `(x - mean) / sqrt(var + eps)` along the last axis of `x` (the biased variance, as
/// PyTorch's normalisation layers use).
fn standardise_last(x: &Tensor, eps: f32) -> Result<Tensor> {
    let last = x.rank() - 1;
    let centred = x.sub(&x.mean(last, true)?)?;
    let var = centred.mul(&centred)?.mean(last, true)?;
    centred.div(&var.add_scalar(eps)?.sqrt()?)
}

/// Layer normalisation (Ba, Kiros and Hinton, 2016) over the last axis: each sample's
/// features to mean 0 and variance 1, then `· weight + bias` (both `[features]`, starting at
/// 1 and 0), as `nn.LayerNorm(features)`.
#[derive(Parameters)]
pub struct LayerNorm {
    /// Per-feature scale, `[features]`.
    pub weight: Tensor,
    /// Per-feature shift, `[features]`.
    pub bias: Tensor,
    /// Added to the variance.
    #[parameters(skip)]
    pub eps: f32,
}

impl LayerNorm {
    /// A layer for `features` values per sample (the last axis).
    pub fn new(features: usize, eps: f32) -> Result<LayerNorm> {
        if features == 0 || eps.is_nan() || eps <= 0.0 {
            return Err(Error::invalid("LayerNorm", format!("needs features >= 1 and eps > 0, got {features}, {eps}")));
        }
        Ok(LayerNorm {
            weight: Tensor::ones(&[features]).set_requires_grad(true),
            bias: Tensor::zeros(&[features]).set_requires_grad(true),
            eps,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let features = self.weight.elem_count();
        if x.rank() < 2 || x.shape()[x.rank() - 1] != features {
            return Err(Error::invalid(
                "LayerNorm",
                format!("expects inputs [batch, .., {features}], got {:?}", x.shape()),
            ));
        }
        standardise_last(x, self.eps)?.mul(&self.weight)?.add(&self.bias)
    }
    fn describe(&self) -> String {
        format!("LayerNorm({})", self.weight.elem_count())
    }
}

/// Group normalisation (Wu and He, 2018): the channels of `[N, C, ..]` inputs split into
/// `groups` groups, each sample's group normalised over its channels and positions, then a
/// per-channel `· weight + bias`, as `nn.GroupNorm(groups, channels)`.
#[derive(Parameters)]
pub struct GroupNorm {
    /// Per-channel scale, `[channels]`.
    pub weight: Tensor,
    /// Per-channel shift, `[channels]`.
    pub bias: Tensor,
    /// Number of groups (dividing the channels).
    #[parameters(skip)]
    pub groups: usize,
    /// Added to the variance.
    #[parameters(skip)]
    pub eps: f32,
}

impl GroupNorm {
    /// A layer for `channels` channels in `groups` groups.
    pub fn new(groups: usize, channels: usize, eps: f32) -> Result<GroupNorm> {
        if groups == 0 || channels == 0 || !channels.is_multiple_of(groups) || eps.is_nan() || eps <= 0.0 {
            return Err(Error::invalid(
                "GroupNorm",
                format!("needs groups dividing channels and eps > 0, got {groups} groups, {channels} channels, {eps}"),
            ));
        }
        Ok(GroupNorm {
            weight: Tensor::ones(&[channels]).set_requires_grad(true),
            bias: Tensor::zeros(&[channels]).set_requires_grad(true),
            groups,
            eps,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let channels = self.weight.elem_count();
        if x.rank() < 2 || x.shape()[1] != channels {
            return Err(Error::invalid(
                "GroupNorm",
                format!("expects inputs [batch, {channels}, ..], got {:?}", x.shape()),
            ));
        }
        let n = x.shape()[0];
        let grouped = x.reshape(&[n, self.groups, x.elem_count() / (n * self.groups).max(1)])?;
        let normed = standardise_last(&grouped, self.eps)?.reshape(x.shape())?;
        // Per-channel affine, broadcast over the positions.
        let mut per_channel = vec![channels];
        per_channel.extend(std::iter::repeat_n(1, x.rank() - 2));
        normed.mul(&self.weight.reshape(&per_channel)?)?.add(&self.bias.reshape(&per_channel)?)
    }
    fn describe(&self) -> String {
        format!("GroupNorm({}, {})", self.groups, self.weight.elem_count())
    }
}
