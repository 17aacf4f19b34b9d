//! Compute backends: the closed set of kernels every device implements (the `BackendStorage`
//! trait), and the one place that dispatches on where a tensor's numbers live (`Storage`).
//!
//! Everything above this module (ops and their gradient rules, layers, optimizers) calls the
//! methods of `Storage` with a [`Layout`] and a kernel named by value ([`UnaryOp`],
//! [`BinaryOp`], [`ReduceOp`], [`OptimizerUpdate`], ...). `Storage` matches once per kernel
//! call on the device, checks that every operand is on the same one, and hands the whole call
//! to that device's backend; the backend matches once on the kernel and the element type and
//! runs a tight loop. Nothing outside `backend/` touches the numbers themselves.
//!
//! Two devices implement it: `cpu/` (host memory, gemm, rayon) and `cuda/` (NVIDIA GPUs:
//! NVRTC-compiled kernels and cuBLAS, loaded at run time). Adding a device is one module
//! beside them with a storage type implementing `BackendStorage`, and one variant of
//! `Storage`: the compiler then lists every dispatch below that needs its arm.

pub(crate) mod cpu;
pub(crate) mod cuda;
mod kernels;
mod lstm;

pub use cpu::fastmath::simd_level;
pub use cpu::simd::CAPABILITY_VAR;
pub use cuda::{KernelTime, LaunchCounts, MemoryStats};
pub use kernels::{
    checked_index, BinaryOp, CmpOp, DType, ImageDims, OptimizerUpdate, ReduceOp, UnaryOp, Window, MAX_EXACT_INDEX,
    STAGED,
};
pub(crate) use kernels::{ClassTotal, Indices};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::layout::Layout;
use crate::{Device, Error, Result};

/// The kernels a device implements. Inputs come with their [`Layout`] (any strides: views are
/// read in place); outputs are new contiguous (row-major) buffers unless a method says
/// otherwise. Kernels validate what only they can see (index values) and return errors that
/// name the op.
pub(crate) trait BackendStorage: Sized {
    /// The device holding the buffer.
    fn device(&self) -> Device;
    /// The element type.
    fn dtype(&self) -> DType;
    /// Number of elements in the buffer.
    fn len(&self) -> usize;

    /// The elements of `l` in row-major order, copied to host memory.
    fn to_host(&self, l: &Layout) -> Result<Vec<f32>>;
    /// The elements of `l` as a new contiguous buffer on the same device.
    fn copy_strided(&self, l: &Layout) -> Result<Self>;
    /// Copies the elements of `l` to the places `dst_l` names in `dst` (same shape).
    fn copy_into(&self, l: &Layout, dst: &mut Self, dst_l: &Layout) -> Result<()>;

    /// `op(x)` elementwise.
    fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Self>;
    /// `op(a, b)` elementwise; both layouts already have the output's (broadcast) shape.
    fn binary(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: BinaryOp) -> Result<Self>;
    /// 1.0 where `a op b`, else 0.0; layouts as for [`BackendStorage::binary`].
    fn compare(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, op: CmpOp) -> Result<Self>;
    /// `cond != 0 ? on_true : on_false` elementwise (`self` is the condition); all three
    /// layouts have the output's shape.
    fn where_cond(&self, l: &Layout, on_true: &Self, t_l: &Layout, on_false: &Self, f_l: &Layout) -> Result<Self>;

    /// Reduces axis `dim` (or every element, when `None`); the result is row-major with the
    /// axis removed.
    fn reduce(&self, l: &Layout, dim: Option<usize>, op: ReduceOp) -> Result<Self>;
    /// Softmax (or log-softmax) along axis `dim`.
    fn softmax(&self, l: &Layout, dim: usize, log: bool) -> Result<Self>;
    /// The gradient of a mean cross-entropy through its log-softmax, from the log-probabilities
    /// `self` (`[rows, classes]`) and the class indices `classes` (`[rows]`, checked by the
    /// forward's gather): `out[i, c] = [c = class_i]·s - e^self[i, c]·s` with `s = g·scale`,
    /// `g` the loss's gradient (one value, read on the device: no copy to the host). The
    /// arithmetic, in this order, is that of the four ops' gradients it replaces (gather,
    /// mean, negation, log-softmax), so the result is theirs bit for bit. The shapes are
    /// checked before (`Storage::cross_entropy_grad`).
    fn cross_entropy_grad(
        &self,
        l: &Layout,
        classes: &Self,
        classes_l: &Layout,
        g: &Self,
        g_l: &Layout,
        scale: f32,
    ) -> Result<Self>;
    /// Batched matrix product `[batch.., m, k] x [batch.., k, n]`; both layouts already have
    /// the output's batch shape.
    fn matmul(&self, l: &Layout, rhs: &Self, rhs_l: &Layout, mkn: [usize; 3]) -> Result<Self>;
    /// The rank-2 product `m x k` by `k x n` with `bias` (`[n]`) added to every row: a
    /// dense layer's `x·Wᵀ + b`, followed by a ReLU when `relu`. By default the product, a
    /// broadcast add and the ReLU kernel; the CPU adds the bias and applies the ReLU in place,
    /// in one pass, without a second `m x n` buffer.
    #[allow(clippy::too_many_arguments)]
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
        let y = self.matmul(l, rhs, rhs_l, mkn)?;
        let out = Layout::contiguous(&[mkn[0], mkn[2]]);
        let y = y.binary(&out, bias, &bias_l.broadcast_to(out.shape())?, BinaryOp::Add)?;
        if relu {
            y.unary(&out, UnaryOp::Relu)
        } else {
            Ok(y)
        }
    }

    /// The entries `ids[0], ids[1], ..` of axis `dim` (`ids` 1-D, whole numbers).
    fn index_select(&self, l: &Layout, dim: usize, ids: &Self, ids_l: &Layout) -> Result<Self>;
    /// `self` with `src`'s slices added at positions `ids` of axis `dim` (the adjoint of
    /// index_select).
    fn index_add(&self, l: &Layout, dim: usize, ids: &Self, ids_l: &Layout, src: &Self, src_l: &Layout)
        -> Result<Self>;
    /// `out[.., i, ..] = self[.., index[.., i, ..], ..]` along `dim`; the result has the
    /// index's shape. A bad entry of `index` is an error in `who`'s terms.
    fn gather(&self, l: &Layout, dim: usize, index: &Self, index_l: &Layout, who: Indices) -> Result<Self>;
    /// `self` with each `src` element added at the position `index` names along `dim` (the
    /// adjoint of gather).
    fn scatter_add(
        &self,
        l: &Layout,
        dim: usize,
        index: &Self,
        index_l: &Layout,
        src: &Self,
        src_l: &Layout,
    ) -> Result<Self>;

    /// Every window of an `[N, C, H, W]` batch as a column: `[C·KH·KW, N·OH·OW]`, padding
    /// taps reading `pad_value`.
    fn im2col(&self, l: &Layout, dims: ImageDims, win: &Window, pad_value: f32) -> Result<Self>;
    /// The adjoint of im2col: each column entry added back onto its pixel, `[N, C, H, W]`.
    fn col2im(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<Self>;
    /// Max pooling (no dilation): the maxima `[N, C, OH, OW]`, and where each came from as
    /// its tap's number in the window (`ky·KW + kx`, exact in any element type).
    fn max_pool2d(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<(Self, Self)>;
    /// The adjoint of max pooling: each output gradient (`self`) added at its maximum's pixel.
    fn max_pool2d_backward(
        &self,
        l: &Layout,
        taps: &Self,
        taps_l: &Layout,
        dims: ImageDims,
        win: &Window,
    ) -> Result<Self>;

    /// The fused LSTM cell over a batch of `N` rows: from the pre-activations' two addends,
    /// `self` (x·W_ihᵀ + b_ih + b_hh) and `hw` (h·W_hhᵀ), both `[N, 4H]`, and the cell state
    /// `c` `[N, H]`, the step's record `[N, 6H]` = `[i f g o | h' | c']` (gates activated,
    /// PyTorch's order).
    fn lstm_cell(&self, l: &Layout, hw: &Self, hw_l: &Layout, c: &Self, c_l: &Layout) -> Result<Self>;
    /// The adjoint of [`BackendStorage::lstm_cell`]: from a step's record `self` `[N, 6H]`,
    /// the previous cell state and the gradients reaching h' and c' (each `[N, H]`),
    /// `[N, 5H]` = `[dL/dz | dL/dc]` (the pre-activations' gradient and the previous cell's).
    #[allow(clippy::too_many_arguments)]
    fn lstm_cell_backward(
        &self,
        l: &Layout,
        c_prev: &Self,
        c_prev_l: &Layout,
        dh: &Self,
        dh_l: &Layout,
        dc: &Self,
        dc_l: &Layout,
    ) -> Result<Self>;

    /// A new buffer of `n` zeros on `self`'s device.
    fn zeros(&self, n: usize) -> Result<Self>;

    /// The LSTM's forward recurrence over a whole sequence: from the input `self` `[T, N, I]`,
    /// `w_ih` `[4H, I]`, the biases' sum `[4H]`, `w_hh` `[4H, H]` and the initial state `h0`,
    /// `c0` `[N, H]`, every step's record in one buffer `[T, N, 6H]` (each as
    /// [`BackendStorage::lstm_cell`] writes it). By default the input's part of every step
    /// in one product, then step by step from that kernel and the matrix product.
    #[allow(clippy::too_many_arguments)]
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
        let weights = [(w_ih, w_ih_l), (bias, bias_l), (w_hh, w_hh_l), (h0, h0_l), (c0, c0_l)];
        lstm::lstm_forward(self, l, weights)
    }

    /// Backpropagation through time for [`BackendStorage::lstm_forward`]: from its records
    /// `self` `[T, N, 6H]`, the gradient `g` `[T, N, 2H]` reaching every step's h and c from
    /// outside the recurrence, `c0` and `w_hh`: dL/dz `[T, N, 4H]` (the gates'
    /// pre-activations at every step), dL/dh0 (only `if want_dh0`: one more product) and
    /// dL/dc0, both `[N, H]`.
    #[allow(clippy::too_many_arguments)]
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
        lstm::lstm_backward(self, l, g, g_l, c0, c0_l, w_hh, w_hh_l, want_dh0)
    }

    /// One optimizer update of `self` (the parameter, contiguous at `l`) in place, from the
    /// gradient and the state buffers (contiguous, each the parameter's size). With `staged`
    /// (a storage and the position in it of [`STAGED`] values), the update's
    /// [`OptimizerUpdate::staged`] numbers are read from there when the kernel runs.
    fn optimizer_step(
        &mut self,
        l: &Layout,
        grad: &Self,
        grad_l: &Layout,
        state: &mut [&mut Self],
        update: &OptimizerUpdate,
        staged: Option<(&Self, usize)>,
    ) -> Result<()>;

    /// [`BackendStorage::optimizer_step`] for several parameters in order (each item's
    /// storages its own); on an error, the position of the first item whose update was not
    /// queued. The default updates one parameter at a time; a backend that launches kernels
    /// updates many in one launch.
    fn optimizer_steps(items: &mut [StepItem<'_, Self>]) -> std::result::Result<(), (Error, usize)>
    where
        Self: Sized,
    {
        for (k, it) in items.iter_mut().enumerate() {
            it.param
                .optimizer_step(it.l, it.grad, it.grad_l, &mut it.state, &it.update, it.staged)
                .map_err(|e| (e, k))?;
        }
        Ok(())
    }
}

/// One parameter's update in [`BackendStorage::optimizer_steps`]: the arguments of
/// [`BackendStorage::optimizer_step`].
pub(crate) struct StepItem<'a, S> {
    /// The parameter, updated in place.
    pub(crate) param: &'a mut S,
    /// The parameter's (contiguous) view.
    pub(crate) l: &'a Layout,
    /// Its gradient.
    pub(crate) grad: &'a S,
    /// The gradient's (contiguous) view.
    pub(crate) grad_l: &'a Layout,
    /// Its state buffers, each the parameter's size.
    pub(crate) state: Vec<&'a mut S>,
    /// The update.
    pub(crate) update: OptimizerUpdate,
    /// Where the update's changing numbers are read when the kernel runs, if staged.
    pub(crate) staged: Option<(&'a S, usize)>,
}

/// The numbers behind one or more tensors, on one device.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory.
    Cpu(cpu::CpuStorage),
    /// Memory of an NVIDIA GPU.
    Cuda(cuda::CudaStorage),
}

