//! CPU kernels: plain loops over slices, rayon for large element counts, and the `gemm` crate
//! for matrix products.
//!
//! Kernels know nothing of autograd. They take storage slices with their [`Layout`]s and return
//! new row-major buffers; the ops in [`crate::ops`] wrap them into tensors.

use rayon::prelude::*;

use crate::tensor::{for_each_run, Layout};

/// Element counts from which elementwise kernels split the work over rayon's threads.
const PAR_MIN_ELEMS: usize = 1 << 16;
/// Elements per parallel task.
const PAR_CHUNK: usize = 1 << 14;

/// The elements of `layout` in row-major order, as a new buffer.
pub fn to_contiguous(src: &[f32], layout: &Layout) -> Vec<f32> {
    let n = layout.elem_count();
    if layout.is_contiguous() {
        return src[layout.offset()..layout.offset() + n].to_vec();
    }
    let mut out = Vec::with_capacity(n);
    for_each_run(layout.shape(), [layout], |[o], len, [s]| {
        if s == 1 {
            out.extend_from_slice(&src[o..o + len]);
        } else {
            out.extend((0..len).map(|j| src[o + j * s]));
        }
    });
    out
}

/// `f` applied to every element.
pub fn map(src: &[f32], layout: &Layout, f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let n = layout.elem_count();
    if layout.is_contiguous() {
        let src = &src[layout.offset()..layout.offset() + n];
        if n >= PAR_MIN_ELEMS {
            return src.par_iter().with_min_len(PAR_CHUNK).map(|&x| f(x)).collect();
        }
        return src.iter().map(|&x| f(x)).collect();
    }
    let mut out = Vec::with_capacity(n);
    for_each_run(layout.shape(), [layout], |[o], len, [s]| {
        out.extend((0..len).map(|j| f(src[o + j * s])));
    });
    out
}

/// `f(a, b)` for every pair of elements. Both layouts already have the output's shape
/// (broadcast axes have stride 0).
pub fn zip_map(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    debug_assert_eq!(la.shape(), lb.shape());
    let n = la.elem_count();
    if la.is_contiguous() && lb.is_contiguous() {
        let a = &a[la.offset()..la.offset() + n];
        let b = &b[lb.offset()..lb.offset() + n];
        if n >= PAR_MIN_ELEMS {
            let mut out = vec![0.0; n];
            out.par_chunks_mut(PAR_CHUNK).zip(a.par_chunks(PAR_CHUNK).zip(b.par_chunks(PAR_CHUNK))).for_each(
                |(o, (a, b))| {
                    for ((o, &x), &y) in o.iter_mut().zip(a).zip(b) {
                        *o = f(x, y);
                    }
                },
            );
            return out;
        }
        return a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect();
    }
    let mut out = Vec::with_capacity(n);
    for_each_run(la.shape(), [la, lb], |[oa, ob], len, [sa, sb]| match (sa, sb) {
        (1, 1) => out.extend(a[oa..oa + len].iter().zip(&b[ob..ob + len]).map(|(&x, &y)| f(x, y))),
        (1, 0) => out.extend(a[oa..oa + len].iter().map(|&x| f(x, b[ob]))),
        (0, 1) => out.extend(b[ob..ob + len].iter().map(|&y| f(a[oa], y))),
        _ => out.extend((0..len).map(|j| f(a[oa + j * sa], b[ob + j * sb]))),
    });
    out
}

/// A reduction over one axis of a row-major buffer seen as `[outer, len, inner]`.
#[derive(Clone, Copy, Debug)]
pub enum Reduce {
    /// Sum of the entries.
    Sum,
    /// Largest entry (NaN wins, so NaN propagates).
    Max,
    /// Smallest entry (NaN wins).
    Min,
    /// Position of the first largest entry.
    ArgMax,
    /// Position of the first smallest entry.
    ArgMin,
}

