//! The fully connected layer.

use super::{Init, Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// A fully connected (dense) layer: `y = x·Wᵀ + b`, with `W` of shape `[out, in]` and `b` of
/// shape `[out]`, as in PyTorch's `nn.Linear`. Each output is the weighted sum of all inputs
/// plus a bias: the course's neuron, `out` of them side by side.
#[derive(Parameters)]
pub struct Linear {
    /// Weights, `[out_features, in_features]`.
    pub weight: Tensor,
    /// Bias, `[out_features]`, if the layer has one.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A layer with PyTorch's default initialisation, drawn from `rng`.
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Result<Linear> {
        Linear::with_init(in_features, out_features, Init::PytorchDefault, rng)
    }

    /// A layer with weights and bias drawn by `init`.
    pub fn with_init(in_features: usize, out_features: usize, init: Init, rng: &mut Rng) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear",
                format!("needs at least one input and one output, got {in_features} -> {out_features}"),
            ));
        }
        let weight = init.weight(&[out_features, in_features], in_features, out_features, rng)?;
        let bias = init.bias(&[out_features], in_features, rng)?;
        Linear::from_tensors(weight, Some(bias))
    }

    /// A layer from given weights `[out, in]` and optional bias `[out]`; they become
    /// trainable.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        if weight.rank() != 2 {
            return Err(Error::invalid("Linear", format!("weight must be [out, in], got {:?}", weight.shape())));
        }
        if let Some(b) = &bias {
            if b.shape() != [weight.shape()[0]] {
                return Err(Error::shapes("Linear bias", b.shape(), &weight.shape()[..1]));
            }
        }
        Ok(Linear { weight: weight.set_requires_grad(true), bias: bias.map(|b| b.set_requires_grad(true)) })
    }

    /// Number of inputs.
    pub fn in_features(&self) -> usize {
        self.weight.shape().get(1).copied().unwrap_or(0)
    }

    /// Number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight.shape().first().copied().unwrap_or(0)
    }
}

impl Linear {
    /// The layer followed by a ReLU: one fused op ([`Tensor::linear_relu`]) for a batch of
    /// rows with a bias, else the layer's output through [`Tensor::relu`]. The same values and
    /// gradients either way.
    pub(crate) fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if x.rank() == 2 => {
                self.check_input(x)?;
                x.linear_relu(&self.weight, bias)
            }
            _ => self.forward(x, mode)?.relu(),
        }
    }

    /// The weight's rank and the input's last axis, checked with errors naming the layer.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        if self.weight.rank() != 2 {
            return Err(Error::invalid("Linear", format!("weight must be [out, in], got {:?}", self.weight.shape())));
        }
        if x.rank() == 0 || x.shape()[x.rank() - 1] != self.in_features() {
            return Err(Error::invalid(
                "Linear",
                format!("{} expects inputs [.., {}], got shape {:?}", self.describe(), self.in_features(), x.shape()),
            ));
        }
        Ok(())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        self.check_input(x)?;
        if x.rank() == 2 {
            return x.linear(&self.weight, self.bias.as_ref());
        }
        // Leading axes ([batch, time, ..]) are flattened into rows: one matrix product, and
        // its weight gradient one product too, instead of a batch of small ones.
        let rows = x.reshape(&[x.elem_count() / self.in_features().max(1), self.in_features()])?;
        let y = rows.linear(&self.weight, self.bias.as_ref())?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.out_features();
        y.reshape(&shape)
    }

    fn describe(&self) -> String {
        format!("Linear({} -> {})", self.in_features(), self.out_features())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}
