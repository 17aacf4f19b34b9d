//! Convolution and pooling kernels: im2col and its adjoint col2im, a direct convolution for
//! stride 1 and its filters' gradient (AVX-512, AVX2 or portable, picked at run time), max
//! pooling and its adjoint. Stride-1 3x3 and 5x5 convolutions with enough channels go to
//! [`super::winograd`] instead. Inputs are row-major `[N, C, H, W]` batches.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::simd::{instance, Isa, Portable, Simd};
#[cfg(target_arch = "x86_64")]
use super::simd::{Avx2, Avx512, Kind};
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

/// How many image planes of `work` elements' work each make one parallel task: small planes
/// (a late layer's 8x8 maps) are grouped, so that a task is not mostly rayon's bookkeeping.
fn planes_per_task(work: usize) -> usize {
    (super::elementwise::PAR_CHUNK / work.max(1)).max(1)
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
    assert_eq!(cols.len(), c * kh * kw * n * l, "col2im: the columns' length");
    let taps = tap_spans(dims, win);
    // One task per image and channel: each writes only its own plane.
    out.par_chunks_mut(h * w).enumerate().with_min_len(planes_per_task(h * w * kh * kw)).for_each(
        |(plane_index, plane)| {
            let (b, ch) = (plane_index / c, plane_index % c);
            // Tap t of this channel, image b: n·l values apart per tap, l per image.
            let rows = &cols[ch * kh * kw * n * l..][..kh * kw * n * l];
            add_taps(plane, rows, n * l, b * l, &taps, [ow, win.stride[1]]);
        },
    );
    out
}

/// The input's gradient of a convolution, image by image: `dx_b = col2im(Wᵀ · g_b)` for the
/// `[N, O, OH, OW]` output gradient `g` and `[O, C·KH·KW]` filters `w`, both row-major;
/// `[N, C, H, W]`. The same sum as the batch's one matrix product and [`col2im`], but each
/// image's `[C·KH·KW, OH·OW]` columns (100 KB for the `cnn` benchmark's second layer) stay in
/// the thread's cache between the product that writes them and the adds that read them,
/// where the batch's (6.5 MB) went out to memory and back. Shapes [`winograd_applies`]
/// covers take Winograd's adjoint instead.
pub(super) fn conv2d_input_grad(g: &[f32], w: &[f32], o: usize, dims: ImageDims, win: &Window) -> Vec<f32> {
    if win.stride == [1, 1] && win.dilation == [1, 1] && winograd_applies(dims) {
        if let Some(dx) = super::winograd::input_gradient(Isa::detect(), g, dims, w, o, win.kernel, win.padding) {
            return dx;
        }
    }
    input_grad_by_columns(g, w, o, dims, win)
}

/// Whether the batch is worth Winograd's path ([`super::winograd`] then checks the shapes):
/// it spreads whole images over the threads, so with fewer images than threads (inference)
/// the direct kernels, which also split each image's filters, are left the work.
fn winograd_applies(dims: ImageDims) -> bool {
    dims.input[0] >= rayon::current_num_threads()
}

/// [`conv2d_input_grad`] by the filters' product and col2im, image by image.
fn input_grad_by_columns(g: &[f32], w: &[f32], o: usize, dims: ImageDims, win: &Window) -> Vec<f32> {
    let ([n, c, h, wd], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = win.kernel;
    let (l, ck) = (oh * ow, c * kh * kw);
    let mut out = vec![0.0f32; n * c * h * wd];
    if out.is_empty() || l == 0 {
        return out;
    }
    assert_eq!(g.len(), n * o * l, "conv2d_input_grad: the output gradient's length");
    assert_eq!(w.len(), o * ck, "conv2d_input_grad: the filters' length");
    // Wᵀ row-major, once: the product reads it at unit stride in every image.
    let wt = super::matmul::transposed(w, [o, ck]);
    let taps = tap_spans(dims, win);
    out.par_chunks_mut(c * h * wd).enumerate().for_each_init(
        || vec![0.0f32; ck * l],
        |cols, (b, dx)| {
            let gb = &g[b * o * l..][..o * l];
            super::matmul::gemm_on_thread(cols, l, &wt, [o, 1], gb, [l, 1], [ck, o, l], false);
            for (plane, rows) in dx.chunks_exact_mut(h * wd).zip(cols.chunks_exact(kh * kw * l)) {
                add_taps(plane, rows, l, 0, &taps, [ow, win.stride[1]]);
            }
        },
    );
    out
}

/// Where one window tap of [`col2im`] reads and writes: output rows `ys` (those whose tap
/// row is inside the image), output columns `xs` likewise, and the input pixel of the first
/// (ys.start, xs.start), counted in rows of `w` and `stride[0]` rows per output row.
#[derive(Clone, Debug)]
struct TapSpan {
    ys: std::ops::Range<usize>,
    xs: std::ops::Range<usize>,
    /// Plane offset of the pixel output `(ys.start, xs.start)` reads.
    first: usize,
    /// Plane offset from one output row's pixel to the next's: `stride[0]·w`.
    row_step: usize,
}

/// Every tap's [`TapSpan`], in row-major `(i, j)` order (the same for every plane).
fn tap_spans(dims: ImageDims, win: &Window) -> Vec<TapSpan> {
    let ([_, _, h, w], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = win.kernel;
    let mut spans = Vec::with_capacity(kh * kw);
    for i in 0..kh {
        let tap_y = (i * win.dilation[0]) as isize - win.padding[0] as isize;
        let ys = valid_columns(oh, win.stride[0], tap_y, h);
        for j in 0..kw {
            let tap_x = (j * win.dilation[1]) as isize - win.padding[1] as isize;
            let mut xs = valid_columns(ow, win.stride[1], tap_x, w);
            let mut ys = ys.clone();
            if xs.is_empty() || ys.is_empty() {
                (xs, ys) = (0..0, 0..0);
            }
            let first_y = ((ys.start * win.stride[0]) as isize + tap_y).max(0) as usize;
            let first_x = ((xs.start * win.stride[1]) as isize + tap_x).max(0) as usize;
            spans.push(TapSpan { ys, xs, first: first_y * w + first_x, row_step: win.stride[0] * w });
        }
    }
    spans
}

super::fastmath::dispatch! {
    /// One plane of [`col2im`]: tap `t`'s gradients, `rows[t·row_len + at..]` (`OH·OW` of
    /// them), added onto the pixels they were read from. `sizes`: output width, column stride.
    fn add_taps(plane: &mut [f32], rows: &[f32], row_len: usize, at: usize, taps: &[TapSpan], sizes: [usize; 2]) {
        let [ow, sw] = sizes;
        for (t, span) in taps.iter().enumerate() {
            let (len, count) = (span.xs.len(), span.ys.len());
            if len == 0 || count == 0 {
                continue;
            }
            // This tap's rows of the columns and of the plane; every row below is inside them.
            let src = &rows[t * row_len + at + span.ys.start * ow + span.xs.start..][..(count - 1) * ow + len];
            let dst = &mut plane[span.first..][..(count - 1) * span.row_step + (len - 1) * sw + 1];
            for k in 0..count {
                let s = &src[k * ow..][..len];
                let d = &mut dst[k * span.row_step..];
                if sw == 1 {
                    d[..len].iter_mut().zip(s).for_each(|(d, &v)| *d += v);
                } else {
                    for (x, &v) in s.iter().enumerate() {
                        d[x * sw] += v;
                    }
                }
            }
        }
    }
}

/// Pooling's common window, with its own paths: 2x2, stride 2, no padding (no dilation).
fn two_by_two(win: &Window) -> bool {
    win.kernel == [2, 2] && win.stride == [2, 2] && win.padding == [0, 0]
}

/// Max pooling of a row-major `[N, C, H, W]` batch (no dilation): the maximum of each window
/// (padding never wins; a NaN wins), `[N, C, OH, OW]`, and the tap it came from, `ky·KW + kx`
/// counted from the window's top-left corner (padding included), as a whole number.
pub(super) fn max_pool(src: &[f32], dims: ImageDims, win: &Window) -> (Vec<f32>, Vec<f32>) {
    max_pool_with(Isa::detect(), src, dims, win)
}

/// [`max_pool`] with the 2x2 path compiled for `isa` (tests run each the CPU has).
fn max_pool_with(isa: Isa, src: &[f32], dims: ImageDims, win: &Window) -> (Vec<f32>, Vec<f32>) {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let len = n * c * oh * ow;
    if len == 0 {
        return (Vec::new(), Vec::new());
    }
    // Not zeroed: every output of every plane is written below.
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let mut taps: Vec<f32> = Vec::with_capacity(len);
    let [kh, kw] = win.kernel;
    let [sh, sw] = win.stride;
    let [ph, pw] = win.padding.map(|p| p as isize);
    if two_by_two(win) && h % 2 == 0 {
        // With an even height, a run of planes is one tall image of 2x2 windows: one call
        // per task, not per plane (an 8x8 plane has only 16 windows).
        let per_task = planes_per_task(h * w) * oh * ow;
        values.spare_capacity_mut()[..len]
            .par_chunks_mut(per_task)
            .zip(taps.spare_capacity_mut()[..len].par_chunks_mut(per_task))
            .enumerate()
            .for_each(|(t, (vals, at))| {
                let planes = vals.len() / (oh * ow);
                max_pool_2x2(isa, &src[t * (per_task / (oh * ow)) * h * w..][..planes * h * w], w, ow, vals, at);
            });
        // SAFETY: the tasks partition all `len` values of both, and `max_pool_2x2` writes
        // every output row of its run of planes.
        unsafe {
            values.set_len(len);
            taps.set_len(len);
        }
        return (values, taps);
    }
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(oh * ow)
        .zip(taps.spare_capacity_mut()[..len].par_chunks_mut(oh * ow))
        .enumerate()
        .with_min_len(planes_per_task(h * w))
        .for_each(|(p, (vals, at))| {
            let plane = &src[p * h * w..(p + 1) * h * w];
            if two_by_two(win) {
                max_pool_2x2(isa, plane, w, ow, vals, at);
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
                            // Which tap wins is random: selects, not branches (see max_pool_2x2).
                            let wins = (v > best) | (v.is_nan() & !best.is_nan());
                            best = std::hint::select_unpredictable(wins, v, best);
                            best_y = std::hint::select_unpredictable(wins, iy, best_y);
                            best_x = std::hint::select_unpredictable(wins, ix, best_x);
                        }
                    }
                    vals[y * ow + x].write(best);
                    let tap = (best_y as isize - top) as usize * kw + (best_x as isize - left) as usize;
                    at[y * ow + x].write(tap as f32);
                }
            }
        });
    // SAFETY: the planes partition all `len` values of both, and each plane's outputs were
    // all written, by the 2x2 path or the loop over every (y, x).
    unsafe {
        values.set_len(len);
        taps.set_len(len);
    }
    (values, taps)
}

