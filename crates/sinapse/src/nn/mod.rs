//! Neural-network building blocks: the [`Module`] trait, layers, and loss functions.
//!
//! A model is a [`Module`]: something with a `forward` pass and named parameters. Parameters
//! are tensors with `requires_grad`, named as in PyTorch's `state_dict` (`0.weight`, `0.bias`,
//! `2.weight`, ...), so a checkpoint's names say where each tensor belongs.

mod activation;
mod conv;
mod dropout;
mod embedding;
pub mod init;
mod last_step;
mod linear;
pub mod loss;
mod pool;
mod recurrent;
mod reshape;
mod sequential;
mod summary;

pub use activation::{LeakyRelu, LogSoftmax, Relu, Sigmoid, Softmax, Step, Tanh};
pub use conv::{Conv1d, Conv2d};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use init::Init;
pub use last_step::LastStep;
pub use linear::Linear;
pub use pool::{Pool2d, PoolKind};
pub use recurrent::{CellKind, Recurrent, RecurrentState};
pub use reshape::{Flatten, Reshape};
pub use sequential::Sequential;
pub use summary::{layer_summaries, summary, LayerSummary};

use crate::{Device, Result, Tensor};

/// The parameters of a layer with a weight and an optional bias, under PyTorch's names.
pub(crate) fn weight_and_bias(weight: &Tensor, bias: Option<&Tensor>) -> Vec<(String, Tensor)> {
    let mut p = vec![("weight".to_string(), weight.clone())];
    if let Some(b) = bias {
        p.push(("bias".to_string(), b.clone()));
    }
    p
}

/// Whether a forward pass is for training or for evaluation.
///
/// Layers such as dropout behave differently in the two (dropout is the identity in `Eval`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Training: stochastic layers are active.
    Train,
    /// Evaluation and inference: every layer is deterministic.
    Eval,
}

/// A layer or a whole model.
pub trait Module: Send + Sync {
    /// Computes the output for input `x`.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The trainable tensors with their names (`"weight"`, `"bias"`; containers prefix their
    /// children's names with the child's position, `"0.weight"`).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// The trainable tensors, in the order of [`Module::named_parameters`].
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Total number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }

    /// A short description for summaries, e.g. `Linear(784 -> 256)`.
    fn describe(&self) -> String;

    /// Moves every parameter to `device` in place, as PyTorch's `model.to(device)`: each keeps
    /// its name and identity, so optimizers and checkpoints built on the list still apply.
    fn to(&self, device: Device) -> Result<()> {
        device.check_available()?;
        for p in self.parameters() {
            p.move_to(device)?;
        }
        Ok(())
    }

    /// Where the parameters live (the CPU for a module without any).
    fn device(&self) -> Device {
        self.parameters().first().map_or(Device::Cpu, Tensor::device)
    }
}