/// Allocations below this many bytes are not checked against the memory available (asking
/// costs more than they do).
const CHECK_FROM_BYTES: u64 = 64 << 20;

/// A cap on any one allocation, set by [`set_memory_limit`] (`u64::MAX`: none).
static MEMORY_LIMIT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(u64::MAX);

/// Checks [`CAPABILITY_VAR`] (`SINAPSE_CPU_CAPABILITY`): an error naming the variable, its
/// value and the values it takes when it holds one it does not know (the kernels would
/// otherwise ignore it with a line on stderr); `Ok` when it is unset or known.
pub fn check_cpu_capability() -> Result<()> {
    cpu::simd::check_capability_var()
}

/// How many CUDA devices the driver reports (0 without a driver library), without opening
/// any of them.
pub fn cuda_device_count() -> usize {
    cuda::gpu::device_count()
}

/// Makes the calling thread one of the worker threads that run the CPU kernels (rayon's
/// global pool, which then has the calling thread and one more per remaining core, or
/// `RAYON_NUM_THREADS` in all).
///
/// Without it, every kernel split over threads is handed to the pool while the calling thread
/// sleeps until the pool is done: a sleep and a wake-up per kernel, several per training step.
/// With it, the calling thread runs its share of each kernel itself (measured on a 2-core AMD
/// EPYC: the `mlp` benchmark 1.15-1.3x faster). Call it once, first thing in `main`, from the
/// thread that does the tensor work and lives as long as the program; `sinapse`'s own binary
/// does. Fails when the pool was already started (by an earlier call, or by any parallel work
/// before it); everything then still works, only without this gain.
pub fn work_on_this_thread() -> Result<()> {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .map_err(|e| Error::invalid("work_on_this_thread", format!("the thread pool was already started: {e}")))?;
    if let Some(index) = rayon::current_thread_index() {
        JOINED.store(index, Ordering::Release);
    }
    Ok(())
}

/// The pool index of the thread that joined the pool by [`work_on_this_thread`] (`usize::MAX`:
/// none did).
static JOINED: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The memory counters of a GPU's caching allocator (bytes in use, the peak, bytes cached
/// for reuse, driver allocations and reuses); `None` for the CPU or a GPU not used yet.
pub fn device_memory(device: Device) -> Option<MemoryStats> {
    match device {
        Device::Cpu => None,
        Device::Cuda(i) => cuda::memory_stats(i),
    }
}

/// The kernel launches, cuBLAS products and graph replays a GPU has queued since it was
/// opened; `None` for the CPU or a GPU not used yet.
pub fn device_launches(device: Device) -> Option<LaunchCounts> {
    match device {
        Device::Cpu => None,
        Device::Cuda(i) => cuda::launch_counts(i),
    }
}

/// Turns `device`'s kernel profile on or off: while on, each kernel launch and cuBLAS
/// product queued outside a CUDA graph's step is timed on the GPU by two CUDA events, after a
/// kernel that keeps the GPU busy (about 200 us) until the launch and both events are queued,
/// so that each time is the launch's alone, without the host's gaps between launches (the
/// work runs that much slower meanwhile, and other threads' launches wait for each timed
/// one). [`kernel_profile`] reads the times. An error for the CPU, or for a GPU that cannot
/// be opened (turning the profile on opens it).
pub fn set_kernel_profiling(device: Device, on: bool) -> Result<()> {
    match device {
        Device::Cpu => {
            Err(Error::invalid("set_kernel_profiling", "the kernel profile times GPU launches; the CPU has none"))
        }
        Device::Cuda(i) => cuda::set_profiling(i, on),
    }
}

/// What `device`'s kernel profile ([`set_kernel_profiling`]) timed since it was last read,
/// the longest in all first, and a fresh start (waits for the GPU). Empty for the CPU.
pub fn kernel_profile(device: Device) -> Result<Vec<KernelTime>> {
    match device {
        Device::Cpu => Ok(Vec::new()),
        Device::Cuda(i) => cuda::kernel_profile(i),
    }
}