/// [`max_pool`]'s common case, 2x2 windows with stride 2 and no padding, written out: four
/// candidates per output and the winner and its tap chosen without branches (16 outputs at
/// a time on AVX-512).
fn max_pool_2x2(
    isa: Isa,
    plane: &[f32],
    w: usize,
    ow: usize,
    vals: &mut [MaybeUninit<f32>],
    taps: &mut [MaybeUninit<f32>],
) {
    assert!(
        vals.len() == taps.len()
            && vals.len().is_multiple_of(ow.max(1))
            && plane.len() >= vals.len() / ow.max(1) * 2 * w
    );
    #[cfg(target_arch = "x86_64")]
    if isa.kind() == Kind::Avx512 {
        // SAFETY: `isa` is this CPU's (`Isa::detect` or `Isa::available`); the assert above
        // holds every row pair each output row reads.
        return unsafe { max_pool_2x2_avx512(plane, w, ow, vals, taps) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    #[inline(always)]
    fn pick(best: f32, at: f32, v: f32, tap: f32) -> (f32, f32) {
        // A NaN wins over a number (and the first NaN stays): as in PyTorch.
        let wins = (v > best) | (v.is_nan() & !best.is_nan());
        // Which tap wins is random: selects, not branches (the compiler had turned `if`
        // selects into jumps, mispredicted about half the time: 20 ns per output).
        (std::hint::select_unpredictable(wins, v, best), std::hint::select_unpredictable(wins, tap, at))
    }
    for (y, (out_v, out_t)) in vals.chunks_exact_mut(ow).zip(taps.chunks_exact_mut(ow)).enumerate() {
        let top = &plane[2 * y * w..][..2 * ow];
        let bottom = &plane[(2 * y + 1) * w..][..2 * ow];
        let rows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        for ((v_out, t_out), (t, b)) in out_v.iter_mut().zip(out_t.iter_mut()).zip(rows) {
            let (best, at) = pick(t[0], 0.0, t[1], 1.0);
            let (best, at) = pick(best, at, b[0], 2.0);
            let (best, at) = pick(best, at, b[1], 3.0);
            v_out.write(best);
            t_out.write(at);
        }
    }
}

/// [`max_pool_2x2`] on AVX-512: per output row, the row pair's even and odd columns are
/// split out of two vectors each (`vpermt2ps`), and the four candidates of 16 outputs are
/// compared at once, with the scalar path's order and NaN rule. Masked loads and stores
/// cover widths that are not a multiple of 16.
///
/// # Safety
/// The CPU must have AVX-512F, and `plane` must hold the `2·w` values of each output row's
/// row pair (`vals.len() / ow` rows).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_2x2_avx512(
    plane: &[f32],
    w: usize,
    ow: usize,
    vals: &mut [MaybeUninit<f32>],
    taps: &mut [MaybeUninit<f32>],
) {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn pick(best: __m512, at: __m512, v: __m512, tap: f32) -> (__m512, __m512) {
        let greater = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
        let nan_over_number =
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v) & !_mm512_cmp_ps_mask::<_CMP_UNORD_Q>(best, best);
        let wins = greater | nan_over_number;
        (_mm512_mask_blend_ps(wins, best, v), _mm512_mask_mov_ps(at, wins, _mm512_set1_ps(tap)))
    }
    /// The four candidates' winner and tap: [`pick`]'s rule, with its NaN tests only where a
    /// candidate is a NaN (without one, `nan_over_number` is empty: the same result, half
    /// the instructions).
    #[inline(always)]
    unsafe fn window(c: [__m512; 4]) -> (__m512, __m512) {
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(c[0], c[1]) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(c[2], c[3]);
        let (mut best, mut at) = (c[0], _mm512_setzero_ps());
        for (tap, &v) in c.iter().enumerate().skip(1) {
            if nan != 0 {
                (best, at) = pick(best, at, v, tap as f32);
            } else {
                let wins = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best);
                (best, at) =
                    (_mm512_mask_blend_ps(wins, best, v), _mm512_mask_mov_ps(at, wins, _mm512_set1_ps(tap as f32)));
            }
        }
        (best, at)
    }
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let first = |count: usize| -> __mmask16 { ((1u32 << count.min(16)) - 1) as __mmask16 };
    // Narrow rows (an 8x8 plane: 4 outputs a row) fill a vector with several row pairs: with
    // `w = 2·ow` and `ow` dividing 16, the 16 outputs of `16 / ow` consecutive row pairs read
    // 64 consecutive values, four vectors. Each candidate is gathered by one permute from
    // the first two vectors (the first 8 outputs) and one from the last two, whose indices
    // are the same (the pattern repeats every 32 values).
    let mut done = 0;
    if w == 2 * ow && ow <= 8 && 16 % ow == 0 {
        let pairs = 16 / ow;
        let index = |dy: usize, dx: usize| {
            let at: [i32; 16] =
                std::array::from_fn(|l| ((l / ow % (pairs / 2)) * 2 * w + dy * w + 2 * (l % ow) + dx) as i32);
            _mm512_loadu_si512(at.as_ptr().cast())
        };
        let (i0, i1, i2, i3) = (index(0, 0), index(0, 1), index(1, 0), index(1, 1));
        let upper: __mmask16 = 0xff00;
        let groups = vals.len() / 16;
        for g in 0..groups {
            let src = plane.as_ptr().add(g * 64);
            let (a, b, c, d) = (
                _mm512_loadu_ps(src),
                _mm512_loadu_ps(src.add(16)),
                _mm512_loadu_ps(src.add(32)),
                _mm512_loadu_ps(src.add(48)),
            );
            let gather = |i: __m512i| {
                _mm512_mask_blend_ps(upper, _mm512_permutex2var_ps(a, i, b), _mm512_permutex2var_ps(c, i, d))
            };
            let (best, at) = window([gather(i0), gather(i1), gather(i2), gather(i3)]);
            _mm512_storeu_ps(vals.as_mut_ptr().add(g * 16).cast(), best);
            _mm512_storeu_ps(taps.as_mut_ptr().add(g * 16).cast(), at);
        }
        done = groups * 16 / ow;
    }
    let rows = vals.chunks_exact_mut(ow).zip(taps.chunks_exact_mut(ow)).enumerate().skip(done);
    for (y, (out_v, out_t)) in rows {
        let (top, bottom) = (plane.as_ptr().add(2 * y * w), plane.as_ptr().add((2 * y + 1) * w));
        for x in (0..ow).step_by(16) {
            let count = (ow - x).min(16);
            let (lo, hi) = (first(2 * count), first((2 * count).saturating_sub(16)));
            let split = |row: *const f32| {
                // (The second pointer may lie past the image when `hi` is empty: the masked load
                // reads nothing there, and `wrapping_add` makes no claim that it is inside.)
                let (a, b) = (
                    _mm512_maskz_loadu_ps(lo, row.add(2 * x)),
                    _mm512_maskz_loadu_ps(hi, row.wrapping_add(2 * x + 16)),
                );
                (_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b))
            };
            let ((t0, t1), (t2, t3)) = (split(top), split(bottom));
            let (best, at) = window([t0, t1, t2, t3]);
            let out = first(count);
            _mm512_mask_storeu_ps(out_v.as_mut_ptr().add(x).cast(), out, best);
            _mm512_mask_storeu_ps(out_t.as_mut_ptr().add(x).cast(), out, at);
        }
    }
}

/// The adjoint of [`max_pool`]: each output's gradient `g` (row-major `[N, C, OH, OW]`) added
/// at the input pixel its maximum came from (`taps`), planes in parallel.
pub(super) fn max_pool_backward(g: &[f32], taps: &[f32], dims: ImageDims, win: &Window) -> Vec<f32> {
    max_pool_backward_with(Isa::detect(), g, taps, dims, win)
}

