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
//! | GELU | x·Φ(x), Φ the Gaussian CDF | Φ(x) + x·φ(x) |
//! | SiLU (swish) | x·σ(x) | σ(x)(1 + x(1 - σ(x))) |
//! | ELU | x if x > 0 else α(e^x - 1) | 1 if x > 0 else α·e^x |
//! | softplus | ln(1 + e^x) | σ(x) |
//!
//! The last four are written in tensor ops (their gradients follow from those ops' own), so
//! they run on every device.

use super::{binary_kernel, grad_if, unary_op};
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::Dim;
use crate::{Result, Tensor};

impl Tensor {
    /// Heaviside step: 1 where x > 0, else 0 (the perceptron's activation).
    ///
    /// Its derivative is 0 everywhere it exists, so no gradient flows through it: this is why
    /// the perceptron learns by Rosenblatt's rule and not by gradient descent, and why MLPs use
    /// smooth activations instead.
    pub fn step(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Step, |_, x, _| Ok(vec![grad_if(&x[0], || x[0].zeros_like())?]))
    }

    /// Logistic sigmoid 1 / (1 + e^-x), computed without overflow for large |x|.
    /// d/dx = y(1 - y), from the output.
    pub fn sigmoid(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Sigmoid, |g, x, y| {
            Ok(vec![grad_if(&x[0], || binary_kernel(g, y, BinaryOp::SigmoidGrad))?])
        })
    }

    /// Hyperbolic tangent. d/dx = 1 - y², from the output.
    pub fn tanh(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Tanh, |g, x, y| Ok(vec![grad_if(&x[0], || binary_kernel(g, y, BinaryOp::TanhGrad))?]))
    }

    /// Rectified linear unit max(0, x). Its gradient at exactly 0 is taken as 0.
    pub fn relu(&self) -> Result<Tensor> {
        unary_op(self, UnaryOp::Relu, |g, x, y| Ok(vec![grad_if(&x[0], || binary_kernel(g, y, BinaryOp::ReluGrad))?]))
    }

    /// GELU, x·Φ(x) with Φ the standard normal CDF, exactly (PyTorch's default, not the tanh
    /// approximation): 0.5·x·(1 + erf(x/√2)).
    pub fn gelu(&self) -> Result<Tensor> {
        let cdf = self.mul_scalar(std::f32::consts::FRAC_1_SQRT_2)?.erf()?.add_scalar(1.0)?.mul_scalar(0.5)?;
        self.mul(&cdf)
    }

    /// SiLU (swish), x·σ(x).
    pub fn silu(&self) -> Result<Tensor> {
        self.mul(&self.sigmoid()?)
    }

    /// ELU: x where x > 0, else α(e^x - 1) (continuous at 0; PyTorch's default α is 1).
    pub fn elu(&self, alpha: f32) -> Result<Tensor> {
        // The negative branch reads x clipped at 0, so it stays finite (no NaN gradient from
        // the branch not taken); at x = 0 the gradient is α, as PyTorch's.
        let negative = self.clamp(f32::NEG_INFINITY, 0.0)?.expm1()?.mul_scalar(alpha)?;
        self.gt(&self.zeros_like()?)?.where_cond(self, &negative)
    }

    /// Softplus, ln(1 + e^x), a smooth ReLU; x itself above 20, where the two agree to f32
    /// precision (PyTorch's threshold), so e^x never overflows. d/dx = σ(x) (1 above 20).
    pub fn softplus(&self) -> Result<Tensor> {
        const THRESHOLD: f32 = 20.0;
        // The curve reads x clipped at the threshold: finite, with no NaN gradient from the
        // branch not taken.
        let curve = self.clamp(f32::NEG_INFINITY, THRESHOLD)?.exp()?.log1p()?;
        self.gt(&self.ones_like()?.mul_scalar(THRESHOLD)?)?.where_cond(self, &curve)
    }

    /// Leaky ReLU: x where x > 0, else `slope * x`.
    pub fn leaky_relu(&self, slope: f32) -> Result<Tensor> {
        unary_op(self, UnaryOp::LeakyRelu(slope), move |g, x, _| {
            Ok(vec![grad_if(&x[0], || binary_kernel(g, &x[0], BinaryOp::LeakyReluGrad(slope)))?])
        })
    }

    /// Softmax along `dim`: e^xi / Σj e^xj, a probability distribution along that axis.
    ///
    /// Stable for large inputs (the maximum is subtracted first): softmax([1000, 1001]) is
    /// [0.269, 0.731]. Gradient: dL/dx = y ⊙ (g - Σ(g ⊙ y)).
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.axis("softmax", self.rank())?;
        let storage = self.softmax_kernel(dim, false)?;
        Ok(Tensor::from_op(storage, self.shape(), "softmax", &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                let dot = g.mul(y)?.sum(dim, true)?;
                y.mul(&g.sub(&dot)?)
            })?])
        }))
    }

    /// log(softmax(x)) along `dim`, computed directly as x - max - log Σ e^(x - max), so it
    /// stays finite where softmax underflows to 0. Gradient: dL/dx = g - softmax(x) Σ g.
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.axis("log_softmax", self.rank())?;
        let storage = self.softmax_kernel(dim, true)?;
        Ok(Tensor::from_op(storage, self.shape(), "log_softmax", &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                let total = g.sum(dim, true)?;
                g.sub(&y.exp()?.mul(&total)?)
            })?])
        }))
    }

    /// Softmax (or log-softmax) along `dim` as a new storage, recording nothing.
    pub(crate) fn softmax_kernel(&self, dim: usize, log: bool) -> Result<crate::backend::Storage> {
        self.storage().softmax(self.layout(), dim, log)
    }
}
