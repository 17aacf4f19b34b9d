//! Weight initialisation.

use crate::{Result, Rng, Tensor};

/// PyTorch's default for `nn.Linear`: weight and bias uniform in `[-1/sqrt(fan_in),
/// 1/sqrt(fan_in))` (Kaiming-uniform with a = sqrt(5), which reduces to this bound).
pub fn pytorch_linear_uniform(shape: &[usize], fan_in: usize, rng: &mut Rng) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    Tensor::rand_uniform(shape, -bound, bound, rng)
}
