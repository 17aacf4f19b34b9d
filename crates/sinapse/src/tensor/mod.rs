//! The [`Tensor`]: an n-dimensional array of `f32` that remembers how it was made.
//!
//! A `Tensor` is a cheap handle (an `Arc`): cloning it copies no data. It holds
//! - a shared *storage* (the numbers, on a [`Device`]),
//! - a [`Layout`] (shape, strides, offset) saying which numbers of the storage it shows,
//! - and, when it was computed from other tensors that need gradients, the *node* of the
//!   autograd graph: which op made it, from which inputs, and how to send a gradient back.
//!
//! Views ([`Tensor::transpose`], [`Tensor::narrow`], [`Tensor::broadcast_to`], ...) share the
//! storage of their source. Operations are methods on `Tensor`; each lives in a file of
//! [`crate::ops`] next to its gradient rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use crate::autograd::{self, GradFn, Node};
use crate::backend::{DType, OptimizerUpdate, StepItem, Storage};
use crate::layout::{checked_elem_count, Layout};
use crate::random::Rng;
use crate::{Device, Error, Result};

/// A unique number per tensor handle, used as the key of gradients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn next() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        TensorId(COUNTER.fetch_add(1, Ordering::Relaxed))
    }
}

/// A storage and its version: the count of in-place writes to it (optimizer steps,
/// `copy_from`). A recorded op remembers the versions of what it read, so that `backward()`
/// can tell when a value it needs was changed since (as PyTorch's version counter).
pub(crate) struct StorageCell {
    data: RwLock<Storage>,
    version: AtomicU64,
}

impl StorageCell {
    fn new(storage: Storage) -> Arc<StorageCell> {
        Arc::new(StorageCell { data: RwLock::new(storage), version: AtomicU64::new(0) })
    }
}

struct TensorInner {
    id: TensorId,
    storage: Arc<StorageCell>,
    layout: Layout,
    requires_grad: bool,
    node: Option<Node>,
}

/// An n-dimensional array of `f32` with reverse-mode automatic differentiation.
///
/// ```
/// use sinapse::Tensor;
/// let x = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3])?.set_requires_grad(true);
/// let y = x.mul(&x)?.sum_all()?; // y = x1² + x2² + x3²
/// let grads = y.backward()?;
/// assert_eq!(grads.get(&x).unwrap().to_vec(), vec![2.0, 4.0, 6.0]); // dy/dx = 2x
/// # Ok::<(), sinapse::Error>(())
/// ```
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor(shape={:?}, ", self.shape())?;
        if self.device() != Device::Cpu {
            write!(f, "device={}, ", self.device())?;
        }
        let n = self.elem_count();
        // Only what is shown is read: all of a small tensor, four elements of a large one.
        let shown = if n <= 16 {
            self.storage().to_host(self.layout()).map(|v| format!("{v:?}"))
        } else {
            [0, 1, 2, n - 1]
                .map(|i| self.element(i).and_then(|e| e.to_scalar()))
                .into_iter()
                .collect::<Result<Vec<f32>>>()
                .map(|v| format!("[{}, {}, {}, ..., {}]", v[0], v[1], v[2], v[3]))
        };
        match shown {
            Ok(data) => write!(f, "data={data}")?,
            Err(e) => write!(f, "data unreadable: {e}")?,
        }
        if let Some(node) = &self.0.node {
            write!(f, ", grad_fn={}", node.op)?;
        } else if self.0.requires_grad {
            write!(f, ", requires_grad")?;
        }
        write!(f, ")")
    }
}

// Dropping a long chain of recorded ops (an RNN unrolled over thousands of steps) would recurse
// once per op through the `Arc`s. Unhook the inputs iteratively instead.
impl Drop for TensorInner {
    fn drop(&mut self) {
        let Some(node) = self.node.take() else { return };
        let mut stack = node.inputs;
        while let Some(t) = stack.pop() {
            if let Some(mut inner) = Arc::into_inner(t.0) {
                if let Some(node) = inner.node.take() {
                    stack.extend(node.inputs);
                }
            }
        }
    }
}

