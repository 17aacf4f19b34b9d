//! The common op set PyTorch users reach for, each written once on top of the kernels of the
//! closed set (so it runs on every device) and differentiated through the ops it is made of:
//! rounding, `pow` with a tensor exponent, `masked_fill`, `scatter`, `cumsum`, `prod`,
//! `var`/`std`, `norm`, `logsumexp`, `sort`/`topk`, `repeat`, `flip`, `roll`, reflect and
//! replicate padding, `split`/`chunk`/`unbind`, `tril`/`triu`/`eye`.

use super::index::index_tensor;
use super::{binary_kernel, binary_op, grad_if, unary_kernel};
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::Dim;
use crate::{Device, Error, Result, Tensor};

/// How [`Tensor::pad_with`] fills the border (PyTorch's `F.pad` modes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PadMode {
    /// A constant value.
    Constant(f32),
    /// The values mirrored about the edge, the edge itself not repeated (`[a b c]` padded by 2
    /// on the left reads `c b | a b c`).
    Reflect,
    /// The edge value repeated.
    Replicate,
}

impl Tensor {
    /// The largest whole number not above each element. Not differentiable (its derivative is
    /// 0 almost everywhere: no gradient flows, as in PyTorch).
    pub fn floor(&self) -> Result<Tensor> {
        unary_kernel(self, UnaryOp::Floor)
    }

    /// The smallest whole number not below each element. Not differentiable.
    pub fn ceil(&self) -> Result<Tensor> {
        unary_kernel(self, UnaryOp::Ceil)
    }

    /// The nearest whole number, halves to even (`round(2.5) = 2`, as PyTorch). Not
    /// differentiable.
    pub fn round(&self) -> Result<Tensor> {
        unary_kernel(self, UnaryOp::Round)
    }

    /// `self ^ exponent` elementwise, broadcasting. d/da = b·a^(b-1) (0 where b = 0);
    /// d/db = a^b·ln a (0 where a = 0 and b >= 0, as PyTorch).
    pub fn pow(&self, exponent: &Tensor) -> Result<Tensor> {
        binary_op(self, exponent, BinaryOp::Pow, |g, x, _| {
            let (a, b) = (&x[0], &x[1]);
            Ok(vec![
                grad_if(a, || {
                    let zero = Tensor::full_on(&[], 0.0, g.device())?;
                    let d = b.mul(&a.pow(&b.add_scalar(-1.0)?)?)?;
                    // b = 0: the power is constant 1, also at a = 0 where the formula is 0·∞.
                    let d = b.eq(&zero)?.where_cond(&zero, &d)?;
                    g.mul(&d)?.sum_to_shape(a.shape())
                })?,
                grad_if(b, || g.mul(&binary_kernel(a, b, BinaryOp::PowExponentGrad)?)?.sum_to_shape(b.shape()))?,
            ])
        })
    }

