//! One GPU as this process uses it: its context and stream, the kernels compiled for it, its
//! cuBLAS handle, its block cache, and its word for index errors. Made once per device, on
//! first use, and kept for the life of the process.
//!
//! Everything of CUDA is loaded at run time (cudarc's `dynamic-loading`): the driver
//! library, NVRTC and cuBLAS are looked for when a CUDA device is first asked for, and a
//! missing one is an error that names it, not a failure to build or to start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::alloc::{rounded, BlockCache, MemoryStats, PoolState};
use super::kernel_cache::KernelCache;
use crate::backend::Indices;
use crate::layout::Layout;
use crate::{Device, Error, Result};

/// The kernels' CUDA C source, compiled by NVRTC at run time.
pub(crate) const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel of [`SOURCE`], by name.
pub(crate) const KERNELS: &[&str] = &[
    "take_errors",
    "spin",
    "fill",
    "gather_values",
    "arange",
    "copy_strided",
    "copy_into",
    "graph_input",
    "graph_output",
    "linear_rows",
    "unary",
    "bias_rows",
    "binary",
    "where_cond",
    "reduce_thread",
    "reduce_block",
    "relu_grad_sums",
    "softmax",
    "cross_entropy_grad",
    "class_total",
    "index_select",
    "index_add",
    "gather",
    "scatter_add",
    "im2col",
    "col2im",
    "max_pool",
    "max_pool_backward",
    "lstm_cell",
    "lstm_cell_backward",
    "sgd",
    "adam",
    "rmsprop",
];

/// The callers that kernels' error words name: a kernel that finds a bad index reports
/// caller `k - 1` of this list as code `k` (0 is no error). Callers are `'static` names, so
/// the list grows only to the program's set of them.
static ERROR_SOURCES: Mutex<Vec<Indices>> = Mutex::new(Vec::new());

/// The code that an indexing kernel reports a bad entry of `who`'s indices with (its `code`
/// argument).
pub(crate) fn error_code(who: Indices) -> u32 {
    let mut list = ERROR_SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    let k = list.iter().position(|&w| w == who).unwrap_or_else(|| {
        list.push(who);
        list.len() - 1
    });
    k as u32 + 1
}

/// The caller that error code `code` names, if a kernel was given it.
fn error_source(code: u32) -> Option<Indices> {
    let list = ERROR_SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    list.get((code as usize).checked_sub(1)?).copied()
}

/// Most values one `gather_values` launch takes (`VALUES_MAX` in kernels.cu).
pub(crate) const VALUES_MAX: usize = 64;

/// The addresses of the values one `gather_values` launch reads (`struct Values` in
/// kernels.cu, same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Values {
    pub(crate) src: [u64; VALUES_MAX],
    pub(crate) count: u64,
}

// The size kernels.cu asserts for its copy.
const _: () = assert!(std::mem::size_of::<Values>() == 520);

// SAFETY: plain old data with the C layout of `struct Values` in kernels.cu.
unsafe impl DeviceRepr for Values {}

/// Most axes a view may have, after merging axes that are contiguous with each other.
pub(crate) const MAX_DIMS: usize = 8;

/// A tensor view as kernels take it (`struct Strided` in `kernels.cu`, same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    pub(crate) rank: u32,
    pub(crate) contiguous: u32,
    pub(crate) offset: u64,
    pub(crate) dims: [u64; MAX_DIMS],
    pub(crate) strides: [i64; MAX_DIMS],
}

// SAFETY: plain old data with the C layout of `struct Strided` in kernels.cu.
unsafe impl DeviceRepr for Strided {}

impl Strided {
    /// The view `l`, its axes merged where memory allows (and size-1 axes dropped), so that
    /// kernels divide as little as possible; an error naming `op` past [`MAX_DIMS`] axes.
    pub(crate) fn of(l: &Layout, op: &'static str) -> Result<Strided> {
        let mut s = Strided {
            rank: 0,
            contiguous: u32::from(l.is_contiguous()),
            offset: l.offset() as u64,
            dims: [1; MAX_DIMS],
            strides: [0; MAX_DIMS],
        };
        if s.contiguous == 1 {
            return Ok(s);
        }
        // Merged straight into the struct's arrays: no allocation per kernel launch.
        let mut rank = 0usize;
        for (&size, &stride) in l.shape().iter().zip(l.strides()) {
            if size == 1 {
                continue;
            }
            let (size, stride) = (size as u64, stride as i64);
            // The previous axis steps over exactly this one: one longer axis.
            if rank > 0 && s.strides[rank - 1] == stride * size as i64 {
                s.dims[rank - 1] *= size;
                s.strides[rank - 1] = stride;
                continue;
            }
            if rank == MAX_DIMS {
                return Err(Error::invalid(
                    op,
                    format!("CUDA kernels read views of at most {MAX_DIMS} axes; this one has {:?}", l.shape()),
                ));
            }
            s.dims[rank] = size;
            s.strides[rank] = stride;
            rank += 1;
        }
        s.rank = rank as u32;
        Ok(s)
    }

    /// Sizes with strides of the caller's choosing (gather's index shape with the source's
    /// row-major strides); an error naming `op` past [`MAX_DIMS`] axes.
    pub(crate) fn shape_with_strides(shape: &[usize], strides: &[usize], op: &'static str) -> Result<Strided> {
        if shape.len() > MAX_DIMS {
            return Err(Error::invalid(op, format!("CUDA kernels take at most {MAX_DIMS} axes; got {shape:?}")));
        }
        let mut s =
            Strided { rank: shape.len() as u32, contiguous: 0, offset: 0, dims: [1; MAX_DIMS], strides: [0; MAX_DIMS] };
        for (d, (&size, &stride)) in shape.iter().zip(strides).enumerate() {
            s.dims[d] = size as u64;
            s.strides[d] = stride as i64;
        }
        Ok(s)
    }
}

/// The sizes of a window over a batch of images (`struct Conv` in `kernels.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conv {
    n: u64,
    c: u64,
    h: u64,
    w: u64,
    oh: u64,
    ow: u64,
    kh: u64,
    kw: u64,
    sh: u64,
    sw: u64,
    ph: u64,
    pw: u64,
    dh: u64,
    dw: u64,
}

// SAFETY: plain old data with the C layout of `struct Conv` in kernels.cu.
unsafe impl DeviceRepr for Conv {}

impl Conv {
    /// The kernels' view of `dims` and `win`.
    pub(crate) fn new(dims: crate::backend::ImageDims, win: &crate::backend::Window) -> Conv {
        let [n, c, h, w] = dims.input.map(|v| v as u64);
        let [oh, ow] = dims.output.map(|v| v as u64);
        let [kh, kw] = win.kernel.map(|v| v as u64);
        let [sh, sw] = win.stride.map(|v| v as u64);
        let [ph, pw] = win.padding.map(|v| v as u64);
        let [dh, dw] = win.dilation.map(|v| v as u64);
        Conv { n, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw }
    }
}

/// Most parameters one optimizer launch updates (`LIST_MAX` in kernels.cu).
pub(crate) const LIST_MAX: usize = 16;

/// Values per block of an optimizer launch (`LIST_CHUNK` in kernels.cu).
const LIST_CHUNK: u64 = 8192;

