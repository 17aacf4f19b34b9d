//! The LSTM on the CPU: the fused cell, forward and backward (one pass over a step's gates
//! instead of a dozen elementwise ops), and the whole recurrence over a sequence.
//!
//! The recurrence splits the batch's rows into one block per thread; each block runs every
//! step on its own thread, without waiting for the others, and writes its rows of every step
//! straight into the sequence's one buffer of records (and, backward, of dL/dz): no per-step
//! buffers to gather afterwards. Each step's pre-activations are one product,
//! `[x_s | h_prev] · [W_ih | W_hh]ᵀ`, added in place onto the biases already in the record.
//!
//! Forward, per row, from the pre-activations z = x·W_ihᵀ + b_ih + b_hh + h·W_hhᵀ (PyTorch's
//! gate order i, f, g, o; [`lstm_cell`] gets them as the two addends `xw` and `hw`):
//! i, f, o = σ(z_i, z_f, z_o); g = tanh(z_g); c' = f·c + i·g; h' = o·tanh(c').
//! The step's record is `[i f g o | h' | c']`, `6H` values per row: what the next step reads
//! (h', c') and what the backward pass needs.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

use super::fastmath::{dispatch, sigmoid, tanh};
use super::matmul::{gemm_on_thread, transposed};
use crate::layout::Layout;

/// A new `[n, width]` buffer, row `r` filled by `row(r, out_row)`: rows split over threads
/// (about 16k values of work per task).
fn rows_of(n: usize, width: usize, h: usize, row: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0.0f32; n * width];
    let per_task = (16_384 / (6 * h).max(1)).max(1);
    if n > per_task {
        out.par_chunks_mut(width).enumerate().with_min_len(per_task).for_each(|(r, o)| row(r, o));
    } else {
        out.chunks_mut(width).enumerate().for_each(|(r, o)| row(r, o));
    }
    out
}

dispatch! {
    /// One row of the forward cell: `out` (6H) holds the pre-activations z in its first 4H
    /// values on entry; it leaves with the record `[i f g o | h' | c']`. `c` is the previous
    /// cell state (H).
    fn forward_row(c: &[f32], out: &mut [f32]) {
        let h = c.len();
        // Every slice cut to its exact length up front: the loops' bounds checks then fold
        // away and the whole loop is vectorised (with `out` of unknown length, the cell
        // update's loop ran element by element in part).
        let out = &mut out[..6 * h];
        let (gates, state) = out.split_at_mut(4 * h);
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
    /// One row of the backward cell: `dz` (4H) and `dc_prev` (H) from the step's record `s`
    /// (6H), the previous cell state and the gradients reaching h' and c'.
    fn backward_row(s: &[f32], c_prev: &[f32], dh: &[f32], dc: &[f32], dz: &mut [f32], dc_prev: &mut [f32]) {
        let h = c_prev.len();
        // Exact lengths, as in `forward_row`: without them this row took twice as long.
        let (s, dh, dc, dz, dc_prev) = (&s[..6 * h], &dh[..h], &dc[..h], &mut dz[..4 * h], &mut dc_prev[..h]);
        let (i, rest) = s.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (g, rest) = rest.split_at(h);
        let (o, rest) = rest.split_at(h);
        let c = &rest[h..2 * h];
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
        for ((o, &a), &b) in out[..4 * h].iter_mut().zip(&xw[z.clone()]).zip(&hw[z]) {
            *o = a + b;
        }
        forward_row(&c[r * h..(r + 1) * h], out);
    })
}

/// The backward cell over `n` rows: records `s` `[n, 6h]`, `c_prev`, `dh`, `dc` `[n, h]`, all
/// row-major; returns `[n, 5h]`: the pre-activations' gradient and the previous cell's.
pub(super) fn lstm_cell_backward(s: &[f32], c_prev: &[f32], dh: &[f32], dc: &[f32], n: usize, h: usize) -> Vec<f32> {
    rows_of(n, 5 * h, h, |r, out| {
        let hs = r * h..(r + 1) * h;
        let (dz, dc_prev) = out.split_at_mut(4 * h);
        backward_row(&s[r * 6 * h..(r + 1) * 6 * h], &c_prev[hs.clone()], &dh[hs.clone()], &dc[hs], dz, dc_prev);
    })
}

