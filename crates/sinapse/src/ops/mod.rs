//! Operations on tensors, one file per family, each op's forward next to its gradient rule.
//!
//! Reading guide: every op computes its result with a kernel from [`crate::backend::cpu`] and
//! then hands `Tensor::from_op` a closure `|grad, inputs| ...`: the chain rule for that op,
//! turning dL/d(output) into dL/d(input) for each input. For `y = exp(x)` it is
//! `dL/dx = dL/dy * exp(x)`, written `grad.mul(&y)`.

pub mod activation;
pub mod binary;
pub mod conv;
pub mod index;
pub mod matmul;
pub mod reduce;
pub mod unary;
pub mod view;

use crate::autograd::GradFn;
use crate::backend::cpu;
use crate::tensor::Layout;
use crate::{Result, Tensor};

/// Runs `f` on the storage of two tensors at once (one lock when they share storage).
pub(crate) fn with_data2<R>(a: &Tensor, b: &Tensor, f: impl FnOnce(&[f32], &Layout, &[f32], &Layout) -> R) -> R {
    if a.same_storage(b) {
        a.with_data(|da, la| f(da, la, da, b.layout()))
    } else {
        a.with_data(|da, la| b.with_data(|db, lb| f(da, la, db, lb)))
    }
}

/// The gradient for `input`, computed only when it needs one.
pub(crate) fn grad_if(input: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if input.requires_grad() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

impl Tensor {
    /// `f(x)` elementwise, recording nothing (for gradient rules).
    pub(crate) fn map1(&self, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
        let data = self.with_data(|d, l| cpu::map(d, l, f));
        Tensor::from_parts(data, crate::tensor::Layout::contiguous(self.shape()))
    }
}

/// An elementwise op `y = f(x)` with gradient rule `backward`.
pub(crate) fn unary_op(x: &Tensor, op: &'static str, f: impl Fn(f32) -> f32 + Sync, backward: impl GradFn) -> Tensor {
    let data = x.with_data(|d, l| cpu::map(d, l, f));
    Tensor::from_op(data, x.shape(), op, &[x], backward)
}