/// [`max_pool_backward`] with the 2x2 path compiled for `isa` (tests run each the CPU has).
fn max_pool_backward_with(isa: Isa, g: &[f32], taps: &[f32], dims: ImageDims, win: &Window) -> Vec<f32> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    if two_by_two(win) && n * c * h * w > 0 {
        return max_pool_2x2_backward(isa, g, taps, dims);
    }
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
    dx.par_chunks_mut(h * w).enumerate().with_min_len(planes_per_task(h * w)).for_each(|(p, plane)| {
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

/// [`max_pool_backward`]'s common case, 2x2 windows with stride 2 and no padding. The
/// windows do not overlap, so each pixel of a window is its output's gradient or 0: every
/// pixel is written once, in order (0 past the last window's row and column), with no
/// zeroed buffer and no adds at the taps.
fn max_pool_2x2_backward(isa: Isa, g: &[f32], taps: &[f32], dims: ImageDims) -> Vec<f32> {
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    assert!(2 * oh <= h && 2 * ow <= w && g.len() == n * c * oh * ow && taps.len() == g.len());
    let len = n * c * h * w;
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    // A run of planes per task, walked row by row (an 8x8 plane has only 16 windows).
    let planes = planes_per_task(h * w);
    let per_task = planes * oh * ow;
    #[cfg(target_arch = "x86_64")]
    let pairs = (isa.kind() == Kind::Avx512 && h % 2 == 0).then(|| RowPairPlan::new(w, ow));
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    dx.spare_capacity_mut()[..len].par_chunks_mut(planes * h * w).enumerate().for_each(|(t, block)| {
        let (g, taps) = (&g[t * per_task..], &taps[t * per_task..]);
        #[cfg(target_arch = "x86_64")]
        if let Some(plan) = &pairs {
            let run = block.len() / (2 * w) * ow;
            // SAFETY: `pairs` exists only where `isa` (this CPU's) is AVX-512; with an even
            // height, the block is whole row pairs of `2·w` pixels, one output row (`ow`
            // gradients and taps) each, and `g` and `taps` hold those rows.
            unsafe { max_pool_2x2_backward_avx512(plan, &g[..run], &taps[..run], block) };
            return;
        }
        for (y, rows) in block.chunks_exact_mut(w).enumerate() {
            // Row py of plane `plane` of the run: window row py / 2, whose top (tap 0) or
            // bottom (tap 2) row it is, or a last row past the windows (an odd height).
            let (plane, py) = (y / h, y % h);
            let row = 2.0 * (py % 2) as f32;
            if py / 2 >= oh {
                rows.iter_mut().for_each(|v| _ = v.write(0.0));
                continue;
            }
            let at = (plane * oh + py / 2) * ow;
            let (gr, tr) = (&g[at..][..ow], &taps[at..][..ow]);
            let (pairs, rest) = rows.split_at_mut(2 * ow);
            for ((px, &gv), &t) in pairs.chunks_exact_mut(2).zip(gr).zip(tr) {
                px[0].write(if t == row { gv } else { 0.0 });
                px[1].write(if t == row + 1.0 { gv } else { 0.0 });
            }
            rest.iter_mut().for_each(|v| _ = v.write(0.0));
        }
    });
    // SAFETY: the runs partition all `len` values, and each row was written whole: the
    // windows' pairs and the columns past them, or zeros past the last window.
    unsafe { dx.set_len(len) };
    dx
}

/// Where each pixel of a pair of image rows (`2·w` pixels, the top and bottom rows of one
/// row of 2x2 windows) finds its gradient, for [`max_pool_2x2_backward_avx512`]: per vector
/// of 16 pixels, the window (within the `ow` windows of the pair) and tap of each lane. A
/// vector's lanes lie in at most two runs of consecutive windows (the end of the top row and
/// the start of the bottom one), each within 16 windows of its first: two masked loads and
/// one two-source permute gather the 16 lanes' gradients.
#[cfg(target_arch = "x86_64")]
struct RowPairPlan {
    /// Pixels in a row pair (`2·w`).
    pixels: usize,
    /// The row pair's vectors in order.
    vectors: Vec<PairVector>,
}

/// One vector of a [`RowPairPlan`].
#[cfg(target_arch = "x86_64")]
struct PairVector {
    /// The first window of each of the two runs.
    bases: [usize; 2],
    /// How many windows to load from each (0: no second run).
    counts: [usize; 2],
    /// Each lane's place in the two loads (0-15 the first, 16-31 the second).
    index: [i32; 16],
    /// The tap each lane's pixel is (-1 past the last window: a column no window covers).
    tap: [f32; 16],
}

#[cfg(target_arch = "x86_64")]
impl RowPairPlan {
    fn new(w: usize, ow: usize) -> RowPairPlan {
        let pixels = 2 * w;
        let vectors = (0..pixels.div_ceil(16))
            .map(|v| {
                let lanes = (16 * v..pixels.min(16 * v + 16)).map(|k| (k / w, k % w));
                // The first window each row (0: top, 1: bottom) reads in this vector.
                let mut first = [usize::MAX; 2];
                for (r, px) in lanes.clone() {
                    if px / 2 < ow {
                        first[r] = first[r].min(px / 2);
                    }
                }
                // The runs in lane order: the top row's (if any lane reads one), then the bottom's.
                let runs: Vec<usize> = (0..2).filter(|&r| first[r] != usize::MAX).collect();
                let mut bases = [0; 2];
                let mut counts = [0; 2];
                for (slot, &r) in runs.iter().enumerate() {
                    bases[slot] = first[r];
                    counts[slot] = (ow - first[r]).min(16);
                }
                let (mut index, mut tap) = ([0i32; 16], [-1.0f32; 16]);
                for (lane, (r, px)) in lanes.enumerate() {
                    if px / 2 < ow {
                        let slot = runs.iter().position(|&x| x == r).unwrap_or(0);
                        let within = px / 2 - bases[slot];
                        debug_assert!(within < 16);
                        index[lane] = (16 * slot + within) as i32;
                        tap[lane] = (2 * r + px % 2) as f32;
                    }
                }
                PairVector { bases, counts, index, tap }
            })
            .collect();
        RowPairPlan { pixels, vectors }
    }
}

/// [`max_pool_2x2_backward`] on AVX-512 for whole row pairs: each vector of 16 pixels gathers
/// its windows' gradients and taps (two masked loads each, one permute) and keeps the
/// gradient where the tap is the pixel's own, 0 elsewhere: the scalar path's values, for
/// any width (an 8-pixel row pair is one vector, not eight scalar steps).
///
/// # Safety
/// The CPU must have AVX-512F; `dx` must be whole row pairs of `plan.pixels` pixels, and
/// `g` and `taps` one output row (the plan's `ow` values) for each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_pool_2x2_backward_avx512(plan: &RowPairPlan, g: &[f32], taps: &[f32], dx: &mut [MaybeUninit<f32>]) {
    use std::arch::x86_64::*;
    let pairs = dx.len() / plan.pixels.max(1);
    let ow = g.len() / pairs.max(1);
    assert!(dx.len() == pairs * plan.pixels && g.len() == pairs * ow && taps.len() == g.len());
    let first = |count: usize| -> __mmask16 { ((1u32 << count.min(16)) - 1) as __mmask16 };
    let vectors: Vec<_> = plan
        .vectors
        .iter()
        .enumerate()
        .map(|(v, pv)| {
            let masks = [first(pv.counts[0]), first(pv.counts[1])];
            let (index, tap) = (_mm512_loadu_si512(pv.index.as_ptr().cast()), _mm512_loadu_ps(pv.tap.as_ptr()));
            (pv.bases, masks, index, tap, first(plan.pixels - 16 * v))
        })
        .collect();
    for pair in 0..pairs {
        let (gp, tp) = (g.as_ptr().add(pair * ow), taps.as_ptr().add(pair * ow));
        let out = dx.as_mut_ptr().add(pair * plan.pixels).cast::<f32>();
        for (v, &(bases, masks, index, tap, store)) in vectors.iter().enumerate() {
            // (A load with an empty mask reads nothing: `wrapping_add` makes no claim that
            // its address is inside.)
            let load = |p: *const f32| {
                let a = _mm512_maskz_loadu_ps(masks[0], p.wrapping_add(bases[0]));
                let b = _mm512_maskz_loadu_ps(masks[1], p.wrapping_add(bases[1]));
                _mm512_permutex2var_ps(a, index, b)
            };
            let own = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(load(tp), tap);
            _mm512_mask_storeu_ps(out.add(16 * v), store, _mm512_maskz_mov_ps(own, load(gp)));
        }
    }
}

/// Direct 2-D convolution with stride 1 and no dilation, without im2col: `[N, C, H, W]`
/// images `x` and `[O, C, KH, KW]` filters `w` (both row-major), zero padding `padding`, an
/// optional bias `[O]`: `[N, O, OH, OW]`, row-major, with the bias already in. The columns of
/// im2col (25x the image for a 5x5 kernel) are never written.
///
/// Compiled for AVX-512, AVX2+FMA and any CPU, picked at run time. Each image is copied once
/// into a zero-padded buffer, and each step keeps a block of sums in registers while it
/// runs over every tap of every channel. Two orientations of the block:
/// - filters in the lanes ([`lanes_image`]): `P` output columns of one or two vectors of
///   filters, one weight load per filter vector and one broadcast pixel per column and tap;
///   the sums come out as `[column, filter]` and go to their planes one value at a time;
/// - output columns in the lanes ([`columns_image`]): a few vectors of positions for a few
///   filters, the image loads shared by the filters and each broadcast weight by the
///   vectors, but some lanes on the padding columns.
///
/// The first wins unless the filters have few taps (the move of each output to its plane
/// then weighs more): on the `cnn` benchmark's 5x5 layers (AMD Zen 5, batch 64, 2 threads),
/// 1 -> 16 channels took 203 us with filters and 107 us with columns in AVX-512's lanes,
/// and 180 and 176 us in AVX2's; 16 -> 32 channels 254 and 341 us (AVX-512), 486 and 705
/// us (AVX2). The kernel of eight columns by eight filters these replaced took 269 and 537 us.
/// The output is not zeroed first: the kernels write each value once.
///
/// Images are spread over the threads, and with fewer images than threads (inference) each
/// image's groups of filters too.
///
/// Shapes Winograd's algorithm covers (3x3 and 5x5 kernels, at least 8 channels and 8
/// filters) go to [`super::winograd`] instead, as do their gradients
/// ([`conv2d_input_grad`], [`conv2d_weight_grad`]).
pub(super) fn conv2d_direct(
    x: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let isa = Isa::detect();
    if winograd_applies(dims) {
        if let Some(out) = super::winograd::forward(isa, x, dims, w, o, kernel, padding, bias) {
            return out;
        }
    }
    conv2d_lanes(isa, None, x, dims, w, o, kernel, padding, bias)
}

/// [`conv2d_direct`] compiled for `isa`, with the kernel's `orientation` (`None`: the one
/// [`conv2d_direct`] picks; tests and comparisons run each).
#[allow(clippy::too_many_arguments)]
fn conv2d_lanes(
    isa: Isa,
    orientation: Option<Orientation>,
    x: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let ([n, c, h, wd], [oh, ow]) = (dims.input, dims.output);
    let plane = oh * ow;
    if n * o * plane == 0 {
        return vec![0.0; n * o * plane];
    }
    let plan = LanesPlan::new(isa, orientation, dims, w, o, kernel, padding, bias);
    // Every output is written once by the kernels: no zeroing first (that pass cost a fifth
    // of the first layer's time).
    let mut out: Vec<f32> = Vec::with_capacity(n * o * plane);
    let few_images = n < rayon::current_num_threads();
    // One padded image per task, reused: each image writes the same positions, so the
    // padding stays zero.
    out.spare_capacity_mut()[..n * o * plane].par_chunks_mut(o * plane).enumerate().for_each_init(
        || (plan.image_buffer(), Vec::new()),
        |(img, scratch), (bi, dst)| plan.run(&x[bi * c * h * wd..][..c * h * wd], img, dst, scratch, few_images),
    );
    // SAFETY: the kernels wrote every plane of every image (`LanesImage`'s contract).
    unsafe { out.set_len(n * o * plane) };
    out
}

/// What [`conv2d_lanes`] runs each image with: the kernel and its sizes, the filters as
/// `[tap, filter]` and the bias, padded to whole groups of filters.
struct LanesPlan {
    image: LanesImage,
    shape: LanesShape,
    wt: Vec<f32>,
    bias: Vec<f32>,
    /// Filters per call of the kernel.
    group: usize,
    /// Values the kernel's loads may run past the padded image.
    overrun: usize,
    padding: [usize; 2],
    /// The unpadded image's height and width.
    hw: [usize; 2],
}

impl LanesPlan {
    /// The plan for `o` filters `w` (`[O, C, KH, KW]`) over images of `dims`, with `padding`,
    /// an optional bias and the kernel's `orientation` (`None`: picked by the taps).
    #[allow(clippy::too_many_arguments)]
    fn new(
        isa: Isa,
        orientation: Option<Orientation>,
        dims: ImageDims,
        w: &[f32],
        o: usize,
        kernel: [usize; 2],
        padding: [usize; 2],
        bias: Option<&[f32]>,
    ) -> LanesPlan {
        let ([_, c, h, wd], [oh, ow]) = (dims.input, dims.output);
        let [kh, kw] = kernel;
        let taps = c * kh * kw;
        let orientation =
            orientation.unwrap_or(if taps < 2 * isa.lanes() { Orientation::Columns } else { Orientation::Filters });
        assert!(
            oh + kh == h + 2 * padding[0] + 1 && ow + kw == wd + 2 * padding[1] + 1,
            "conv2d_direct: output {oh}x{ow} is not a stride-1 convolution of {h}x{wd} padded by {padding:?} by {kh}x{kw}"
        );
        // (values the kernel's loads may run past the image, filters per group, columns per
        // step, kernel)
        let (overrun, group, p, image) = match orientation {
            Orientation::Filters => {
                let (lanes, fb, p, image) = lanes_kernel(isa, o, ow);
                (0, fb * lanes, p, image)
            }
            Orientation::Columns => {
                let (step, f, image) = columns_kernel(isa);
                (step, f, 1, image)
            }
        };
        let filters = o.div_ceil(group) * group;
        // The filters as [tap, filter] (filters past `o` are zero; their sums are dropped), and
        // the bias as one row of it.
        let mut wt = vec![0.0f32; taps * filters];
        for f in 0..o {
            for t in 0..taps {
                wt[t * filters + f] = w[f * taps + t];
            }
        }
        let mut b = vec![0.0f32; filters];
        if let Some(bias) = bias {
            b[..o].copy_from_slice(&bias[..o]);
        }
        // The padded image's rows are wide enough for whole steps of `p` columns; the columns
        // kernel's vectors run on past the last row by up to `overrun` values.
        let (hp, wp) = (h + 2 * padding[0], ow.div_ceil(p) * p + kw - 1);
        let shape = LanesShape { c, hp, wp, kh, kw, oh, ow, filters };
        LanesPlan { image, shape, wt, bias: b, group, overrun, padding, hw: [h, wd] }
    }

    /// A zeroed buffer for one padded image (reused image after image: each writes the same
    /// positions, so the padding stays zero).
    fn image_buffer(&self) -> Vec<f32> {
        vec![0.0f32; self.shape.c * self.shape.hp * self.shape.wp + self.overrun]
    }

    /// The `[C, H, W]` image `x` convolved into `dst` (its `[O, OH, OW]` planes, every value
    /// written), through the padded image buffer `img` ([`LanesPlan::image_buffer`]) and the
    /// kernel's `scratch`; with `split`, the groups of filters go over the threads.
    fn run(&self, x: &[f32], img: &mut [f32], dst: &mut [MaybeUninit<f32>], scratch: &mut Vec<f32>, split: bool) {
        let LanesShape { c, hp, wp, oh, ow, .. } = self.shape;
        copy_padded(x, [c, self.hw[0], self.hw[1]], self.padding, [hp, wp], img);
        let img = &*img;
        let run = |scratch: &mut Vec<f32>, (gi, planes): (usize, &mut [MaybeUninit<f32>])| {
            // SAFETY: `isa` runs on this CPU (`Isa::detect`, or `Isa::available` in tests);
            // the buffers have the sizes `LanesImage` asks for: the image `c·hp·wp` with `wp`
            // a whole number of `p`-column steps plus the kernel, the weights and bias
            // `filters` wide, `planes` whole planes of this group's filters.
            unsafe { (self.image)(img, &self.wt, &self.bias, self.shape, gi * self.group, planes, scratch) }
        };
        if split {
            dst.par_chunks_mut(self.group * oh * ow).enumerate().for_each_init(Vec::new, run);
        } else {
            dst.chunks_mut(self.group * oh * ow).enumerate().for_each(|task| run(scratch, task));
        }
    }
}

/// A stride-1, undilated convolution followed by 2x2 max pooling with stride 2 (the usual
/// convolution block), image by image: each image's convolution goes to a buffer the task
/// keeps and is pooled from there (in the core's cache when images are spread over the
/// threads; with fewer images than threads, each image's filters are), so the full-size
/// output (`cnn`'s first layer: 2.4 MB a batch) is never written out and read back. The values and
/// taps are [`max_pool`]'s of [`conv2d_direct`]'s output, bit for bit. `None` where the
/// convolution would take Winograd's path (see [`conv2d_direct`]).
pub(super) fn conv2d_max_pool2(
    x: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    bias: Option<&[f32]>,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let isa = Isa::detect();
    if winograd_applies(dims) && super::winograd::applies(isa, dims, o, kernel, padding) {
        return None;
    }
    Some(conv2d_max_pool2_with(isa, None, x, dims, w, o, kernel, padding, bias))
}

/// [`conv2d_max_pool2`] compiled for `isa`, with the convolution kernel's `orientation`.
#[allow(clippy::too_many_arguments)]
fn conv2d_max_pool2_with(
    isa: Isa,
    orientation: Option<Orientation>,
    x: &[f32],
    dims: ImageDims,
    w: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    bias: Option<&[f32]>,
) -> (Vec<f32>, Vec<f32>) {
    let ([n, c, h, wd], [oh, ow]) = (dims.input, dims.output);
    let (ph, pw) = (oh / 2, ow / 2);
    let (plane, pooled) = (oh * ow, ph * pw);
    let len = n * o * pooled;
    if len == 0 {
        return (vec![0.0; len], vec![0.0; len]);
    }
    let plan = LanesPlan::new(isa, orientation, dims, w, o, kernel, padding, bias);
    let few_images = n < rayon::current_num_threads();
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let mut taps: Vec<f32> = Vec::with_capacity(len);
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(o * pooled)
        .zip(taps.spare_capacity_mut()[..len].par_chunks_mut(o * pooled))
        .enumerate()
        .for_each_init(
            || (plan.image_buffer(), Vec::new(), Vec::<f32>::with_capacity(o * plane)),
            |(img, scratch, conv), (bi, (vals, at))| {
                let out = &mut conv.spare_capacity_mut()[..o * plane];
                plan.run(&x[bi * c * h * wd..][..c * h * wd], img, out, scratch, few_images);
                // SAFETY: `run` wrote all `o·plane` values (`LanesImage`'s contract), and
                // `f32` has no invalid bit patterns.
                let out: &[f32] = unsafe { std::slice::from_raw_parts(out.as_ptr().cast(), o * plane) };
                if oh % 2 == 0 {
                    // With an even height the planes are one tall image of 2x2 windows.
                    max_pool_2x2(isa, out, ow, pw, vals, at);
                    return;
                }
                let planes =
                    out.chunks_exact(plane).zip(vals.chunks_exact_mut(pooled).zip(at.chunks_exact_mut(pooled)));
                for (src, (v, t)) in planes {
                    max_pool_2x2(isa, src, ow, pw, v, t);
                }
            },
        );
    // SAFETY: the images partition all `len` values of both, and `max_pool_2x2` wrote every
    // output row of each image's planes.
    unsafe {
        values.set_len(len);
        taps.set_len(len);
    }
    (values, taps)
}

/// Copies one `[C, H, W]` image into the zero-padded `[C, hp, wp]` buffer `dst`, `padding`
/// rows and columns in from each plane's top-left corner (the rest of `dst` is left as it is:
/// zeros, in the kernels' buffers, which only ever receive the same image positions).
fn copy_padded(image: &[f32], [c, h, w]: [usize; 3], padding: [usize; 2], [hp, wp]: [usize; 2], dst: &mut [f32]) {
    for (ch, plane) in image.chunks_exact(h * w).take(c).enumerate() {
        for (y, row) in plane.chunks_exact(w).enumerate() {
            dst[(ch * hp + y + padding[0]) * wp + padding[1]..][..w].copy_from_slice(row);
        }
    }
}

/// The sizes [`conv2d_lanes`]'s kernel runs over: the padded image (`c` planes of `hp` rows
/// of `wp` columns), the kernel, the output, and the filters padded to whole groups.
#[derive(Clone, Copy)]
struct LanesShape {
    c: usize,
    hp: usize,
    wp: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    filters: usize,
}

/// One image and one group of filters of [`conv2d_lanes`]: the padded image, the
/// `[tap, filters]` weights, the padded bias, the sizes, the group's first filter and its
/// `[group filters (fewer in the last group), OH, OW]` output.
///
/// # Safety
/// The CPU must run the kernel's instruction set, and the buffers must have the sizes
/// [`LanesShape`] names, `wp` at least the output width rounded up to the kernel's step plus
/// `KW - 1`, and the image one step longer than its planes (the columns kernel's last
/// loads run past the last row). The kernels assert these. The kernel writes every value of
/// its output planes; `scratch` is a buffer it may grow and reuse between calls.
type LanesImage = unsafe fn(&[f32], &[f32], &[f32], LanesShape, usize, &mut [MaybeUninit<f32>], &mut Vec<f32>);

/// The kernel [`conv2d_lanes`] runs for `o` filters and `ow` output columns on `isa`:
/// (lanes, filter vectors per step, columns per step, kernel). One filter vector when the
/// filters fit in it, else two; the column step that wastes the fewest columns on `ow`
/// (then the widest), within the registers: columns x vectors sums, the weight vectors and
/// one broadcast pixel (AVX-512 has 32, AVX2 16).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn lanes_kernel(isa: Isa, o: usize, ow: usize) -> (usize, usize, usize, LanesImage) {
    let best = |options: &[(usize, LanesImage)]| {
        let cost = |p: usize| (ow.div_ceil(p) * p, usize::MAX - p);
        options.iter().copied().min_by_key(|&(p, _)| cost(p)).expect("kernels for every width")
    };
    // The instances of `lanes_image` for `$fb` filter vectors and each column step `$p`,
    // compiled with the target features `$feature`: the best step for `ow`.
    macro_rules! pick {
        ($feature:tt $simd:ty, $fb:literal, [$($p:literal),+]) => {{
            let (p, k) = best(&[$(($p, instance!(LanesImage, fn(i: &[f32], w: &[f32], b: &[f32], s: LanesShape, g: usize, d: &mut [MaybeUninit<f32>], t: &mut Vec<f32>), $feature, lanes_image::<$simd, $fb, $p>))),+]);
            (<$simd as Simd>::LANES, $fb, p, k)
        }};
    }
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 if o <= 16 => pick!(["avx512f"] Avx512, 1, [24, 16, 8]),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => pick!(["avx512f"] Avx512, 2, [12, 8]),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 if o <= 8 => pick!(["avx2,fma"] Avx2, 1, [12, 8]),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => pick!(["avx2,fma"] Avx2, 2, [6, 4]),
        _ => pick!([] Portable, 1, [4]),
    }
}

