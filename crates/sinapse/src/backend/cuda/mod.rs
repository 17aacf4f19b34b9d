//! The CUDA backend: the kernel set on an NVIDIA GPU, through `cudarc` loaded at run time.
//!
//! Elementwise work, reductions, indexing, pooling, im2col, the LSTM cell and the optimizer
//! updates are CUDA C kernels (`kernels.cu`) compiled by NVRTC on first use and kept on disk
//! for later processes ([`kernel_cache`]); the matrix
//! product is cuBLAS (strided batched, TF32 off as in PyTorch); memory comes from a caching
//! allocator ([`alloc`]). Work is queued on one stream and runs in order; the host waits only
//! when it reads values back ([`BackendStorage::to_host`]).

pub(crate) mod alloc;
#[cfg(unix)]
pub(crate) mod emulated;
#[cfg(all(test, unix))]
mod emulator;
pub(crate) mod gpu;
mod kernel_cache;
pub(crate) mod nccl;

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;

use super::{
    BackendStorage, BinaryOp, ClassTotal, CmpOp, DType, ImageDims, Indices, OptimizerUpdate, ReduceOp, StepItem,
    UnaryOp, Window, STAGED,
};
use crate::layout::{contiguous_strides, Layout};
use crate::{Device, Error, Result};
use gpu::{blocks, grid, launch, Block, Conv, Gpu, Launched, ListEntry, Strided, UpdateList, Values, VALUES_MAX};

pub use alloc::MemoryStats;
pub use gpu::{KernelTime, LaunchCounts};

/// f32 values in GPU memory.
#[derive(Debug)]
pub(crate) struct CudaStorage {
    block: Block,
    len: usize,
}

impl CudaStorage {
    fn gpu(&self) -> &Arc<Gpu> {
        self.block.gpu()
    }

    /// The buffer's device address.
    pub(crate) fn address(&self) -> u64 {
        self.block.ptr
    }

    /// An uninitialised buffer of `n` values on `gpu`; `what` names it if memory runs out.
    pub(crate) fn alloc(gpu: &Arc<Gpu>, n: usize, what: &str) -> Result<CudaStorage> {
        Ok(CudaStorage { block: gpu.alloc(n, what)?, len: n })
    }

    /// The values of `data` copied to `gpu`.
    pub(crate) fn from_host(gpu: &Arc<Gpu>, data: &[f32]) -> Result<CudaStorage> {
        gpu.refuse_in_capture("copy to device")?;
        let s = CudaStorage::alloc(gpu, data.len(), "to")?;
        if !data.is_empty() {
            let _claim = gpu.bind("copy to device")?;
            // SAFETY: the block holds at least `data.len()` f32 values. From pageable memory
            // the driver copies `data` to a staging buffer before returning (CUDA's "API
            // synchronization behavior": asynchronous host-to-device copies), so `data` may go
            // once the call returns; the transfer itself is queued on the GPU's stream.
            unsafe { cudarc::driver::result::memcpy_htod_async(s.block.ptr, data, gpu.stream.cu_stream()) }
                .map_err(|e| gpu.failure("copy to device", e))?;
            gpu.launched(Launched::HostCopy);
        }
        Ok(s)
    }

    /// Writes `data` over the values from position `at` on (checked by the caller), queued on
    /// the GPU's stream.
    pub(crate) fn write_host(&mut self, at: usize, data: &[f32]) -> Result<()> {
        let gpu = self.gpu().clone();
        gpu.refuse_in_capture("copy to device")?;
        if data.is_empty() {
            return Ok(());
        }
        let _claim = gpu.bind("copy to device")?;
        // SAFETY: the block holds `at + data.len()` values (checked by `Storage::write_host`);
        // from pageable memory the driver stages `data` before returning (see `from_host`).
        unsafe {
            cudarc::driver::result::memcpy_htod_async(self.block.ptr + 4 * at as u64, data, gpu.stream.cu_stream())
        }
        .map_err(|e| gpu.failure("copy to device", e))?;
        gpu.launched(Launched::HostCopy);
        Ok(())
    }

    /// The value at position `at` of each of `parts` (all on one GPU), in order, in a new
    /// buffer: one launch per [`VALUES_MAX`] values.
    pub(crate) fn gather_values(parts: &[(&CudaStorage, usize)]) -> Result<CudaStorage> {
        let Some((first, _)) = parts.first() else {
            return Err(Error::invalid("gather_values", "no values"));
        };
        let gpu = first.gpu();
        if let Some((s, at)) = parts.iter().find(|(s, at)| !Arc::ptr_eq(s.gpu(), gpu) || *at >= s.len) {
            return Err(Error::invalid(
                "gather_values",
                format!(
                    "value {at} of {} values on cuda:{} (the first is on cuda:{})",
                    s.len,
                    s.gpu().ordinal,
                    gpu.ordinal
                ),
            ));
        }
        let out = CudaStorage::alloc(gpu, parts.len(), "gather_values")?;
        for (k, chunk) in parts.chunks(VALUES_MAX).enumerate() {
            let mut v = Values { src: [0; VALUES_MAX], count: chunk.len() as u64 };
            for (src, (s, at)) in v.src.iter_mut().zip(chunk) {
                *src = s.block.ptr + 4 * *at as u64;
            }
            let dst = out.block.ptr + 4 * (k * VALUES_MAX) as u64;
            launch!(gpu, "gather_values", grid(chunk.len()); v, dst)?;
        }
        Ok(out)
    }

