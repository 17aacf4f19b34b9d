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
        let la = self.layout().broadcast_to(&with(m, k))?;
        let lb = rhs.layout().broadcast_to(&with(k, n))?;
        let data = Tensor::with_storages([self, rhs], |[a, b]| a.matmul(&la, b, &lb, [m, k, n]))?;
        Ok(Tensor::from_op(data, &out_shape, "matmul", &[self, rhs], |g, x, _| {
            let need = [x[0].requires_grad(), x[1].requires_grad()];
            Ok(Vec::from(product_grads(g, &x[0], &x[1], need)?))
        }))
    }
}

/// The gradients of `C = A·B` for the operands in `need`, from `g` = dL/dC: dL/dA = G·Bᵀ and
/// dL/dB = Aᵀ·G. An operand that is a transposed matrix (`x·Wᵀ`, W row-major) gets its
/// gradient as the transpose of a row-major product, (B·Gᵀ)ᵀ or (Gᵀ·A)ᵀ: the same values,
/// laid out so that the transpose's own gradient hands W a row-major gradient without a
/// strided copy. A broadcast operand (a matrix against a batch) sums its gradient over the
/// batch axes it was repeated along.
fn product_grads(g: &Tensor, a: &Tensor, b: &Tensor, need: [bool; 2]) -> Result<[Option<Tensor>; 2]> {
    let da = match (need[0], column_major(a)) {
        (false, _) => None,
        (true, true) => Some(b.matmul(&g.t()?)?.t()?.sum_to_shape(a.shape())?),
        (true, false) => Some(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?),
    };
    let db = match (need[1], column_major(b)) {
        (false, _) => None,
        (true, true) => Some(g.t()?.matmul(a)?.t()?.sum_to_shape(b.shape())?),
        (true, false) => Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?),
    };
    Ok([da, db])
}

impl Tensor {
    /// `self · weightᵀ + bias`, a dense layer's forward pass, as PyTorch's
    /// `torch.nn.functional.linear`: `self` is `[rows, in]`, `weight` `[out, in]` (one row per
    /// output unit), `bias` `[out]`; the result is `[rows, out]`.
    ///
    /// One op on the tape where `self.matmul(&weight.t()?)?.add(bias)` records three (a
    /// transpose, a product and a broadcast add): the same arithmetic, in the same order, with
    /// a third of the bookkeeping, which is most of the time of a layer applied to one sample.
    /// Gradients: `dx = g · W`, `dW = gᵀ · x`, `db = Σ_rows g`, by the same kernel calls as
    /// those three ops' gradients.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_with(weight, bias, false)
    }

    /// `relu(self · weightᵀ + bias)`: [`Tensor::linear`] and [`Tensor::relu`] as one op, the
    /// same values and gradients as the two (the gradient reaching the layer is first masked
    /// where the output is not positive, by the ReLU's own kernel; on a GPU, when the bias
    /// needs its gradient, one kernel masks it and sums its columns, the bias's gradient,
    /// together). The CPU adds the bias and applies the ReLU in one pass over the output,
    /// without the ReLU's buffer; a [`Sequential`](crate::nn::Sequential) runs a `Linear`
    /// followed by a `ReLU` this way.
    pub fn linear_relu(&self, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        self.linear_with(weight, Some(bias), true)
    }

    /// [`Tensor::linear`], with the ReLU fused when `relu` (which [`Tensor::linear_relu`] asks
    /// for only with a bias).
    fn linear_with(&self, weight: &Tensor, bias: Option<&Tensor>, relu: bool) -> Result<Tensor> {
        debug_assert!(bias.is_some() || !relu, "linear_relu always has a bias");
        let mkn = match *weight.shape() {
            [o, i] => self.linear_dims(&[i, o], bias)?,
            // Refused by `linear_dims`, after the input's own check.
            ref s => self.linear_dims(&s.iter().rev().copied().collect::<Vec<_>>(), bias)?,
        };
        let [rows, _, outputs] = mkn;
        let wt = weight.layout().transpose(0, 1)?; // [in, out], read in place
        let y = match bias {
            Some(bt) => Tensor::with_storages([self, weight, bt], |[x, w, b]| {
                x.matmul_bias(self.layout(), w, &wt, b, bt.layout(), mkn, relu)
            })?,
            None => Tensor::with_storages([self, weight], |[x, w]| x.matmul(self.layout(), w, &wt, mkn))?,
        };
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let op = if relu { "linear_relu" } else { "linear" };
        Ok(Tensor::from_op(y, &[rows, outputs], op, &inputs, move |g, x, y| {
            let (input, weight) = (&x[0], &x[1]);
            // Through the ReLU first, as its own op's gradient: g where the output is positive.
            // Where the device has one kernel for that and the bias's gradient (a GPU), it
            // makes both.
            let mut bias_grad = None;
            let masked;
            let g = if relu {
                let wanted = x.get(2).is_some_and(Tensor::requires_grad);
                let fused = if wanted {
                    Tensor::with_storages([g, y], |[gs, ys]| gs.relu_grad_sums(g.layout(), ys, y.layout()))?
                } else {
                    None
                };
                masked = match fused {
                    Some((m, sums)) => {
                        bias_grad = Some(Tensor::from_storage(sums, crate::layout::Layout::contiguous(&[outputs])));
                        Tensor::from_storage(m, crate::layout::Layout::contiguous(&[rows, outputs]))
                    }
                    None => super::binary_kernel(g, y, crate::backend::BinaryOp::ReluGrad)?,
                };
                &masked
            } else {
                g
            };
            // The product's own rule with Wᵀ as its right operand, and the transpose's rule
            // after it: exactly the kernel calls of `x.matmul(&w.t()?)?.add(b)`'s gradients,
            // for every layout and size (a one-column W, a transposed x or W included).
            let need = [input.requires_grad(), weight.requires_grad()];
            let [dx, dwt] = product_grads(g, input, &weight.t()?, need)?;
            let mut grads = vec![dx, dwt.map(|d| d.t()).transpose()?];
            if let Some(b) = x.get(2) {
                grads.push(match bias_grad {
                    Some(sums) => Some(sums),
                    None => grad_if(b, || g.sum_to_shape(b.shape()))?,
                });
            }
            Ok(grads)
        }))
    }
}

