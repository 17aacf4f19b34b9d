//! Elementwise operations on one tensor, and tensor-with-scalar arithmetic.

use super::{binary_kernel, grad_if, unary_kernel, unary_op};
use crate::backend::{BinaryOp, UnaryOp};
use crate::{Error, Result, Tensor};

impl Tensor {
    /// `-x`. d/dx = -1.
    pub fn neg(&self) -> Result<Tensor> {
        self.affine(-1.0, 0.0)
    }

    /// `x + c`. d/dx = 1.
    pub fn add_scalar(&self, c: f32) -> Result<Tensor> {
        self.affine(1.0, c)
    }

    /// `x * c`. d/dx = c.
    pub fn mul_scalar(&self, c: f32) -> Result<Tensor> {
        self.affine(c, 0.0)
    }

    /// `x * mul + add`. d/dx = mul.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        unary_op(self, UnaryOp::Affine { mul, add }, move |g, x, _| Ok(vec![grad_if(&x[0], || g.mul_scalar(mul))?]))
    }

    /// `e^x`. d/dx = e^x, the output itself.
    pub fn exp(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Exp, |g, x, y| Ok(vec![grad_if(&x[0], || g.mul(y))?]))
    }

    /// Natural logarithm. d/dx = 1/x.
    pub fn log(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Log, |g, x, _| Ok(vec![grad_if(&x[0], || g.div(&x[0]))?]))
    }

    /// Square root. d/dx = 1 / (2 sqrt(x)).
    pub fn sqrt(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Sqrt, |g, x, y| Ok(vec![grad_if(&x[0], || g.div(&y.mul_scalar(2.0)?))?]))
    }

    /// `x^p` for a constant exponent. d/dx = p x^(p-1), and 0 for p = 0 (x^0 is constant,
    /// also at x = 0, where the formula would give 0·∞; PyTorch gives 0 too).
    pub fn powf(&self, p: f32) -> Result<Tensor> {
        unary_op(self, UnaryOp::Powf(p), move |g, x, _| {
            Ok(vec![grad_if(&x[0], || {
                if p == 0.0 {
                    return g.zeros_like();
                }
                g.mul(&x[0].powf(p - 1.0)?.mul_scalar(p)?)
            })?])
        })
    }

    /// `sin x`. d/dx = cos x.
    pub fn sin(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Sin, |g, x, _| Ok(vec![grad_if(&x[0], || g.mul(&x[0].cos()?))?]))
    }

    /// `cos x`. d/dx = -sin x.
    pub fn cos(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Cos, |g, x, _| Ok(vec![grad_if(&x[0], || g.mul(&x[0].sin()?)?.neg())?]))
    }

    /// `ln(1 + x)`, exact for small x where `(1 + x).ln()` loses digits. d/dx = 1 / (1 + x).
    pub fn log1p(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Log1p, |g, x, _| Ok(vec![grad_if(&x[0], || g.div(&x[0].add_scalar(1.0)?))?]))
    }

    /// `e^x - 1`, exact for small x. d/dx = e^x = y + 1.
    pub fn expm1(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Expm1, |g, x, y| Ok(vec![grad_if(&x[0], || g.mul(&y.add_scalar(1.0)?))?]))
    }

    /// The error function erf(x) = 2/√π ∫₀ˣ e^(-t²) dt (GELU's Gaussian CDF is built on it).
    /// d/dx = 2/√π e^(-x²).
    pub fn erf(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Erf, |g, x, _| {
            Ok(vec![grad_if(&x[0], || {
                let two_over_sqrt_pi = 2.0 / std::f32::consts::PI.sqrt();
                g.mul(&x[0].mul(&x[0])?.neg()?.exp()?.mul_scalar(two_over_sqrt_pi)?)
            })?])
        })
    }

    /// `|x|`. d/dx = sign(x), taken as 0 at 0.
    pub fn abs(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Abs, |g, x, _| Ok(vec![grad_if(&x[0], || g.mul(&x[0].sign()?))?]))
    }

    /// -1, 0 or 1 by the sign of each element (0 for 0 and NaN). Not differentiable.
    pub fn sign(&self) -> Result<Tensor> {
        unary_kernel(self, UnaryOp::Sign)
    }

    /// Limits every element to `[min, max]`. The gradient passes where `min <= x <= max` and
    /// is 0 where the value was clipped.
    pub fn clamp(&self, min: f32, max: f32) -> Result<Tensor> {
        if min > max || min.is_nan() || max.is_nan() {
            return Err(Error::invalid("clamp", format!("needs min <= max, got [{min}, {max}]")));
        }
        unary_op(self, UnaryOp::Clamp { min, max }, move |g, x, _| {
            Ok(vec![grad_if(&x[0], || binary_kernel(g, &x[0], BinaryOp::ClampGrad { min, max }))?])
        })
    }
}

impl std::ops::Neg for &Tensor {
    type Output = Result<Tensor>;
    fn neg(self) -> Result<Tensor> {
        Tensor::neg(self)
    }
}