/// The batch's `n` rows split into one block per thread (at least 8 rows each), so that each
/// block's recurrence runs on one thread without waiting for the others at every step.
fn row_blocks(n: usize, threads: usize) -> Vec<Range<usize>> {
    let blocks = threads.min(n / 8).max(1);
    (0..blocks).map(|b| b * n / blocks..(b + 1) * n / blocks).collect()
}

/// `out`, `[T, n, width]` row-major, cut into each block's rows of each step: entry `b` holds
/// block `b`'s `T` pieces, in step order.
fn block_steps<'a, T>(out: &'a mut [T], n: usize, width: usize, blocks: &[Range<usize>]) -> Vec<Vec<&'a mut [T]>> {
    let mut per_block: Vec<Vec<&mut [T]>> = blocks.iter().map(|_| Vec::new()).collect();
    for step in out.chunks_mut(n * width) {
        let mut rest = step;
        for (b, rows) in blocks.iter().enumerate() {
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * width);
            per_block[b].push(mine);
            rest = tail;
        }
    }
    per_block
}

/// `v`, `[n, width]` row-major (or empty), cut into each block's rows (empty pieces when `v`
/// is).
fn block_rows<'a>(v: &'a mut [f32], n: usize, width: usize, blocks: &[Range<usize>]) -> Vec<&'a mut [f32]> {
    block_steps(v, n, width, blocks).into_iter().map(|mut piece| piece.pop().unwrap_or_default()).collect()
}

/// Runs `work` for every block, one thread each, and adds up what they return.
fn for_blocks<T: Send>(items: Vec<T>, work: impl Fn(T) -> usize + Sync + Send) -> usize {
    if items.len() > 1 {
        items.into_par_iter().map(work).sum()
    } else {
        items.into_iter().map(work).sum()
    }
}

/// `piece` filled with `row` over and over, as initialised values. The sequence's buffers
/// are filled piece by piece just before a step writes them, while they are in cache:
/// zeroing them whole when allocated cost a pass over cold memory (`memset`, 3.6% of the
/// `lstm` benchmark's training).
///
/// # Panics
/// When `piece`'s length is not a multiple of `row`'s.
fn filled<'a>(piece: &'a mut [MaybeUninit<f32>], row: &[f32]) -> &'a mut [f32] {
    assert!(
        !row.is_empty() && piece.len().is_multiple_of(row.len()),
        "lstm: {} values in rows of {}",
        piece.len(),
        row.len()
    );
    for line in piece.chunks_mut(row.len()) {
        for (v, &x) in line.iter_mut().zip(row) {
            v.write(x);
        }
    }
    // SAFETY: every value of `piece` was just written (its lines are whole rows, asserted
    // above), and `MaybeUninit<f32>` has the size, alignment and (once written) the values of
    // `f32`.
    unsafe { &mut *(piece as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A buffer of `len` values, cut as [`block_steps`] does, that `run` fills: `run` returns how
/// many values its blocks filled ([`filled`]), which must be all of them.
///
/// # Safety
/// The count `run` returns must be the number of values it passed through [`filled`], each
/// piece at most once: the count is checked against `len`, but it cannot be checked that the
/// values were written.
unsafe fn filled_by_blocks(
    len: usize,
    n: usize,
    width: usize,
    blocks: &[Range<usize>],
    run: impl FnOnce(Vec<Vec<&mut [MaybeUninit<f32>]>>) -> usize,
) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let filled = run(block_steps(&mut out.spare_capacity_mut()[..len], n, width, blocks));
    assert_eq!(filled, len, "lstm: the blocks left part of a buffer unwritten");
    // SAFETY: the capacity is at least `len`, and the blocks filled (then overwrote) all
    // `len` values: the pieces partition the first `len`, and their counts add up to `len`.
    unsafe { out.set_len(len) };
    out
}

/// An LSTM layer's weights and initial state, all row-major: `w_ih` `[4h, i]`, `bias` `[4h]`
/// (the two biases' sum), `w_hh` `[4h, h]`, `h0` and `c0` `[n, h]`.
pub(super) struct LstmWeights<'a> {
    pub(super) w_ih: &'a [f32],
    pub(super) bias: &'a [f32],
    pub(super) w_hh: &'a [f32],
    pub(super) h0: &'a [f32],
    pub(super) c0: &'a [f32],
}