/// Reduces the middle axis of `src` (row-major `[outer, len, inner]`, `len > 0` unless Sum)
/// and returns `[outer, inner]`.
pub fn reduce(src: &[f32], outer: usize, len: usize, inner: usize, op: Reduce) -> Vec<f32> {
    let mut out = vec![0.0f32; outer * inner];
    if len == 0 {
        return out;
    }
    for o in 0..outer {
        let block = &src[o * len * inner..(o + 1) * len * inner];
        let dst = &mut out[o * inner..(o + 1) * inner];
        match op {
            Reduce::Sum if inner == 1 => {
                // A row sum: accumulate in f64 so long sums (losses) keep their digits.
                dst[0] = block.iter().map(|&x| x as f64).sum::<f64>() as f32;
            }
            Reduce::Sum => {
                dst.copy_from_slice(&block[..inner]);
                for row in block.chunks_exact(inner).skip(1) {
                    dst.iter_mut().zip(row).for_each(|(d, &x)| *d += x);
                }
            }
            Reduce::Max | Reduce::Min => {
                let better = |x: f32, best: f32| match op {
                    Reduce::Max => x > best || x.is_nan(),
                    _ => x < best || x.is_nan(),
                };
                dst.copy_from_slice(&block[..inner]);
                for row in block.chunks_exact(inner).skip(1) {
                    dst.iter_mut().zip(row).for_each(|(d, &x)| {
                        if !d.is_nan() && better(x, *d) {
                            *d = x
                        }
                    });
                }
            }
            Reduce::ArgMax | Reduce::ArgMin => {
                for (i, d) in dst.iter_mut().enumerate() {
                    let mut best = block[i];
                    let mut at = 0;
                    for j in 1..len {
                        let x = block[j * inner + i];
                        let wins = match op {
                            Reduce::ArgMax => x > best,
                            _ => x < best,
                        };
                        if !best.is_nan() && (wins || x.is_nan()) {
                            best = x;
                            at = j;
                        }
                    }
                    *d = at as f32;
                }
            }
        }
    }
    out
}

/// Matrix products below this many multiply-adds run on one thread each; a batch of them is
/// spread over the threads instead (gemm's own threading starts near this size too).
const SMALL_GEMM: usize = 48 * 48 * 256;

