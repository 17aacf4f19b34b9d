//! Picking and assembling: index_select, gather, concatenation and stacking.
//!
//! Indices travel as f32 tensors holding whole numbers (Sinapse tensors have one element
//! type); each is checked to be a whole number inside the axis before use.

use super::grad_if;
use crate::backend::cpu;
use crate::tensor::Layout;
use crate::{Error, Result, Tensor};

/// Indices travel as f32, which holds every whole number exactly up to 2²⁴.
pub const MAX_EXACT_INDEX: usize = 1 << 24;

/// `v` as a position in `0..size`: a whole number in range (and below 2²⁴, where f32 stops
/// counting exactly), or an error naming `op`.
pub fn checked_index(op: &'static str, v: f32, size: usize) -> Result<usize> {
    if v >= 0.0 && v.fract() == 0.0 && (v as usize) < size.min(MAX_EXACT_INDEX) {
        Ok(v as usize)
    } else {
        Err(Error::IndexOutOfRange { op, index: v as f64, size })
    }
}

/// The values of `indices` as positions in `0..size`, or an error naming the first bad one.
fn checked_indices(op: &'static str, indices: &Tensor, size: usize) -> Result<Vec<usize>> {
    indices.to_vec().into_iter().map(|v| checked_index(op, v, size)).collect()
}

impl Tensor {
    /// The entries `indices[0], indices[1], ..` of axis `dim` (a 1-D list of positions, repeats
    /// allowed). Gradient: each output slice's gradient is added back at its source position.
    pub fn index_select(&self, dim: usize, indices: &Tensor) -> Result<Tensor> {
        self.layout().check_dim("index_select", dim)?;
        if indices.rank() != 1 {
            return Err(Error::invalid(
                "index_select",
                format!("indices must be 1-D, got shape {:?}", indices.shape()),
            ));
        }
        let shape = self.shape();
        let size = shape[dim];
        let idx = checked_indices("index_select", indices, size)?;
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        self.with_row_major(|d| {
            for o in 0..outer {
                for &i in &idx {
                    let start = (o * size + i) * inner;
                    out.extend_from_slice(&d[start..start + inner]);
                }
            }
        });
        let mut out_shape = shape.to_vec();
        out_shape[dim] = idx.len();
        Ok(Tensor::from_op(out, &out_shape, "index_select", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || {
                let mut acc = vec![0.0; x[0].elem_count()];
                let g = g.contiguous()?;
                g.with_data(|d, l| {
                    let d = &d[l.offset()..];
                    for o in 0..outer {
                        for (j, &i) in idx.iter().enumerate() {
                            let from = (o * idx.len() + j) * inner;
                            let to = (o * size + i) * inner;
                            acc[to..to + inner].iter_mut().zip(&d[from..from + inner]).for_each(|(a, &v)| *a += v);
                        }
                    }
                });
                Tensor::from_vec(acc, x[0].shape())
            })?])
        }))
    }

    /// `out[i][j] = self[i][index[i][j]]` for `dim = 1` (and likewise for any axis): picks one
    /// entry of axis `dim` per position of `index`, which has the same rank as `self` and is no
    /// larger on the other axes. Gradient: added back at the picked positions (scatter-add).
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        self.layout().check_dim("gather", dim)?;
        let (shape, ishape) = (self.shape(), index.shape());
        let fits =
            ishape.len() == shape.len() && ishape.iter().zip(shape).enumerate().all(|(d, (&i, &s))| d == dim || i <= s);
        if !fits {
            return Err(Error::shapes("gather", shape, ishape));
        }
        let idx = checked_indices("gather", index, shape[dim])?;
        // Storage offset, in a row-major buffer of `shape`, of each picked element.
        let positions = gather_positions(&Layout::contiguous(shape), ishape, dim, &idx);
        let out: Vec<f32> = self.with_row_major(|d| positions.iter().map(|&p| d[p]).collect());
        Ok(Tensor::from_op(out, ishape, "gather", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || {
                let mut acc = vec![0.0; x[0].elem_count()];
                for (&p, v) in positions.iter().zip(g.to_vec()) {
                    acc[p] += v;
                }
                Tensor::from_vec(acc, x[0].shape())
            })?])
        }))
    }

    /// Joins tensors along axis `dim`; all other axes must agree. Gradient: each input gets
    /// its slice of the output gradient.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        first.layout().check_dim("cat", dim)?;
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
        let mut out = vec![0.0; out_layout.elem_count()];
        let mut sizes = Vec::with_capacity(tensors.len());
        let mut start = 0;
        for t in tensors {
            let len = t.shape()[dim];
            let region = out_layout.narrow(dim, start, len)?;
            t.with_data(|d, l| cpu::copy_into(d, l, &mut out, &region));
            sizes.push(len);
            start += len;
        }
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

    /// Stacks same-shaped tensors along a new axis `dim`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
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

/// For each position of an index tensor of shape `ishape` (row-major), the offset in `layout`
/// of the element it picks: the position itself with axis `dim` replaced by the index value.
fn gather_positions(layout: &Layout, ishape: &[usize], dim: usize, idx: &[usize]) -> Vec<usize> {
    let strides = layout.strides();
    let mut counter = vec![0usize; ishape.len()];
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let base: usize =
            counter.iter().zip(strides).enumerate().filter(|(d, _)| *d != dim).map(|(_, (c, s))| c * s).sum();
        out.push(base + i * strides[dim]);
        for d in (0..ishape.len()).rev() {
            counter[d] += 1;
            if counter[d] < ishape[d] {
                break;
            }
            counter[d] = 0;
        }
    }
    out
}
