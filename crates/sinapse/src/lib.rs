//! # Sinapse
//!
//! A deep-learning framework written to be read: tensors with automatic differentiation, the
//! activations and losses of a first deep-learning course, Rosenblatt's perceptron, and the
//! layers and training loop that take you from there to MLPs, CNNs and LSTMs on MNIST.
//!
//! ## The modules
//! - [`Tensor`] ([`tensor`]): n-dimensional `f32` arrays on a [`Device`]; their operations in
//!   [`ops`], each next to its gradient rule; shapes and strides in [`layout`];
//! - [`autograd`]: backpropagation as the chain rule over the recorded graph; [`gradcheck`]
//!   checks every rule against finite differences;
//! - [`backend`]: the closed set of kernels each device implements (the CPU today);
//! - [`nn`]: the [`nn::Module`] and [`nn::Parameters`] traits, layers (linear, convolution,
//!   pooling, RNN/LSTM/GRU, dropout, embedding, activations), losses, initialisation;
//! - [`optim`]: SGD, Adam/AdamW, RMSprop, learning-rate schedules, gradient clipping;
//! - [`data`]: datasets and minibatch loaders, CSV and IDX (MNIST) readers, scaling, splits
//!   for holdout, k-fold and leave-one-out validation;
//! - [`train`]: [`train::Trainer`] and `fit`/`evaluate`/`predict`, metrics, progress,
//!   checkpoints;
//! - [`spec`] and [`job`]: a whole training job in a TOML file, and running it (train,
//!   cross-validate, gradcheck) into a model directory; [`atomic`]: the writes that keep such
//!   directories safe;
//! - [`perceptron`]: Rosenblatt's 1957 learning rule.
//!
//! ## A first network
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
//!
//! ## Writing your own module
//! A struct of layers, `#[derive(Parameters)]` to find its parameters (named after its
//! fields, as PyTorch's `state_dict`), and a `forward`; then train, save and load it:
//! ```
//! use sinapse::data::Dataset;
//! use sinapse::nn::{Linear, Mode, Module, Parameters};
//! use sinapse::optim::Adam;
//! use sinapse::train::{Task, Trainer};
//! use sinapse::{Result, Rng, Tensor};
//!
//! #[derive(Parameters)]
//! struct Residual {
//!     fc1: Linear,
//!     fc2: Linear,
//! }
//!
//! impl Module for Residual {
//!     fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
//!         let h = self.fc1.forward(x, mode)?.relu()?;
//!         x + &self.fc2.forward(&h, mode)? // x + F(x)
//!     }
//!     fn describe(&self) -> String {
//!         "Residual".into()
//!     }
//! }
//!
//! let mut rng = Rng::seed(0);
//! let model = Residual { fc1: Linear::new(2, 16, &mut rng)?, fc2: Linear::new(16, 2, &mut rng)? };
//! let x = Tensor::rand_normal(&[128, 2], 0.0, 1.0, &mut rng)?;
//! let data = Dataset::new(x.clone(), (&x * 2.0)?)?; // learn y = 2x
//! let mut opt = Adam::new(model.parameters(), 0.01)?;
//! let trainer = Trainer::new(Task::Regression).epochs(40);
//! trainer.fit(&model, &mut opt, &data)?;
//! let path = std::env::temp_dir().join(format!("residual-{}.safetensors", std::process::id()));
//! model.save(&path)?; // fc1.weight, fc1.bias, fc2.weight, fc2.bias
//! let copy = Residual { fc1: Linear::new(2, 16, &mut rng)?, fc2: Linear::new(16, 2, &mut rng)? };
//! copy.load(&path)?;
//! assert!(trainer.evaluate(&copy, &data)?.mse().unwrap() < 0.05);
//! # std::fs::remove_file(&path).ok();
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
pub mod dist;
mod error;
pub mod gradcheck;
pub mod job;
pub mod layout;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod perceptron;
mod random;
pub mod rl;
pub mod spec;
pub mod tensor;
pub mod train;

pub use autograd::{is_grad_enabled, no_grad, Gradients, NoGradGuard};
pub use backend::{hot_workers, work_on_this_thread, DType, HotWorkers};
pub use device::Device;
pub use error::{Error, Result};
pub use ops::common::PadMode;
pub use random::Rng;
pub use tensor::Tensor;