/// Whether GPU matrix products may use TF32 tensor cores (inputs rounded to 10 mantissa
/// bits, about 2x faster on an A100/H100), [`set_tf32`].
static TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lets GPU matrix products (and so convolutions) use TF32 tensor cores, or not (the
/// default, as PyTorch's `torch.backends.cuda.matmul.allow_tf32 = False`): full f32 precision
/// unless asked. A spec's `tf32 = true` and the CLI's `--tf32` call it. No effect on the CPU.
pub fn set_tf32(enabled: bool) {
    TF32.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether TF32 is allowed ([`set_tf32`]).
pub fn tf32() -> bool {
    TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `device` has finished the work queued on it (GPU kernels run asynchronously;
/// the CPU's are done when they return). For timing: reading a value back waits anyway.
pub fn synchronize(device: Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(i) => {
            let gpu = cuda::gpu::gpu(i)?;
            gpu.refuse_in_capture("synchronize")?;
            // Held across the wait: no other thread's capture begins before it.
            let _claim = gpu.claim("synchronize")?;
            gpu.stream.synchronize().map_err(|e| gpu.failure("synchronize", e))?;
            gpu.check_errors()
        }
    }
}

/// Makes `cuda:0` a GPU emulated on the CPU, for testing the CUDA backend on a machine without
/// one: a CUDA driver and cuBLAS built from the crate's sources with the C++ compiler (`$CXX`,
/// else `g++`) over CPU builds of the CUDA kernels, loaded in place of NVIDIA's libraries, so
/// that the backend's own code (allocator, kernel arguments, cuBLAS operands, graph capture)
/// runs unchanged; NVRTC must be found, as on a GPU. Call it first thing in a test process;
/// an error once a GPU was opened, or without a compiler. Slow: for tests only. Set
/// `SINAPSE_EMULATOR_ORDER=descending` to run each launch's blocks and threads in reverse, and
/// `SINAPSE_EMULATOR_RACECHECK=1` to fail a launch in which two threads touch one word, one
/// of them writing, with no atomic pair or barrier between them (a missing `atomicAdd` or
/// `__syncthreads`; each word's last write and last two reads are kept, and of the launches
/// of more than 65,536 threads only the first two of each kernel and shape are checked).
pub fn install_emulated_gpu() -> std::result::Result<(), String> {
    #[cfg(unix)]
    return cuda::emulated::install();
    #[cfg(not(unix))]
    Err("the emulated GPU needs a Unix system (dlopen)".into())
}

/// Whether a CUDA graph is being captured on `device` (never on the CPU).
pub(crate) fn capturing(device: Device) -> bool {
    match device {
        Device::Cpu => false,
        Device::Cuda(i) => cuda::gpu::opened(i).is_some_and(|g| g.is_capturing()),
    }
}

/// Work queued on a GPU recorded once and replayed as one launch (a CUDA graph), with the
/// device buffers it reads and writes kept for it alone.
#[derive(Debug)]
pub(crate) struct Graph(cuda::gpu::CapturedGraph);

/// The device buffers of a step to be captured into a [`Graph`]: run once eagerly between
/// [`GraphPool::record`] and [`GraphPool::end_recording`], the step leaves its working set in
/// the pool, which a capture then draws from (see `cuda::gpu::Pool`).
pub(crate) struct GraphPool(Arc<cuda::gpu::Gpu>, Arc<cuda::gpu::Pool>);

impl std::fmt::Debug for GraphPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GraphPool({})", self.0.device())
    }
}

impl Drop for GraphPool {
    fn drop(&mut self) {
        // A step that unwound (a panic) while recorded or captured: its recording or capture
        // ends here, or the GPU would stay closed to other threads and its stream capturing.
        self.0.abandon(&self.1);
    }
}

impl GraphPool {
    /// Starts recording: the buffers asked for on `device` from now on are the pool's (an
    /// error on the CPU, which has no graphs).
    pub(crate) fn record(device: Device) -> Result<GraphPool> {
        match device {
            Device::Cpu => Err(Error::invalid("cuda_graph", "CUDA graphs need a CUDA device; the model is on the CPU")),
            Device::Cuda(i) => {
                let gpu = cuda::gpu::gpu(i)?;
                let pool = gpu.begin_recording()?;
                Ok(GraphPool(gpu, pool))
            }
        }
    }

    /// Ends the recording begun by [`GraphPool::record`]: the first host copy or wait the
    /// step made, if any (a step with one cannot be captured).
    pub(crate) fn end_recording(&self) -> Result<Option<String>> {
        self.0.end_recording()
    }

    /// Starts capturing what is queued on the pool's GPU (kernels are recorded, not run),
    /// buffers handed out from the pool.
    pub(crate) fn begin_capture(&self) -> Result<()> {
        self.0.begin_capture(&self.1)
    }

    /// Ends the capture: the graph (with `keep`), or an error when the capture failed or was
    /// abandoned (the pool can be captured from again).
    pub(crate) fn end_capture(&self, keep: bool) -> Result<Graph> {
        Ok(Graph(self.0.end_capture(keep)?))
    }
}

impl Graph {
    /// Queues one run of everything captured.
    pub(crate) fn replay(&self) -> Result<()> {
        self.0.replay()
    }
}

/// Where a [`Graph`] reads its input and writes its output, named anew before each replay:
/// the graph captures [`GraphIo::read_into`] first and [`GraphIo::write_from`] last (a copy
/// kernel each), and [`GraphIo::set`] points those two copies of the instantiated graph at
/// the caller's tensors, so that one launch reads and writes them, with no copies beside it.
#[derive(Debug)]
pub(crate) struct GraphIo {
    gpu: Arc<cuda::gpu::Gpu>,
    /// The captured graph's copies ([`GraphIo::attach`]).
    copies: Option<Copies>,
}

/// An inference graph's two copies, with the fixed buffers they copy into and out of.
#[derive(Debug)]
struct Copies {
    /// The copy of the caller's input into `input`, the graph's own.
    read: cuda::gpu::CopyNode,
    input: u64,
    /// The copy of `output`, the graph's own, to the caller's output.
    write: cuda::gpu::CopyNode,
    output: u64,
}

/// The device address of `t`'s first value, which must be contiguous on a GPU.
fn contiguous_address(t: &crate::Tensor, what: &str) -> Result<u64> {
    let base = t.device_address().filter(|_| t.layout().is_contiguous());
    base.map(|b| b + 4 * t.layout().offset() as u64).ok_or_else(|| {
        Error::invalid(
            "InferenceGraph",
            format!("{what} must be row-major on a GPU, not {:?} on {}", t.shape(), t.device()),
        )
    })
}

impl GraphIo {
    /// The input and output copies of a graph to be captured on `device` (a GPU).
    pub(crate) fn new(device: Device) -> Result<GraphIo> {
        match device {
            Device::Cpu => Err(Error::invalid("InferenceGraph", "CUDA graphs need a CUDA device, not the CPU")),
            Device::Cuda(i) => Ok(GraphIo { gpu: cuda::gpu::gpu(i)?, copies: None }),
        }
    }

    /// Queues the copy of the input named at replay time into `dst` (row-major, on the GPU;
    /// captured, it copies `dst` onto itself until [`GraphIo::set`] names an input).
    pub(crate) fn read_into(&self, dst: &crate::Tensor) -> Result<()> {
        let at = contiguous_address(dst, "the graph's input")?;
        self.gpu.graph_copy("graph_input", at, at, dst.elem_count())
    }

    /// Queues the copy of `src` (row-major, on the GPU) to the output named at replay time
    /// (captured, onto itself until [`GraphIo::set`] names an output).
    pub(crate) fn write_from(&self, src: &crate::Tensor) -> Result<()> {
        let at = contiguous_address(src, "the graph's output")?;
        self.gpu.graph_copy("graph_output", at, at, src.elem_count())
    }

    /// Finds the two copies in `graph`, captured with [`GraphIo::read_into`] of `input` and
    /// [`GraphIo::write_from`] of `output`.
    pub(crate) fn attach(&mut self, graph: &Graph, input: &crate::Tensor, output: &crate::Tensor) -> Result<()> {
        let read = graph.0.copy_node("graph_input", input.elem_count())?;
        let write = graph.0.copy_node("graph_output", output.elem_count())?;
        let (input, output) =
            (contiguous_address(input, "the graph's input")?, contiguous_address(output, "the graph's output")?);
        self.copies = Some(Copies { read, input, write, output });
        Ok(())
    }

    /// An uninitialised row-major tensor of `shape` on the graph's GPU, for a replay's output.
    pub(crate) fn output(&self, shape: &[usize]) -> Result<crate::Tensor> {
        let n = shape.iter().product();
        ensure_room(self.gpu.device(), (n as u64).saturating_mul(4), "InferenceGraph output")?;
        let storage = cuda::CudaStorage::alloc(&self.gpu, n, "InferenceGraph output")?;
        Ok(crate::Tensor::from_storage(Storage::Cuda(storage), Layout::contiguous(shape)))
    }

    /// Makes `graph`'s later replays (the graph [`GraphIo::attach`] found the copies in) read
    /// `input` and write `output` (each row-major on the GPU, of the captured sizes); replays
    /// queued before keep the tensors they were given.
    pub(crate) fn set(&self, graph: &Graph, input: &crate::Tensor, output: &crate::Tensor) -> Result<()> {
        let Some(c) = &self.copies else {
            return Err(Error::invalid("InferenceGraph", "the graph's input and output copies were not found"));
        };
        let (x, y) = (contiguous_address(input, "the input")?, contiguous_address(output, "the output")?);
        graph.0.set_copies(&[(&c.read, x, c.input), (&c.write, c.output, y)])
    }
}

/// While it lives, the kernels' other worker threads wait for the next kernel by spinning
/// instead of sleeping, each for 2 ms without work or 100 ms in all at most ([`hot_workers`]).
/// Dropping it lets them sleep again.
#[must_use = "the workers spin only while the guard lives"]
pub struct HotWorkers {
    /// What the spinning tasks share with the guard.
    shared: Arc<Spinners>,
    /// The pool's index of the thread that made the guard.
    caller: usize,
    /// Threads that should spin: the pool's, less the caller's own (0: the guard does nothing).
    wanted: usize,
    /// Not `Send`: renewed from another thread, a spinner could land under that thread's work.
    _here: std::marker::PhantomData<*const ()>,
}

/// The state of a guard's spinning tasks.
struct Spinners {
    /// Set when the guard is dropped: every spinning task ends.
    stop: AtomicBool,
    /// Tasks spinning now.
    live: AtomicUsize,
    /// Tasks that have started spinning, over the guard's life.
    started: AtomicUsize,
}

/// How long a spinning task waits without finding work before it ends (the thread then sleeps
/// as usual, until [`HotWorkers::renew`]).
const SPIN_IDLE: std::time::Duration = std::time::Duration::from_millis(2);

/// The longest a spinning task runs, work or not. A task that a thread picked up while it
/// waited for a task of its own (possible only when the guard was made inside parallel work)
/// holds that wait until it ends: this bounds the stall. `fit` renews its spinners every batch.
const SPIN_MAX: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// Whether this thread runs a spinning task (a second one on it returns at once).
    static SPINNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl HotWorkers {
    /// How many threads spin for this guard now (they start a moment after it is made).
    pub fn spinning(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// How many spinning tasks this guard has started so far (one per thread, and one more
    /// each time [`HotWorkers::renew`] sets a thread spinning again).
    pub fn started(&self) -> usize {
        self.shared.started.load(Ordering::Acquire)
    }

    /// Sets spinning again the threads whose spin ended (2 ms without work, say while a file
    /// was written, or 100 ms in all). Cheap when all still spin: `fit` calls it every batch.
    pub fn renew(&self) {
        if self.wanted == 0 || self.shared.live.load(Ordering::Acquire) >= self.wanted {
            return;
        }
        let (shared, caller) = (self.shared.clone(), self.caller);
        rayon::spawn_broadcast(move |ctx| {
            // Not on the caller's own thread: spinning there, nothing could drop the guard.
            if caller == ctx.index() || SPINNING.with(|s| s.replace(true)) {
                return;
            }
            shared.live.fetch_add(1, Ordering::AcqRel);
            shared.started.fetch_add(1, Ordering::Relaxed);
            let born = std::time::Instant::now();
            // When work was last found (as of the last clock read), and whether any was since.
            let (mut worked_at, mut worked) = (born, false);
            let mut rounds = 0u32;
            while !shared.stop.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    worked = true;
                } else {
                    std::hint::spin_loop();
                }
                rounds = rounds.wrapping_add(1);
                // The clock read now and then: it costs more than a round.
                if rounds.is_multiple_of(256) {
                    let now = std::time::Instant::now();
                    if std::mem::take(&mut worked) {
                        worked_at = now;
                    } else {
                        // Idle: let the OS run a thread that shares this core (the caller,
                        // when the scheduler put the woken spinner next to it).
                        std::thread::yield_now();
                    }
                    if now - worked_at > SPIN_IDLE || now - born > SPIN_MAX {
                        break;
                    }
                }
            }
            shared.live.fetch_sub(1, Ordering::AcqRel);
            SPINNING.with(|s| s.set(false));
        });
    }
}

