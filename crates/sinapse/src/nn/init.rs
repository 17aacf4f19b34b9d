//! Weight initialisation schemes, all drawn from a seeded [`Rng`].
//!
//! The scale of the initial weights decides whether signals (and gradients) keep their size
//! through many layers: Xavier/Glorot keeps the variance for tanh/sigmoid layers, He/Kaiming
//! doubles it to make up for ReLU zeroing half of its inputs.

use serde::{Deserialize, Serialize};

use crate::{Result, Rng, Tensor};

/// How a layer's weights are drawn. `fan_in` is the number of inputs of each unit, `fan_out`
/// the number of units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// PyTorch's default for `nn.Linear`: U(±1/√fan_in) for weights and bias.
    #[default]
    PytorchDefault,
    /// Glorot & Bengio (2010): U(±√(6 / (fan_in + fan_out))); bias 0.
    XavierUniform,
    /// Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out)); bias 0.
    XavierNormal,
    /// He et al. (2015): U(±√(6 / fan_in)); bias 0.
    KaimingUniform,
    /// He et al. (2015): N(0, 2 / fan_in); bias 0.
    KaimingNormal,
}

impl Init {
    /// Every scheme's name, as written in a model spec.
    pub const NAMES: [&'static str; 5] =
        ["pytorch_default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal"];

    /// A weight tensor of `shape` for units with `fan_in` inputs and `fan_out` outputs.
    pub fn weight(self, shape: &[usize], fan_in: usize, fan_out: usize, rng: &mut Rng) -> Result<Tensor> {
        let (fi, fo) = (fan_in.max(1) as f32, fan_out.max(1) as f32);
        match self {
            Init::PytorchDefault => uniform(shape, 1.0 / fi.sqrt(), rng),
            Init::XavierUniform => uniform(shape, (6.0 / (fi + fo)).sqrt(), rng),
            Init::XavierNormal => Tensor::rand_normal(shape, 0.0, (2.0 / (fi + fo)).sqrt(), rng),
            Init::KaimingUniform => uniform(shape, (6.0 / fi).sqrt(), rng),
            Init::KaimingNormal => Tensor::rand_normal(shape, 0.0, (2.0 / fi).sqrt(), rng),
        }
    }

    /// A bias tensor of `shape` for units with `fan_in` inputs: PyTorch's default draws it
    /// like the weights, the other schemes start it at 0.
    pub fn bias(self, shape: &[usize], fan_in: usize, rng: &mut Rng) -> Result<Tensor> {
        match self {
            Init::PytorchDefault => uniform(shape, 1.0 / (fan_in.max(1) as f32).sqrt(), rng),
            _ => Ok(Tensor::zeros(shape)),
        }
    }
}

/// U(-bound, bound).
fn uniform(shape: &[usize], bound: f32, rng: &mut Rng) -> Result<Tensor> {
    Tensor::rand_uniform(shape, -bound, bound, rng)
}
