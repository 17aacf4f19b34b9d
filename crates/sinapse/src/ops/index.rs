//! Picking and assembling: index_select and index_add, gather and scatter_add,
//! concatenation, padding and stacking.
//!
//! Indices travel as f32 tensors holding whole numbers (Sinapse tensors have one element
//! type); each is checked to be a whole number inside the axis before use.

use super::grad_if;
pub use crate::backend::{checked_index, MAX_EXACT_INDEX};
use crate::backend::{Indices, Storage};
use crate::layout::Dim;
use crate::layout::{checked_elem_count, Layout};
use crate::{Error, Result, Tensor};

/// Positions made on the host as an index tensor `[n]` on `device` (f32 holds whole numbers
/// exactly below [`MAX_EXACT_INDEX`]; a position from there on is an error naming `op`, never a
/// rounded index).
pub(crate) fn index_tensor(
    op: &'static str,
    indices: impl IntoIterator<Item = usize>,
    device: crate::Device,
) -> Result<Tensor> {
    let mut values = Vec::new();
    for i in indices {
        if i >= MAX_EXACT_INDEX {
            return Err(Error::IndexOutOfRange { op, index: i as f64, size: MAX_EXACT_INDEX });
        }
        values.push(i as f32);
    }
    let n = values.len();
    Tensor::from_vec(values, &[n])?.to(device)
}

