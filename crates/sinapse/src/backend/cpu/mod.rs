//! The CPU backend: plain loops over host memory, rayon for large element counts, and the
//! `gemm` crate for matrix products. Split by kernel family: [`elementwise`], [`reduce`],
//! [`matmul`], [`conv`], [`index`], [`optim`].
//!
//! Each method below matches once on the element type and hands whole buffers to a family's
//! function, which matches once on the kernel and runs its loop.

mod conv;
mod elementwise;
pub(crate) mod fastmath;
#[cfg(target_arch = "x86_64")]
mod gemm_fma;
#[cfg(target_arch = "x86_64")]
mod gemm_sse;
mod index;
mod matmul;
mod optim;
mod recurrent;
mod reduce;
pub(crate) mod simd;
mod sparse;
mod winograd;

use super::{
    BackendStorage, BinaryOp, CmpOp, DType, ImageDims, Indices, OptimizerUpdate, ReduceOp, UnaryOp, Window, STAGED,
};
use crate::layout::Layout;
use crate::{Device, Result};
use std::borrow::Cow;

/// Host memory, one variant per element type.
#[derive(Clone, Debug)]
pub(crate) enum CpuStorage {
    /// 32-bit floats.
    F32(Vec<f32>),
}

impl CpuStorage {
    /// `n` copies of `value`.
    pub(crate) fn full(n: usize, value: f32) -> CpuStorage {
        CpuStorage::F32(vec![value; n])
    }

    /// `start, start + step, ..`, `n` values.
    pub(crate) fn arange(start: f32, step: f32, n: usize) -> CpuStorage {
        CpuStorage::F32((0..n).map(|i| start + i as f32 * step).collect())
    }

    /// The values (one element type today; a second one makes this a match).
    fn f32(&self) -> &[f32] {
        match self {
            CpuStorage::F32(v) => v,
        }
    }
}

/// Bytes of host memory available to this process now (Linux: `MemAvailable`, and less when
/// the process's cgroup caps its memory lower, as a container does); `None` where the system
/// does not say. Swap is not counted: an allocation that only fits there is refused.
pub(crate) fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let host = kb.saturating_mul(1024);
    // cgroup v2: the limit of this process's group, less what the group uses.
    let cgroup = || -> Option<u64> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        let max: u64 = std::fs::read_to_string(dir.join("memory.max")).ok()?.trim().parse().ok()?;
        let used: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
        Some(max.saturating_sub(used))
    };
    Some(cgroup().map_or(host, |c| c.min(host)))
}

