//! Elementwise operations on two tensors, with NumPy broadcasting.
//!
//! Shapes are aligned on the right and axes of size 1 are repeated, so `[128, 10] + [10]` adds
//! the row to every row. The gradient of a broadcast input is the sum of the output gradient
//! over the repeated axes ([`Tensor::sum_to_shape`]): each input element influenced every
//! output element it was copied to.

use super::{grad_if, with_data2};
use crate::autograd::GradFn;
use crate::backend::cpu;
use crate::tensor::broadcast_shape;
use crate::{Result, Tensor};

/// Broadcasts `lhs` and `rhs` together, applies `f` elementwise, and records `backward`.
pub(crate) fn binary_op(
    lhs: &Tensor,
    rhs: &Tensor,
    op: &'static str,
    f: impl Fn(f32, f32) -> f32 + Sync,
    backward: impl GradFn,
) -> Result<Tensor> {
    let shape = broadcast_shape(op, lhs.shape(), rhs.shape())?;
    let la = lhs.layout().broadcast_to(&shape)?;
    let lb = rhs.layout().broadcast_to(&shape)?;
    let data = with_data2(lhs, rhs, |a, _, b, _| cpu::zip_map(a, &la, b, &lb, f));
    Ok(Tensor::from_op(data, &shape, op, &[lhs, rhs], backward))
}

/// A comparison: 1.0 where `f` holds, else 0.0. Not differentiable (no gradient flows).
fn compare_op(lhs: &Tensor, rhs: &Tensor, op: &'static str, f: impl Fn(f32, f32) -> bool + Sync) -> Result<Tensor> {
    let _off = crate::no_grad();
    binary_op(lhs, rhs, op, move |a, b| if f(a, b) { 1.0 } else { 0.0 }, |_, _, _| Ok(vec![None, None]))
}

impl Tensor {
    /// `f(a, b)` elementwise with broadcasting, recording nothing. Gradient rules use it to
    /// fuse their arithmetic into one pass (`relu`'s rule is `map2(grad, x, |g, x| ...)`).
    pub(crate) fn map2(&self, rhs: &Tensor, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
        let _off = crate::no_grad();
        binary_op(self, rhs, "map2", f, |_, _, _| Ok(vec![None, None]))
    }

    /// `self + rhs`, broadcasting. d/da = 1, d/db = 1.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(
            self,
            rhs,
            "add",
            |a, b| a + b,
            |g, x, _| {
                Ok(vec![
                    grad_if(&x[0], || g.sum_to_shape(x[0].shape()))?,
                    grad_if(&x[1], || g.sum_to_shape(x[1].shape()))?,
                ])
            },
        )
    }

    /// `self - rhs`, broadcasting. d/da = 1, d/db = -1.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(
            self,
            rhs,
            "sub",
            |a, b| a - b,
            |g, x, _| {
                Ok(vec![
                    grad_if(&x[0], || g.sum_to_shape(x[0].shape()))?,
                    grad_if(&x[1], || g.neg()?.sum_to_shape(x[1].shape()))?,
                ])
            },
        )
    }

    /// `self * rhs` elementwise, broadcasting. d/da = b, d/db = a.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(
            self,
            rhs,
            "mul",
            |a, b| a * b,
            |g, x, _| {
                Ok(vec![
                    grad_if(&x[0], || g.mul(&x[1])?.sum_to_shape(x[0].shape()))?,
                    grad_if(&x[1], || g.mul(&x[0])?.sum_to_shape(x[1].shape()))?,
                ])
            },
        )
    }

    /// `self / rhs` elementwise, broadcasting. d/da = 1/b, d/db = -a/b².
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(
            self,
            rhs,
            "div",
            |a, b| a / b,
            |g, x, _| {
                Ok(vec![
                    grad_if(&x[0], || g.div(&x[1])?.sum_to_shape(x[0].shape()))?,
                    grad_if(&x[1], || {
                        let b2 = x[1].mul(&x[1])?;
                        g.mul(&x[0])?.div(&b2)?.neg()?.sum_to_shape(x[1].shape())
                    })?,
                ])
            },
        )
    }

    /// Elementwise larger of `self` and `rhs` (NaN if either is NaN, as in PyTorch). The
    /// gradient goes to the larger input; on a tie it is split in half between them.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        let f = |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) };
        binary_op(self, rhs, "maximum", f, |g, x, _| select_grads(g, x, |a, b| a > b))
    }

    /// Elementwise smaller of `self` and `rhs`; gradient as for [`Tensor::maximum`].
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        let f = |a: f32, b: f32| if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) };
        binary_op(self, rhs, "minimum", f, |g, x, _| select_grads(g, x, |a, b| a < b))
    }

    /// 1.0 where `self == rhs`, else 0.0 (broadcasting; no gradient).
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "eq", |a, b| a == b)
    }

    /// 1.0 where `self != rhs`, else 0.0.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "ne", |a, b| a != b)
    }

    /// 1.0 where `self < rhs`, else 0.0.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "lt", |a, b| a < b)
    }

    /// 1.0 where `self <= rhs`, else 0.0.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "le", |a, b| a <= b)
    }

    /// 1.0 where `self > rhs`, else 0.0.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "gt", |a, b| a > b)
    }

    /// 1.0 where `self >= rhs`, else 0.0.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, "ge", |a, b| a >= b)
    }
}

/// Gradients of max/min: `g` to the input that `wins`, half of `g` to each on a tie.
fn select_grads(g: &Tensor, x: &[Tensor], wins: fn(f32, f32) -> bool) -> Result<Vec<Option<Tensor>>> {
    let share = |first: &Tensor, second: &Tensor| -> Result<Tensor> {
        let w = first.map2(second, move |a, b| {
            if wins(a, b) {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            }
        })?;
        g.mul(&w)?.sum_to_shape(first.shape())
    };
    Ok(vec![grad_if(&x[0], || share(&x[0], &x[1]))?, grad_if(&x[1], || share(&x[1], &x[0]))?])
}

/// `Tensor + Tensor` etc. for references, returning `Result` (`(&a + &b)?`), as candle does.
macro_rules! impl_operator {
    ($trait:ident, $method:ident, $op:ident) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, rhs: &Tensor) -> Result<Tensor> {
                Tensor::$op(self, rhs)
            }
        }
    };
}
impl_operator!(Add, add, add);
impl_operator!(Sub, sub, sub);
impl_operator!(Mul, mul, mul);
impl_operator!(Div, div, div);