fn read_lock(s: &StorageCell) -> RwLockReadGuard<'_, Storage> {
    s.data.read().unwrap_or_else(|e| e.into_inner())
}

/// The storage locked for an in-place write of its values: its version moves on.
///
/// The version moves once the lock is held, not before: whoever reads the new version
/// (to key a copy of the values on it, as [`ValuesKey`] does) then reads the values only
/// after this write, so a copy is never keyed on a version newer than its values.
fn write_lock(s: &StorageCell) -> RwLockWriteGuard<'_, Storage> {
    let guard = s.data.write().unwrap_or_else(|e| e.into_inner());
    s.version.fetch_add(1, Ordering::Relaxed);
    guard
}

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------
impl Tensor {
    /// Wraps a storage, seen through `layout`, as a tensor with no autograd node.
    pub(crate) fn from_storage(storage: Storage, layout: Layout) -> Tensor {
        debug_assert!(layout.elem_count() == 0 || layout.offset() < storage.len());
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: StorageCell::new(storage),
            layout,
            requires_grad: false,
            node: None,
        }))
    }

    /// A CPU tensor that owns `data`, laid out row-major as `shape`.
    ///
    /// Fails with [`Error::ElementCount`] when `data.len()` is not the product of `shape`.
    /// Move it elsewhere with [`Tensor::to`].
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let expected = checked_elem_count("from_vec", shape)?;
        if data.len() != expected {
            return Err(Error::ElementCount { op: "from_vec", shape: shape.to_vec(), expected, got: data.len() });
        }
        Ok(Tensor::from_storage(Storage::from_host(Device::Cpu, data)?, Layout::contiguous(shape)))
    }

    /// Like [`Tensor::from_vec`], copying from a slice.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A rank-0 CPU tensor holding one value.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::full(&[], value)
    }

    /// A CPU tensor of `shape` filled with `value`.
    ///
    /// # Panics
    /// When the shape has more elements than a `usize` counts (like any allocation that cannot
    /// be made); shapes from data and specs are checked before they get here.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        Tensor::full_on(shape, value, Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A tensor of `shape` filled with `value`, on `device`.
    pub fn full_on(shape: &[usize], value: f32, device: Device) -> Result<Tensor> {
        let n = checked_elem_count("full", shape)?;
        Ok(Tensor::from_storage(Storage::full(device, n, value)?, Layout::contiguous(shape)))
    }

    /// A CPU tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A CPU tensor of ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Zeros of `shape` on `device`.
    pub fn zeros_on(shape: &[usize], device: Device) -> Result<Tensor> {
        Tensor::full_on(shape, 0.0, device)
    }

    /// Zeros with the shape and device of `self`.
    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::full_on(self.shape(), 0.0, self.device())
    }

    /// Ones with the shape and device of `self`.
    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::full_on(self.shape(), 1.0, self.device())
    }

    /// `[start, start + step, ...]` up to but excluding `end`, as a 1-D CPU tensor.
    pub fn arange(start: f32, end: f32, step: f32) -> Result<Tensor> {
        Tensor::arange_on(start, end, step, Device::Cpu)
    }

    /// [`Tensor::arange`] on `device`.
    pub fn arange_on(start: f32, end: f32, step: f32, device: Device) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("needs finite start, end and a non-zero step, got {start}, {end}, {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        Ok(Tensor::from_storage(Storage::arange(device, start, step, n)?, Layout::contiguous(&[n])))
    }

    /// Values drawn uniformly from `[low, high)` by `rng`, on the CPU. Draws are made on the
    /// host whatever the device, so a seed gives the same numbers everywhere: move the result
    /// with [`Tensor::to`].
    pub fn rand_uniform(shape: &[usize], low: f32, high: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(Error::invalid("rand_uniform", format!("needs finite low < high, got [{low}, {high})")));
        }
        let n = checked_elem_count("rand_uniform", shape)?;
        crate::backend::ensure_room(Device::Cpu, (n as u64).saturating_mul(4), "rand_uniform")?;
        let data = (0..n).map(|_| rng.uniform(low, high)).collect();
        Tensor::from_vec(data, shape)
    }

    /// Values drawn from the normal distribution N(mean, std²) by `rng`, on the CPU (see
    /// [`Tensor::rand_uniform`]).
    pub fn rand_normal(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(std.is_finite() && mean.is_finite() && std >= 0.0) {
            return Err(Error::invalid(
                "rand_normal",
                format!("needs a finite mean and std >= 0, got mean {mean}, std {std}"),
            ));
        }
        let n = checked_elem_count("rand_normal", shape)?;
        crate::backend::ensure_room(Device::Cpu, (n as u64).saturating_mul(4), "rand_normal")?;
        let data = (0..n).map(|_| mean + std * rng.standard_normal()).collect();
        Tensor::from_vec(data, shape)
    }

    /// The result of an operation: a fresh contiguous tensor of `shape` over `storage` (what a
    /// kernel returned).
    ///
    /// When gradients are being recorded and an input needs one, the result remembers `op`,
    /// its `inputs` and `backward`, the rule that turns the gradient of the result into
    /// gradients of the inputs (see [`crate::autograd`]).
    pub(crate) fn from_op(
        storage: Storage,
        shape: &[usize],
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl GradFn,
    ) -> Tensor {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>(), "{op}");
        let node = autograd::make_node(op, inputs, 0, backward);
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: StorageCell::new(storage),
            layout: Layout::contiguous(shape),
            requires_grad: node.is_some(),
            node,
        }))
    }

    /// `self` (computed without recording) as the result of a fused op over `inputs`: a new
    /// handle on the same storage, with the node that sends gradients back to `inputs`.
    pub(crate) fn recorded_as(&self, op: &'static str, inputs: &[&Tensor], backward: impl GradFn) -> Tensor {
        self.on_same_storage(self.0.layout.clone(), op, inputs, backward)
    }

    /// A view of `self`'s storage with another layout, recorded like [`Tensor::from_op`].
    pub(crate) fn view_op(&self, layout: Layout, op: &'static str, backward: impl GradFn) -> Tensor {
        self.on_same_storage(layout, op, &[self], backward)
    }

    /// A new handle on `self`'s storage, seen through `layout`, recorded as op `op` of `inputs`.
    fn on_same_storage(&self, layout: Layout, op: &'static str, inputs: &[&Tensor], backward: impl GradFn) -> Tensor {
        let node = autograd::make_node(op, inputs, self.version(), backward);
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: self.0.storage.clone(),
            layout,
            requires_grad: node.is_some(),
            node,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Accessors
// ---------------------------------------------------------------------------------------------
impl Tensor {
    /// This handle's identity (gradients are looked up by it).
    pub fn id(&self) -> TensorId {
        self.0.id
    }

    /// The sizes of the axes.
    pub fn shape(&self) -> &[usize] {
        self.0.layout.shape()
    }

    /// The layout (shape, strides, offset) in the storage.
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    /// Number of axes (0 for a scalar).
    pub fn rank(&self) -> usize {
        self.0.layout.rank()
    }

    /// Size of axis `dim`.
    pub fn dim(&self, dim: impl crate::layout::Dim) -> Result<usize> {
        Ok(self.shape()[dim.axis("dim", self.rank())?])
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }

    /// Where the data lives.
    pub fn device(&self) -> Device {
        self.storage().device()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage().dtype()
    }

    /// True when `backward()` will compute a gradient for this tensor or through it.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// True for a tensor that no recorded operation made (data, or a parameter).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }

    /// The autograd node that made this tensor, if one was recorded.
    pub(crate) fn node(&self) -> Option<&Node> {
        self.0.node.as_ref()
    }

    /// A new leaf sharing this tensor's data, with gradient tracking on or off.
    ///
    /// `set_requires_grad(true)` is how a parameter is made: `backward()` will then give its
    /// gradient. The result has no history: it is cut from the graph that made `self`.
    #[must_use = "set_requires_grad returns a new tensor and leaves `self` as it was: keep the result"]
    pub fn set_requires_grad(&self, on: bool) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: self.0.storage.clone(),
            layout: self.0.layout.clone(),
            requires_grad: on,
            node: None,
        }))
    }

    /// The same data with no history and no gradient: gradients stop here.
    #[must_use = "detach returns a new tensor and leaves `self` as it was"]
    pub fn detach(&self) -> Tensor {
        self.set_requires_grad(false)
    }

    /// The storage, read-locked (for a kernel call).
    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        read_lock(&self.0.storage)
    }

    /// Runs `f` on the storages of several tensors at once, each storage locked once even
    /// when tensors share it (a kernel call with several operands).
    pub(crate) fn with_storages<const N: usize, R>(tensors: [&Tensor; N], f: impl FnOnce([&Storage; N]) -> R) -> R {
        // Operand i reads the guard of the first operand sharing its storage (no allocation:
        // this runs once per kernel call).
        let first: [usize; N] =
            std::array::from_fn(|i| (0..i).find(|&j| tensors[j].same_storage(tensors[i])).unwrap_or(i));
        let guards: [Option<RwLockReadGuard<'_, Storage>>; N] =
            std::array::from_fn(|i| (first[i] == i).then(|| read_lock(&tensors[i].0.storage)));
        let storages: [&Storage; N] =
            std::array::from_fn(|i| &**guards[first[i]].as_ref().expect("the first user of a storage locks it"));
        f(storages)
    }

    /// The one value of each of `tensors` (one element each), in order, in a new buffer,
    /// where their backend gathers in one pass ([`Storage::gather_values`]); `None` where it
    /// does not. Each storage is locked once, as in [`Tensor::with_storages`].
    pub(crate) fn gather_values(tensors: &[&Tensor]) -> Result<Option<Storage>> {
        // Only a GPU gathers: anything else is known before a lock is taken.
        let device = tensors.first().map(|t| t.device());
        if device.is_none_or(|d| d == Device::Cpu) || tensors.iter().any(|t| Some(t.device()) != device) {
            return Ok(None);
        }
        // The first tensor of each storage (a loss per batch: all distinct, so linear).
        let mut seen: HashMap<*const StorageCell, usize> = HashMap::with_capacity(tensors.len());
        let first: Vec<usize> =
            tensors.iter().enumerate().map(|(i, t)| *seen.entry(Arc::as_ptr(&t.0.storage)).or_insert(i)).collect();
        let guards: Vec<Option<RwLockReadGuard<'_, Storage>>> =
            (0..tensors.len()).map(|i| (first[i] == i).then(|| read_lock(&tensors[i].0.storage))).collect();
        let parts: Vec<(&Storage, usize)> = (0..tensors.len())
            .map(|i| {
                (
                    &**guards[first[i]].as_ref().expect("the first user of a storage locks it"),
                    tensors[i].layout().offset(),
                )
            })
            .collect();
        Storage::gather_values(&parts)
    }

    /// Element `i` (in row-major order) as a one-element view of this tensor's storage, of
    /// shape `[1, 1, ..]`: reading it reads one value, writing it (`copy_from`) changes one.
    pub(crate) fn element(&self, i: usize) -> Result<Tensor> {
        if i >= self.elem_count() {
            return Err(Error::IndexOutOfRange { op: "element", index: i as f64, size: self.elem_count() });
        }
        let _off = crate::no_grad();
        let mut cell = self.clone();
        let mut rest = i;
        for axis in (0..self.rank()).rev() {
            let size = self.shape()[axis];
            cell = cell.narrow(axis, rest % size, 1)?;
            rest /= size;
        }
        Ok(cell)
    }

    /// The count of in-place writes to this tensor's storage so far.
    pub(crate) fn version(&self) -> u64 {
        self.0.storage.version.load(Ordering::Relaxed)
    }

    /// The device address of the tensor's storage on a GPU (`None` on the CPU): what a CUDA
    /// graph captured reading it reads.
    pub(crate) fn device_address(&self) -> Option<u64> {
        self.storage().device_address()
    }

    /// True when both handles show the same storage.
    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// What identifies this tensor's values as they are now: its storage, its view of it and
    /// the storage's version ([`ValuesKey::matches`] says whether a tensor still shows them).
    pub(crate) fn values_key(&self) -> ValuesKey {
        ValuesKey { storage: Arc::downgrade(&self.0.storage), layout: self.layout().clone(), version: self.version() }
    }
}