/// The parameters of one optimizer launch (`struct UpdateList` in kernels.cu, same layout):
/// parameter `t` takes blocks `start[t]..start[t + 1]`, one per [`LIST_CHUNK`] values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct UpdateList {
    pub(crate) count: u32,
    pub(crate) start: [u32; LIST_MAX + 1],
    pub(crate) n: [u64; LIST_MAX],
    pub(crate) w: [u64; LIST_MAX],
    g: [u64; LIST_MAX],
    s0: [u64; LIST_MAX],
    s1: [u64; LIST_MAX],
    pub(crate) staged: [u64; LIST_MAX],
    pub(crate) nums: [[f32; crate::backend::STAGED]; LIST_MAX],
}

// The size kernels.cu asserts for its copy (NVRTC compiles that assert in CI), and the
// places of its fields: no padding anywhere.
const _: () = assert!(std::mem::size_of::<UpdateList>() == 1032);
const _: () = assert!(std::mem::offset_of!(UpdateList, n) == 72 && std::mem::offset_of!(UpdateList, nums) == 840);

// SAFETY: plain old data with the C layout of `struct UpdateList` in kernels.cu.
unsafe impl DeviceRepr for UpdateList {}

/// One parameter of an [`UpdateList`]: device addresses of its values, its gradient, its
/// state buffers (0: a buffer the update does not use) and its staged numbers (0: none, the
/// kernel takes `nums`), and its number of values.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListEntry {
    pub(crate) n: u64,
    pub(crate) w: u64,
    pub(crate) g: u64,
    pub(crate) state: [u64; 2],
    pub(crate) staged: u64,
    pub(crate) nums: [f32; crate::backend::STAGED],
}

impl UpdateList {
    /// Adds `e` to the launch; `false` (and nothing added) when the list is full or its
    /// blocks would pass what one launch can have. A parameter without values takes no place.
    pub(crate) fn push(&mut self, e: ListEntry) -> bool {
        if e.n == 0 {
            return true;
        }
        let t = self.count as usize;
        let end = u64::from(self.start[t]) + e.n.div_ceil(LIST_CHUNK);
        if t == LIST_MAX || end > i32::MAX as u64 {
            return false;
        }
        self.start[t + 1] = end as u32;
        self.n[t] = e.n;
        (self.w[t], self.g[t], self.s0[t], self.s1[t]) = (e.w, e.g, e.state[0], e.state[1]);
        self.staged[t] = e.staged;
        self.nums[t] = e.nums;
        self.count += 1;
        true
    }

    /// True when no parameter was added (nothing to launch).
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The launch: a block of [`THREADS`] per chunk of every parameter.
    pub(crate) fn config(&self) -> LaunchConfig {
        let blocks = self.start[self.count as usize].max(1);
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }
}

/// Threads per block of the elementwise kernels.
const THREADS: u32 = 256;

/// A launch over `n` items: 256 threads a block, enough blocks for one item per thread up to
/// 2²⁰ blocks (the kernels' grid-stride loops cover the rest).
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Kernel `name`'s text in [`SOURCE`]: from the `extern "C" __global__` that declares it to
/// the next kernel's (so with the helpers that follow it; empty where no ` void name(` is).
pub(crate) fn kernel_text(name: &str) -> &'static str {
    const DECLARES: &str = "extern \"C\" __global__";
    let Some(at) = SOURCE.find(&format!(" void {name}(")) else { return "" };
    let start = SOURCE[..at].rfind(DECLARES).unwrap_or(at);
    let end = SOURCE[at..].find(DECLARES).map_or(SOURCE.len(), |e| at + e);
    &SOURCE[start..end]
}

/// What the host needs to know of a kernel, read once from [`SOURCE`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct KernelFacts {
    /// The largest block it is launched with: what its `__launch_bounds__` declares to the
    /// compiler (1024 for `reduce_block`), else [`THREADS`]. A GPU refuses a launch whose
    /// block needs more registers or shared memory than one multiprocessor has; a test
    /// checks each kernel's machine code against this size, and [`launch!`] refuses a larger
    /// block.
    pub(crate) largest_block: u32,
    /// Whether it can record a bad index in the GPU's error word (its parameters include
    /// `unsigned int* err`).
    pub(crate) reports_errors: bool,
}

/// The facts of `kernel` (those of a plain kernel that reports nothing, for a name that is
/// not one).
pub(crate) fn kernel_facts(kernel: &str) -> KernelFacts {
    static FACTS: OnceLock<HashMap<&'static str, KernelFacts>> = OnceLock::new();
    let facts = FACTS.get_or_init(|| {
        let read = |name: &str| {
            let text = kernel_text(name);
            let head = &text[..text.find(" void ").unwrap_or(0)];
            let bound = head.split_once("__launch_bounds__(").and_then(|(_, b)| b.split_once(')'));
            let params = &text[..text.find('{').unwrap_or(0)];
            KernelFacts {
                largest_block: bound.and_then(|(b, _)| b.trim().parse().ok()).unwrap_or(THREADS),
                reports_errors: params.contains("unsigned int* err"),
            }
        };
        KERNELS.iter().map(|&name| (name, read(name))).collect()
    });
    facts.get(kernel).copied().unwrap_or(KernelFacts { largest_block: THREADS, reports_errors: false })
}

