//! Elementwise kernels: one tight loop per kernel of the set, picked by one `match` per call.
//!
//! Contiguous inputs are plain slices (vectorised by the compiler for the CPU's widest
//! vectors, [`super::simd::vectorized`], split over rayon's threads when large); strided,
//! transposed and broadcast inputs are walked run by run ([`Runs`]), also split over threads
//! when large.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::fastmath;
use super::simd::vectorized;
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::layout::{Layout, Runs};

/// Element counts from which elementwise kernels split the work over rayon's threads.
pub(super) const PAR_MIN_ELEMS: usize = 1 << 16;
/// Elements per parallel task.
pub(super) const PAR_CHUNK: usize = 1 << 14;

/// A new buffer of `shape`'s elements, each run of the walk over `layouts` filled by
/// `run(dst, offsets, strides)` (`dst` is the run's part of the output).
fn fill_runs<const N: usize>(
    shape: &[usize],
    layouts: [&Layout; N],
    run: impl Fn(&mut [f32], [usize; N], [usize; N]) + Sync,
) -> Vec<f32> {
    let runs = Runs::new(shape, layouts);
    let fill = |first: usize, dst: &mut [MaybeUninit<f32>]| {
        // Zeroed here, chunk by chunk on the thread that fills it (in cache), rather than
        // the whole buffer up front on one thread: `run` takes initialised values.
        let dst: &mut [f32] = zeroed(dst);
        let mut at = 0;
        // Once per chunk, not per run: runs can be a few values long ([N, 3] + [3]).
        vectorized(|| {
            runs.for_each_in(first..first + dst.len(), |offsets, len, strides| {
                run(&mut dst[at..at + len], offsets, strides);
                at += len;
            })
        });
    };
    // SAFETY: `fill` zeroes each chunk whole before the runs are written into it.
    unsafe { chunked(runs.elem_count(), fill) }
}

/// A new buffer of `n` values, split into chunks of [`PAR_CHUNK`] filled in parallel when
/// `n` is large by `fill(first, chunk)`, the chunk of the values from index `first`. Nothing
/// is zeroed first: a fresh buffer zeroed on the calling thread was 2.7% of the `cnn`
/// benchmark's time (a serial `memset` while the other thread waited).
///
/// # Safety
/// `fill` must write every value of each chunk it is given.
pub(super) unsafe fn chunked(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let spare = &mut out.spare_capacity_mut()[..n];
    if n >= PAR_MIN_ELEMS {
        spare.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, dst)| fill(c * PAR_CHUNK, dst));
    } else {
        fill(0, spare);
    }
    // SAFETY: the capacity is at least `n`, and `fill` wrote all n values (the caller's
    // contract), chunk by chunk.
    unsafe { out.set_len(n) };
    out
}

/// `dst` with every value set to 0, as initialised values.
pub(super) fn zeroed(dst: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    dst.iter_mut().for_each(|d| _ = d.write(0.0));
    // SAFETY: every value was just written, and `MaybeUninit<f32>` has f32's layout.
    unsafe { &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `f` of each element of the contiguous `src`, as a new buffer.
fn map_contiguous(src: &[f32], f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let fill = |first: usize, dst: &mut [MaybeUninit<f32>]| {
        let src = &src[first..first + dst.len()];
        vectorized(|| {
            for (d, &x) in dst.iter_mut().zip(src) {
                d.write(f(x));
            }
        })
    };
    // SAFETY: `fill` writes each value of its chunk: the chunk is zipped with as many
    // inputs (a shorter slice would have panicked at the indexing).
    unsafe { chunked(src.len(), fill) }
}

/// `f` of each pair of elements of the contiguous `a` and `b` (of equal lengths), as a new
/// buffer.
fn zip_contiguous(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "zip of unequal lengths");
    let fill = |first: usize, dst: &mut [MaybeUninit<f32>]| {
        let (a, b) = (&a[first..first + dst.len()], &b[first..first + dst.len()]);
        vectorized(|| {
            for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
                d.write(f(x, y));
            }
        })
    };
    // SAFETY: as in `map_contiguous`: each chunk is zipped with as many pairs of inputs.
    unsafe { chunked(a.len(), fill) }
}

