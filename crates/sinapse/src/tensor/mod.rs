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

mod layout;

pub use layout::{broadcast_shape, checked_elem_count, contiguous_strides, for_each_run, Layout};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::autograd::{self, GradFn, Node};
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

/// The numbers behind one or more tensors.
#[derive(Debug)]
pub(crate) enum Storage {
    /// Host memory.
    Cpu(Vec<f32>),
}

impl Storage {
    pub(crate) fn as_slice(&self) -> &[f32] {
        match self {
            Storage::Cpu(v) => v,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [f32] {
        match self {
            Storage::Cpu(v) => v,
        }
    }
}

struct TensorInner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
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
        let n = self.elem_count();
        write!(f, "Tensor(shape={:?}, ", self.shape())?;
        if n <= 16 {
            write!(f, "data={:?}", self.to_vec())?;
        } else {
            // Only the printed elements are read: the first three and the last.
            let (first, last) = self.with_data(|d, l| {
                let mut first = Vec::with_capacity(3);
                for_each_run(l.shape(), [l], |[o], len, [s]| {
                    first.extend((0..len.min(3 - first.len())).map(|j| d[o + j * s]));
                });
                let end = l.offset() + l.shape().iter().zip(l.strides()).map(|(&n, &s)| (n - 1) * s).sum::<usize>();
                (first, d[end])
            });
            write!(f, "data=[{}, {}, {}, ..., {last}]", first[0], first[1], first[2])?;
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

fn read_lock(s: &RwLock<Storage>) -> RwLockReadGuard<'_, Storage> {
    s.read().unwrap_or_else(|e| e.into_inner())
}

fn write_lock(s: &RwLock<Storage>) -> RwLockWriteGuard<'_, Storage> {
    s.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------------------------
impl Tensor {
    /// Wraps a buffer in row-major order as a tensor of `shape` (no autograd node).
    pub(crate) fn from_parts(data: Vec<f32>, layout: Layout) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: Arc::new(RwLock::new(Storage::Cpu(data))),
            layout,
            requires_grad: false,
            node: None,
        }))
    }

    /// A tensor that owns `data`, laid out row-major as `shape`.
    ///
    /// Fails with [`Error::ElementCount`] when `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
        let expected = checked_elem_count("from_vec", shape)?;
        if data.len() != expected {
            return Err(Error::ElementCount { op: "from_vec", shape: shape.to_vec(), expected, got: data.len() });
        }
        Ok(Tensor::from_parts(data, Layout::contiguous(shape)))
    }

    /// Like [`Tensor::from_vec`], copying from a slice.
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape)
    }

    /// A rank-0 tensor holding one value.
    pub fn scalar(value: f32) -> Tensor {
        Tensor::from_parts(vec![value], Layout::contiguous(&[]))
    }

    /// A tensor of `shape` filled with `value`.
    ///
    /// # Panics
    /// When the shape has more elements than a `usize` counts (like any allocation that cannot
    /// be made); shapes from data and specs are checked before they get here.
    pub fn full(shape: &[usize], value: f32) -> Tensor {
        let n = checked_elem_count("full", shape).unwrap_or_else(|e| panic!("{e}"));
        Tensor::from_parts(vec![value; n], Layout::contiguous(shape))
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 0.0)
    }

    /// A tensor of ones.
    pub fn ones(shape: &[usize]) -> Tensor {
        Tensor::full(shape, 1.0)
    }

    /// Zeros with the shape of `self`.
    pub fn zeros_like(&self) -> Tensor {
        Tensor::zeros(self.shape())
    }

    /// Ones with the shape of `self`.
    pub fn ones_like(&self) -> Tensor {
        Tensor::ones(self.shape())
    }

    /// `[start, start + step, ...]` up to but excluding `end`, as a 1-D tensor.
    pub fn arange(start: f32, end: f32, step: f32) -> Result<Tensor> {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !end.is_finite() {
            return Err(Error::invalid(
                "arange",
                format!("needs finite start, end and a non-zero step, got {start}, {end}, {step}"),
            ));
        }
        let n = ((end - start) / step).ceil().max(0.0) as usize;
        let data: Vec<f32> = (0..n).map(|i| start + i as f32 * step).collect();
        Tensor::from_vec(data, &[n])
    }

    /// Values drawn uniformly from `[low, high)` by `rng`.
    pub fn rand_uniform(shape: &[usize], low: f32, high: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(Error::invalid("rand_uniform", format!("needs finite low < high, got [{low}, {high})")));
        }
        let n = checked_elem_count("rand_uniform", shape)?;
        let data = (0..n).map(|_| rng.uniform(low, high)).collect();
        Tensor::from_vec(data, shape)
    }

    /// Values drawn from the normal distribution N(mean, std²) by `rng`.
    pub fn rand_normal(shape: &[usize], mean: f32, std: f32, rng: &mut Rng) -> Result<Tensor> {
        if !(std.is_finite() && mean.is_finite() && std >= 0.0) {
            return Err(Error::invalid(
                "rand_normal",
                format!("needs a finite mean and std >= 0, got mean {mean}, std {std}"),
            ));
        }
        let n = checked_elem_count("rand_normal", shape)?;
        let data = (0..n).map(|_| mean + std * rng.standard_normal()).collect();
        Tensor::from_vec(data, shape)
    }

    /// The result of an operation: a fresh contiguous tensor of `shape` holding `data`.
    ///
    /// When gradients are being recorded and an input needs one, the result remembers `op`,
    /// its `inputs` and `backward`, the rule that turns the gradient of the result into
    /// gradients of the inputs (see [`crate::autograd`]).
    pub(crate) fn from_op(
        data: Vec<f32>,
        shape: &[usize],
        op: &'static str,
        inputs: &[&Tensor],
        backward: impl GradFn,
    ) -> Tensor {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>(), "{op}");
        let node = autograd::make_node(op, inputs, backward);
        Tensor(Arc::new(TensorInner {
            id: TensorId::next(),
            storage: Arc::new(RwLock::new(Storage::Cpu(data))),
            layout: Layout::contiguous(shape),
            requires_grad: node.is_some(),
            node,
        }))
    }

    /// A view of `self`'s storage with another layout, recorded like [`Tensor::from_op`].
    pub(crate) fn view_op(&self, layout: Layout, op: &'static str, backward: impl GradFn) -> Tensor {
        let node = autograd::make_node(op, &[self], backward);
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
    pub fn dim(&self, dim: usize) -> Result<usize> {
        self.0.layout.check_dim("dim", dim)?;
        Ok(self.shape()[dim])
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }

    /// Where the data lives.
    pub fn device(&self) -> Device {
        match &*read_lock(&self.0.storage) {
            Storage::Cpu(_) => Device::Cpu,
        }
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
    pub fn detach(&self) -> Tensor {
        self.set_requires_grad(false)
    }

    /// Runs `f` on the storage slice and the layout (read lock held during `f`).
    pub(crate) fn with_data<R>(&self, f: impl FnOnce(&[f32], &Layout) -> R) -> R {
        let guard = read_lock(&self.0.storage);
        f(guard.as_slice(), &self.0.layout)
    }

    /// Runs `f` on the elements in row-major order: the storage slice itself when the tensor
    /// is contiguous, else a row-major copy. For kernels that need row-major input; unlike
    /// [`Tensor::contiguous`] it records nothing.
    pub(crate) fn with_row_major<R>(&self, f: impl FnOnce(&[f32]) -> R) -> R {
        self.with_data(|d, l| {
            if l.is_contiguous() {
                f(&d[l.offset()..l.offset() + l.elem_count()])
            } else {
                f(&crate::backend::cpu::to_contiguous(d, l))
            }
        })
    }

    /// Runs `f` on this tensor's elements in place. The tensor must be contiguous; every
    /// tensor sharing the storage sees the change. Used by optimizers on parameters.
    pub(crate) fn update_in_place(&self, op: &'static str, f: impl FnOnce(&mut [f32])) -> Result<()> {
        let l = &self.0.layout;
        if !l.is_contiguous() {
            return Err(Error::invalid(op, "in-place update of a non-contiguous view"));
        }
        let mut guard = write_lock(&self.0.storage);
        let n = l.elem_count();
        f(&mut guard.as_mut_slice()[l.offset()..l.offset() + n]);
        Ok(())
    }

    /// True when both handles show the same storage.
    pub(crate) fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Copies the elements out in row-major order.
    pub fn to_vec(&self) -> Vec<f32> {
        self.with_data(crate::backend::cpu::to_contiguous)
    }

    /// The single value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(Error::invalid("to_scalar", format!("needs exactly one element, shape is {:?}", self.shape())));
        }
        Ok(self.with_data(|d, l| d[l.offset()]))
    }

    /// The rows of a 2-D tensor as vectors.
    pub fn to_vec2(&self) -> Result<Vec<Vec<f32>>> {
        if self.rank() != 2 {
            return Err(Error::invalid("to_vec2", format!("needs a 2-D tensor, shape is {:?}", self.shape())));
        }
        let cols = self.shape()[1];
        let v = self.to_vec();
        if cols == 0 {
            return Ok(vec![vec![]; self.shape()[0]]);
        }
        Ok(v.chunks(cols).map(<[f32]>::to_vec).collect())
    }

    /// Overwrites this tensor's elements with `src`'s (same shape), in place.
    ///
    /// Meant for parameters (loading a checkpoint, copying weights); it does not record.
    pub fn copy_from(&self, src: &Tensor) -> Result<()> {
        if self.shape() != src.shape() {
            return Err(Error::shapes("copy_from", self.shape(), src.shape()));
        }
        let values = src.to_vec();
        self.update_in_place("copy_from", |d| d.copy_from_slice(&values))
    }
}