/// Batched matrix product `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`.
///
/// `la` and `lb` are already broadcast to the output's batch shape; any strides work (a
/// transposed operand is read in place), which is what makes `x·Wᵀ` free of copies. Large
/// products use gemm's threads; a batch of small ones (convolution of many images, one per
/// sample) runs one product per thread.
pub fn matmul(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, m: usize, k: usize, n: usize) -> Vec<f32> {
    let batch_shape = &la.shape()[..la.rank() - 2];
    let batch: usize = batch_shape.iter().product();
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0f32; batch * m * n];
    }
    // Storage offset of batch entry `bi` in a layout.
    let batch_offset = |l: &Layout, bi: usize| {
        let mut rem = bi;
        let mut off = l.offset();
        for (d, size) in batch_shape.iter().enumerate().rev() {
            off += (rem % size) * l.strides()[d];
            rem /= size;
        }
        off
    };
    let (sa, sb) = (la.strides(), lb.strides());
    let (ra, rb) = (la.rank(), lb.rank());
    // dst = a[bi][:, ks] · b[bi][ks, :] for the inner range `ks` (all of k, or one slice of it).
    let product = |dst: SendPtr, bi: usize, ks: std::ops::Range<usize>, parallelism: gemm::Parallelism| {
        let oa = batch_offset(la, bi) + ks.start * sa[ra - 1];
        let ob = batch_offset(lb, bi) + ks.start * sb[rb - 2];
        // SAFETY: the layouts were checked against the storages when the tensors were made (and
        // every shape's element count was checked to fit a usize), so every (row, col) offset
        // the strides produce for entry `bi` and inner range `ks` ⊆ 0..k lies inside `a` and
        // `b`; `dst` is a zeroed m x n block that no other call writes at the same time.
        unsafe {
            gemm::gemm(
                m,
                n,
                ks.len(),
                dst.get(),
                1,
                n as isize,
                false,
                a.as_ptr().add(oa),
                sa[ra - 1] as isize,
                sa[ra - 2] as isize,
                b.as_ptr().add(ob),
                sb[rb - 1] as isize,
                sb[rb - 2] as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    };
    let mut out = vec![0.0f32; batch * m * n];
    let threads = rayon::current_num_threads();
    if batch == 1 && m * n <= SMALL_OUTPUT && k >= LONG_INNER && threads > 1 {
        // A small result over a long inner axis (the weight gradient of a convolution: a few
        // filters, every position of every image) leaves gemm nothing to split across threads.
        // Split the inner axis instead and add the partial products, in a fixed order.
        let chunk = k.div_ceil(threads);
        let partials: Vec<Vec<f32>> = (0..threads)
            .into_par_iter()
            .map(|t| {
                let ks = (t * chunk).min(k)..((t + 1) * chunk).min(k);
                let mut part = vec![0.0f32; m * n];
                if !ks.is_empty() {
                    product(SendPtr(part.as_mut_ptr()), 0, ks, gemm::Parallelism::None);
                }
                part
            })
            .collect();
        for part in &partials {
            out.iter_mut().zip(part).for_each(|(o, &p)| *o += p);
        }
        return out;
    }
    let dst = SendPtr(out.as_mut_ptr());
    let block = |bi: usize| SendPtr(dst.get().wrapping_add(bi * m * n));
    if batch > 1 && m * n * k < SMALL_GEMM {
        (0..batch).into_par_iter().for_each(|bi| product(block(bi), bi, 0..k, gemm::Parallelism::None));
    } else {
        (0..batch).for_each(|bi| product(block(bi), bi, 0..k, gemm::Parallelism::Rayon(0)));
    }
    out
}

/// A product with at most this many outputs counts as small ([`matmul`]).
const SMALL_OUTPUT: usize = 64 * 64;
/// An inner axis at least this long is split across threads when the output is small.
const LONG_INNER: usize = 8192;

/// A raw pointer that may cross threads: each thread writes its own disjoint block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: only used by `matmul`, whose threads write disjoint blocks of one live buffer.
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is only copied, never dereferenced concurrently at the
// same location.
unsafe impl Sync for SendPtr {}

/// Shape of a 2-D sliding window over an `[N, C, H, W]` input: kernel size, stride, zero
/// padding on each side and dilation (spacing between kernel taps), per axis (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel size.
    pub kernel: [usize; 2],
    /// Step between window positions.
    pub stride: [usize; 2],
    /// Padding added on both sides.
    pub padding: [usize; 2],
    /// Spacing between kernel taps (1: adjacent).
    pub dilation: [usize; 2],
}

impl Window {
    /// Output size along one axis: ⌊(in + 2·pad - dil·(k - 1) - 1) / stride⌋ + 1, or None when
    /// the window does not fit.
    pub fn output_size(&self, axis: usize, input: usize) -> Option<usize> {
        let span = self.dilation[axis].checked_mul(self.kernel[axis].checked_sub(1)?)?.checked_add(1)?;
        let padded = self.padding[axis].checked_mul(2)?.checked_add(input)?;
        if self.stride[axis] == 0 || padded < span || padded > isize::MAX as usize {
            return None;
        }
        Some((padded - span) / self.stride[axis] + 1)
    }
}

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
pub fn im2col(src: &[f32], [n, c, h, w]: [usize; 4], win: &Window, [oh, ow]: [usize; 2], pad_value: f32) -> Vec<f32> {
    let [kh, kw] = win.kernel;
    let l = oh * ow;
    let mut out = vec![0.0f32; c * kh * kw * n * l];
    if out.is_empty() {
        return out;
    }
    out.par_chunks_mut(n * l).enumerate().for_each(|(row, dst)| {
        let (ch, i, j) = (row / (kh * kw), row / kw % kh, row % kw);
        let tap_x = (j * win.dilation[1]) as isize - win.padding[1] as isize;
        let xs = valid_columns(ow, win.stride[1], tap_x, w);
        for b in 0..n {
            let plane = &src[(b * c + ch) * h * w..][..h * w];
            for y in 0..oh {
                let d = &mut dst[(b * oh + y) * ow..][..ow];
                let iy = (y * win.stride[0] + i * win.dilation[0]) as isize - win.padding[0] as isize;
                if iy < 0 || iy >= h as isize || xs.is_empty() {
                    d.fill(pad_value);
                    continue;
                }
                let line = &plane[iy as usize * w..][..w];
                d[..xs.start].fill(pad_value);
                d[xs.end..].fill(pad_value);
                let first = (xs.start * win.stride[1]) as isize + tap_x;
                if win.stride[1] == 1 {
                    d[xs.clone()].copy_from_slice(&line[first as usize..first as usize + xs.len()]);
                } else {
                    for (k, v) in d[xs.clone()].iter_mut().enumerate() {
                        *v = line[first as usize + k * win.stride[1]];
                    }
                }
            }
        }
    });
    out
}