impl Tensor {
    /// The entries `indices[0], indices[1], ..` of axis `dim` (a 1-D list of positions, repeats
    /// allowed). Gradient: each output slice's gradient is added back at its source position
    /// ([`Tensor::index_add`] into zeros).
    pub fn index_select(&self, dim: impl Dim, indices: &Tensor) -> Result<Tensor> {
        let dim = dim.axis("index_select", self.rank())?;
        if indices.rank() != 1 {
            return Err(Error::invalid(
                "index_select",
                format!("indices must be 1-D, got shape {:?}", indices.shape()),
            ));
        }
        let storage =
            Tensor::with_storages([self, indices], |[s, i]| s.index_select(self.layout(), dim, i, indices.layout()))?;
        let mut shape = self.shape().to_vec();
        shape[dim] = indices.elem_count();
        let indices = indices.detach();
        Ok(Tensor::from_op(storage, &shape, "index_select", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || x[0].zeros_like()?.index_add(dim, &indices, g))?])
        }))
    }

    /// `self` with slice `j` of `src` (along `dim`) added at position `indices[j]`; repeated
    /// positions add up. `src` has `self`'s shape except `indices.len()` along `dim`.
    /// Gradients: `g` for `self`, `g.index_select(dim, indices)` for `src`.
    pub fn index_add(&self, dim: impl Dim, indices: &Tensor, src: &Tensor) -> Result<Tensor> {
        let dim = dim.axis("index_add", self.rank())?;
        let mut want = self.shape().to_vec();
        want[dim] = indices.elem_count();
        if indices.rank() != 1 || src.shape() != want {
            return Err(Error::shapes("index_add (source vs indices)", src.shape(), &want));
        }
        let storage = Tensor::with_storages([self, indices, src], |[s, i, v]| {
            s.index_add(self.layout(), dim, i, indices.layout(), v, src.layout())
        })?;
        let indices = indices.detach();
        Ok(Tensor::from_op(storage, self.shape(), "index_add", &[self, src], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || Ok(g.clone()))?, grad_if(&x[1], || g.index_select(dim, &indices))?])
        }))
    }

    /// `out[i][j] = self[i][index[i][j]]` for `dim = 1` (and likewise for any axis): picks one
    /// entry of axis `dim` per position of `index`, which has the same rank as `self` and is no
    /// larger on the other axes. Gradient: added back at the picked positions
    /// ([`Tensor::scatter_add`] into zeros).
    pub fn gather(&self, dim: impl Dim, index: &Tensor) -> Result<Tensor> {
        self.gather_as(dim, index, Indices::Positions("gather"))
    }

    /// [`Tensor::gather`], with a bad entry of `index` reported in `who`'s terms (on a GPU,
    /// the kernel finds it and the next read reports it, when the caller can no longer
    /// reword the error).
    pub(crate) fn gather_as(&self, dim: impl Dim, index: &Tensor, who: Indices) -> Result<Tensor> {
        let dim = dim.axis("gather", self.rank())?;
        check_index_shape("gather", self.shape(), index.shape(), dim)?;
        let storage =
            Tensor::with_storages([self, index], |[s, i]| s.gather(self.layout(), dim, i, index.layout(), who))?;
        let (shape, index) = (index.shape().to_vec(), index.detach());
        Ok(Tensor::from_op(storage, &shape, "gather", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || x[0].zeros_like()?.scatter_add(dim, &index, g))?])
        }))
    }

    /// `self` with each `src[p]` added at position `p` with axis `dim` replaced by `index[p]`
    /// (the adjoint of [`Tensor::gather`]; PyTorch's `scatter_add`). `src` has the index's
    /// shape. Gradients: `g` for `self`, `g.gather(dim, index)` for `src`.
    pub fn scatter_add(&self, dim: impl Dim, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let dim = dim.axis("scatter_add", self.rank())?;
        check_index_shape("scatter_add", self.shape(), index.shape(), dim)?;
        if src.shape() != index.shape() {
            return Err(Error::shapes("scatter_add (source vs index)", src.shape(), index.shape()));
        }
        let storage = Tensor::with_storages([self, index, src], |[s, i, v]| {
            s.scatter_add(self.layout(), dim, i, index.layout(), v, src.layout())
        })?;
        let index = index.detach();
        Ok(Tensor::from_op(storage, self.shape(), "scatter_add", &[self, src], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || Ok(g.clone()))?, grad_if(&x[1], || g.gather(dim, &index))?])
        }))
    }

    /// Joins tensors along axis `dim`; all other axes must agree. Gradient: each input gets
    /// its slice of the output gradient.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        let dim = dim.axis("cat", first.rank())?;
        let mut shape = first.shape().to_vec();
        shape[dim] = 0;
        for t in tensors {
            let s = t.shape();
            let agrees =
                s.len() == shape.len() && s.iter().zip(&shape).enumerate().all(|(d, (a, b))| d == dim || a == b);
            if !agrees {
                return Err(Error::shapes("cat", first.shape(), s));
            }
            shape[dim] += s[dim];
        }
        let out_layout = Layout::contiguous(&shape);
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[dim]).collect();
        // One value each (scalars stacked: a loss per batch): gathered in one pass where the
        // backend can (a launch per 64 on a GPU, not a copy each).
        let gathered = if tensors.len() > 1 && tensors.iter().all(|t| t.elem_count() == 1) {
            Tensor::gather_values(tensors)?
        } else {
            None
        };
        let out = match gathered {
            Some(out) => out,
            None => {
                let mut out = Storage::full(first.device(), out_layout.elem_count(), 0.0)?;
                let mut start = 0;
                for (t, &len) in tensors.iter().zip(&sizes) {
                    let region = out_layout.narrow(dim, start, len)?;
                    t.storage().copy_into(t.layout(), &mut out, &region, "cat")?;
                    start += len;
                }
                out
            }
        };
        Ok(Tensor::from_op(out, &shape, "cat", tensors, move |g, x, _| {
            let mut start = 0;
            let mut grads = Vec::with_capacity(x.len());
            for (t, &len) in x.iter().zip(&sizes) {
                grads.push(grad_if(t, || g.narrow(dim, start, len)?.contiguous())?);
                start += len;
            }
            Ok(grads)
        }))
    }

    /// `value` repeated `before` times along axis `dim` ahead of the tensor and `after` times
    /// behind it (PyTorch's constant `F.pad`, on one axis). Gradient: the middle part.
    pub fn pad(&self, dim: impl Dim, before: usize, after: usize, value: f32) -> Result<Tensor> {
        let dim = dim.axis("pad", self.rank())?;
        let len = self.shape()[dim];
        let mut shape = self.shape().to_vec();
        shape[dim] = len
            .checked_add(before)
            .and_then(|s| s.checked_add(after))
            .ok_or_else(|| Error::invalid("pad", format!("padding {before} + {after} overflows axis {dim}")))?;
        let out_layout = Layout::contiguous(&shape);
        let mut out = Storage::full(self.device(), checked_elem_count("pad", &shape)?, value)?;
        self.storage().copy_into(self.layout(), &mut out, &out_layout.narrow(dim, before, len)?, "pad")?;
        Ok(Tensor::from_op(out, &shape, "pad", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.narrow(dim, before, len))?])
        }))
    }

    /// Stacks same-shaped tensors along a new axis `dim`.
    pub fn stack(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        // The new axis is among rank + 1.
        let rank = tensors.first().map_or(0, |t| t.rank());
        let dim = dim.axis("stack", rank + 1).map_err(|_| super::view::insert_error("stack", rank))?;
        let expanded = tensors.iter().map(|t| t.unsqueeze(dim)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        if let Some(first) = tensors.first() {
            if let Some(other) = tensors.iter().find(|t| t.shape() != first.shape()) {
                return Err(Error::shapes("stack", first.shape(), other.shape()));
            }
        }
        Tensor::cat(&refs, dim)
    }
}

/// An index of `self`'s rank, no larger than `self` on the axes other than `dim`.
fn check_index_shape(op: &'static str, shape: &[usize], ishape: &[usize], dim: usize) -> Result<()> {
    let fits =
        ishape.len() == shape.len() && ishape.iter().zip(shape).enumerate().all(|(d, (&i, &s))| d == dim || i <= s);
    if !fits {
        return Err(Error::shapes(op, shape, ishape));
    }
    Ok(())
}