/// The forward recurrence over the sequence `x` `[t, n, i]` (any strides, at `x_l`). Returns
/// every step's record, `[t, n, 6h]`.
///
/// Each step's pre-activations are one product, `[x_s | h_prev] · [W_ih | W_hh]ᵀ`, added onto
/// the biases in the step's record: the input's part is not a separate product over the
/// whole sequence, written out and read back.
pub(super) fn lstm_forward(x: &[f32], x_l: &Layout, w: LstmWeights, [t, n, i, h]: [usize; 4]) -> Vec<f32> {
    let len = t * n * 6 * h;
    if len == 0 {
        return Vec::new();
    }
    let blocks = row_blocks(n, rayon::current_num_threads());
    // [W_ih | W_hh]ᵀ, row-major [i + h, 4h]: the product reads it in place. Through a
    // transposed view, gemm would copy ("pack") all of it at every step.
    let mut wt = transposed(w.w_ih, [4 * h, i]);
    wt.extend_from_slice(&transposed(w.w_hh, [4 * h, h]));
    let k = i + h;
    let (xs, x0) = (x_l.strides(), x_l.offset());
    // How each record starts: the biases as the gates' first addend, h and c still to come.
    let start: Vec<f32> = w.bias.iter().copied().chain(std::iter::repeat_n(0.0, 2 * h)).collect();
    let work = |(rows, steps): (Range<usize>, Vec<&mut [MaybeUninit<f32>]>)| {
        let r = rows.len();
        // Each row's [x_s | h_prev], the product's left operand.
        let mut u = vec![0.0f32; r * k];
        let mut done: Vec<&mut [f32]> = Vec::with_capacity(t);
        for (s, piece) in steps.into_iter().enumerate() {
            let cur = filled(piece, &start);
            // The previous step's h and c: the block's rows of h0 and c0, or of its record.
            let (h_prev, c_prev, stride) = match done.last() {
                None => (&w.h0[rows.start * h..rows.end * h], &w.c0[rows.start * h..rows.end * h], h),
                Some(prev) => (&prev[4 * h..], &prev[5 * h..], 6 * h),
            };
            for (row, u) in u.chunks_mut(k).enumerate() {
                let at = x0 + s * xs[0] + (rows.start + row) * xs[1];
                for (j, v) in u[..i].iter_mut().enumerate() {
                    *v = x[at + j * xs[2]];
                }
                u[i..].copy_from_slice(&h_prev[row * stride..row * stride + h]);
            }
            gemm_on_thread(cur, 6 * h, &u, [k, 1], &wt, [4 * h, 1], [r, k, 4 * h], true);
            for (row, rec) in cur.chunks_mut(6 * h).enumerate() {
                forward_row(&c_prev[row * stride..row * stride + h], rec);
            }
            done.push(cur);
        }
        done.iter().map(|piece| piece.len()).sum()
    };
    // SAFETY: `work` fills each piece it is given once, and returns the number of values of
    // the pieces it filled.
    unsafe {
        filled_by_blocks(len, n, 6 * h, &blocks, |steps| for_blocks(blocks.iter().cloned().zip(steps).collect(), work))
    }
}

/// What [`lstm_backward`] returns: dL/dz `[t, n, 4h]`, dL/dh0 (when asked for) and dL/dc0
/// (`[n, h]`).
pub(super) type LstmGrads = (Vec<f32>, Option<Vec<f32>>, Vec<f32>);