/// The elements of `layout` in row-major order, as a new buffer.
pub(super) fn to_contiguous(src: &[f32], layout: &Layout) -> Vec<f32> {
    let n = layout.elem_count();
    if layout.is_contiguous() {
        return src[layout.offset()..layout.offset() + n].to_vec();
    }
    fill_runs(layout.shape(), [layout], |dst, [o], [s]| {
        if s == 1 {
            let len = dst.len();
            dst.copy_from_slice(&src[o..o + len]);
        } else {
            dst.iter_mut().enumerate().for_each(|(j, d)| *d = src[o + j * s]);
        }
    })
}

/// The elements of `layout` in row-major order: the storage slice itself when contiguous,
/// else a copy. For kernels that need row-major input.
pub(super) fn row_major<'a>(src: &'a [f32], layout: &Layout) -> std::borrow::Cow<'a, [f32]> {
    if layout.is_contiguous() {
        std::borrow::Cow::Borrowed(&src[layout.offset()..layout.offset() + layout.elem_count()])
    } else {
        std::borrow::Cow::Owned(to_contiguous(src, layout))
    }
}

/// Copies the elements of `src` (seen through `src_layout`) to the places `dst_layout` names in
/// `dst`. Both layouts have the same shape.
pub(super) fn copy_into(src: &[f32], src_layout: &Layout, dst: &mut [f32], dst_layout: &Layout) {
    let runs = Runs::new(src_layout.shape(), [src_layout, dst_layout]);
    runs.for_each_in(0..runs.elem_count(), |[os, od], len, [ss, sd]| {
        if ss == 1 && sd == 1 {
            dst[od..od + len].copy_from_slice(&src[os..os + len]);
        } else {
            for j in 0..len {
                dst[od + j * sd] = src[os + j * ss];
            }
        }
    });
}

/// `f` applied to every element.
fn map(src: &[f32], layout: &Layout, f: impl Fn(f32) -> f32 + Sync) -> Vec<f32> {
    let n = layout.elem_count();
    if layout.is_contiguous() {
        return map_contiguous(&src[layout.offset()..layout.offset() + n], f);
    }
    fill_runs(layout.shape(), [layout], |dst, [o], [s]| {
        if s == 1 {
            let len = dst.len();
            dst.iter_mut().zip(&src[o..o + len]).for_each(|(d, &x)| *d = f(x));
        } else {
            dst.iter_mut().enumerate().for_each(|(j, d)| *d = f(src[o + j * s]));
        }
    })
}

