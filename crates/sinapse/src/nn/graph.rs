//! A model's forward pass for inference captured into a CUDA graph and replayed.

use crate::backend::{Graph, GraphIo, GraphPool};
use crate::nn::{Mode, Module};
use crate::{Device, Error, Result, Tensor};

/// Captures tried before [`InferenceGraph::capture`] gives up (a capture that misses a block
/// of its pool teaches the pool that block for the next one).
const ATTEMPTS: usize = 3;

/// A model's forward pass for inference ([`Mode::Eval`], no gradients) captured once into a
/// CUDA graph for inputs of one shape, then replayed: a call with a row-major input already on
/// the GPU queues one graph launch instead of a launch per kernel, which on a small network is
/// most of the time (PyTorch's `torch.cuda.graph` around `model(static_input)`, whose calls
/// also copy the input in and the output out). The graph copies the caller's input in and
/// its output out to a new tensor itself: before each launch the host points those two
/// copies of the instantiated graph at the call's tensors.
///
/// The graph reads the model's parameters and buffers where they were at the capture, so it
/// sees them change in place (an optimizer's step, [`Module::load`]); one that was moved
/// since ([`Module::to`]) and is not back where the graph reads it makes
/// [`InferenceGraph::run`] an error, and a new capture is needed.
///
/// ```no_run
/// # fn main() -> sinapse::Result<()> {
/// use sinapse::nn::{InferenceGraph, Linear, Module, Relu, Sequential};
/// use sinapse::{Device, Rng, Tensor};
/// let mut rng = Rng::seed(0);
/// let model = Sequential::new().add(Linear::new(784, 256, &mut rng)?).add(Relu).add(Linear::new(256, 10, &mut rng)?);
/// model.to(Device::Cuda(0))?;
/// let mut graph = InferenceGraph::capture(&model, &[1, 784], Device::Cuda(0))?;
/// let logits = graph.run(&Tensor::zeros(&[1, 784]))?; // [1, 10], on cuda:0
/// # Ok(()) }
/// ```
pub struct InferenceGraph<'m> {
    /// Dropped first: its drop waits for the last replay, before the buffers it reads go.
    graph: Graph,
    /// Where the graph reads its input and writes its output, named before each replay.
    io: GraphIo,
    /// The model captured (borrowed, so that it outlives the graph that reads its tensors).
    model: &'m dyn Module,
    device: Device,
    /// The fixed input the graph reads, and the output it writes.
    input: Tensor,
    output: Tensor,
    /// Every parameter and buffer, with its device address when captured.
    state: Vec<(Tensor, Option<u64>)>,
}

impl std::fmt::Debug for InferenceGraph<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InferenceGraph({}, input {:?} on {})", self.model.describe(), self.input.shape(), self.device)
    }
}

impl<'m> InferenceGraph<'m> {
    /// Captures `model`'s forward pass in [`Mode::Eval`] for inputs of `input_shape` on
    /// `device`, which must be a GPU holding all of the model's parameters and buffers.
    ///
    /// The pass runs twice eagerly first (the second time learning the buffers it needs), then
    /// once captured. A model whose forward pass copies values between the host and the GPU
    /// (reads a value, say) cannot be captured: that is an error naming the copy.
    pub fn capture(model: &'m dyn Module, input_shape: &[usize], device: Device) -> Result<InferenceGraph<'m>> {
        if device == Device::Cpu {
            return Err(Error::invalid("InferenceGraph", "CUDA graphs need a CUDA device, not the CPU"));
        }
        let state: Vec<Tensor> = model.state_dict().into_iter().map(|(_, t)| t).collect();
        if let Some(t) = state.iter().find(|t| t.device() != device) {
            return Err(Error::DeviceMismatch { op: "InferenceGraph", lhs: device, rhs: t.device() });
        }
        let _no_grad = crate::no_grad();
        let input = Tensor::zeros_on(input_shape, device)?;
        let mut io = GraphIo::new(device)?;
        // Kernels, cuBLAS and any cache a layer keeps are made outside the graph's pool.
        drop(model.forward(&input, Mode::Eval)?);
        let pool = GraphPool::record(device)?;
        let recorded = model.forward(&input, Mode::Eval).map(drop);
        let host_op = pool.end_recording()?;
        recorded?;
        if let Some(op) = host_op {
            return Err(Error::invalid(
                "InferenceGraph",
                format!(
                    "the forward pass copies values between the host and the GPU ({op}), which a graph would not redo"
                ),
            ));
        }
        let mut last = None;
        for _ in 0..ATTEMPTS {
            pool.begin_capture()?;
            // The input copied in from the tensor named at replay, the pass, and its output
            // copied out to the tensor named at replay.
            let forward = io.read_into(&input).and_then(|()| {
                let output = model.forward(&input, Mode::Eval)?.contiguous()?;
                io.write_from(&output)?;
                Ok(output)
            });
            let ended = pool.end_capture(forward.is_ok());
            match (forward, ended) {
                (Ok(output), Ok(graph)) => {
                    io.attach(&graph, &input, &output)?;
                    let state = state.into_iter().map(|t| (t.device_address(), t)).map(|(at, t)| (t, at)).collect();
                    return Ok(InferenceGraph { model, device, input, output, graph, io, state });
                }
                (Err(e), _) | (Ok(_), Err(e)) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::invalid("InferenceGraph", "the capture was not tried")))
    }

    /// The model's outputs for `x` (of the captured shape, on any device), in a new tensor on
    /// the graph's device (queued: reading it waits for it). The replay reads `x` itself
    /// where it is row-major on the graph's GPU (one launch in all), else a row-major copy of
    /// it made there first. Nothing waits for the GPU: calls queue replays back to back, each
    /// keeping the tensors it was given. Refused while a graph is captured on the GPU.
    pub fn run(&mut self, x: &Tensor) -> Result<Tensor> {
        if x.shape() != self.input.shape() {
            return Err(Error::shapes("InferenceGraph::run", self.input.shape(), x.shape()));
        }
        let _no_grad = crate::no_grad();
        let x = if x.device() == self.device && x.layout().is_contiguous() {
            x.clone()
        } else {
            x.to(self.device)?.contiguous()?
        };
        // Each parameter and buffer where the graph reads it. (A move on another thread while
        // this runs is not seen: the replay then reads the blocks the tensor left, which the
        // one stream keeps from reuse until it has run.)
        for (t, address) in &self.state {
            if t.device_address() != *address {
                return Err(Error::invalid(
                    "InferenceGraph::run",
                    format!(
                        "a parameter or buffer of {:?} moved since the capture (now on {}): capture again",
                        t.shape(),
                        t.device()
                    ),
                ));
            }
        }
        let output = self.io.output(self.output.shape())?;
        self.io.set(&self.graph, &x, &output)?;
        self.graph.replay()?;
        Ok(output)
    }

    /// The input shape the graph was captured for.
    pub fn input_shape(&self) -> &[usize] {
        self.input.shape()
    }

    /// The GPU the graph runs on.
    pub fn device(&self) -> Device {
        self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Linear, Relu, Sequential};
    use crate::Rng;

    #[test]
    fn the_cpu_has_no_graphs() {
        let model = Sequential::new().add(Linear::new(3, 2, &mut Rng::seed(0)).unwrap()).add(Relu);
        let e = InferenceGraph::capture(&model, &[1, 3], Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("CUDA graphs need a CUDA device"), "{e}");
        // The model is on the CPU: a GPU's graph cannot read it (checked before any GPU is opened).
        let e = InferenceGraph::capture(&model, &[1, 3], Device::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("cuda:0") && e.contains("cpu"), "{e}");
    }
}