impl CpuStorage {
    /// Direct convolution, stride 1, no dilation (see [`conv::conv2d_direct`]): `self` the
    /// `[N, C, H, W]` images, `w` the `[O, C, KH, KW]` filters, `bias` `[O]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_direct(
        &self,
        l: &Layout,
        w: &Self,
        w_l: &Layout,
        bias: Option<(&Self, &Layout)>,
        dims: ImageDims,
        padding: [usize; 2],
    ) -> Result<Self> {
        let (x, wm, bias) = self.row_major_operands(l, w, w_l, bias);
        let (o, kernel) = (w_l.shape()[0], [w_l.shape()[2], w_l.shape()[3]]);
        Ok(CpuStorage::F32(conv::conv2d_direct(&x, dims, &wm, o, kernel, padding, bias.as_deref())))
    }

    /// A convolution's images (`self`), filters and bias, or a dense layer's inputs, weight and
    /// bias, each read row-major (borrowed when already so).
    #[allow(clippy::type_complexity)]
    fn row_major_operands<'a>(
        &'a self,
        l: &Layout,
        w: &'a Self,
        w_l: &Layout,
        bias: Option<(&'a Self, &Layout)>,
    ) -> (Cow<'a, [f32]>, Cow<'a, [f32]>, Option<Cow<'a, [f32]>>) {
        let x = elementwise::row_major(self.f32(), l);
        let wm = elementwise::row_major(w.f32(), w_l);
        (x, wm, bias.map(|(b, b_l)| elementwise::row_major(b.f32(), b_l)))
    }

    /// A dense layer's `relu?(x · wt + bias)` with the zero entries of `x` skipped (see
    /// [`sparse::linear_skipping_zeros`]): `self` the `[m, k]` inputs, `wt` the weight laid
    /// out `[k, n]`, `bias` `[n]`.
    pub(crate) fn linear_skipping_zeros(
        &self,
        l: &Layout,
        wt: &Self,
        wt_l: &Layout,
        bias: Option<(&Self, &Layout)>,
        mkn: [usize; 3],
        relu: bool,
    ) -> Self {
        let (x, w, bias) = self.row_major_operands(l, wt, wt_l, bias);
        CpuStorage::F32(sparse::linear_skipping_zeros(&x, &w, bias.as_deref(), mkn, relu))
    }

    /// A stride-1, undilated convolution and 2x2 max pooling with stride 2 in one pass (see
    /// [`conv::conv2d_max_pool2`]): the pooled `[N, O, OH/2, OW/2]` values and taps, or
    /// `None` where the convolution takes Winograd's path.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_max_pool2(
        &self,
        l: &Layout,
        w: &Self,
        w_l: &Layout,
        bias: Option<(&Self, &Layout)>,
        dims: ImageDims,
        padding: [usize; 2],
    ) -> Result<Option<(Self, Self)>> {
        let (o, kernel) = (w_l.shape()[0], [w_l.shape()[2], w_l.shape()[3]]);
        let (x, wm, bias) = self.row_major_operands(l, w, w_l, bias);
        let out = conv::conv2d_max_pool2(&x, dims, &wm, o, kernel, padding, bias.as_deref());
        Ok(out.map(|(v, t)| (CpuStorage::F32(v), CpuStorage::F32(t))))
    }

    /// The filters' gradient of [`CpuStorage::conv2d_max_pool2`] (see
    /// [`conv::conv2d_pooled_weight_grad`]): `self` the `[N, C, H, W]` images, `g` the pooled
    /// output's gradient and `taps` the pooling's taps; `[O, C, KH, KW]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_pooled_weight_grad(
        &self,
        l: &Layout,
        g: &Self,
        g_l: &Layout,
        taps: &Self,
        taps_l: &Layout,
        dims: ImageDims,
        kernel: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Self> {
        let x = elementwise::row_major(self.f32(), l);
        let gm = elementwise::row_major(g.f32(), g_l);
        let tm = elementwise::row_major(taps.f32(), taps_l);
        let o = g_l.shape()[1];
        Ok(CpuStorage::F32(conv::conv2d_pooled_weight_grad(&x, dims, &gm, &tm, o, kernel, padding)))
    }

    /// The filters' gradient of a stride-1, undilated convolution (see
    /// [`conv::conv2d_weight_grad`]): `self` the `[N, C, H, W]` images, `g` the
    /// `[N, O, OH, OW]` output gradient; `[O, C, KH, KW]`.
    pub(crate) fn conv2d_weight_grad(
        &self,
        l: &Layout,
        g: &Self,
        g_l: &Layout,
        dims: ImageDims,
        kernel: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Self> {
        let x = elementwise::row_major(self.f32(), l);
        let gm = elementwise::row_major(g.f32(), g_l);
        let o = g_l.shape()[1];
        Ok(CpuStorage::F32(conv::conv2d_weight_grad(&x, dims, &gm, o, kernel, padding)))
    }

    /// The input's gradient of a convolution, image by image (see
    /// [`conv::conv2d_input_grad`]): `self` the `[N, O, OH, OW]` output gradient, `w` the
    /// `[O, C, KH, KW]` filters; `[N, C, H, W]`.
    pub(crate) fn conv2d_input_grad(
        &self,
        l: &Layout,
        w: &Self,
        w_l: &Layout,
        dims: ImageDims,
        win: &Window,
    ) -> Result<Self> {
        let g = elementwise::row_major(self.f32(), l);
        let wm = elementwise::row_major(w.f32(), w_l);
        Ok(CpuStorage::F32(conv::conv2d_input_grad(&g, &wm, w_l.shape()[0], dims, win)))
    }
}