/// `f` applied slice by slice (a vectorised kernel of [`super::fastmath`]); strided inputs are
/// made contiguous first.
fn map_slices(src: &[f32], layout: &Layout, f: impl Fn(&[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let src = row_major(src, layout);
    let fill = |first: usize, dst: &mut [MaybeUninit<f32>]| {
        let dst: &mut [f32] = zeroed(dst);
        f(&src[first..first + dst.len()], dst);
    };
    // SAFETY: `fill` zeroes each chunk whole before `f` writes it.
    unsafe { chunked(src.len(), fill) }
}

/// `f(a, b)` for every pair of elements. Both layouts already have the output's shape
/// (broadcast axes have stride 0).
fn zip_map(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    debug_assert_eq!(la.shape(), lb.shape());
    let n = la.elem_count();
    if la.is_contiguous() && lb.is_contiguous() {
        return zip_contiguous(&a[la.offset()..la.offset() + n], &b[lb.offset()..lb.offset() + n], f);
    }
    fill_runs(la.shape(), [la, lb], |dst, [oa, ob], [sa, sb]| {
        let len = dst.len();
        match (sa, sb) {
            (1, 1) => dst.iter_mut().zip(&a[oa..oa + len]).zip(&b[ob..ob + len]).for_each(|((d, &x), &y)| *d = f(x, y)),
            (1, 0) => dst.iter_mut().zip(&a[oa..oa + len]).for_each(|(d, &x)| *d = f(x, b[ob])),
            (0, 1) => dst.iter_mut().zip(&b[ob..ob + len]).for_each(|(d, &y)| *d = f(a[oa], y)),
            _ => dst.iter_mut().enumerate().for_each(|(j, d)| *d = f(a[oa + j * sa], b[ob + j * sb])),
        }
    })
}

/// `cond != 0 ? t : f` elementwise; the three layouts have the output's shape.
pub(super) fn where_cond(c: &[f32], lc: &Layout, t: &[f32], lt: &Layout, f: &[f32], lf: &Layout) -> Vec<f32> {
    fill_runs(lc.shape(), [lc, lt, lf], |dst, [oc, ot, of], [sc, st, sf]| {
        for (j, d) in dst.iter_mut().enumerate() {
            *d = if c[oc + j * sc] != 0.0 { t[ot + j * st] } else { f[of + j * sf] };
        }
    })
}

/// The ReLU of one value: `x` where positive, 0 otherwise, and a NaN stays NaN (as PyTorch's);
/// shared by the ReLU kernel and the product's fused bias + ReLU ([`super::matmul`]).
#[inline(always)]
pub(super) fn relu(x: f32) -> f32 {
    if x > 0.0 || x.is_nan() {
        x
    } else {
        0.0
    }
}

/// ln(v), clamped at -100 as PyTorch's binary cross-entropy does.
fn clamped_ln(v: f32) -> f32 {
    v.ln().max(-100.0)
}

/// The unary kernel `op`.
pub(super) fn unary(src: &[f32], l: &Layout, op: UnaryOp) -> Vec<f32> {
    match op {
        UnaryOp::Affine { mul, add } => map(src, l, move |x| x * mul + add),
        UnaryOp::Exp => map(src, l, f32::exp),
        UnaryOp::Log => map(src, l, f32::ln),
        UnaryOp::Sqrt => map(src, l, f32::sqrt),
        UnaryOp::Powf(p) => map(src, l, move |x| x.powf(p)),
        UnaryOp::Abs => map(src, l, f32::abs),
        UnaryOp::Sign => map(src, l, |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        // Limits checked by the op (min <= max, neither NaN), so `clamp` cannot panic.
        UnaryOp::Clamp { min, max } => map(src, l, move |x| x.clamp(min, max)),
        UnaryOp::Step => map(src, l, |x| if x > 0.0 { 1.0 } else { 0.0 }),
        UnaryOp::Sigmoid => map_slices(src, l, fastmath::sigmoid_slice),
        UnaryOp::Tanh => map_slices(src, l, fastmath::tanh_slice),
        // A NaN stays NaN (f32::max would turn it into 0 and hide a diverging model).
        UnaryOp::Relu => map(src, l, relu),
        UnaryOp::LeakyRelu(slope) => map(src, l, move |x| if x > 0.0 { x } else { slope * x }),
        UnaryOp::BceTargetGrad => map(src, l, |p| clamped_ln(1.0 - p) - clamped_ln(p)),
        UnaryOp::Sin => map(src, l, f32::sin),
        UnaryOp::Cos => map(src, l, f32::cos),
        UnaryOp::Log1p => map(src, l, f32::ln_1p),
        UnaryOp::Expm1 => map(src, l, f32::exp_m1),
        UnaryOp::Erf => map(src, l, libm::erff),
        UnaryOp::Floor => map(src, l, f32::floor),
        UnaryOp::Ceil => map(src, l, f32::ceil),
        UnaryOp::Round => map(src, l, f32::round_ties_even),
    }
}

/// The binary kernel `op`.
pub(super) fn binary(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, op: BinaryOp) -> Vec<f32> {
    match op {
        BinaryOp::Add => zip_map(a, la, b, lb, |a, b| a + b),
        BinaryOp::Sub => zip_map(a, la, b, lb, |a, b| a - b),
        BinaryOp::Mul => zip_map(a, la, b, lb, |a, b| a * b),
        BinaryOp::Div => zip_map(a, la, b, lb, |a, b| a / b),
        BinaryOp::Maximum => zip_map(a, la, b, lb, |a, b| if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }),
        BinaryOp::Minimum => zip_map(a, la, b, lb, |a, b| if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) }),
        BinaryOp::SigmoidGrad => zip_map(a, la, b, lb, |g, y| g * y * (1.0 - y)),
        BinaryOp::TanhGrad => zip_map(a, la, b, lb, |g, y| g * (1.0 - y * y)),
        BinaryOp::ReluGrad => zip_map(a, la, b, lb, |g, y| if y > 0.0 { g } else { 0.0 }),
        BinaryOp::LeakyReluGrad(slope) => zip_map(a, la, b, lb, move |g, x| if x > 0.0 { g } else { slope * g }),
        BinaryOp::ClampGrad { min, max } => {
            zip_map(a, la, b, lb, move |g, x| if (min..=max).contains(&x) { g } else { 0.0 })
        }
        BinaryOp::Bce => zip_map(a, la, b, lb, |p, y| -(y * clamped_ln(p) + (1.0 - y) * clamped_ln(1.0 - p))),
        BinaryOp::BceInputGrad => zip_map(a, la, b, lb, |p, y| (p - y) / (p * (1.0 - p)).max(1e-12)),
        BinaryOp::BceWithLogits => zip_map(a, la, b, lb, |x, y| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p()),
        BinaryOp::Pow => zip_map(a, la, b, lb, f32::powf),
        BinaryOp::PowExponentGrad => {
            zip_map(a, la, b, lb, |a, b| if a == 0.0 && b >= 0.0 { 0.0 } else { a.powf(b) * a.ln() })
        }
    }
}

