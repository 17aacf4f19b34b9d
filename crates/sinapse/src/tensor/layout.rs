//! Where a tensor's elements live in its storage: shape, strides and offset.
//!
//! Element `[i0, i1, ..]` of a tensor sits at `offset + i0*strides[0] + i1*strides[1] + ..` in
//! its storage. A view (transpose, narrow, broadcast) only changes these three numbers and
//! shares the storage; a stride of 0 repeats one element along a broadcast axis.

use crate::{Error, Result};

/// Shape, strides and offset of a tensor inside its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
}

/// Row-major (C order) strides of a shape: the last axis moves fastest.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
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
    let rank = lhs.len().max(rhs.len());
    let mut out = vec![0; rank];
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
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: 0 }
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

    /// Checks that `dim` is an axis of this layout.
    pub(crate) fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        if dim >= self.rank() {
            return Err(Error::DimOutOfRange { op, dim, rank: self.rank() });
        }
        Ok(())
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
            return Err(Error::DimOutOfRange { op: "unsqueeze", dim, rank: self.rank() });
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
        let mut strides = vec![0; shape.len()];
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
        Ok(Layout { shape: shape.to_vec(), strides, offset: self.offset })
    }

    /// Same elements, new shape; only possible without copying when the layout is contiguous.
    pub(crate) fn reshape_contiguous(&self, shape: &[usize]) -> Layout {
        Layout { shape: shape.to_vec(), strides: contiguous_strides(shape), offset: self.offset }
    }
}

/// Walks several layouts of one shape in lockstep, in row-major order of that shape.
///
/// Calls `f(offsets, len, inner_strides)` once per run of the innermost (merged) axis: the
/// run's elements are at `offsets[k] + j * inner_strides[k]` for `j in 0..len`. Axes that are
/// contiguous for every operand are merged first, so a contiguous tensor is one single run.
/// Kernels write their tight loop over `j` and get strided, broadcast and transposed inputs
/// for free.
pub fn for_each_run<const N: usize>(
    shape: &[usize],
    layouts: [&Layout; N],
    mut f: impl FnMut([usize; N], usize, [usize; N]),
) {
    if shape.contains(&0) {
        return;
    }
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
    let base: [usize; N] = std::array::from_fn(|k| layouts[k].offset);
    let Some(&(inner_len, inner_strides)) = dims.last() else {
        f(base, 1, [0; N]);
        return;
    };
    let outer = &dims[..dims.len() - 1];
    let mut counter = vec![0usize; outer.len()];
    let mut offsets = base;
    loop {
        f(offsets, inner_len, inner_strides);
        // Odometer increment over the outer axes, last axis fastest.
        let mut axis = outer.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            let (d, s) = outer[axis];
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
