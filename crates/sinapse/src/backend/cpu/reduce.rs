//! Reductions (sum, max, min, argmax, argmin over an axis or over all) and softmax.

use crate::backend::ReduceOp;
use crate::layout::Layout;

use rayon::prelude::*;

use super::elementwise::{row_major, PAR_CHUNK, PAR_MIN_ELEMS};
#[cfg(target_arch = "x86_64")]
use super::simd::Kind;
use super::simd::{vectorized, Isa};

/// `[outer, len, inner]`: the sizes before, of, and after axis `dim` of `shape` (`None`: all
/// elements as one axis).
fn split_at(shape: &[usize], dim: Option<usize>) -> (usize, usize, usize) {
    match dim {
        Some(d) => (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product()),
        None => (1, shape.iter().product(), 1),
    }
}

/// Reduces axis `dim` of the elements of `l` (every element when `None`).
pub(super) fn reduce(src: &[f32], l: &Layout, dim: Option<usize>, op: ReduceOp) -> Vec<f32> {
    let (outer, len, inner) = split_at(l.shape(), dim);
    reduce_rows(&row_major(src, l), outer, len, inner, op)
}

/// Softmax (or log-softmax) along axis `dim` of the elements of `l`.
pub(super) fn softmax(src: &[f32], l: &Layout, dim: usize, log: bool) -> Vec<f32> {
    let (outer, len, inner) = split_at(l.shape(), Some(dim));
    softmax_rows(&row_major(src, l), outer, len, inner, log)
}

/// `out[i, c] = [c = classes[i]]·s - e^lp[i, c]·s` over the row-major `[rows, n]`
/// log-probabilities `lp`: the gradient of a mean cross-entropy through its log-softmax, each
/// value rounded as the separate kernels it replaces round it (`exp`, then the product by
/// `s`, then the difference), so the two agree bit for bit. Filled in chunks, over the
/// threads when large ([`chunked`](super::elementwise::chunked)).
pub(super) fn cross_entropy_grad(lp: &[f32], n: usize, classes: &[usize], s: f32) -> Vec<f32> {
    if lp.is_empty() {
        return Vec::new();
    }
    let fill = |first: usize, dst: &mut [std::mem::MaybeUninit<f32>]| {
        // A chunk may start inside a row.
        let (mut row, mut c) = (first / n, first % n);
        for (o, &v) in dst.iter_mut().zip(&lp[first..]) {
            let picked = if c == classes[row] { s } else { 0.0 };
            o.write(picked - v.exp() * s);
            c += 1;
            if c == n {
                (row, c) = (row + 1, 0);
            }
        }
    };
    // SAFETY: `fill` writes every value of its chunk (`lp` holds one per output value).
    unsafe { super::elementwise::chunked(lp.len(), fill) }
}

/// Reduces the middle axis of `src` (row-major `[outer, len, inner]`, `len > 0` unless Sum)
/// and returns `[outer, inner]`. Large inputs are split over threads by output element (each
/// output is still reduced in order, so the result does not depend on the thread count).
fn reduce_rows(src: &[f32], outer: usize, len: usize, inner: usize, op: ReduceOp) -> Vec<f32> {
    let mut out = vec![0.0f32; outer * inner];
    if len == 0 || out.is_empty() {
        return out;
    }
    let block = |o: usize| &src[o * len * inner..(o + 1) * len * inner];
    if src.len() < PAR_MIN_ELEMS {
        for (o, dst) in out.chunks_mut(inner).enumerate() {
            reduce_block(block(o), len, inner, 0, dst, op);
        }
    } else if inner == 1 || outer >= rayon::current_num_threads() * 4 {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, dst)| reduce_block(block(o), len, inner, 0, dst, op));
    } else {
        // Few long output rows (a sum over the batch axis): split each row's outputs, in
        // slices of at least `MIN_COLUMNS`: a task sweeps all `len` rows of its slice, and a
        // narrower one reads a few values of each row's cache lines, one by one. (Slices of
        // PAR_CHUNK / len columns made a 1792 x 512 bias gradient 10 columns a task: 4-6% of
        // the `lstm` benchmark's time. Few columns now make few tasks: 4096 x 64 runs as one,
        // 4x faster than as 64.)
        const MIN_COLUMNS: usize = 64;
        let per_task = PAR_CHUNK.div_ceil(len).max(MIN_COLUMNS);
        for (o, row) in out.chunks_mut(inner).enumerate() {
            row.par_chunks_mut(per_task)
                .enumerate()
                .for_each(|(t, dst)| reduce_block(block(o), len, inner, t * per_task, dst, op));
        }
    }
    out
}

