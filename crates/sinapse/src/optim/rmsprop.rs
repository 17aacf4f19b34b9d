//! RMSprop.

use super::{check_hyper, Optimizer, State, StepMode};
use crate::backend::OptimizerUpdate;
use crate::{Error, Gradients, Result, Tensor};

/// RMSprop (Hinton's lecture 6e), as PyTorch's `torch.optim.RMSprop`:
///
/// ```text
/// g ← g + weight_decay · w
/// v ← α·v + (1 - α)·g²
/// b ← μ·b + g / (√v + eps);  w ← w - lr · b      (with momentum μ > 0)
/// w ← w - lr · g / (√v + eps)                    (without)
/// ```
pub struct RmsProp {
    params: Vec<Tensor>,
    lr: f32,
    alpha: f32,
    eps: f32,
    momentum: f32,
    weight_decay: f32,
    state: State,
}

impl RmsProp {
    /// RMSprop with PyTorch's defaults (α = 0.99, eps = 1e-8, no momentum, no decay).
    pub fn new(params: Vec<Tensor>, lr: f32) -> Result<RmsProp> {
        RmsProp::with_options(params, lr, 0.99, 1e-8, 0.0, 0.0)
    }

    /// RMSprop with every setting given.
    pub fn with_options(
        params: Vec<Tensor>,
        lr: f32,
        alpha: f32,
        eps: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<RmsProp> {
        super::check_params("RmsProp", &params)?;
        check_hyper("RmsProp", "lr", lr, true)?;
        check_hyper("RmsProp", "eps", eps, false)?;
        check_hyper("RmsProp", "momentum", momentum, false)?;
        check_hyper("RmsProp", "weight_decay", weight_decay, false)?;
        if !(0.0..1.0).contains(&alpha) {
            return Err(Error::invalid("RmsProp", format!("alpha must be in [0, 1), got {alpha}")));
        }
        let n = params.len();
        Ok(RmsProp { params, lr, alpha, eps, momentum, weight_decay, state: State::new(n) })
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let update = OptimizerUpdate::RmsProp {
            lr: self.lr,
            alpha: self.alpha,
            eps: self.eps,
            momentum: self.momentum,
            weight_decay: self.weight_decay,
        };
        self.state.step("RmsProp::step", &self.params, grads, |_, _| update)
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    fn set_step_mode(&mut self, mode: StepMode) -> Result<bool> {
        self.state.set_mode(mode, &self.params)
    }
}