/// Which of [`conv2d_lanes`]'s two kernels runs: filters in the lanes ([`lanes_image`]), or
/// output columns in the lanes ([`columns_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Orientation {
    /// Filters in the lanes: any width, but every output is moved to its plane one at a time.
    Filters,
    /// Columns in the lanes: vectors of whole planes, some wasted on the padding columns.
    Columns,
}

/// The columns kernel [`conv2d_lanes`] runs on `isa`: (output positions per step, filters
/// per step, kernel). The registers hold filters x vectors sums, the step's image vectors
/// and one broadcast weight: 4 x 6 + 6 + 1 of AVX-512's 32, 4 x 2 + 2 + 1 of AVX2's 16
/// (the shapes that timed fastest on the `cnn` benchmark's first layer; 16 x 1 on AVX-512
/// was 22% slower).
fn columns_kernel(isa: Isa) -> (usize, usize, LanesImage) {
    macro_rules! pick {
        ($feature:tt $simd:ty, $f:literal, $q:literal) => {
            (
                <$simd as Simd>::LANES * $q,
                $f,
                instance!(
                    LanesImage,
                    fn(
                        i: &[f32],
                        w: &[f32],
                        b: &[f32],
                        s: LanesShape,
                        g: usize,
                        d: &mut [MaybeUninit<f32>],
                        t: &mut Vec<f32>,
                    ),
                    $feature,
                    columns_image::<$simd, $f, $q>
                ),
            )
        };
    }
    match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => pick!(["avx512f"] Avx512, 4, 6),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => pick!(["avx2,fma"] Avx2, 4, 2),
        _ => pick!([] Portable, 8, 1),
    }
}

