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
            let mut out = vec![0.0; n];
            out.par_chunks_mut(PAR_CHUNK)
                .zip(src.par_chunks(PAR_CHUNK))
                .for_each(|(o, s)| o.iter_mut().zip(s).for_each(|(o, &x)| *o = f(x)));
            return out;
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

/// `f(a, b, c)` elementwise over three operands of one shape.
pub fn zip3_map(
    a: (&[f32], &Layout),
    b: (&[f32], &Layout),
    c: (&[f32], &Layout),
    f: impl Fn(f32, f32, f32) -> f32,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.1.elem_count());
    for_each_run(a.1.shape(), [a.1, b.1, c.1], |[oa, ob, oc], len, [sa, sb, sc]| {
        out.extend((0..len).map(|j| f(a.0[oa + j * sa], b.0[ob + j * sb], c.0[oc + j * sc])));
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

/// Batched matrix product `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`.
///
/// `la` and `lb` are already broadcast to the output's batch shape; any strides work (a
/// transposed operand is read in place), which is what makes `x·Wᵀ` free of copies.
pub fn matmul(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, m: usize, k: usize, n: usize) -> Vec<f32> {
    let batch_shape = &la.shape()[..la.rank() - 2];
    let batch: usize = batch_shape.iter().product();
    let mut out = vec![0.0f32; batch * m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let (ra, sa) = (la.rank(), la.strides());
    let (rb, sb) = (lb.rank(), lb.strides());
    let mut index = vec![0usize; batch_shape.len()];
    for bi in 0..batch {
        // Offsets of this batch entry in each operand.
        let mut rem = bi;
        for (d, size) in batch_shape.iter().enumerate().rev() {
            index[d] = rem % size;
            rem /= size;
        }
        let oa = la.offset() + index.iter().zip(sa).map(|(i, s)| i * s).sum::<usize>();
        let ob = lb.offset() + index.iter().zip(sb).map(|(i, s)| i * s).sum::<usize>();
        let dst = &mut out[bi * m * n..(bi + 1) * m * n];
        // SAFETY: the layouts were checked against the storages when the tensors were made, so
        // every (row, col) offset the strides produce lies inside `a` and `b`; `dst` is a fresh
        // m x n row-major buffer. gemm computes dst = 0·dst + 1·(a·b) without reading dst.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
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
                gemm::Parallelism::Rayon(0),
            );
        }
    }
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
