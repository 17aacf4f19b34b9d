//! Optimizers: how parameters move once their gradients are known.
//!
//! Each optimizer follows PyTorch's published update equations (see each type's docs), keeps
//! its per-parameter state (momentum, moment estimates) in the order of the parameter list it
//! was built with, and skips parameters that received no gradient.

mod adam;
mod clip;
mod rmsprop;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig, AdamW};
pub use clip::clip_grad_norm;
pub use rmsprop::RmsProp;
pub use schedule::{LrSchedule, Per, Schedule};
pub use sgd::Sgd;

use crate::backend::OptimizerUpdate;
use crate::{Error, Gradients, Result, Tensor};

/// The common interface of optimizers, used by the training loop.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &Gradients) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (schedules call this once per epoch).
    fn set_lr(&mut self, lr: f32);
}

/// Per-parameter state buffers (momentum, moment estimates), made as zeros beside each
/// parameter, on its device, at its first update.
pub(crate) struct State {
    buffers: Vec<Vec<Tensor>>,
}

impl State {
    /// No buffers yet, for `n` parameters.
    pub(crate) fn new(n: usize) -> State {
        State { buffers: vec![Vec::new(); n] }
    }

    /// True when parameter `i` has not been updated yet.
    pub(crate) fn is_fresh(&self, i: usize) -> bool {
        self.buffers[i].is_empty()
    }

    /// Applies `update(i)` (the update for parameter `i`, asked for only when it has a
    /// gradient) to every parameter with a gradient, as one fused kernel per parameter.
    pub(crate) fn step(
        &mut self,
        op: &'static str,
        params: &[Tensor],
        grads: &Gradients,
        mut update: impl FnMut(usize, &State) -> OptimizerUpdate,
    ) -> Result<()> {
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if p.shape() != g.shape() {
                return Err(Error::shapes(op, p.shape(), g.shape()));
            }
            let u = update(i, self);
            let wanted = u.state_buffers();
            if self.buffers[i].len() != wanted {
                self.buffers[i] = (0..wanted).map(|_| p.zeros_like()).collect::<Result<_>>()?;
            }
            // The state lives where the parameter lives, also after `model.to(device)`.
            for s in &self.buffers[i] {
                s.move_to(p.device())?;
            }
            let state: Vec<&Tensor> = self.buffers[i].iter().collect();
            p.apply_update(op, g, &state, &u)?;
        }
        Ok(())
    }
}

/// Refuses an empty parameter list: an optimizer over nothing would train nothing, silently
/// (a custom module that lists no parameters, say).
pub(crate) fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::invalid(
            op,
            "no parameters to optimize: the model lists none (derive Parameters on a custom module, and \
             keep the tensors set_requires_grad(true) returns)",
        ));
    }
    Ok(())
}

/// Checks a hyper-parameter that must be a finite number >= 0 (or > 0 when `positive`).
pub(crate) fn check_hyper(op: &'static str, name: &str, v: f32, positive: bool) -> Result<()> {
    let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
    if !ok {
        let need = if positive { "> 0" } else { ">= 0" };
        return Err(Error::invalid(op, format!("{name} must be a finite number {need}, got {v}")));
    }
    Ok(())
}