/// [`LanesImage`]'s body with the output columns in the lanes: `F` filters by `Q` vectors of
/// positions per step. The image's planes are read as one flat row: output `(y, x)` sits at
/// `y·wp + x` and its tap `(c, i, j)` at `(c·hp + i)·wp + j` past it, so each tap is `Q`
/// contiguous vector loads, each multiplied by every filter's broadcast weight (one
/// broadcast per `Q` multiply-adds). The `wp - OW` columns past each output row are computed
/// into `scratch` and dropped when the sums are copied to the planes.
#[inline(always)]
unsafe fn columns_image<S: Simd, const F: usize, const Q: usize>(
    img: &[f32],
    wt: &[f32],
    bias: &[f32],
    shape: LanesShape,
    first: usize,
    dst: &mut [MaybeUninit<f32>],
    scratch: &mut Vec<f32>,
) {
    let LanesShape { c, hp, wp, kh, kw, oh, ow, filters } = shape;
    let plane = oh * ow;
    let count = dst.len() / plane.max(1);
    let span = (oh - 1) * wp + ow;
    let step = Q * S::LANES;
    let steps = span.div_ceil(step);
    assert!(count <= F && first + F <= filters && dst.len() == count * plane);
    assert!(hp + 1 >= oh + kh && wp + 1 >= ow + kw && img.len() >= c * hp * wp + step);
    assert!(wt.len() >= c * kh * kw * filters && bias.len() >= filters);
    // The sums of each filter over the flat positions, before the padding columns are dropped.
    let row = steps * step;
    if scratch.len() < F * row {
        scratch.resize(F * row, 0.0);
    }
    let flat = &mut scratch[..F * row];
    for q0 in (0..span).step_by(step) {
        let mut acc: [[S::V; Q]; F] = std::array::from_fn(|f| [S::splat(bias.as_ptr().add(first + f)); Q]);
        for ch in 0..c {
            for i in 0..kh {
                let line = img.as_ptr().add((ch * hp + i) * wp + q0);
                let mut tap = wt.as_ptr().add((ch * kh + i) * kw * filters + first);
                for j in 0..kw {
                    let v: [S::V; Q] = std::array::from_fn(|q| S::load(line.add(j + q * S::LANES)));
                    for (f, a) in acc.iter_mut().enumerate() {
                        let wf = S::splat(tap.add(f));
                        for (a, &v) in a.iter_mut().zip(&v) {
                            *a = S::fma(wf, v, *a);
                        }
                    }
                    tap = tap.add(filters);
                }
            }
        }
        for (f, a) in acc.iter().enumerate() {
            for (q, &a) in a.iter().enumerate() {
                S::store(flat.as_mut_ptr().add(f * row + q0 + q * S::LANES), a);
            }
        }
    }
    for (f, out) in dst.chunks_exact_mut(plane).enumerate() {
        for (y, out) in out.chunks_exact_mut(ow).enumerate() {
            let from = &flat[f * row + y * wp..][..ow];
            if ow < S::LANES {
                for (o, &v) in out.iter_mut().zip(from) {
                    o.write(v);
                }
                continue;
            }
            // Whole vectors, the last one ending at the row's end (overlapping the one before
            // it with the same values): the per-row `memcpy` calls this replaces were 3.4% of
            // the `cnn` benchmark (its first convolution's rows of 24 values).
            let (src, to) = (from.as_ptr(), out.as_mut_ptr().cast::<f32>());
            let mut x = 0;
            while x < ow {
                let at = x.min(ow - S::LANES);
                S::store(to.add(at), S::load(src.add(at)));
                x += S::LANES;
            }
        }
    }
}

/// [`LanesImage`]'s body: `FB` vectors of filters, `P` output columns per step.
#[inline(always)]
unsafe fn lanes_image<S: Simd, const FB: usize, const P: usize>(
    img: &[f32],
    wt: &[f32],
    bias: &[f32],
    shape: LanesShape,
    first: usize,
    dst: &mut [MaybeUninit<f32>],
    scratch: &mut Vec<f32>,
) {
    let LanesShape { c, hp, wp, kh, kw, oh, ow, filters } = shape;
    let group = FB * S::LANES;
    let plane = oh * ow;
    let count = dst.len() / plane.max(1);
    assert!(count <= group && first + group <= filters && dst.len() == count * plane);
    assert!(img.len() >= c * hp * wp && hp + 1 >= oh + kh && wp + 1 >= ow.div_ceil(P) * P + kw);
    assert!(wt.len() >= c * kh * kw * filters && bias.len() >= filters);
    // The sums of one step, as [column, filter], on their way to the output's planes.
    if scratch.len() < P * group {
        scratch.resize(P * group, 0.0);
    }
    let tile = &mut scratch[..P * group];
    let start: [S::V; FB] = std::array::from_fn(|v| S::load(bias.as_ptr().add(first + v * S::LANES)));
    for y in 0..oh {
        for x0 in (0..ow).step_by(P) {
            let mut acc = [start; P];
            for ch in 0..c {
                for i in 0..kh {
                    let row = img.as_ptr().add((ch * hp + y + i) * wp + x0);
                    let mut tap = wt.as_ptr().add((ch * kh + i) * kw * filters + first);
                    for j in 0..kw {
                        let wv: [S::V; FB] = std::array::from_fn(|v| S::load(tap.add(v * S::LANES)));
                        for (col, sums) in acc.iter_mut().enumerate() {
                            let px = S::splat(row.add(col + j));
                            for (s, &wf) in sums.iter_mut().zip(&wv) {
                                *s = S::fma(wf, px, *s);
                            }
                        }
                        tap = tap.add(filters);
                    }
                }
            }
            for (col, sums) in acc.iter().enumerate() {
                for (v, &s) in sums.iter().enumerate() {
                    S::store(tile.as_mut_ptr().add(col * group + v * S::LANES), s);
                }
            }
            let width = P.min(ow - x0);
            for (f, out) in dst.chunks_exact_mut(plane).enumerate() {
                let out = &mut out[y * ow + x0..][..width];
                for (col, o) in out.iter_mut().enumerate() {
                    o.write(tile[col * group + f]);
                }
            }
        }
    }
}

/// The filters' gradient of a stride-1, undilated convolution, without im2col:
/// `dW[f, c, i, j] = Σ_n Σ_(y, x) g[n, f, y, x] · x[n, c, y + i - ph, x + j - pw]` (0 in the
/// padding), for `[N, C, H, W]` images `x` and the `[N, O, OH, OW]` output gradient `g`, both
/// row-major; `[O, C, KH, KW]`, row-major.
///
/// Filters go in the vector lanes. Per image, the output gradient is turned to
/// `[OH·OW, O]` (a position's filters side by side), and each step keeps the sums of a block
/// of taps for one or two vectors of filters in registers while it runs over every output
/// position: per position one or two vector loads of the gradient and one broadcast pixel
/// per tap. Images are spread over the threads, each summing into its own copy of the
/// gradient; the copies are added at the end. The im2col columns this replaces (25x the
/// input for a 5x5 kernel) are never written. Shapes [`winograd_applies`] and
/// [`super::winograd`] cover take Winograd's adjoint instead.
pub(super) fn conv2d_weight_grad(
    x: &[f32],
    dims: ImageDims,
    g: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let isa = Isa::detect();
    if winograd_applies(dims) {
        if let Some(dw) = super::winograd::filters_grad(isa, x, dims, g, o, kernel, padding) {
            return dw;
        }
    }
    weight_grad_with(isa, x, dims, g, o, kernel, padding)
}

/// [`conv2d_weight_grad`] compiled for `isa` (tests run each the CPU has).
fn weight_grad_with(
    isa: Isa,
    x: &[f32],
    dims: ImageDims,
    g: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let plane = dims.output[0] * dims.output[1];
    assert_eq!(g.len(), dims.input[0] * o * plane, "conv2d_weight_grad: output gradient length");
    // Each image's output gradient, transposed.
    let transpose = |b: usize, gt: &mut [f32], filters: usize, _: &mut Vec<f32>| {
        transpose_planes(isa, &g[b * o * plane..][..o * plane], o, plane, gt, filters);
    };
    weight_grad_by(isa, x, dims, o, kernel, padding, transpose)
}

