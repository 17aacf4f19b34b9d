//! Stochastic gradient descent.

use super::update_param;
use crate::{Gradients, Result, Tensor};

/// Plain (minibatch) gradient descent: `w ← w - lr · dL/dw` for every parameter.
///
/// With the gradient of the loss on one minibatch this is SGD; on the whole training set it is
/// full-batch gradient descent.
pub struct Sgd {
    params: Vec<Tensor>,
    lr: f32,
}

impl Sgd {
    /// An optimizer over `params` with learning rate `lr`.
    pub fn new(params: Vec<Tensor>, lr: f32) -> Sgd {
        Sgd { params, lr }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        self.lr
    }

    /// Sets the learning rate.
    pub fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }

    /// One update of every parameter that has a gradient in `grads`.
    pub fn step(&mut self, grads: &Gradients) -> Result<()> {
        let lr = self.lr;
        for p in &self.params {
            if let Some(g) = grads.get(p) {
                update_param("Sgd::step", p, g, |w, g| {
                    w.iter_mut().zip(g).for_each(|(w, &g)| *w -= lr * g);
                })?;
            }
        }
        Ok(())
    }
}
