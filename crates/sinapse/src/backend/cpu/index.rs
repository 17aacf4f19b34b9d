//! Picking and placing by index: index_select and its adjoint index_add, gather and its
//! adjoint scatter_add. Index values are checked here, where they are read.

use std::mem::MaybeUninit;

use crate::backend::Indices;
use crate::layout::{contiguous_strides, Layout};
use crate::Result;

use super::elementwise::{row_major, to_contiguous};

/// The values of an index tensor as positions in `0..size`, or an error in `who`'s terms
/// naming the first bad value.
pub(super) fn positions(who: Indices, ids: &[f32], l: &Layout, size: usize) -> Result<Vec<usize>> {
    row_major(ids, l).iter().map(|&v| who.check(v, size)).collect()
}

/// `[outer, size, inner]` around axis `dim` of `shape`.
fn around(shape: &[usize], dim: usize) -> (usize, usize, usize) {
    (shape[..dim].iter().product(), shape[dim], shape[dim + 1..].iter().product())
}

/// The entries `ids[0], ids[1], ..` of axis `dim`.
pub(super) fn index_select(src: &[f32], l: &Layout, dim: usize, ids: &[f32], ids_l: &Layout) -> Result<Vec<f32>> {
    let (outer, size, inner) = around(l.shape(), dim);
    let idx = positions(Indices::Positions("index_select"), ids, ids_l, size)?;
    let d = row_major(src, l);
    let rows = outer * idx.len();
    // The values from position `first` of the output: each (part of a) picked row copied whole
    // (a chunk may start or end inside a row).
    let fill = |first: usize, dst: &mut [MaybeUninit<f32>]| {
        let mut at = 0;
        while at < dst.len() {
            let (row, col) = ((first + at) / inner, (first + at) % inner);
            let take = (inner - col).min(dst.len() - at);
            let start = ((row / idx.len()) * size + idx[row % idx.len()]) * inner + col;
            dst[at..at + take].write_copy_of_slice(&d[start..start + take]);
            at += take;
        }
    };
    // SAFETY: `fill` writes every value of each chunk (`take` is at least 1 while values
    // are left, as `col < inner`). Large gathers (a training batch: the `mlp` benchmark's
    // 128 x 784 rows, a serial 63 us copy while the other thread waited) go over the threads.
    Ok(unsafe { super::elementwise::chunked(rows * inner, fill) })
}

/// `base` with slice `j` of `src` added at position `ids[j]` of axis `dim`.
pub(super) fn index_add(
    base: &[f32],
    l: &Layout,
    dim: usize,
    ids: &[f32],
    ids_l: &Layout,
    src: &[f32],
    src_l: &Layout,
) -> Result<Vec<f32>> {
    let (outer, size, inner) = around(l.shape(), dim);
    let idx = positions(Indices::Positions("index_add"), ids, ids_l, size)?;
    let mut out = to_contiguous(base, l);
    let s = row_major(src, src_l);
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            let from = (o * idx.len() + j) * inner;
            let to = (o * size + i) * inner;
            out[to..to + inner].iter_mut().zip(&s[from..from + inner]).for_each(|(a, &v)| *a += v);
        }
    }
    Ok(out)
}

/// For each position of an index of shape `ishape` (row-major), the row-major offset in a
/// tensor of `shape` of the element it picks: the position itself with axis `dim` replaced
/// by the index value.
fn picked_offsets(shape: &[usize], ishape: &[usize], dim: usize, idx: &[usize]) -> Vec<usize> {
    let strides = contiguous_strides(shape);
    let mut counter = vec![0usize; ishape.len()];
    let mut out = Vec::with_capacity(idx.len());
    for &i in idx {
        let base: usize =
            counter.iter().zip(&strides).enumerate().filter(|(d, _)| *d != dim).map(|(_, (c, s))| c * s).sum();
        out.push(base + i * strides[dim]);
        for d in (0..ishape.len()).rev() {
            counter[d] += 1;
            if counter[d] < ishape[d] {
                break;
            }
            counter[d] = 0;
        }
    }
    out
}

/// `out[p] = src[p with axis dim replaced by index[p]]` for every position `p` of the index.
pub(super) fn gather(
    src: &[f32],
    l: &Layout,
    dim: usize,
    index: &[f32],
    index_l: &Layout,
    who: Indices,
) -> Result<Vec<f32>> {
    let idx = positions(who, index, index_l, l.shape()[dim])?;
    let offsets = picked_offsets(l.shape(), index_l.shape(), dim, &idx);
    let d = row_major(src, l);
    Ok(offsets.iter().map(|&p| d[p]).collect())
}

/// `base` with `src[p]` added at position `p` with axis `dim` replaced by `index[p]`, for every
/// position `p` of the index (`src` has the index's shape).
pub(super) fn scatter_add(
    base: &[f32],
    l: &Layout,
    dim: usize,
    index: &[f32],
    index_l: &Layout,
    src: &[f32],
    src_l: &Layout,
) -> Result<Vec<f32>> {
    let idx = positions(Indices::Positions("scatter_add"), index, index_l, l.shape()[dim])?;
    let offsets = picked_offsets(l.shape(), index_l.shape(), dim, &idx);
    let mut out = to_contiguous(base, l);
    for (&p, &v) in offsets.iter().zip(row_major(src, src_l).iter()) {
        out[p] += v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gather large enough to be filled in chunks over the threads, with rows that cross
    /// the chunks' edges, picks the rows (repeats included) and the entries of a middle axis
    /// that a plain loop does.
    #[test]
    fn large_gathers_match_a_plain_loop() {
        for (shape, dim, picks) in [(vec![300, 784], 0, 200), (vec![3, 500, 70], 1, 400)] {
            let l = Layout::contiguous(&shape);
            let src: Vec<f32> = (0..l.elem_count()).map(|v| v as f32).collect();
            let (outer, size, inner) = around(&shape, dim);
            let idx: Vec<usize> = (0..picks).map(|j| (j * 7919) % size).collect();
            let ids: Vec<f32> = idx.iter().map(|&i| i as f32).collect();
            let got = index_select(&src, &l, dim, &ids, &Layout::contiguous(&[picks])).unwrap();
            let mut want = Vec::new();
            for o in 0..outer {
                for &i in &idx {
                    want.extend_from_slice(&src[(o * size + i) * inner..][..inner]);
                }
            }
            assert!(want.len() >= super::super::elementwise::PAR_MIN_ELEMS);
            assert!(got == want, "{shape:?} along {dim}");
        }
    }
}