/// `gt[p·filters + f] = g[f·plane + p]` for the `o` planes of `g`, and 0 for the filters
/// past `o` (to `filters`, a multiple of 16 on AVX-512) when `gt` starts as zeros or
/// AVX-512 writes them: a position's filters side by side.
fn transpose_planes(isa: Isa, g: &[f32], o: usize, plane: usize, gt: &mut [f32], filters: usize) {
    #[cfg(target_arch = "x86_64")]
    if isa.kind() == Kind::Avx512 {
        // SAFETY: `isa` is AVX-512 only on a CPU that has it (`Isa`); the function checks
        // `filters` (whole vectors) and the lengths.
        unsafe { transpose_avx512(g, o, plane, gt, filters) };
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    // Transposed 8 positions at a time: one 8-value read per filter, and stores to known
    // offsets (one value at a time, with a bounds check each, was 5.7% of `cnn`).
    let mut rows = gt.chunks_exact_mut(8 * filters);
    for (p0, block) in (0..plane).step_by(8).zip(&mut rows) {
        for f in 0..o {
            let src: &[f32; 8] = g[f * plane + p0..][..8].try_into().expect("8 positions");
            for (k, &v) in src.iter().enumerate() {
                block[k * filters + f] = v;
            }
        }
    }
    let done = plane / 8 * 8;
    for (p, row) in gt[done * filters..plane * filters].chunks_exact_mut(filters).enumerate() {
        for (f, v) in row[..o].iter_mut().enumerate() {
            *v = g[f * plane + done + p];
        }
    }
}

/// The filters' gradient of a stride-1, undilated convolution followed by 2x2 max pooling
/// with stride 2 ([`conv2d_max_pool2`]), from the pooled output's gradient `g` and the
/// pooling's `taps` (both `[N, O, OH/2, OW/2]`): each image's gradient is placed straight
/// into the transposed layout the kernel reads, at the pixels the maxima came from, with
/// zeros elsewhere, the values [`max_pool_backward`] and the transpose would give. The
/// full-size gradient (2.4 MB for `cnn`'s first layer) is never written.
pub(super) fn conv2d_pooled_weight_grad(
    x: &[f32],
    dims: ImageDims,
    g: &[f32],
    taps: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    pooled_weight_grad_with(Isa::detect(), x, dims, g, taps, o, kernel, padding)
}

/// [`conv2d_pooled_weight_grad`] compiled for `isa`.
#[allow(clippy::too_many_arguments)]
fn pooled_weight_grad_with(
    isa: Isa,
    x: &[f32],
    dims: ImageDims,
    g: &[f32],
    taps: &[f32],
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let [oh, ow] = dims.output;
    let (pw, pooled) = (ow / 2, (oh / 2) * (ow / 2));
    if pooled == 0 {
        // No window: no gradient reaches the filters.
        let [_, c, _, _] = dims.input;
        return vec![0.0; o * c * kernel[0] * kernel[1]];
    }
    let n = dims.input[0];
    assert!(g.len() == n * o * pooled && taps.len() == g.len(), "conv2d_max_pool2: output gradient length");
    let place = |b: usize, gt: &mut [f32], filters: usize, scratch: &mut Vec<f32>| {
        let (gb, tb) = (&g[b * o * pooled..][..o * pooled], &taps[b * o * pooled..][..o * pooled]);
        // The image's pooled gradient and taps with a window's filters side by side (the
        // filters past `o` have gradient 0, so the pixel their tap 0 picks gets 0).
        scratch.clear();
        scratch.resize(2 * pooled * filters, 0.0);
        let (gp, tp) = scratch.split_at_mut(pooled * filters);
        transpose_planes(isa, gb, o, pooled, gp, filters);
        transpose_planes(isa, tb, o, pooled, tp, filters);
        // Each window's four pixels: the filters whose maximum came from the pixel get the
        // gradient, the others 0. The row and column past the last window (an odd size) are
        // zeros.
        #[cfg(target_arch = "x86_64")]
        if isa.kind() == Kind::Avx512 {
            // SAFETY: `isa` is AVX-512 only on a CPU that has it; `filters` is whole vectors
            // there, `gp` and `tp` hold `pooled` windows and `gt` `oh·ow` pixels of them.
            unsafe { expand_windows_avx512(gp, tp, [oh, ow], filters, gt) };
            return;
        }
        for (py, (gr, tr)) in gp.chunks_exact(pw * filters).zip(tp.chunks_exact(pw * filters)).enumerate() {
            for (tap, row) in [(0.0, 2 * py), (2.0, 2 * py + 1)] {
                let out = &mut gt[row * ow * filters..][..ow * filters];
                for (px, (gw, tw)) in gr.chunks_exact(filters).zip(tr.chunks_exact(filters)).enumerate() {
                    let pair = &mut out[2 * px * filters..][..2 * filters];
                    let (left, right) = pair.split_at_mut(filters);
                    for (((l, r), &v), &t) in left.iter_mut().zip(right).zip(gw).zip(tw) {
                        *l = if t == tap { v } else { 0.0 };
                        *r = if t == tap + 1.0 { v } else { 0.0 };
                    }
                }
                out[2 * pw * filters..].fill(0.0);
            }
        }
        gt[2 * (oh / 2) * ow * filters..].fill(0.0);
    };
    weight_grad_by(isa, x, dims, o, kernel, padding, place)
}

/// [`pooled_weight_grad_with`]'s placing of one image's pooled gradient on AVX-512: for each
/// 2x2 window and vector of filters, its gradient `gp` and taps `tp` (`[window, filters]`)
/// become the four pixels' rows of `gt` (`[OH·OW, filters]`), each lane the gradient where
/// the tap is the pixel's and 0 elsewhere; the row and column no window covers are zeros.
///
/// # Safety
/// The CPU must have AVX-512F.
///
/// # Panics
/// When `filters` is not whole vectors or a slice is too short.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn expand_windows_avx512(gp: &[f32], tp: &[f32], [oh, ow]: [usize; 2], filters: usize, gt: &mut [f32]) {
    use std::arch::x86_64::*;
    let (ph, pw) = (oh / 2, ow / 2);
    assert!(filters.is_multiple_of(16) && gp.len() >= ph * pw * filters && tp.len() >= gp.len().min(ph * pw * filters));
    assert!(gt.len() >= oh * ow * filters);
    let out = gt.as_mut_ptr();
    let pixel = |y: usize, x: usize| out.add((y * ow + x) * filters);
    let taps = [0.0f32, 1.0, 2.0, 3.0].map(|t| _mm512_set1_ps(t));
    for py in 0..ph {
        for px in 0..pw {
            let at = (py * pw + px) * filters;
            let rows = [
                pixel(2 * py, 2 * px),
                pixel(2 * py, 2 * px + 1),
                pixel(2 * py + 1, 2 * px),
                pixel(2 * py + 1, 2 * px + 1),
            ];
            for v in (0..filters).step_by(16) {
                // SAFETY: window `at` and filters v..v + 16 lie inside `gp` and `tp`, and the
                // window's pixels inside `gt` (asserted).
                let (g, t) = (_mm512_loadu_ps(gp.as_ptr().add(at + v)), _mm512_loadu_ps(tp.as_ptr().add(at + v)));
                for (row, tap) in rows.iter().zip(&taps) {
                    let own = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(t, *tap);
                    _mm512_storeu_ps(row.add(v), _mm512_maskz_mov_ps(own, g));
                }
            }
        }
        if ow % 2 == 1 {
            for y in [2 * py, 2 * py + 1] {
                // SAFETY: the row's last pixel, inside `gt` (asserted); all-zero bits are 0.0.
                std::ptr::write_bytes(pixel(y, ow - 1), 0, filters);
            }
        }
    }
    // SAFETY: the rows past the last window's, inside `gt` (asserted).
    std::ptr::write_bytes(pixel(2 * ph, 0), 0, (oh - 2 * ph) * ow * filters);
}

/// The filters' gradient of a stride-1, undilated convolution, each image's output gradient
/// written as `[OH·OW, filters]` into the task's buffer by `gradient(image, buffer, filters,
/// scratch)` (`filters`: `o` rounded up to the kernel's groups; the columns past `o` are to
/// be zeros; `scratch` a buffer the task keeps).
fn weight_grad_by(
    isa: Isa,
    x: &[f32],
    dims: ImageDims,
    o: usize,
    kernel: [usize; 2],
    padding: [usize; 2],
    gradient: impl Fn(usize, &mut [f32], usize, &mut Vec<f32>) + Sync,
) -> Vec<f32> {
    // (lanes, filter vectors per step, taps per step, the per-image kernel). The register
    // budget: taps x vectors sums, the vectors of gradient and one broadcast pixel, within
    // AVX-512's 32 registers and AVX2's 16.
    macro_rules! pick {
        ($feature:tt $simd:ty, $fb:literal, $t:literal) => {
            (
                <$simd as Simd>::LANES,
                $fb,
                $t,
                instance!(
                    WeightGradImage,
                    fn(gt: &[f32], img: &[f32], offs: &[usize], shape: WeightGradShape, sums: &mut [f32]),
                    $feature,
                    weight_grad_image::<$simd, $fb, $t>
                ),
            )
        };
    }
    let (lanes, fb, t, image): (usize, usize, usize, WeightGradImage) = match isa.kind() {
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 if o <= 16 => pick!(["avx512f"] Avx512, 1, 26),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => pick!(["avx512f"] Avx512, 2, 12),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 if o <= 8 => pick!(["avx2,fma"] Avx2, 1, 13),
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => pick!(["avx2,fma"] Avx2, 2, 6),
        _ => pick!([] Portable, 1, 4),
    };
    let ([n, c, h, w], [oh, ow]) = (dims.input, dims.output);
    let [kh, kw] = kernel;
    let (hp, wp) = (h + 2 * padding[0], w + 2 * padding[1]);
    assert!(
        oh + kh == hp + 1 && ow + kw == wp + 1,
        "conv2d_weight_grad: output {oh}x{ow} is not a stride-1 convolution of {hp}x{wp} by {kh}x{kw}"
    );
    let taps = c * kh * kw;
    assert_eq!(x.len(), n * c * h * w, "conv2d_weight_grad: input length");
    if n * o * taps * oh * ow == 0 {
        return vec![0.0; o * taps];
    }
    let group = fb * lanes;
    let filters = o.div_ceil(group) * group;
    let blocks = taps.div_ceil(t);
    // Where each tap reads in a padded image, relative to the output position; the taps past
    // the last one (filling the last block) read the first pixel and their sums are dropped.
    let offsets: Vec<usize> = (0..blocks * t)
        .map(|tap| if tap < taps { ((tap / (kh * kw) * hp + tap / kw % kh) * wp) + tap % kw } else { 0 })
        .collect();
    let shape = WeightGradShape { filters, oh, ow, wp };
    let plane = oh * ow;
    let sums_len = blocks * t * filters;
    // Per task: the sums, a padded image, the transposed output gradient and scratch.
    let fresh = || (vec![0.0f32; sums_len], vec![0.0f32; c * hp * wp], vec![0.0f32; plane * filters], Vec::new());
    type Task = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);
    let per_image = |(mut sums, mut img, mut gt, mut scratch): Task, b: usize| {
        copy_padded(&x[b * c * h * w..][..c * h * w], [c, h, w], padding, [hp, wp], &mut img);
        gradient(b, &mut gt, filters, &mut scratch);
        // SAFETY: `isa` is this CPU's or one it runs (`Isa::available`); the buffers have
        // the lengths `WeightGradImage` asks for (`filters` whole groups of the kernel's
        // vectors), and the asserts above tie the sizes to a stride-1 convolution of the
        // padded image.
        unsafe { image(&gt, &img, &offsets, shape, &mut sums) };
        (sums, img, gt, scratch)
    };
    // A few images per task: each task's copy of the sums is zeroed, then added at the end.
    let total = (0..n)
        .into_par_iter()
        .with_min_len(n.div_ceil(2 * rayon::current_num_threads()))
        .fold(fresh, per_image)
        .map(|(sums, ..)| sums)
        .reduce_with(|mut a, b| {
            a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
            a
        })
        .unwrap_or_else(|| vec![0.0; sums_len]);
    let mut dw = vec![0.0f32; o * taps];
    for (f, row) in dw.chunks_exact_mut(taps).enumerate() {
        for (tap, v) in row.iter_mut().enumerate() {
            *v = total[tap * filters + f];
        }
    }
    dw
}

