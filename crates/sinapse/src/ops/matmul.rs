//! Matrix product, the arithmetic at the heart of every layer.
//!
//! `[.., m, k] x [.., k, n] -> [.., m, n]`; leading (batch) axes broadcast. For C = A·B the
//! chain rule gives dL/dA = dL/dC · Bᵀ and dL/dB = Aᵀ · dL/dC.

use super::grad_if;
use crate::layout::{broadcast_dims, checked_elem_count, Dims};
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
        let batch = out_shape;
        Ok(Tensor::from_op(data, &batch, "matmul", &[self, rhs], |g, x, _| {
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

/// A rank-2 tensor laid out column by column (the transpose of a row-major matrix).
fn column_major(t: &Tensor) -> bool {
    match (t.shape(), t.layout().strides()) {
        (&[rows, cols], &[1, col_stride]) => rows > 1 && cols > 1 && col_stride == rows,
        _ => false,
    }
}