impl Tensor {
    /// [`Tensor::linear`] (or [`Tensor::linear_relu`] when `relu`) for inference, with the
    /// weight given as `wt`, laid out `[in, out]`: the CPU sums only the rows of `wt` that the
    /// nonzero entries of `self` pick (`backend/cpu/sparse.rs`), which is the whole product
    /// when `self` is mostly zeros. `None` while gradients are recorded (nothing here records
    /// them) or off the CPU: the caller multiplies by the whole weight instead.
    ///
    /// For a finite `wt` only: the zero entries' terms are skipped, and `0 · inf` is NaN.
    pub(crate) fn linear_skipping_zeros(
        &self,
        wt: &Tensor,
        bias: Option<&Tensor>,
        relu: bool,
    ) -> Result<Option<Tensor>> {
        if crate::is_grad_enabled() {
            return Ok(None);
        }
        let mkn = self.linear_dims(wt.shape(), bias)?;
        let out = self
            .with_filters(wt, bias, |x, w, b| x.linear_skipping_zeros(self.layout(), w, wt.layout(), b, mkn, relu))?;
        Ok(out.map(|s| Tensor::from_storage(s, crate::layout::Layout::contiguous(&[mkn[0], mkn[2]]))))
    }

    /// `[rows, in, out]` of a dense layer on `self` (`[rows, in]`) with its weight's
    /// transpose of shape `wt` (`[in, out]`) and `bias` (`[out]`), or the error that names
    /// the shape that does not fit.
    fn linear_dims(&self, wt: &[usize], bias: Option<&Tensor>) -> Result<[usize; 3]> {
        let (rows, inputs) = match *self.shape() {
            [r, i] => (r, i),
            ref s => return Err(Error::invalid("linear", format!("input must be [rows, in], got {s:?}"))),
        };
        let outputs = match *wt {
            [i, o] if i == inputs => o,
            [i, o] => return Err(Error::shapes("linear", self.shape(), &[o, i])),
            ref s => {
                let s: Vec<usize> = s.iter().rev().copied().collect();
                return Err(Error::invalid("linear", format!("weight must be [out, in], got {s:?}")));
            }
        };
        if let Some(b) = bias {
            if b.shape() != [outputs] {
                return Err(Error::shapes("linear bias", b.shape(), &[outputs]));
            }
        }
        Ok([rows, inputs, outputs])
    }
}

/// A rank-2 tensor laid out column by column (the transpose of a row-major matrix).
fn column_major(t: &Tensor) -> bool {
    match (t.shape(), t.layout().strides()) {
        (&[rows, cols], &[1, col_stride]) => rows > 1 && cols > 1 && col_stride == rows,
        _ => false,
    }
}