/// The adjoint of [`im2col`]: adds every entry of the `[C·KH·KW, N·OH·OW]` matrix back onto
/// the pixel it was read from (taps in the padding are dropped). This is the gradient of
/// `im2col`.
pub fn col2im(cols: &[f32], [n, c, h, w]: [usize; 4], win: &Window, [oh, ow]: [usize; 2]) -> Vec<f32> {
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
/// (padding never wins; a NaN wins) and the flat input index it came from, `[N, C, OH, OW]`
/// each.
#[allow(clippy::needless_range_loop)] // the index itself is a result (where the maximum was)
pub fn max_pool(src: &[f32], [n, c, h, w]: [usize; 4], win: &Window, [oh, ow]: [usize; 2]) -> (Vec<f32>, Vec<usize>) {
    let mut values = vec![0.0f32; n * c * oh * ow];
    let mut argmax = vec![0usize; n * c * oh * ow];
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let [ph, pw] = win.padding.map(|p| p as isize);
    values.par_chunks_mut(oh * ow).zip(argmax.par_chunks_mut(oh * ow)).enumerate().for_each(|(p, (vals, args))| {
        let base = p * h * w;
        let plane = &src[base..base + h * w];
        if win.kernel == [2, 2] && win.stride == [2, 2] && win.padding == [0, 0] {
            max_pool_2x2(plane, w, ow, vals, args, base);
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
                let mut at = y0 * w + x0;
                let mut best = plane[at];
                for iy in y0..y1 {
                    for k in iy * w + x0..iy * w + x1 {
                        let v = plane[k];
                        // Bitwise `|`/`&` and selects, not branches: which tap wins is random,
                        // and mispredicted branches cost several times the comparisons.
                        let wins = (v > best) | (v.is_nan() & !best.is_nan());
                        best = if wins { v } else { best };
                        at = if wins { k } else { at };
                    }
                }
                vals[y * ow + x] = best;
                args[y * ow + x] = base + at;
            }
        }
    });
    (values, argmax)
}

/// The `[O, N·L]` result of a convolution's matrix product, plus a bias per output channel,
/// rearranged into the `[N, O, L]` layout of a batch of images.
pub fn columns_to_images(y: &[f32], bias: Option<&[f32]>, o: usize, n: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * o * l];
    out.par_chunks_mut(l.max(1)).enumerate().for_each(|(k, dst)| {
        let (img, ch) = (k / o, k % o);
        let src = &y[ch * n * l + img * l..][..l];
        let b = bias.map_or(0.0, |b| b[ch]);
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + b);
    });
    out
}

