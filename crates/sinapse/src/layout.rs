//! Where a tensor's elements live in its storage: shape, strides and offset.
//!
//! Shared by the tensors (views change only the layout) and the backends (kernels walk the
//! layout), so it depends on neither.
//!
//! Element `[i0, i1, ..]` of a tensor sits at `offset + i0*strides[0] + i1*strides[1] + ..` in
//! its storage. A view (transpose, narrow, broadcast) only changes these three numbers and
//! shares the storage; a stride of 0 repeats one element along a broadcast axis.

use smallvec::SmallVec;

use crate::{Error, Result};

/// Sizes or strides of a layout's axes: up to 6 axes inline, more on the heap. Every op makes
/// at least one layout; with a heap vector each for shape and strides, malloc and free took
/// 45% of the time of small ops, and keeping them inline made a forward pass of nearly pure
/// bookkeeping (an MLP of three 8-unit linear layers on one sample) 1.21x faster.
pub(crate) type Dims = SmallVec<[usize; 6]>;

/// An axis of a tensor, as ops take it: a `usize` counts from the front, a negative number
/// from the back (`-1` is the last axis), as in PyTorch (`x.softmax(-1)`).
pub trait Dim: Copy {
    /// The axis as a position in `0..rank`, or an error naming `op`.
    fn axis(self, op: &'static str, rank: usize) -> Result<usize>;
}

impl Dim for usize {
    fn axis(self, op: &'static str, rank: usize) -> Result<usize> {
        if self < rank {
            Ok(self)
        } else {
            Err(Error::DimOutOfRange { op, dim: isize::try_from(self).unwrap_or(isize::MAX), rank })
        }
    }
}

macro_rules! signed_dim {
    ($($t:ty),*) => {
        $(impl Dim for $t {
            fn axis(self, op: &'static str, rank: usize) -> Result<usize> {
                let d = self as isize;
                let from_front = if d < 0 { d + rank as isize } else { d };
                if (0..rank as isize).contains(&from_front) {
                    Ok(from_front as usize)
                } else {
                    Err(Error::DimOutOfRange { op, dim: d, rank })
                }
            }
        })*
    };
}
signed_dim!(i32, i64, isize);

/// Shape, strides and offset of a tensor inside its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Dims,
    strides: Dims,
    offset: usize,
}

/// Row-major (C order) strides of a shape: the last axis moves fastest.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    row_major(shape).into_vec()
}

/// [`contiguous_strides`], without a heap allocation for up to 6 axes.
fn row_major(shape: &[usize]) -> Dims {
    let mut strides: Dims = SmallVec::from_elem(0, shape.len());
    let mut acc = 1;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc *= d;
    }
    strides
}

/// The number of elements of `shape`, or an error naming `op` when it does not fit in a
/// `usize`. Every shape a tensor can take goes through this check (creation, reshape,
/// broadcasting), so kernels can trust element counts.
pub fn checked_elem_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid(op, format!("shape {shape:?} has more elements than fit in memory")))
}

/// NumPy broadcasting: align shapes on the right; each pair of sizes must be equal or one of
/// them 1. Returns the shape of the result.
pub fn broadcast_shape(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Vec<usize>> {
    broadcast_dims(op, lhs, rhs).map(Dims::into_vec)
}

/// [`broadcast_shape`], without a heap allocation for up to 6 axes (every binary op calls it).
pub(crate) fn broadcast_dims(op: &'static str, lhs: &[usize], rhs: &[usize]) -> Result<Dims> {
    let rank = lhs.len().max(rhs.len());
    let mut out: Dims = SmallVec::from_elem(0, rank);
    for i in 0..rank {
        let l = if i + lhs.len() >= rank { lhs[i + lhs.len() - rank] } else { 1 };
        let r = if i + rhs.len() >= rank { rhs[i + rhs.len() - rank] } else { 1 };
        out[i] = match (l, r) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => return Err(Error::shapes(op, lhs, rhs)),
        };
    }
    checked_elem_count(op, &out)?;
    Ok(out)
}

