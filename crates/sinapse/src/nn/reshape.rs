//! Layers that only change the shape of each sample: `Flatten` and `Reshape`.

use super::{Mode, Module, Parameters};
use crate::{Result, Tensor};

/// Flattens every axis after the first: `[N, d1, d2, ..] -> [N, d1·d2·..]` (PyTorch's
/// `nn.Flatten()`).
#[derive(Clone, Copy, Debug, Default, Parameters)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        if x.rank() < 2 {
            return Ok(x.clone());
        }
        x.flatten(1, x.rank() - 1)
    }

    fn describe(&self) -> String {
        "Flatten".to_string()
    }
}

/// Reshapes each sample, keeping the batch axis: `[N, ..] -> [N, shape..]` (e.g. MNIST rows
/// of 784 pixels into `[1, 28, 28]` images).
#[derive(Clone, Debug, Parameters)]
pub struct Reshape(pub Vec<usize>);

impl Module for Reshape {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let n = x.dim(0)?;
        let mut shape = vec![n];
        shape.extend_from_slice(&self.0);
        x.reshape(&shape)
    }

    fn describe(&self) -> String {
        format!("Reshape({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_keeps_the_batch_axis() {
        let x = Tensor::zeros(&[2, 3, 4]);
        assert_eq!(Flatten.forward(&x, Mode::Eval).unwrap().shape(), &[2, 12]);
    }

    #[test]
    fn reshape_keeps_the_batch_axis() {
        let x = Tensor::zeros(&[2, 784]);
        assert_eq!(Reshape(vec![1, 28, 28]).forward(&x, Mode::Eval).unwrap().shape(), &[2, 1, 28, 28]);
        assert!(Reshape(vec![1, 28, 27]).forward(&x, Mode::Eval).is_err());
    }
}