/// Backpropagation through time over a sequence: from the records `[t, n, 6h]`, the gradient
/// `g` `[t, n, 2h]` reaching every step's h and c from outside the recurrence, `c0` `[n, h]`
/// and `w_hh` `[4h, h]`, all row-major. dL/dh0 costs one more product, made only when
/// `want_dh0`.
pub(super) fn lstm_backward(
    rec: &[f32],
    g: &[f32],
    c0: &[f32],
    w_hh: &[f32],
    [t, n, h]: [usize; 3],
    want_dh0: bool,
) -> LstmGrads {
    let mut dc0 = vec![0.0f32; n * h];
    let mut dh0 = if want_dh0 { vec![0.0f32; n * h] } else { Vec::new() };
    if n * h == 0 {
        return (Vec::new(), want_dh0.then_some(dh0), dc0);
    }
    let blocks = row_blocks(n, rayon::current_num_threads());
    type Block<'a> = (Range<usize>, Vec<&'a mut [MaybeUninit<f32>]>, &'a mut [f32], &'a mut [f32]);
    let work = |(rows, steps, dc0, dh0): Block| {
        let r = rows.len();
        let (mut dh, mut dc) = (vec![0.0f32; r * h], vec![0.0f32; r * h]);
        let mut dc_prev = vec![0.0f32; r * h];
        // dL/dz of the step after this one (none for the last step).
        let mut later: Option<&mut [f32]> = None;
        let mut written = 0;
        for (s, piece) in steps.into_iter().enumerate().rev() {
            let now = filled(piece, &[0.0]);
            written += now.len();
            // The gradients reaching this step's h and c: from outside, and from step s + 1.
            let gs = &g[(s * n + rows.start) * 2 * h..(s * n + rows.end) * 2 * h];
            for ((dh, dc), g) in dh.chunks_mut(h).zip(dc.chunks_mut(h)).zip(gs.chunks(2 * h)) {
                dh.copy_from_slice(&g[..h]);
                dc.copy_from_slice(&g[h..]);
            }
            if let Some(next) = &later {
                gemm_on_thread(&mut dh, h, next, [4 * h, 1], w_hh, [h, 1], [r, 4 * h, h], true);
                dc.iter_mut().zip(&dc_prev).for_each(|(d, &p)| *d += p);
            }
            let (c_prev, stride) = match s {
                0 => (&c0[rows.start * h..rows.end * h], h),
                _ => (&rec[((s - 1) * n + rows.start) * 6 * h + 5 * h..], 6 * h),
            };
            let recs = &rec[(s * n + rows.start) * 6 * h..(s * n + rows.end) * 6 * h];
            for (row, (dz, dcp)) in now.chunks_mut(4 * h).zip(dc_prev.chunks_mut(h)).enumerate() {
                let hs = row * h..(row + 1) * h;
                let c = &c_prev[row * stride..row * stride + h];
                backward_row(&recs[row * 6 * h..(row + 1) * 6 * h], c, &dh[hs.clone()], &dc[hs], dz, dcp);
            }
            later = Some(now);
        }
        dc0.copy_from_slice(&dc_prev);
        if let (false, Some(first)) = (dh0.is_empty(), &later) {
            gemm_on_thread(dh0, h, first, [4 * h, 1], w_hh, [h, 1], [r, 4 * h, h], false);
        }
        written
    };
    // SAFETY: `work` fills each piece it is given once, and returns the number of values of
    // the pieces it filled.
    let dz = unsafe {
        filled_by_blocks(t * n * 4 * h, n, 4 * h, &blocks, |steps| {
            let states = block_rows(&mut dc0, n, h, &blocks).into_iter().zip(block_rows(&mut dh0, n, h, &blocks));
            let items = blocks
                .iter()
                .cloned()
                .zip(steps)
                .zip(states)
                .map(|((rows, steps), (dc0, dh0))| (rows, steps, dc0, dh0));
            for_blocks(items.collect(), work)
        })
    };
    (dz, want_dh0.then_some(dh0), dc0)
}

#[cfg(test)]
mod tests {
    use super::row_blocks;
    use crate::backend::cpu::CpuStorage;
    use crate::backend::{lstm, BackendStorage};
    use crate::layout::Layout;