impl Drop for HotWorkers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

/// Keeps the CPU kernels' worker threads busy-waiting for work until the returned guard is
/// dropped, as OpenMP runtimes (PyTorch's CPU threads) do between parallel regions.
///
/// A kernel split over threads hands part of its work to the pool's other threads. A sleeping
/// thread must be woken for it, which costs microseconds per kernel on a virtual machine, and
/// a training step has dozens of kernels: `fit` holds this guard over its loop on the CPU.
/// Spinning threads take each piece of work as soon as it is queued, at the price of keeping
/// their cores busy; a thread goes back to sleep after 2 ms without work or 100 ms in all,
/// until [`HotWorkers::renew`].
///
/// The guard spins only when made on the thread that joined the pool by
/// [`work_on_this_thread`] (as `sinapse`'s binary does), with no more pool threads than cores,
/// and without `SINAPSE_WAIT=passive` in the environment (for several processes sharing the
/// cores); otherwise it does nothing. Make it outside parallel work: a pool thread that picks
/// up a spinning task while it waits for a task of its own resumes when the spin ends.
pub fn hot_workers() -> HotWorkers {
    let joined = JOINED.load(Ordering::Acquire);
    let threads = rayon::current_num_threads();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let passive = std::env::var("SINAPSE_WAIT").is_ok_and(|v| v.eq_ignore_ascii_case("passive"));
    // Only on the thread that joined the pool, where the spinning threads and it take one core
    // each; not with more threads than cores, nor when asked to wait passively.
    let on = rayon::current_thread_index() == Some(joined) && threads <= cores && !passive;
    let shared =
        Arc::new(Spinners { stop: AtomicBool::new(false), live: AtomicUsize::new(0), started: AtomicUsize::new(0) });
    let wanted = if on { threads - 1 } else { 0 };
    let guard = HotWorkers { shared, caller: joined, wanted, _here: std::marker::PhantomData };
    guard.renew();
    guard
}

/// Caps the bytes any one tensor allocation of this process may take, below what the device
/// has available (`None`: no cap beyond that). An allocation above the cap is refused with
/// [`Error::OutOfMemory`] before it is tried, as one above the available memory always is.
pub fn set_memory_limit(bytes: Option<u64>) {
    MEMORY_LIMIT.store(bytes.unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
}

/// Refuses, before it is tried, an allocation of `bytes` on `device` that cannot succeed
/// because the device does not have that much available (or it passes the cap of
/// [`set_memory_limit`]); `what` names what asked (a layer, an op, a file).
pub(crate) fn ensure_room(device: Device, bytes: u64, what: &str) -> Result<()> {
    let limit = MEMORY_LIMIT.load(std::sync::atomic::Ordering::Relaxed);
    room(device, bytes, limit, what)
}

/// Refuses a buffer of `bytes` (a file's contents) that `device` does not have the memory
/// for; unlike [`ensure_room`], not subject to [`set_memory_limit`], which caps tensors.
pub(crate) fn ensure_available(device: Device, bytes: u64, what: &str) -> Result<()> {
    room(device, bytes, u64::MAX, what)
}

fn room(device: Device, bytes: u64, limit: u64, what: &str) -> Result<()> {
    if bytes < CHECK_FROM_BYTES.min(limit) {
        return Ok(());
    }
    let available = match device {
        Device::Cpu => cpu::available_memory(),
        // While a graph's step is recorded or captured the driver is not asked: blocks come
        // from the graph's pool, whose free ones the count would miss (a real shortage still
        // ends in the driver's out-of-memory error, named as such).
        Device::Cuda(i) => cuda::gpu::opened(i).filter(|g| !g.has_pool()).and_then(|g| g.available_memory()),
    };
    let available = available.unwrap_or(u64::MAX).min(limit);
    if bytes > available {
        return Err(Error::OutOfMemory { what: what.to_string(), device, bytes, available });
    }
    Ok(())
}

/// [`ensure_room`] for `elems` values of `dtype` on the device of `s`.
fn room_for(s: &Storage, elems: usize, what: &str) -> Result<()> {
    let size = match s.dtype() {
        DType::F32 => 4u64,
    };
    ensure_room(s.device(), (elems as u64).saturating_mul(size), what)
}

/// Fails unless every operand of `op` is on the device of the first.
fn same_device(op: &'static str, storages: &[&Storage]) -> Result<()> {
    let first = storages[0].device();
    match storages.iter().map(|s| s.device()).find(|&d| d != first) {
        Some(other) => Err(Error::DeviceMismatch { op, lhs: first, rhs: other }),
        None => Ok(()),
    }
}

/// An op's input, its filters or weight, and an optional bias (with its layout) as CPU
/// storages, after checking that all are on one device: `None` when that device is not the
/// CPU.
type CpuOperands<'a> = (&'a cpu::CpuStorage, &'a cpu::CpuStorage, Option<(&'a cpu::CpuStorage, &'a Layout)>);

/// [`CpuOperands`] of `op`'s operands, or `None` off the CPU; an error when they are on
/// different devices.
fn cpu_operands<'a>(
    op: &'static str,
    x: &'a Storage,
    w: &'a Storage,
    bias: Option<(&'a Storage, &'a Layout)>,
) -> Result<Option<CpuOperands<'a>>> {
    let mut operands = vec![x, w];
    operands.extend(bias.map(|(b, _)| b));
    same_device(op, &operands)?;
    Ok(match (x, w, bias) {
        (Storage::Cpu(x), Storage::Cpu(w), None) => Some((x, w, None)),
        (Storage::Cpu(x), Storage::Cpu(w), Some((Storage::Cpu(b), b_l))) => Some((x, w, Some((b, b_l)))),
        _ => None,
    })
}

impl Storage {
    /// A new storage of `n` values on `device`, made by that device's backend (`cpu` and
    /// `cuda` say how); `what` names it in a refusal for lack of memory.
    fn create(
        device: Device,
        n: usize,
        what: &str,
        cpu: impl FnOnce() -> cpu::CpuStorage,
        cuda: impl FnOnce(&std::sync::Arc<cuda::gpu::Gpu>) -> Result<cuda::CudaStorage>,
    ) -> Result<Storage> {
        device.check_available()?;
        ensure_room(device, (n as u64).saturating_mul(4), what)?;
        match device {
            Device::Cpu => Ok(Storage::Cpu(cpu())),
            Device::Cuda(i) => Ok(Storage::Cuda(cuda(&cuda::gpu::gpu(i)?)?)),
        }
    }

    /// Host values moved to `device`.
    pub(crate) fn from_host(device: Device, data: Vec<f32>) -> Result<Storage> {
        match device {
            // The values are in memory already: no room to ask for.
            Device::Cpu => Ok(Storage::Cpu(cpu::CpuStorage::F32(data))),
            Device::Cuda(i) => {
                ensure_room(device, (data.len() as u64).saturating_mul(4), "to")?;
                Ok(Storage::Cuda(cuda::CudaStorage::from_host(&cuda::gpu::gpu(i)?, &data)?))
            }
        }
    }