    /// `n` copies of `value` on `gpu`.
    pub(crate) fn full(gpu: &Arc<Gpu>, n: usize, value: f32) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(gpu, n, "fill")?;
        let count = n as u64;
        if n > 0 {
            launch!(gpu, "fill", grid(n); s.block.ptr, count, value)?;
        }
        Ok(s)
    }

    /// `start, start + step, ..` (`n` values) on `gpu`.
    pub(crate) fn arange(gpu: &Arc<Gpu>, start: f32, step: f32, n: usize) -> Result<CudaStorage> {
        let s = CudaStorage::alloc(gpu, n, "arange")?;
        let count = n as u64;
        if n > 0 {
            launch!(gpu, "arange", grid(n); s.block.ptr, count, start, step)?;
        }
        Ok(s)
    }

    /// A [`ClassTotal`] of the rows of this `[rows, n]` buffer at `l` and their `classes`
    /// (checked by `Storage::class_total`), by one block, for `rows·n` up to
    /// [`CLASS_TOTAL_MAX`] with `n` at least 1; `None` for other sizes (one block would be
    /// slow there, or, with no classes, the composed ops' error is wanted). `op` names it, and
    /// is the loss a bad class label is reported as.
    pub(crate) fn class_total(
        &self,
        op: &'static str,
        l: &Layout,
        classes: &Self,
        classes_l: &Layout,
        total: ClassTotal,
    ) -> Result<Option<Self>> {
        let (rows, n) = (l.shape()[0], l.shape()[1]);
        if rows == 0 || n == 0 || rows.saturating_mul(n) > CLASS_TOTAL_MAX {
            return Ok(None);
        }
        let (which, scale) = match total {
            ClassTotal::Picked { scale } => (0i32, scale),
            ClassTotal::Correct => (1, 1.0),
        };
        let gpu = self.gpu();
        let out = CudaStorage::alloc(gpu, 1, op)?;
        let (lx, lc) = (Strided::of(l, op)?, Strided::of(classes_l, op)?);
        let (r, c, code) = (rows as u64, n as u64, gpu::error_code(Indices::Labels(op)));
        launch!(gpu, "class_total", blocks(1, lane_threads(rows));
            self.block.ptr, lx, classes.block.ptr, lc, out.block.ptr, r, c, which, scale, gpu.errors_ptr, code)?;
        Ok(Some(out))
    }

    /// The gradient through a dense layer's fused ReLU and its bias's gradient, in one launch:
    /// this `[rows, cols]` output gradient at `l` where the layer's output `y` (at `y_l`, same
    /// shape, checked by `Storage::relu_grad_sums`) is positive, else 0, row-major; and that
    /// masked gradient's column sums `[cols]`.
    pub(crate) fn relu_grad_sums(&self, l: &Layout, y: &Self, y_l: &Layout) -> Result<(Self, Self)> {
        let gpu = self.gpu();
        let (rows, cols) = (l.shape()[0], l.shape()[1]);
        let masked = CudaStorage::alloc(gpu, rows * cols, "linear_relu")?;
        let sums = CudaStorage::alloc(gpu, cols, "linear_relu")?;
        if cols > 0 {
            let (lg, ly) = (Strided::of(l, "linear_relu")?, Strided::of(y_l, "linear_relu")?);
            let threads = column_threads(rows);
            let (r, c) = (rows as u64, cols as u64);
            launch!(gpu, "relu_grad_sums", blocks(cols.div_ceil(32), threads);
                self.block.ptr, lg, y.block.ptr, ly, masked.block.ptr, sums.block.ptr, r, c)?;
        }
        Ok((masked, sums))
    }

    /// Max pooling of the images at `l`: the windows' maxima and taps, as
    /// [`BackendStorage::max_pool2d`] gives them. With a `bias` (`[C]`), channel c's is
    /// added to each of its values first (a convolution's bias, added where the pooling reads
    /// its output). With `relu`, the maxima's ReLU, and a window whose maximum is not positive
    /// gets a tap that matches no pixel, so that the adjoint sends it no gradient (the ReLU's
    /// gradient would have zeroed it).
    pub(crate) fn max_pool(
        &self,
        l: &Layout,
        bias: Option<(&Self, &Layout)>,
        dims: ImageDims,
        win: &Window,
        relu: bool,
    ) -> Result<(Self, Self)> {
        let gpu = self.gpu();
        let ([n, c, _, _], [oh, ow]) = (dims.input, dims.output);
        let total = n * c * oh * ow;
        let values = CudaStorage::alloc(gpu, total, "max_pool2d")?;
        let taps = CudaStorage::alloc(gpu, total, "max_pool2d")?;
        if total > 0 {
            let (lx, g, relu) = (Strided::of(l, "max_pool2d")?, Conv::new(dims, win), i32::from(relu));
            // Without a bias, the images' address stands in for it (a launch's addresses must
            // be in an allocation), never read.
            let (b, lb) = match bias {
                Some((b, lb)) => (b.block.ptr, Strided::of(lb, "max_pool2d")?),
                None => (self.block.ptr, Strided::of(&Layout::contiguous(&[c]), "max_pool2d")?),
            };
            let has_bias = i32::from(bias.is_some());
            // The images' strides along H and W.
            let &[_, _, hs, ws] = l.strides() else {
                return Err(Error::invalid("max_pool2d", format!("needs [N, C, H, W] images, got {:?}", l.shape())));
            };
            let (hs, ws) = (hs as i64, ws as i64);
            launch!(gpu, "max_pool", grid(total);
                self.block.ptr, lx, hs, ws, b, lb, has_bias, values.block.ptr, taps.block.ptr, g, relu)?;
        }
        Ok((values, taps))
    }

    /// The adjoint of [`CudaStorage::max_pool`] from the gradient `self` (at `l`) of its
    /// values: the images' gradient, row-major, or with `channel_major` as `[C, N, H, W]` (the
    /// layout of a convolution's matrix product, which its own gradient then needs).
    pub(crate) fn max_pool_backward(
        &self,
        l: &Layout,
        taps: &Self,
        taps_l: &Layout,
        dims: ImageDims,
        win: &Window,
        channel_major: bool,
    ) -> Result<Self> {
        let gpu = self.gpu();
        let inputs = dims.input.iter().product();
        if l.elem_count() == 0 {
            // No window: no pixel had a gradient.
            return CudaStorage::full(gpu, inputs, 0.0);
        }
        let dx = CudaStorage::alloc(gpu, inputs, "max_pool2d")?;
        if inputs > 0 {
            let (lg, lt) = (Strided::of(l, "max_pool2d")?, Strided::of(taps_l, "max_pool2d")?);
            let [n, c, h, w] = dims.input.map(|d| d as u64);
            // Where pixel (b, c, y, x) goes: b·sn + c·sc + y·W + x.
            let (sn, sc) = if channel_major { (h * w, n * h * w) } else { (c * h * w, h * w) };
            let g = Conv::new(dims, win);
            // One thread per input pixel, gathering from the windows over it.
            launch!(gpu, "max_pool_backward", grid(inputs);
                self.block.ptr, lg, taps.block.ptr, lt, dx.block.ptr, sn, sc, g)?;
        }
        Ok(dx)
    }

    /// The matrix operand `[batch.., rows, cols]` at `l` as cuBLAS reads it, copied to a
    /// row-major buffer first when its strides are not ones cuBLAS takes.
    fn operand(&self, l: &Layout, rows: usize, cols: usize) -> Result<Operand> {
        if let Some(op) = Operand::describe(self.block.ptr, l, rows, cols) {
            return Ok(op);
        }
        let copy = self.copy_strided(l)?;
        let op = Operand::describe(copy.block.ptr, &Layout::contiguous(l.shape()), rows, cols)
            .ok_or_else(|| self.gpu().failure("matmul", "a row-major operand was refused"))?;
        Ok(Operand { _copy: Some(copy), ..op })
    }
}

/// A matrix operand of a strided batched product in cuBLAS's terms.
struct Operand {
    /// Device address of the first matrix.
    ptr: u64,
    /// N: row-major storage (cuBLAS, column-major, sees the transpose); T: column-major.
    op: cublasOperation_t,
    /// Leading dimension.
    ld: i32,
    /// Elements from one matrix of the batch to the next (0: one matrix for all).
    batch_stride: i64,
    /// The row-major copy the operand points into, when one was needed.
    _copy: Option<CudaStorage>,
}

impl Operand {
    /// `l` as an operand when its matrices are row- or column-major with a leading dimension
    /// cuBLAS accepts and its batch axes collapse to one stride; else `None`.
    fn describe(base: u64, l: &Layout, rows: usize, cols: usize) -> Option<Operand> {
        let r = l.rank();
        let (s, shape) = (l.strides(), l.shape());
        let (sr, sc) = (s[r - 2], s[r - 1]);
        let (op, ld) = if (cols == 1 || sc == 1) && (rows == 1 || sr >= cols.max(1)) {
            (cublasOperation_t::CUBLAS_OP_N, if rows == 1 { cols.max(1) } else { sr })
        } else if (rows == 1 || sr == 1) && (cols == 1 || sc >= rows.max(1)) {
            (cublasOperation_t::CUBLAS_OP_T, if cols == 1 { rows.max(1) } else { sc })
        } else {
            return None;
        };
        // The batch axes, innermost first, must step as one axis (or all by 0: broadcast).
        let mut batch_stride: Option<usize> = None;
        let mut span = 0usize;
        for d in (0..r - 2).rev() {
            if shape[d] == 1 {
                continue;
            }
            match batch_stride {
                None => {
                    batch_stride = Some(s[d]);
                    span = s[d] * shape[d];
                }
                Some(0) if s[d] == 0 => {}
                Some(b) if b > 0 && s[d] == span => span = s[d] * shape[d],
                _ => return None,
            }
        }
        Some(Operand {
            ptr: base + 4 * l.offset() as u64,
            op,
            ld: i32::try_from(ld).ok()?,
            batch_stride: batch_stride.unwrap_or(0) as i64,
            _copy: None,
        })
    }
}