/// A tensor's values at one moment ([`Tensor::values_key`]): something computed from them
/// (a layer's transposed weights kept for inference) may be reused while a tensor
/// [`matches`](ValuesKey::matches) the key. The storage is held weakly: the key keeps no
/// values alive, and the storage's address cannot be reused while the key exists.
pub(crate) struct ValuesKey {
    storage: Weak<StorageCell>,
    layout: Layout,
    version: u64,
}

impl ValuesKey {
    /// True when `t` shows the same view of the same storage, with no in-place write to it
    /// since the key was taken.
    pub(crate) fn matches(&self, t: &Tensor) -> bool {
        std::ptr::eq(self.storage.as_ptr(), Arc::as_ptr(&t.0.storage))
            && self.layout == *t.layout()
            && self.version == t.version()
    }
}

// ---------------------------------------------------------------------------------------------
// Moving data: to the host, between devices, into parameters
// ---------------------------------------------------------------------------------------------
impl Tensor {
    /// Copies the elements out to host memory, in row-major order.
    ///
    /// # Panics
    /// Only where [`Tensor::try_to_vec`] fails: a GPU that fails to copy (lost mid-run), or
    /// reports a bad index that an earlier kernel on it found (a class label out of range,
    /// reported at the GPU's next read). On the CPU it cannot fail.
    pub fn to_vec(&self) -> Vec<f32> {
        self.try_to_vec().unwrap_or_else(|e| panic!("copying a tensor to the host: {e}"))
    }

