//! Reverse-mode automatic differentiation (backpropagation).
//!
//! Every operation on tensors that need gradients records a `Node`: the op's name, its
//! inputs, and its gradient rule, a closure that, given dL/d(output), returns dL/d(input) for
//! each input (the chain rule, one step). The rules live next to the forward code of each op
//! in [`crate::ops`].
//!
//! [`Tensor::backward`] then walks the recorded graph from the loss back to the leaves:
//! 1. sort the graph topologically, so that a tensor is visited only after every tensor that
//!    used it;
//! 2. seed dL/dL = 1;
//! 3. visit tensors in that order, apply each node's rule, and *add* the gradients that reach
//!    one tensor along different paths (the multivariate chain rule sums over all paths);
//! 4. keep the gradients of the leaves that asked for one (`requires_grad`), e.g. parameters.
//!
//! Gradients are computed with recording switched off ([`no_grad`]), so backward builds no
//! graph of its own, and the graph itself is freed when the loss tensor is dropped.

use std::cell::Cell;
use std::collections::HashMap;

use crate::tensor::TensorId;
use crate::{Error, Result, Tensor};

/// A gradient rule: `(grad_of_output, inputs, output) -> gradient per input` (`None` where an
/// input needs none). Each returned gradient has its input's shape. Rules get the op's output
/// too, because some gradients are cheapest in terms of it (d e^x/dx = e^x).
pub trait GradFn: Fn(&Tensor, &[Tensor], &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static {}

impl<F> GradFn for F where F: Fn(&Tensor, &[Tensor], &Tensor) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static {}

/// One recorded operation of the graph.
pub(crate) struct Node {
    /// The op's name, shown in debug output and errors.
    pub(crate) op: &'static str,
    /// The tensors the op read.
    pub(crate) inputs: Vec<Tensor>,
    /// Its gradient rule.
    pub(crate) backward: Box<dyn GradFn>,
    /// The versions of the inputs' storages when the op read them, and of the output's.
    versions: Vec<u64>,
    output_version: u64,
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True unless inside a [`no_grad`] scope on this thread.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Switches gradient recording off on this thread until the guard is dropped.
///
/// Use it for evaluation and inference: operations then build no graph.
/// ```
/// let _guard = sinapse::no_grad();
/// // ... forward passes here record nothing ...
/// ```
pub fn no_grad() -> NoGradGuard {
    let previous = GRAD_ENABLED.with(|g| g.replace(false));
    NoGradGuard { previous, _same_thread: std::marker::PhantomData }
}

/// Restores the previous recording state when dropped; see [`no_grad`].
#[must_use = "recording is switched off only while the guard lives"]
pub struct NoGradGuard {
    previous: bool,
    /// The flag is per thread: the guard must be dropped on the thread that made it.
    _same_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Builds the node for an op's result (whose storage is at `output_version`), or `None` when
/// nothing needs a gradient.
pub(crate) fn make_node(
    op: &'static str,
    inputs: &[&Tensor],
    output_version: u64,
    backward: impl GradFn,
) -> Option<Node> {
    if !is_grad_enabled() || !inputs.iter().any(|t| t.requires_grad()) {
        return None;
    }
    Some(Node {
        op,
        inputs: inputs.iter().map(|&t| t.clone()).collect(),
        backward: Box::new(backward),
        versions: inputs.iter().map(|t| t.version()).collect(),
        output_version,
    })
}

/// Fails when a value `node` read (an input, or its own output) was written in place since.
fn check_versions(node: &Node, output: &Tensor) -> Result<()> {
    let changed = node.inputs.iter().zip(&node.versions).position(|(t, &v)| t.version() != v);
    if changed.is_some() || output.version() != node.output_version {
        let what = match changed {
            Some(i) => format!("input {} of {}", i + 1, node.op),
            None => format!("the output of {}", node.op),
        };
        return Err(Error::invalid(
            "backward",
            format!(
                "{what} was modified in place after the forward pass used it (an optimizer step or \
                 copy_from before backward()); compute the loss again from the current values"
            ),
        ));
    }
    Ok(())
}

/// Gradients computed by [`Tensor::backward`], looked up by tensor.
#[derive(Default)]
pub struct Gradients {
    grads: HashMap<TensorId, Tensor>,
}

/// The shapes of the gradients held (their values are printed by looking them up).
impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shapes: Vec<(TensorId, &[usize])> = self.grads.iter().map(|(id, g)| (*id, g.shape())).collect();
        shapes.sort();
        write!(f, "Gradients({} tensors: ", shapes.len())?;
        f.debug_list().entries(shapes.iter().map(|(_, s)| s)).finish()?;
        write!(f, ")")
    }
}

impl Gradients {
    /// dLoss/d`t`, when `t` is a leaf with `requires_grad` that the loss depends on.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.grads.get(&t.id())
    }

    /// Removes and returns the gradient of `t`.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.grads.remove(&t.id())
    }

    /// Sets (replaces) the gradient of `t`; used by gradient clipping and tests.
    pub fn insert(&mut self, t: &Tensor, grad: Tensor) {
        self.grads.insert(t.id(), grad);
    }

    /// Number of gradients held.
    pub fn len(&self) -> usize {
        self.grads.len()
    }

    /// True when no gradient is held.
    pub fn is_empty(&self) -> bool {
        self.grads.is_empty()
    }
}

