//! Elementwise operations on two tensors, with NumPy broadcasting.
//!
//! Shapes are aligned on the right and axes of size 1 are repeated, so `[128, 10] + [10]` adds
//! the row to every row. The gradient of a broadcast input is the sum of the output gradient
//! over the repeated axes ([`Tensor::sum_to_shape`]): each input element influenced every
//! output element it was copied to.

use super::{binary_op, broadcast, grad_if};
use crate::backend::{BinaryOp, CmpOp};
use crate::{Result, Tensor};

/// A comparison: 1.0 where it holds, else 0.0. Not differentiable (no gradient flows).
fn compare_op(lhs: &Tensor, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
    let (shape, [la, lb]) = broadcast(op.name(), [lhs, rhs])?;
    let storage = Tensor::with_storages([lhs, rhs], |[a, b]| a.compare(&la, b, &lb, op))?;
    Ok(Tensor::from_storage(storage, crate::layout::Layout::contiguous(&shape)))
}

impl Tensor {
    /// `self + rhs`, broadcasting. d/da = 1, d/db = 1.
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Add, |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.sum_to_shape(x[0].shape()))?, grad_if(&x[1], || g.sum_to_shape(x[1].shape()))?])
        })
    }

    /// `self - rhs`, broadcasting. d/da = 1, d/db = -1.
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Sub, |g, x, _| {
            Ok(vec![
                grad_if(&x[0], || g.sum_to_shape(x[0].shape()))?,
                grad_if(&x[1], || g.neg()?.sum_to_shape(x[1].shape()))?,
            ])
        })
    }

    /// `self * rhs` elementwise, broadcasting. d/da = b, d/db = a.
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Mul, |g, x, _| {
            Ok(vec![
                grad_if(&x[0], || g.mul(&x[1])?.sum_to_shape(x[0].shape()))?,
                grad_if(&x[1], || g.mul(&x[0])?.sum_to_shape(x[1].shape()))?,
            ])
        })
    }

    /// `self / rhs` elementwise, broadcasting. d/da = 1/b, d/db = -a/b².
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Div, |g, x, _| {
            Ok(vec![
                grad_if(&x[0], || g.div(&x[1])?.sum_to_shape(x[0].shape()))?,
                grad_if(&x[1], || {
                    let b2 = x[1].mul(&x[1])?;
                    g.mul(&x[0])?.div(&b2)?.neg()?.sum_to_shape(x[1].shape())
                })?,
            ])
        })
    }

    /// Elementwise larger of `self` and `rhs` (NaN if either is NaN, as in PyTorch). The
    /// gradient goes to the larger input; on a tie it is split in half between them.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Maximum, |g, x, _| select_grads(g, x, CmpOp::Gt))
    }

    /// Elementwise smaller of `self` and `rhs`; gradient as for [`Tensor::maximum`].
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        binary_op(self, rhs, BinaryOp::Minimum, |g, x, _| select_grads(g, x, CmpOp::Lt))
    }

    /// 1.0 where `self op rhs` holds, else 0.0 (broadcasting; no gradient).
    pub fn compare(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        compare_op(self, rhs, op)
    }

    /// `on_true` where `self` (the condition) is non-zero, else `on_false`, with all three
    /// broadcast together. Gradient: to each branch where it was picked.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        let (shape, [lc, lt, lf]) = broadcast("where_cond", [self, on_true, on_false])?;
        let storage = Tensor::with_storages([self, on_true, on_false], |[c, t, f]| c.where_cond(&lc, t, &lt, f, &lf))?;
        Ok(Tensor::from_op(storage, &shape, "where_cond", &[self, on_true, on_false], |g, x, _| {
            let zero = Tensor::full_on(&[], 0.0, g.device())?;
            Ok(vec![
                None,
                grad_if(&x[1], || x[0].where_cond(g, &zero)?.sum_to_shape(x[1].shape()))?,
                grad_if(&x[2], || x[0].where_cond(&zero, g)?.sum_to_shape(x[2].shape()))?,
            ])
        }))
    }

    /// 1.0 where `self == rhs`, else 0.0 (broadcasting; no gradient).
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Eq)
    }

    /// 1.0 where `self != rhs`, else 0.0.
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Ne)
    }

    /// 1.0 where `self < rhs`, else 0.0.
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Lt)
    }

    /// 1.0 where `self <= rhs`, else 0.0.
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Le)
    }

    /// 1.0 where `self > rhs`, else 0.0.
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Gt)
    }

    /// 1.0 where `self >= rhs`, else 0.0.
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        compare_op(self, rhs, CmpOp::Ge)
    }
}

/// Gradients of max/min: `g` to the input that `wins`, half of `g` to each on a tie.
fn select_grads(g: &Tensor, x: &[Tensor], wins: CmpOp) -> Result<Vec<Option<Tensor>>> {
    let share = |first: &Tensor, second: &Tensor| -> Result<Tensor> {
        let w = first.compare(second, wins)?.add(&first.eq(second)?.mul_scalar(0.5)?)?;
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

/// `&t + 1.0`, `&t * 2.0`, `2.0 * &t`, `1.0 - &t`, ... : arithmetic with a number, returning
/// `Result` like the tensor-tensor operators (`(&x * 2.0)?`).
macro_rules! impl_scalar_operator {
    ($trait:ident, $method:ident, |$t:ident, $c:ident| $tensor_first:expr, $scalar_first:expr) => {
        impl std::ops::$trait<f32> for &Tensor {
            type Output = Result<Tensor>;
            fn $method(self, $c: f32) -> Result<Tensor> {
                let $t = self;
                $tensor_first
            }
        }
        impl std::ops::$trait<&Tensor> for f32 {
            type Output = Result<Tensor>;
            fn $method(self, $t: &Tensor) -> Result<Tensor> {
                let $c = self;
                $scalar_first
            }
        }
    };
}
impl_scalar_operator!(Add, add, |t, c| t.add_scalar(c), t.add_scalar(c));
impl_scalar_operator!(Sub, sub, |t, c| t.add_scalar(-c), t.affine(-1.0, c));
impl_scalar_operator!(Mul, mul, |t, c| t.mul_scalar(c), t.mul_scalar(c));
impl_scalar_operator!(
    Div,
    div,
    |t, c| t.div(&Tensor::full_on(&[], c, t.device())?),
    Tensor::full_on(&[], c, t.device())?.div(t)
);
