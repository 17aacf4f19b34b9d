//! A chain of layers.

use super::{join_name, Mode, Module, Parameters};
use crate::{Result, Tensor};

/// Layers applied one after the other: the output of each is the input of the next (the
/// course's feed-forward network). Parameter names are prefixed with the layer's position,
/// as in PyTorch: `0.weight`, `0.bias`, `2.weight`, ...
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a layer (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Module>) {
        self.layers.push(layer);
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// Layers are named by position, as in PyTorch: `0.weight`, `2.bias`.
impl Parameters for Sequential {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_parameters(&join_name(prefix, &i.to_string()), out);
        }
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_buffers(&join_name(prefix, &i.to_string()), out);
        }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward(&h, mode)?;
        }
        Ok(h)
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}