/// The tensors of the graph below `root` that need gradients, each after all its inputs
/// (post-order of a depth-first search; iterative, so deep graphs cannot overflow the stack).
fn topological_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut visited = std::collections::HashSet::new();
    // (tensor, whether its inputs have been pushed already)
    let mut stack = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !visited.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(node) = t.node() {
            for input in node.inputs.iter().rev() {
                if input.requires_grad() && !visited.contains(&input.id()) {
                    stack.push((input.clone(), false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Backpropagation from this scalar (the loss): returns dLoss/dLeaf for every leaf in its
    /// graph that has `requires_grad`.
    ///
    /// Fails with [`Error::BackwardNonScalar`] unless `self` has exactly one element.
    pub fn backward(&self) -> Result<Gradients> {
        if self.elem_count() != 1 {
            return Err(Error::BackwardNonScalar { shape: self.shape().to_vec() });
        }
        let mut result = Gradients::default();
        if !self.requires_grad() {
            // Nothing this value depends on asks for a gradient: a forgotten
            // `set_requires_grad(true)` (whose result must be kept), or a loss computed
            // under no_grad. An empty answer would train nothing, silently.
            return Err(Error::invalid(
                "backward",
                "nothing in this loss's graph requires a gradient: make parameters with \
                 `let w = w.set_requires_grad(true);` (it returns a new tensor), and do not compute the loss under no_grad",
            ));
        }
        let _recording_off = no_grad();
        let order = topological_order(self);
        // Gradients flowing towards tensors not yet visited; each is removed when visited.
        let mut pending: HashMap<TensorId, Tensor> = HashMap::new();
        pending.insert(self.id(), self.ones_like()?);
        for t in order.iter().rev() {
            let Some(grad) = pending.remove(&t.id()) else {
                continue;
            };
            let Some(node) = t.node() else {
                result.grads.insert(t.id(), grad);
                continue;
            };
            check_versions(node, t)?;
            let input_grads = (node.backward)(&grad, &node.inputs, t)?;
            for (input, g) in node.inputs.iter().zip(input_grads) {
                let Some(g) = g else { continue };
                if !input.requires_grad() {
                    continue;
                }
                if g.shape() != input.shape() {
                    return Err(Error::invalid(
                        "backward",
                        format!(
                            "gradient rule of {} gave shape {:?} for an input of shape {:?}",
                            node.op,
                            g.shape(),
                            input.shape()
                        ),
                    ));
                }
                // Sum over paths: a tensor used twice receives both contributions.
                let summed = match pending.remove(&input.id()) {
                    Some(previous) => previous.add(&g)?,
                    None => g,
                };
                pending.insert(input.id(), summed);
            }
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use crate::Tensor;

    #[test]
    fn two_paths_sum_their_gradients() {
        // y = x*x + 3x uses x along three paths: dy/dx = 2x + 3.
        let x = Tensor::from_vec(vec![2.0, -1.0], &[2]).unwrap().set_requires_grad(true);
        let y = x.mul(&x).unwrap().add(&x.mul_scalar(3.0).unwrap()).unwrap().sum_all().unwrap();
        let g = y.backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), vec![7.0, 1.0]);
    }

    #[test]
    fn no_grad_records_nothing_and_detach_cuts() {
        let x = Tensor::ones(&[2]).set_requires_grad(true);
        {
            let _g = crate::no_grad();
            assert!(!x.exp().unwrap().requires_grad());
        }
        assert!(x.exp().unwrap().requires_grad());
        let y = x.detach().mul(&x).unwrap().sum_all().unwrap();
        // Only the non-detached factor carries a gradient: d(c*x)/dx = c = 1.
        assert_eq!(y.backward().unwrap().get(&x).unwrap().to_vec(), vec![1.0, 1.0]);
    }

    #[test]
    fn backward_needs_a_scalar() {
        let x = Tensor::ones(&[2]).set_requires_grad(true);
        let err = x.exp().unwrap().backward().err().unwrap();
        assert!(err.to_string().contains("[2]"), "{err}");
    }

    #[test]
    fn deep_graphs_do_not_overflow_the_stack() {
        let x = Tensor::ones(&[1]).set_requires_grad(true);
        let mut y = x.clone();
        for _ in 0..20_000 {
            y = y.mul_scalar(1.0).unwrap();
        }
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), vec![1.0]);
    }
}
