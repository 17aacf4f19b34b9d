//! The LSTM layer over a whole sequence as one op: the recurrence runs in the backend
//! ([`crate::backend`]'s `lstm_forward` and `lstm_backward`: a fused cell kernel and one
//! matrix product per step), and the output is a view of the steps' records.
//!
//! Recording each step's dozen elementwise ops costs more than their arithmetic at the sizes
//! recurrent networks use; fusing them is what cuDNN and PyTorch's CPU LSTM do too. The
//! equations are those of [`crate::nn::Recurrent`]'s table; the tests check this op against
//! the same step written in plain tensor ops (values and gradients), finite differences, and
//! PyTorch's `nn.LSTM`.
//!
//! Backward, from the gradient reaching every step's h and c: each step's cell adjoint gives
//! dL/dz (the gates' pre-activations) and dL/dc of the step before, and dL/dh of the step
//! before is dL/dz · W_hh plus what reaches it from outside. The weights' gradients are then
//! two products over all steps at once: dL/dW_ih = dZᵀ·X and dL/dW_hh = dZᵀ·H_prev, H_prev
//! read in place from the records.

use super::grad_if;
use crate::layout::Layout;
use crate::{no_grad, Error, Result, Tensor};

/// A backend kernel's result as a tensor (recorded by the caller, if at all).
fn wrap(storage: crate::backend::Storage, shape: &[usize]) -> Tensor {
    Tensor::from_storage(storage, Layout::contiguous(shape))
}

impl Tensor {
    /// An LSTM layer over the sequence `self` `[T, N, I]` (time first), as PyTorch's
    /// `nn.LSTM` computes it: weights `w_ih` `[4H, I]` and `w_hh` `[4H, H]`, biases `[4H]`
    /// (gate order i, f, g, o), initial state `h0` and `c0` `[N, H]`.
    ///
    /// Returns `[T, N, 2H]`: at each step the hidden state h (first H values) and the cell
    /// state c (last H). Gradients reach every input; run through one recorded op, it is
    /// several times faster than the same step written in elementwise ops.
    pub fn lstm(
        &self,
        w_ih: &Tensor,
        w_hh: &Tensor,
        b_ih: &Tensor,
        b_hh: &Tensor,
        h0: &Tensor,
        c0: &Tensor,
    ) -> Result<Tensor> {
        let op = "lstm";
        let &[t, n, i] = self.shape() else {
            return Err(Error::invalid(op, format!("expects input [T, N, I], got shape {:?}", self.shape())));
        };
        let h = match *w_hh.shape() {
            [rows, h] if h > 0 && rows == 4 * h => h,
            ref s => return Err(Error::invalid(op, format!("weight_hh must be [4H, H] with H > 0, got {s:?}"))),
        };
        for (what, tensor, want) in [
            ("weight_ih", w_ih, vec![4 * h, i]),
            ("weight_hh", w_hh, vec![4 * h, h]),
            ("bias_ih", b_ih, vec![4 * h]),
            ("bias_hh", b_hh, vec![4 * h]),
            ("h0", h0, vec![n, h]),
            ("c0", c0, vec![n, h]),
        ] {
            if tensor.shape() != want.as_slice() {
                return Err(Error::invalid(
                    op,
                    format!("{what} must have shape {want:?} (input {:?}), got {:?}", self.shape(), tensor.shape()),
                ));
            }
        }
        if t == 0 {
            return Tensor::zeros_on(&[0, n, 2 * h], self.device());
        }
        let bias = {
            let _guard = no_grad();
            b_ih.add(b_hh)?
        };
        // Every step's record [i f g o | h | c], in one buffer; the output is a view of it.
        let storage = Tensor::with_storages([self, w_ih, &bias, w_hh, h0, c0], |[x, wi, b, w, h_0, c_0]| {
            let (wi_l, b_l, w_l) = (w_ih.layout(), bias.layout(), w_hh.layout());
            x.lstm_forward(self.layout(), wi, wi_l, b, b_l, w, w_l, h_0, h0.layout(), c_0, c0.layout())
        })?;
        let records = wrap(storage, &[t, n, 6 * h]);
        let inputs = [self, w_ih, w_hh, b_ih, b_hh, h0, c0];
        // A view, also without gradients: copying h and c out would free the records (3x their
        // size) but raise the peak, both living during the copy (`sinapse bench lstm`'s
        // evaluation at batch 1000: 166 -> 194 MiB).
        let out = {
            let _guard = no_grad();
            records.narrow(2, 4 * h, 2 * h)?
        };
        Ok(out.recorded_as(op, &inputs, move |g, x, _| lstm_backward(g, x, &records, [t, n, i, h])))
    }
}

/// Backpropagation through time for [`Tensor::lstm`]: `g` `[T, N, 2H]` is the gradient of
/// every step's h and c; `inputs` are the op's seven inputs, `records` the forward's
/// `[T, N, 6H]`.
fn lstm_backward(
    g: &Tensor,
    inputs: &[Tensor],
    records: &Tensor,
    [t, n, i, h]: [usize; 4],
) -> Result<Vec<Option<Tensor>>> {
    let [x, w_ih, w_hh, b_ih, b_hh, h0, c0] = inputs else {
        return Err(Error::invalid("lstm backward", format!("expected 7 inputs, got {}", inputs.len())));
    };
    let (dz, dh0, dc0) = Tensor::with_storages([records, g, c0, w_hh], |[r, g_s, c, w]| {
        r.lstm_backward(records.layout(), g_s, g.layout(), c, c0.layout(), w, w_hh.layout(), h0.requires_grad())
    })?;
    // dL/dz of every step, [T·N, 4H], rows in the order of x's rows.
    let dz = wrap(dz, &[t * n, 4 * h]);
    let db = if b_ih.requires_grad() || b_hh.requires_grad() { Some(dz.sum(0, false)?) } else { None };
    let dw_hh = grad_if(w_hh, || {
        // Σ over steps of dz_sᵀ · h_{s-1}: h0 for the first step, then the records' own h,
        // read in place (rows 6H apart).
        let first = dz.narrow(0, 0, n)?.t()?.matmul(h0)?;
        if t == 1 {
            return Ok(first);
        }
        let later = dz.narrow(0, n, (t - 1) * n)?.t()?;
        let h_prev = records.layout().narrow(0, 0, t - 1)?.narrow(2, 4 * h, h)?;
        let h_prev =
            h_prev.merge_axes(0).ok_or_else(|| Error::invalid("lstm backward", "records are not contiguous"))?;
        let rest = Tensor::with_storages([&later, records], |[d, r]| {
            d.matmul(later.layout(), r, &h_prev, [4 * h, (t - 1) * n, h])
        })?;
        first.add(&wrap(rest, &[4 * h, h]))
    })?;
    Ok(vec![
        grad_if(x, || dz.matmul(w_ih)?.reshape(&[t, n, i]))?,
        grad_if(w_ih, || dz.t()?.matmul(&x.reshape(&[t * n, i])?))?,
        dw_hh,
        grad_if(b_ih, || Ok(db.clone().expect("computed when a bias needs it")))?,
        grad_if(b_hh, || Ok(db.clone().expect("computed when a bias needs it")))?,
        grad_if(h0, || {
            dh0.map(|d| wrap(d, &[n, h])).ok_or_else(|| Error::invalid("lstm backward", "dL/dh0 was not computed"))
        })?,
        grad_if(c0, || Ok(wrap(dc0, &[n, h])))?,
    ])
}