/// The kernel's op code for a unary op, and its two parameters.
fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Affine { mul, add } => (0, mul, add),
        UnaryOp::Exp => (1, 0.0, 0.0),
        UnaryOp::Log => (2, 0.0, 0.0),
        UnaryOp::Sqrt => (3, 0.0, 0.0),
        UnaryOp::Powf(p) => (4, p, 0.0),
        UnaryOp::Abs => (5, 0.0, 0.0),
        UnaryOp::Sign => (6, 0.0, 0.0),
        UnaryOp::Clamp { min, max } => (7, min, max),
        UnaryOp::Step => (8, 0.0, 0.0),
        UnaryOp::Sigmoid => (9, 0.0, 0.0),
        UnaryOp::Tanh => (10, 0.0, 0.0),
        UnaryOp::Relu => (11, 0.0, 0.0),
        UnaryOp::LeakyRelu(slope) => (12, slope, 0.0),
        UnaryOp::BceTargetGrad => (13, 0.0, 0.0),
        UnaryOp::Sin => (14, 0.0, 0.0),
        UnaryOp::Cos => (15, 0.0, 0.0),
        UnaryOp::Log1p => (16, 0.0, 0.0),
        UnaryOp::Expm1 => (17, 0.0, 0.0),
        UnaryOp::Erf => (18, 0.0, 0.0),
        UnaryOp::Floor => (19, 0.0, 0.0),
        UnaryOp::Ceil => (20, 0.0, 0.0),
        UnaryOp::Round => (21, 0.0, 0.0),
    }
}

/// The kernel's op code for a binary op, and its two parameters.
fn binary_code(op: BinaryOp) -> (i32, f32, f32) {
    match op {
        BinaryOp::Add => (0, 0.0, 0.0),
        BinaryOp::Sub => (1, 0.0, 0.0),
        BinaryOp::Mul => (2, 0.0, 0.0),
        BinaryOp::Div => (3, 0.0, 0.0),
        BinaryOp::Maximum => (4, 0.0, 0.0),
        BinaryOp::Minimum => (5, 0.0, 0.0),
        BinaryOp::SigmoidGrad => (6, 0.0, 0.0),
        BinaryOp::TanhGrad => (7, 0.0, 0.0),
        BinaryOp::ReluGrad => (8, 0.0, 0.0),
        BinaryOp::LeakyReluGrad(slope) => (9, slope, 0.0),
        BinaryOp::ClampGrad { min, max } => (10, min, max),
        BinaryOp::Bce => (11, 0.0, 0.0),
        BinaryOp::BceInputGrad => (12, 0.0, 0.0),
        BinaryOp::BceWithLogits => (13, 0.0, 0.0),
        BinaryOp::Pow => (14, 0.0, 0.0),
        BinaryOp::PowExponentGrad => (15, 0.0, 0.0),
    }
}

/// The kernel's op code for a comparison.
fn compare_code(op: CmpOp) -> i32 {
    match op {
        CmpOp::Eq => 100,
        CmpOp::Ne => 101,
        CmpOp::Lt => 102,
        CmpOp::Le => 103,
        CmpOp::Gt => 104,
        CmpOp::Ge => 105,
    }
}

/// `[outer, len, inner]` around axis `dim` of `shape` (`None`: everything as one axis).
fn around(shape: &[usize], dim: Option<usize>) -> (usize, usize, usize) {
    match dim {
        Some(d) => (shape[..d].iter().product(), shape[d], shape[d + 1..].iter().product()),
        None => (1, shape.iter().product(), 1),
    }
}

/// Most values (`rows·classes`) of a batch whose [`ClassTotal`] one block takes: a training
/// step's loss and correct answers (larger ones take the composed ops, over many blocks).
pub(crate) const CLASS_TOTAL_MAX: usize = 1 << 16;

/// A view whose axes before its last two have size 1, of the buffer at device address `ptr`,
/// as `linear_rows` takes it: the address of its first element, then the strides of its last
/// two axes (0 for an axis it lacks). An empty view keeps `ptr` (nothing is read through it,
/// and its offset may be the buffer's end).
pub(crate) fn matrix_view(ptr: u64, l: &Layout) -> (u64, u64, u64) {
    let (shape, s) = (l.shape(), l.strides());
    debug_assert!(shape.iter().rev().skip(2).all(|&d| d == 1), "a batch of matrices: {shape:?}");
    let stride = |from_end: usize| s.len().checked_sub(from_end).map_or(0, |a| s[a] as u64);
    let first = if l.elem_count() == 0 { ptr } else { ptr + 4 * l.offset() as u64 };
    (first, stride(2), stride(1))
}

/// Most rows a dense layer's product, bias and ReLU take in one `linear_rows` launch
/// (`LINEAR_ROWS_MAX` in kernels.cu); more go to cuBLAS.
pub(crate) const LINEAR_ROWS_MAX: usize = 8;

/// Threads for a block per 32 neighbouring columns of `rows` values each (`reduce_block` with
/// 32 lanes, `relu_grad_sums`): rows of 32 threads enough for about 4 values each (up to 32
/// rows), so that a batch of 128 is still read in 4 steps, not 32.
fn column_threads(rows: usize) -> u32 {
    32 * (rows / 4).next_power_of_two().clamp(1, 32) as u32
}

/// The pieces `reduce_block` cuts each lane of a sum of `len` values into, where its
/// `blocks` (one per lane, or per 32 side by side) would leave most of a GPU's
/// multiprocessors idle (an H100 has 132): enough for about 256 blocks, each piece at least
/// 4096 values. 1 (no cut) for 128 blocks or more, or lanes under 8192 values. A convolution
/// bias's gradient is such a sum: 16 channels of 36,864 values each in the `cnn` benchmark's
/// first layer, which one block per channel reads with 16 of the GPU's multiprocessors.
fn sum_parts(blocks: usize, len: usize) -> usize {
    if blocks >= 128 {
        return 1;
    }
    (256 / blocks.max(1)).min(len / 4096).max(1)
}

/// A power of two of threads for one block per lane of `len` values (32 to 1024).
fn lane_threads(len: usize) -> u32 {
    len.clamp(32, 1024).next_power_of_two().min(1024) as u32
}

impl BackendStorage for CudaStorage {
    fn device(&self) -> Device {
        self.gpu().device()
    }

    fn dtype(&self) -> DType {
        DType::F32
    }

    fn len(&self) -> usize {
        self.len
    }

    fn to_host(&self, l: &Layout) -> Result<Vec<f32>> {
        let gpu = self.gpu();
        gpu.refuse_in_capture("copy to host")?;
        let n = l.elem_count();
        let copy;
        let (ptr, offset) = if l.is_contiguous() {
            (self.block.ptr, l.offset())
        } else {
            copy = self.copy_strided(l)?;
            (copy.block.ptr, 0)
        };
        let mut out = vec![0.0f32; n];
        let _claim = gpu.bind("copy to host")?;
        if n > 0 {
            // SAFETY: `out` holds n values and the view's n values start at `offset`; the copy
            // is queued after every kernel that writes them, and the stream is synchronised
            // below before `out` is read.
            unsafe {
                cudarc::driver::result::memcpy_dtoh_async(&mut out, ptr + 4 * offset as u64, gpu.stream.cu_stream())
            }
            .map_err(|e| gpu.failure("copy to host", e))?;
            gpu.launched(Launched::HostCopy);
        }
        gpu.stream.synchronize().map_err(|e| gpu.failure("copy to host", e))?;
        gpu.check_errors()?;
        Ok(out)
    }

    fn copy_strided(&self, l: &Layout) -> Result<Self> {
        let gpu = self.gpu();
        let n = l.elem_count();
        let out = CudaStorage::alloc(gpu, n, "copy")?;
        if n > 0 {
            let (lx, count) = (Strided::of(l, "copy")?, n as u64);
            launch!(gpu, "copy_strided", grid(n); self.block.ptr, lx, out.block.ptr, count)?;
        }
        Ok(out)
    }

    fn copy_into(&self, l: &Layout, dst: &mut Self, dst_l: &Layout) -> Result<()> {
        let gpu = self.gpu();
        let n = l.elem_count();
        if n > 0 {
            let (lx, ld, count) = (Strided::of(l, "copy")?, Strided::of(dst_l, "copy")?, n as u64);
            launch!(gpu, "copy_into", grid(n); self.block.ptr, lx, dst.block.ptr, ld, count)?;
        }
        Ok(())
    }

    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self> {
        let gpu = self.gpu();
        let n = l.elem_count();
        let out = CudaStorage::alloc(gpu, n, op.name())?;
        if n > 0 {
            let (code, p0, p1) = unary_code(op);
            let (lx, count) = (Strided::of(l, op.name())?, n as u64);
            launch!(gpu, "unary", grid(n); self.block.ptr, lx, out.block.ptr, count, code, p0, p1)?;
        }
        Ok(out)
    }

