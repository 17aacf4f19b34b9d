//! Matrix product, the arithmetic at the heart of every layer.
//!
//! `[.., m, k] x [.., k, n] -> [.., m, n]`; leading (batch) axes broadcast. For C = A·B the
//! chain rule gives dL/dA = dL/dC · Bᵀ and dL/dB = Aᵀ · dL/dC.

use super::grad_if;
use crate::backend::BinaryOp;
use crate::layout::{broadcast_dims, checked_elem_count, Dims, Layout};
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Matrix product of the last two axes, batched over (broadcast) leading axes.
    ///
    /// A 1-D operand is treated as a row (left) or column (right) vector and that axis is
    /// dropped from the result, as in NumPy and PyTorch.
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        match (self.rank(), rhs.rank()) {
            (0, _) | (_, 0) => Err(Error::shapes("matmul", self.shape(), rhs.shape())),
            (1, 1) => self.unsqueeze(0)?.matmul(&rhs.unsqueeze(1)?)?.reshape(&[]),
            (1, _) => {
                let out = self.unsqueeze(0)?.matmul(rhs)?;
                out.squeeze(out.rank() - 2)
            }
            (_, 1) => {
                let out = self.matmul(&rhs.unsqueeze(1)?)?;
                out.squeeze(out.rank() - 1)
            }
            _ => self.matmul_nd(rhs),
        }
    }

    fn matmul_nd(&self, rhs: &Tensor) -> Result<Tensor> {
        let (a, b) = (self.shape(), rhs.shape());
        let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
        let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
        if k != k2 {
            return Err(Error::shapes("matmul", a, b));
        }
        let batch = broadcast_dims("matmul", &a[..a.len() - 2], &b[..b.len() - 2])?;
        // The operands' and the output's shapes: the batch axes, then their matrix's two.
        let with = |rows: usize, cols: usize| -> Dims { batch.iter().copied().chain([rows, cols]).collect() };
        let out_shape = with(m, n);
        checked_elem_count("matmul", &out_shape)?;
        let view = |t: &Tensor, shape: Dims| match t.shape() == shape.as_slice() {
            true => Ok(t.layout().clone()),
            false => t.layout().broadcast_to(&shape),
        };
        let la = view(self, with(m, k))?;
        let lb = view(rhs, with(k, n))?;
        let data = Tensor::with_storages([self, rhs], |[a, b]| a.matmul(&la, b, &lb, [m, k, n]))?;
        Ok(Tensor::from_op(data, &out_shape, "matmul", &[self, rhs], |g, x, _| {
            let (a, b) = (&x[0], &x[1]);
            // An operand that is a transposed matrix (`x·Wᵀ`, W row-major) gets its gradient
            // as the transpose of a row-major product, (B·Gᵀ)ᵀ or (Gᵀ·A)ᵀ: the same values,
            // laid out so that the transpose's own gradient hands W a row-major gradient
            // without a strided copy. A broadcast operand (a matrix against a batch) sums its
            // gradient over the batch axes it was repeated along.
            Ok(vec![
                grad_if(a, || match column_major(a) {
                    true => b.matmul(&g.t()?)?.t()?.sum_to_shape(a.shape()),
                    false => g.matmul(&b.t()?)?.sum_to_shape(a.shape()),
                })?,
                grad_if(b, || match column_major(b) {
                    true => g.t()?.matmul(a)?.t()?.sum_to_shape(b.shape()),
                    false => a.t()?.matmul(g)?.sum_to_shape(b.shape()),
                })?,
            ])
        }))
    }
}

impl Tensor {
    /// `self · weightᵀ + bias`, a dense layer's forward pass, as PyTorch's
    /// `torch.nn.functional.linear`: `self` is `[rows, in]`, `weight` `[out, in]` (one row per
    /// output unit), `bias` `[out]`; the result is `[rows, out]`.
    ///
    /// One op on the tape where `self.matmul(&weight.t()?)?.add(bias)` records three (a
    /// transpose, a product and a broadcast add): the same arithmetic, in the same order, with
    /// a third of the bookkeeping, which is most of the time of a layer applied to one sample.
    /// Gradients: `dx = g · W`, `dW = gᵀ · x`, `db = Σ_rows g`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (rows, inputs) = match *self.shape() {
            [r, i] => (r, i),
            ref s => return Err(Error::invalid("linear", format!("input must be [rows, in], got {s:?}"))),
        };
        let outputs = match *weight.shape() {
            [o, i] if i == inputs => o,
            [_, _] => return Err(Error::shapes("linear", self.shape(), weight.shape())),
            ref s => return Err(Error::invalid("linear", format!("weight must be [out, in], got {s:?}"))),
        };
        if let Some(b) = bias {
            if b.shape() != [outputs] {
                return Err(Error::shapes("linear bias", b.shape(), &[outputs]));
            }
        }
        let mkn = [rows, inputs, outputs];
        let wt = weight.layout().transpose(0, 1)?; // [in, out], read in place
        let y = match bias {
            Some(bt) => Tensor::with_storages([self, weight, bt], |[x, w, b]| {
                let y = x.matmul(self.layout(), w, &wt, mkn)?;
                y.binary(
                    &Layout::contiguous(&[rows, outputs]),
                    b,
                    &bt.layout().broadcast_to(&[rows, outputs])?,
                    BinaryOp::Add,
                )
            })?,
            None => Tensor::with_storages([self, weight], |[x, w]| x.matmul(self.layout(), w, &wt, mkn))?,
        };
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(Tensor::from_op(y, &[rows, outputs], "linear", &inputs, |g, x, _| {
            let (input, weight) = (&x[0], &x[1]);
            let mut grads = vec![grad_if(input, || g.matmul(weight))?, grad_if(weight, || g.t()?.matmul(input))?];
            if let Some(b) = x.get(2) {
                grads.push(grad_if(b, || g.sum_to_shape(b.shape()))?);
            }
            Ok(grads)
        }))
    }
}

/// A rank-2 tensor laid out column by column (the transpose of a row-major matrix).
fn column_major(t: &Tensor) -> bool {
    match (t.shape(), t.layout().strides()) {
        (&[rows, cols], &[1, col_stride]) => rows > 1 && cols > 1 && col_stride == rows,
        _ => false,
    }
}