/// A launch of one block per item for `items` items (up to 2²⁰ blocks), `threads` (a power
/// of two, at most 1024) a block.
pub(crate) fn blocks(items: usize, threads: u32) -> LaunchConfig {
    let blocks = items.clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// One GPU, ready to run the kernels.
pub(crate) struct Gpu {
    /// The device's number.
    pub(crate) ordinal: usize,
    ctx: Arc<CudaContext>,
    /// The one stream every kernel, copy and product runs on, in order.
    pub(crate) stream: Arc<CudaStream>,
    /// cuBLAS, on [`Gpu::stream`].
    pub(crate) blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    cache: Mutex<BlockCache<CudaSlice<u8>>>,
    /// The graph's step being recorded or captured, if any.
    capture: Mutex<Option<Capture>>,
    /// Held shared by each thread from its check of [`Gpu::capture`] until its work is queued
    /// ([`Gpu::claim`]), and exclusively while a recording or capture begins: work that passed
    /// its check is queued before a capture can begin, and none joins it after.
    gate: RwLock<()>,
    /// The workspace given to cuBLAS (so that it allocates nothing inside a capture).
    _blas_workspace: CudaSlice<u8>,
    /// Eight words: the error word (the caller's code, value bits and axis size of the first
    /// bad index a kernel saw), then the copy of it that `take_errors` hands to the host.
    /// (Kept for its address, `errors_ptr`: freed with the `Gpu`.)
    _errors: CudaSlice<u32>,
    /// The device address of the error word.
    pub(crate) errors_ptr: u64,
    /// Held by a check from its `take_errors` launch until it has read the words taken, so
    /// that another thread's take cannot overwrite them first; holds whether words were
    /// taken and not read (a copy that failed), to be read before any other take.
    taking: Mutex<bool>,
    /// Whether a kernel that can record a bad index ([`KernelFacts::reports_errors`]) was queued, or a
    /// graph holding one replayed, since [`Gpu::check_errors`] last looked: without one the
    /// error word is still clear, and taking it (the `take_errors` launch and a copy to the
    /// host, a few microseconds of a batch-1 inference's) is skipped. Set after the launch
    /// is queued, cleared before the take, so a check either takes what such a kernel
    /// recorded or leaves the flag to the next.
    unread_reports: AtomicBool,
    /// Whether the capture under way queued such a kernel (its graph's replays then set
    /// `unread_reports`).
    captured_reports: AtomicBool,
    /// The math mode cuBLAS was last given (TF32 allowed or not), locked across setting it
    /// and the product that needs it.
    pub(crate) blas_mode: Mutex<bool>,
    /// Kernel launches, cuBLAS products, graph replays and host copies queued so far.
    counts: [AtomicU64; 4],
    /// Whether the kernel profile is on ([`Gpu::set_profiling`]): read by every launch, so an
    /// atomic, not the profiler's lock.
    profiling: AtomicBool,
    /// The kernel profile's launches and totals.
    profiler: Mutex<Profiler>,
}

/// Clock cycles the `spin` kernel keeps the stream busy before a profiled launch: about 200 us
/// at an H100's or H200's 1.98 GHz, many times what the host takes to queue the launch and its
/// two events (so that a thread preempted meanwhile rarely leaves a gap in a launch's time).
const SPIN_CYCLES: u64 = 400_000;

/// A GPU's kernel profile: while it is on, each kernel launch and cuBLAS product queued outside a
/// graph's step is timed by two CUDA events, after a `spin` kernel that keeps the GPU busy
/// until both events and the launch are queued, so that the time is the GPU's alone. The
/// profiler's lock is held from the spin kernel to the second event, so that another
/// thread's work cannot come between them.
#[derive(Default)]
struct Profiler {
    /// Launches timed and not yet read: what was launched, and the events before and after.
    pending: Vec<(String, CudaEvent, CudaEvent)>,
    /// Launches and milliseconds so far, by what was launched.
    totals: HashMap<String, (u64, f64)>,
}

/// A launch being timed by the kernel profile: the profiler, locked until the event after the
/// launch is queued, and the event before it.
pub(crate) struct Timed<'a> {
    profiler: std::sync::MutexGuard<'a, Profiler>,
    start: CudaEvent,
}

/// Launches timed by the kernel profile since it was last read
/// ([`crate::backend::kernel_profile`]).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel and its grid and block (`"softmax (grid 128, block 32)"`), or the cuBLAS
    /// product and its sizes (`"sgemm [128 x 784] · [784 x 256]"`).
    pub what: String,
    /// How many times it was launched.
    pub launches: u64,
    /// Its time on the GPU in all, in seconds.
    pub seconds: f64,
}

/// What a GPU has queued since it was opened: each is one launch the host makes (launches,
/// not their time, bound the small networks' steps on a GPU). Work queued while a step is
/// captured into a CUDA graph counts too, once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LaunchCounts {
    /// Launches of the backend's own kernels.
    pub kernels: u64,
    /// cuBLAS matrix products (strided batched: one call for a whole batch).
    pub products: u64,
    /// Replays of captured graphs (each runs a whole step's kernels and products).
    pub graph_replays: u64,
    /// Copies between the host and the GPU, either way (a batch's upload, a value read, and
    /// the error word read with it where a kernel that can record a bad index ran since the
    /// last read).
    pub host_copies: u64,
}

/// Which of [`LaunchCounts`] a launch adds to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Launched {
    /// A kernel.
    Kernel = 0,
    /// A cuBLAS product.
    Product = 1,
    /// A graph replay.
    Replay = 2,
    /// A copy between the host and the GPU.
    HostCopy = 3,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{})", self.ordinal)
    }
}

/// A graph's step under way on a GPU: its pool, whether it is captured (`true`) or only
/// recorded, and the thread doing it. CUDA captures what any thread queues on the stream
/// while it captures, so other threads' work on the GPU is refused until it ends
/// ([`Gpu::claim`]).
#[derive(Clone)]
struct Capture {
    pool: Arc<Pool>,
    capturing: bool,
    thread: std::thread::ThreadId,
}

impl Capture {
    /// An error naming `op` unless the calling thread is the one recording or capturing.
    fn own(&self, gpu: &Gpu, op: &str) -> Result<()> {
        if self.thread == std::thread::current().id() {
            return Ok(());
        }
        let doing = if self.capturing { "capturing" } else { "recording" };
        Err(gpu.failure(
            op,
            format!("another thread is {doing} a CUDA graph's step on this GPU; its work would join the graph"),
        ))
    }
}

thread_local! {
    /// How many [`Claim`]s this thread holds: a nested one does not lock the gate again (a
    /// second shared lock can wait behind a waiting writer, and so deadlock).
    static CLAIMS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Leave to queue work on a GPU, from [`Gpu::claim`]: no other thread is recording or
/// capturing a graph's step there, and none begins to until this is dropped.
#[must_use = "the work must be queued while the claim is held"]
pub(crate) struct Claim<'g> {
    /// The gate, shared (none for a claim nested in another of this thread's).
    _gate: Option<RwLockReadGuard<'g, ()>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        CLAIMS.with(|c| c.set(c.get() - 1));
    }
}

/// The blocks of a CUDA graph's step (PyTorch's private pools). The step is first run
/// eagerly with the pool in place ("recorded"): every block it asks for becomes the pool's,
/// and freed ones are reused within it, so the pool ends up with the step's working set.
/// The capture then takes its blocks from the pool (topped up first to that working set), so
/// that it never needs the driver; the graph's kernels, replayed, keep writing those blocks,
/// so they go back to the GPU's cache only when the graph and every block are gone.
pub(crate) struct Pool {
    gpu: Arc<Gpu>,
    state: Mutex<PoolState<CudaSlice<u8>>>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // No graph reads these any more (it is dropped first, after the stream finished).
        let freed = self.state.get_mut().map(|p| p.free.drain_sized()).unwrap_or_default();
        if let Ok(mut cache) = self.gpu.cache.lock() {
            for (size, slice) in freed {
                cache.give_back(size, slice);
            }
        }
    }
}

/// A device buffer on loan from its GPU's cache (or from a graph's [`Pool`]); dropping it
/// gives it back there.
pub(crate) struct Block {
    gpu: Arc<Gpu>,
    pool: Option<Arc<Pool>>,
    slice: Option<CudaSlice<u8>>,
    size: usize,
    /// The buffer's device address.
    pub(crate) ptr: u64,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Block(cuda:{}, {} bytes)", self.gpu.ordinal, self.size)
    }
}

impl Block {
    /// The GPU the buffer is on.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(slice) = self.slice.take() {
            // Kernels that still read the block were queued before any that will write it
            // (one stream), so it can be handed out again at once (a graph's block, only
            // within its capture).
            let capturing = match &self.pool {
                Some(_) => None,
                // A block from before a capture, freed during it, may have been read by the
                // captured kernels: it joins the graph's pool rather than the cache.
                None => {
                    let capture = self.gpu.capture.lock().unwrap_or_else(|e| e.into_inner());
                    capture.as_ref().filter(|c| c.capturing).map(|c| c.pool.clone())
                }
            };
            match self.pool.as_ref().or(capturing.as_ref()) {
                Some(pool) => {
                    let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
                    if capturing.is_some() {
                        state.adopt(self.size);
                    }
                    state.free.give_back(self.size, slice);
                }
                None => {
                    if let Ok(mut cache) = self.gpu.cache.lock() {
                        cache.give_back(self.size, slice);
                    }
                }
            }
        }
    }
}

