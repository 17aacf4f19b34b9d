//! The course's activation functions, each with its derivative.
//!
//! | activation | f(x) | f'(x) |
//! | --- | --- | --- |
//! | Heaviside step | 1 if x > 0 else 0 | 0 (undefined at 0) |
//! | sigmoid | 1 / (1 + e^-x) | f(x)(1 - f(x)) |
//! | tanh | (e^x - e^-x) / (e^x + e^-x) | 1 - f(x)² |
//! | ReLU | max(0, x) | 1 if x > 0 else 0 |
//! | leaky ReLU | x if x > 0 else a·x | 1 if x > 0 else a |
//! | softmax | e^xi / Σj e^xj | yi(δij - yj) |

use super::{grad_if, unary_op};
use crate::backend::cpu;
use crate::{Result, Tensor};

impl Tensor {
    /// Heaviside step: 1 where x > 0, else 0 (the perceptron's activation).
    ///
    /// Its derivative is 0 everywhere it exists, so no gradient flows through it: this is why
    /// the perceptron learns by Rosenblatt's rule and not by gradient descent, and why MLPs use
    /// smooth activations instead.
    pub fn step(&self) -> Result<Tensor> {
        Ok(unary_op(
            self,
            "step",
            |x| if x > 0.0 { 1.0 } else { 0.0 },
            |_, x, _| Ok(vec![grad_if(&x[0], || Ok(x[0].zeros_like()))?]),
        ))
    }

    /// Logistic sigmoid 1 / (1 + e^-x), computed without overflow for large |x|.
    pub fn sigmoid(&self) -> Result<Tensor> {
        let f = |x: f32| {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                let e = x.exp();
                e / (1.0 + e)
            }
        };
        Ok(unary_op(self, "sigmoid", f, |g, x, y| Ok(vec![grad_if(&x[0], || g.map2(y, |g, y| g * y * (1.0 - y)))?])))
    }

    /// Hyperbolic tangent.
    pub fn tanh(&self) -> Result<Tensor> {
        Ok(unary_op(self, "tanh", f32::tanh, |g, x, y| {
            Ok(vec![grad_if(&x[0], || g.map2(y, |g, y| g * (1.0 - y * y)))?])
        }))
    }

    /// Rectified linear unit max(0, x). Its gradient at exactly 0 is taken as 0.
    pub fn relu(&self) -> Result<Tensor> {
        Ok(unary_op(
            self,
            "relu",
            // A NaN stays NaN (f32::max would turn it into 0 and hide a diverging model).
            |x| if x > 0.0 || x.is_nan() { x } else { 0.0 },
            |g, x, y| Ok(vec![grad_if(&x[0], || g.map2(y, |g, y| if y > 0.0 { g } else { 0.0 }))?]),
        ))
    }

    /// Leaky ReLU: x where x > 0, else `slope * x`.
    pub fn leaky_relu(&self, slope: f32) -> Result<Tensor> {
        let f = move |x: f32| if x > 0.0 { x } else { slope * x };
        Ok(unary_op(self, "leaky_relu", f, move |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.map2(&x[0], move |g, x| if x > 0.0 { g } else { slope * g }))?])
        }))
    }

    /// Softmax along `dim`: e^xi / Σj e^xj, a probability distribution along that axis.
    ///
    /// Stable for large inputs (the maximum is subtracted first): softmax([1000, 1001]) is
    /// [0.269, 0.731]. Gradient: dL/dx = y ⊙ (g - Σ(g ⊙ y)).
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        let data = self.softmax_kernel("softmax", dim, false)?;
        Ok(Tensor::from_op(data, self.shape(), "softmax", &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                let dot = g.mul(y)?.sum(dim, true)?;
                y.mul(&g.sub(&dot)?)
            })?])
        }))
    }

    /// log(softmax(x)) along `dim`, computed directly as x - max - log Σ e^(x - max), so it
    /// stays finite where softmax underflows to 0. Gradient: dL/dx = g - softmax(x) Σ g.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        let data = self.softmax_kernel("log_softmax", dim, true)?;
        Ok(Tensor::from_op(data, self.shape(), "log_softmax", &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                let total = g.sum(dim, true)?;
                g.sub(&y.exp()?.mul(&total)?)
            })?])
        }))
    }

    fn softmax_kernel(&self, op: &'static str, dim: usize, log: bool) -> Result<Vec<f32>> {
        self.layout().check_dim(op, dim)?;
        let s = self.shape();
        let outer: usize = s[..dim].iter().product();
        let inner: usize = s[dim + 1..].iter().product();
        Ok(self.with_row_major(|d| cpu::softmax(d, outer, s[dim], inner, log)))
    }
}