/// The comparison kernel `op`.
pub(super) fn compare(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, op: CmpOp) -> Vec<f32> {
    let f = |holds: bool| if holds { 1.0 } else { 0.0 };
    match op {
        CmpOp::Eq => zip_map(a, la, b, lb, |a, b| f(a == b)),
        CmpOp::Ne => zip_map(a, la, b, lb, |a, b| f(a != b)),
        CmpOp::Lt => zip_map(a, la, b, lb, |a, b| f(a < b)),
        CmpOp::Le => zip_map(a, la, b, lb, |a, b| f(a <= b)),
        CmpOp::Gt => zip_map(a, la, b, lb, |a, b| f(a > b)),
        CmpOp::Ge => zip_map(a, la, b, lb, |a, b| f(a >= b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_kernels_split_into_chunks_write_every_value() {
        // Past the parallel threshold and not a whole number of chunks: the last chunk is
        // short, and every value of every chunk must be the kernel's.
        let n = PAR_MIN_ELEMS + PAR_CHUNK / 2 + 3;
        let a: Vec<f32> = (0..n).map(|i| (i % 97) as f32 - 48.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 89) as f32 * 0.5 - 20.0).collect();
        let l = Layout::contiguous(&[n]);
        let relu = unary(&a, &l, UnaryOp::Relu);
        let sub = binary(&a, &l, &b, &l, BinaryOp::Sub);
        let tanh = unary(&b, &l, UnaryOp::Tanh);
        assert_eq!((relu.len(), sub.len(), tanh.len()), (n, n, n));
        for i in 0..n {
            assert_eq!(relu[i], a[i].max(0.0), "relu at {i}");
            assert_eq!(sub[i], a[i] - b[i], "sub at {i}");
            assert!((tanh[i] - b[i].tanh()).abs() < 1e-6, "tanh at {i}: {} vs {}", tanh[i], b[i].tanh());
        }
        // Strided (a transposed view of the same values) through the zeroed chunks.
        let (r, c) = (n / 7, 7);
        let lt = Layout::contiguous(&[r, c]).transpose(0, 1).unwrap();
        let neg = unary(&a, &lt, UnaryOp::Affine { mul: -1.0, add: 0.0 });
        for (k, &v) in neg.iter().enumerate() {
            let (i, j) = (k / r, k % r);
            assert_eq!(v, -a[j * c + i], "negated transpose at {k}");
        }
    }

    #[test]
    fn strided_walks_split_over_threads_match_the_serial_walk() {
        // A transposed [300, 400] view: large enough to be split into parallel chunks, with
        // chunk borders falling inside runs.
        let (r, c) = (300, 400);
        let src: Vec<f32> = (0..r * c).map(|i| i as f32).collect();
        let l = Layout::contiguous(&[r, c]).transpose(0, 1).unwrap();
        let out = to_contiguous(&src, &l);
        assert!(out.len() >= PAR_MIN_ELEMS);
        for (k, &v) in out.iter().enumerate() {
            let (i, j) = (k / r, k % r); // out[i][j] = src[j][i]
            assert_eq!(v, src[j * c + i], "element {k}");
        }
    }
}