    /// `n` copies of `value` on `device` (fill).
    pub(crate) fn full(device: Device, n: usize, value: f32) -> Result<Storage> {
        Storage::create(device, n, "fill", || cpu::CpuStorage::full(n, value), |g| cuda::CudaStorage::full(g, n, value))
    }

    /// `start, start + step, ..` (`n` values) on `device`.
    pub(crate) fn arange(device: Device, start: f32, step: f32, n: usize) -> Result<Storage> {
        Storage::create(
            device,
            n,
            "arange",
            || cpu::CpuStorage::arange(start, step, n),
            |g| cuda::CudaStorage::arange(g, start, step, n),
        )
    }

    /// The device holding the buffer.
    pub(crate) fn device(&self) -> Device {
        match self {
            Storage::Cpu(s) => s.device(),
            Storage::Cuda(s) => s.device(),
        }
    }

    /// The element type.
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// Number of elements in the buffer.
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    /// The elements of `l`, row-major, in host memory.
    pub(crate) fn to_host(&self, l: &Layout) -> Result<Vec<f32>> {
        match self {
            Storage::Cpu(s) => s.to_host(l),
            Storage::Cuda(s) => s.to_host(l),
        }
    }

    /// The elements of `l` as a contiguous buffer on `device` (a copy even on the same one).
    pub(crate) fn to_device(&self, l: &Layout, device: Device) -> Result<Storage> {
        ensure_room(device, (l.elem_count() as u64).saturating_mul(4), "to")?;
        if device == self.device() {
            return self.copy_strided(l);
        }
        Storage::from_host(device, self.to_host(l)?)
    }