    fn binary(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: BinaryOp) -> Result<Self> {
        let (code, p0, p1) = binary_code(op);
        self.zip(l, rhs, rhs_l, op.name(), code, p0, p1)
    }

    fn compare(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: CmpOp) -> Result<Self> {
        self.zip(l, rhs, rhs_l, op.name(), compare_code(op), 0.0, 0.0)
    }

    fn where_cond(&self, l: &Layout, on_true: &Self, t_l: &Layout, on_false: &Self, f_l: &Layout) -> Result<Self> {
        let gpu = self.gpu();
        let n = l.elem_count();
        let out = CudaStorage::alloc(gpu, n, "where_cond")?;
        if n > 0 {
            let (lc, lt, lf) =
                (Strided::of(l, "where_cond")?, Strided::of(t_l, "where_cond")?, Strided::of(f_l, "where_cond")?);
            let count = n as u64;
            launch!(gpu, "where_cond", grid(n);
                self.block.ptr, lc, on_true.block.ptr, lt, on_false.block.ptr, lf, out.block.ptr, count)?;
        }
        Ok(out)
    }

    fn reduce(&self, l: &Layout, dim: Option<usize>, op: ReduceOp) -> Result<Self> {
        let gpu = self.gpu();
        let (outer, len, inner) = around(l.shape(), dim);
        let outputs = outer * inner;
        if outputs == 0 {
            return CudaStorage::alloc(gpu, outputs, "reduce");
        }
        let code: i32 = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
            ReduceOp::ArgMax => 3,
            ReduceOp::ArgMin => 4,
        };
        let lx = Strided::of(l, "reduce")?;
        let (o, k, i) = (outer as u64, len as u64, inner as u64);
        // Short reductions: a thread each. Long ones: a block of threads each, or, where the
        // outputs lie side by side (a sum over a batch's rows: a bias's gradient), a block
        // per 32 of them whose warps read 32 neighbouring values at a time (one thread per
        // output there would walk a [1024, 4096] gradient's 1024 rows alone, 16 blocks in all).
        if len <= 64 {
            let out = CudaStorage::alloc(gpu, outputs, "reduce")?;
            launch!(gpu, "reduce_thread", grid(outputs); self.block.ptr, lx, out.block.ptr, o, k, i, code)?;
            return Ok(out);
        }
        let cols = if inner >= 32 { 32u32 } else { 1 };
        let groups = outer * inner.div_ceil(cols as usize);
        // A sum over few long lanes is cut into pieces, a block each, whose partial sums a
        // second reduction adds up.
        let parts = if op == ReduceOp::Sum { sum_parts(groups, len) } else { 1 };
        let piece = len.div_ceil(parts);
        let threads = if cols == 32 { column_threads(piece) } else { lane_threads(piece).min(256) };
        let out = CudaStorage::alloc(gpu, outputs * parts, "reduce")?;
        let p = parts as u64;
        launch!(gpu, "reduce_block", blocks(groups * parts, threads);
            self.block.ptr, lx, out.block.ptr, o, k, i, code, cols, p)?;
        if parts == 1 {
            return Ok(out);
        }
        out.reduce(&Layout::contiguous(&[outer, parts, inner]), Some(1), ReduceOp::Sum)
    }

    fn softmax(&self, l: &Layout, dim: usize, log: bool) -> Result<Self> {
        let gpu = self.gpu();
        let n = l.elem_count();
        let out = CudaStorage::alloc(gpu, n, "softmax")?;
        if n == 0 {
            return Ok(out);
        }
        let (outer, len, inner) = around(l.shape(), Some(dim));
        let lx = Strided::of(l, "softmax")?;
        let (o, k, i, log) = (outer as u64, len as u64, inner as u64, i32::from(log));
        let cfg = blocks(outer * inner, lane_threads(len).min(256));
        launch!(gpu, "softmax", cfg; self.block.ptr, lx, out.block.ptr, o, k, i, log)?;
        Ok(out)
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
        let gpu = self.gpu();
        // The shapes were checked by `Storage::cross_entropy_grad`.
        let (rows, n) = (l.shape()[0], l.shape()[1]);
        let out = CudaStorage::alloc(gpu, rows * n, "cross_entropy")?;
        if rows * n > 0 {
            let (llp, lc, lg) = (
                Strided::of(l, "cross_entropy")?,
                Strided::of(classes_l, "cross_entropy")?,
                Strided::of(g_l, "cross_entropy")?,
            );
            let (r, c, code) = (rows as u64, n as u64, gpu::error_code(Indices::Labels("cross_entropy")));
            launch!(gpu, "cross_entropy_grad", grid(rows * n);
                self.block.ptr, llp, classes.block.ptr, lc, g.block.ptr, lg, scale, out.block.ptr, r, c,
                gpu.errors_ptr, code)?;
        }
        Ok(out)
    }

    fn matmul(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, [m, k, n]: [usize; 3]) -> Result<Self> {
        let gpu = self.gpu();
        let batch: usize = l.shape()[..l.rank() - 2].iter().product();
        let out = CudaStorage::alloc(gpu, batch * m * n, "matmul")?;
        if batch * m * n == 0 {
            return Ok(out);
        }
        if k == 0 {
            let (count, zero) = ((batch * m * n) as u64, 0.0f32);
            launch!(gpu, "fill", grid(batch * m * n); out.block.ptr, count, zero)?;
            return Ok(out);
        }
        let too_big =
            || Error::invalid("matmul", format!("sizes {m}x{k}x{n} (batch {batch}) exceed cuBLAS's 32-bit sizes"));
        let int = |v: usize| i32::try_from(v).map_err(|_| too_big());
        let (a, b) = (self.operand(l, m, k)?, rhs.operand(rhs_l, k, n)?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let _claim = gpu.bind("matmul")?;
        let mut mode = gpu.blas_mode.lock().map_err(|_| gpu.failure("matmul", "the cuBLAS lock was poisoned"))?;
        gpu.apply_math_mode(&mut mode)?;
        let timed = gpu.profile_start()?;
        // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS gets B first.
        // SAFETY: the operands' addresses, leading dimensions and batch strides describe
        // matrices inside their buffers (checked by `Operand::describe`), the output holds
        // batch·m·n values, and the call is queued on the GPU's stream, ordered after the
        // kernels that wrote the operands.
        unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                *gpu.blas.handle(),
                b.op,
                a.op,
                int(n)?,
                int(m)?,
                int(k)?,
                &alpha,
                b.ptr as *const f32,
                b.ld,
                b.batch_stride,
                a.ptr as *const f32,
                a.ld,
                a.batch_stride,
                &beta,
                out.block.ptr as *mut f32,
                int(n)?,
                (m * n) as i64,
                int(batch)?,
            )
        }
        .map_err(|e| gpu.failure("matmul (cuBLAS)", e))?;
        gpu.launched(Launched::Product);
        gpu.profile_end(timed, || {
            let batched = (batch > 1).then(|| format!("{batch} products"));
            let notes: Vec<String> = batched.into_iter().chain((*mode).then(|| "TF32".to_string())).collect();
            let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join(", ")) };
            format!("sgemm [{m} x {k}] · [{k} x {n}]{notes}")
        })?;
        Ok(out)
    }

    /// For up to [`LINEAR_ROWS_MAX`] rows (a batch-1 inference), the product, bias and ReLU
    /// in one launch (`linear_rows`); otherwise the product by cuBLAS, then the bias (and the
    /// ReLU) in one kernel over its output (`bias_rows`), in place: two launches where the
    /// trait's default makes three.
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
        let [m, _, n] = mkn;
        let batch: usize = l.shape()[..l.rank() - 2].iter().product();
        if batch != 1 || bias_l.shape() != [n] {
            return Err(Error::invalid("linear", format!("bias {:?} for a {m} x {n} product", bias_l.shape())));
        }
        // (One block per 8 columns, up to `blocks`' 2²⁰ blocks.)
        if (1..=LINEAR_ROWS_MAX).contains(&m) && n > 0 && n <= 8 << 20 {
            let gpu = self.gpu();
            let y = CudaStorage::alloc(gpu, m * n, "linear")?;
            let (x, x_row, x_in) = matrix_view(self.block.ptr, l);
            let (w, w_in, w_out) = matrix_view(rhs.block.ptr, rhs_l);
            let (b, _, b_out) = matrix_view(bias.block.ptr, bias_l);
            let [rows, k, cols] = mkn.map(|v| v as u64);
            let relu = i32::from(relu);
            // A warp per output column, 8 to a block.
            launch!(gpu, "linear_rows", blocks(n.div_ceil(8), 256);
                x, x_row, x_in, w, w_in, w_out, b, b_out, y.block.ptr, rows, k, cols, relu)?;
            return Ok(y);
        }
        let y = self.matmul(l, rhs, rhs_l, mkn)?;
        if m * n > 0 {
            let gpu = self.gpu();
            let lb = Strided::of(bias_l, "linear")?;
            let (rows, cols, relu) = (m as u64, n as u64, i32::from(relu));
            launch!(gpu, "bias_rows", grid(m * n); y.block.ptr, bias.block.ptr, lb, rows, cols, relu)?;
        }
        Ok(y)
    }

    fn index_select(&self, l: &Layout, dim: usize, ids: &Self, ids_l: &Layout) -> Result<Self> {
        let gpu = self.gpu();
        let (outer, size, inner) = around(l.shape(), Some(dim));
        let nids = ids_l.elem_count();
        let total = outer * nids * inner;
        let out = CudaStorage::alloc(gpu, total, "index_select")?;
        if total > 0 {
            let (lx, li) = (Strided::of(l, "index_select")?, Strided::of(ids_l, "index_select")?);
            let [o, s, i, k] = [outer, size, inner, nids].map(|v| v as u64);
            let code = gpu::error_code(Indices::Positions("index_select"));
            launch!(gpu, "index_select", grid(total);
                self.block.ptr, lx, ids.block.ptr, li, out.block.ptr, o, s, i, k, gpu.errors_ptr, code)?;
        }
        Ok(out)
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
        let gpu = self.gpu();
        let out = self.copy_strided(l)?;
        let (outer, size, inner) = around(l.shape(), Some(dim));
        let nids = ids_l.elem_count();
        let total = outer * nids * inner;
        if total > 0 {
            let (ls, li) = (Strided::of(src_l, "index_add")?, Strided::of(ids_l, "index_add")?);
            let [o, s, i, k] = [outer, size, inner, nids].map(|v| v as u64);
            let code = gpu::error_code(Indices::Positions("index_add"));
            launch!(gpu, "index_add", grid(total);
                src.block.ptr, ls, ids.block.ptr, li, out.block.ptr, o, s, i, k, gpu.errors_ptr, code)?;
        }
        Ok(out)
    }

    fn gather(&self, l: &Layout, dim: usize, index: &Self, index_l: &Layout, who: Indices) -> Result<Self> {
        let gpu = self.gpu();
        let n = index_l.elem_count();
        let out = CudaStorage::alloc(gpu, n, "gather")?;
        if n > 0 {
            let (lx, li) = (Strided::of(l, "gather")?, Strided::of(index_l, "gather")?);
            let ishape = Strided::shape_with_strides(index_l.shape(), &contiguous_strides(l.shape()), "gather")?;
            let (d, size, count, code) = (dim as u32, l.shape()[dim] as u64, n as u64, gpu::error_code(who));
            launch!(gpu, "gather", grid(n);
                self.block.ptr, lx, index.block.ptr, li, ishape, d, size, out.block.ptr, count, gpu.errors_ptr, code)?;
        }
        Ok(out)
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
        let gpu = self.gpu();
        let out = self.copy_strided(l)?;
        let n = index_l.elem_count();
        if n > 0 {
            let (ls, li) = (Strided::of(src_l, "scatter_add")?, Strided::of(index_l, "scatter_add")?);
            let ishape = Strided::shape_with_strides(index_l.shape(), &contiguous_strides(l.shape()), "scatter_add")?;
            let (d, size, count) = (dim as u32, l.shape()[dim] as u64, n as u64);
            let code = gpu::error_code(Indices::Positions("scatter_add"));
            launch!(gpu, "scatter_add", grid(n);
                src.block.ptr, ls, index.block.ptr, li, ishape, d, size, out.block.ptr, count, gpu.errors_ptr, code)?;
        }
        Ok(out)
    }

    fn im2col(&self, l: &Layout, dims: ImageDims, win: &Window, pad_value: f32) -> Result<Self> {
        let gpu = self.gpu();
        let ([n, c, _, _], [oh, ow]) = (dims.input, dims.output);
        let total = c * win.kernel[0] * win.kernel[1] * n * oh * ow;
        let out = CudaStorage::alloc(gpu, total, "im2col")?;
        if total > 0 {
            let (lx, g) = (Strided::of(l, "im2col")?, Conv::new(dims, win));
            // A thread per channel and output position, each writing its window's taps.
            launch!(gpu, "im2col", grid(c * n * oh * ow); self.block.ptr, lx, out.block.ptr, g, pad_value)?;
        }
        Ok(out)
    }

    fn col2im(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<Self> {
        let gpu = self.gpu();
        let total: usize = dims.input.iter().product();
        let out = CudaStorage::alloc(gpu, total, "col2im")?;
        if total > 0 {
            let (lc, g) = (Strided::of(l, "col2im")?, Conv::new(dims, win));
            launch!(gpu, "col2im", grid(total); self.block.ptr, lc, out.block.ptr, g)?;
        }
        Ok(out)
    }

    fn max_pool2d(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<(Self, Self)> {
        self.max_pool(l, None, dims, win, false)
    }

    fn max_pool2d_backward(
        &self,
        l: &Layout,
        taps: &Self,
        taps_l: &Layout,
        dims: ImageDims,
        win: &Window,
    ) -> Result<Self> {
        self.max_pool_backward(l, taps, taps_l, dims, win, false)
    }

    fn lstm_cell(&self, l: &Layout, hw: &Self, hw_l: &Layout, c: &Self, c_l: &Layout) -> Result<Self> {
        let gpu = self.gpu();
        // Called only by the trait's default recurrence (`backend/lstm.rs`), with layouts it
        // builds from the shapes `Storage::lstm_forward` checked.
        let [n, h] = super::lstm_dims(c_l)?;
        let out = CudaStorage::alloc(gpu, n * 6 * h, "lstm")?;
        if n * h > 0 {
            let (lx, lh, lc) = (Strided::of(l, "lstm")?, Strided::of(hw_l, "lstm")?, Strided::of(c_l, "lstm")?);
            let (rows, units) = (n as u64, h as u64);
            launch!(gpu, "lstm_cell", grid(n * h);
                self.block.ptr, lx, hw.block.ptr, lh, c.block.ptr, lc, out.block.ptr, rows, units)?;
        }
        Ok(out)
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
        let gpu = self.gpu();
        // Called only by the trait's default recurrence (`backend/lstm.rs`), with layouts it
        // builds from the shapes `Storage::lstm_backward` checked.
        let [n, h] = super::lstm_dims(c_prev_l)?;
        let out = CudaStorage::alloc(gpu, n * 5 * h, "lstm backward")?;
        if n * h > 0 {
            let op = "lstm backward";
            let (ls, lc) = (Strided::of(l, op)?, Strided::of(c_prev_l, op)?);
            let (ldh, ldc) = (Strided::of(dh_l, op)?, Strided::of(dc_l, op)?);
            let (rows, units) = (n as u64, h as u64);
            launch!(gpu, "lstm_cell_backward", grid(n * h);
                self.block.ptr, ls, c_prev.block.ptr, lc, dh.block.ptr, ldh, dc.block.ptr, ldc,
                out.block.ptr, rows, units)?;
        }
        Ok(out)
    }

    fn zeros(&self, n: usize) -> Result<Self> {
        CudaStorage::full(self.gpu(), n, 0.0)
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
        let state = state.iter_mut().map(|s| &mut **s).collect();
        let item = StepItem { param: self, l, grad, grad_l, state, update: *update, staged };
        CudaStorage::optimizer_steps(&mut [item]).map_err(|(e, _)| e)
    }

    fn optimizer_steps(items: &mut [StepItem<'_, Self>]) -> std::result::Result<(), (Error, usize)> {
        // Contiguity, sizes and the staged numbers' place were checked by
        // `Storage::optimizer_steps`.
        let planned: Vec<_> = items.iter().map(|it| (Arc::as_ptr(it.param.gpu()), it.update, list_entry(it))).collect();
        // Planned whole before the first launch: a plan's error queues nothing (position 0).
        for launch in plan_launches(&planned).map_err(|e| (e, 0))? {
            let gpu = items[launch.from].param.gpu();
            launch_update(gpu, launch.list, &launch.update).map_err(|e| (e, launch.from))?;
        }
        Ok(())
    }
}

/// One optimizer launch of [`plan_launches`].
#[derive(Debug)]
struct UpdateLaunch {
    /// The position of its first item.
    from: usize,
    /// Its parameters.
    list: UpdateList,
    /// The update of every parameter in it, but for its changing numbers (in `list`).
    update: OptimizerUpdate,
}

/// The launches that update `items` (each: what identifies its GPU, its update and its
/// place in memory) in order: each run of consecutive items on one GPU whose updates differ
/// only in their changing numbers (every parameter of one optimizer, as a rule) is one
/// launch of up to [`gpu::LIST_MAX`] parameters. Items without values launch nothing.
fn plan_launches<K: PartialEq>(items: &[(K, OptimizerUpdate, ListEntry)]) -> Result<Vec<UpdateLaunch>> {
    let mut launches = Vec::new();
    let mut from = 0;
    while let Some((gpu, update, _)) = items.get(from) {
        let constants = update.with_staged([0.0; STAGED]);
        let mut list = UpdateList::default();
        let mut to = from;
        while let Some((other, u, entry)) = items.get(to) {
            let alike = to == from || (other == gpu && u.with_staged([0.0; STAGED]) == constants);
            if !alike || !list.push(*entry) {
                break;
            }
            to += 1;
        }
        if to == from {
            let n = items[from].2.n;
            return Err(Error::invalid("optimizer step", format!("{n} values are too many for one launch")));
        }
        if !list.is_empty() {
            launches.push(UpdateLaunch { from, list, update: constants });
        }
        from = to;
    }
    Ok(launches)
}

/// `it` as a parameter of an optimizer launch.
fn list_entry(it: &StepItem<'_, CudaStorage>) -> ListEntry {
    let buffer = |i: usize| it.state.get(i).map_or(0u64, |s| s.block.ptr);
    ListEntry {
        n: it.l.elem_count() as u64,
        w: it.param.block.ptr + 4 * it.l.offset() as u64,
        g: it.grad.block.ptr + 4 * it.grad_l.offset() as u64,
        state: [buffer(0), buffer(1)],
        // A null address: the kernel takes the numbers passed by value.
        staged: it.staged.map_or(0u64, |(s, at)| s.block.ptr + 4 * at as u64),
        nums: it.update.staged(),
    }
}

/// The kernel of `update` and its constants as that kernel takes them after the list: four
/// numbers and a flag.
fn update_constants(update: &OptimizerUpdate) -> (&'static str, [f32; 4], i32) {
    match *update {
        OptimizerUpdate::Sgd { momentum, nesterov, weight_decay, .. } => {
            ("sgd", [momentum, weight_decay, 0.0, 0.0], i32::from(nesterov))
        }
        OptimizerUpdate::Adam { beta1, beta2, eps, weight_decay, decoupled, .. } => {
            ("adam", [beta1, beta2, eps, weight_decay], i32::from(decoupled))
        }
        OptimizerUpdate::RmsProp { alpha, eps, momentum, weight_decay, .. } => {
            ("rmsprop", [alpha, eps, momentum, weight_decay], i32::from(momentum > 0.0))
        }
    }
}

/// One launch of the kernel of `update` (its constants; each parameter's changing numbers
/// are in `list`) over the parameters of `list`.
fn launch_update(gpu: &Gpu, list: UpdateList, update: &OptimizerUpdate) -> Result<()> {
    let cfg = list.config();
    let (name, [c0, c1, c2, c3], flag) = update_constants(update);
    launch!(gpu, name, cfg; list, c0, c1, c2, c3, flag)
}

impl CudaStorage {
    /// A binary kernel (arithmetic or comparison, by code) over two views of one shape.
    #[allow(clippy::too_many_arguments)]
    fn zip(
        &self,
        l: &Layout,
        rhs: &Self,
        rhs_l: &Layout,
        name: &'static str,
        code: i32,
        p0: f32,
        p1: f32,
    ) -> Result<Self> {
        let gpu = self.gpu();
        let n = l.elem_count();
        let out = CudaStorage::alloc(gpu, n, name)?;
        if n > 0 {
            let (la, lb, count) = (Strided::of(l, name)?, Strided::of(rhs_l, name)?, n as u64);
            launch!(gpu, "binary", grid(n);
                self.block.ptr, la, rhs.block.ptr, lb, out.block.ptr, count, code, p0, p1)?;
        }
        Ok(out)
    }
}

/// The block cache's counters of GPU `ordinal` (`None` when it was never opened).
pub(crate) fn memory_stats(ordinal: usize) -> Option<MemoryStats> {
    gpu::opened(ordinal).map(|g| g.memory_stats())
}

/// Turns GPU `ordinal`'s kernel profile on (opening the GPU) or off.
pub(crate) fn set_profiling(ordinal: usize, on: bool) -> Result<()> {
    if on {
        gpu::gpu(ordinal)?.set_profiling(true);
    } else if let Some(g) = gpu::opened(ordinal) {
        g.set_profiling(false);
    }
    Ok(())
}

/// What GPU `ordinal`'s kernel profile timed since it was last read (nothing for a GPU never
/// opened).
pub(crate) fn kernel_profile(ordinal: usize) -> Result<Vec<KernelTime>> {
    gpu::opened(ordinal).map_or(Ok(Vec::new()), |g| g.kernel_profile())
}

/// The launches counted on GPU `ordinal`, if it has been opened.
pub(crate) fn launch_counts(ordinal: usize) -> Option<LaunchCounts> {
    gpu::opened(ordinal).map(|g| g.launch_counts())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The optimizer launches for a list of updates: one per run of alike updates on one GPU,
    /// at most LIST_MAX parameters each, a block per 8192 values, none for empty parameters.
    #[test]
    fn alike_updates_share_a_launch() {
        let sgd = |lr: f32, first_step: bool, weight_decay: f32| OptimizerUpdate::Sgd {
            lr,
            momentum: 0.9,
            nesterov: false,
            weight_decay,
            first_step,
        };
        let adam = OptimizerUpdate::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
            bias1: 0.1,
            bias2: 0.001,
        };
        let entry = |k: usize, n: u64, u: &OptimizerUpdate| ListEntry {
            n,
            w: 1000 * k as u64,
            g: 1000 * k as u64 + 1,
            state: [1000 * k as u64 + 2, 0],
            staged: if k == 2 { 77 } else { 0 },
            nums: u.staged(),
        };
        // Items 0-3: SGD whose changing numbers differ (lr, first step): one launch, item 1 empty.
        let mut items: Vec<(usize, OptimizerUpdate, ListEntry)> =
            [(3, 0.1, true), (0, 0.2, false), (8192, 0.1, true), (8193, 0.1, false)]
                .iter()
                .enumerate()
                .map(|(k, &(n, lr, first))| (0, sgd(lr, first, 0.0), entry(k, n, &sgd(lr, first, 0.0))))
                .collect();
        items.push((0, adam, entry(4, 5, &adam))); // 4: another optimizer
        items.push((1, adam, entry(5, 5, &adam))); // 5: another GPU
        items.push((1, adam, entry(6, 5, &adam))); // 6: with 5
        for k in 7..25 {
            items.push((1, sgd(0.1, false, 0.5), entry(k, 1, &sgd(0.1, false, 0.5))));
            // 7-24: 16, then 2
        }
        let launches = plan_launches(&items).unwrap();
        let got: Vec<(usize, u32, Vec<u32>)> =
            launches.iter().map(|l| (l.from, l.list.count, l.list.start[..=l.list.count as usize].to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (0, 3, vec![0, 1, 2, 4]),
                (4, 1, vec![0, 1]),
                (5, 2, vec![0, 1, 2]),
                (7, 16, (0..=16).collect()),
                (23, 2, vec![0, 1, 2]),
            ]
        );
        let first = &launches[0];
        assert_eq!(first.update, sgd(0.0, false, 0.0), "the constants, without the changing numbers");
        assert_eq!(first.list.n[..3], [3, 8192, 8193], "the empty item takes no place");
        assert_eq!(first.list.w[..3], [0, 2000, 3000]);
        assert_eq!(first.list.staged[..3], [0, 77, 0]);
        assert_eq!(first.list.nums[..3], [[0.1, 1.0, 1.0], [0.1, 1.0, 1.0], [0.1, 0.0, 1.0]]);
        assert_eq!(first.list.config().grid_dim, (4, 1, 1));
        assert_eq!(launches[4].update, sgd(0.0, false, 0.5));
        // Only empty items: nothing to launch.
        assert!(plan_launches(&items[1..2]).unwrap().is_empty());
    }

    /// While one thread records or captures a graph's step, another thread's allocations,
    /// launches (`claim`), cuBLAS calls and copies (`bind`), host copies and attempt to end the
    /// step are refused (they would join the graph), and the step stays the first thread's;
    /// beginning a step from inside a claim is refused (it would wait for itself). On the GPU
    /// where there is one (the GPU check runs these tests), else on the emulated GPU (required
    /// where CI asks for the emulator and NVRTC); says so when it can do neither.
    #[test]
    fn a_graph_step_refuses_other_threads() {
        let required = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
        // Other tests look for devices: not while cuda:0 appears.
        let looking = crate::device::tests::DISCOVERY.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: only looks for the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            if let Err(e) = emulated::install() {
                assert!(!required("SINAPSE_REQUIRE_EMULATOR"), "the emulated GPU was not installed: {e}");
            }
        }
        drop(looking);
        let gpu = match gpu::gpu(0) {
            Ok(gpu) => gpu,
            Err(e) => {
                let needed = required("SINAPSE_REQUIRE_CUDA")
                    || (required("SINAPSE_REQUIRE_EMULATOR") && required("SINAPSE_REQUIRE_NVRTC"));
                assert!(!needed, "cuda:0 (a GPU, or the emulated one) did not open: {e}");
                // Past libtest's capture, so that the skip shows in the log.
                let line = format!("skipped: neither a GPU nor the emulated one ({e})\n");
                let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                return;
            }
        };
        for capturing in [false, true] {
            let pool = gpu.begin_recording().unwrap();
            if capturing {
                assert_eq!(gpu.end_recording().unwrap(), None);
                gpu.begin_capture(&pool).unwrap();
            }
            let refusals = std::thread::scope(|s| {
                s.spawn(|| {
                    [
                        gpu.alloc(4, "test").map(drop),
                        gpu.claim("bias_rows").map(drop),
                        gpu.bind("matmul").map(drop),
                        gpu.refuse_in_capture("copy to host"),
                        gpu.end_recording().map(drop),
                    ]
                })
                .join()
                .unwrap()
            });
            let doing = if capturing { "capturing" } else { "recording" };
            for r in refusals {
                let e = r.expect_err("another thread's step").to_string();
                assert!(e.contains(&format!("another thread is {doing}")), "{e}");
            }
            if capturing {
                assert!(gpu.end_capture(false).is_err(), "abandoned");
            } else {
                assert_eq!(gpu.end_recording().unwrap(), None, "the other thread's copy was not noted");
            }
            assert!(!gpu.has_pool());
        }
        let held = gpu.claim("test").unwrap();
        assert!(gpu.begin_recording().is_err(), "inside a claim");
        drop(held);
        let pool = gpu.begin_recording().unwrap();
        assert_eq!(gpu.end_recording().unwrap(), None);
        drop(pool);
    }

    /// Whether NVRTC is here to compile the kernels. CI installs it (PyPI's
    /// `nvidia-cuda-nvrtc`) and sets `SINAPSE_REQUIRE_NVRTC=1`, so that there a missing
    /// library fails the test instead of skipping it.
    fn nvrtc_here() -> bool {
        if !gpu::nvrtc_present() {
            assert!(
                std::env::var("SINAPSE_REQUIRE_NVRTC").map_or(true, |v| v != "1"),
                "SINAPSE_REQUIRE_NVRTC=1 but libnvrtc.so was not found (LD_LIBRARY_PATH?)"
            );
            eprintln!("skipped: libnvrtc.so not found, CUDA kernels not compiled");
        }
        gpu::nvrtc_present()
    }

    /// Every kernel compiles with NVRTC, where the library is found.
    #[test]
    fn every_kernel_compiles_with_nvrtc() {
        if !nvrtc_here() {
            return;
        }
        // The H100/H200 (sm_90) and the oldest architecture NVRTC 13 still targets (sm_75).
        for arch in [90, 75] {
            let ptx = gpu::compile(arch).unwrap_or_else(|e| panic!("compute_{arch}: {e}"));
            let text = ptx.to_src();
            for name in gpu::KERNELS {
                assert!(
                    text.contains(&format!(".entry {name}(")),
                    "compute_{arch}: kernel {name} missing from the PTX"
                );
            }
        }
    }

    /// What one kernel's machine code asks of the multiprocessor that runs a block of it.
    #[derive(Debug, Default)]
    struct Resources {
        /// Registers per thread.
        registers: u32,
        /// Bytes of `__shared__` arrays.
        shared: u64,
        /// Bytes of parameters.
        params: u32,
        /// Bytes of stack per thread, the functions it calls included.
        stack: u32,
    }

    /// [`gpu::SOURCE`] compiled by NVRTC to machine code for `sm_{arch}` (an ELF file, a
    /// "cubin"), registers allocated: what the driver's own compiler makes of the PTX when it
    /// loads it, up to the versions of the two (their register counts may differ a little).
    fn machine_code(arch: u32) -> Vec<u8> {
        use cudarc::nvrtc::{result, sys};
        let source = std::ffi::CString::new(gpu::SOURCE).unwrap();
        let prog = result::create_program(&source, None).unwrap();
        // SAFETY: `prog` was just created and is destroyed last; the two calls that fill
        // `code` are given its size first.
        unsafe {
            if let Err(e) = result::compile_program(prog, &[format!("--gpu-architecture=sm_{arch}")]) {
                let log = result::get_program_log(prog).unwrap_or_default();
                let log: Vec<u8> = log.iter().map(|&c| c.to_ne_bytes()[0]).collect();
                panic!("sm_{arch}: {e}: {}", String::from_utf8_lossy(&log));
            }
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(prog, &mut size).result().unwrap();
            let mut code = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog, code.as_mut_ptr().cast()).result().unwrap();
            result::destroy_program(prog).unwrap();
            code
        }
    }

    /// Each kernel's [`Resources`], read from the machine code's sections: `.nv.shared.K`
    /// (its shared arrays) and the attribute lists NVIDIA's tools call EIATTR, in `.nv.info`
    /// (registers and stack sizes, keyed by symbol) and `.nv.info.K` (parameter bytes). An entry is
    /// a format byte (1: no value, 2: a byte, 3: a 16-bit value, each padded to 4 bytes in
    /// all; 4: a 16-bit length and that many bytes), an attribute byte, then the value.
    fn resources(code: &[u8]) -> HashMap<String, Resources> {
        use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolIndex};
        const FRAME_SIZE: u8 = 0x11;
        const MIN_STACK_SIZE: u8 = 0x12;
        const MAX_STACK_SIZE: u8 = 0x23;
        const CBANK_PARAM_SIZE: u8 = 0x19;
        const REGCOUNT: u8 = 0x2f;
        let file = object::File::parse(code).expect("NVRTC's machine code is an ELF file");
        let entries = |section: &str| {
            let data = file.section_by_name(section).unwrap_or_else(|| panic!("no {section}")).data().unwrap();
            let mut out = Vec::new();
            let mut at = 0;
            while at + 2 <= data.len() {
                let (format, attribute) = (data[at], data[at + 1]);
                let word = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
                match format {
                    1 | 2 => at += 4,
                    3 => {
                        out.push((attribute, u32::from(word(at + 2)).to_le_bytes().to_vec()));
                        at += 4;
                    }
                    4 => {
                        let len = word(at + 2) as usize;
                        out.push((attribute, data[at + 4..at + 4 + len].to_vec()));
                        at += 4 + len;
                    }
                    _ => panic!("{section}: an entry of format {format} at byte {at}, unknown to this test"),
                }
            }
            out
        };
        let u32_at = |v: &[u8], i: usize| u32::from_le_bytes(v[i..i + 4].try_into().unwrap());
        let mut kernels: HashMap<String, Resources> =
            gpu::KERNELS.iter().map(|&k| (k.to_string(), Resources::default())).collect();
        for (attribute, value) in entries(".nv.info") {
            if ![REGCOUNT, FRAME_SIZE, MIN_STACK_SIZE, MAX_STACK_SIZE].contains(&attribute) {
                continue;
            }
            let symbol = file.symbol_by_index(SymbolIndex(u32_at(&value, 0) as usize)).unwrap();
            let Some(r) = kernels.get_mut(symbol.name().unwrap()) else { continue };
            match attribute {
                REGCOUNT => r.registers = u32_at(&value, 4),
                _ => r.stack = r.stack.max(u32_at(&value, 4)),
            }
        }
        for (name, r) in &mut kernels {
            r.shared = file.section_by_name(&format!(".nv.shared.{name}")).map_or(0, |s| s.size());
            for (attribute, value) in entries(&format!(".nv.info.{name}")) {
                if attribute == CBANK_PARAM_SIZE {
                    r.params = u32_at(&value, 0);
                }
            }
        }
        kernels
    }

    /// Each kernel's machine code fits the largest block it is launched with
    /// ([`gpu::KernelFacts::largest_block`], which `launch!` enforces), where a GPU would
    /// refuse the launch: on an H100/H200 (sm_90) and the oldest GPUs NVRTC 13 targets (sm_75), a block
    /// has at most 64 Ki registers (allocated 8 a thread at a time), 48 KiB of `__shared__`
    /// arrays and 4 KiB of parameters; a thread's stack beyond the driver's default 1 KiB
    /// would be reallocated at launch. `reduce_block`'s 1024-thread blocks are the tight one.
    #[test]
    fn every_kernel_fits_the_blocks_it_is_launched_with() {
        if !nvrtc_here() {
            return;
        }
        for arch in [90, 75] {
            let kernels = resources(&machine_code(arch));
            for (name, r) in &kernels {
                assert!(gpu::kernel_text(name).contains("__global__"), "{name}'s declaration not found in kernels.cu");
                let threads = gpu::kernel_facts(name).largest_block;
                assert!(r.registers > 0, "sm_{arch}: no register count for {name}: {r:?}");
                let registers = r.registers.next_multiple_of(8) * threads;
                assert!(
                    registers <= 64 << 10,
                    "sm_{arch}: {name} takes {} registers a thread, {registers} for a block of {threads}",
                    r.registers
                );
                assert!(r.shared <= 48 << 10, "sm_{arch}: {name} has {} bytes of shared arrays", r.shared);
                assert!(r.params <= 4 << 10, "sm_{arch}: {name} takes {} bytes of parameters", r.params);
                assert!(r.stack <= 1 << 10, "sm_{arch}: {name} needs {} bytes of stack a thread", r.stack);
            }
            let reduce = &kernels["reduce_block"];
            assert!(reduce.shared >= 1024 * 20, "reduce_block's shared arrays not found: {reduce:?}");
            eprintln!("sm_{arch}: reduce_block {reduce:?}");
        }
    }

    /// The few-row dense layer's row limit is the kernel's (its shared array's size).
    #[test]
    fn the_few_row_layer_limit_is_the_kernels() {
        let declared = gpu::SOURCE.split_once("#define LINEAR_ROWS_MAX ").and_then(|(_, rest)| rest.split_once('\n'));
        assert_eq!(declared.map(|(n, _)| n.trim()), Some(LINEAR_ROWS_MAX.to_string().as_str()));
    }

    /// The kernels read from the source as able to record a bad index are the six that take
    /// the error word, and each kernel that records one is among them (one missed would have
    /// its reports skipped by the next read).
    #[test]
    fn the_kernels_that_report_bad_indices_are_known() {
        let reporting: Vec<&str> =
            gpu::KERNELS.iter().copied().filter(|k| gpu::kernel_facts(k).reports_errors).collect();
        assert_eq!(
            reporting,
            ["cross_entropy_grad", "class_total", "index_select", "index_add", "gather", "scatter_add"]
        );
        let recording: Vec<&str> =
            gpu::KERNELS.iter().copied().filter(|k| gpu::kernel_text(k).contains("report(err")).collect();
        assert_eq!(recording, reporting);
    }

    #[test]
    fn views_merge_their_contiguous_axes() {
        let l = Layout::contiguous(&[4, 5, 6]).narrow(2, 1, 3).unwrap();
        let s = Strided::of(&l, "test").unwrap();
        assert_eq!(s.contiguous, 0);
        assert_eq!(s.rank, 2, "[4, 5] step as one axis of 20");
        assert_eq!((s.dims[0], s.strides[0]), (20, 6));
        assert_eq!((s.dims[1], s.strides[1]), (3, 1));
        assert_eq!(s.offset, 1);
        let b = Layout::contiguous(&[1, 3]).broadcast_to(&[4, 2, 3]).unwrap();
        let s = Strided::of(&b, "test").unwrap();
        assert_eq!(s.rank, 2);
        assert_eq!((s.dims[0], s.strides[0]), (8, 0), "broadcast axes merge too");
        assert_eq!((s.dims[1], s.strides[1]), (3, 1));
        // Eighteen axes, each pair swapped, cannot merge: more than the kernels take.
        let many =
            Layout::contiguous(&[2; 18]).permute(&[1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16]);
        let many = many.unwrap();
        assert!(Strided::of(&many, "test").unwrap_err().to_string().contains("at most 8 axes"));
    }

    #[test]
    fn operands_describe_row_and_column_major_batches() {
        let ptr = 1 << 20;
        let a = Layout::contiguous(&[3, 4, 5]);
        let op = Operand::describe(ptr, &a, 4, 5).unwrap();
        assert_eq!((op.op, op.ld, op.batch_stride), (cublasOperation_t::CUBLAS_OP_N, 5, 20));
        let t = Layout::contiguous(&[3, 5, 4]).transpose(1, 2).unwrap();
        let op = Operand::describe(ptr, &t, 4, 5).unwrap();
        assert_eq!((op.op, op.ld, op.batch_stride), (cublasOperation_t::CUBLAS_OP_T, 4, 20));
        let shared = Layout::contiguous(&[4, 5]).broadcast_to(&[3, 4, 5]).unwrap();
        assert_eq!(Operand::describe(ptr, &shared, 4, 5).unwrap().batch_stride, 0, "one matrix for the batch");
        let padded = Layout::contiguous(&[4, 8]).narrow(1, 2, 5).unwrap();
        let op = Operand::describe(ptr, &padded, 4, 5).unwrap();
        assert_eq!((op.ld, op.ptr), (8, ptr + 8), "a padded view is read in place at its offset");
        // A batch transposed against its matrices does not collapse to one stride.
        let mixed = Layout::contiguous(&[2, 3, 4, 5]).transpose(0, 1).unwrap();
        assert!(Operand::describe(ptr, &mixed, 4, 5).is_none());
    }
}