    /// `n` values drawn from a normal distribution (seeded).
    fn values(n: usize, seed: u64) -> CpuStorage {
        let mut rng = crate::Rng::seed(seed);
        CpuStorage::F32((0..n).map(|_| rng.standard_normal()).collect())
    }

    fn assert_close(what: &str, a: &CpuStorage, b: &CpuStorage) {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b);
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{what}[{k}]: blocked {x}, step by step {y}");
        }
    }

    /// The CPU's blocked recurrence against the step-by-step default (what the GPU runs),
    /// forward and backward, on a pool of `threads`. With `strided`, the input is read
    /// through a batch-first view and W_hh through a transposed one.
    fn blocked_matches_steps([t, n, i, h]: [usize; 4], threads: usize, strided: bool) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
        pool.install(|| {
            let (x_l, w_l) = match strided {
                true => (
                    Layout::contiguous(&[n, t, i]).transpose(0, 1).expect("3-d"),
                    Layout::contiguous(&[h, 4 * h]).transpose(0, 1).expect("2-d"),
                ),
                false => (Layout::contiguous(&[t, n, i]), Layout::contiguous(&[4 * h, h])),
            };
            let (wi_l, bias_l) = (Layout::contiguous(&[4 * h, i]), Layout::contiguous(&[4 * h]));
            let nh = Layout::contiguous(&[n, h]);
            let (x, w_ih, bias) = (values(t * n * i, 1), values(4 * h * i, 2), values(4 * h, 3));
            let (w, h0, c0) = (values(4 * h * h, 4), values(n * h, 5), values(n * h, 6));
            let fused = x.lstm_forward(&x_l, &w_ih, &wi_l, &bias, &bias_l, &w, &w_l, &h0, &nh, &c0, &nh);
            let weights = [(&w_ih, &wi_l), (&bias, &bias_l), (&w, &w_l), (&h0, &nh), (&c0, &nh)];
            let steps = lstm::lstm_forward(&x, &x_l, weights).expect("steps");
            assert_close("records", &fused.expect("blocked"), &steps);
            let rec_l = Layout::contiguous(&[t, n, 6 * h]);
            let (g, g_l) = (values(t * n * 2 * h, 7), Layout::contiguous(&[t, n, 2 * h]));
            for want_dh0 in [true, false] {
                let (dz, dh0, dc0) =
                    steps.lstm_backward(&rec_l, &g, &g_l, &c0, &nh, &w, &w_l, want_dh0).expect("blocked backward");
                let (dz_s, dh0_s, dc0_s) = lstm::lstm_backward(&steps, &rec_l, &g, &g_l, &c0, &nh, &w, &w_l, want_dh0)
                    .expect("steps backward");
                assert_close("dz", &dz, &dz_s);
                assert_close("dc0", &dc0, &dc0_s);
                assert_eq!(dh0.is_some(), want_dh0);
                assert_eq!(dh0_s.is_some(), want_dh0);
                if let (Some(a), Some(b)) = (dh0, dh0_s) {
                    assert_close("dh0", &a, &b);
                }
            }
        });
    }

    #[test]
    fn blocked_recurrence_matches_the_step_by_step_one() {
        // One block, two and three (uneven) blocks; strided operands; one step; no steps.
        blocked_matches_steps([5, 7, 2, 3], 2, false);
        blocked_matches_steps([6, 32, 5, 8], 2, false);
        blocked_matches_steps([4, 29, 3, 5], 3, true);
        blocked_matches_steps([1, 16, 4, 4], 2, true);
        blocked_matches_steps([0, 16, 2, 4], 2, false);
    }

    #[test]
    fn rows_split_into_blocks_of_at_least_eight() {
        assert_eq!(row_blocks(64, 2), vec![0..32, 32..64]);
        assert_eq!(row_blocks(29, 3), vec![0..9, 9..19, 19..29]);
        assert_eq!(row_blocks(20, 4), vec![0..10, 10..20]);
        assert_eq!(row_blocks(7, 8), vec![0..7]);
        assert_eq!(row_blocks(0, 2), vec![0..0]);
    }
}