    /// The elements of `l` as a new contiguous buffer on the same device.
    pub(crate) fn copy_strided(&self, l: &Layout) -> Result<Storage> {
        room_for(self, l.elem_count(), "copy")?;
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.copy_strided(l)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.copy_strided(l)?)),
        }
    }

    /// Writes `data` over the values from position `at` on (queued on a GPU, like a kernel).
    pub(crate) fn write_host(&mut self, at: usize, data: &[f32]) -> Result<()> {
        if at.checked_add(data.len()).is_none_or(|end| end > self.len()) {
            return Err(Error::invalid(
                "write",
                format!("{} values at {at} overrun {} values", data.len(), self.len()),
            ));
        }
        match self {
            Storage::Cpu(cpu::CpuStorage::F32(v)) => {
                v[at..at + data.len()].copy_from_slice(data);
                Ok(())
            }
            Storage::Cuda(s) => s.write_host(at, data),
        }
    }

    /// The buffer's device address on a GPU; `None` on the CPU.
    pub(crate) fn device_address(&self) -> Option<u64> {
        match self {
            Storage::Cpu(_) => None,
            Storage::Cuda(s) => Some(s.address()),
        }
    }

    /// The value at position `at` of each of `parts` (all on one device), in order, in a new
    /// buffer, where the backend gathers them in one pass (a GPU: one launch per 64 values,
    /// instead of a copy each); `None` on the CPU, for the caller's copies.
    pub(crate) fn gather_values(parts: &[(&Storage, usize)]) -> Result<Option<Storage>> {
        let cuda: Option<Vec<(&cuda::CudaStorage, usize)>> = parts
            .iter()
            .map(|(s, at)| match s {
                Storage::Cuda(c) => Some((c, *at)),
                Storage::Cpu(_) => None,
            })
            .collect();
        // The GPU's gather refuses parts on several GPUs.
        cuda.map(|cuda| cuda::CudaStorage::gather_values(&cuda).map(Storage::Cuda)).transpose()
    }

    /// Copies the elements of `l` to the places `dst_l` names in `dst`.
    pub(crate) fn copy_into(&self, l: &Layout, dst: &mut Storage, dst_l: &Layout, op: &'static str) -> Result<()> {
        same_device(op, &[self, dst])?;
        match (self, dst) {
            (Storage::Cpu(s), Storage::Cpu(d)) => s.copy_into(l, d, dst_l),
            (Storage::Cuda(s), Storage::Cuda(d)) => s.copy_into(l, d, dst_l),
            (s, d) => Err(Error::DeviceMismatch { op, lhs: s.device(), rhs: d.device() }),
        }
    }

    /// `op(x)` elementwise.
    pub(crate) fn unary(&self, l: &Layout, op: UnaryOp) -> Result<Storage> {
        room_for(self, l.elem_count(), op.name())?;
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.unary(l, op)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.unary(l, op)?)),
        }
    }

    /// `op(a, b)` elementwise over one (broadcast) shape.
    pub(crate) fn binary(&self, l: &Layout, rhs: &Storage, rhs_l: &Layout, op: BinaryOp) -> Result<Storage> {
        same_device(op.name(), &[self, rhs])?;
        room_for(self, l.elem_count(), op.name())?;
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.binary(l, b, rhs_l, op)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.binary(l, b, rhs_l, op)?)),
            (a, b) => Err(mismatch(op.name(), &[a, b])),
        }
    }

    /// 1.0 where `a op b`, else 0.0.
    pub(crate) fn compare(&self, l: &Layout, rhs: &Storage, rhs_l: &Layout, op: CmpOp) -> Result<Storage> {
        same_device(op.name(), &[self, rhs])?;
        room_for(self, l.elem_count(), op.name())?;
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.compare(l, b, rhs_l, op)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.compare(l, b, rhs_l, op)?)),
            (a, b) => Err(mismatch(op.name(), &[a, b])),
        }
    }

    /// `cond != 0 ? on_true : on_false` elementwise.
    pub(crate) fn where_cond(
        &self,
        l: &Layout,
        on_true: &Storage,
        t_l: &Layout,
        on_false: &Storage,
        f_l: &Layout,
    ) -> Result<Storage> {
        same_device("where_cond", &[self, on_true, on_false])?;
        room_for(self, l.elem_count(), "where_cond")?;
        match (self, on_true, on_false) {
            (Storage::Cpu(c), Storage::Cpu(t), Storage::Cpu(f)) => Ok(Storage::Cpu(c.where_cond(l, t, t_l, f, f_l)?)),
            (Storage::Cuda(c), Storage::Cuda(t), Storage::Cuda(f)) => {
                Ok(Storage::Cuda(c.where_cond(l, t, t_l, f, f_l)?))
            }
            (c, t, f) => Err(mismatch("where_cond", &[c, t, f])),
        }
    }

    /// Reduces axis `dim`, or everything.
    pub(crate) fn reduce(&self, l: &Layout, dim: Option<usize>, op: ReduceOp) -> Result<Storage> {
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.reduce(l, dim, op)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.reduce(l, dim, op)?)),
        }
    }

    /// Softmax or log-softmax along `dim`.
    pub(crate) fn softmax(&self, l: &Layout, dim: usize, log: bool) -> Result<Storage> {
        room_for(self, l.elem_count(), "softmax")?;
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.softmax(l, dim, log)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.softmax(l, dim, log)?)),
        }
    }

    /// The gradient of a mean cross-entropy through its log-softmax (see the trait's method),
    /// after checking the shapes the backends rely on: `[rows, classes]`, `[rows]`, one value.
    pub(crate) fn cross_entropy_grad(
        &self,
        l: &Layout,
        classes: &Storage,
        classes_l: &Layout,
        g: &Storage,
        g_l: &Layout,
        scale: f32,
    ) -> Result<Storage> {
        same_device("cross_entropy", &[self, classes, g])?;
        let rows = match *l.shape() {
            [rows, _] => rows,
            ref s => {
                return Err(Error::invalid("cross_entropy", format!("log-probabilities {s:?}, not [rows, classes]")))
            }
        };
        if classes_l.shape() != [rows] || g_l.elem_count() != 1 {
            return Err(Error::invalid(
                "cross_entropy",
                format!("classes {:?} and gradient {:?} for {rows} rows", classes_l.shape(), g_l.shape()),
            ));
        }
        room_for(self, l.elem_count(), "cross_entropy")?;
        match (self, classes, g) {
            (Storage::Cpu(s), Storage::Cpu(c), Storage::Cpu(g)) => {
                Ok(Storage::Cpu(s.cross_entropy_grad(l, c, classes_l, g, g_l, scale)?))
            }
            (Storage::Cuda(s), Storage::Cuda(c), Storage::Cuda(g)) => {
                Ok(Storage::Cuda(s.cross_entropy_grad(l, c, classes_l, g, g_l, scale)?))
            }
            (s, c, g) => Err(mismatch("cross_entropy", &[s, c, g])),
        }
    }

    /// A [`ClassTotal`] of the rows of `self` (`[rows, classes]` at `l`) and `classes`
    /// (`[rows]`) as a scalar, in one launch where the device has a kernel for it (CUDA, for
    /// batches of up to [`cuda::CLASS_TOTAL_MAX`] values); `None` elsewhere (the CPU), where
    /// the caller composes a gather or argmax, a comparison and a sum. Errors name `op`, the
    /// caller's.
    pub(crate) fn class_total(
        &self,
        op: &'static str,
        l: &Layout,
        classes: &Storage,
        classes_l: &Layout,
        total: ClassTotal,
    ) -> Result<Option<Storage>> {
        same_device(op, &[self, classes])?;
        match *l.shape() {
            [rows, _] if classes_l.shape() == [rows] => {}
            ref s => {
                return Err(Error::invalid(
                    op,
                    format!("values {s:?} and classes {:?}, not [rows, classes] and [rows]", classes_l.shape()),
                ))
            }
        }
        match (self, classes) {
            (Storage::Cuda(s), Storage::Cuda(c)) => Ok(s.class_total(op, l, c, classes_l, total)?.map(Storage::Cuda)),
            _ => Ok(None),
        }
    }

    /// The gradient through a dense layer's fused ReLU and its bias's gradient in one launch,
    /// where the device has a kernel for it (CUDA): this `[rows, cols]` output gradient where
    /// the layer's output `y` is positive, else 0 (the ReLU's gradient, row-major), and its
    /// column sums `[cols]`. `None` elsewhere (the CPU), where the caller composes the two.
    pub(crate) fn relu_grad_sums(&self, l: &Layout, y: &Storage, y_l: &Layout) -> Result<Option<(Storage, Storage)>> {
        same_device("linear_relu", &[self, y])?;
        if l.rank() != 2 {
            return Err(Error::invalid("linear_relu gradient", format!("[rows, cols] expected, got {:?}", l.shape())));
        }
        if l.shape() != y_l.shape() {
            return Err(Error::shapes("linear_relu gradient", l.shape(), y_l.shape()));
        }
        match (self, y) {
            (Storage::Cuda(g), Storage::Cuda(y)) => {
                room_for(self, l.elem_count().saturating_add(l.shape()[1]), "linear_relu")?;
                let (masked, sums) = g.relu_grad_sums(l, y, y_l)?;
                Ok(Some((Storage::Cuda(masked), Storage::Cuda(sums))))
            }
            _ => Ok(None),
        }
    }

    /// Batched matrix product.
    pub(crate) fn matmul(&self, l: &Layout, rhs: &Storage, rhs_l: &Layout, mkn: [usize; 3]) -> Result<Storage> {
        same_device("matmul", &[self, rhs])?;
        let batch: usize = l.shape()[..l.rank().saturating_sub(2)].iter().product();
        room_for(self, batch.saturating_mul(mkn[0]).saturating_mul(mkn[2]), "matmul")?;
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => Ok(Storage::Cpu(a.matmul(l, b, rhs_l, mkn)?)),
            (Storage::Cuda(a), Storage::Cuda(b)) => Ok(Storage::Cuda(a.matmul(l, b, rhs_l, mkn)?)),
            (a, b) => Err(mismatch("matmul", &[a, b])),
        }
    }

    /// The rank-2 product plus a bias row, then a ReLU when `relu` (see
    /// [`BackendStorage::matmul_bias`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul_bias(
        &self,
        l: &Layout,
        rhs: &Storage,
        rhs_l: &Layout,
        bias: &Storage,
        bias_l: &Layout,
        mkn: [usize; 3],
        relu: bool,
    ) -> Result<Storage> {
        same_device("linear", &[self, rhs, bias])?;
        room_for(self, mkn[0].saturating_mul(mkn[2]), "linear")?;
        match (self, rhs, bias) {
            (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(c)) => {
                Ok(Storage::Cpu(a.matmul_bias(l, b, rhs_l, c, bias_l, mkn, relu)?))
            }
            (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(c)) => {
                Ok(Storage::Cuda(a.matmul_bias(l, b, rhs_l, c, bias_l, mkn, relu)?))
            }
            (a, b, c) => Err(mismatch("linear", &[a, b, c])),
        }
    }

    /// index_select along `dim`.
    pub(crate) fn index_select(&self, l: &Layout, dim: usize, ids: &Storage, ids_l: &Layout) -> Result<Storage> {
        same_device("index_select", &[self, ids])?;
        let per_entry = l.elem_count() / l.shape()[dim].max(1);
        room_for(self, per_entry.saturating_mul(ids_l.elem_count()), "index_select")?;
        match (self, ids) {
            (Storage::Cpu(s), Storage::Cpu(i)) => Ok(Storage::Cpu(s.index_select(l, dim, i, ids_l)?)),
            (Storage::Cuda(s), Storage::Cuda(i)) => Ok(Storage::Cuda(s.index_select(l, dim, i, ids_l)?)),
            (s, i) => Err(mismatch("index_select", &[s, i])),
        }
    }

    /// index_add along `dim`.
    pub(crate) fn index_add(
        &self,
        l: &Layout,
        dim: usize,
        ids: &Storage,
        ids_l: &Layout,
        src: &Storage,
        src_l: &Layout,
    ) -> Result<Storage> {
        same_device("index_add", &[self, ids, src])?;
        match (self, ids, src) {
            (Storage::Cpu(s), Storage::Cpu(i), Storage::Cpu(v)) => {
                Ok(Storage::Cpu(s.index_add(l, dim, i, ids_l, v, src_l)?))
            }
            (Storage::Cuda(s), Storage::Cuda(i), Storage::Cuda(v)) => {
                Ok(Storage::Cuda(s.index_add(l, dim, i, ids_l, v, src_l)?))
            }
            (s, i, v) => Err(mismatch("index_add", &[s, i, v])),
        }
    }

    /// gather along `dim`; a bad entry of `index` is an error in `who`'s terms (on a GPU, at
    /// the next read).
    pub(crate) fn gather(
        &self,
        l: &Layout,
        dim: usize,
        index: &Storage,
        index_l: &Layout,
        who: Indices,
    ) -> Result<Storage> {
        same_device("gather", &[self, index])?;
        room_for(self, index_l.elem_count(), "gather")?;
        match (self, index) {
            (Storage::Cpu(s), Storage::Cpu(i)) => Ok(Storage::Cpu(s.gather(l, dim, i, index_l, who)?)),
            (Storage::Cuda(s), Storage::Cuda(i)) => Ok(Storage::Cuda(s.gather(l, dim, i, index_l, who)?)),
            (s, i) => Err(mismatch("gather", &[s, i])),
        }
    }

    /// scatter_add along `dim`.
    pub(crate) fn scatter_add(
        &self,
        l: &Layout,
        dim: usize,
        index: &Storage,
        index_l: &Layout,
        src: &Storage,
        src_l: &Layout,
    ) -> Result<Storage> {
        same_device("scatter_add", &[self, index, src])?;
        match (self, index, src) {
            (Storage::Cpu(s), Storage::Cpu(i), Storage::Cpu(v)) => {
                Ok(Storage::Cpu(s.scatter_add(l, dim, i, index_l, v, src_l)?))
            }
            (Storage::Cuda(s), Storage::Cuda(i), Storage::Cuda(v)) => {
                Ok(Storage::Cuda(s.scatter_add(l, dim, i, index_l, v, src_l)?))
            }
            (s, i, v) => Err(mismatch("scatter_add", &[s, i, v])),
        }
    }

    /// im2col.
    pub(crate) fn im2col(&self, l: &Layout, dims: ImageDims, win: &Window, pad_value: f32) -> Result<Storage> {
        let [n, c, _, _] = dims.input;
        let cols = [n, c, dims.output[0], dims.output[1], win.kernel[0], win.kernel[1]];
        room_for(self, cols.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "im2col")?;
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.im2col(l, dims, win, pad_value)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.im2col(l, dims, win, pad_value)?)),
        }
    }

    /// Direct convolution with stride 1 and no dilation, where the device has a kernel for
    /// it (the CPU): `self` the `[N, C, H, W]` images, `w` the `[O, C, KH, KW]` filters,
    /// `bias` `[O]`; `[N, O, OH, OW]`. `None` on other devices, where the caller composes
    /// im2col and a matrix product instead.
    pub(crate) fn conv2d_direct(
        &self,
        l: &Layout,
        w: &Storage,
        w_l: &Layout,
        bias: Option<(&Storage, &Layout)>,
        dims: ImageDims,
        padding: [usize; 2],
    ) -> Result<Option<Storage>> {
        let cpu = cpu_operands("conv2d", self, w, bias)?;
        let [n, _, _, _] = dims.input;
        let out = [n, w_l.shape()[0], dims.output[0], dims.output[1]];
        room_for(self, out.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "conv2d")?;
        let Some((x, w, bias)) = cpu else { return Ok(None) };
        Ok(Some(Storage::Cpu(x.conv2d_direct(l, w, w_l, bias, dims, padding)?)))
    }

    /// A dense layer's `relu?(x · wt + bias)` for inference, with the zero entries of `x`
    /// skipped, where the device has a kernel for it (the CPU): `self` the `[m, k]` inputs,
    /// `wt` the weight laid out `[k, n]`, `bias` `[n]`. `None` on other devices, where the
    /// caller multiplies by the whole weight. Only for a
    /// finite weight (a skipped `0 · inf` would have been NaN).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn linear_skipping_zeros(
        &self,
        l: &Layout,
        wt: &Storage,
        wt_l: &Layout,
        bias: Option<(&Storage, &Layout)>,
        mkn: [usize; 3],
        relu: bool,
    ) -> Result<Option<Storage>> {
        let cpu = cpu_operands("linear", self, wt, bias)?;
        room_for(self, mkn[0].saturating_mul(mkn[2]), "linear")?;
        let Some((x, w, bias)) = cpu else { return Ok(None) };
        Ok(Some(Storage::Cpu(x.linear_skipping_zeros(l, w, wt_l, bias, mkn, relu))))
    }

    /// A stride-1, undilated convolution followed by 2x2 max pooling with stride 2, in one
    /// pass where the device has a kernel for it (the CPU, for shapes that do not take
    /// Winograd's path): `self` the `[N, C, H, W]` images, `w` the `[O, C, KH, KW]` filters,
    /// `bias` `[O]`, `dims` the convolution's; the pooled `[N, O, OH/2, OW/2]` values and
    /// the pooling's taps (as [`Storage::max_pool2d`] gives them). `None` elsewhere: the
    /// caller runs the two ops.
    pub(crate) fn conv2d_max_pool2(
        &self,
        l: &Layout,
        w: &Storage,
        w_l: &Layout,
        bias: Option<(&Storage, &Layout)>,
        dims: ImageDims,
        padding: [usize; 2],
    ) -> Result<Option<(Storage, Storage)>> {
        let cpu = cpu_operands("conv2d_max_pool2", self, w, bias)?;
        let out = [dims.input[0], w_l.shape()[0], dims.output[0] / 2, dims.output[1] / 2];
        room_for(self, 2 * out.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "conv2d_max_pool2")?;
        let Some((x, w, bias)) = cpu else { return Ok(None) };
        let pooled = x.conv2d_max_pool2(l, w, w_l, bias, dims, padding)?;
        Ok(pooled.map(|(v, t)| (Storage::Cpu(v), Storage::Cpu(t))))
    }

    /// The filters' gradient of [`Storage::conv2d_max_pool2`] on the CPU: `self` the
    /// `[N, C, H, W]` images, `g` the pooled output's gradient and `taps` the pooling's
    /// taps (`[N, O, OH/2, OW/2]` each); `[O, C, KH, KW]`. `None` on other devices.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv2d_pooled_weight_grad(
        &self,
        l: &Layout,
        g: &Storage,
        g_l: &Layout,
        taps: &Storage,
        taps_l: &Layout,
        dims: ImageDims,
        kernel: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Option<Storage>> {
        same_device("conv2d_max_pool2", &[self, g, taps])?;
        let [_, c, _, _] = dims.input;
        let len = [g_l.shape()[1], c, kernel[0], kernel[1]].iter().fold(1usize, |a, &d| a.saturating_mul(d));
        room_for(self, len, "conv2d_max_pool2")?;
        match (self, g, taps) {
            (Storage::Cpu(x), Storage::Cpu(g), Storage::Cpu(t)) => {
                Ok(Some(Storage::Cpu(x.conv2d_pooled_weight_grad(l, g, g_l, t, taps_l, dims, kernel, padding)?)))
            }
            _ => Ok(None),
        }
    }

    /// The filters' gradient of a stride-1, undilated convolution on a device with a direct
    /// kernel for it (the CPU): `self` the `[N, C, H, W]` images, `g` the `[N, O, OH, OW]`
    /// output gradient; `[O, C, KH, KW]`. `None` on other devices, where the caller multiplies
    /// the output gradient by the images' im2col instead.
    pub(crate) fn conv2d_weight_grad(
        &self,
        l: &Layout,
        g: &Storage,
        g_l: &Layout,
        dims: ImageDims,
        kernel: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Option<Storage>> {
        same_device("conv2d", &[self, g])?;
        let [_, c, _, _] = dims.input;
        let len = [g_l.shape()[1], c, kernel[0], kernel[1]].iter().fold(1usize, |a, &d| a.saturating_mul(d));
        room_for(self, len, "conv2d")?;
        match (self, g) {
            (Storage::Cpu(x), Storage::Cpu(g)) => {
                Ok(Some(Storage::Cpu(x.conv2d_weight_grad(l, g, g_l, dims, kernel, padding)?)))
            }
            _ => Ok(None),
        }
    }

    /// The input's gradient of a convolution on a device with a kernel for it (the CPU):
    /// `self` the `[N, O, OH, OW]` output gradient, `w` the `[O, C, KH, KW]` filters;
    /// `[N, C, H, W]`. `None` on other devices, where the caller composes the filters'
    /// product with the output gradient and col2im instead.
    pub(crate) fn conv2d_input_grad(
        &self,
        l: &Layout,
        w: &Storage,
        w_l: &Layout,
        dims: ImageDims,
        win: &Window,
    ) -> Result<Option<Storage>> {
        same_device("conv2d", &[self, w])?;
        room_for(self, dims.input.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "conv2d")?;
        match (self, w) {
            (Storage::Cpu(g), Storage::Cpu(w)) => Ok(Some(Storage::Cpu(g.conv2d_input_grad(l, w, w_l, dims, win)?))),
            _ => Ok(None),
        }
    }

    /// col2im, the adjoint of im2col.
    pub(crate) fn col2im(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<Storage> {
        room_for(self, dims.input.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "col2im")?;
        match self {
            Storage::Cpu(s) => Ok(Storage::Cpu(s.col2im(l, dims, win)?)),
            Storage::Cuda(s) => Ok(Storage::Cuda(s.col2im(l, dims, win)?)),
        }
    }

    /// Max pooling: maxima and the tap each came from.
    pub(crate) fn max_pool2d(&self, l: &Layout, dims: ImageDims, win: &Window) -> Result<(Storage, Storage)> {
        let [n, c, _, _] = dims.input;
        let out = [2, n, c, dims.output[0], dims.output[1]];
        room_for(self, out.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "max_pool2d")?;
        match self {
            Storage::Cpu(s) => {
                let (v, t) = s.max_pool2d(l, dims, win)?;
                Ok((Storage::Cpu(v), Storage::Cpu(t)))
            }
            Storage::Cuda(s) => {
                let (v, t) = s.max_pool2d(l, dims, win)?;
                Ok((Storage::Cuda(v), Storage::Cuda(t)))
            }
        }
    }

    /// Max pooling with a bias (`[C]`, added to each channel's values first) and a ReLU
    /// (with `relu`), in one launch where the device has a kernel for it (CUDA): the maxima
    /// (their ReLU), and taps that [`Storage::max_pool2d_backward`] turns into the ops'
    /// gradient (a window whose maximum is not positive sends none under the ReLU). `None`
    /// elsewhere (the CPU), where the caller runs the ops.
    pub(crate) fn max_pool2d_fused(
        &self,
        l: &Layout,
        bias: Option<(&Storage, &Layout)>,
        dims: ImageDims,
        win: &Window,
        relu: bool,
    ) -> Result<Option<(Storage, Storage)>> {
        let [n, c, _, _] = dims.input;
        let out = [2, n, c, dims.output[0], dims.output[1]];
        room_for(self, out.iter().fold(1usize, |a, &d| a.saturating_mul(d)), "max_pool2d")?;
        if let Some((b, _)) = bias {
            same_device("max_pool2d", &[self, b])?;
        }
        match self {
            Storage::Cpu(_) => Ok(None),
            Storage::Cuda(s) => {
                let bias = match bias {
                    Some((Storage::Cuda(b), bl)) => Some((b, bl)),
                    Some((b, _)) => return Err(mismatch("max_pool2d", &[self, b])),
                    None => None,
                };
                let (v, t) = s.max_pool(l, bias, dims, win, relu)?;
                Ok(Some((Storage::Cuda(v), Storage::Cuda(t))))
            }
        }
    }

    /// The adjoint of max pooling, from the gradient of the maxima at `l` and their taps:
    /// the images' gradient and its layout. With `channel_major` (the pooled images were a
    /// view of a `[C, N, H, W]` buffer, as a convolution's matrix product leaves them) the
    /// gradient is written in that order where the device can (CUDA), so that the product's
    /// own gradient needs no copy; row-major elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn max_pool2d_backward(
        &self,
        l: &Layout,
        taps: &Storage,
        taps_l: &Layout,
        dims: ImageDims,
        win: &Window,
        channel_major: bool,
    ) -> Result<(Storage, Layout)> {
        same_device("max_pool2d", &[self, taps])?;
        let [n, c, h, w] = dims.input;
        let row_major = Layout::contiguous(&dims.input);
        match (self, taps) {
            (Storage::Cpu(g), Storage::Cpu(t)) => {
                Ok((Storage::Cpu(g.max_pool2d_backward(l, t, taps_l, dims, win)?), row_major))
            }
            (Storage::Cuda(g), Storage::Cuda(t)) => {
                let dx = Storage::Cuda(g.max_pool_backward(l, t, taps_l, dims, win, channel_major)?);
                let layout =
                    if channel_major { Layout::contiguous(&[c, n, h, w]).permute(&[1, 0, 2, 3])? } else { row_major };
                Ok((dx, layout))
            }
            (g, t) => Err(mismatch("max_pool2d", &[g, t])),
        }
    }

    /// The LSTM's forward recurrence (see [`BackendStorage::lstm_forward`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lstm_forward(
        &self,
        l: &Layout,
        w_ih: &Storage,
        w_ih_l: &Layout,
        bias: &Storage,
        bias_l: &Layout,
        w_hh: &Storage,
        w_hh_l: &Layout,
        h0: &Storage,
        h0_l: &Layout,
        c0: &Storage,
        c0_l: &Layout,
    ) -> Result<Storage> {
        same_device("lstm", &[self, w_ih, bias, w_hh, h0, c0])?;
        let [t, n, i] = lstm::dims3(l, "lstm")?;
        let h = w_hh_l.shape().get(1).copied().unwrap_or(0);
        let Some(h4) = h.checked_mul(4) else {
            return Err(Error::invalid("lstm", format!("weight_hh {:?} is too large", w_hh_l.shape())));
        };
        let want = [vec![h4, i], vec![h4], vec![h4, h], vec![n, h], vec![n, h]];
        let got = [w_ih_l, bias_l, w_hh_l, h0_l, c0_l].map(|l| l.shape().to_vec());
        if h == 0 || got != want {
            return Err(Error::invalid(
                "lstm",
                format!(
                    "input {:?} needs weight_ih, bias, weight_hh, h0 and c0 of shapes {want:?}; got {got:?}",
                    l.shape()
                ),
            ));
        }
        room_for(self, t.saturating_mul(n).saturating_mul(h).saturating_mul(6), "lstm")?;
        match (self, w_ih, bias, w_hh, h0, c0) {
            (Storage::Cpu(x), Storage::Cpu(wi), Storage::Cpu(b), Storage::Cpu(w), Storage::Cpu(h), Storage::Cpu(c)) => {
                Ok(Storage::Cpu(x.lstm_forward(l, wi, w_ih_l, b, bias_l, w, w_hh_l, h, h0_l, c, c0_l)?))
            }
            (
                Storage::Cuda(x),
                Storage::Cuda(wi),
                Storage::Cuda(b),
                Storage::Cuda(w),
                Storage::Cuda(h),
                Storage::Cuda(c),
            ) => Ok(Storage::Cuda(x.lstm_forward(l, wi, w_ih_l, b, bias_l, w, w_hh_l, h, h0_l, c, c0_l)?)),
            (x, wi, b, w, h, c) => Err(mismatch("lstm", &[x, wi, b, w, h, c])),
        }
    }

    /// Backpropagation through time for [`Storage::lstm_forward`] (see
    /// [`BackendStorage::lstm_backward`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lstm_backward(
        &self,
        l: &Layout,
        g: &Storage,
        g_l: &Layout,
        c0: &Storage,
        c0_l: &Layout,
        w_hh: &Storage,
        w_hh_l: &Layout,
        want_dh0: bool,
    ) -> Result<(Storage, Option<Storage>, Storage)> {
        let op = "lstm backward";
        same_device(op, &[self, g, c0, w_hh])?;
        let [t, n, h6] = lstm::dims3(l, op)?;
        let h = h6 / 6;
        if h == 0
            || h6 % 6 != 0
            || g_l.shape() != [t, n, 2 * h]
            || c0_l.shape() != [n, h]
            || w_hh_l.shape() != [4 * h, h]
        {
            return Err(Error::invalid(
                op,
                format!(
                    "records {:?} need gradients [T, N, 2H], c0 [N, H] and weight_hh [4H, H]; got {:?}, {:?}, {:?}",
                    l.shape(),
                    g_l.shape(),
                    c0_l.shape(),
                    w_hh_l.shape()
                ),
            ));
        }
        room_for(self, t.saturating_mul(n).saturating_mul(h).saturating_mul(4), op)?;
        let grads = match (self, g, c0, w_hh) {
            (Storage::Cpu(r), Storage::Cpu(g), Storage::Cpu(c), Storage::Cpu(w)) => {
                let (dz, dh0, dc0) = r.lstm_backward(l, g, g_l, c, c0_l, w, w_hh_l, want_dh0)?;
                (Storage::Cpu(dz), dh0.map(Storage::Cpu), Storage::Cpu(dc0))
            }
            (Storage::Cuda(r), Storage::Cuda(g), Storage::Cuda(c), Storage::Cuda(w)) => {
                let (dz, dh0, dc0) = r.lstm_backward(l, g, g_l, c, c0_l, w, w_hh_l, want_dh0)?;
                (Storage::Cuda(dz), dh0.map(Storage::Cuda), Storage::Cuda(dc0))
            }
            (r, g, c, w) => return Err(mismatch(op, &[r, g, c, w])),
        };
        Ok(grads)
    }

    /// Optimizer updates of several parameters in place, in order (with `staged`: an item's
    /// changing numbers read from that storage, at that position, when the kernel runs), each
    /// run of items on one device by its backend; on an error, the position of the first item
    /// whose update was not queued. Every item is checked before any is queued (an error
    /// there is at position 0).
    pub(crate) fn optimizer_steps(
        items: &mut [StepItem<'_, Storage>],
        op: &'static str,
    ) -> std::result::Result<(), (Error, usize)> {
        for it in items.iter() {
            Storage::check_step(it, op).map_err(|e| (e, 0))?;
        }
        let mut from = 0;
        while let Some(first) = items.get(from) {
            let device = first.param.device();
            let len = items[from..].iter().take_while(|it| it.param.device() == device).count();
            let run = &mut items[from..from + len];
            // Every operand of an item is on its parameter's device (checked above), so each
            // arm below sees only its own variant; nothing of the run is queued before its
            // backend's call.
            let queued = match device {
                Device::Cpu => steps_on::<cpu::CpuStorage>(
                    run,
                    op,
                    |s| if let Storage::Cpu(s) = s { Some(s) } else { None },
                    |s| if let Storage::Cpu(s) = s { Some(s) } else { None },
                ),
                Device::Cuda(_) => steps_on::<cuda::CudaStorage>(
                    run,
                    op,
                    |s| if let Storage::Cuda(s) = s { Some(s) } else { None },
                    |s| if let Storage::Cuda(s) = s { Some(s) } else { None },
                ),
            };
            queued.map_err(|(e, k)| (e, from + k))?;
            from += len;
        }
        Ok(())
    }

    /// What every backend's fused update assumes of one item: its operands on the
    /// parameter's device, parameter and gradient contiguous and of one size, the update's
    /// state buffers of that size, and its staged numbers inside their storage.
    fn check_step(it: &StepItem<'_, Storage>, op: &'static str) -> Result<()> {
        same_device(op, &[it.param, it.grad])?;
        if let Some((s, at)) = it.staged {
            same_device(op, &[it.param, s])?;
            if at.checked_add(STAGED).is_none_or(|end| end > s.len()) {
                return Err(Error::invalid(op, format!("staged numbers at {at} lie outside {} values", s.len())));
            }
        }
        let device = it.param.device();
        if let Some(s) = it.state.iter().find(|s| s.device() != device) {
            return Err(Error::DeviceMismatch { op, lhs: device, rhs: s.device() });
        }
        let n = it.l.elem_count();
        if !it.l.is_contiguous() || !it.grad_l.is_contiguous() || it.grad_l.elem_count() != n {
            return Err(Error::invalid("optimizer step", "parameter and gradient must be contiguous and of one size"));
        }
        if it.state.len() != it.update.state_buffers() || it.state.iter().any(|s| s.len() != n) {
            return Err(Error::invalid(
                "optimizer step",
                format!("needs {} state buffers of {n} values", it.update.state_buffers()),
            ));
        }
        Ok(())
    }
}

