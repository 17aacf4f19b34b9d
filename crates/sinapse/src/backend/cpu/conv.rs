//! Convolution and pooling kernels: im2col and its adjoint col2im, max pooling and its
//! adjoint. Inputs are row-major `[N, C, H, W]` batches.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::backend::{ImageDims, Window};

/// For output column `x` of a window tap at offset `tap` (= j·dilation - padding), the input
/// column it reads: `x·stride + tap`, or None in the padding.
#[inline]
fn source_column(x: usize, stride: usize, tap: isize, width: usize) -> Option<usize> {
    let ix = (x * stride) as isize + tap;
    (0..width as isize).contains(&ix).then_some(ix as usize)
}

/// The output columns `x` whose tap reads inside an input row of `width`: `lo..hi`.
fn valid_columns(out_width: usize, stride: usize, tap: isize, width: usize) -> std::ops::Range<usize> {
    let lo = (0..out_width).find(|&x| source_column(x, stride, tap, width).is_some()).unwrap_or(out_width);
    let hi = (lo..out_width).find(|&x| source_column(x, stride, tap, width).is_none()).unwrap_or(out_width);
    lo..hi
}

/// Unfolds every window of a row-major `[N, C, H, W]` batch into one matrix
/// `[C·KH·KW, N·OH·OW]`: row `(c, i, j)` holds tap `(i, j)` of channel `c`, column
/// `(n, y, x)` an output position of image `n`. Taps in the padding read `pad_value`. A
/// convolution of the whole batch is then one matrix product with the `[O, C·KH·KW]` filters.
pub(super) fn im2col(src: &[f32], dims: ImageDims, win: &Window, pad_value: f32) -> Vec<f32> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = win.kernel;
    let l = oh * ow;
    let len = c * kh * kw * n * l;
    if len == 0 {
        return Vec::new();
    }
    // Every element is written below (a tap's pixel or the padding), so the buffer is not
    // zeroed first: the columns are the largest buffer of a convolution.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let fill = |d: &mut [MaybeUninit<f32>]| d.iter_mut().for_each(|v| _ = v.write(pad_value));
    out.spare_capacity_mut()[..len].par_chunks_mut(n * l).enumerate().for_each(|(row, dst)| {
        let (ch, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
        let tap_x = (j * win.dilation[1]) as isize - win.padding[1] as isize;
        let xs = valid_columns(ow, win.stride[1], tap_x, w);
        for b in 0..n {
            let plane = &src[(b * c + ch) * h * w..][..h * w];
            for y in 0..oh {
                let d = &mut dst[(b * oh + y) * ow..][..ow];
                let iy = (y * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                if iy < 0 || iy >= h as isize || xs.is_empty() {
                    fill(d);
                    continue;
                }
                let line = &plane[iy as usize * w..][..w];
                fill(&mut d[..xs.start]);
                fill(&mut d[xs.end..]);
                let first = ((xs.start * win.stride[1]) as isize + tap_x) as usize;
                if win.stride[1] == 1 {
                    let taps = &line[first..first + xs.len()];
                    d[xs.clone()].iter_mut().zip(taps).for_each(|(v, &x)| _ = v.write(x));
                } else {
                    for (k, v) in d[xs.clone()].iter_mut().enumerate() {
                        v.write(line[first + k * win.stride[1]]);
                    }
                }
            }
        }
    });
    // SAFETY: the rows above cover all `len` elements (the chunks partition them), and every
    // element of every row was written: the padding before `xs`, the taps in it, the padding
    // after it, or the whole output row when its tap row is in the padding.
    unsafe { out.set_len(len) };
    out
}

/// The adjoint of [`im2col`]: adds every entry of the `[C·KH·KW, N·OH·OW]` matrix back onto
/// the pixel it was read from (taps in the padding are dropped). This is the gradient of
/// `im2col`.
pub(super) fn col2im(cols: &[f32], dims: ImageDims, win: &Window) -> Vec<f32> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = win.kernel;
    let l = oh * ow;
    let mut out = vec![0.0f32; n * c * h * w];
    if out.is_empty() {
        return out;
    }
    // One task per image and channel: each writes only its own plane.
    out.par_chunks_mut(h * w).enumerate().for_each(|(plane_index, plane)| {
        let (b, ch) = (plane_index / c, plane_index % c);
        for i in 0..kh {
            for j in 0..kw {
                let row = &cols[((ch * kh + i) * kw + j) * n * l..][..n * l];
                let tap_x = (j * win.dilation[1]) as isize - win.padding[1] as isize;
                let xs = valid_columns(ow, win.stride[1], tap_x, w);
                for y in 0..oh {
                    let iy = (y * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                    if iy < 0 || iy >= h as isize || xs.is_empty() {
                        continue;
                    }
                    let line = &mut plane[iy as usize * w..][..w];
                    let src = &row[(b * oh + y) * ow..][..ow];
                    let first = ((xs.start * win.stride[1]) as isize + tap_x) as usize;
                    if win.stride[1] == 1 {
                        let dst = &mut line[first..first + xs.len()];
                        dst.iter_mut().zip(&src[xs.clone()]).for_each(|(d, &v)| *d += v);
                    } else {
                        for (k, &v) in src[xs.clone()].iter().enumerate() {
                            line[first + k * win.stride[1]] += v;
                        }
                    }
                }
            }
        }
    });
    out
}

/// Max pooling of a row-major `[N, C, H, W]` batch (no dilation): the maximum of each window
/// (padding never wins; a NaN wins), `[N, C, OH, OW]`, and the tap it came from, `ky·KW + kx`
/// counted from the window's top-left corner (padding included), as a whole number.
pub(super) fn max_pool(src: &[f32], dims: ImageDims, win: &Window) -> (Vec<f32>, Vec<f32>) {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let mut values = vec![0.0f32; n * c * oh * ow];
    let mut taps = vec![0.0f32; n * c * oh * ow];
    if values.is_empty() {
        return (values, taps);
    }
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let [ph, pw] = win.padding.map(|p| p as isize);
    values.par_chunks_mut(oh * ow).zip(taps.par_chunks_mut(oh * ow)).enumerate().for_each(|(p, (vals, at))| {
        let plane = &src[p * h * w..(p + 1) * h * w];
        if win.kernel == [2, 2] && win.stride == [2, 2] && win.padding == [0, 0] {
            max_pool_2x2(plane, w, ow, vals, at);
            return;
        }
        for y in 0..oh {
            // The rows and columns of the window inside the image (padding is skipped; it is at
            // most half the kernel, so every window holds at least one pixel).
            let top = (y * sh) as isize - ph;
            let (y0, y1) = (top.max(0) as usize, ((top + kh as isize) as usize).min(h));
            for x in 0..ow {
                let left = (x * sw) as isize - pw;
                let (x0, x1) = (left.max(0) as usize, ((left + kw as isize) as usize).min(w));
                let (mut best, mut best_y, mut best_x) = (plane[y0 * w + x0], y0, x0);
                for iy in y0..y1 {
                    for ix in x0..x1 {
                        let v = plane[iy * w + ix];
                        // Bitwise `|`/`&` and selects, not branches: which tap wins is random,
                        // and mispredicted branches cost several times the comparisons.
                        let wins = (v > best) | (v.is_nan() & !best.is_nan());
                        best = if wins { v } else { best };
                        best_y = if wins { iy } else { best_y };
                        best_x = if wins { ix } else { best_x };
                    }
                }
                vals[y * ow + x] = best;
                let tap = (best_y as isize - top) as usize * kw + (best_x as isize - left) as usize;
                at[y * ow + x] = tap as f32;
            }
        }
    });
    (values, taps)
}

/// [`max_pool`]'s common case, 2x2 windows with stride 2 and no padding, written out: four
/// candidates per output, no window bookkeeping (about 8% of the `cnn` benchmark's time).
fn max_pool_2x2(plane: &[f32], w: usize, ow: usize, vals: &mut [f32], taps: &mut [f32]) {
    for (y, (out_v, out_t)) in vals.chunks_mut(ow).zip(taps.chunks_mut(ow)).enumerate() {
        let (top, bottom) = (2 * y * w, (2 * y + 1) * w);
        for (x, (v_out, t_out)) in out_v.iter_mut().zip(out_t.iter_mut()).enumerate() {
            let offsets = [top + 2 * x, top + 2 * x + 1, bottom + 2 * x, bottom + 2 * x + 1];
            let (mut best, mut at) = (plane[offsets[0]], 0);
            for (t, &k) in offsets.iter().enumerate().skip(1) {
                let v = plane[k];
                let wins = (v > best) | (v.is_nan() & !best.is_nan());
                best = if wins { v } else { best };
                at = if wins { t } else { at };
            }
            *v_out = best;
            *t_out = at as f32;
        }
    }
}

/// The adjoint of [`max_pool`]: each output's gradient `g` (row-major `[N, C, OH, OW]`) added
/// at the input pixel its maximum came from (`taps`), planes in parallel.
pub(super) fn max_pool_backward(g: &[f32], taps: &[f32], dims: ImageDims, win: &Window) -> Vec<f32> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let mut dx = vec![0.0f32; n * c * h * w];
    if dx.is_empty() || oh * ow == 0 {
        return dx;
    }
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let [ph, pw] = win.padding.map(|p| p as isize);
    // Where each tap sits relative to its window's top-left corner, in plane offsets: no
    // division per element.
    let tap_offset: Vec<isize> = (0..kh * kw).map(|t| (t / kw * w + t % kw) as isize).collect();
    let per_plane = oh * ow;
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, plane)| {
        let (taps, g) = (&taps[p * per_plane..][..per_plane], &g[p * per_plane..][..per_plane]);
        for y in 0..oh {
            let top = ((y * sh) as isize - ph) * w as isize;
            for x in 0..ow {
                let corner = top + (x * sw) as isize - pw;
                // Inside the image by construction: the tap was a pixel, not padding.
                let at = (corner + tap_offset[taps[y * ow + x] as usize]) as usize;
                plane[at] += g[y * ow + x];
            }
        }
    });
    dx
}