impl Layout {
    /// A fresh row-major layout for `shape`, starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Self {
        Layout { shape: SmallVec::from_slice(shape), strides: row_major(shape), offset: 0 }
    }

    /// The sizes of the axes.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Steps in storage between neighbours along each axis.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Storage index of the first element.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of axes.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when the elements are laid out row-major without gaps, so the tensor is the slice
    /// `storage[offset .. offset + elem_count]`.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Checks that `dim` is an axis of this layout (the rule of [`Dim`]).
    pub(crate) fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        dim.axis(op, self.rank()).map(|_| ())
    }

    /// Swaps two axes (no data moves).
    pub fn transpose(&self, d0: usize, d1: usize) -> Result<Layout> {
        self.check_dim("transpose", d0)?;
        self.check_dim("transpose", d1)?;
        let mut l = self.clone();
        l.shape.swap(d0, d1);
        l.strides.swap(d0, d1);
        Ok(l)
    }

    /// Reorders the axes: axis `i` of the result is axis `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Layout> {
        let mut seen = vec![false; self.rank()];
        let valid =
            perm.len() == self.rank() && perm.iter().all(|&p| p < seen.len() && !std::mem::replace(&mut seen[p], true));
        if !valid {
            return Err(Error::invalid(
                "permute",
                format!("{perm:?} is not a permutation of the {} axes of {:?}", self.rank(), self.shape),
            ));
        }
        Ok(Layout {
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
            offset: self.offset,
        })
    }

    /// Keeps `len` entries of axis `dim`, starting at `start`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Layout> {
        self.check_dim("narrow", dim)?;
        if start.checked_add(len).is_none_or(|end| end > self.shape[dim]) {
            return Err(Error::invalid(
                "narrow",
                format!(
                    "range {start}..{} outside axis {dim} of size {} (shape {:?})",
                    start.saturating_add(len),
                    self.shape[dim],
                    self.shape
                ),
            ));
        }
        let mut l = self.clone();
        l.shape[dim] = len;
        if len > 0 {
            l.offset += start * self.strides[dim];
        }
        Ok(l)
    }

    /// Inserts an axis of size 1 at position `dim` (`0..=rank`).
    pub fn unsqueeze(&self, dim: usize) -> Result<Layout> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim: dim as isize, rank: self.rank() });
        }
        let mut l = self.clone();
        let stride = if dim < self.rank() { self.strides[dim] * self.shape[dim] } else { 1 };
        l.shape.insert(dim, 1);
        l.strides.insert(dim, stride);
        Ok(l)
    }

    /// Removes axis `dim`, which must have size 1.
    pub fn squeeze(&self, dim: usize) -> Result<Layout> {
        self.check_dim("squeeze", dim)?;
        if self.shape[dim] != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("axis {dim} of shape {:?} has size {}, not 1", self.shape, self.shape[dim]),
            ));
        }
        let mut l = self.clone();
        l.shape.remove(dim);
        l.strides.remove(dim);
        Ok(l)
    }

    /// Views the tensor with a larger shape by NumPy's rules: new axes are added on the left,
    /// and axes of size 1 are repeated with stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Layout> {
        checked_elem_count("broadcast_to", shape)?;
        let err = || Error::shapes("broadcast_to", &self.shape, shape);
        if shape.len() < self.rank() {
            return Err(err());
        }
        let extra = shape.len() - self.rank();
        let mut strides: Dims = SmallVec::from_elem(0, shape.len());
        for (i, &target) in shape.iter().enumerate().skip(extra) {
            let d = self.shape[i - extra];
            strides[i] = if d == target {
                self.strides[i - extra]
            } else if d == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout { shape: SmallVec::from_slice(shape), strides, offset: self.offset })
    }

    /// Axes `dim` and `dim + 1` as one, without copying: possible when stepping once along
    /// `dim` is stepping over all of `dim + 1` (`None` otherwise, or when `dim + 1` is not an
    /// axis).
    pub(crate) fn merge_axes(&self, dim: usize) -> Option<Layout> {
        if dim + 1 >= self.rank() || self.strides[dim] != self.strides[dim + 1] * self.shape[dim + 1] {
            return None;
        }
        let mut l = self.clone();
        l.shape[dim] *= self.shape[dim + 1];
        l.strides[dim] = self.strides[dim + 1];
        l.shape.remove(dim + 1);
        l.strides.remove(dim + 1);
        Some(l)
    }

    /// Same elements, new shape; only possible without copying when the layout is contiguous.
    pub fn reshape_contiguous(&self, shape: &[usize]) -> Layout {
        Layout { shape: SmallVec::from_slice(shape), strides: row_major(shape), offset: self.offset }
    }
}

