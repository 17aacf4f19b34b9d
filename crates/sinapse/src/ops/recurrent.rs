//! The LSTM layer over a whole sequence as one op: two fused cell kernels, one matrix product
//! per step, and a backward pass (backpropagation through time) written the same way.
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
//! two products over all steps at once: dL/dW_ih = dZᵀ·X and dL/dW_hh = dZᵀ·H_prev.

use std::ops::Range;

use rayon::prelude::*;

use super::grad_if;
use crate::backend::on_one_thread;
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
        let xw = {
            let _guard = no_grad();
            self.reshape(&[t * n, i])?.matmul(&w_ih.t()?)?.add(&b_ih.add(b_hh)?)?.reshape(&[t, n, 4 * h])?
        };
        // The recurrence of each block of rows runs on its own thread, start to end.
        let blocks = row_blocks(n, self.device());
        let records: Vec<Vec<Tensor>> = blocks
            .par_iter()
            .map(|rows| {
                let _guard = no_grad();
                let rows_of = |x: &Tensor, axis: usize| x.narrow(axis, rows.start, rows.len());
                on_one_thread(|| forward_rows(&rows_of(&xw, 1)?, w_hh, &rows_of(h0, 0)?, &rows_of(c0, 0)?, h))
            })
            .collect::<Result<_>>()?;
        let out = {
            let _guard = no_grad();
            let states = by_step(t, |s, b| records[b][s].narrow(1, 4 * h, 2 * h), blocks.len())?;
            states.reshape(&[t, n, 2 * h])?
        };
        let inputs = [self, w_ih, w_hh, b_ih, b_hh, h0, c0];
        Ok(out.recorded_as(op, &inputs, move |g, x, _| lstm_backward(g, x, &blocks, &records, [t, n, i, h])))
    }
}

/// The batch's rows split into one block per thread (at least 8 rows each), so that each
/// block's recurrence runs on one thread without waiting for the others at every step. On a
/// GPU, one block: its kernels already run over every row at once, and more blocks would only
/// multiply the launches (and put the launches of a captured step in no fixed order).
fn row_blocks(n: usize, device: crate::Device) -> Vec<Range<usize>> {
    let threads = if device == crate::Device::Cpu { rayon::current_num_threads() } else { 1 };
    let blocks = threads.min(n / 8).max(1);
    (0..blocks).map(|b| b * n / blocks..(b + 1) * n / blocks).collect()
}

/// The pieces `piece(step, block)` of every step and block of rows, in the order of the rows
/// of a `[T·N, ..]` matrix (step by step, each step's blocks in order): one copy.
fn by_step(t: usize, piece: impl Fn(usize, usize) -> Result<Tensor>, blocks: usize) -> Result<Tensor> {
    let pieces = (0..t).flat_map(|s| (0..blocks).map(move |b| (s, b))).map(|(s, b)| piece(s, b));
    let pieces = pieces.collect::<Result<Vec<_>>>()?;
    Tensor::cat(&pieces.iter().collect::<Vec<_>>(), 0)
}

/// The forward recurrence of one block of rows: `xw` `[T, rows, 4H]` (the input's part of the
/// pre-activations), `h0`, `c0` `[rows, H]`. Returns each step's record `[rows, 6H]`
/// (`[i f g o | h | c]`).
fn forward_rows(xw: &Tensor, w_hh: &Tensor, h0: &Tensor, c0: &Tensor, h: usize) -> Result<Vec<Tensor>> {
    let (t, rows) = (xw.shape()[0], xw.shape()[1]);
    let w_hh_t = w_hh.t()?;
    let mut records: Vec<Tensor> = Vec::with_capacity(t);
    let (mut h_prev, mut c_prev) = (h0.clone(), c0.clone());
    for s in 0..t {
        let hw = h_prev.matmul(&w_hh_t)?;
        let xw_s = xw.narrow(0, s, 1)?.squeeze(0)?;
        let storage = Tensor::with_storages([&xw_s, &hw, &c_prev], |[x, hw_s, c]| {
            x.lstm_cell(xw_s.layout(), hw_s, hw.layout(), c, c_prev.layout())
        })?;
        let record = wrap(storage, &[rows, 6 * h]);
        h_prev = record.narrow(1, 4 * h, h)?;
        c_prev = record.narrow(1, 5 * h, h)?;
        records.push(record);
    }
    Ok(records)
}