/// Each GPU opened, or the reason it could not be, by number.
type Registry = Mutex<HashMap<usize, std::result::Result<Arc<Gpu>, String>>>;

/// Every GPU this process has opened (or failed to open, with the reason), by number.
fn registry() -> &'static Registry {
    static GPUS: OnceLock<Registry> = OnceLock::new();
    GPUS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The GPU numbered `ordinal`, opened on first use; an error saying what is missing (driver
/// library, device, NVRTC, cuBLAS) when it cannot be used.
pub(crate) fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    let mut gpus = registry().lock().map_err(|_| Error::DeviceUnavailable {
        device: Device::Cuda(ordinal),
        reason: "a thread panicked while opening the GPU".into(),
    })?;
    gpus.entry(ordinal)
        .or_insert_with(|| Gpu::open(ordinal).map(Arc::new))
        .clone()
        .map_err(|reason| Error::DeviceUnavailable { device: Device::Cuda(ordinal), reason })
}

/// The GPU numbered `ordinal` if this process has opened it successfully (nothing is opened
/// here).
pub(crate) fn opened(ordinal: usize) -> Option<Arc<Gpu>> {
    registry().lock().ok()?.get(&ordinal)?.as_ref().ok().cloned()
}

/// How many CUDA devices the driver reports (0 without a driver library).
pub(crate) fn device_count() -> usize {
    // SAFETY: only looks for the library (dlopen); every other cudarc call would panic
    // without it.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// Whether NVRTC, the CUDA runtime compiler, can be loaded.
pub(crate) fn nvrtc_present() -> bool {
    // SAFETY: only looks for the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// [`SOURCE`] compiled to PTX for the virtual architecture `compute_{arch}` (90 for an
/// H100/H200), or the compiler's log.
pub(crate) fn compile(arch: u32) -> std::result::Result<Ptx, String> {
    if !nvrtc_present() {
        return Err("the CUDA runtime compiler (libnvrtc.so) was not found; install the CUDA toolkit, or \
             `pip install nvidia-cuda-nvrtc` and add its nvidia/cu13/lib folder to LD_LIBRARY_PATH"
            .into());
    }
    let opts =
        CompileOptions { options: nvrtc_options(arch), name: Some("sinapse_kernels.cu".into()), ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts).map_err(|e| format!("compiling the CUDA kernels: {e}"))
}

/// The options [`compile`] gives NVRTC for `compute_{arch}`.
fn nvrtc_options(arch: u32) -> Vec<String> {
    vec![format!("--gpu-architecture=compute_{arch}")]
}

/// NVRTC's version (major, minor), or why it is not known.
fn nvrtc_version() -> std::result::Result<(i32, i32), String> {
    if !nvrtc_present() {
        return Err("NVRTC was not found".into());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the call writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("asking NVRTC its version: {e}"))?;
    Ok((major, minor))
}

/// The kernels compiled for `compute_{arch}` and loaded into `ctx`: from the kernel cache
/// when an earlier process compiled this source with this NVRTC ([`KernelCache`]), else
/// compiled now and kept there for the next.
fn load_kernels(ctx: &Arc<CudaContext>, arch: u32) -> std::result::Result<Arc<CudaModule>, String> {
    let load = |ptx: Ptx| {
        ctx.load_module(ptx).map_err(|e| format!("loading the compiled kernels: {e} (is NVRTC newer than the driver?)"))
    };
    // The tests' emulated GPU keeps its kernels only where they say, not in the user's cache.
    #[cfg(unix)]
    let named_only = super::emulated::installed();
    #[cfg(not(unix))]
    let named_only = false;
    let kept = KernelCache::from_env(named_only)
        .and_then(|cache| Some(cache.path(SOURCE, &nvrtc_options(arch), arch, nvrtc_version().ok()?)));
    if let Some(text) = kept.as_deref().and_then(|path| KernelCache::load(path, KERNELS)) {
        // One the driver refuses is compiled again, and replaced.
        if let Ok(module) = load(Ptx::from_src(text)) {
            return Ok(module);
        }
    }
    let ptx = compile(arch)?;
    if let (Some(path), Some(bytes)) = (&kept, ptx.as_bytes()) {
        if let Ok(text) = std::str::from_utf8(bytes) {
            // Not kept only costs the next process the compile.
            let _ = KernelCache::store(path, text.trim_end_matches('\0'));
        }
    }
    load(ptx)
}

impl Gpu {
    fn open(ordinal: usize) -> std::result::Result<Gpu, String> {
        // SAFETY: only looks for the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("the NVIDIA driver library (libcuda.so) was not found; is an NVIDIA driver installed?".into());
        }
        let count = CudaContext::device_count().map_err(|e| format!("the CUDA driver did not start: {e}"))?;
        let count = count.max(0) as usize;
        if ordinal >= count {
            return Err(match count {
                0 => "the driver sees no NVIDIA GPU".to_string(),
                n => format!("there is no GPU {ordinal}: this machine has {n} (cuda:0 to cuda:{})", n - 1),
            });
        }
        // SAFETY: only looks for the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err("cuBLAS (libcublas.so) was not found; install the CUDA toolkit's libraries".into());
        }
        fn driver(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String + '_ {
            move |e| format!("{what}: {e}")
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating a context"))?;
        // One stream, in order: the per-buffer events cudarc records for multi-stream use
        // would only cost two events per allocation (and break graph capture).
        // SAFETY: no buffer exists yet; every later one lives on the one stream below.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver("reading the compute capability"))?;
        let module = load_kernels(&ctx, (major * 10 + minor) as u32)?;
        let mut functions = HashMap::new();
        for &name in KERNELS {
            let f = module.load_function(name).map_err(driver(&format!("loading kernel {name}")))?;
            functions.insert(name, f);
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("starting cuBLAS: {e}"))?;
        // A workspace of cuBLAS's own for the life of the process, as PyTorch gives it: left to
        // itself, cuBLAS may allocate one inside a graph capture. 32 MiB is NVIDIA's advice for
        // Hopper (4 MiB before it).
        let workspace_bytes = if major >= 9 { 32 << 20 } else { 4 << 20 };
        // SAFETY: only cuBLAS writes the workspace, on the stream it was allocated on.
        let blas_workspace =
            unsafe { stream.alloc::<u8>(workspace_bytes) }.map_err(driver("allocating cuBLAS's workspace"))?;
        // SAFETY: the handle is alive; the workspace lives as long as the `Gpu` that holds both.
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                blas_workspace.device_ptr(&stream).0 as *mut std::ffi::c_void,
                workspace_bytes,
            )
        }
        .result()
        .map_err(|e| format!("giving cuBLAS its workspace: {e}"))?;
        let errors = stream.alloc_zeros::<u32>(8).map_err(driver("allocating the error word"))?;
        let errors_ptr = errors.device_ptr(&stream).0;
        Ok(Gpu {
            ordinal,
            ctx,
            stream,
            blas,
            functions,
            cache: Mutex::new(BlockCache::default()),
            capture: Mutex::new(None),
            gate: RwLock::new(()),
            _blas_workspace: blas_workspace,
            _errors: errors,
            errors_ptr,
            taking: Mutex::new(false),
            unread_reports: AtomicBool::new(false),
            captured_reports: AtomicBool::new(false),
            blas_mode: Mutex::new(false),
            counts: Default::default(),
            profiling: AtomicBool::new(false),
            profiler: Mutex::new(Profiler::default()),
        })
    }

    /// Turns the kernel profile on or off (see [`Profiler`]); turning it off keeps what was
    /// timed, for [`Gpu::kernel_profile`].
    pub(crate) fn set_profiling(&self, on: bool) {
        self.profiling.store(on, Ordering::Relaxed);
    }

    /// Before a launch: where the profile is on and no graph's step is being recorded or
    /// captured, queues the `spin` kernel and then an event, and returns them with the
    /// profiler's lock for [`Gpu::profile_end`] (other threads' launches wait meanwhile);
    /// else `None`.
    pub(crate) fn profile_start(&self) -> Result<Option<Timed<'_>>> {
        if !self.profiling.load(Ordering::Relaxed) || self.capture.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(None);
        }
        let profiler = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        use cudarc::driver::PushKernelArg as _;
        let cycles = SPIN_CYCLES;
        let mut builder = self.stream.launch_builder(self.function("spin")?);
        builder.arg(&cycles);
        // SAFETY: `spin` takes one u64 and touches no memory; one thread.
        unsafe { builder.launch(blocks(1, 1)) }.map_err(|e| self.failure("spin", e))?;
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream.record_event(timing).map_err(|e| self.failure("the kernel profile", e))?;
        Ok(Some(Timed { profiler, start }))
    }

    /// After a launch that [`Gpu::profile_start`] timed: queues the event after it and keeps
    /// both under `what`; the events are read (the stream waited for) every 4,096 launches,
    /// and by [`Gpu::kernel_profile`].
    pub(crate) fn profile_end(&self, timed: Option<Timed<'_>>, what: impl FnOnce() -> String) -> Result<()> {
        let Some(Timed { mut profiler, start }) = timed else { return Ok(()) };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let end = self.stream.record_event(timing).map_err(|e| self.failure("the kernel profile", e))?;
        profiler.pending.push((what(), start, end));
        if profiler.pending.len() >= 4096 {
            self.read_profile(&mut profiler)?;
        }
        Ok(())
    }

    /// Waits for the timed launches and adds their times to the totals (all that can be
    /// read; the first error after them).
    fn read_profile(&self, profiler: &mut Profiler) -> Result<()> {
        let mut first_error = None;
        for (what, start, end) in std::mem::take(&mut profiler.pending) {
            match start.elapsed_ms(&end) {
                Ok(ms) => {
                    let total = profiler.totals.entry(what).or_default();
                    total.0 += 1;
                    total.1 += f64::from(ms);
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| self.failure("the kernel profile", e));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What the kernel profile timed since it was last read, the longest in all first; the
    /// profile starts again from nothing.
    pub(crate) fn kernel_profile(&self) -> Result<Vec<KernelTime>> {
        self.refuse_in_capture("reading the kernel profile")?;
        let mut profiler = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        self.read_profile(&mut profiler)?;
        let mut times: Vec<KernelTime> = std::mem::take(&mut profiler.totals)
            .into_iter()
            .map(|(what, (launches, ms))| KernelTime { what, launches, seconds: ms / 1e3 })
            .collect();
        times.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then_with(|| a.what.cmp(&b.what)));
        Ok(times)
    }

    /// The device.
    pub(crate) fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    /// Makes this GPU's context the calling thread's, for the raw driver and cuBLAS calls
    /// (cudarc's own calls do it themselves).
    /// The claim returned ([`Gpu::claim`]) is to be held until the call is queued.
    pub(crate) fn bind(&self, op: &str) -> Result<Claim<'_>> {
        let claim = self.claim(op)?;
        self.ctx.bind_to_thread().map_err(|e| self.failure(op, e))?;
        Ok(claim)
    }

    /// Gives cuBLAS the math mode [`crate::backend::tf32`] asks for, when it changed; `mode`
    /// is the held lock on [`Gpu::blas_mode`], kept by the caller until its product is queued.
    pub(crate) fn apply_math_mode(&self, mode: &mut bool) -> Result<()> {
        use cudarc::cublas::sys::cublasMath_t;
        let want = crate::backend::tf32();
        if *mode == want {
            return Ok(());
        }
        let math = if want { cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH } else { cublasMath_t::CUBLAS_DEFAULT_MATH };
        // SAFETY: the handle is this GPU's, alive as long as it is; the caller holds the lock
        // that every product on it takes.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.blas.handle(), math) }
            .result()
            .map_err(|e| self.failure("setting cuBLAS's math mode", e))?;
        *mode = want;
        Ok(())
    }

    /// A compiled kernel.
    pub(crate) fn function(&self, name: &'static str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| self.failure(name, format!("no kernel named {name}")))
    }

    /// A driver or library failure while running `op`.
    pub(crate) fn failure(&self, op: &str, e: impl std::fmt::Display) -> Error {
        Error::DeviceFailure { device: self.device(), op: op.to_string(), msg: e.to_string() }
    }

    /// A buffer of `elems` f32 values (contents undefined), from the cache when it holds one
    /// of the size, else from the driver; when the driver is out of memory, the cache is
    /// emptied and the request tried once more, then refused naming `what`, the bytes asked
    /// for and the bytes free.
    pub(crate) fn alloc(self: &Arc<Self>, elems: usize, what: &str) -> Result<Block> {
        let bytes = elems.checked_mul(4).ok_or_else(|| {
            Error::invalid("allocation", format!("{what}: {elems} values overflow the address space"))
        })?;
        let size = rounded(bytes);
        let _claim = self.claim(what)?;
        let block = if let Some(c) = self.capture.lock().ok().and_then(|c| c.clone()) {
            self.alloc_in_pool(c.pool, c.capturing, size, what)?
        } else {
            let slice = self.alloc_from_cache(size, what)?;
            let ptr = slice.device_ptr(&self.stream).0;
            Block { gpu: self.clone(), pool: None, slice: Some(slice), size, ptr }
        };
        // The emulated GPU of the tests checks that nothing writes past the tensor's end.
        #[cfg(unix)]
        super::emulated::in_use(block.ptr, bytes);
        Ok(block)
    }

    /// A block of `size` bytes (already [`rounded`]) from the cache, else from the driver
    /// (emptying the cache and trying once more when the driver is out of memory).
    fn alloc_from_cache(&self, size: usize, what: &str) -> Result<CudaSlice<u8>> {
        let cached = self.cache.lock().map_err(|_| self.failure(what, "the block cache was poisoned"))?.take(size);
        let slice = match cached {
            Some(s) => s,
            None => {
                // SAFETY: the contents are undefined until a kernel or copy writes them, as
                // every caller does before reading.
                let first = unsafe { self.stream.alloc::<u8>(size) };
                let slice = match first {
                    Ok(s) => s,
                    Err(_) => {
                        let freed = self.cache.lock().map(|mut c| c.drain()).unwrap_or_default();
                        drop(freed);
                        self.stream.synchronize().map_err(|e| self.failure(what, e))?;
                        // SAFETY: as above.
                        unsafe { self.stream.alloc::<u8>(size) }.map_err(|_| Error::OutOfMemory {
                            what: what.to_string(),
                            device: self.device(),
                            bytes: size as u64,
                            available: self.ctx.mem_get_info().map_or(0, |(free, _)| free as u64),
                        })?
                    }
                };
                if let Ok(mut c) = self.cache.lock() {
                    c.allocated(size);
                }
                slice
            }
        };
        Ok(slice)
    }

    /// A block of the graph's pool: one it has free, else (recording) one from the cache or
    /// the driver, or (capturing) one from the cache. A capture does not call the driver (an
    /// allocation would become part of the graph): a miss is an error that ends it, and the
    /// size is added to what the next capture starts with.
    fn alloc_in_pool(self: &Arc<Self>, pool: Arc<Pool>, capturing: bool, size: usize, what: &str) -> Result<Block> {
        let poisoned = || self.failure(what, "the graph's pool was poisoned");
        let own = pool.state.lock().map_err(|_| poisoned())?.free.take(size);
        let slice = match own {
            Some(s) => s,
            None if capturing => {
                let cached =
                    self.cache.lock().map_err(|_| self.failure(what, "the block cache was poisoned"))?.take(size);
                let mut state = pool.state.lock().map_err(|_| poisoned())?;
                let Some(s) = cached else {
                    state.missed(size);
                    return Err(self.failure(
                        what,
                        format!("a captured step asked for a {size}-byte buffer its pool lacked; the next capture has one more"),
                    ));
                };
                state.adopt(size);
                s
            }
            None => {
                let s = self.alloc_from_cache(size, what)?;
                pool.state.lock().map_err(|_| poisoned())?.adopt(size);
                s
            }
        };
        let ptr = slice.device_ptr(&self.stream).0;
        Ok(Block { gpu: self.clone(), pool: Some(pool), slice: Some(slice), size, ptr })
    }

    /// Whether a CUDA graph capture is under way on this GPU's stream.
    pub(crate) fn is_capturing(&self) -> bool {
        self.capture.lock().is_ok_and(|c| c.as_ref().is_some_and(|c| c.capturing))
    }

    /// Leave to queue work named `op` now, to be held until it is queued; an error when
    /// another thread is recording or capturing a graph's step on this GPU (the work would
    /// join that step: every call queues on the one stream).
    pub(crate) fn claim(&self, op: &str) -> Result<Claim<'_>> {
        let outer = CLAIMS.with(|c| c.replace(c.get() + 1)) == 0;
        let claim = Claim { _gate: outer.then(|| self.gate.read().unwrap_or_else(|e| e.into_inner())) };
        if let Some(c) = self.capture.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            c.own(self, op)?;
        }
        Ok(claim)
    }

    /// Waits until no thread holds a claim on this GPU and keeps others from taking one, while
    /// a recording or capture begins (an error from within a claim: it would wait for itself).
    fn exclusive(&self, op: &str) -> Result<std::sync::RwLockWriteGuard<'_, ()>> {
        if CLAIMS.with(|c| c.get()) > 0 {
            return Err(self.failure(op, "a graph's step cannot begin inside a queued operation"));
        }
        Ok(self.gate.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// An error naming `op` when a capture is under way: host copies and waits cannot be part
    /// of a graph.
    /// (While a step is recorded for a later capture, the first such `op` is noted instead:
    /// that step cannot be captured.)
    pub(crate) fn refuse_in_capture(&self, op: &str) -> Result<()> {
        let capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        match capture.as_ref() {
            Some(c) if c.capturing => {
                c.own(self, op)?;
                Err(self.failure(
                    op,
                    "a captured step (CUDA graph) cannot copy values between the host and the GPU or wait for it",
                ))
            }
            Some(c) => {
                c.own(self, op)?;
                let mut state = c.pool.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.host_op.is_none() {
                    state.host_op = Some(op.to_string());
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Whether a graph's pool is in place (a step recorded or captured).
    pub(crate) fn has_pool(&self) -> bool {
        self.capture.lock().is_ok_and(|c| c.is_some())
    }

    /// Puts a new pool in place for the eager run of a step to be captured later (see
    /// [`Pool`]); [`Gpu::end_recording`] takes it away.
    pub(crate) fn begin_recording(self: &Arc<Self>) -> Result<Arc<Pool>> {
        let _gate = self.exclusive("graph recording")?;
        let mut capture = self.capture.lock().map_err(|_| self.failure("capture", "the capture lock was poisoned"))?;
        if capture.is_some() {
            return Err(self.failure("graph recording", "a graph's step is already being recorded or captured"));
        }
        let pool = Arc::new(Pool { gpu: self.clone(), state: Mutex::new(PoolState::default()) });
        *capture = Some(Capture { pool: pool.clone(), capturing: false, thread: std::thread::current().id() });
        Ok(pool)
    }

    /// Ends the recording: the step's working set (every block the pool owns) is what a
    /// capture starts with. Returns the first host copy or wait the step made, if any (then
    /// it cannot be captured).
    pub(crate) fn end_recording(&self) -> Result<Option<String>> {
        let pool = self.take_pool("graph recording")?;
        let mut state = pool.state.lock().unwrap_or_else(|e| e.into_inner());
        state.end_recording();
        Ok(state.host_op.take())
    }

    /// Takes the pool of the step being recorded or captured out of place (an error naming
    /// `op` when there is none).
    fn take_pool(&self, op: &str) -> Result<Arc<Pool>> {
        let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = capture.as_ref() {
            // Another thread's step is left to it.
            c.own(self, op)?;
        }
        capture.take().map(|c| c.pool).ok_or_else(|| self.failure(op, "no graph's step is being recorded or captured"))
    }

    /// Ends a recording or capture of `pool`'s step that this thread left open (the step
    /// unwound): the capture is closed and its graph thrown away. Nothing otherwise.
    pub(crate) fn abandon(&self, pool: &Arc<Pool>) {
        let mut capture = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        let ours =
            capture.as_ref().is_some_and(|c| Arc::ptr_eq(&c.pool, pool) && c.thread == std::thread::current().id());
        if let (true, Some(c)) = (ours, capture.take()) {
            if c.capturing {
                drop(self.close_capture());
            }
        }
    }

    /// Ends the stream's capture: its graph, instantiated (`None` when nothing was captured).
    /// cudarc reports an error a drop saved earlier before it ends the capture (and clears
    /// it), so on an error the stream may still be capturing: it is then closed again and
    /// its graph thrown away, or every later call on the GPU would be captured or refused.
    fn close_capture(&self) -> std::result::Result<Option<cudarc::driver::CudaGraph>, cudarc::driver::DriverError> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureStatus};
        let ended = self.stream.end_capture(CUgraphInstantiate_flags(0));
        if ended.is_err() {
            let open = self.stream.capture_status();
            if open.is_ok_and(|s| s != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) {
                drop(self.stream.end_capture(CUgraphInstantiate_flags(0)));
            }
        }
        ended
    }

    /// Tops `pool` up to the blocks a capture needs free (from the cache or the driver), then
    /// starts recording everything queued on the stream into a graph, blocks handed out from
    /// `pool`.
    pub(crate) fn begin_capture(self: &Arc<Self>, pool: &Arc<Pool>) -> Result<()> {
        let _gate = self.exclusive("capture")?;
        let mut capture = self.capture.lock().map_err(|_| self.failure("capture", "the capture lock was poisoned"))?;
        if capture.is_some() {
            return Err(self.failure("capture", "a graph's step is already being recorded or captured"));
        }
        {
            let mut state = pool.state.lock().map_err(|_| self.failure("capture", "the pool was poisoned"))?;
            for (size, count) in state.shortfall() {
                for _ in 0..count {
                    let slice = self.alloc_from_cache(size, "a graph's pool")?;
                    state.adopt(size);
                    state.free.give_back(size, slice);
                }
            }
        }
        use cudarc::driver::sys::CUstreamCaptureMode;
        self.captured_reports.store(false, Ordering::SeqCst);
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| self.failure("beginning a graph capture", e))?;
        *capture = Some(Capture { pool: pool.clone(), capturing: true, thread: std::thread::current().id() });
        Ok(())
    }

    /// Ends the capture: with `keep`, the graph, instantiated and uploaded; without, or when
    /// the capture failed, an error (the pool stays the caller's, for another try).
    pub(crate) fn end_capture(self: &Arc<Self>, keep: bool) -> Result<CapturedGraph> {
        // Held until the upload is queued: no other thread's capture begins before it.
        let _claim = self.claim("graph capture")?;
        let pool = self.take_pool("graph capture")?;
        let reports = self.captured_reports.swap(false, Ordering::SeqCst);
        let graph = match self.close_capture() {
            Ok(Some(graph)) if keep => graph,
            Ok(_) => return Err(self.failure("graph capture", "the capture was abandoned")),
            Err(e) => return Err(self.failure("ending a graph capture", e)),
        };
        // Prepares the graph on the device now rather than at its first launch.
        graph.upload().map_err(|e| self.failure("uploading a graph", e))?;
        Ok(CapturedGraph { graph, _pool: pool, gpu: self.clone(), reports })
    }

    /// Bytes free on the device now, counting the blocks the cache keeps for reuse.
    pub(crate) fn available_memory(&self) -> Option<u64> {
        let free = self.ctx.mem_get_info().ok()?.0 as u64;
        Some(free + self.memory_stats().cached)
    }

    /// Counts one launch of `what`.
    pub(crate) fn launched(&self, what: Launched) {
        self.counts[what as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The launches counted so far.
    pub(crate) fn launch_counts(&self) -> LaunchCounts {
        let [kernels, products, graph_replays, host_copies] = self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        LaunchCounts { kernels, products, graph_replays, host_copies }
    }

    /// The block cache's counters.
    pub(crate) fn memory_stats(&self) -> MemoryStats {
        self.cache.lock().map(|c| c.stats()).unwrap_or_default()
    }

    /// After a kernel is queued: notes it where it can record a bad index (`reports`).
    pub(crate) fn queued(&self, reports: bool) {
        if reports {
            self.unread_reports.store(true, Ordering::SeqCst);
            self.captured_reports.store(true, Ordering::SeqCst);
        }
    }

    /// Reports the first bad index a kernel recorded since the last check (and clears it),
    /// after waiting for the stream; nothing (and no wait) where no kernel that can record
    /// one was queued since.
    pub(crate) fn check_errors(&self) -> Result<()> {
        self.refuse_in_capture("reading the error word")?;
        if !self.unread_reports.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        let words = self.take_error_word().inspect_err(|_| {
            // Not read: the next check reads what was taken, or takes the word.
            self.unread_reports.store(true, Ordering::SeqCst);
        })?;
        if words[0] == 0 {
            return Ok(());
        }
        let who = error_source(words[0]).unwrap_or(Indices::Positions("an indexing kernel"));
        let size = u64::from(words[2]) | (u64::from(words[3]) << 32);
        Err(who.error(f64::from(f32::from_bits(words[1])), size as usize))
    }
}

/// A captured graph with the pool of blocks it reads and writes (dropped in this order,
/// after the stream has finished: the graph, then the pool).
pub(crate) struct CapturedGraph {
    graph: cudarc::driver::CudaGraph,
    _pool: Arc<Pool>,
    gpu: Arc<Gpu>,
    /// Whether the graph holds a kernel that can record a bad index.
    reports: bool,
}

impl std::fmt::Debug for CapturedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CapturedGraph(cuda:{})", self.gpu.ordinal)
    }
}

impl CapturedGraph {
    /// Queues one run of the graph on the GPU's stream.
    pub(crate) fn replay(&self) -> Result<()> {
        let _claim = self.gpu.claim("graph replay")?;
        self.graph.launch().map_err(|e| self.gpu.failure("graph replay", e))?;
        self.gpu.launched(Launched::Replay);
        if self.reports {
            self.gpu.unread_reports.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Drop for CapturedGraph {
    fn drop(&mut self) {
        // The pool's blocks go back to the cache only after the last replay has finished (the
        // fields are dropped after this, in their order). Not while another step is being
        // captured, which a wait would break: the one stream orders any later use of those
        // blocks after the replay anyway.
        // (A claim keeps another thread's capture from beginning between the check and the wait.)
        if let Ok(_claim) = self.gpu.claim("dropping a graph") {
            if !self.gpu.is_capturing() {
                let _ = self.gpu.stream.synchronize();
            }
        }
    }
}

/// Launches kernel `$name` of `$gpu` with `$cfg` and the arguments (places, not
/// temporaries: the launch reads them through references).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        use cudarc::driver::PushKernelArg as _;
        let gpu: &$crate::backend::cuda::gpu::Gpu = &$gpu;
        // Held until the launch is queued (see `Gpu::claim`).
        let _claim = gpu.claim($name)?;
        let function = gpu.function($name)?;
        let config: cudarc::driver::LaunchConfig = $cfg;
        let facts = $crate::backend::cuda::gpu::kernel_facts($name);
        let most = facts.largest_block;
        let (x, y, z) = config.block_dim;
        if u64::from(x) * u64::from(y) * u64::from(z) > u64::from(most) {
            return Err(gpu.failure($name, format!(
                "a block of {:?} threads, more than the {most} its machine code was checked for",
                config.block_dim
            )));
        }
        // Where the kernel profile is on, a spin kernel and an event first.
        let timed = gpu.profile_start()?;
        let mut builder = gpu.stream.launch_builder(function);
        $( builder.arg(&$arg); )*
        // SAFETY: the arguments match the kernel's parameters in kernels.cu in number, order
        // and type (u64 device addresses for pointers, the #[repr(C)] structs for theirs); each
        // buffer holds every element its `Strided` view, its strides (`matrix_view`) or its
        // size reaches (the views come from layouts checked against their storages; outputs
        // are allocated for the sizes passed).
        unsafe { builder.launch(config) }.map_err(|e| gpu.failure($name, e))?;
        gpu.launched($crate::backend::cuda::gpu::Launched::Kernel);
        gpu.queued(facts.reports_errors);
        gpu.profile_end(timed, || format!("{} (grid {}, block {})", $name, config.grid_dim.0, config.block_dim.0))?;
        Ok::<(), $crate::Error>(())
    }};
}
pub(crate) use launch;

/// A copy kernel's node in a captured graph (`graph_input` or `graph_output` in kernels.cu),
/// whose source and destination a replay names anew: the graph's copy of its input in, or of
/// its output out.
pub(crate) struct CopyNode {
    /// The node in the captured graph (the instantiated graph knows it by this handle).
    node: cudarc::driver::sys::CUgraphNode,
    /// Its launch as captured (function, grid, block), for the new arguments.
    launch: cudarc::driver::sys::CUDA_KERNEL_NODE_PARAMS,
    /// Values copied.
    count: u64,
}

// SAFETY: the handles are the driver's, used only under the GPU's claim with its context
// bound, for as long as the graph they belong to (which holds no thread-local state).
unsafe impl Send for CopyNode {}
// SAFETY: as above; through `&self` the handles are only passed to the driver.
unsafe impl Sync for CopyNode {}

impl std::fmt::Debug for CopyNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CopyNode({} values)", self.count)
    }
}

