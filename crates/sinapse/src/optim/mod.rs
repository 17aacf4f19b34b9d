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
pub use schedule::LrSchedule;
pub use sgd::Sgd;

use crate::backend::cpu;
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

/// Applies `update(param_values, grad_values, state_index)` to every parameter with a
/// gradient; `state_index` is the parameter's position, for optimizers that keep state.
pub(crate) fn for_each_param(
    op: &'static str,
    params: &[Tensor],
    grads: &Gradients,
    mut update: impl FnMut(&mut [f32], &[f32], usize),
) -> Result<()> {
    for (i, p) in params.iter().enumerate() {
        if let Some(g) = grads.get(p) {
            update_param(op, p, g, |w, g| update(w, g, i))?;
        }
    }
    Ok(())
}

/// Applies `update(param_values, grad_values)` to one parameter in place, after checking that
/// the gradient has the parameter's shape.
pub(crate) fn update_param(
    op: &'static str,
    param: &Tensor,
    grad: &Tensor,
    update: impl FnOnce(&mut [f32], &[f32]),
) -> Result<()> {
    if param.shape() != grad.shape() {
        return Err(Error::shapes(op, param.shape(), grad.shape()));
    }
    // The gradient is read before the parameter is locked for writing.
    let g = grad.with_data(|d, l| {
        if l.is_contiguous() && !grad.same_storage(param) {
            None
        } else {
            Some(cpu::to_contiguous(d, l))
        }
    });
    match g {
        Some(g) => param.update_in_place(op, |p| update(p, &g)),
        None => grad.with_data(|d, l| {
            let g = &d[l.offset()..l.offset() + l.elem_count()];
            param.update_in_place(op, |p| update(p, g))
        }),
    }
}

/// Per-parameter state buffers, created (zeroed) on first use.
pub(crate) fn state_for(state: &mut [Vec<f32>], i: usize, len: usize) -> &mut Vec<f32> {
    let s = &mut state[i];
    if s.len() != len {
        *s = vec![0.0; len];
    }
    s
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