/// How to walk several layouts of one shape in lockstep, in row-major order of that shape:
/// as *runs*, stretches of the innermost (merged) axis where every operand moves by a fixed
/// stride. Axes that are contiguous for every operand are merged first, so a contiguous tensor
/// is one single run. Kernels write their tight loop over a run and get strided, broadcast and
/// transposed inputs for free; [`Runs::for_each_in`] starts anywhere, so a kernel can split
/// the elements between threads.
pub struct Runs<const N: usize> {
    /// The outer (non-innermost) merged axes: size and per-operand stride.
    outer: Vec<(usize, [usize; N])>,
    /// Elements per run.
    len: usize,
    /// Per-operand stride inside a run.
    strides: [usize; N],
    /// Per-operand storage offset of element 0.
    base: [usize; N],
    /// Number of elements in all.
    elems: usize,
}

impl<const N: usize> Runs<N> {
    /// The plan for `shape` (every layout has this shape).
    pub fn new(shape: &[usize], layouts: [&Layout; N]) -> Runs<N> {
        let base: [usize; N] = std::array::from_fn(|k| layouts[k].offset);
        let elems = shape.iter().product();
        // Merge axis i into axis i+1 when, for every operand, stepping once along i equals
        // stepping shape[i+1] times along i+1.
        let mut dims: Vec<(usize, [usize; N])> = Vec::with_capacity(shape.len());
        for (i, &d) in shape.iter().enumerate() {
            if d == 1 {
                continue;
            }
            let strides: [usize; N] = std::array::from_fn(|k| layouts[k].strides[i]);
            if let Some((last_d, last_s)) = dims.last_mut() {
                if (0..N).all(|k| last_s[k] == strides[k] * d) {
                    *last_d *= d;
                    *last_s = strides;
                    continue;
                }
            }
            dims.push((d, strides));
        }
        let (len, strides) = dims.pop().unwrap_or((1, [0; N]));
        Runs { outer: dims, len, strides, base, elems }
    }

    /// Number of elements walked.
    pub fn elem_count(&self) -> usize {
        self.elems
    }

    /// Calls `f(offsets, len, strides)` for the runs (or parts of runs) that cover elements
    /// `range` of the row-major order: the elements are at `offsets[k] + j * strides[k]` for
    /// `j in 0..len`, in order.
    pub fn for_each_in(&self, range: std::ops::Range<usize>, mut f: impl FnMut([usize; N], usize, [usize; N])) {
        let end = range.end.min(self.elems);
        if range.start >= end {
            return;
        }
        // The run holding the first element, and the position inside it.
        let (run, mut j) = (range.start / self.len, range.start % self.len);
        let mut counter = vec![0usize; self.outer.len()];
        let mut offsets = self.base;
        let mut rem = run;
        for (axis, &(d, s)) in self.outer.iter().enumerate().rev() {
            counter[axis] = rem % d;
            rem /= d;
            for k in 0..N {
                offsets[k] += counter[axis] * s[k];
            }
        }
        let mut done = range.start;
        while done < end {
            let len = (self.len - j).min(end - done);
            let start: [usize; N] = std::array::from_fn(|k| offsets[k] + j * self.strides[k]);
            f(start, len, self.strides);
            done += len;
            j = 0;
            // Odometer increment over the outer axes, last axis fastest.
            for axis in (0..self.outer.len()).rev() {
                let (d, s) = self.outer[axis];
                counter[axis] += 1;
                if counter[axis] < d {
                    for k in 0..N {
                        offsets[k] += s[k];
                    }
                    break;
                }
                counter[axis] = 0;
                for k in 0..N {
                    offsets[k] -= s[k] * (d - 1);
                }
            }
        }
    }
}