impl Gpu {
    /// Queues `name` (`graph_input` or `graph_output`): `n` values from `src` to `dst`, a copy
    /// whose addresses a replay of the graph capturing it renames ([`CapturedGraph::copy_node`]).
    pub(crate) fn graph_copy(&self, name: &'static str, src: u64, dst: u64, n: usize) -> Result<()> {
        let count = n as u64;
        launch!(self, name, grid(n); src, dst, count)
    }
}

impl CapturedGraph {
    /// The one node of this graph that launches copy kernel `name` (`graph_input` or
    /// `graph_output`, queued by [`Gpu::graph_copy`] over `count` values during the capture),
    /// for [`CapturedGraph::set_copies`]; an error when the graph holds none or more than one.
    pub(crate) fn copy_node(&self, name: &'static str, count: usize) -> Result<CopyNode> {
        use cudarc::driver::sys;
        let what = "finding a graph's input and output copies";
        let _claim = self.gpu.bind(what)?;
        let function = self.gpu.function(name)?.cu_function();
        let graph = self.graph.cu_graph();
        let mut listed = 0usize;
        // SAFETY: `graph` is the captured graph this value owns; a null array asks for the count.
        unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut listed) }
            .result()
            .map_err(|e| self.gpu.failure(what, e))?;
        let mut nodes: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); listed];
        // SAFETY: `nodes` has room for the `listed` handles asked for.
        unsafe { sys::cuGraphGetNodes(graph, nodes.as_mut_ptr(), &mut listed) }
            .result()
            .map_err(|e| self.gpu.failure(what, e))?;
        nodes.truncate(listed);
        let mut found = Vec::new();
        for node in nodes.into_iter().filter(|n| !n.is_null()) {
            // Read as a plain number: a newer driver may name a type this build's enum lacks.
            let mut kind: u32 = u32::MAX;
            // SAFETY: `node` is a node of `graph`, just listed; the driver writes one C enum
            // (an unsigned int) at the address.
            unsafe { sys::cuGraphNodeGetType(node, (&raw mut kind).cast()) }
                .result()
                .map_err(|e| self.gpu.failure(what, e))?;
            if kind != sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL as u32 {
                continue;
            }
            // SAFETY: all-zero is a valid value of this plain C struct (null handles and
            // pointers), which the driver fills in.
            let mut launch: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
            // SAFETY: `node` is a kernel node of `graph`.
            unsafe { sys::cuGraphKernelNodeGetParams_v2(node, &mut launch) }
                .result()
                .map_err(|e| self.gpu.failure(what, e))?;
            if launch.func == function {
                found.push((node, launch));
            }
        }
        match found.as_slice() {
            [(node, launch)] => {
                let launch = sys::CUDA_KERNEL_NODE_PARAMS {
                    kernelParams: std::ptr::null_mut(),
                    extra: std::ptr::null_mut(),
                    ..*launch
                };
                Ok(CopyNode { node: *node, launch, count: count as u64 })
            }
            _ => Err(self.gpu.failure(what, format!("the graph launches {name} {} times, not once", found.len()))),
        }
    }

    /// Makes the graph's later replays copy from `src` to `dst` at each `node` (of this
    /// graph), each holding the node's count of values, under one claim. Replays queued
    /// before are not changed (the driver's rule for an instantiated graph's kernel arguments).
    pub(crate) fn set_copies(&self, copies: &[(&CopyNode, u64, u64)]) -> Result<()> {
        use cudarc::driver::sys;
        const WHAT: &str = "naming a graph's input and output";
        self.gpu.refuse_in_capture(WHAT)?;
        let _claim = self.gpu.bind(WHAT)?;
        for &(node, src, dst) in copies {
            let (mut src, mut dst, mut count) = (src, dst, node.count);
            let mut args: [*mut std::ffi::c_void; 3] =
                [(&raw mut src).cast(), (&raw mut dst).cast(), (&raw mut count).cast()];
            let launch = sys::CUDA_KERNEL_NODE_PARAMS { kernelParams: args.as_mut_ptr(), ..node.launch };
            // SAFETY: `node` is a kernel node of the graph `exec` was instantiated from,
            // launching a copy kernel of three u64 arguments, given here by address (read
            // during the call); the caller's buffers hold `count` values at `src` and `dst`.
            unsafe { sys::cuGraphExecKernelNodeSetParams_v2(self.graph.cu_graph_exec(), node.node, &launch) }
                .result()
                .map_err(|e| self.gpu.failure(WHAT, e))?;
        }
        Ok(())
    }
}

