//! The elementwise parts of the binary cross-entropy losses, each with its gradient rule
//! (the means and the checks of [`crate::nn::loss`] are built on them). Both broadcast, as
//! every binary op does.

use super::{binary_kernel, binary_op, grad_if, unary_kernel};
use crate::backend::{BinaryOp, UnaryOp};
use crate::{Result, Tensor};

impl Tensor {
    /// Per-element binary cross-entropy of probabilities `self` (p) against targets `y`:
    /// -(y ln p + (1-y) ln(1-p)), each logarithm clamped at -100 as in PyTorch.
    /// d/dp = (p - y) / max(p(1 - p), 1e-12); d/dy = ln(1 - p) - ln p (clamped the same way).
    pub fn binary_cross_entropy_elementwise(&self, y: &Tensor) -> Result<Tensor> {
        binary_op(self, y, BinaryOp::Bce, |g, x, _| {
            Ok(vec![
                grad_if(&x[0], || {
                    g.mul(&binary_kernel(&x[0], &x[1], BinaryOp::BceInputGrad)?)?.sum_to_shape(x[0].shape())
                })?,
                grad_if(&x[1], || g.mul(&unary_kernel(&x[0], UnaryOp::BceTargetGrad)?)?.sum_to_shape(x[1].shape()))?,
            ])
        })
    }

    /// Per-element binary cross-entropy of logits `self` (x), with p = σ(x), in the stable
    /// form max(x, 0) - x·y + ln(1 + e^-|x|). d/dx = σ(x) - y; d/dy = -x.
    pub fn binary_cross_entropy_with_logits_elementwise(&self, y: &Tensor) -> Result<Tensor> {
        binary_op(self, y, BinaryOp::BceWithLogits, |g, x, _| {
            Ok(vec![
                grad_if(&x[0], || g.mul(&x[0].sigmoid()?.sub(&x[1])?)?.sum_to_shape(x[0].shape()))?,
                grad_if(&x[1], || g.mul(&x[0].neg()?)?.sum_to_shape(x[1].shape()))?,
            ])
        })
    }
}
