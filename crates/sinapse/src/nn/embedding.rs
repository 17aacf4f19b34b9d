//! Learned vectors looked up by index: the layer that usually feeds a recurrent network.

use super::{Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// A lookup table of `num_embeddings` learned vectors of size `dim` (PyTorch's
/// `nn.Embedding`, weight `[num, dim]` drawn from N(0, 1)): indices of any shape become
/// vectors, `[..] -> [.., dim]`. Its gradient adds into the rows that were looked up.
#[derive(Parameters)]
pub struct Embedding {
    /// The table, `[num_embeddings, dim]`.
    pub weight: Tensor,
}

impl Embedding {
    /// A table of `num_embeddings` vectors of size `dim`.
    pub fn new(num_embeddings: usize, dim: usize, rng: &mut Rng) -> Result<Embedding> {
        if num_embeddings == 0 || dim == 0 {
            return Err(Error::invalid("Embedding", format!("sizes must be positive, got {num_embeddings} x {dim}")));
        }
        Ok(Embedding { weight: Tensor::rand_normal(&[num_embeddings, dim], 0.0, 1.0, rng)?.set_requires_grad(true) })
    }
}

impl Module for Embedding {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        if self.weight.rank() != 2 {
            return Err(Error::invalid(
                "Embedding",
                format!("weight must be [num, dim], got {:?}", self.weight.shape()),
            ));
        }
        let rows = self.weight.index_select(0, &x.flatten_all()?)?;
        let mut shape = x.shape().to_vec();
        shape.push(self.weight.shape()[1]);
        rows.reshape(&shape)
    }

    fn describe(&self) -> String {
        let s = |i: usize| self.weight.shape().get(i).copied().unwrap_or(0);
        format!("Embedding({}, {})", s(0), s(1))
    }
}
