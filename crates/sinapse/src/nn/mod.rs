//! Neural-network building blocks: the [`Module`] trait, layers, and loss functions.
//!
//! A model is a [`Module`]: something with a `forward` pass and named parameters. Parameters
//! are tensors with `requires_grad`, named as in PyTorch's `state_dict` (`0.weight`, `0.bias`,
//! `2.weight`, ...), so a checkpoint's names say where each tensor belongs.

mod activation;
mod attention;
mod conv;
mod dropout;
mod embedding;
mod graph;
pub mod init;
mod last_step;
mod linear;
pub mod loss;
mod norm;
mod pool;
mod recurrent;
mod reshape;
mod sequential;
mod summary;

pub use activation::{Elu, Gelu, LeakyRelu, LogSoftmax, Relu, Sigmoid, Silu, Softmax, Softplus, Step, Tanh};
pub use attention::{
    scaled_dot_product_attention, FeedForwardActivation, MultiheadAttention, PositionalEncoding, TransformerEncoder,
    TransformerEncoderLayer,
};
pub use conv::{Conv1d, Conv2d, ConvTranspose2d};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use graph::InferenceGraph;
pub use init::Init;
pub use last_step::LastStep;
pub use linear::Linear;
pub use norm::{BatchNorm, GroupNorm, LayerNorm, DEFAULT_EPS, DEFAULT_MOMENTUM};
pub use pool::{AdaptiveAvgPool2d, Pool2d, PoolKind, Upsample, UpsampleMode};
pub use recurrent::{CellKind, Recurrent, RecurrentState};
pub use reshape::{Flatten, Reshape};
pub use sequential::Sequential;
pub use summary::{layer_summaries, summary, LayerSummary};

pub use sinapse_derive::Parameters;

use crate::{Device, Result, Tensor};

/// What holds trainable tensors: every [`Module`] (the trait is required), and the values a
/// module's fields hold. Derive it for a struct of layers and it names each parameter after
/// the field path that leads to it, as PyTorch's `state_dict` does:
///
/// ```
/// use sinapse::nn::{Linear, Parameters, Module, Mode};
/// use sinapse::{Result, Rng, Tensor};
///
/// #[derive(Parameters)]
/// struct TwoLayers {
///     fc1: Linear,
///     fc2: Linear,
///     scale: f32, // holds no parameters
/// }
///
/// impl Module for TwoLayers {
///     fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
///         self.fc2.forward(&self.fc1.forward(x, mode)?.relu()?, mode)?.mul_scalar(self.scale)
///     }
///     fn describe(&self) -> String {
///         "TwoLayers".into()
///     }
/// }
///
/// let mut rng = Rng::seed(0);
/// let m = TwoLayers { fc1: Linear::new(4, 8, &mut rng)?, fc2: Linear::new(8, 2, &mut rng)?, scale: 0.5 };
/// let names: Vec<String> = m.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
/// # Ok::<(), sinapse::Error>(())
/// ```
///
/// A module that holds none still implements it (derive it on the struct: it then visits
/// nothing); forgetting it is a compile error, never a model that silently trains nothing.
pub trait Parameters {
    /// Appends this value's trainable tensors to `out`, each named `prefix.<path>` (`prefix`
    /// alone for a tensor itself).
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>);

    /// Appends this value's buffers ([`Buffer`]: state that is saved and moved with the model
    /// but not trained, such as batch normalisation's running statistics), named as
    /// parameters are. Provided: visits nothing; the derive and the containers forward it.
    fn visit_buffers(&self, _prefix: &str, _out: &mut Vec<(String, Tensor)>) {}
}

/// A module's state that is not trained but belongs to the model: saved in checkpoints beside
/// the parameters and moved by [`Module::to`] (PyTorch's `register_buffer`), such as
/// [`BatchNorm`]'s `running_mean`. It never asks for a gradient, so optimizers never see it.
#[derive(Clone, Debug)]
pub struct Buffer(Tensor);

impl Buffer {
    /// Wraps `t` (detached: a buffer records no graph).
    pub fn new(t: Tensor) -> Buffer {
        Buffer(t.detach())
    }

    /// The tensor it holds (shared: updating it in place with [`Tensor::copy_from`] updates
    /// the buffer).
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }
}

impl std::ops::Deref for Buffer {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

impl Parameters for Buffer {
    fn visit_parameters(&self, _prefix: &str, _out: &mut Vec<(String, Tensor)>) {}
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        out.push((prefix.to_string(), self.0.clone()));
    }
}

/// `prefix.name`, or `name` at the top.
pub fn join_name(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A tensor is a parameter when it is a leaf that asks for a gradient (made by
/// `set_requires_grad(true)`); others (masks, constants, results of ops) are not. To freeze a
/// layer, leave its parameters out of the optimizer's list: detaching them takes them out of
/// the model's parameters, and so out of what `save` writes.
impl Parameters for Tensor {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        if self.requires_grad() && self.is_leaf() {
            out.push((prefix.to_string(), self.clone()));
        }
    }
}

impl<T: Parameters + ?Sized> Parameters for &T {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_parameters(prefix, out);
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_buffers(prefix, out);
    }
}

impl<T: Parameters + ?Sized> Parameters for std::rc::Rc<T> {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_parameters(prefix, out);
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_buffers(prefix, out);
    }
}

impl<T: ?Sized> Parameters for std::marker::PhantomData<T> {
    fn visit_parameters(&self, _prefix: &str, _out: &mut Vec<(String, Tensor)>) {}
}

