//! Normalisation layers: values shifted to mean 0 and scaled to variance 1 over some axes,
//! then given a learned scale and shift (PyTorch's `BatchNorm1d/2d`, `LayerNorm` and
//! `GroupNorm`). Written in tensor ops, so they run on every device and differentiate
//! through autograd.

use super::{Buffer, Mode, Module, Parameters};
use crate::{no_grad, Error, Result, Tensor};

/// PyTorch's default momentum of the running statistics.
pub const DEFAULT_MOMENTUM: f32 = 0.1;

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

/// Batch normalisation (Ioffe and Szegedy, 2015): each channel of `[N, C]`, `[N, C, L]`
/// (`BatchNorm1d`) or `[N, C, H, W]` (`BatchNorm2d`) inputs normalised over the batch and the
/// positions, then `· weight + bias` per channel.
///
/// In [`Mode::Train`] it uses the batch's own mean and (biased) variance, and moves the
/// running statistics towards them: `running = (1 - momentum) · running + momentum · batch`,
/// with the unbiased variance, as PyTorch does (`momentum = None` is the cumulative average,
/// by `num_batches_tracked`). In [`Mode::Eval`] it uses the running statistics, so a model
/// gives each sample the same output whatever else is in its batch. The three statistics are
/// [`Buffer`]s, saved under PyTorch's names `running_mean`, `running_var` and
/// `num_batches_tracked`.
#[derive(Parameters)]
pub struct BatchNorm {
    /// Per-channel scale `[C]`, starting at 1 (`None` without `affine`).
    pub weight: Option<Tensor>,
    /// Per-channel shift `[C]`, starting at 0 (`None` without `affine`).
    pub bias: Option<Tensor>,
    /// Running mean per channel, starting at 0 (`None` when statistics are not tracked:
    /// then evaluation uses the batch's statistics too).
    pub running_mean: Option<Buffer>,
    /// Running (unbiased) variance per channel, starting at 1.
    pub running_var: Option<Buffer>,
    /// Number of training batches seen (a scalar).
    pub num_batches_tracked: Option<Buffer>,
    /// Added to the variance.
    #[parameters(skip)]
    pub eps: f32,
    /// Weight of each new batch in the running statistics; `None` for the cumulative average.
    #[parameters(skip)]
    pub momentum: Option<f32>,
    /// 1 for `BatchNorm1d` (inputs of rank 2 or 3), 2 for `BatchNorm2d` (rank 4).
    #[parameters(skip)]
    spatial_dims: usize,
    /// Number of channels.
    #[parameters(skip)]
    channel_count: usize,
}

impl BatchNorm {
    fn with_dims(channels: usize, spatial_dims: usize) -> Result<BatchNorm> {
        if channels == 0 {
            return Err(Error::invalid("BatchNorm", "needs at least 1 channel"));
        }
        Ok(BatchNorm {
            weight: Some(Tensor::ones(&[channels]).set_requires_grad(true)),
            bias: Some(Tensor::zeros(&[channels]).set_requires_grad(true)),
            running_mean: Some(Buffer::new(Tensor::zeros(&[channels]))),
            running_var: Some(Buffer::new(Tensor::ones(&[channels]))),
            num_batches_tracked: Some(Buffer::new(Tensor::zeros(&[]))),
            eps: DEFAULT_EPS,
            momentum: Some(DEFAULT_MOMENTUM),
            spatial_dims,
            channel_count: channels,
        })
    }

    /// `nn.BatchNorm1d(channels)`: inputs `[N, C]` or `[N, C, L]`, eps 1e-5, momentum 0.1.
    pub fn new_1d(channels: usize) -> Result<BatchNorm> {
        BatchNorm::with_dims(channels, 1)
    }

    /// `nn.BatchNorm2d(channels)`: inputs `[N, C, H, W]`, eps 1e-5, momentum 0.1.
    pub fn new_2d(channels: usize) -> Result<BatchNorm> {
        BatchNorm::with_dims(channels, 2)
    }