/// `gt[p·filters + f] = g[f·plane + p]` for the `o` filters' rows of `plane` values, and 0
/// for the filters past `o` (to `filters`): the output gradient with the filters in lanes, as
/// the filters' gradient kernel reads it. Sixteen positions of sixteen filters at a time,
/// transposed in registers; the plain loop (stores 16 values apart) was 6.3% of the `cnn`
/// benchmark's time on the Intel Xeon (AVX-512) in perf.
///
/// # Safety
/// The CPU must have AVX-512F.
///
/// # Panics
/// When `filters` is not a multiple of 16 or below `o`, or a slice is too short.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_avx512(g: &[f32], o: usize, plane: usize, gt: &mut [f32], filters: usize) {
    use std::arch::x86_64::*;
    assert!(filters.is_multiple_of(16) && o <= filters && g.len() >= o * plane && gt.len() >= plane * filters);
    let full = plane / 16 * 16;
    for f0 in (0..filters).step_by(16) {
        for p0 in (0..full).step_by(16) {
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, v) in r.iter_mut().enumerate().take(o.saturating_sub(f0)) {
                // SAFETY: row f0 + i < o, positions p0..p0 + 16 <= plane: inside `g`.
                *v = unsafe { _mm512_loadu_ps(g.as_ptr().add((f0 + i) * plane + p0)) };
            }
            // Pairs of rows interleaved within each 128-bit lane, then pairs of pairs, then
            // the four lanes gathered: the standard 16 x 16 transpose.
            let mut t = [_mm512_setzero_ps(); 16];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
            }
            let pd = _mm512_castps_pd;
            for i in 0..4 {
                let [a, b, c, d] = [t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]];
                r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(a), pd(c)));
                r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(a), pd(c)));
                r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(b), pd(d)));
                r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(b), pd(d)));
            }
            // Now lane L of r[4i + j] holds position 4L + j of rows 4i..4i + 4.
            let out = gt.as_mut_ptr();
            for j in 0..4 {
                let lo =
                    [_mm512_shuffle_f32x4::<0x44>(r[j], r[4 + j]), _mm512_shuffle_f32x4::<0x44>(r[8 + j], r[12 + j])];
                let hi =
                    [_mm512_shuffle_f32x4::<0xEE>(r[j], r[4 + j]), _mm512_shuffle_f32x4::<0xEE>(r[8 + j], r[12 + j])];
                let columns = [
                    (j, _mm512_shuffle_f32x4::<0x88>(lo[0], lo[1])),
                    (4 + j, _mm512_shuffle_f32x4::<0xDD>(lo[0], lo[1])),
                    (8 + j, _mm512_shuffle_f32x4::<0x88>(hi[0], hi[1])),
                    (12 + j, _mm512_shuffle_f32x4::<0xDD>(hi[0], hi[1])),
                ];
                for (k, v) in columns {
                    // SAFETY: position p0 + k < plane, filters f0..f0 + 16 <= filters: inside
                    // `gt`.
                    unsafe { _mm512_storeu_ps(out.add((p0 + k) * filters + f0), v) };
                }
            }
        }
    }
    for p in full..plane {
        for f in 0..filters {
            gt[p * filters + f] = if f < o { g[f * plane + p] } else { 0.0 };
        }
    }
}

/// The sizes one image's step of [`conv2d_weight_grad`] runs over.
#[derive(Clone, Copy)]
struct WeightGradShape {
    /// Filters, padded to whole groups of vectors: the row length of the transposed gradient
    /// and of the sums.
    filters: usize,
    oh: usize,
    ow: usize,
    /// The padded image's row length.
    wp: usize,
}

/// One image of [`conv2d_weight_grad`] for one instruction set: `gt` the transposed output
/// gradient `[OH·OW, filters]`, `img` the padded image, `offsets` the taps' offsets (a whole
/// number of blocks), `sums` `[taps in blocks, filters]` to add onto.
///
/// # Safety
/// The CPU must run the kernel's instruction set (asserted: `filters` a whole number of the
/// kernel's groups of vectors); `gt` must hold `OH·OW·filters` values,
/// `sums` `offsets.len()·filters`, and every `y·wp + x + offset` (y < OH, x < OW) must index
/// `img`.
type WeightGradImage = unsafe fn(&[f32], &[f32], &[usize], WeightGradShape, &mut [f32]);

