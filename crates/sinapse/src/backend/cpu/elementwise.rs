//! Elementwise kernels: one tight loop per kernel of the set, picked by one `match` per call.
//!
//! Contiguous inputs are plain slices (vectorised by the compiler, split over rayon's threads
//! when large); strided, transposed and broadcast inputs are walked run by run
//! ([`Runs`]), also split over threads when large.

use rayon::prelude::*;

use super::fastmath;
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
    let n = runs.elem_count();
    let mut out = vec![0.0f32; n];
    let fill = |first: usize, dst: &mut [f32]| {
        let mut at = 0;
        runs.for_each_in(first..first + dst.len(), |offsets, len, strides| {
            run(&mut dst[at..at + len], offsets, strides);
            at += len;
        });
    };
    if n >= PAR_MIN_ELEMS {
        out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, dst)| fill(c * PAR_CHUNK, dst));
    } else {
        fill(0, &mut out);
    }
    out
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
        let src = &src[layout.offset()..layout.offset() + n];
        if n >= PAR_MIN_ELEMS {
            return src.par_iter().with_min_len(PAR_CHUNK).map(|&x| f(x)).collect();
        }
        return src.iter().map(|&x| f(x)).collect();
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
    let mut out = vec![0.0f32; src.len()];
    if src.len() >= PAR_MIN_ELEMS {
        out.par_chunks_mut(PAR_CHUNK).zip(src.par_chunks(PAR_CHUNK)).for_each(|(o, s)| f(s, o));
    } else {
        f(&src, &mut out);
    }
    out
}

/// `f(a, b)` for every pair of elements. Both layouts already have the output's shape
/// (broadcast axes have stride 0).
fn zip_map(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
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
        UnaryOp::Relu => map(src, l, |x| if x > 0.0 || x.is_nan() { x } else { 0.0 }),
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
