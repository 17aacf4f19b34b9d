//! Reductions: sum, mean, max, min, argmax, argmin over one axis or over all elements.
//!
//! `keepdim = true` keeps the reduced axis with size 1, so the result broadcasts against the
//! input (`x.sub(&x.mean(1, true)?)` centres each row).

use super::grad_if;
use crate::backend::{ReduceOp, Storage};
use crate::layout::Dim;
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Runs a reduction kernel over axis `dim`; returns the values and the result's shape.
    fn reduce_dim(&self, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<(Storage, Vec<usize>)> {
        let shape = self.shape();
        if shape[dim] == 0 && kind != ReduceOp::Sum {
            return Err(Error::invalid(op, format!("axis {dim} of shape {shape:?} is empty")));
        }
        let data = self.storage().reduce(self.layout(), Some(dim), kind)?;
        let mut out_shape = shape.to_vec();
        if keepdim {
            out_shape[dim] = 1;
        } else {
            out_shape.remove(dim);
        }
        Ok((data, out_shape))
    }

    /// Sum over axis `dim`. Every input element gets the gradient of the sum it went into.
    pub fn sum(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("sum", self.rank())?;
        let (data, shape) = self.reduce_dim("sum", dim, keepdim, ReduceOp::Sum)?;
        Ok(Tensor::from_op(data, &shape, "sum", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || expand_back(g, dim, keepdim, x[0].shape()))?])
        }))
    }

    /// Sum over several axes (given in any order).
    pub fn sum_dims(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let mut sorted = dims.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != dims.len() {
            // As PyTorch: naming an axis twice is a mistake, not a request to sum it once.
            return Err(Error::invalid("sum_dims", format!("axis repeated in {dims:?}")));
        }
        let mut t = self.clone();
        // Highest axis first, so the lower axis numbers stay valid when axes disappear.
        for &d in sorted.iter().rev() {
            t = t.sum(d, keepdim)?;
        }
        Ok(t)
    }

    /// Sum of all elements, as a scalar (rank 0).
    pub fn sum_all(&self) -> Result<Tensor> {
        let data = self.storage().reduce(self.layout(), None, ReduceOp::Sum)?;
        Ok(Tensor::from_op(data, &[], "sum_all", &[self], |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.broadcast_to(x[0].shape()))?])
        }))
    }

    /// Mean over axis `dim`: the sum divided by the axis length.
    pub fn mean(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("mean", self.rank())?;
        let n = self.dim(dim)?;
        self.sum(dim, keepdim)?.mul_scalar(1.0 / n as f32)
    }

    /// Mean of all elements, as a scalar (NaN for an empty tensor, as in PyTorch).
    pub fn mean_all(&self) -> Result<Tensor> {
        let n = self.elem_count();
        self.sum_all()?.mul_scalar(1.0 / n as f32)
    }

    /// Largest entry along axis `dim`. The gradient goes to the entries equal to the maximum,
    /// shared evenly between ties.
    pub fn max(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("max", self.rank())?;
        self.extreme("max", dim, keepdim, ReduceOp::Max)
    }

    /// Smallest entry along axis `dim`; gradient as for [`Tensor::max`].
    pub fn min(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("min", self.rank())?;
        self.extreme("min", dim, keepdim, ReduceOp::Min)
    }

    fn extreme(&self, op: &'static str, dim: usize, keepdim: bool, kind: ReduceOp) -> Result<Tensor> {
        let (data, shape) = self.reduce_dim(op, dim, keepdim, kind)?;
        Ok(Tensor::from_op(data, &shape, op, &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                let y = expand_back(y, dim, keepdim, x[0].shape())?;
                // The lanes that hold the extreme: equal to it, or NaN where it is NaN (NaN
                // wins, and NaN == NaN is false), as PyTorch routes the gradient.
                let both_nan = x[0].ne(&x[0])?.mul(&y.ne(&y)?)?;
                let hit = x[0].eq(&y)?.maximum(&both_nan)?;
                let ties = hit.sum(dim, true)?;
                expand_back(g, dim, keepdim, x[0].shape())?.mul(&hit)?.div(&ties)
            })?])
        }))
    }

    /// Largest element of the whole tensor, as a scalar.
    pub fn max_all(&self) -> Result<Tensor> {
        self.flatten_all()?.max(0, false)
    }

    /// Smallest element of the whole tensor, as a scalar.
    pub fn min_all(&self) -> Result<Tensor> {
        self.flatten_all()?.min(0, false)
    }

    /// Index of the (first) largest entry along `dim`, as f32 values (exact below 2²⁴).
    /// Not differentiable.
    pub fn argmax(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("argmax", self.rank())?;
        let (data, shape) = self.reduce_dim("argmax", dim, keepdim, ReduceOp::ArgMax)?;
        Ok(Tensor::from_storage(data, crate::layout::Layout::contiguous(&shape)))
    }

    /// Index of the (first) smallest entry along `dim`, as f32 values. Not differentiable.
    pub fn argmin(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("argmin", self.rank())?;
        let (data, shape) = self.reduce_dim("argmin", dim, keepdim, ReduceOp::ArgMin)?;
        Ok(Tensor::from_storage(data, crate::layout::Layout::contiguous(&shape)))
    }

    /// Sums a broadcast result back down to `shape`: over the leading axes that broadcasting
    /// added and over the axes where `shape` has size 1. This is the gradient rule of
    /// broadcasting, used by every binary op.
    pub fn sum_to_shape(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let err = || Error::shapes("sum_to_shape", self.shape(), shape);
        if shape.len() > self.rank() {
            return Err(err());
        }
        let extra = self.rank() - shape.len();
        let mut t = self.clone();
        for _ in 0..extra {
            t = t.sum(0, false)?;
        }
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 && t.shape()[i] != 1 {
                t = t.sum(i, true)?;
            }
        }
        if t.shape() != shape {
            return Err(err());
        }
        Ok(t)
    }
}

/// Broadcasts a reduced tensor (the gradient of a reduction, or its result) back to the
/// input's shape, re-inserting the reduced axis when `keepdim` removed it.
fn expand_back(t: &Tensor, dim: usize, keepdim: bool, shape: &[usize]) -> Result<Tensor> {
    let t = if keepdim { t.clone() } else { t.unsqueeze(dim)? };
    t.broadcast_to(shape)
}
