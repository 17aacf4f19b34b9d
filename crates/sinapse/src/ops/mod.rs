//! Operations on tensors, one file per family, each op's forward next to its gradient rule.
//!
//! Reading guide: every op checks its arguments, runs one kernel of the backend's closed set
//! (named by value: `UnaryOp::Exp`, `BinaryOp::Mul`, ...) on whatever device holds the
//! tensor, and hands `Tensor::from_op` a closure `|grad, inputs, output| ...`: the chain rule
//! for that op, turning dL/d(output) into dL/d(input) for each input, written in tensor ops
//! only, so it runs on every device too. For `y = exp(x)` it is `dL/dx = dL/dy * exp(x)`,
//! written `grad.mul(&y)`.

pub mod activation;
pub mod binary;
pub mod common;
pub mod conv;
pub mod einsum;
pub mod index;
pub mod loss;
pub mod matmul;
pub mod recurrent;
pub mod reduce;
pub mod unary;
pub mod view;

use crate::autograd::GradFn;
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::{broadcast_dims, Dims, Layout};
use crate::{Result, Tensor};

/// The gradient for `input`, computed only when it needs one.
pub(crate) fn grad_if(input: &Tensor, f: impl FnOnce() -> Result<Tensor>) -> Result<Option<Tensor>> {
    if input.requires_grad() {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// An elementwise op `y = op(x)` with gradient rule `backward`.
pub(crate) fn unary_op(x: &Tensor, op: UnaryOp, backward: impl GradFn) -> Result<Tensor> {
    let storage = x.storage().unary(x.layout(), op)?;
    Ok(Tensor::from_op(storage, x.shape(), op.name(), &[x], backward))
}

/// The shape `tensors` broadcast to together (NumPy's rules), and each one's layout viewed at
/// that shape (stride 0 on the repeated axes).
pub(crate) fn broadcast<const N: usize>(op: &'static str, tensors: [&Tensor; N]) -> Result<(Dims, [Layout; N])> {
    let mut shape = Dims::new();
    for t in tensors {
        shape = broadcast_dims(op, &shape, t.shape())?;
    }
    let mut failure = None;
    let layouts: [Layout; N] = std::array::from_fn(|i| {
        tensors[i].layout().broadcast_to(&shape).unwrap_or_else(|e| {
            failure.get_or_insert(e);
            Layout::contiguous(&[])
        })
    });
    match failure {
        Some(e) => Err(e),
        None => Ok((shape, layouts)),
    }
}

/// Broadcasts `lhs` and `rhs` together, applies `op` elementwise, and records `backward`.
pub(crate) fn binary_op(lhs: &Tensor, rhs: &Tensor, op: BinaryOp, backward: impl GradFn) -> Result<Tensor> {
    let (shape, [la, lb]) = broadcast(op.name(), [lhs, rhs])?;
    let storage = Tensor::with_storages([lhs, rhs], |[a, b]| a.binary(&la, b, &lb, op))?;
    Ok(Tensor::from_op(storage, &shape, op.name(), &[lhs, rhs], backward))
}

/// `op(a, b)` elementwise with broadcasting, recording nothing: how gradient rules run the
/// fused derivatives of the kernel set (`relu`'s rule is `binary_kernel(g, y, ReluGrad)`).
pub(crate) fn binary_kernel(lhs: &Tensor, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
    let _off = crate::no_grad();
    binary_op(lhs, rhs, op, |_, _, _| Ok(vec![None, None]))
}

/// `op(x)` elementwise, recording nothing (a derivative used by a gradient rule).
pub(crate) fn unary_kernel(x: &Tensor, op: UnaryOp) -> Result<Tensor> {
    let _off = crate::no_grad();
    unary_op(x, op, |_, _, _| Ok(vec![None]))
}