    /// Sets ε and the momentum (`None`: cumulative average), checked.
    pub fn with_eps_momentum(mut self, eps: f32, momentum: Option<f32>) -> Result<BatchNorm> {
        if eps.is_nan() || eps <= 0.0 || momentum.is_some_and(|m| !(0.0..=1.0).contains(&m)) {
            return Err(Error::invalid(
                "BatchNorm",
                format!("needs eps > 0 and momentum in [0, 1], got {eps}, {momentum:?}"),
            ));
        }
        (self.eps, self.momentum) = (eps, momentum);
        Ok(self)
    }

    /// Without the learned scale and shift (`affine=False`).
    pub fn without_affine(mut self) -> BatchNorm {
        (self.weight, self.bias) = (None, None);
        self
    }

    /// Without running statistics (`track_running_stats=False`): evaluation normalises with
    /// the batch's own statistics, as training does.
    pub fn without_running_stats(mut self) -> BatchNorm {
        (self.running_mean, self.running_var, self.num_batches_tracked) = (None, None, None);
        self
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.channel_count
    }

    /// Moves the running statistics towards the batch's `mean` and biased `var` (`[C]` each)
    /// over `count` values per channel.
    fn track(&self, mean: &Tensor, var: &Tensor, count: usize) -> Result<()> {
        let (Some(rm), Some(rv), Some(n)) = (&self.running_mean, &self.running_var, &self.num_batches_tracked) else {
            return Ok(());
        };
        let _off = no_grad();
        let seen = n.add_scalar(1.0)?;
        let factor = match self.momentum {
            Some(m) => m,
            None => 1.0 / seen.to_scalar()?,
        };
        let unbiased = var.mul_scalar(count as f32 / (count - 1) as f32)?;
        rm.copy_from(&rm.mul_scalar(1.0 - factor)?.add(&mean.mul_scalar(factor)?)?)?;
        rv.copy_from(&rv.mul_scalar(1.0 - factor)?.add(&unbiased.mul_scalar(factor)?)?)?;
        n.copy_from(&seen)
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let channels = self.channel_count;
        let ranks: &[usize] = if self.spatial_dims == 1 { &[2, 3] } else { &[4] };
        if !ranks.contains(&x.rank()) || x.shape()[1] != channels {
            let want = if self.spatial_dims == 1 {
                format!("[batch, {channels}] or [batch, {channels}, length]")
            } else {
                format!("[batch, {channels}, height, width]")
            };
            return Err(Error::invalid(self.kind_name(), format!("expects inputs {want}, got {:?}", x.shape())));
        }
        let mut per_channel = vec![1; x.rank()];
        per_channel[1] = channels;
        let normed = match (&self.running_mean, &self.running_var, mode) {
            (Some(rm), Some(rv), Mode::Eval) => {
                let std = rv.add_scalar(self.eps)?.sqrt()?.reshape(&per_channel)?;
                x.sub(&rm.reshape(&per_channel)?)?.div(&std)?
            }
            _ => {
                let axes: Vec<usize> = (0..x.rank()).filter(|&a| a != 1).collect();
                let count = x.elem_count() / channels;
                if count < 2 && mode == Mode::Train {
                    return Err(Error::invalid(
                        self.kind_name(),
                        format!("needs more than 1 value per channel when training, got inputs {:?}", x.shape()),
                    ));
                }
                let mean = x.sum_dims(&axes, true)?.mul_scalar(1.0 / count as f32)?;
                let centred = x.sub(&mean)?;
                let var = centred.mul(&centred)?.sum_dims(&axes, true)?.mul_scalar(1.0 / count as f32)?;
                if mode == Mode::Train {
                    self.track(&mean.detach().reshape(&[channels])?, &var.detach().reshape(&[channels])?, count)?;
                }
                centred.div(&var.add_scalar(self.eps)?.sqrt()?)?
            }
        };
        match (&self.weight, &self.bias) {
            (Some(w), Some(b)) => normed.mul(&w.reshape(&per_channel)?)?.add(&b.reshape(&per_channel)?),
            _ => Ok(normed),
        }
    }
    fn describe(&self) -> String {
        format!("{}({})", self.kind_name(), self.channel_count)
    }
}

impl BatchNorm {
    fn kind_name(&self) -> &'static str {
        if self.spatial_dims == 1 {
            "BatchNorm1d"
        } else {
            "BatchNorm2d"
        }
    }
}
