//! Views: new shapes over the same storage (no copy), and `contiguous` to make a copy when a
//! kernel needs row-major data.
//!
//! The gradient of a view undoes it: the gradient of a transpose is transposed back, the
//! gradient of a reshape is reshaped back, and the gradient of `narrow` is placed between
//! zeros.

use super::grad_if;
use crate::layout::checked_elem_count;
use crate::layout::Dim;
use crate::{Error, Result, Tensor};

/// The error for an axis that is no place to insert a new one in a tensor of `rank`.
pub(crate) fn insert_error(op: &'static str, rank: usize) -> Error {
    Error::invalid(op, format!("a new axis goes at 0..={rank} (or -{}..=-1) of a tensor of rank {rank}", rank + 1))
}

impl Tensor {
    /// Same elements in row-major order, new shape with the same element count. A view when
    /// the tensor is contiguous, else a copy.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let n = checked_elem_count("reshape", shape)?;
        if n != self.elem_count() {
            return Err(Error::shapes("reshape", self.shape(), shape));
        }
        let src = if self.layout().is_contiguous() { self.clone() } else { self.contiguous()? };
        let layout = src.layout().reshape_contiguous(shape);
        Ok(src.view_op(layout, "reshape", |g, x, _| Ok(vec![grad_if(&x[0], || g.reshape(x[0].shape()))?])))
    }

    /// All elements as one axis.
    pub fn flatten_all(&self) -> Result<Tensor> {
        self.reshape(&[self.elem_count()])
    }

    /// Merges axes `start..=end` into one (`x.flatten(1, x.rank() - 1)` turns images into rows).
    pub fn flatten(&self, start: impl Dim, end: impl Dim) -> Result<Tensor> {
        let (start, end) = (start.axis("flatten", self.rank())?, end.axis("flatten", self.rank())?);
        if start > end || end >= self.rank() {
            return Err(Error::invalid("flatten", format!("axes {start}..={end} outside shape {:?}", self.shape())));
        }
        let s = self.shape();
        let mut shape = s[..start].to_vec();
        shape.push(s[start..=end].iter().product());
        shape.extend_from_slice(&s[end + 1..]);
        self.reshape(&shape)
    }

    /// Swaps axes `d0` and `d1` (a view).
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let (d0, d1) = (d0.axis("transpose", self.rank())?, d1.axis("transpose", self.rank())?);
        let layout = self.layout().transpose(d0, d1)?;
        Ok(self.view_op(layout, "transpose", move |g, x, _| Ok(vec![grad_if(&x[0], || g.transpose(d0, d1))?])))
    }

    /// The transpose of a matrix (the last two axes swapped).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid("t", format!("needs at least 2 axes, shape is {:?}", self.shape())));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// Reorders axes: axis `i` of the result is axis `perm[i]` of `self` (a view).
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let layout = self.layout().permute(perm)?;
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        Ok(self.view_op(layout, "permute", move |g, x, _| Ok(vec![grad_if(&x[0], || g.permute(&inverse))?])))
    }

    /// Entries `start..start + len` of axis `dim` (a view). Its gradient is the output
    /// gradient padded with zeros back to the input's size along `dim`.
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        let dim = dim.axis("narrow", self.rank())?;
        let layout = self.layout().narrow(dim, start, len)?;
        Ok(self.view_op(layout, "narrow", move |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.pad(dim, start, x[0].shape()[dim] - start - len, 0.0))?])
        }))
    }

    /// Inserts an axis of size 1 at `dim` (a view).
    pub fn unsqueeze(&self, dim: impl Dim) -> Result<Tensor> {
        // One more axis than now: -1 appends one.
        let dim = dim.axis("unsqueeze", self.rank() + 1).map_err(|_| insert_error("unsqueeze", self.rank()))?;
        let layout = self.layout().unsqueeze(dim)?;
        Ok(self.view_op(layout, "unsqueeze", move |g, x, _| Ok(vec![grad_if(&x[0], || g.squeeze(dim))?])))
    }

    /// Removes axis `dim`, which must have size 1 (a view).
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.axis("squeeze", self.rank())?;
        let layout = self.layout().squeeze(dim)?;
        Ok(self.view_op(layout, "squeeze", move |g, x, _| Ok(vec![grad_if(&x[0], || g.unsqueeze(dim))?])))
    }

    /// Repeats the tensor to a larger shape by broadcasting rules (a view with stride 0 on the
    /// repeated axes). Its gradient sums over them.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_to(shape)?;
        Ok(self.view_op(layout, "broadcast_to", |g, x, _| Ok(vec![grad_if(&x[0], || g.sum_to_shape(x[0].shape()))?])))
    }

    /// A row-major copy, or `self` when it already is row-major.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.layout().is_contiguous() {
            return Ok(self.clone());
        }
        let data = self.storage().copy_strided(self.layout())?;
        Ok(Tensor::from_op(data, self.shape(), "contiguous", &[self], |g, x, _| {
            Ok(vec![grad_if(&x[0], || Ok(g.clone()))?])
        }))
    }
}