/// The updates of `items` by the backend whose storage type `pick_mut` and `pick` take out
/// of a [`Storage`] (`None`: another device's, an error before anything is queued, at
/// position 0); on an error, the position of the first item not queued.
fn steps_on<'a, S: BackendStorage + 'a>(
    items: &mut [StepItem<'a, Storage>],
    op: &'static str,
    pick_mut: impl Fn(&mut Storage) -> Option<&mut S>,
    pick: impl Fn(&'a Storage) -> Option<&'a S>,
) -> std::result::Result<(), (Error, usize)> {
    let mut picked = Vec::with_capacity(items.len());
    for it in items.iter_mut() {
        let wrong = (mismatch(op, &[&*it.param, it.grad]), 0);
        let (Some(grad), Some(param)) = (pick(it.grad), pick_mut(&mut *it.param)) else { return Err(wrong) };
        let state: Option<Vec<&mut S>> = it.state.iter_mut().map(|s| pick_mut(s)).collect();
        let staged = match it.staged {
            Some((s, at)) => Some((pick(s).ok_or_else(|| (mismatch(op, &[s]), 0))?, at)),
            None => None,
        };
        let state = state.ok_or_else(|| (Error::invalid(op, "optimizer state on another device"), 0))?;
        picked.push(StepItem { param, l: it.l, grad, grad_l: it.grad_l, state, update: it.update, staged });
    }
    S::optimizer_steps(&mut picked)
}

/// `[N, H]` of an LSTM cell state's layout.
fn lstm_dims(c: &Layout) -> Result<[usize; 2]> {
    match *c.shape() {
        [n, h] => Ok([n, h]),
        _ => Err(Error::invalid("lstm", format!("cell state must be [N, H], got {:?}", c.shape()))),
    }
}

/// The error for operands found on different devices (the dispatch's fallback arm, after
/// `same_device` has already let them through).
fn mismatch(op: &'static str, storages: &[&Storage]) -> Error {
    let first = storages[0].device();
    let other = storages.iter().map(|s| s.device()).find(|&d| d != first).unwrap_or(first);
    Error::DeviceMismatch { op, lhs: first, rhs: other }
}
