//! Optimizers: how parameters move once their gradients are known.

mod sgd;

pub use sgd::Sgd;

use crate::backend::cpu;
use crate::{Error, Result, Tensor};

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