impl BackendStorage for CpuStorage {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
        }
    }

    fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
        }
    }

    fn to_host(&self, l: &Layout) -> Result<Vec<f32>> {
        Ok(elementwise::to_contiguous(self.f32(), l))
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::to_contiguous(self.f32(), l)))
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dst_l: &Layout) -> Result<()> {
        match (self, dst) {
            (CpuStorage::F32(s), CpuStorage::F32(d)) => elementwise::copy_into(s, l, d, dst_l),
        }
        Ok(())
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::unary(self.f32(), l, op)))
    }

    fn binary(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: BinaryOp) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::binary(self.f32(), l, rhs.f32(), rhs_l, op)))
    }

    fn compare(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: CmpOp) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::compare(self.f32(), l, rhs.f32(), rhs_l, op)))
    }

    fn where_cond(&self, l: &Layout, on_true: &Self, t_l: &Layout, on_false: &Self, f_l: &Layout) -> Result<Self> {
        Ok(CpuStorage::F32(elementwise::where_cond(self.f32(), l, on_true.f32(), t_l, on_false.f32(), f_l)))
    }

    fn reduce(&self, l: &Layout, dim: Option<usize>, op: ReduceOp) -> Result<Self> {
        Ok(CpuStorage::F32(reduce::reduce(self.f32(), l, dim, op)))
    }

    fn softmax(&self, l: &Layout, dim: usize, log: bool) -> Result<Self> {
        Ok(CpuStorage::F32(reduce::softmax(self.f32(), l, dim, log)))
    }

    fn cross_entropy_grad(
        &self,
        l: &Layout,
        classes: &Self,
        classes_l: &Layout,
        g: &Self,
        g_l: &Layout,
        scale: f32,
    ) -> Result<Self> {
        // The shapes were checked by `Storage::cross_entropy_grad`.
        let (n, g) = (l.shape()[1], elementwise::row_major(g.f32(), g_l));
        let classes = index::positions(Indices::Labels("cross_entropy"), classes.f32(), classes_l, n)?;
        Ok(CpuStorage::F32(reduce::cross_entropy_grad(
            &elementwise::row_major(self.f32(), l),
            n,
            &classes,
            g[0] * scale,
        )))
    }

    fn matmul(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, mkn: [usize; 3]) -> Result<Self> {
        Ok(CpuStorage::F32(matmul::matmul(self.f32(), l, rhs.f32(), rhs_l, mkn)))
    }

    fn matmul_bias(
        &self,
        l: &Layout,
        rhs: &Self,
        rhs_l: &Layout,
        bias: &Self,
        bias_l: &Layout,
        mkn: [usize; 3],
        relu: bool,
    ) -> Result<Self> {
        let mut y = matmul::matmul(self.f32(), l, rhs.f32(), rhs_l, mkn);
        matmul::add_to_rows(&mut y, &elementwise::row_major(bias.f32(), bias_l), relu);
        Ok(CpuStorage::F32(y))
    }

    fn index_select(&self, l: &Layout, dim: usize, ids: &Self, ids_l: &Layout) -> Result<Self> {
        Ok(CpuStorage::F32(index::index_select(self.f32(), l, dim, ids.f32(), ids_l)?))
    }

    fn index_add(
        &self,
        l: &Layout,
        dim: usize,
        ids: &Self,
        ids_l: &Layout,
        src: &Self,
        src_l: &Layout,
    ) -> Result<Self> {
        Ok(CpuStorage::F32(index::index_add(self.f32(), l, dim, ids.f32(), ids_l, src.f32(), src_l)?))
    }

    fn gather(&self, l: &Layout, dim: usize, index: &Self, index_l: &Layout, who: Indices) -> Result<Self> {
        Ok(CpuStorage::F32(index::gather(self.f32(), l, dim, index.f32(), index_l, who)?))
    }

    fn scatter_add(
        &self,
        l: &Layout,
        dim: usize,
        index: &Self,
        index_l: &Layout,
        src: &Self,
        src_l: &Layout,
    ) -> Result<Self> {
        Ok(CpuStorage::F32(index::scatter_add(self.f32(), l, dim, index.f32(), index_l, src.f32(), src_l)?))
    }

    fn im2col(&self, l: &Layout, dims: ImageDims, win: &Window, pad_value: f32) -> Result<Self> {
        let src = elementwise::row_major(self.f32(), l);
        Ok(CpuStorage::F32(conv::im2col(&src, dims, win, pad_value)))
    }

    fn col2im(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<Self> {
        let cols = elementwise::row_major(self.f32(), l);
        Ok(CpuStorage::F32(conv::col2im(&cols, dims, win)))
    }

    fn max_pool2d(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<(Self, Self)> {
        let src = elementwise::row_major(self.f32(), l);
        let (values, taps) = conv::max_pool(&src, dims, win);
        Ok((CpuStorage::F32(values), CpuStorage::F32(taps)))
    }

    fn max_pool2d_backward(
        &self,
        l: &Layout,
        taps: &Self,
        taps_l: &Layout,
        dims: ImageDims,
        win: &Window,
    ) -> Result<Self> {
        let g = elementwise::row_major(self.f32(), l);
        let taps = elementwise::row_major(taps.f32(), taps_l);
        Ok(CpuStorage::F32(conv::max_pool_backward(&g, &taps, dims, win)))
    }

    fn lstm_cell(&self, l: &Layout, hw: &Self, hw_l: &Layout, c: &Self, c_l: &Layout) -> Result<Self> {
        // Called only by the trait's default recurrence (`backend/lstm.rs`), with layouts it
        // builds from the shapes `Storage::lstm_forward` checked.
        let [n, h] = super::lstm_dims(c_l)?;
        let xw = elementwise::row_major(self.f32(), l);
        let hw = elementwise::row_major(hw.f32(), hw_l);
        let c = elementwise::row_major(c.f32(), c_l);
        Ok(CpuStorage::F32(recurrent::lstm_cell(&xw, &hw, &c, n, h)))
    }

    fn lstm_cell_backward(
        &self,
        l: &Layout,
        c_prev: &Self,
        c_prev_l: &Layout,
        dh: &Self,
        dh_l: &Layout,
        dc: &Self,
        dc_l: &Layout,
    ) -> Result<Self> {
        // Called only by the trait's default recurrence (`backend/lstm.rs`), with layouts it
        // builds from the shapes `Storage::lstm_backward` checked.
        let [n, h] = super::lstm_dims(c_prev_l)?;
        let s = elementwise::row_major(self.f32(), l);
        let c = elementwise::row_major(c_prev.f32(), c_prev_l);
        let dh = elementwise::row_major(dh.f32(), dh_l);
        let dc = elementwise::row_major(dc.f32(), dc_l);
        Ok(CpuStorage::F32(recurrent::lstm_cell_backward(&s, &c, &dh, &dc, n, h)))
    }

    fn zeros(&self, n: usize) -> Result<Self> {
        Ok(CpuStorage::full(n, 0.0))
    }

    fn lstm_forward(
        &self,
        l: &Layout,
        w_ih: &Self,
        w_ih_l: &Layout,
        bias: &Self,
        bias_l: &Layout,
        w_hh: &Self,
        w_hh_l: &Layout,
        h0: &Self,
        h0_l: &Layout,
        c0: &Self,
        c0_l: &Layout,
    ) -> Result<Self> {
        // Shapes were checked by `Storage::lstm_forward`.
        let [t, n, i] = super::lstm::dims3(l, "lstm")?;
        let h = w_hh_l.shape()[1];
        let [w_ih, bias, w_hh, h0, c0] = [(w_ih, w_ih_l), (bias, bias_l), (w_hh, w_hh_l), (h0, h0_l), (c0, c0_l)]
            .map(|(s, l)| elementwise::row_major(s.f32(), l));
        let weights = recurrent::LstmWeights { w_ih: &w_ih, bias: &bias, w_hh: &w_hh, h0: &h0, c0: &c0 };
        Ok(CpuStorage::F32(recurrent::lstm_forward(self.f32(), l, weights, [t, n, i, h])))
    }

    fn lstm_backward(
        &self,
        l: &Layout,
        g: &Self,
        g_l: &Layout,
        c0: &Self,
        c0_l: &Layout,
        w_hh: &Self,
        w_hh_l: &Layout,
        want_dh0: bool,
    ) -> Result<(Self, Option<Self>, Self)> {
        // Shapes were checked by `Storage::lstm_backward`.
        let [t, n, h6] = super::lstm::dims3(l, "lstm backward")?;
        let rec = elementwise::row_major(self.f32(), l);
        let g = elementwise::row_major(g.f32(), g_l);
        let c0 = elementwise::row_major(c0.f32(), c0_l);
        let w_hh = elementwise::row_major(w_hh.f32(), w_hh_l);
        let (dz, dh0, dc0) = recurrent::lstm_backward(&rec, &g, &c0, &w_hh, [t, n, h6 / 6], want_dh0);
        Ok((CpuStorage::F32(dz), dh0.map(CpuStorage::F32), CpuStorage::F32(dc0)))
    }

    fn optimizer_step(
        &mut self,
        l: &Layout,
        grad: &Self,
        grad_l: &Layout,
        state: &mut [&mut Self],
        update: &OptimizerUpdate,
        staged: Option<(&Self, usize)>,
    ) -> Result<()> {
        // Contiguity, sizes and the staged numbers' place were checked by
        // `Storage::optimizer_steps`.
        let n = l.elem_count();
        let update = &match staged {
            Some((s, at)) => {
                let mut v = [0.0; STAGED];
                v.copy_from_slice(&s.f32()[at..at + STAGED]);
                update.with_staged(v)
            }
            None => *update,
        };
        let g = &grad.f32()[grad_l.offset()..grad_l.offset() + n];
        let mut bufs: Vec<&mut [f32]> = state
            .iter_mut()
            .map(|s| match &mut **s {
                CpuStorage::F32(v) => v.as_mut_slice(),
            })
            .collect();
        match self {
            CpuStorage::F32(w) => optim::step(&mut w[l.offset()..l.offset() + n], g, &mut bufs, update),
        }
        Ok(())
    }
}
