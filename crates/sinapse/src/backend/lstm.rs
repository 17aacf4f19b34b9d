//! The LSTM's recurrence over a sequence, step by step from a backend's own kernels: the cell
//! ([`BackendStorage::lstm_cell`] and its adjoint), the matrix product and copies into one
//! buffer for the whole sequence. It is the default of [`BackendStorage::lstm_forward`] and
//! [`BackendStorage::lstm_backward`], which the CUDA backend keeps (its kernels already run
//! over every row at once; one launch order also keeps a captured step replayable) and the
//! CPU backend replaces with its own blocked version (`cpu/recurrent.rs`). The CPU tests run
//! both and compare them.

use super::{BackendStorage, BinaryOp};
use crate::layout::Layout;
use crate::{Error, Result};

/// `[a, b, c]` of a rank-3 layout (`op` names the caller in the error).
pub(super) fn dims3(l: &Layout, op: &'static str) -> Result<[usize; 3]> {
    match *l.shape() {
        [a, b, c] => Ok([a, b, c]),
        ref s => Err(Error::invalid(op, format!("expected a rank-3 sequence, got shape {s:?}"))),
    }
}

/// Step `s` of a `[T, N, width]` layout, as `[N, width]`.
fn step(l: &Layout, s: usize) -> Result<Layout> {
    l.narrow(0, s, 1)?.squeeze(0)
}

/// See [`BackendStorage::lstm_forward`]; `weights` are `w_ih`, the bias, `w_hh`, `h0` and
/// `c0`, each with its layout.
pub(super) fn lstm_forward<S: BackendStorage>(x: &S, l: &Layout, weights: [(&S, &Layout); 5]) -> Result<S> {
    let [(w_ih, w_ih_l), (bias, bias_l), (w_hh, w_hh_l), (h0, h0_l), (c0, c0_l)] = weights;
    let [t, n, i] = dims3(l, "lstm")?;
    let h = w_hh_l.shape()[1];
    // The input's part of every step's gates at once, x·W_ihᵀ + the biases, [T, N, 4H].
    let copy;
    let (x, rows_l) = match l.is_contiguous() {
        true => (x, l.reshape_contiguous(&[t * n, i])),
        false => {
            copy = x.copy_strided(l)?;
            (&copy, Layout::contiguous(&[t * n, i]))
        }
    };
    let xw = x.matmul(&rows_l, w_ih, &w_ih_l.transpose(0, 1)?, [t * n, i, 4 * h])?;
    let z_l = Layout::contiguous(&[t, n, 4 * h]);
    let z = xw.binary(&z_l, bias, &bias_l.broadcast_to(&[t, n, 4 * h])?, BinaryOp::Add)?;
    let rec_l = Layout::contiguous(&[t, n, 6 * h]);
    let mut records = z.zeros(t * n * 6 * h)?;
    let w_t = w_hh_l.transpose(0, 1)?;
    for s in 0..t {
        let record = {
            // The step's h and c: h0 and c0, or the previous step's record.
            let (hp, hp_l, cp, cp_l) = match s {
                0 => (h0, h0_l.clone(), c0, c0_l.clone()),
                _ => {
                    let prev = step(&rec_l, s - 1)?;
                    (&records, prev.narrow(1, 4 * h, h)?, &records, prev.narrow(1, 5 * h, h)?)
                }
            };
            let hw = hp.matmul(&hp_l, w_hh, &w_t, [n, h, 4 * h])?;
            z.lstm_cell(&step(&z_l, s)?, &hw, &Layout::contiguous(&[n, 4 * h]), cp, &cp_l)?
        };
        record.copy_into(&Layout::contiguous(&[n, 6 * h]), &mut records, &step(&rec_l, s)?)?;
    }
    Ok(records)
}

/// See [`BackendStorage::lstm_backward`].
#[allow(clippy::too_many_arguments)]
pub(super) fn lstm_backward<S: BackendStorage>(
    rec: &S,
    l: &Layout,
    g: &S,
    g_l: &Layout,
    c0: &S,
    c0_l: &Layout,
    w_hh: &S,
    w_hh_l: &Layout,
    want_dh0: bool,
) -> Result<(S, Option<S>, S)> {
    let [t, n, h6] = dims3(l, "lstm backward")?;
    let h = h6 / 6;
    let mut dz = rec.zeros(t * n * 4 * h)?;
    if t == 0 {
        let dh0 = if want_dh0 { Some(rec.zeros(n * h)?) } else { None };
        return Ok((dz, dh0, rec.zeros(n * h)?));
    }
    let dz_l = Layout::contiguous(&[t, n, 4 * h]);
    let nh = Layout::contiguous(&[n, h]);
    // The cell adjoint's result, [N, 5H]: dL/dz, then dL/dc of the step before.
    let both_l = Layout::contiguous(&[n, 5 * h]);
    let (dz_part, dc_part) = (both_l.narrow(1, 0, 4 * h)?, both_l.narrow(1, 4 * h, h)?);
    // The gradient reaching step s's h (at 0) or c (at H) from outside the recurrence.
    let outside = |s: usize, at: usize| step(g_l, s)?.narrow(1, at, h);
    let mut dh = g.copy_strided(&outside(t - 1, 0)?)?;
    let mut dc = g.copy_strided(&outside(t - 1, h)?)?;
    let mut dh0 = None;
    for s in (0..t).rev() {
        let (cp, cp_l) = match s {
            0 => (c0, c0_l.clone()),
            _ => (rec, step(l, s - 1)?.narrow(1, 5 * h, h)?),
        };
        let both = rec.lstm_cell_backward(&step(l, s)?, cp, &cp_l, &dh, &nh, &dc, &nh)?;
        both.copy_into(&dz_part, &mut dz, &step(&dz_l, s)?)?;
        if s > 0 {
            let back = both.matmul(&dz_part, w_hh, w_hh_l, [n, 4 * h, h])?;
            dh = back.binary(&nh, g, &outside(s - 1, 0)?, BinaryOp::Add)?;
            dc = both.binary(&dc_part, g, &outside(s - 1, h)?, BinaryOp::Add)?;
        } else {
            if want_dh0 {
                dh0 = Some(both.matmul(&dz_part, w_hh, w_hh_l, [n, 4 * h, h])?);
            }
            dc = both.copy_strided(&dc_part)?;
        }
    }
    Ok((dz, dh0, dc))
}
