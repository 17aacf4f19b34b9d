//! Stochastic gradient descent, with momentum, Nesterov momentum and weight decay.

use super::{check_hyper, Optimizer, State, StepMode};
use crate::backend::OptimizerUpdate;
use crate::{Error, Gradients, Result, Tensor};

/// Minibatch gradient descent, as PyTorch's `torch.optim.SGD`:
///
/// ```text
/// g ← g + weight_decay · w                     (L2 penalty)
/// b ← g on the first step, then μ·b + g        (momentum buffer, when μ > 0)
/// g ← g + μ·b (Nesterov)  or  g ← b            (when μ > 0)
/// w ← w - lr · g
/// ```
///
/// With μ = 0 and no decay this is the course's rule `w ← w - lr · dL/dw`: on one minibatch's
/// gradient it is SGD, on the whole training set full-batch gradient descent.
pub struct Sgd {
    params: Vec<Tensor>,
    lr: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
    state: State,
}

impl Sgd {
    /// Plain SGD over `params` with learning rate `lr` (> 0).
    pub fn new(params: Vec<Tensor>, lr: f32) -> Result<Sgd> {
        Sgd::with_options(params, lr, 0.0, false, 0.0)
    }

    /// SGD with all options, checked: `lr > 0`, `momentum >= 0`, `weight_decay >= 0`, and
    /// Nesterov only with momentum.
    pub fn with_options(params: Vec<Tensor>, lr: f32, momentum: f32, nesterov: bool, weight_decay: f32) -> Result<Sgd> {
        super::check_params("Sgd", &params)?;
        check_hyper("Sgd", "lr", lr, true)?;
        check_hyper("Sgd", "momentum", momentum, false)?;
        check_hyper("Sgd", "weight_decay", weight_decay, false)?;
        if nesterov && momentum == 0.0 {
            return Err(Error::invalid("Sgd", "Nesterov momentum needs momentum > 0"));
        }
        let n = params.len();
        Ok(Sgd { params, lr, momentum, nesterov, weight_decay, state: State::new(n) })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let (lr, momentum, nesterov, weight_decay) = (self.lr, self.momentum, self.nesterov, self.weight_decay);
        self.state.step("Sgd::step", &self.params, grads, |i, state| OptimizerUpdate::Sgd {
            lr,
            momentum,
            nesterov,
            weight_decay,
            first_step: state.is_fresh(i),
        })
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
