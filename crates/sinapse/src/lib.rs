//! # Sinapse
//!
//! A deep-learning framework written to be read: tensors with automatic differentiation, the
//! activations and losses of a first deep-learning course, Rosenblatt's perceptron, and the
//! layers and training loop that take you from there to an MLP on MNIST.
//!
//! Where to start reading:
//! - [`Tensor`]: n-dimensional `f32` arrays and their operations ([`ops`]), each op written
//!   next to its gradient rule;
//! - [`autograd`]: backpropagation as the chain rule over the recorded graph;
//! - [`gradcheck`]: checking those gradient rules against finite differences;
//! - [`perceptron`]: Rosenblatt's 1957 learning rule;
//! - [`nn`]: layers (`Linear`, `Sequential`, activations) and losses;
//! - [`optim`]: gradient descent;
//! - [`data`]: reading MNIST's IDX files;
//! - [`backend`]: the closed set of kernels each device implements, and [`Device`]: where a
//!   tensor lives (`tensor.to(device)`, `model.to(device)`).
//!
//! ```
//! use sinapse::{nn::{self, Module, Mode}, optim::{Optimizer, Sgd}, Rng, Tensor};
//! let mut rng = Rng::seed(0);
//! let model = nn::Sequential::new()
//!     .add(nn::Linear::new(2, 8, &mut rng)?)
//!     .add(nn::Tanh)
//!     .add(nn::Linear::new(8, 1, &mut rng)?);
//! let x = Tensor::from_vec(vec![0., 0., 0., 1., 1., 0., 1., 1.], &[4, 2])?;
//! let y = Tensor::from_vec(vec![0., 1., 1., 0.], &[4, 1])?;
//! let mut opt = Sgd::new(model.parameters(), 0.5)?;
//! for _ in 0..10 {
//!     let loss = nn::loss::mse(&model.forward(&x, Mode::Train)?, &y)?;
//!     opt.step(&loss.backward()?)?;
//! }
//! # Ok::<(), sinapse::Error>(())
//! ```

#![warn(missing_docs)]

// `#[derive(Parameters)]` names `::sinapse::...`, also inside this crate.
extern crate self as sinapse;

pub mod atomic;
pub mod autograd;
pub mod backend;
pub mod data;
mod device;
mod error;
pub mod gradcheck;
pub mod job;
pub mod layout;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod perceptron;
mod random;
pub mod spec;
pub mod tensor;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, Gradients, NoGradGuard};
pub use backend::DType;
pub use device::Device;
pub use error::{Error, Result};
pub use random::Rng;
pub use tensor::Tensor;