/// [`WeightGradImage`]'s body: every group of `FB` vectors of filters, every block of `T` taps.
#[inline(always)]
unsafe fn weight_grad_image<S: Simd, const FB: usize, const T: usize>(
    gt: &[f32],
    img: &[f32],
    offsets: &[usize],
    shape: WeightGradShape,
    sums: &mut [f32],
) {
    let WeightGradShape { filters, oh, ow, wp } = shape;
    assert!(filters % (FB * S::LANES) == 0, "the filters in whole groups of vectors");
    assert!(gt.len() >= oh * ow * filters && sums.len() >= offsets.len() * filters);
    assert!(offsets.iter().all(|&off| (oh - 1) * wp + ow - 1 + off < img.len()), "a tap reads past the image");
    for group in (0..filters).step_by(FB * S::LANES) {
        for (block, offs) in offsets.chunks_exact(T).enumerate() {
            let offs: &[usize; T] = offs.try_into().expect("whole blocks of taps");
            let acc_at = sums.as_mut_ptr().add(block * T * filters + group);
            let mut acc = [[S::zero(); FB]; T];
            for (t, row) in acc.iter_mut().enumerate() {
                for (fb, a) in row.iter_mut().enumerate() {
                    *a = S::load(acc_at.add(t * filters + fb * S::LANES));
                }
            }
            for y in 0..oh {
                for x in 0..ow {
                    let gp = gt.as_ptr().add((y * ow + x) * filters + group);
                    let gv: [S::V; FB] = std::array::from_fn(|fb| S::load(gp.add(fb * S::LANES)));
                    let px = img.as_ptr().add(y * wp + x);
                    for (row, &off) in acc.iter_mut().zip(offs) {
                        let v = S::splat(px.add(off));
                        for (a, &gf) in row.iter_mut().zip(&gv) {
                            *a = S::fma(gf, v, *a);
                        }
                    }
                }
            }
            for (t, row) in acc.iter().enumerate() {
                for (fb, &a) in row.iter().enumerate() {
                    S::store(acc_at.add(t * filters + fb * S::LANES), a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// Pixel `(y, x)` of channel `ch` of image `b` of the row-major `[N, C, H, W]` batch `x`
    /// seen with `padding` zeros around each plane, as f64.
    fn padded_pixel(
        x: &[f32],
        [c, h, w]: [usize; 3],
        [ph, pw]: [usize; 2],
        b: usize,
        ch: usize,
        y: isize,
        xx: isize,
    ) -> f64 {
        let (y, xx) = (y - ph as isize, xx - pw as isize);
        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
            return 0.0;
        }
        f64::from(x[((b * c + ch) * h + y as usize) * w + xx as usize])
    }

    /// Both kernels of the direct convolution, compiled for every instruction set this CPU
    /// runs, against the definition summed in f64, on shapes with partial column steps,
    /// partial groups of filters, three groups, padding, a 1x1 kernel and no bias.
    #[test]
    fn direct_convolution_kernels_match_the_definition() {
        let mut rng = Rng::seed(12);
        // ([N, C, H, W], [O, KH, KW], padding, bias)
        let cases = [
            ([2, 3, 7, 13], [9, 3, 3], [1, 1], true),
            ([1, 2, 5, 21], [17, 3, 2], [2, 1], false),
            ([2, 1, 9, 9], [16, 5, 5], [0, 0], true),
            ([3, 1, 28, 28], [16, 5, 5], [0, 0], true),
            ([2, 16, 12, 12], [32, 5, 5], [0, 0], true),
            ([1, 2, 6, 30], [40, 3, 3], [1, 2], true),
            ([2, 3, 5, 4], [7, 1, 1], [0, 0], false),
        ];
        for ([n, c, h, w], [o, kh, kw], [ph, pw], with_bias) in cases {
            let x = rng.normals(n * c * h * w);
            let wt = rng.normals(o * c * kh * kw);
            let b = rng.normals(o);
            let bias = with_bias.then_some(b.as_slice());
            let (oh, ow) = (h + 2 * ph - kh + 1, w + 2 * pw - kw + 1);
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            let at = |bi: usize, ch: usize, y: isize, xx: isize| padded_pixel(&x, [c, h, w], [ph, pw], bi, ch, y, xx);
            let orientations = [Orientation::Filters, Orientation::Columns];
            let runs =
                Isa::available().into_iter().flat_map(|isa| orientations.map(|or| (isa, or))).map(|(isa, or)| {
                    let got = conv2d_lanes(isa, Some(or), &x, dims, &wt, o, [kh, kw], [ph, pw], bias);
                    (format!("{or:?} in the lanes, {isa:?}"), got)
                });
            for (path, got) in runs {
                for (idx, &g) in got.iter().enumerate() {
                    let (bi, f, y, xx) = (idx / (o * oh * ow), idx / (oh * ow) % o, idx / ow % oh, idx % ow);
                    let mut want = bias.map_or(0.0, |b| f64::from(b[f]));
                    for ch in 0..c {
                        for i in 0..kh {
                            for j in 0..kw {
                                let wv = f64::from(wt[((f * c + ch) * kh + i) * kw + j]);
                                want += wv * at(bi, ch, (y + i) as isize, (xx + j) as isize);
                            }
                        }
                    }
                    assert!(
                        (f64::from(g) - want).abs() < 1e-4,
                        "{path}, x {:?} w {:?}: output {idx}: {g} vs {want}",
                        [n, c, h, w],
                        [o, kh, kw]
                    );
                }
            }
        }
    }

    /// The filters' gradient kernel, compiled for every instruction set this CPU runs,
    /// against the definition summed in f64: filter counts that fill one, two and a part of
    /// a vector group, tap counts that leave a partial block, padding, one image and several.
    #[test]
    fn weight_gradient_matches_the_definition_on_every_instruction_set() {
        let mut rng = Rng::seed(21);
        // ([N, C, H, W], [O, KH, KW], padding)
        let cases = [
            ([3, 1, 12, 12], [16, 5, 5], [0, 0]),
            ([2, 16, 8, 8], [32, 5, 5], [0, 0]),
            ([1, 3, 7, 11], [5, 3, 2], [1, 1]),
            ([4, 2, 6, 9], [20, 3, 3], [2, 0]),
            ([2, 1, 5, 5], [33, 1, 1], [0, 0]),
        ];
        for ([n, c, h, w], [o, kh, kw], [ph, pw]) in cases {
            let x = rng.normals(n * c * h * w);
            let (oh, ow) = (h + 2 * ph - kh + 1, w + 2 * pw - kw + 1);
            let g = rng.normals(n * o * oh * ow);
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            let at = |b: usize, ch: usize, y: usize, xx: usize| {
                padded_pixel(&x, [c, h, w], [ph, pw], b, ch, y as isize, xx as isize)
            };
            for isa in Isa::available() {
                let got = weight_grad_with(isa, &x, dims, &g, o, [kh, kw], [ph, pw]);
                assert_eq!(got.len(), o * c * kh * kw);
                for (idx, &v) in got.iter().enumerate() {
                    let (f, ch, i, j) = (idx / (c * kh * kw), idx / (kh * kw) % c, idx / kw % kh, idx % kw);
                    let mut want = 0.0f64;
                    for b in 0..n {
                        for y in 0..oh {
                            for xx in 0..ow {
                                want += f64::from(g[((b * o + f) * oh + y) * ow + xx]) * at(b, ch, y + i, xx + j);
                            }
                        }
                    }
                    assert!(
                        (f64::from(v) - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{isa:?}, x {:?} w {:?}: dW[{idx}] = {v} vs {want}",
                        [n, c, h, w],
                        [o, kh, kw]
                    );
                }
            }
        }
    }

    /// The convolution and 2x2 max pooling in one pass give the two kernels' values and taps
    /// bit for bit, for every instruction set this CPU runs and both kernel orientations:
    /// `cnn`'s first layer, odd output heights and widths (whose last row or column no window
    /// covers), padding, one image (fewer than the threads: its filters are split), no bias,
    /// and rows of 8 windows (AVX-512's narrow-row pooling). The filters' gradient from the
    /// pooled gradient and taps matches the full-size path's (the pooling's adjoint, then the
    /// filters' gradient kernel), to the rounding of sums split over the threads in another
    /// way.
    #[test]
    fn convolution_with_max_pooling_matches_the_two_kernels() {
        let mut rng = Rng::seed(44);
        // ([N, C, H, W], [O, KH, KW], padding, bias)
        let cases = [
            ([3, 1, 28, 28], [16, 5, 5], [0, 0], true),
            ([2, 3, 9, 12], [9, 3, 3], [0, 1], false),
            ([1, 2, 8, 11], [20, 3, 2], [1, 0], true),
            ([5, 1, 7, 7], [4, 3, 3], [0, 0], true),
            // 10x16 outputs: AVX-512's pooling of narrow rows (8 windows a row).
            ([2, 1, 12, 18], [8, 3, 3], [0, 0], true),
        ];
        let win = Window::POOL_2X2;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for ([n, c, h, w], [o, kh, kw], padding, with_bias) in cases {
            let x = rng.normals(n * c * h * w);
            let wt = rng.normals(o * c * kh * kw);
            let b = rng.normals(o);
            let bias = with_bias.then_some(b.as_slice());
            let (oh, ow) = (h + 2 * padding[0] - kh + 1, w + 2 * padding[1] - kw + 1);
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            let pool = ImageDims { input: [n, o, oh, ow], output: [oh / 2, ow / 2] };
            let g = rng.normals(n * o * (oh / 2) * (ow / 2));
            let case = format!("x {:?} w {:?} padding {padding:?}", [n, c, h, w], [o, kh, kw]);
            for isa in Isa::available() {
                let mut taps = None;
                for or in [Orientation::Filters, Orientation::Columns] {
                    let (values, t) = conv2d_max_pool2_with(isa, Some(or), &x, dims, &wt, o, [kh, kw], padding, bias);
                    let full = conv2d_lanes(isa, Some(or), &x, dims, &wt, o, [kh, kw], padding, bias);
                    let (want_values, want_taps) = max_pool_with(isa, &full, pool, &win);
                    assert_eq!(bits(&values), bits(&want_values), "{isa:?} {or:?}, {case}: values");
                    assert_eq!(bits(&t), bits(&want_taps), "{isa:?} {or:?}, {case}: taps");
                    taps = Some(t);
                }
                let taps = taps.expect("two orientations ran");
                let got = pooled_weight_grad_with(isa, &x, dims, &g, &taps, o, [kh, kw], padding);
                let dy = max_pool_backward_with(isa, &g, &taps, pool, &win);
                let want = weight_grad_with(isa, &x, dims, &dy, o, [kh, kw], padding);
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                assert!(scale > 0.1, "{case}: a gradient worth comparing");
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() <= 1e-5 * scale, "{isa:?}, {case}: dW[{i}] {a} vs {b}");
                }
            }
        }
    }

    /// The input's gradient, image by image, against the definition summed in f64: every
    /// output gradient sent back to the pixel each tap read (none for taps in the padding),
    /// with stride, dilation and padding, and [`col2im`] of the batch's columns gives the same.
    #[test]
    fn input_gradient_matches_the_definition() {
        let mut rng = Rng::seed(33);
        // ([N, C, H, W], [O, KH, KW], stride, padding, dilation)
        let cases = [
            ([3, 16, 12, 12], [32, 5, 5], [1, 1], [0, 0], [1, 1]),
            ([2, 3, 7, 9], [4, 3, 3], [1, 1], [1, 2], [1, 1]),
            ([2, 2, 9, 8], [3, 3, 2], [2, 3], [1, 0], [2, 1]),
        ];
        for ([n, c, h, w], [o, kh, kw], stride, padding, dilation) in cases {
            let win = Window { kernel: [kh, kw], stride, padding, dilation };
            let size = |i: usize, k: usize, a: usize| (i + 2 * padding[a] - dilation[a] * (k - 1) - 1) / stride[a] + 1;
            let (oh, ow) = (size(h, kh, 0), size(w, kw, 1));
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            let g = rng.normals(n * o * oh * ow);
            let wt = rng.normals(o * c * kh * kw);
            let mut want = vec![0.0f64; n * c * h * w];
            for b in 0..n {
                for f in 0..o {
                    for y in 0..oh {
                        for x in 0..ow {
                            let gv = f64::from(g[((b * o + f) * oh + y) * ow + x]);
                            for ch in 0..c {
                                for i in 0..kh {
                                    for j in 0..kw {
                                        let iy = (y * stride[0] + i * dilation[0]) as isize - padding[0] as isize;
                                        let ix = (x * stride[1] + j * dilation[1]) as isize - padding[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                            continue;
                                        }
                                        let wv = f64::from(wt[((f * c + ch) * kh + i) * kw + j]);
                                        want[((b * c + ch) * h + iy as usize) * w + ix as usize] += gv * wv;
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // The batch's columns Wᵀ·g, [C·KH·KW, N·OH·OW], for col2im.
            let (ck, l) = (c * kh * kw, oh * ow);
            let mut cols = vec![0.0f32; ck * n * l];
            for r in 0..ck {
                for b in 0..n {
                    for p in 0..l {
                        cols[r * n * l + b * l + p] = (0..o).map(|f| wt[f * ck + r] * g[(b * o + f) * l + p]).sum();
                    }
                }
            }
            let by_image = input_grad_by_columns(&g, &wt, o, dims, &win);
            let by_batch = col2im(&cols, dims, &win);
            for (what, got) in [("by image", by_image), ("col2im", by_batch)] {
                for (idx, (&v, &want)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(v) - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{what}, {win:?}: dx[{idx}] = {v} vs {want}"
                    );
                }
            }
        }
    }

    /// `[N, C, H, W]` shapes for the 2x2 pooling paths: even heights (the forward pass pools a
    /// run of planes as one tall image) and odd ones (plane by plane; the backward pass writes
    /// the last row's zeros), odd widths, and planes large enough for one plane per task or
    /// three with a shorter last run (`planes_per_task`); the `cnn` benchmark's first pooling
    /// (12 outputs a row: one masked vector on AVX-512) and 33 outputs a row (two vectors and
    /// one output); narrow rows whose row pairs share a vector (`w = 2·ow`, `ow` dividing 16:
    /// the `cnn` benchmark's second pooling, 8x8), in whole groups of 16 outputs, with rows
    /// left over, and plane by plane (an odd height).
    const POOLING_SHAPES: [(usize, usize, usize, usize); 12] = [
        (2, 3, 6, 10),
        (3, 2, 7, 9),
        (1, 5, 64, 129),
        (1, 5, 65, 128),
        (1, 7, 50, 101),
        (2, 4, 24, 24),
        (3, 2, 8, 66),
        (3, 5, 8, 8),
        (1, 3, 6, 8),
        (2, 3, 4, 16),
        (1, 1, 10, 4),
        (1, 2, 9, 8),
    ];

    /// `len` values drawn from {0, 1, NaN} (ties and NaNs everywhere), and with `normals` a
    /// quarter of them standard normal instead.
    fn ties_and_nans(rng: &mut Rng, len: usize, normals: bool) -> Vec<f32> {
        let kinds = if normals { 4.0 } else { 3.0 };
        (0..len)
            .map(|_| match rng.uniform(0.0, kinds) as u32 {
                0 => 0.0,
                1 => 1.0,
                2 => f32::NAN,
                _ => rng.standard_normal(),
            })
            .collect()
    }

    /// The 2x2 pooling's backward path against each output's gradient added at its tap, on
    /// odd sizes (a row and a column past the last window, which get 0) and with ties and
    /// NaNs deciding the taps.
    #[test]
    fn two_by_two_pooling_backward_sends_each_gradient_to_its_tap() {
        let mut rng = Rng::seed(5);
        for (n, c, h, w) in POOLING_SHAPES {
            check_two_by_two_backward(&mut rng, n, c, h, w);
        }
    }

    fn check_two_by_two_backward(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize) {
        let src = ties_and_nans(rng, n * c * h * w, true);
        let win = Window::POOL_2X2;
        let (oh, ow) = (h / 2, w / 2);
        let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
        let (_, taps) = max_pool(&src, dims, &win);
        let g = rng.normals(n * c * oh * ow);
        let mut want = vec![0.0f32; n * c * h * w];
        for p in 0..n * c {
            for y in 0..oh {
                for x in 0..ow {
                    let t = taps[(p * oh + y) * ow + x] as usize;
                    want[p * h * w + (2 * y + t / 2) * w + 2 * x + t % 2] += g[(p * oh + y) * ow + x];
                }
            }
        }
        for isa in Isa::available() {
            let got = max_pool_backward_with(isa, &g, &taps, dims, &win);
            assert_eq!(got.len(), want.len());
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{isa:?}, {:?}: dx[{i}]: {a} vs {b}", [n, c, h, w]);
            }
        }
    }

    /// The 2x2 pooling path on values drawn from {0, 1, NaN} (ties and NaNs everywhere)
    /// against a plain raster-order scan: the first maximum wins a tie, the first NaN wins
    /// over any number, as in PyTorch.
    #[test]
    fn two_by_two_pooling_keeps_the_first_maximum_and_the_first_nan() {
        let mut rng = Rng::seed(9);
        for (n, c, h, w) in POOLING_SHAPES {
            check_two_by_two(&mut rng, n, c, h, w);
        }
    }

    fn check_two_by_two(rng: &mut Rng, n: usize, c: usize, h: usize, w: usize) {
        let src = ties_and_nans(rng, n * c * h * w, false);
        // The same ties without a NaN (AVX-512 skips the NaN rule for vectors without one).
        let numbers: Vec<f32> = src.iter().map(|&v| if v.is_nan() { -2.0 } else { v }).collect();
        let win = Window::POOL_2X2;
        let dims = ImageDims { input: [n, c, h, w], output: [h / 2, w / 2] };
        for isa in Isa::available() {
            check_two_by_two_on(isa, &src, [n, c, h, w], dims, &win);
            check_two_by_two_on(isa, &numbers, [n, c, h, w], dims, &win);
        }
    }

    fn check_two_by_two_on(isa: Isa, src: &[f32], [n, c, h, w]: [usize; 4], dims: ImageDims, win: &Window) {
        let (values, taps) = max_pool_with(isa, src, dims, win);
        for p in 0..n * c {
            for y in 0..h / 2 {
                for x in 0..w / 2 {
                    let window =
                        [(0, 0), (0, 1), (1, 0), (1, 1)].map(|(dy, dx)| src[p * h * w + (2 * y + dy) * w + 2 * x + dx]);
                    let first_nan = window.iter().position(|v| v.is_nan());
                    let best = window.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let want = first_nan.unwrap_or_else(|| window.iter().position(|&v| v == best).unwrap());
                    let at = (p * (h / 2) + y) * (w / 2) + x;
                    assert_eq!(taps[at], want as f32, "{isa:?}, plane {p} ({y}, {x}): window {window:?}");
                    assert_eq!(values[at].to_bits(), window[want].to_bits(), "{isa:?}, plane {p} ({y}, {x})");
                }
            }
        }
    }
}