    /// The elements in host memory, in row-major order, as [`Tensor::to_vec`], with a GPU's
    /// failure or its report of a bad index an earlier kernel found returned as an error.
    pub fn try_to_vec(&self) -> Result<Vec<f32>> {
        self.storage().to_host(self.layout())
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::invalid("to_scalar", format!("needs exactly one element, shape is {:?}", self.shape())));
        }
        Ok(self.storage().to_host(self.layout())?[0])
    }

    /// The rows of a 2-D tensor as vectors.
    pub fn to_vec2(&self) -> Result<Vec<Vec<f32>>> {
        if self.rank() != 2 {
            return Err(Error::invalid("to_vec2", format!("needs a 2-D tensor, shape is {:?}", self.shape())));
        }
        let cols = self.shape()[1];
        let v = self.storage().to_host(self.layout())?;
        if cols == 0 {
            return Ok(vec![vec![]; self.shape()[0]]);
        }
        Ok(v.chunks(cols).map(<[f32]>::to_vec).collect())
    }

    /// This tensor on `device`: `self` when it is there already, else a copy. Recorded, so
    /// gradients flow back to the source device.
    pub fn to(&self, device: Device) -> Result<Tensor> {
        let from = self.device();
        if from == device {
            return Ok(self.clone());
        }
        let storage = self.storage().to_device(self.layout(), device)?;
        Ok(Tensor::from_op(storage, self.shape(), "to", &[self], move |g, x, _| {
            Ok(vec![crate::ops::grad_if(&x[0], || g.to(from))?])
        }))
    }

    /// Moves this tensor's storage to `device` in place: every handle sharing it (views, the
    /// optimizer's list, the graph) sees the data there. How [`crate::nn::Module::to`] moves
    /// parameters while keeping their identity and names.
    pub(crate) fn move_to(&self, device: Device) -> Result<()> {
        // Asked every optimizer step: a read lock says when nothing moves.
        if self.device() == device {
            return Ok(());
        }
        // The same values elsewhere: not a write (the version stays).
        let mut guard = self.0.storage.data.write().unwrap_or_else(|e| e.into_inner());
        if guard.device() == device {
            return Ok(());
        }
        let whole = Layout::contiguous(&[guard.len()]);
        *guard = guard.to_device(&whole, device)?;
        Ok(())
    }

    /// Overwrites this tensor's elements with `src`'s (same shape; moved to this tensor's
    /// device first), in place.
    ///
    /// Meant for parameters (loading a checkpoint, copying weights); it does not record.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if self.shape() != src.shape() {
            return Err(Error::shapes("copy_from", self.shape(), src.shape()));
        }
        // From the host into a row-major tensor on a GPU: one copy to the device, in place
        // (the source is read out before this storage is locked).
        if src.device() == Device::Cpu && self.device() != Device::Cpu && self.layout().is_contiguous() {
            let values = src.storage().to_host(src.layout())?;
            return write_lock(&self.0.storage).write_host(self.layout().offset(), &values);
        }
        // On one device, from another storage: one copy straight into this one (one launch on
        // a GPU), when the source can be read at once. No lock is waited for while another is
        // held (another thread may copy the other way), so otherwise the copy goes through a
        // buffer, as across devices.
        if !self.same_storage(src) {
            let mut dst = write_lock(&self.0.storage);
            if let Ok(from) = src.0.storage.data.try_read() {
                if from.device() == dst.device() {
                    return from.copy_into(src.layout(), &mut dst, self.layout(), "copy_from");
                }
            }
        }
        // The source is copied out, on this tensor's device, before this storage is locked for
        // writing: no lock is held on one while waiting for the other (the source may be a
        // view of this very storage, or another thread may copy the other way).
        let values = src.storage().to_device(src.layout(), self.device())?;
        let mut dst = write_lock(&self.0.storage);
        values.copy_into(&Layout::contiguous(src.shape()), &mut dst, self.layout(), "copy_from")
    }

    /// A row-major copy of the values in storage of its own, with no history (unlike
    /// [`Tensor::contiguous`], never `self`).
    pub(crate) fn copied(&self) -> Result<Tensor> {
        Ok(Tensor::from_storage(self.storage().copy_strided(self.layout())?, Layout::contiguous(self.shape())))
    }

    /// Writes `data` over this contiguous tensor's values, in place (one host-to-device copy
    /// on a GPU).
    pub(crate) fn write_host(&self, data: &[f32]) -> Result<()> {
        if !self.layout().is_contiguous() || data.len() != self.elem_count() {
            return Err(Error::invalid(
                "write",
                format!("{} values into a tensor of {:?} (contiguous ones only)", data.len(), self.shape()),
            ));
        }
        write_lock(&self.0.storage).write_host(self.layout().offset(), data)
    }

    /// Optimizer updates of several parameters in place, in order, each from its gradient and
    /// state buffers as one fused pass, in as few kernel launches as the device allows (one
    /// for many parameters on a GPU); with `staged`, an update's changing numbers
    /// ([`OptimizerUpdate::staged`]) are read from that tensor when the kernel runs. On an
    /// error, the position of the first item whose update was not queued; every item is
    /// checked before any is queued. Items that share a storage one of them writes (two
    /// parameters viewing one tensor, say) are updated one at a time.
    pub(crate) fn apply_updates(
        op: &'static str,
        items: &[ParamUpdate<'_>],
    ) -> std::result::Result<(), (Error, usize)> {
        let mut grads = Vec::with_capacity(items.len());
        for it in items {
            grads.push(it.checked(op).map_err(|e| (e, 0))?);
        }
        // Within an item, written storages are apart from every other one (checked); across
        // items they may not be (two parameters viewing one storage, say).
        let cell = |t: &Tensor| Arc::as_ptr(&t.0.storage);
        let mut written: Vec<*const StorageCell> =
            items.iter().flat_map(|it| std::iter::once(it.param).chain(it.state)).map(cell).collect();
        written.sort_unstable();
        let mut read = grads.iter().chain(items.iter().filter_map(|it| it.staged.map(|(s, _)| s))).map(cell);
        if written.windows(2).any(|w| w[0] == w[1]) || read.any(|r| written.binary_search(&r).is_ok()) {
            for (k, (it, g)) in items.iter().zip(&grads).enumerate() {
                Tensor::step_locked(op, std::slice::from_ref(it), std::slice::from_ref(g)).map_err(|(e, _)| (e, k))?;
            }
            return Ok(());
        }
        Tensor::step_locked(op, items, &grads)
    }

    /// Locks what `items` write (each storage once, as checked by the caller) and what they
    /// read (a storage read by several items once), and queues their updates; `grads` are the
    /// gradients as the kernels read them.
    fn step_locked(
        op: &'static str,
        items: &[ParamUpdate<'_>],
        grads: &[Tensor],
    ) -> std::result::Result<(), (Error, usize)> {
        /// The position of `t`'s storage among `cells`, added there if new (`seen` maps a
        /// storage to its position).
        fn place<'t>(
            cells: &mut Vec<&'t Arc<StorageCell>>,
            seen: &mut HashMap<*const StorageCell, usize>,
            t: &'t Tensor,
        ) -> usize {
            *seen.entry(Arc::as_ptr(&t.0.storage)).or_insert_with(|| {
                cells.push(&t.0.storage);
                cells.len() - 1
            })
        }
        let (mut cells, mut seen) = (Vec::new(), HashMap::new());
        let grad_at: Vec<usize> = grads.iter().map(|g| place(&mut cells, &mut seen, g)).collect();
        let staged_at: Vec<Option<(usize, usize)>> = items
            .iter()
            .map(|it| it.staged.map(|(s, at)| (place(&mut cells, &mut seen, s), s.layout().offset() + at)))
            .collect();
        let mut writes: Vec<_> = items
            .iter()
            .map(|it| {
                let state: Vec<_> = it.state.iter().map(|s| write_lock(&s.0.storage)).collect();
                (write_lock(&it.param.0.storage), state)
            })
            .collect();
        let reads: Vec<_> = cells.iter().map(|c| read_lock(c)).collect();
        let mut steps: Vec<StepItem<'_, Storage>> = writes
            .iter_mut()
            .zip(items)
            .zip(grads)
            .enumerate()
            .map(|(k, (((param, state), it), grad))| StepItem {
                param: &mut **param,
                l: it.param.layout(),
                grad: &reads[grad_at[k]],
                grad_l: grad.layout(),
                state: state.iter_mut().map(|s| &mut **s).collect(),
                update: it.update,
                staged: staged_at[k].map(|(r, at)| (&*reads[r], at)),
            })
            .collect();
        Storage::optimizer_steps(&mut steps, op)
    }
}