impl Gpu {
    /// The error word once the stream has finished, taken (read and cleared) by one kernel,
    /// `take_errors`: a bad index recorded by a kernel another thread queues meanwhile is
    /// either in what is read or left for the next check, never cleared unread. Under one
    /// claim, so that no capture begins between the launch and the read, which would join its
    /// graph, and holding [`Gpu::taking`] until the words are read. Words taken by an earlier
    /// check that failed to read them are read first, without a take (and the flag is set
    /// again, so that the next check takes what was recorded since).
    fn take_error_word(&self) -> Result<[u32; 4]> {
        let _claim = self.bind("reading the error word")?;
        let mut unread = self.taking.lock().unwrap_or_else(|e| e.into_inner());
        let (word, taken) = (self.errors_ptr, self.errors_ptr + 16);
        let retry = *unread;
        if retry {
            self.unread_reports.store(true, Ordering::SeqCst);
        } else {
            launch!(self, "take_errors", blocks(1, 4); word, taken)?;
            *unread = true;
        }
        let mut words = [0u32; 4];
        // SAFETY: `words` holds the four words at `taken`, in the buffer this struct owns; the
        // copy is queued after the kernel that writes them, and the stream is synchronised
        // before `words` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut words, taken, self.stream.cu_stream()) }
            .map_err(|e| self.failure("reading the error word", e))?;
        self.launched(Launched::HostCopy);
        self.stream.synchronize().map_err(|e| self.failure("reading the error word", e))?;
        *unread = false;
        Ok(words)
    }
}