/// Walks several layouts of one shape in lockstep, in row-major order of that shape, calling
/// `f(offsets, len, inner_strides)` once per run (see [`Runs`]).
pub fn for_each_run<const N: usize>(
    shape: &[usize],
    layouts: [&Layout; N],
    f: impl FnMut([usize; N], usize, [usize; N]),
) {
    let runs = Runs::new(shape, layouts);
    runs.for_each_in(0..runs.elem_count(), f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_axes_needs_one_to_step_over_the_other() {
        // [T-1, N, H] of a [T, N, 6H] buffer: rows 6H apart, merged into [(T-1)·N, H].
        let rec = Layout::contiguous(&[4, 3, 12]).narrow(0, 0, 3).unwrap().narrow(2, 8, 2).unwrap();
        let merged = rec.merge_axes(0).unwrap();
        assert_eq!((merged.shape(), merged.strides(), merged.offset()), (&[9, 2][..], &[12, 1][..], 8));
        // Not mergeable: a transposed pair, a gap between rows of the outer axis, no axis after.
        assert!(Layout::contiguous(&[2, 3]).transpose(0, 1).unwrap().merge_axes(0).is_none());
        assert!(Layout::contiguous(&[4, 6]).narrow(1, 0, 3).unwrap().merge_axes(0).is_none());
        let part = Layout::contiguous(&[2, 3, 4]).narrow(1, 0, 2).unwrap();
        assert!(part.merge_axes(0).is_none() && part.merge_axes(1).is_some());
        assert!(Layout::contiguous(&[2, 3]).merge_axes(1).is_none());
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert!(Layout::contiguous(&[2, 3]).is_contiguous());
        assert!(!Layout::contiguous(&[2, 3]).transpose(0, 1).unwrap().is_contiguous());
    }

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape("t", &[3, 1], &[4]).unwrap(), vec![3, 4]);
        assert_eq!(broadcast_shape("t", &[], &[2, 2]).unwrap(), vec![2, 2]);
        assert!(broadcast_shape("t", &[3], &[4]).is_err());
    }

    #[test]
    fn runs_visit_every_offset_in_order() {
        let l = Layout::contiguous(&[2, 3]).transpose(0, 1).unwrap(); // shape [3, 2]
        let mut seen = vec![];
        for_each_run(l.shape(), [&l], |[o], len, [s]| {
            for j in 0..len {
                seen.push(o + j * s);
            }
        });
        assert_eq!(seen, vec![0, 3, 1, 4, 2, 5]);
        let c = Layout::contiguous(&[2, 3, 4]);
        let mut runs = 0;
        for_each_run(c.shape(), [&c], |_, len, _| {
            runs += 1;
            assert_eq!(len, 24);
        });
        assert_eq!(runs, 1);
    }

    #[test]
    fn runs_can_start_anywhere() {
        // A [3, 4] view with a transposed layout: walking elements 5..11 from the middle must
        // visit the same offsets as the full walk does there.
        let l = Layout::contiguous(&[4, 3]).transpose(0, 1).unwrap();
        let mut all = vec![];
        for_each_run(l.shape(), [&l], |[o], len, [s]| all.extend((0..len).map(|j| o + j * s)));
        let runs = Runs::new(l.shape(), [&l]);
        let mut part = vec![];
        runs.for_each_in(5..11, |[o], len, [s]| part.extend((0..len).map(|j| o + j * s)));
        assert_eq!(part, all[5..11]);
        // A scalar is one run of one element.
        let s = Layout::contiguous(&[]);
        let mut seen = vec![];
        for_each_run(&[], [&s], |[o], len, _| seen.push((o, len)));
        assert_eq!(seen, vec![(0, 1)]);
    }
}