/// Backpropagation through time for [`Tensor::lstm`]: `g` `[T, N, 2H]` is the gradient of
/// every step's h and c; `inputs` are the op's seven inputs, `records` the forward's steps of
/// each block of rows.
fn lstm_backward(
    g: &Tensor,
    inputs: &[Tensor],
    blocks: &[Range<usize>],
    records: &[Vec<Tensor>],
    [t, n, i, h]: [usize; 4],
) -> Result<Vec<Option<Tensor>>> {
    let [x, w_ih, w_hh, b_ih, b_hh, h0, c0] = inputs else {
        return Err(Error::invalid("lstm backward", format!("expected 7 inputs, got {}", inputs.len())));
    };
    // Each block's recurrence backwards on its own thread (backward runs without recording).
    let per_block: Vec<(Vec<Tensor>, Option<Tensor>, Tensor)> = blocks
        .par_iter()
        .zip(records)
        .map(|(rows, records)| {
            let _guard = no_grad();
            let rows_of = |x: &Tensor, axis: usize| x.narrow(axis, rows.start, rows.len());
            on_one_thread(|| backward_rows(&rows_of(g, 1)?, records, &rows_of(c0, 0)?, w_hh, h0.requires_grad()))
        })
        .collect::<Result<_>>()?;
    // dL/dz of every step, [T·N, 4H], rows in the order of x's rows.
    let dz = by_step(t, |s, b| Ok(per_block[b].0[s].clone()), blocks.len())?;
    let db = if b_ih.requires_grad() || b_hh.requires_grad() { Some(dz.sum(0, false)?) } else { None };
    let dw_hh = grad_if(w_hh, || {
        // The hidden state each step started from: h0, then the steps' own.
        let h_prev = |s: usize, b: usize| match s {
            0 => h0.narrow(0, blocks[b].start, blocks[b].len()),
            _ => records[b][s - 1].narrow(1, 4 * h, h),
        };
        dz.t()?.matmul(&by_step(t, h_prev, blocks.len())?)
    })?;
    Ok(vec![
        grad_if(x, || dz.matmul(w_ih)?.reshape(&[t, n, i]))?,
        grad_if(w_ih, || dz.t()?.matmul(&x.reshape(&[t * n, i])?))?,
        dw_hh,
        grad_if(b_ih, || Ok(db.clone().expect("computed when a bias needs it")))?,
        grad_if(b_hh, || Ok(db.clone().expect("computed when a bias needs it")))?,
        grad_if(h0, || {
            let parts = per_block.iter().map(|p| p.1.as_ref()).collect::<Option<Vec<_>>>();
            Tensor::cat(&parts.ok_or_else(|| Error::invalid("lstm backward", "dL/dh0 was not computed"))?, 0)
        })?,
        grad_if(c0, || Tensor::cat(&per_block.iter().map(|p| &p.2).collect::<Vec<_>>(), 0))?,
    ])
}

/// The backward recurrence of one block of rows: `g` `[T, rows, 2H]` (the gradient of every
/// step's h and c), the block's records and initial cell state. Returns dL/dz of each step
/// (`[rows, 4H]`), dL/dh0 (when `want_dh0`: it costs one more product) and dL/dc0.
fn backward_rows(
    g: &Tensor,
    records: &[Tensor],
    c0: &Tensor,
    w_hh: &Tensor,
    want_dh0: bool,
) -> Result<(Vec<Tensor>, Option<Tensor>, Tensor)> {
    let (t, rows, h) = (g.shape()[0], g.shape()[1], c0.shape()[1]);
    // The gradient reaching step s's h (at 0) or c (at H) from outside the recurrence.
    let outside = |s: usize, at: usize| g.narrow(0, s, 1)?.squeeze(0)?.narrow(1, at, h);
    let (mut dh, mut dc) = (outside(t - 1, 0)?, outside(t - 1, h)?);
    let mut dz_steps: Vec<Tensor> = Vec::with_capacity(t);
    let mut dh0 = None;
    for s in (0..t).rev() {
        let c_prev = if s > 0 { records[s - 1].narrow(1, 5 * h, h)? } else { c0.clone() };
        let record = &records[s];
        let storage = Tensor::with_storages([record, &c_prev, &dh, &dc], |[r, c, dh_s, dc_s]| {
            r.lstm_cell_backward(record.layout(), c, c_prev.layout(), dh_s, dh.layout(), dc_s, dc.layout())
        })?;
        let both = wrap(storage, &[rows, 5 * h]);
        let dz = both.narrow(1, 0, 4 * h)?;
        dc = both.narrow(1, 4 * h, h)?;
        if s > 0 {
            dh = dz.matmul(w_hh)?.add(&outside(s - 1, 0)?)?;
            dc = dc.add(&outside(s - 1, h)?)?;
        } else if want_dh0 {
            dh0 = Some(dz.matmul(w_hh)?);
        }
        dz_steps.push(dz);
    }
    dz_steps.reverse();
    Ok((dz_steps, dh0, dc))
}

#[cfg(test)]
mod tests {
    use super::row_blocks;
    use crate::Device;

    #[test]
    fn rows_split_over_threads_on_the_cpu_and_not_on_a_gpu() {
        assert_eq!(row_blocks(64, Device::Cuda(0)), vec![0..64]);
        let cpu = row_blocks(64, Device::Cpu);
        assert_eq!((cpu[0].start, cpu[cpu.len() - 1].end), (0, 64));
        assert!(cpu.windows(2).all(|w| w[0].end == w[1].start), "{cpu:?}");
        assert_eq!(cpu.len(), rayon::current_num_threads().min(8), "at least 8 rows a block");
        assert_eq!(row_blocks(7, Device::Cpu), vec![0..7]);
    }
}