/// Sum over images and positions of an `[N, O, L]` batch: one value per channel `o`.
pub fn channel_sums(g: &[f32], o: usize, n: usize, l: usize) -> Vec<f32> {
    (0..o)
        .into_par_iter()
        .map(|ch| {
            (0..n).map(|img| g[(img * o + ch) * l..][..l].iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() as f32
        })
        .collect()
}

/// [`max_pool`]'s common case, 2x2 windows with stride 2 and no padding, written out: four
/// candidates per output, no window bookkeeping (about 8% of the `cnn` benchmark's time).
fn max_pool_2x2(plane: &[f32], w: usize, ow: usize, vals: &mut [f32], args: &mut [usize], base: usize) {
    for (y, (out_v, out_a)) in vals.chunks_mut(ow).zip(args.chunks_mut(ow)).enumerate() {
        let (top, bottom) = (2 * y * w, (2 * y + 1) * w);
        for (x, (v_out, a_out)) in out_v.iter_mut().zip(out_a.iter_mut()).enumerate() {
            let offsets = [top + 2 * x, top + 2 * x + 1, bottom + 2 * x, bottom + 2 * x + 1];
            let (mut best, mut at) = (plane[offsets[0]], 0);
            for (t, &k) in offsets.iter().enumerate().skip(1) {
                let v = plane[k];
                let wins = (v > best) | (v.is_nan() & !best.is_nan());
                best = if wins { v } else { best };
                at = if wins { t } else { at };
            }
            *v_out = best;
            *a_out = base + offsets[at];
        }
    }
}

/// The gradient of [`max_pool`]: each output's gradient added at the input position its
/// maximum came from (`argmax`), planes in parallel. `[N, C, H, W]` input size.
pub fn max_pool_backward(g: &[f32], argmax: &[usize], [n, c, h, w]: [usize; 4], outputs_per_plane: usize) -> Vec<f32> {
    let mut dx = vec![0.0f32; n * c * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each(|(p, plane)| {
        let range = p * outputs_per_plane..(p + 1) * outputs_per_plane;
        for (&at, &v) in argmax[range.clone()].iter().zip(&g[range]) {
            plane[at - p * h * w] += v;
        }
    });
    dx
}

/// The inverse rearrangement of [`columns_to_images`] (without bias): `[N, O, L] -> [O, N·L]`.
pub fn images_to_columns(g: &[f32], o: usize, n: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * o * l];
    out.par_chunks_mut(l.max(1)).enumerate().for_each(|(k, dst)| {
        let (ch, img) = (k / n, k % n);
        dst.copy_from_slice(&g[(img * o + ch) * l..][..l]);
    });
    out
}

/// Copies the elements of `src` (seen through `src_layout`) to the places `dst_layout` names in
/// `dst`. Both layouts have the same shape. Used to write a piece into a larger buffer
/// (concatenation, the gradient of `narrow`).
pub fn copy_into(src: &[f32], src_layout: &Layout, dst: &mut [f32], dst_layout: &Layout) {
    debug_assert_eq!(src_layout.shape(), dst_layout.shape());
    for_each_run(src_layout.shape(), [src_layout, dst_layout], |[os, od], len, [ss, sd]| {
        if ss == 1 && sd == 1 {
            dst[od..od + len].copy_from_slice(&src[os..os + len]);
        } else {
            for j in 0..len {
                dst[od + j * sd] = src[os + j * ss];
            }
        }
    });
}

/// Softmax (or log-softmax) along the middle axis of a row-major `[outer, len, inner]` buffer.
///
/// Subtracting each lane's maximum first keeps `exp` from overflowing: softmax(x) =
/// softmax(x - c) for any c, and with c = max every exponent is <= 0.
pub fn softmax(src: &[f32], outer: usize, len: usize, inner: usize, log: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; outer * len * inner];
    let lane = |src: &[f32], dst: &mut [f32], stride: usize| {
        let max = (0..len).map(|j| src[j * stride]).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for j in 0..len {
            let e = (src[j * stride] - max).exp();
            dst[j * stride] = e;
            sum += e;
        }
        if log {
            let log_sum = sum.ln();
            for j in 0..len {
                dst[j * stride] = src[j * stride] - max - log_sum;
            }
        } else {
            for j in 0..len {
                dst[j * stride] /= sum;
            }
        }
    };
    for o in 0..outer {
        let base = o * len * inner;
        for i in 0..inner {
            lane(&src[base + i..], &mut out[base + i..], inner);
        }
    }
    out
}