/// Reduces outputs `first..first + dst.len()` of one `[len, inner]` block into `dst`.
fn reduce_block(block: &[f32], len: usize, inner: usize, first: usize, dst: &mut [f32], op: ReduceOp) {
    let cols = first..first + dst.len();
    let rows = || block.chunks_exact(inner).map(|row| &row[cols.clone()]);
    match op {
        ReduceOp::Sum if inner == 1 => dst[0] = row_sum(block),
        ReduceOp::Sum => {
            dst.copy_from_slice(&block[cols.clone()]);
            vectorized(|| {
                for row in rows().skip(1) {
                    dst.iter_mut().zip(row).for_each(|(d, &x)| *d += x);
                }
            });
        }
        ReduceOp::Max | ReduceOp::Min => {
            let better = |x: f32, best: f32| match op {
                ReduceOp::Max => x > best || x.is_nan(),
                _ => x < best || x.is_nan(),
            };
            dst.copy_from_slice(&block[cols.clone()]);
            for row in rows().skip(1) {
                dst.iter_mut().zip(row).for_each(|(d, &x)| {
                    if !d.is_nan() && better(x, *d) {
                        *d = x
                    }
                });
            }
        }
        ReduceOp::ArgMax | ReduceOp::ArgMin => {
            for (i, d) in cols.zip(dst.iter_mut()) {
                let mut best = block[i];
                let mut at = 0;
                for j in 1..len {
                    let x = block[j * inner + i];
                    let wins = match op {
                        ReduceOp::ArgMax => x > best,
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

/// The sum of a row, accumulated in f64 so that long sums (losses) keep their digits, in 32
/// independent partial sums: the bias gradients of the `cnn` benchmark's convolutions sum rows
/// of 576 and 64 values, 1,024 and 2,048 of them a step. Eight partial sums fit one vector
/// register of f64, so every add waited for the one before (4 cycles each). With 32 kept in
/// registers (AVX-512 or AVX2, picked at run time), the first layer's bias gradient
/// (64 x 16 x 576 values) takes 38-40 us on the Intel Xeon (AVX-512) in a scratch timing.
fn row_sum(row: &[f32]) -> f32 {
    row_sum_with(Isa::detect(), row)
}

/// [`row_sum`] with its loop compiled for `isa` (tests run each the CPU has; every one gives
/// the same bits: each lane sums the same values in the same order).
fn row_sum_with(isa: Isa, row: &[f32]) -> f32 {
    const LANES: usize = 32;
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    let mut lanes = [0.0f64; LANES];
    match isa.kind() {
        // The sums in registers, written out: the compiled loop below kept them in memory
        // (its result array), one store and reload per add: 5.5% of the `cnn` benchmark.
        // SAFETY: `isa` is this CPU's (`Isa::detect`, or `Isa::available` in tests).
        #[cfg(target_arch = "x86_64")]
        Kind::Avx512 => unsafe { lanes_avx512(chunks, &mut lanes) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kind::Avx2 => unsafe { lanes_avx2(chunks, &mut lanes) },
        _ => {
            for chunk in chunks {
                for (lane, &x) in lanes.iter_mut().zip(chunk) {
                    *lane += f64::from(x);
                }
            }
        }
    }
    // Pairwise: a fixed order, the same on every machine.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    let mut sum = lanes[0];
    for &x in tail {
        sum += f64::from(x);
    }
    sum as f32
}

/// [`row_sum_with`]'s 32 lanes on AVX-512: four vectors of 8 f64 sums, lane `i` summing the
/// values at `i` mod 32 in order.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lanes_avx512(chunks: std::slice::ChunksExact<'_, f32>, lanes: &mut [f64; 32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_pd(); 4];
    for chunk in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_pd(*a, _mm512_cvtps_pd(_mm256_loadu_ps(chunk[8 * k..].as_ptr())));
        }
    }
    for (k, a) in acc.iter().enumerate() {
        _mm512_storeu_pd(lanes[8 * k..].as_mut_ptr(), *a);
    }
}

/// [`lanes_avx512`] on AVX2: eight vectors of 4 f64 sums.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(chunks: std::slice::ChunksExact<'_, f32>, lanes: &mut [f64; 32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_pd(); 8];
    for chunk in chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_pd(*a, _mm256_cvtps_pd(_mm_loadu_ps(chunk[4 * k..].as_ptr())));
        }
    }
    for (k, a) in acc.iter().enumerate() {
        _mm256_storeu_pd(lanes[4 * k..].as_mut_ptr(), *a);
    }
}

/// Softmax (or log-softmax) along the middle axis of a row-major `[outer, len, inner]` buffer.
///
/// Subtracting each lane's maximum first keeps `exp` from overflowing: softmax(x) =
/// softmax(x - c) for any c, and with c = max every exponent is <= 0.
fn softmax_rows(src: &[f32], outer: usize, len: usize, inner: usize, log: bool) -> Vec<f32> {
    let mut out = vec![0.0f32; outer * len * inner];
    if out.is_empty() {
        return out;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Row sums in 8 partial f64 sums: within one unit in the last place of the f32 result of
    /// a plain f64 sum, for lengths around the 8 lanes and long rows of mixed signs.
    #[test]
    fn row_sums_match_a_plain_f64_sum() {
        for len in [0, 1, 7, 8, 9, 17, 1000, 36_864] {
            let row: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.4).collect();
            let want = row.iter().map(|&x| f64::from(x)).sum::<f64>() as f32;
            let got = row_sum(&row);
            let ulp = (want.abs() * f32::EPSILON).max(f32::MIN_POSITIVE);
            assert!((got - want).abs() <= ulp, "length {len}: {got} vs {want}");
            for isa in Isa::available() {
                assert_eq!(row_sum_with(isa, &row).to_bits(), got.to_bits(), "{isa:?}, length {len}");
            }
        }
        // In f64: sixty-three 1s next to 1e8 count (an f32 running sum would drop them all).
        let mut row = vec![1.0f32; 64];
        row[3] = 1e8;
        assert_eq!(row_sum(&row), 1e8 + 63.0);
    }

    /// Sums over the first axis, split over threads by slices of columns, give each column's
    /// sum in row order: the same bits as one thread's plain loop, however the columns split.
    #[test]
    fn column_sums_split_over_threads_match_the_serial_loop() {
        for (rows, cols) in [(1792, 512), (4096, 64), (300, 1000), (70_000, 3)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5).collect();
            assert!(src.len() >= PAR_MIN_ELEMS, "{rows} x {cols} takes the parallel branch");
            let got = reduce_rows(&src, 1, rows, cols, ReduceOp::Sum);
            for (j, &g) in got.iter().enumerate() {
                let mut want = src[j];
                for r in 1..rows {
                    want += src[r * cols + j];
                }
                assert_eq!(g.to_bits(), want.to_bits(), "{rows} x {cols}, column {j}: {g} vs {want}");
            }
        }
    }
}