/// One parameter's optimizer update for [`Tensor::apply_updates`].
pub(crate) struct ParamUpdate<'a> {
    /// The parameter, updated in place (contiguous).
    pub(crate) param: &'a Tensor,
    /// Its gradient, of its shape.
    pub(crate) grad: &'a Tensor,
    /// Its state buffers: tensors of its shape, each its own storage.
    pub(crate) state: &'a [Tensor],
    /// The update.
    pub(crate) update: OptimizerUpdate,
    /// A contiguous tensor and the position in it of the update's changing numbers, read
    /// when the kernel runs.
    pub(crate) staged: Option<(&'a Tensor, usize)>,
}

impl ParamUpdate<'_> {
    /// The checks only tensors can make (shapes, views, storages apart), and the gradient as
    /// the kernel reads it: a contiguous copy where it is a view, or shares the parameter's
    /// storage (read while that is locked for writing).
    fn checked(&self, op: &'static str) -> Result<Tensor> {
        let (param, grad, state) = (self.param, self.grad, self.state);
        if let Some((s, _)) = self.staged {
            if !s.layout().is_contiguous() || s.same_storage(param) || state.iter().any(|b| b.same_storage(s)) {
                return Err(Error::invalid(op, "staged numbers must be a separate contiguous tensor"));
            }
        }
        if param.shape() != grad.shape() {
            return Err(Error::shapes(op, param.shape(), grad.shape()));
        }
        if !param.layout().is_contiguous() {
            return Err(Error::invalid(op, "in-place update of a non-contiguous view"));
        }
        let grad =
            if grad.same_storage(param) || !grad.layout().is_contiguous() { grad.copied()? } else { grad.clone() };
        for (i, s) in state.iter().enumerate() {
            let shared = s.same_storage(param) || s.same_storage(&grad) || state[..i].iter().any(|o| o.same_storage(s));
            if shared || !s.layout().is_contiguous() {
                return Err(Error::invalid(op, "optimizer state must be separate contiguous buffers"));
            }
        }
        Ok(grad)
    }
}