    /// `value` where `mask` (broadcast to this shape) is non-zero, else this tensor (PyTorch's
    /// `masked_fill`). Gradient: passes where the mask is 0.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        let fill = Tensor::full_on(&[], value, self.device())?;
        let out = mask.where_cond(&fill, self)?;
        if out.shape() != self.shape() {
            return Err(Error::shapes("masked_fill (mask vs tensor)", mask.shape(), self.shape()));
        }
        Ok(out)
    }

    /// This tensor with `src[p]` written at position `p` with axis `dim` replaced by
    /// `index[p]` (PyTorch's `scatter`; [`Tensor::scatter_add`] adds instead). A position
    /// named twice by `index` gets the sum of what is written there (PyTorch leaves it
    /// unspecified). Gradients: to `self` where nothing was written, to `src` gathered back.
    pub fn scatter(&self, dim: impl Dim, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let dim = dim.axis("scatter", self.rank())?;
        let ones = Tensor::full_on(index.shape(), 1.0, self.device())?;
        let written = self.zeros_like()?.scatter_add(dim, index, &ones)?;
        let zero = Tensor::full_on(&[], 0.0, self.device())?;
        // Chosen, not multiplied: an infinity or NaN about to be overwritten must not leak.
        let kept = written.eq(&zero)?.where_cond(self, &zero)?;
        kept.scatter_add(dim, index, src)
    }

    /// Running sums along `dim`: `out[i] = x[0] + .. + x[i]`. Computed in ⌈log₂ n⌉ rounds,
    /// each adding the tensor shifted by 1, 2, 4, ... places (Hillis and Steele's scan), so
    /// an infinity or NaN reaches only the sums after it; the gradient is that of the shifts
    /// and additions.
    pub fn cumsum(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.axis("cumsum", self.rank())?;
        let n = self.shape()[dim];
        let mut t = self.clone();
        let mut shift = 1;
        while shift < n {
            t = t.add(&t.narrow(dim, 0, n - shift)?.pad(dim, shift, 0, 0.0)?)?;
            shift *= 2;
        }
        Ok(t)
    }

    /// Product along `dim` (PyTorch's `prod`), by multiplying halves pairwise (log₂ n rounds),
    /// so that zeros are handled exactly in the value and the gradient (which is the product
    /// of the other entries).
    pub fn prod(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("prod", self.rank())?;
        let mut t = self.clone();
        while t.shape()[dim] > 1 {
            let n = t.shape()[dim];
            let half = n / 2;
            let paired = t.narrow(dim, 0, half)?.mul(&t.narrow(dim, half, half)?)?;
            t = if n % 2 == 1 { Tensor::cat(&[&paired, &t.narrow(dim, n - 1, 1)?], dim)? } else { paired };
        }
        if t.shape()[dim] == 0 {
            // The empty product.
            let mut shape = t.shape().to_vec();
            shape[dim] = 1;
            t = Tensor::full_on(&shape, 1.0, self.device())?;
        }
        if keepdim {
            Ok(t)
        } else {
            t.squeeze(dim)
        }
    }

    /// Variance along `dim` with Bessel's `correction` (PyTorch's `var(dim, correction=..)`:
    /// 1 for the unbiased sample variance, 0 for the population's): Σ(x - mean)² / max(0, n -
    /// correction), so when `n <= correction` it is infinite, or NaN for a constant slice, as
    /// in PyTorch.
    pub fn var(&self, dim: impl Dim, correction: usize, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("var", self.rank())?;
        let n = self.shape()[dim];
        let centred = self.sub(&self.mean(dim, true)?)?;
        let ss = centred.mul(&centred)?.sum(dim, keepdim)?;
        let denom = n.saturating_sub(correction);
        ss.div(&Tensor::full_on(&[], denom as f32, self.device())?)
    }

    /// Standard deviation along `dim`: the square root of [`Tensor::var`].
    pub fn std(&self, dim: impl Dim, correction: usize, keepdim: bool) -> Result<Tensor> {
        self.var(dim, correction, keepdim)?.sqrt()
    }

    /// The `p`-norm of all elements, `(Σ|x|^p)^(1/p)`, as a scalar (`p = 2`: the Euclidean
    /// length; PyTorch's `torch.linalg.vector_norm`). The gradient at a zero vector is 0, as
    /// PyTorch gives (not the formula's 0/0).
    pub fn norm(&self, p: f32) -> Result<Tensor> {
        if !(p.is_finite() && p > 0.0) {
            return Err(Error::invalid("norm", format!("needs a finite p > 0, got {p}")));
        }
        let storage = {
            let _off = crate::no_grad();
            let value = self.abs()?.powf(p)?.sum_all()?.powf(1.0 / p)?;
            let copy = value.storage().copy_strided(value.layout())?;
            copy
        };
        Ok(Tensor::from_op(storage, &[], "norm", &[self], move |g, x, y| {
            Ok(vec![grad_if(&x[0], || {
                // d‖x‖/dx = sign(x)·|x|^(p-1) / ‖x‖^(p-1); 0 where ‖x‖ = 0.
                let zero = Tensor::full_on(&[], 0.0, g.device())?;
                let scale = y.powf(p - 1.0)?;
                let safe = y.eq(&zero)?.where_cond(&Tensor::full_on(&[], 1.0, g.device())?, &scale)?;
                let d = x[0].sign()?.mul(&x[0].abs()?.powf(p - 1.0)?)?.div(&safe)?;
                // Zero entries (where |x|^(p-1) is infinite for p < 1) and a zero norm give 0.
                let d = x[0].eq(&zero)?.maximum(&y.eq(&zero)?)?.where_cond(&zero, &d)?;
                g.mul(&d)
            })?])
        }))
    }

    /// `ln Σ e^x` along `dim`, without overflow (the maximum is taken out first). Gradient:
    /// the softmax along `dim`.
    pub fn logsumexp(&self, dim: impl Dim, keepdim: bool) -> Result<Tensor> {
        let dim = dim.axis("logsumexp", self.rank())?;
        let m = self.max(dim, true)?.detach();
        // A row of -inf (or +inf) would give inf - inf: shift by 0 there instead.
        let zero = Tensor::full_on(&[], 0.0, self.device())?;
        let finite = m.sub(&m)?.eq(&zero)?;
        let m = finite.where_cond(&m, &zero)?;
        let out = self.sub(&m)?.exp()?.sum(dim, true)?.log()?.add(&m)?;
        if keepdim {
            Ok(out)
        } else {
            out.squeeze(dim)
        }
    }

    /// The elements along `dim` sorted ascending (or descending), and the index each came from
    /// (as f32 values). NaN sorts last ascending, first descending, as in PyTorch; equal
    /// values keep their order. Gradient: back to where each value came from. The order is
    /// computed on the host (a GPU tensor is read once).
    pub fn sort(&self, dim: impl Dim, descending: bool) -> Result<(Tensor, Tensor)> {
        let dim = dim.axis("sort", self.rank())?;
        let n = self.shape()[dim];
        self.topk_along(dim, n, descending)
    }

    /// The `k` largest (or smallest, `largest = false`) elements along `dim`, in order, and
    /// their indices (as PyTorch's `topk` with `sorted=True`). Gradient as for
    /// [`Tensor::sort`].
    pub fn topk(&self, k: usize, dim: impl Dim, largest: bool) -> Result<(Tensor, Tensor)> {
        let dim = dim.axis("topk", self.rank())?;
        if k > self.shape()[dim] {
            return Err(Error::invalid("topk", format!("k = {k} is more than axis {dim} of shape {:?}", self.shape())));
        }
        self.topk_along(dim, k, largest)
    }

    fn topk_along(&self, dim: usize, k: usize, descending: bool) -> Result<(Tensor, Tensor)> {
        let last = self.rank() - 1;
        let moved = self.transpose(dim, last)?.contiguous()?;
        let n = self.shape()[dim];
        let values = moved.try_to_vec()?;
        let rows = values.len().checked_div(n).unwrap_or(0);
        let mut picked = Vec::with_capacity(rows * k);
        let mut order: Vec<usize> = Vec::with_capacity(n);
        for r in 0..rows {
            let row = &values[r * n..(r + 1) * n];
            order.clear();
            order.extend(0..n);
            // NaN counts as the largest value, as in PyTorch; a stable sort keeps ties in order.
            let key = |a: f32, b: f32| match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
            };
            if descending {
                order.sort_by(|&a, &b| key(row[b], row[a]));
            } else {
                order.sort_by(|&a, &b| key(row[a], row[b]));
            }
            picked.extend(order[..k].iter().map(|&i| i as f32));
        }
        let mut shape = moved.shape().to_vec();
        shape[last] = k;
        let index = Tensor::from_vec(picked, &shape)?.to(self.device())?;
        let out = moved.gather(last, &index)?;
        Ok((out.transpose(dim, last)?.contiguous()?, index.transpose(dim, last)?.contiguous()?))
    }

    /// The tensor tiled `reps[i]` times along axis `i` (PyTorch's `repeat`; `reps` may be
    /// longer than the rank, adding leading axes). Gradient: the sum over the copies.
    pub fn repeat(&self, reps: &[usize]) -> Result<Tensor> {
        if reps.len() < self.rank() {
            return Err(Error::invalid(
                "repeat",
                format!("needs at least one count per axis ({}), got {reps:?}", self.rank()),
            ));
        }
        let mut shape = vec![1; reps.len() - self.rank()];
        shape.extend_from_slice(self.shape());
        let mut t = self.reshape(&shape)?;
        for (axis, &r) in reps.iter().enumerate() {
            if r == 1 {
                continue;
            }
            // [.., n, ..] -> [.., r, n, ..] (broadcast) -> [.., r·n, ..].
            let mut wide = t.shape().to_vec();
            wide.insert(axis, r);
            let mut merged = t.shape().to_vec();
            merged[axis] *= r;
            t = t.unsqueeze(axis)?.broadcast_to(&wide)?.contiguous()?.reshape(&merged)?;
        }
        Ok(t)
    }

    /// The order of the elements reversed along each axis of `dims` (PyTorch's `flip`).
    pub fn flip(&self, dims: &[usize]) -> Result<Tensor> {
        let mut t = self.clone();
        for (i, &d) in dims.iter().enumerate() {
            if dims[..i].contains(&d) {
                return Err(Error::invalid("flip", format!("axis {d} appears twice in {dims:?}")));
            }
            let d = d.axis("flip", self.rank())?;
            let n = self.shape()[d];
            t = t.index_select(d, &index_tensor("flip", (0..n).rev(), self.device())?)?;
        }
        Ok(t)
    }

    /// The elements shifted by `shift` places along `dim`, those pushed off one end coming
    /// back at the other (PyTorch's `roll`; a negative shift rolls the other way).
    pub fn roll(&self, shift: isize, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.axis("roll", self.rank())?;
        let n = self.shape()[dim];
        if n == 0 {
            return Ok(self.clone());
        }
        let s = shift.rem_euclid(n as isize) as usize;
        self.index_select(dim, &index_tensor("roll", (0..n).map(|i| (i + n - s) % n), self.device())?)
    }

    /// Pads axis `dim` with `before` and `after` entries filled by `mode` (PyTorch's `F.pad`
    /// with `constant`, `reflect` or `replicate`). Reflection needs `before` and `after`
    /// smaller than the axis; replication needs a non-empty axis. Gradient: reflected and
    /// replicated entries add their gradient back onto their sources.
    pub fn pad_with(&self, dim: impl Dim, before: usize, after: usize, mode: PadMode) -> Result<Tensor> {
        let dim = dim.axis("pad", self.rank())?;
        let n = self.shape()[dim];
        let source = |i: isize| -> usize {
            match mode {
                PadMode::Reflect => {
                    let i = i.unsigned_abs();
                    if i < n {
                        i
                    } else {
                        2 * (n - 1) - i
                    }
                }
                _ => i.clamp(0, n as isize - 1) as usize,
            }
        };
        match mode {
            PadMode::Constant(v) => self.pad(dim, before, after, v),
            PadMode::Reflect if before >= n || after >= n => Err(Error::invalid(
                "pad",
                format!("reflect padding ({before}, {after}) must be smaller than axis {dim} of size {n}"),
            )),
            PadMode::Replicate if n == 0 => Err(Error::invalid("pad", format!("cannot replicate empty axis {dim}"))),
            _ => {
                let positions = (-(before as isize))..(n as isize + after as isize);
                self.index_select(dim, &index_tensor("pad", positions.map(source), self.device())?)
            }
        }
    }

    /// Consecutive pieces of `size` entries along `dim` (the last may be shorter), as PyTorch's
    /// `split(size, dim)`. Each piece is a view.
    pub fn split(&self, size: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let dim = dim.axis("split", self.rank())?;
        if size == 0 {
            return Err(Error::invalid("split", "the piece size must be at least 1"));
        }
        let n = self.shape()[dim];
        (0..n).step_by(size).map(|start| self.narrow(dim, start, size.min(n - start))).collect()
    }

    /// `chunks` pieces of nearly equal size along `dim` (PyTorch's `chunk`: each of
    /// ⌈n / chunks⌉ entries, so there may be fewer pieces).
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let dim = dim.axis("chunk", self.rank())?;
        if chunks == 0 {
            return Err(Error::invalid("chunk", "needs at least one chunk"));
        }
        self.split(self.shape()[dim].div_ceil(chunks).max(1), dim)
    }

    /// The slices along `dim`, each without that axis (PyTorch's `unbind`).
    pub fn unbind(&self, dim: impl Dim) -> Result<Vec<Tensor>> {
        let dim = dim.axis("unbind", self.rank())?;
        (0..self.shape()[dim]).map(|i| self.narrow(dim, i, 1)?.squeeze(dim)).collect()
    }

    /// The identity matrix `[n, n]`.
    pub fn eye(n: usize) -> Result<Tensor> {
        let count = crate::layout::checked_elem_count("eye", &[n, n])?;
        crate::backend::ensure_room(Device::Cpu, (count as u64).saturating_mul(4), "eye")?;
        Tensor::from_vec((0..n * n).map(|e| if e / n == e % n { 1.0 } else { 0.0 }).collect(), &[n, n])
    }

    /// The lower triangle of the last two axes: entries with `col - row <= diagonal` kept,
    /// the rest 0 (PyTorch's `tril`).
    pub fn tril(&self, diagonal: isize) -> Result<Tensor> {
        self.triangle("tril", |row, col| col - row <= diagonal)
    }

    /// The upper triangle: entries with `col - row >= diagonal` kept (PyTorch's `triu`).
    pub fn triu(&self, diagonal: isize) -> Result<Tensor> {
        self.triangle("triu", |row, col| col - row >= diagonal)
    }

    fn triangle(&self, op: &'static str, keep: impl Fn(isize, isize) -> bool) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(op, format!("needs at least 2 axes, got shape {:?}", self.shape())));
        }
        let (r, c) = (self.shape()[self.rank() - 2], self.shape()[self.rank() - 1]);
        let mask: Vec<f32> =
            (0..r * c).map(|e| if keep((e / c) as isize, (e % c) as isize) { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, &[r, c])?.to(self.device())?;
        mask.where_cond(self, &Tensor::full_on(&[], 0.0, self.device())?)
    }
}
