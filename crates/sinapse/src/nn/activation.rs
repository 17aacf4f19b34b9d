//! Activation functions as layers, for use in [`super::Sequential`].

use super::{Mode, Module, Parameters};
use crate::{Result, Tensor};

macro_rules! activation_layer {
    ($(#[$doc:meta])* $name:ident, $label:expr, |$x:ident| $body:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, Parameters)]
        pub struct $name;

        impl Module for $name {
            fn forward(&self, $x: &Tensor, _mode: Mode) -> Result<Tensor> {
                $body
            }
            fn describe(&self) -> String {
                $label.to_string()
            }
            fn as_any(&self) -> Option<&dyn std::any::Any> {
                Some(self)
            }
        }
    };
}

activation_layer!(
    /// Heaviside step layer (no gradient flows through it); see [`Tensor::step`].
    Step, "Step", |x| x.step()
);
activation_layer!(
    /// Sigmoid layer; see [`Tensor::sigmoid`].
    Sigmoid, "Sigmoid", |x| x.sigmoid()
);
activation_layer!(
    /// Tanh layer; see [`Tensor::tanh`].
    Tanh, "Tanh", |x| x.tanh()
);
activation_layer!(
    /// ReLU layer; see [`Tensor::relu`].
    Relu, "ReLU", |x| x.relu()
);

activation_layer!(
    /// GELU layer (exact, with erf); see [`Tensor::gelu`].
    Gelu, "GELU", |x| x.gelu()
);
activation_layer!(
    /// SiLU (swish) layer; see [`Tensor::silu`].
    Silu, "SiLU", |x| x.silu()
);
activation_layer!(
    /// Softplus layer; see [`Tensor::softplus`].
    Softplus, "Softplus", |x| x.softplus()
);

/// ELU layer with the given α; see [`Tensor::elu`].
#[derive(Clone, Copy, Debug, Parameters)]
pub struct Elu(pub f32);

impl Module for Elu {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.elu(self.0)
    }
    fn describe(&self) -> String {
        format!("ELU({})", self.0)
    }
}

/// Leaky ReLU layer with the given negative slope; see [`Tensor::leaky_relu`].
#[derive(Clone, Copy, Debug, Parameters)]
pub struct LeakyRelu(pub f32);

impl Module for LeakyRelu {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.leaky_relu(self.0)
    }
    fn describe(&self) -> String {
        format!("LeakyReLU({})", self.0)
    }
}

/// Softmax over the last axis; see [`Tensor::softmax`].
#[derive(Clone, Copy, Debug, Default, Parameters)]
pub struct Softmax;

impl Module for Softmax {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.softmax(x.rank().saturating_sub(1))
    }
    fn describe(&self) -> String {
        "Softmax".to_string()
    }
}

/// Log-softmax over the last axis; see [`Tensor::log_softmax`].
#[derive(Clone, Copy, Debug, Default, Parameters)]
pub struct LogSoftmax;

impl Module for LogSoftmax {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.log_softmax(x.rank().saturating_sub(1))
    }
    fn describe(&self) -> String {
        "LogSoftmax".to_string()
    }
}
