//! The fused LSTM cell, forward and backward: one pass over a step's gates instead of a dozen
//! elementwise ops, each row's work split over threads when the batch is large.
//!
//! Forward, per row, from the pre-activations z = x·W_ihᵀ + b_ih + b_hh + h·W_hhᵀ (given as
//! the two addends `xw` and `hw`, PyTorch's gate order i, f, g, o):
//! i, f, o = σ(z_i, z_f, z_o); g = tanh(z_g); c' = f·c + i·g; h' = o·tanh(c').
//! The step's record is `[i f g o | h' | c']`, `6H` values per row: what the next step reads
//! (h', c') and what the backward pass needs.

use rayon::prelude::*;

use super::fastmath::{dispatch, sigmoid, tanh};

/// A new `[n, width]` buffer, row `r` filled by `row(r, out_row)`: rows split over threads
/// (about 16k values of work per task) unless the caller keeps its kernels on one thread.
fn rows_of(n: usize, width: usize, h: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; n * width];
    let per_task = (16_384 / (6 * h).max(1)).max(1);
    if n > per_task && !crate::backend::kept_on_one_thread() {
        out.par_chunks_mut(width).enumerate().with_min_len(per_task).for_each(|(r, o)| row(r, o));
    } else {
        out.chunks_mut(width).enumerate().for_each(|(r, o)| row(r, o));
    }
    out
}

dispatch! {
    /// One row of the forward cell: `out` (6H) from `xw`, `hw` (4H) and `c` (H).
    fn forward_row(xw: &[f32], hw: &[f32], c: &[f32], out: &mut [f32]) {
        let h = c.len();
        let (gates, state) = out.split_at_mut(4 * h);
        for ((z, &a), &b) in gates.iter_mut().zip(xw).zip(hw) {
            *z = a + b;
        }
        let (ifg, o) = gates.split_at_mut(3 * h);
        let (i_f, g) = ifg.split_at_mut(2 * h);
        // Two plain loops (a chained iterator would not be vectorised).
        for z in i_f.iter_mut() {
            *z = sigmoid(*z);
        }
        for z in o.iter_mut() {
            *z = sigmoid(*z);
        }
        for z in g.iter_mut() {
            *z = tanh(*z);
        }
        let (i, f) = i_f.split_at(h);
        let (h_new, c_new) = state.split_at_mut(h);
        for j in 0..h {
            let cj = f[j] * c[j] + i[j] * g[j];
            c_new[j] = cj;
            h_new[j] = o[j] * tanh(cj);
        }
    }
}

dispatch! {
    /// One row of the backward cell: `out` = `[dz (4H) | dc_prev (H)]` from the step's record
    /// `s` (6H), the previous cell state and the gradients reaching h' and c'.
    fn backward_row(s: &[f32], c_prev: &[f32], dh: &[f32], dc: &[f32], out: &mut [f32]) {
        let h = c_prev.len();
        let (i, rest) = s.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (g, rest) = rest.split_at(h);
        let (o, rest) = rest.split_at(h);
        let c = &rest[h..2 * h];
        let (dz, dc_prev) = out.split_at_mut(4 * h);
        let (dzi, rest) = dz.split_at_mut(h);
        let (dzf, rest) = rest.split_at_mut(h);
        let (dzg, dzo) = rest.split_at_mut(h);
        for j in 0..h {
            let tc = tanh(c[j]);
            let dct = dc[j] + dh[j] * o[j] * (1.0 - tc * tc);
            dzo[j] = dh[j] * tc * o[j] * (1.0 - o[j]);
            dzi[j] = dct * g[j] * i[j] * (1.0 - i[j]);
            dzg[j] = dct * i[j] * (1.0 - g[j] * g[j]);
            dzf[j] = dct * c_prev[j] * f[j] * (1.0 - f[j]);
            dc_prev[j] = dct * f[j];
        }
    }
}

/// The forward cell over `n` rows: `xw`, `hw` `[n, 4h]`, `c` `[n, h]`, all row-major;
/// returns the records `[n, 6h]`.
pub(super) fn lstm_cell(xw: &[f32], hw: &[f32], c: &[f32], n: usize, h: usize) -> Vec<f32> {
    rows_of(n, 6 * h, h, |r, out| {
        let z = r * 4 * h..(r + 1) * 4 * h;
        forward_row(&xw[z.clone()], &hw[z], &c[r * h..(r + 1) * h], out);
    })
}

/// The backward cell over `n` rows: records `s` `[n, 6h]`, `c_prev`, `dh`, `dc` `[n, h]`, all
/// row-major; returns `[n, 5h]`: the pre-activations' gradient and the previous cell's.
pub(super) fn lstm_cell_backward(s: &[f32], c_prev: &[f32], dh: &[f32], dc: &[f32], n: usize, h: usize) -> Vec<f32> {
    rows_of(n, 5 * h, h, |r, out| {
        let hs = r * h..(r + 1) * h;
        backward_row(&s[r * 6 * h..(r + 1) * 6 * h], &c_prev[hs.clone()], &dh[hs.clone()], &dc[hs], out);
    })
}