impl<T: Parameters> Parameters for Option<T> {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        if let Some(v) = self {
            v.visit_parameters(prefix, out);
        }
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        if let Some(v) = self {
            v.visit_buffers(prefix, out);
        }
    }
}

/// Entries are named by position: `layers.0.weight`, `layers.1.weight`.
impl<T: Parameters> Parameters for Vec<T> {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, v) in self.iter().enumerate() {
            v.visit_parameters(&join_name(prefix, &i.to_string()), out);
        }
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, v) in self.iter().enumerate() {
            v.visit_buffers(&join_name(prefix, &i.to_string()), out);
        }
    }
}

impl<T: Parameters, const N: usize> Parameters for [T; N] {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, v) in self.iter().enumerate() {
            v.visit_parameters(&join_name(prefix, &i.to_string()), out);
        }
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, v) in self.iter().enumerate() {
            v.visit_buffers(&join_name(prefix, &i.to_string()), out);
        }
    }
}

impl<T: Parameters + ?Sized> Parameters for Box<T> {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_parameters(prefix, out);
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_buffers(prefix, out);
    }
}

impl<T: Parameters + ?Sized> Parameters for std::sync::Arc<T> {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_parameters(prefix, out);
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        (**self).visit_buffers(prefix, out);
    }
}

/// Values that hold no parameters: a module's sizes, rates, flags and names.
macro_rules! no_parameters {
    ($($t:ty),*) => {
        $(impl Parameters for $t {
            fn visit_parameters(&self, _prefix: &str, _out: &mut Vec<(String, Tensor)>) {}
        })*
    };
}
no_parameters!(
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    usize,
    i8,
    i16,
    i32,
    i64,
    isize,
    f32,
    f64,
    String,
    &'static str,
    Mode,
    Init,
    PoolKind,
    UpsampleMode,
    CellKind,
    FeedForwardActivation,
    crate::Rng,
    crate::Device
);

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

/// A layer or a whole model: a forward pass, and its parameters ([`Parameters`], required:
/// derive it).
pub trait Module: Parameters + Send + Sync {
    /// Computes the output for input `x`.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;

    /// The trainable tensors with their names (`"weight"`, `"bias"`; a field's name or a
    /// container's position prefixes what it holds: `"fc1.weight"`, `"0.weight"`), in the
    /// order [`Parameters::visit_parameters`] visits them. A tensor shared by two fields (tied
    /// weights) appears under both names, as in PyTorch's `state_dict`.
    ///
    /// Provided: implement [`Parameters`] rather than overriding this (a module nested in
    /// another is asked through `visit_parameters`, never through this).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_parameters("", &mut out);
        out
    }

    /// The trainable tensors, in the order of [`Module::named_parameters`], each once (a
    /// tensor shared by two fields is listed once, so an optimizer steps it once).
    fn parameters(&self) -> Vec<Tensor> {
        let mut seen = std::collections::HashSet::new();
        self.named_parameters().into_iter().map(|(_, t)| t).filter(|t| seen.insert(t.id())).collect()
    }

    /// The buffers with their names (`"running_mean"`, `"0.running_var"`), in the order
    /// [`Parameters::visit_buffers`] visits them: state saved with the model, never trained.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_buffers("", &mut out);
        out
    }

    /// Everything a checkpoint holds, as PyTorch's `state_dict()`: the parameters, then the
    /// buffers, by name.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = self.named_parameters();
        self.visit_buffers("", &mut out);
        out
    }

    /// Total number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(Tensor::elem_count).sum()
    }

    /// A short description for summaries, e.g. `Linear(784 -> 256)`.
    fn describe(&self) -> String;

    /// Moves every parameter and buffer to `device` in place, as PyTorch's `model.to(device)`: each keeps
    /// its name and identity, so optimizers and checkpoints built on the list still apply.
    fn to(&self, device: Device) -> Result<()> {
        device.check_available()?;
        let mut seen = std::collections::HashSet::new();
        for (_, t) in self.state_dict() {
            if seen.insert(t.id()) {
                t.move_to(device)?;
            }
        }
        Ok(())
    }

    /// Saves the parameters and buffers to a safetensors file under their
    /// [`Module::state_dict`] names (PyTorch's `torch.save(model.state_dict(), path)`),
    /// written atomically.
    fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()>
    where
        Self: Sized,
    {
        crate::train::checkpoint::save_weights(self, path)
    }

    /// Loads parameters saved by [`Module::save`] (or by PyTorch's safetensors) into this
    /// model, in place (`model.load_state_dict(...)`): every name must be there with its
    /// shape, or nothing changes and the error lists what is missing, extra or mis-shaped.
    fn load(&self, path: impl AsRef<std::path::Path>) -> Result<()>
    where
        Self: Sized,
    {
        let path = path.as_ref();
        crate::train::checkpoint::load_into(self, &crate::train::checkpoint::load_weights(path)?, path)
    }

    /// This layer as [`std::any::Any`], for containers that recognise layer types: a
    /// [`Sequential`] runs a ReLU after the max pooling that follows it rather than before
    /// (the same values and gradients, on a quarter of the elements with 2x2 windows), and a
    /// dense layer and the ReLU after it, or a convolution and the max pooling after it, as one
    /// op. `None` unless a layer opts in (the activation, pooling, dense and 2-D convolution
    /// layers do).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }

    /// Where the parameters live (the CPU for a module without any).
    fn device(&self) -> Device {
        self.parameters().first().map_or(Device::Cpu, Tensor::device)
    }
}
