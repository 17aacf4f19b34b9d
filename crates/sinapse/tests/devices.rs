//! The op suite every device runs: each op of the backend's kernel set, forward and gradient,
//! computed on every available device and compared with the CPU's.
//!
//! The reference is the CPU with contiguous inputs. Every device (the CPU included) then runs
//! each op again with its inputs laid out three ways: contiguous, padded (a view into a wider
//! buffer, at an offset, with a row stride larger than the row) and transposed (a view whose
//! first two axes are swapped in memory). Inputs are random normals, so reading one wrong
//! element, or a wrong stride or offset, shows as an error of order 1; the tolerance is what
//! rounding needs and no more. The optimizer updates are checked the same way on a list of
//! parameters (as many as a GPU updates in two launches) with gradients given in each layout.
//!
//! A custom harness (`harness = false`): the run prints which devices it covered and why the
//! others were not, in every `cargo test` log. Every GPU in `Device::available()` is covered;
//! `SINAPSE_REQUIRE_CUDA=1` (the GPU check sets it) makes a missing GPU a failure. Where there
//! is none, the suite runs again in a child process on an emulated GPU (`run_on_emulated_gpu`),
//! required where `SINAPSE_REQUIRE_EMULATOR=1` and `SINAPSE_REQUIRE_NVRTC=1` (CI sets both).

use sinapse::backend::{CmpOp, Window};
use sinapse::nn::loss;
use sinapse::optim::{Adam, AdamW, Optimizer, RmsProp, Sgd, StepMode};
use sinapse::{Device, Gradients, Result, Rng, Tensor};

/// How an input is laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Layout {
    Contiguous,
    Padded,
    Transposed,
}

const LAYOUTS: [Layout; 3] = [Layout::Contiguous, Layout::Padded, Layout::Transposed];

/// One input of an op: its values and whether the op is differentiated with respect to it.
#[derive(Clone)]
struct Input {
    shape: Vec<usize>,
    values: Vec<f32>,
    grad: bool,
}

fn normal(shape: &[usize], rng: &mut Rng) -> Input {
    let n = shape.iter().product();
    Input { shape: shape.to_vec(), values: (0..n).map(|_| rng.standard_normal()).collect(), grad: true }
}

/// Values in [0.5, 2]: away from the poles of log, sqrt, division.
fn positive(shape: &[usize], rng: &mut Rng) -> Input {
    let n = shape.iter().product();
    Input { shape: shape.to_vec(), values: (0..n).map(|_| rng.uniform(0.5, 2.0)).collect(), grad: true }
}

/// Values in (0.05, 0.95): probabilities.
fn probability(shape: &[usize], rng: &mut Rng) -> Input {
    let n = shape.iter().product();
    Input { shape: shape.to_vec(), values: (0..n).map(|_| rng.uniform(0.05, 0.95)).collect(), grad: true }
}

/// Fixed values that take no gradient (indices, targets, conditions).
fn fixed(values: &[f32], shape: &[usize]) -> Input {
    Input { shape: shape.to_vec(), values: values.to_vec(), grad: false }
}

/// Whole numbers in `0..n`, no gradient.
fn indices(shape: &[usize], n: usize, rng: &mut Rng) -> Input {
    let count: usize = shape.iter().product();
    fixed(&(0..count).map(|_| rng.below(n).unwrap() as f32).collect::<Vec<_>>(), shape)
}

type Op = Box<dyn Fn(&[Tensor]) -> Result<Tensor>>;

struct Case {
    name: String,
    inputs: Vec<Input>,
    op: Op,
}

fn case(name: &str, inputs: Vec<Input>, op: impl Fn(&[Tensor]) -> Result<Tensor> + 'static) -> Case {
    Case { name: name.to_string(), inputs, op: Box::new(op) }
}

/// The input as a tensor on `device`, laid out as `layout`: the leaf that gradients reach,
/// and the view of it the op reads.
fn place(input: &Input, device: Device, layout: Layout) -> Result<(Tensor, Tensor)> {
    let shape = &input.shape;
    let rank = shape.len();
    let (leaf, view) = match layout {
        Layout::Transposed if rank >= 2 => {
            // Stored with axes 0 and 1 swapped; the view swaps them back.
            let stored = Tensor::from_vec(input.values.clone(), shape)?.transpose(0, 1)?.contiguous()?;
            let leaf = stored.to(device)?.detach().set_requires_grad(input.grad);
            let view = leaf.transpose(0, 1)?;
            (leaf, view)
        }
        Layout::Padded if rank >= 1 => {
            // Each row sits at offset 2 inside a row of length n + 5, between junk values.
            let n = shape[rank - 1];
            let rows = input.values.len() / n.max(1);
            let mut wide = Vec::with_capacity(rows * (n + 5));
            for r in 0..rows {
                wide.extend([1e3, -1e3]);
                wide.extend_from_slice(&input.values[r * n..(r + 1) * n]);
                wide.extend([7e3, -7e3, 9e3]);
            }
            let mut wide_shape = shape.clone();
            wide_shape[rank - 1] = n + 5;
            let leaf = Tensor::from_vec(wide, &wide_shape)?.to(device)?.detach().set_requires_grad(input.grad);
            let view = leaf.narrow(rank - 1, 2, n)?;
            (leaf, view)
        }
        _ => {
            let leaf =
                Tensor::from_vec(input.values.clone(), shape)?.to(device)?.detach().set_requires_grad(input.grad);
            (leaf.clone(), leaf)
        }
    };
    assert_eq!(view.shape(), &shape[..]);
    Ok((leaf, view))
}

/// The leaf's gradient seen through the view again, as host values.
fn unplace(grad: &Tensor, input: &Input, layout: Layout) -> Result<Vec<f32>> {
    let rank = input.shape.len();
    let g = match layout {
        Layout::Transposed if rank >= 2 => grad.transpose(0, 1)?,
        Layout::Padded if rank >= 1 => grad.narrow(rank - 1, 2, input.shape[rank - 1])?,
        _ => grad.clone(),
    };
    Ok(g.to_vec())
}

/// What one run of a case produced: the output and the gradient of each input that takes one.
#[derive(Debug)]
struct Outcome {
    shape: Vec<usize>,
    output: Vec<f32>,
    grads: Vec<Option<Vec<f32>>>,
}

fn run(case: &Case, device: Device, layout: Layout) -> Result<Outcome> {
    let placed = case.inputs.iter().map(|i| place(i, device, layout)).collect::<Result<Vec<_>>>()?;
    let views: Vec<Tensor> = placed.iter().map(|(_, v)| v.clone()).collect();
    let y = (case.op)(&views)?;
    if y.device() != device {
        return Err(sinapse::Error::DeviceMismatch { op: "suite: output device", lhs: device, rhs: y.device() });
    }
    let mut grads = vec![None; case.inputs.len()];
    if y.requires_grad() {
        // L = Σ y ⊙ R with a fixed random R, so every output element's gradient is distinct.
        let mut rng = Rng::seed(99);
        let r: Vec<f32> = (0..y.elem_count()).map(|_| rng.standard_normal()).collect();
        let r = Tensor::from_vec(r, y.shape())?.to(device)?;
        let g = y.mul(&r)?.sum_all()?.backward()?;
        for (k, ((leaf, _), input)) in placed.iter().zip(&case.inputs).enumerate() {
            if input.grad {
                let zeros = leaf.zeros_like()?;
                grads[k] = Some(unplace(g.get(leaf).unwrap_or(&zeros), input, layout)?);
            }
        }
    }
    Ok(Outcome { shape: y.shape().to_vec(), output: y.to_vec(), grads })
}

/// The first element where `got` and `want` differ by more than rounding, if any.
fn mismatch(got: &[f32], want: &[f32]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} values, the CPU gave {}", got.len(), want.len()));
    }
    got.iter().zip(want).enumerate().find_map(|(i, (&g, &w))| {
        let same = (g.is_nan() && w.is_nan()) || (g - w).abs() <= 1e-5 + 1e-4 * w.abs();
        (!same).then(|| format!("element {i}: {g} where the CPU gave {w}"))
    })
}

fn compare(got: &Outcome, want: &Outcome) -> Option<String> {
    if got.shape != want.shape {
        return Some(format!("shape {:?} where the CPU gave {:?}", got.shape, want.shape));
    }
    if let Some(m) = mismatch(&got.output, &want.output) {
        return Some(format!("output {m}"));
    }
    for (k, (g, w)) in got.grads.iter().zip(&want.grads).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => {
                if let Some(m) = mismatch(g, w) {
                    return Some(format!("gradient of input {k}: {m}"));
                }
            }
            (None, None) => {}
            _ => return Some(format!("gradient of input {k} present on one side only")),
        }
    }
    None
}

fn win(kernel: usize, stride: usize, padding: usize, dilation: usize) -> Window {
    Window { kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2], dilation: [dilation; 2] }
}

/// Every op of the kernel set, with inputs that exercise broadcasting and every axis.
#[allow(clippy::vec_init_then_push)] // one push per case reads as a list, with comments between
fn cases() -> Vec<Case> {
    let mut rng = Rng::seed(2024);
    let r = &mut rng;
    let mut c = Vec::new();
    // Unary kernels.
    c.push(case("affine", vec![normal(&[3, 5], r)], |x| x[0].affine(1.5, -0.25)));
    // An in-place copy from another tensor (laid out three ways) into a view of a wider one.
    let values = normal(&[5, 4], r).values;
    c.push(case("copy_from into a view", vec![fixed(&values, &[5, 4])], |x| {
        let out = Tensor::full_on(&[5, 8], 0.5, x[0].device())?;
        out.narrow(1, 2, 4)?.copy_from(&x[0])?;
        Ok(out)
    }));
    c.push(case("exp", vec![normal(&[3, 5], r)], |x| x[0].exp()));
    c.push(case("log", vec![positive(&[3, 5], r)], |x| x[0].log()));
    c.push(case("sqrt", vec![positive(&[3, 5], r)], |x| x[0].sqrt()));
    c.push(case("powf", vec![positive(&[3, 5], r)], |x| x[0].powf(1.7)));
    c.push(case("abs", vec![normal(&[3, 5], r)], |x| x[0].abs()));
    c.push(case("sign", vec![fixed(&[-2.0, 0.0, 3.0, -0.5, 1.0, 0.0], &[2, 3])], |x| x[0].sign()));
    c.push(case("clamp", vec![normal(&[3, 5], r)], |x| x[0].clamp(-0.5, 0.7)));
    c.push(case("step", vec![normal(&[3, 5], r)], |x| x[0].step()));
    c.push(case("sigmoid", vec![normal(&[3, 5], r)], |x| x[0].sigmoid()));
    c.push(case("tanh", vec![normal(&[3, 5], r)], |x| x[0].tanh()));
    c.push(case("relu", vec![normal(&[3, 5], r)], |x| x[0].relu()));
    c.push(case("leaky_relu", vec![normal(&[3, 5], r)], |x| x[0].leaky_relu(0.1)));
    c.push(case("sin", vec![normal(&[3, 5], r)], |x| x[0].sin()));
    c.push(case("cos", vec![normal(&[3, 5], r)], |x| x[0].cos()));
    c.push(case("log1p", vec![positive(&[3, 5], r)], |x| x[0].log1p()));
    c.push(case("expm1", vec![normal(&[3, 5], r)], |x| x[0].expm1()));
    c.push(case("erf", vec![normal(&[3, 5], r)], |x| x[0].erf()));
    c.push(case("gelu", vec![normal(&[3, 5], r)], |x| x[0].gelu()));
    c.push(case("silu", vec![normal(&[3, 5], r)], |x| x[0].silu()));
    c.push(case("elu", vec![normal(&[3, 5], r)], |x| x[0].elu(1.0)));
    c.push(case("softplus", vec![normal(&[3, 5], r)], |x| x[0].softplus()));
    let halves = fixed(&[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 1.2, -1.7, 0.0, 3.999], &[2, 5]);
    c.push(case("floor", vec![halves.clone()], |x| x[0].floor()));
    c.push(case("ceil", vec![halves.clone()], |x| x[0].ceil()));
    c.push(case("round", vec![halves], |x| x[0].round()));
    // Binary kernels, with broadcasting along either side.
    c.push(case("add", vec![normal(&[4, 3], r), normal(&[3], r)], |x| x[0].add(&x[1])));
    c.push(case("sub", vec![normal(&[4, 1], r), normal(&[4, 3], r)], |x| x[0].sub(&x[1])));
    c.push(case("mul", vec![normal(&[2, 4, 3], r), normal(&[4, 3], r)], |x| x[0].mul(&x[1])));
    c.push(case("div", vec![normal(&[4, 3], r), positive(&[4, 3], r)], |x| x[0].div(&x[1])));
    c.push(case("maximum", vec![normal(&[4, 3], r), normal(&[4, 3], r)], |x| x[0].maximum(&x[1])));
    c.push(case("minimum", vec![normal(&[4, 3], r), normal(&[1, 3], r)], |x| x[0].minimum(&x[1])));
    c.push(case("pow", vec![positive(&[4, 3], r), normal(&[3], r)], |x| x[0].pow(&x[1])));
    for op in [CmpOp::Eq, CmpOp::Ne, CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge] {
        let a = fixed(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        let b = fixed(&[1., 5., 3., 0., 5., 9.], &[2, 3]);
        c.push(case(op.name(), vec![a, b], move |x| x[0].compare(&x[1], op)));
    }
    let cond = fixed(&[1., 0., 0., 1., 1., 0., 1., 0., 0., 1., 0., 1.], &[4, 3]);
    c.push(case("where_cond", vec![cond, normal(&[4, 3], r), normal(&[3], r)], |x| x[0].where_cond(&x[1], &x[2])));
    // Reductions over every axis, and over all.
    for dim in 0..3 {
        c.push(case(&format!("sum dim {dim}"), vec![normal(&[3, 4, 5], r)], move |x| x[0].sum(dim, dim == 1)));
        c.push(case(&format!("max dim {dim}"), vec![normal(&[3, 4, 5], r)], move |x| x[0].max(dim, false)));
        c.push(case(&format!("min dim {dim}"), vec![normal(&[3, 4, 5], r)], move |x| x[0].min(dim, true)));
        c.push(case(&format!("argmax dim {dim}"), vec![normal(&[3, 4, 5], r)], move |x| x[0].argmax(dim, false)));
        c.push(case(&format!("argmin dim {dim}"), vec![normal(&[3, 4, 5], r)], move |x| x[0].argmin(dim, false)));
    }
    // Long reductions down columns (a bias's gradient: a GPU's block per 32 neighbouring
    // outputs) and along rows (a block per output).
    c.push(case("sum over 100 rows", vec![normal(&[100, 40], r)], |x| x[0].sum(0, false)));
    c.push(case("argmax over 100 rows", vec![normal(&[100, 40], r)], |x| x[0].argmax(0, false)));
    c.push(case("max along 100 columns", vec![normal(&[3, 100], r)], |x| x[0].max(1, false)));
    c.push(case("sum_all", vec![normal(&[3, 4, 5], r)], |x| x[0].sum_all()));
    // Sums over few long lanes: on a GPU, cut into pieces a block each, then added up. Of
    // positive values: a sum of 20,000 normal values can cancel to near 0, where the CPU's
    // f32 sum can be off by more than the tolerance (one such column was 4e-4 from the GPU's,
    // whose pieces are summed in f64 and rounded once each: off by 2e-5 at most there).
    c.push(case("sum along 20,000 columns", vec![probability(&[3, 20_000], r)], |x| x[0].sum(1, false)));
    c.push(case("sum over 20,000 rows", vec![probability(&[20_000, 5], r)], |x| x[0].sum(0, false)));
    c.push(case("sum_all of 50,000", vec![probability(&[50_000], r)], |x| x[0].sum_all()));
    // Scalars stacked (a GPU gathers 64 a launch): 130 views of one buffer, in reverse.
    c.push(case("stack of 130 scalars", vec![normal(&[130], r)], |x| {
        let parts = (0..130).map(|i| x[0].narrow(0, 129 - i, 1)?.reshape(&[])).collect::<Result<Vec<_>>>()?;
        Tensor::stack(&parts.iter().collect::<Vec<_>>(), 0)
    }));
    c.push(case("mean", vec![normal(&[3, 4], r)], |x| x[0].mean(1, false)));
    c.push(case("softmax", vec![normal(&[3, 6], r)], |x| x[0].softmax(1)));
    c.push(case("softmax dim 0", vec![normal(&[3, 6], r)], |x| x[0].softmax(0)));
    c.push(case("log_softmax", vec![normal(&[3, 6], r)], |x| x[0].log_softmax(1)));
    // Composite ops whose pieces (index tables, triangular and resampling matrices) are made
    // on the host and moved to the device.
    c.push(case("cumsum", vec![normal(&[3, 5], r)], |x| x[0].cumsum(1)));
    c.push(case("prod", vec![normal(&[3, 5], r)], |x| x[0].prod(1, false)));
    c.push(case("logsumexp", vec![normal(&[3, 5], r)], |x| x[0].logsumexp(1, false)));
    c.push(case("norm", vec![normal(&[3, 5], r)], |x| x[0].norm(2.0)));
    c.push(case("sort", vec![normal(&[3, 5], r)], |x| Ok(x[0].sort(1, true)?.0)));
    c.push(case("roll and flip", vec![normal(&[3, 5], r)], |x| x[0].roll(2, 1)?.flip(&[0])));
    c.push(case("pad reflect", vec![normal(&[3, 5], r)], |x| x[0].pad_with(1, 2, 2, sinapse::PadMode::Reflect)));
    c.push(case("tril", vec![normal(&[3, 5], r)], |x| x[0].tril(0)));
    c.push(case("adaptive_avg_pool2d", vec![normal(&[1, 2, 5, 7], r)], |x| x[0].adaptive_avg_pool2d([2, 3])));
    c.push(case("upsample_bilinear2d", vec![normal(&[1, 2, 3, 4], r)], |x| x[0].upsample_bilinear2d([5, 7], false)));
    c.push(case("upsample_nearest2d", vec![normal(&[1, 2, 3, 4], r)], |x| x[0].upsample_nearest2d([6, 8])));
    c.push(case("conv_transpose2d", vec![normal(&[2, 3, 3, 4], r), normal(&[3, 2, 3, 3], r)], |x| {
        x[0].conv_transpose2d(&x[1], None, [2, 2], [1, 1], [1, 0], [1, 1])
    }));
    c.push(case("attention", vec![normal(&[2, 3, 4], r), normal(&[2, 5, 4], r), normal(&[2, 5, 3], r)], |x| {
        Ok(sinapse::nn::scaled_dot_product_attention(&x[0], &x[1], &x[2], None, true)?.0)
    }));
    // Matrix products: 2-D, batched, broadcast batch axes, vectors; the dense layer's `linear`.
    c.push(case("matmul", vec![normal(&[4, 5], r), normal(&[5, 3], r)], |x| x[0].matmul(&x[1])));
    c.push(case("matmul batched", vec![normal(&[2, 4, 5], r), normal(&[2, 5, 3], r)], |x| x[0].matmul(&x[1])));
    c.push(case("matmul broadcast", vec![normal(&[3, 1, 4, 5], r), normal(&[2, 5, 3], r)], |x| x[0].matmul(&x[1])));
    c.push(case("matmul vector", vec![normal(&[4, 5], r), normal(&[5], r)], |x| x[0].matmul(&x[1])));
    c.push(case("linear", vec![normal(&[4, 5], r), normal(&[3, 5], r), normal(&[3], r)], |x| {
        x[0].linear(&x[1], Some(&x[2]))
    }));
    c.push(case("linear_relu", vec![normal(&[4, 5], r), normal(&[3, 5], r), normal(&[3], r)], |x| {
        x[0].linear_relu(&x[1], &x[2])
    }));
    // More rows than a GPU block's thread rows and a part-full last group of 32 columns; the
    // gradient reaches the layer through a transpose (strided).
    c.push(case(
        "linear_relu 70x40, read transposed",
        vec![normal(&[70, 6], r), normal(&[40, 6], r), normal(&[40], r)],
        |x| x[0].linear_relu(&x[1], &x[2])?.t(),
    ));
    // As many rows as a GPU's one-launch layer takes, more terms than a warp's 32 lanes, and
    // columns that leave its last block part full.
    c.push(case("linear_relu 8x70 to 20", vec![normal(&[8, 70], r), normal(&[20, 70], r), normal(&[20], r)], |x| {
        x[0].linear_relu(&x[1], &x[2])
    }));
    c.push(case("linear without bias", vec![normal(&[1, 5], r), normal(&[3, 5], r)], |x| x[0].linear(&x[1], None)));
    // Views and copies.
    c.push(case("reshape", vec![normal(&[3, 4], r)], |x| x[0].reshape(&[2, 6])));
    c.push(case("transpose", vec![normal(&[3, 4], r)], |x| x[0].transpose(0, 1)?.contiguous()));
    c.push(case("permute", vec![normal(&[2, 3, 4], r)], |x| x[0].permute(&[2, 0, 1])?.contiguous()));
    c.push(case("narrow", vec![normal(&[3, 6], r)], |x| x[0].narrow(1, 2, 3)));
    c.push(case("unsqueeze", vec![normal(&[3, 4], r)], |x| x[0].unsqueeze(1)?.squeeze(1)?.unsqueeze(0)));
    c.push(case("broadcast_to", vec![normal(&[3, 1], r)], |x| x[0].broadcast_to(&[2, 3, 4])));
    c.push(case("to same device", vec![normal(&[3, 4], r)], |x| x[0].to(x[0].device())?.mul_scalar(2.0)));
    // Indexing.
    c.push(case("index_select", vec![normal(&[5, 3], r), indices(&[7], 5, r)], |x| x[0].index_select(0, &x[1])));
    c.push(case("index_select dim 1", vec![normal(&[3, 5], r), indices(&[4], 5, r)], |x| x[0].index_select(1, &x[1])));
    c.push(case("index_add", vec![normal(&[5, 3], r), indices(&[4], 5, r), normal(&[4, 3], r)], |x| {
        x[0].index_add(0, &x[1], &x[2])
    }));
    c.push(case("gather", vec![normal(&[4, 5], r), indices(&[4, 3], 5, r)], |x| x[0].gather(1, &x[1])));
    c.push(case("gather dim 0", vec![normal(&[4, 5], r), indices(&[3, 5], 4, r)], |x| x[0].gather(0, &x[1])));
    c.push(case("scatter_add", vec![normal(&[4, 5], r), indices(&[4, 3], 5, r), normal(&[4, 3], r)], |x| {
        x[0].scatter_add(1, &x[1], &x[2])
    }));
    c.push(case("cat", vec![normal(&[2, 3], r), normal(&[4, 3], r)], |x| Tensor::cat(&[&x[0], &x[1]], 0)));
    c.push(case("cat dim 1", vec![normal(&[2, 3], r), normal(&[2, 2], r)], |x| Tensor::cat(&[&x[0], &x[1]], 1)));
    c.push(case("stack", vec![normal(&[2, 3], r), normal(&[2, 3], r)], |x| Tensor::stack(&[&x[0], &x[1]], 1)));
    c.push(case("pad", vec![normal(&[3, 4], r)], |x| x[0].pad(1, 2, 1, -0.5)));
    c.push(case("pad dim 0", vec![normal(&[3, 4], r)], |x| x[0].pad(0, 0, 2, 0.0)));
    // Convolution and pooling.
    c.push(case("im2col", vec![normal(&[2, 3, 5, 6], r)], |x| x[0].im2col(win(3, 2, 1, 1), 0.0)));
    c.push(case("col2im", vec![normal(&[3 * 9, 2 * 3 * 3], r)], |x| x[0].col2im([2, 3, 5, 6], win(3, 2, 1, 1))));
    c.push(case("conv2d", vec![normal(&[2, 3, 7, 6], r), normal(&[4, 3, 3, 3], r), normal(&[4], r)], |x| {
        x[0].conv2d(&x[1], Some(&x[2]), [1, 1], [0, 0], [1, 1])
    }));
    c.push(case("conv2d strided", vec![normal(&[2, 3, 9, 8], r), normal(&[4, 3, 3, 2], r)], |x| {
        x[0].conv2d(&x[1], None, [2, 1], [1, 2], [2, 1])
    }));
    // One op on the CPU (an odd output width: a column no window covers), two elsewhere.
    c.push(case("conv2d_max_pool2", vec![normal(&[2, 3, 8, 9], r), normal(&[4, 3, 3, 3], r), normal(&[4], r)], |x| {
        x[0].conv2d_max_pool2(&x[1], Some(&x[2]), [1, 1])
    }));
    c.push(case(
        "conv2d_max_pool2_relu",
        vec![normal(&[2, 3, 8, 9], r), normal(&[4, 3, 3, 3], r), normal(&[4], r)],
        |x| x[0].conv2d_max_pool2_relu(&x[1], Some(&x[2]), [1, 1]),
    ));
    // On a GPU, the product's output pooled in place, channel-major: without a bias, and
    // with each image's gradient coming back in that layout.
    c.push(case("conv2d_max_pool2 without a bias", vec![normal(&[3, 2, 6, 7], r), normal(&[5, 2, 3, 3], r)], |x| {
        x[0].conv2d_max_pool2(&x[1], None, [1, 1])
    }));
    c.push(case("max_pool2d of channel-major images", vec![normal(&[3, 2, 6, 8], r)], |x| {
        x[0].permute(&[1, 0, 2, 3])?.max_pool2d([2, 2], [2, 2], [0, 0])
    }));
    c.push(case("conv1d", vec![normal(&[2, 3, 9], r), normal(&[4, 3, 3], r), normal(&[4], r)], |x| {
        x[0].conv1d(&x[1], Some(&x[2]), 2, 1, 1)
    }));
    // The fused LSTM layer: on the CPU, 17 rows run as blocks on different threads; on a GPU,
    // the trait's step-by-step recurrence.
    c.push(case(
        "lstm",
        vec![
            normal(&[3, 17, 4], r),
            normal(&[12, 4], r),
            normal(&[12, 3], r),
            normal(&[12], r),
            normal(&[12], r),
            normal(&[17, 3], r),
            normal(&[17, 3], r),
        ],
        |x| x[0].lstm(&x[1], &x[2], &x[3], &x[4], &x[5], &x[6]),
    ));
    c.push(case("max_pool2d", vec![normal(&[2, 3, 6, 8], r)], |x| x[0].max_pool2d([2, 2], [2, 2], [0, 0])));
    c.push(case("max_pool2d padded", vec![normal(&[2, 3, 7, 5], r)], |x| x[0].max_pool2d([3, 2], [2, 1], [1, 1])));
    c.push(case("max_pool2d_relu padded", vec![normal(&[2, 3, 7, 5], r)], |x| {
        x[0].max_pool2d_relu([3, 2], [2, 1], [1, 1])
    }));
    c.push(case("avg_pool2d", vec![normal(&[2, 3, 6, 6], r)], |x| x[0].avg_pool2d([3, 3], [2, 2], [1, 1])));
    // Losses (their own kernels, and compositions).
    c.push(case("cross_entropy", vec![normal(&[4, 5], r), indices(&[4], 5, r)], |x| loss::cross_entropy(&x[0], &x[1])));
    // More logits than a GPU's one-block kernel takes (65,536): the composed ops there.
    c.push(case("cross_entropy 70,000 logits", vec![normal(&[700, 100], r), indices(&[700], 100, r)], |x| {
        loss::cross_entropy(&x[0], &x[1])
    }));
    c.push(case("mse", vec![normal(&[4, 3], r), normal(&[4, 3], r)], |x| loss::mse(&x[0], &x[1])));
    c.push(case("binary_cross_entropy", vec![probability(&[4, 3], r), probability(&[4, 3], r)], |x| {
        loss::binary_cross_entropy(&x[0], &x[1])
    }));
    c.push(case("binary_cross_entropy_with_logits", vec![normal(&[4, 3], r), probability(&[4, 3], r)], |x| {
        loss::binary_cross_entropy_with_logits(&x[0], &x[1])
    }));
    c
}

/// The parameters of the optimizer check: more than one launch holds on a GPU (16), one
/// empty, one spanning two of a launch's blocks (8192 values each), the rest small.
const OPTIMIZER_SHAPES: [&[usize]; 19] = [
    &[3, 4],
    &[9000],
    &[0, 3],
    &[5],
    &[2, 3],
    &[1],
    &[4, 4],
    &[7],
    &[2, 2],
    &[3],
    &[6, 2],
    &[1, 1],
    &[8],
    &[2, 5],
    &[4],
    &[3, 3],
    &[2],
    &[5, 2],
    &[6],
];

/// The optimizers, each run for three steps from the same parameters and gradients. Parameter
/// `k` has no gradient at step `s` when `k + s` is a multiple of 4, so that the parameters'
/// step counts (and Adam's bias corrections, SGD's first step) differ within one update.
fn optimizer_outcome(which: &str, device: Device, layout: Layout) -> Result<Vec<f32>> {
    optimizer_outcome_on(which, &|_| device, layout)
}

/// [`optimizer_outcome`] with parameter `k` on `device_of(k)`.
fn optimizer_outcome_on(which: &str, device_of: &dyn Fn(usize) -> Device, layout: Layout) -> Result<Vec<f32>> {
    let mut rng = Rng::seed(7);
    let params = OPTIMIZER_SHAPES
        .iter()
        .enumerate()
        .map(|(k, shape)| {
            let w0 = normal(shape, &mut rng);
            Ok(Tensor::from_vec(w0.values, &w0.shape)?.to(device_of(k))?.set_requires_grad(true))
        })
        .collect::<Result<Vec<Tensor>>>()?;
    // "… staged": the numbers that change per step read from device memory, as in a graph.
    let (which, staged) = match which.strip_suffix(" staged") {
        Some(base) => (base, true),
        None => (which, false),
    };
    let list = params.clone();
    let mut opt: Box<dyn Optimizer> = match which {
        "sgd" => Box::new(Sgd::new(list, 0.1)?),
        "sgd nesterov" => Box::new(Sgd::with_options(list, 0.1, 0.9, true, 0.01)?),
        "adam" => Box::new(Adam::new(list, 0.01)?),
        "adamw" => Box::new(AdamW::new(list, 0.01)?),
        "rmsprop momentum" => Box::new(RmsProp::with_options(list, 0.01, 0.9, 1e-8, 0.5, 0.01)?),
        other => panic!("unknown optimizer {other}"),
    };
    if staged {
        opt.set_step_mode(StepMode::Staged)?;
    }
    for step in 0..3 {
        let mut grads = Gradients::default();
        for (k, p) in params.iter().enumerate() {
            let g = normal(p.shape(), &mut rng);
            if (k + step) % 4 != 0 {
                let (_, view) = place(&Input { grad: false, ..g }, device_of(k), layout)?;
                grads.insert(p, view);
            }
        }
        opt.step(&grads)?;
    }
    Ok(params.iter().flat_map(|p| p.to_vec()).collect())
}

/// A NCCL communicator of one rank on `device` runs its real collectives (a sum over one rank
/// is the input; a broadcast from it too), through the bucketed paths training uses: `Err`
/// when NCCL cannot be started (no library), else the first wrong value.
fn nccl_check(device: Device) -> Result<Option<String>> {
    let comm = sinapse::dist::Communicator::local().nccl(device)?;
    let mut rng = Rng::seed(11);
    let a = Tensor::rand_normal(&[3, 5], 0.0, 1.0, &mut rng)?;
    let b = Tensor::rand_normal(&[7], 0.0, 1.0, &mut rng)?;
    let sums = comm.all_reduce_sum(&[a.to(device)?, b.to(device)?])?;
    for (got, want) in sums.iter().zip([&a, &b]) {
        if got.shape() != want.shape() || got.device() != device {
            return Ok(Some(format!("all-reduce gave {:?} on {}", got.shape(), got.device())));
        }
        if let Some(p) = mismatch(&got.to_vec(), &want.to_vec()) {
            return Ok(Some(format!("all-reduce: {p}")));
        }
    }
    let target = Tensor::zeros_on(&[3, 5], device)?;
    comm.broadcast(std::slice::from_ref(&target), 0)?;
    if target.to_vec().iter().any(|&v| v != 0.0) {
        return Ok(Some("broadcast from rank 0 changed rank 0's values".into()));
    }
    let p = a.to(device)?;
    let mut grads = Gradients::default();
    grads.insert(&p, b.narrow(0, 0, 3)?.unsqueeze(1)?.broadcast_to(&[3, 5])?.to(device)?);
    let extras =
        sinapse::dist::all_reduce_gradients(&comm, std::slice::from_ref(&p), &mut grads, 0.5, &[Tensor::scalar(4.0)])?;
    let want: Vec<f32> = b.narrow(0, 0, 3)?.to_vec().iter().flat_map(|&v| [v * 0.5; 5]).collect();
    if let Some(problem) = mismatch(&grads.get(&p).expect("a gradient").to_vec(), &want) {
        return Ok(Some(format!("gradients: {problem}")));
    }
    Ok((extras[0].to_vec() != [4.0]).then(|| format!("extras came back as {:?}", extras[0].to_vec())))
}

const OPTIMIZERS: [&str; 8] = [
    "sgd",
    "sgd nesterov",
    "adam",
    "adamw",
    "rmsprop momentum",
    "sgd nesterov staged",
    "adamw staged",
    "rmsprop momentum staged",
];

/// Training with the step captured into a CUDA graph on `device` against training eagerly
/// there, from the same weights on the same batches (Adam with a per-batch schedule, so the
/// staged numbers change every replay; a short last batch, run eagerly between replays):
/// the first difference, or a note that the graph was never used.
fn graph_check(device: Device) -> Result<Option<String>> {
    use sinapse::nn::{Linear, Module, Relu, Sequential};
    use sinapse::optim::{LrSchedule, Schedule};
    use sinapse::train::{fit, FitConfig, Silent, Task};
    let mut rng = Rng::seed(5);
    let x = Tensor::rand_normal(&[88, 6], 0.0, 1.0, &mut rng)?;
    let y = Tensor::from_vec((0..88).map(|i| (i % 3) as f32).collect(), &[88])?;
    let data = sinapse::data::Dataset::new(x, y)?;
    let cfg = FitConfig {
        epochs: 3,
        batch_size: 16,
        schedule: Schedule::per_batch(LrSchedule::Cosine { t_max: 18, eta_min: 1e-4 }, 2),
        ..FitConfig::new(Task::Classification { classes: 3 })
    };
    // The training set on the host (the graph copies each batch in) or on the device (the
    // graph gathers each batch's rows itself).
    let on_device = data.to(device)?;
    let train = |graph: bool, data: &sinapse::data::Dataset| -> Result<(Vec<f32>, Vec<f32>, Vec<String>)> {
        let mut rng = Rng::seed(9);
        let model = Sequential::new().add(Linear::new(6, 16, &mut rng)?).add(Relu).add(Linear::new(16, 3, &mut rng)?);
        model.to(device)?;
        let mut opt = Adam::new(model.parameters(), 0.01)?;
        let history = fit(&model, &mut opt, data, None, &FitConfig { cuda_graph: graph, ..cfg.clone() }, &mut Silent)?;
        let weights = model.parameters().iter().flat_map(|p| p.to_vec()).collect();
        let losses = history.records.iter().map(|r| r.train_loss).collect();
        Ok((weights, losses, history.notes))
    };
    let (eager_w, eager_l, _) = train(false, &data)?;
    let (graph_w, graph_l, notes) = train(true, &data)?;
    let (rows_w, rows_l, rows_notes) = train(true, &on_device)?;
    for notes in [&notes, &rows_notes] {
        if !notes.iter().any(|n| n.contains("captured after")) {
            return Ok(Some(format!("the graph was not used: {notes:?}")));
        }
    }
    if let Some(p) = mismatch(&rows_l, &eager_l).or_else(|| mismatch(&rows_w, &eager_w)) {
        return Ok(Some(format!("with the training set on {device}, the graph's losses or weights: {p}")));
    }
    // Dropout draws its masks on the host: found while the step is recorded, and training
    // goes on eagerly, saying so.
    let mut rng = Rng::seed(9);
    let dropped = Sequential::new().add(Linear::new(6, 16, &mut rng)?).add(sinapse::nn::Dropout::new(0.2, &mut rng)?);
    dropped.to(device)?;
    let mut opt = Adam::new(dropped.parameters(), 0.01)?;
    let regression = FitConfig { cuda_graph: true, ..FitConfig::new(Task::Regression) };
    let targets = sinapse::data::Dataset::new(data.x().clone(), Tensor::zeros(&[88, 16]))?;
    let history =
        fit(&dropped, &mut opt, &targets, None, &FitConfig { epochs: 1, batch_size: 16, ..regression }, &mut Silent)?;
    if !history.notes.iter().any(|n| n.contains("between the host and the GPU")) {
        return Ok(Some(format!("dropout's host masks were not noticed: {:?}", history.notes)));
    }
    if let Some(p) = mismatch(&graph_l, &eager_l) {
        return Ok(Some(format!("epoch losses: {p}")));
    }
    Ok(mismatch(&graph_w, &eager_w).map(|p| format!("weights after training: {p}")))
}

/// A tensor of 4 TiB on `device` (more than any GPU holds) is refused with an out-of-memory
/// error naming the bytes asked for, the bytes available and the device, and the device
/// works on after it.
fn memory_check(device: Device) -> Result<Option<String>> {
    let elems = 1usize << 40;
    let asked = 4u64 << 40;
    match Tensor::zeros_on(&[elems], device) {
        Ok(_) => return Ok(Some(format!("a tensor of {asked} bytes was made on {device}"))),
        Err(e @ sinapse::Error::OutOfMemory { .. }) => {
            let text = e.to_string();
            let sinapse::Error::OutOfMemory { bytes, available, device: on, .. } = e else { unreachable!() };
            if bytes != asked || available == 0 || available >= asked || on != device {
                return Ok(Some(format!("out of memory with {bytes} bytes asked, {available} available on {on}")));
            }
            if !text.contains("needs 4.4 TB") || !text.contains(&device.to_string()) {
                return Ok(Some(format!("the out-of-memory message names neither size nor device: {text}")));
            }
        }
        Err(e) => return Ok(Some(format!("another error than out of memory: {e}"))),
    }
    let after = Tensor::full_on(&[3], 2.5, device)?.try_to_vec()?;
    if after != [2.5; 3] {
        return Ok(Some(format!("after the refusal, a tensor on {device} read {after:?}")));
    }
    Ok(None)
}

/// The correct answers of `[4, 5]` and `[700, 100]` logits on `device` (a GPU's one-block
/// kernel, and the composed ops past its 65,536 values), as the CPU counts them, with about
/// half the labels at each row's largest logit, a tie and a NaN among them.
fn correct_count_check(device: Device) -> Result<Option<String>> {
    let mut rng = Rng::seed(90);
    for [rows, n] in [[4, 5], [700, 100]] {
        let mut x: Vec<f32> = (0..rows * n).map(|_| rng.standard_normal()).collect();
        x[n + 1] = f32::NAN; // row 1: the NaN is its argmax
        x[2 * n + 2] = 9.0; // row 2: a tie, the first wins
        x[2 * n + 3] = 9.0;
        let best = |i: usize| {
            let row = &x[i * n..(i + 1) * n];
            let nan = row.iter().position(|v| v.is_nan());
            nan.unwrap_or_else(|| (0..n).fold(0, |b, c| if row[c] > row[b] { c } else { b }))
        };
        let labels: Vec<f32> = (0..rows).map(|i| if i % 2 == 0 { best(i) } else { (i * 7) % n } as f32).collect();
        let logits = Tensor::from_vec(x.clone(), &[rows, n])?;
        let labels = Tensor::from_vec(labels, &[rows])?;
        let want = sinapse::train::metrics::correct_count(&logits, &labels)?;
        let got = sinapse::train::metrics::correct_count(&logits.to(device)?, &labels.to(device)?)?;
        if got != want || want < rows / 2 {
            return Ok(Some(format!("[{rows}, {n}] logits: {got} correct on {device}, {want} on the CPU")));
        }
    }
    Ok(None)
}

/// A class label that is not a class index, given to each loss that takes labels (and an
/// index out of range, given to `gather`), on `device`: the error, raised where the loss is
/// made on the CPU and at the next read on a GPU (its kernel finds the label), is the CPU's
/// word for word, for a batch small enough for a GPU's one-launch loss and for one past it
/// (70,000 logits, where the loss is composed of a gather and a sum); and the next loss,
/// with good labels, is right (the error was cleared).
fn bad_label_check(device: Device) -> Result<Option<String>> {
    type Pick = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let picks: [(&str, Pick); 4] = [
        ("cross_entropy", |x, c| loss::cross_entropy(x, c)),
        ("nll", |x, c| loss::nll(&x.log_softmax(1)?, c)),
        ("cross_entropy_smoothed", |x, c| loss::cross_entropy_smoothed(x, c, 0.1)),
        ("gather", |x, c| x.gather(1, &c.unsqueeze(1)?)?.sum_all()),
    ];
    // Made and read, after the gradient is queued (on a GPU the gradient's kernels meet the
    // label again; the first report is the one kept).
    let outcome = |pick: Pick, x: &Tensor, c: &Tensor| -> Result<f32> {
        let loss = pick(&x.set_requires_grad(true), c)?;
        loss.backward()?;
        loss.to_scalar()
    };
    for (rows, n, bad_row, bad) in [(3usize, 4usize, 1usize, 7.0f32), (70, 1000, 50, 1000.0), (3, 4, 2, 0.5)] {
        let logits = Tensor::from_vec(vec![0.5; rows * n], &[rows, n])?;
        let mut labels: Vec<f32> = (0..rows).map(|i| (i % n) as f32).collect();
        labels[bad_row] = bad;
        let labels = Tensor::from_vec(labels, &[rows])?;
        let good = Tensor::from_vec((0..rows).map(|i| ((i + 1) % n) as f32).collect(), &[rows])?;
        let (x, c, g) = (logits.to(device)?, labels.to(device)?, good.to(device)?);
        for (name, pick) in picks {
            let want = match outcome(pick, &logits, &labels) {
                Err(e) => e.to_string(),
                Ok(v) => return Ok(Some(format!("{name} took label {bad} among {n} classes on the CPU: {v}"))),
            };
            match outcome(pick, &x, &c) {
                Err(e) if e.to_string() == want => {}
                other => {
                    return Ok(Some(format!(
                        "{name}, label {bad} among {n} classes: {other:?} on {device}, `{want}` on the CPU"
                    )))
                }
            }
            let (got, want) = (outcome(pick, &x, &g)?, outcome(pick, &logits, &good)?);
            if (got - want).abs() > 1e-5 * want.abs().max(1.0) {
                return Ok(Some(format!("{name}, good labels after a bad one: {got} on {device}, {want} on the CPU")));
            }
        }
    }
    // Training on a set with a bad label (its loss read after several batches, on a GPU in
    // one read of them all): the fit fails with the CPU's error, and does not panic.
    let fit_on = |device: Device| -> Result<String> {
        use sinapse::nn::{Linear, Module};
        use sinapse::train::{fit, FitConfig, Silent, Task};
        let mut labels: Vec<f32> = (0..40).map(|i| (i % 3) as f32).collect();
        labels[29] = 3.0;
        let x = Tensor::rand_normal(&[40, 5], 0.0, 1.0, &mut Rng::seed(2))?;
        let data = sinapse::data::Dataset::new(x, Tensor::from_vec(labels, &[40])?)?.to(device)?;
        let model = Linear::new(5, 3, &mut Rng::seed(4))?;
        model.to(device)?;
        let mut opt = Sgd::new(model.parameters(), 0.1)?;
        let cfg = FitConfig { epochs: 1, batch_size: 8, ..FitConfig::new(Task::Classification { classes: 3 }) };
        match fit(&model, &mut opt, &data, None, &cfg, &mut Silent) {
            Ok(_) => Ok("no error".into()),
            Err(e) => Ok(e.to_string()),
        }
    };
    let (got, want) = (fit_on(device)?, fit_on(Device::Cpu)?);
    Ok((got != want).then(|| format!("training with label 3 of 3 classes: `{got}` on {device}, `{want}` on the CPU")))
}

/// An index out of range given to an `Embedding` captured in an `InferenceGraph` on `device`:
/// the wait after the replay fails with the CPU's error, word for word (the replay, not only
/// a launch, counts as a kernel that may have recorded one), and the next run, with good
/// indices, gives the CPU's rows.
fn graph_bad_index_check(device: Device) -> Result<Option<String>> {
    use sinapse::nn::{Embedding, InferenceGraph, Mode, Module};
    let table = Embedding::new(10, 4, &mut Rng::seed(3))?;
    let (bad, good) =
        (Tensor::from_vec(vec![1.0, 12.0, 2.0], &[1, 3])?, Tensor::from_vec(vec![9.0, 0.0, 4.0], &[1, 3])?);
    let want = match table.forward(&bad, Mode::Eval) {
        Err(e) => e.to_string(),
        Ok(_) => return Ok(Some("the CPU took index 12 of 10".into())),
    };
    let want_rows = table.forward(&good, Mode::Eval)?.to_vec();
    table.to(device)?;
    let mut graph = InferenceGraph::capture(&table, &[1, 3], device)?;
    // Whatever the capture queued is read here: the run's own report comes from its replay.
    sinapse::backend::synchronize(device)?;
    let _rows = graph.run(&bad.to(device)?)?;
    match sinapse::backend::synchronize(device) {
        Err(e) if e.to_string() == want => {}
        other => return Ok(Some(format!("index 12 of 10 in a replay: {other:?}, `{want}` on the CPU"))),
    }
    let rows = graph.run(&good.to(device)?)?.to_vec();
    Ok(mismatch(&rows, &want_rows).map(|p| format!("good indices after a bad one: {p}")))
}

/// A `Sequential` of `Linear`s that kept CPU copies of their weights for inference, then
/// moved to `device`, runs there (not from the CPU copies) and gives the CPU's values, on a
/// batch and on one row of mostly zeros (whose zeros the CPU skips); moved back to the CPU,
/// the same again. A move keeps each weight's storage and version, so only the device tells
/// a layer that its copy no longer applies.
fn moved_inference_check(device: Device) -> Result<Option<String>> {
    use sinapse::nn::{Linear, Mode, Module, Relu, Sequential};
    let mut rng = Rng::seed(11);
    let model = Sequential::new().add(Linear::new(6, 32, &mut rng)?).add(Relu).add(Linear::new(32, 24, &mut rng)?);
    // A batch, and one row of mostly zeros (which the CPU sums skipping its zeros).
    let inputs = [
        Tensor::rand_normal(&[8, 6], 0.0, 1.0, &mut rng)?,
        Tensor::from_vec(vec![0.0, 1.5, 0.0, 0.0, -0.7, 0.0], &[1, 6])?,
    ];
    let _off = sinapse::no_grad();
    let want: Vec<Vec<f32>> =
        inputs.iter().map(|x| Ok(model.forward(x, Mode::Eval)?.to_vec())).collect::<Result<_>>()?;
    model.to(device)?;
    for (x, want) in inputs.iter().zip(&want) {
        let got = model.forward(&x.to(device)?, Mode::Eval)?;
        if got.device() != device {
            return Ok(Some(format!("the output is on {}", got.device())));
        }
        if let Some(p) = mismatch(&got.to_vec(), want) {
            return Ok(Some(format!("on the device, {} rows: {p}", x.shape()[0])));
        }
    }
    model.to(Device::Cpu)?;
    for (x, want) in inputs.iter().zip(&want) {
        let back = model.forward(x, Mode::Eval)?.to_vec();
        if let Some(p) = mismatch(&back, want) {
            return Ok(Some(format!("moved back to the CPU, {} rows: {p}", x.shape()[0])));
        }
    }
    Ok(None)
}

/// A network's forward pass captured into a CUDA graph on `device` ([`InferenceGraph`]) gives
/// the eager pass's outputs on several inputs (a CNN with batch norm and an MLP; each input
/// copied in, one a strided view); after an optimizer step in place, the graph reads the new
/// weights; a wrong shape is refused, and so is a run with the model moved off the device
/// (moved back, a run gives the eager outputs or is refused).
fn inference_graph_check(device: Device) -> Result<Option<String>> {
    use sinapse::nn::{BatchNorm, Conv2d, Flatten, InferenceGraph, Linear, Mode, Module, Pool2d, Relu, Sequential};
    let mut rng = Rng::seed(13);
    let cnn = Sequential::new()
        .add(Conv2d::new(2, 4, [3, 3], &mut rng)?)
        .add(BatchNorm::new_2d(4)?)
        .add(Relu)
        .add(Pool2d::max([2, 2]))
        .add(Flatten)
        .add(Linear::new(4 * 3 * 3, 5, &mut rng)?);
    let mlp = Sequential::new().add(Linear::new(12, 32, &mut rng)?).add(Relu).add(Linear::new(32, 7, &mut rng)?);
    // Input and output of many blocks of the graph's copies.
    let big = Linear::new(784, 700, &mut rng)?;
    let models: [(&str, &dyn Module, Vec<usize>); 3] =
        [("cnn", &cnn, vec![3, 2, 8, 8]), ("mlp", &mlp, vec![1, 12]), ("wide linear", &big, vec![100, 784])];
    for (name, model, shape) in models {
        model.to(device)?;
        let mut graph = InferenceGraph::capture(model, &shape, device)?;
        let wide: Vec<usize> = shape.iter().map(|&d| d * 2).collect();
        let taller: Vec<usize> = shape.iter().enumerate().map(|(k, &d)| if k == 0 { 2 * d } else { d }).collect();
        let inputs = [
            Tensor::rand_normal(&shape, 0.0, 1.0, &mut rng)?.to(device)?,
            Tensor::rand_normal(&shape, 0.0, 1.0, &mut rng)?,
            // A strided view on the device.
            (0..shape.len()).try_fold(Tensor::rand_normal(&wide, 0.0, 1.0, &mut rng)?.to(device)?, |t, k| {
                t.narrow(k, 1, shape[k])
            })?,
            // Row-major on the device from an offset (the replay reads it in place).
            Tensor::rand_normal(&taller, 0.0, 1.0, &mut rng)?.to(device)?.narrow(0, shape[0], shape[0])?,
        ];
        // The model's eager output for `x`, on the device.
        let eager = |x: &Tensor| -> Result<Tensor> {
            let _off = sinapse::no_grad();
            model.forward(&x.to(device)?, Mode::Eval)
        };
        let check = |graph: &mut InferenceGraph, when: &str| -> Result<Option<String>> {
            for (k, x) in inputs.iter().enumerate() {
                let got = graph.run(x)?;
                let want = eager(x)?;
                if got.device() != device || got.shape() != want.shape() {
                    return Ok(Some(format!("{name} {when}: {:?} on {}", got.shape(), got.device())));
                }
                if let Some(p) = mismatch(&got.to_vec(), &want.to_vec()) {
                    return Ok(Some(format!("{name} {when}, input {k}: {p}")));
                }
            }
            Ok(None)
        };
        if let Some(p) = check(&mut graph, "as captured")? {
            return Ok(Some(p));
        }
        // Runs queued back to back, read after the last: each replay reads and writes the
        // tensors its call named (on a GPU, later calls rename the copies before it has run;
        // the emulated GPU runs each replay as it is queued).
        let rounds: Vec<&Tensor> = inputs.iter().cycle().take(3 * inputs.len()).collect();
        let queued: Vec<Tensor> = rounds.iter().map(|x| graph.run(x)).collect::<Result<_>>()?;
        for (k, (x, got)) in rounds.iter().zip(&queued).enumerate() {
            if let Some(p) = mismatch(&got.to_vec(), &eager(x)?.to_vec()) {
                return Ok(Some(format!("{name} queued back to back, run {k}: {p}")));
            }
        }
        // A step in place: the graph reads the parameters where they are.
        let x = inputs[0].clone();
        let y = model.forward(&x, Mode::Train)?;
        let loss = y.mul(&y)?.mean_all()?;
        let mut opt = Sgd::new(model.parameters(), 0.5)?;
        opt.step(&loss.backward()?)?;
        if let Some(p) = check(&mut graph, "after an optimizer step")? {
            return Ok(Some(p));
        }
        let wrong = Tensor::zeros_on(&wide, device)?;
        if graph.run(&wrong).is_ok() {
            return Ok(Some(format!("{name}: an input of {wide:?} was run by a graph of {shape:?}")));
        }
        // Off the device, the graph's reads would be stale: refused.
        model.to(Device::Cpu)?;
        match graph.run(&inputs[0]) {
            Ok(_) => return Ok(Some(format!("{name}: run with the model moved off {device}"))),
            Err(e) if e.to_string().contains("moved since the capture") => {}
            Err(e) => return Ok(Some(format!("{name}: after a move, {e}"))),
        }
        // Back: each tensor refused unless it is where the graph reads it (the block cache
        // may well hand each its old block again).
        model.to(device)?;
        match check(&mut graph, "after a move off the device and back") {
            Err(e) if e.to_string().contains("moved since the capture") => {}
            Err(e) => return Ok(Some(format!("{name}: after a move back, {e}"))),
            Ok(problem) => {
                if problem.is_some() {
                    return Ok(problem);
                }
            }
        }
    }
    Ok(None)
}

/// The bundled MNIST specs' networks (MLP, CNN, CNN with batch norm, LSTM) trained with SGD
/// for one short epoch on `device` and on the CPU, from the same weights on the same batches
/// (SGD, not the specs' Adam: Adam's first steps turn a gradient's rounding near zero into a
/// step of the whole learning rate, either way): the epoch's loss, the test loss and
/// accuracy, and the weights (read back from a checkpoint saved on the device and loaded on
/// the CPU) agree, and at most two test images change class; the MLP also with its step in a
/// CUDA graph. The first difference, if any.
///
/// Batch norm's gradient is a small difference of large terms, so its training drifts with
/// the order of sums: the CPU's AVX-512 and portable builds, run against each other, drifted
/// as far (1.weight[0] 0.11878 against 0.11914 after ten steps) as the emulated GPU from
/// the first; the portable build and the emulated GPU agreed to 7 digits. That network's
/// weights are not compared, and its losses within 1%.
fn end_to_end_check(device: Device) -> Result<Option<String>> {
    use sinapse::data::mnist;
    use sinapse::nn::Module;
    use sinapse::spec::ModelSpec;
    use sinapse::train::{evaluate, fit, Silent, Task};
    let data = mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k"))?;
    // Five full batches of the MLP's 128 (the graph is captured at the third) and a short one.
    let train = data.train.subset(&(0..648).collect::<Vec<_>>())?;
    let test = data.test.subset(&(0..200).collect::<Vec<_>>())?;
    let task = Task::Classification { classes: 10 };
    let scratch = Scratch::new()?;
    let specs = [
        ("mnist_mlp", include_str!("../../../models/mnist_mlp.toml"), true),
        ("mnist_cnn", include_str!("../../../models/mnist_cnn.toml"), false),
        ("mnist_cnn_bn", include_str!("../../../models/mnist_cnn_bn.toml"), false),
        ("mnist_lstm", include_str!("../../../models/mnist_lstm.toml"), false),
    ];
    let mut problem = None;
    for (name, text, graphed) in specs {
        let spec = ModelSpec::parse(text, std::path::Path::new(name))?;
        let cfg = sinapse::train::FitConfig { epochs: 1, ..spec.fit_config(task) };
        let run = |dev: Device, cuda_graph: bool| -> Result<(Vec<f32>, Vec<f32>)> {
            let model = spec.build_model(&[784], &task, &mut Rng::seed(0))?;
            model.to(dev)?;
            let mut opt = Sgd::new(model.parameters(), 0.05)?;
            let fit_cfg = sinapse::train::FitConfig { cuda_graph, ..cfg.clone() };
            let history = fit(&model, &mut opt, &train, None, &fit_cfg, &mut Silent)?;
            if cuda_graph && !history.notes.iter().any(|n| n.contains("captured after")) {
                return Err(sinapse::Error::InvalidArgument {
                    op: "test",
                    msg: format!("no graph: {:?}", history.notes),
                });
            }
            let eval = evaluate(&model, &test, &task, cfg.loss, 100)?;
            let path = scratch.0.join(format!("{name}-{}-{cuda_graph}.safetensors", dev.to_string().replace(':', "")));
            model.save(&path)?;
            let back = spec.build_model(&[784], &task, &mut Rng::seed(1))?;
            back.load(&path)?;
            let weights = back.parameters().iter().flat_map(|p| p.to_vec()).collect();
            Ok((vec![history.records[0].train_loss, eval.loss, eval.metric()], weights))
        };
        let (want, want_w) = run(Device::Cpu, false)?;
        for graph in [false, true] {
            if graph && !graphed {
                continue;
            }
            let (got, got_w) = run(device, graph)?;
            // Sums in another order, compounded over a few steps: a wrong term is far larger.
            let drift = if name == "mnist_cnn_bn" { 1e-2 } else { 1e-3 };
            let close = |g: &[f32], w: &[f32]| -> Option<String> {
                g.iter().zip(w).enumerate().find_map(|(i, (&g, &w))| {
                    ((g - w).abs() > 1e-4 + drift * w.abs()).then(|| format!("element {i}: {g} where the CPU gave {w}"))
                })
            };
            let what = if graph { format!("{name} (graph)") } else { name.to_string() };
            // A test image near a class boundary may go either way: at most two of them.
            let flipped = ((got[2] - want[2]).abs() * test.len() as f32).round();
            if let Some(p) = close(&got[..2], &want[..2]) {
                problem.get_or_insert(format!("{what}: train loss, test loss: {p}"));
            } else if flipped > 2.0 {
                problem.get_or_insert(format!("{what}: test accuracy {} where the CPU gave {}", got[2], want[2]));
            } else if let (false, Some(p)) = (name == "mnist_cnn_bn", close(&got_w, &want_w)) {
                problem.get_or_insert(format!("{what}: weights after training: {p}"));
            }
        }
    }
    Ok(problem)
}

/// What one steady training step of the `mlp` and `cnn` benchmarks (the bundled specs'
/// networks, SGD, batches of 128 and 64) queues on `device`, eager and with the step in a CUDA
/// graph, what one batch-1 `InferenceGraph` run of the MLP and a wait for it queue, and what
/// the MLP's eager batch-1 forward pass queues: printed, and held to exactly the counts in
/// `COUNTS` (launches bound these small networks on a GPU: a change that adds some fails
/// here, and one that saves some, or stops counting some, updates them). A step's count is
/// the difference between fits of 6 and 4 batches, halved (the graph is captured at the third batch in both,
/// and the losses are read at the epoch's end), so the one-off work of a fit cancels.
fn launch_check(device: Device) -> Result<Option<String>> {
    use sinapse::backend::{device_launches, LaunchCounts};
    use sinapse::data::mnist;
    use sinapse::nn::{InferenceGraph, Module};
    use sinapse::spec::ModelSpec;
    use sinapse::train::{fit, Silent, Task};
    /// Kernels, cuBLAS products, graph replays and host copies per step (per run for
    /// inference), by what is run.
    const COUNTS: [(&str, [f64; 4]); 6] = [
        ("mlp training step", [14.0, 8.0, 0.0, 1.0]),
        ("mlp (CUDA graph) training step", [1.0, 0.0, 1.0, 1.0]),
        ("cnn training step", [20.0, 8.0, 0.0, 1.0]),
        ("cnn (CUDA graph) training step", [1.0, 0.0, 1.0, 1.0]),
        ("mlp batch-1 inference graph run and wait", [0.0, 0.0, 1.0, 0.0]),
        ("mlp batch-1 eager forward", [3.0, 0.0, 0.0, 0.0]),
    ];
    let data = mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k"))?;
    let task = Task::Classification { classes: 10 };
    let counts = || {
        device_launches(device)
            .ok_or_else(|| sinapse::Error::InvalidArgument { op: "test", msg: format!("{device} counts no launches") })
    };
    let since = |a: LaunchCounts, b: LaunchCounts| {
        [
            b.kernels - a.kernels,
            b.products - a.products,
            b.graph_replays - a.graph_replays,
            b.host_copies - a.host_copies,
        ]
        .map(|c| c as f64)
    };
    let mut problem = None;
    let mut judge = |what: String, got: [f64; 4]| {
        println!(
            "device suite: launches per {what} on {device}: {} kernels, {} cuBLAS products, {} graph replays, {} host copies",
            got[0], got[1], got[2], got[3]
        );
        let want = COUNTS.iter().find(|(name, _)| *name == what).map(|(_, w)| *w);
        match want {
            Some(w) if got == w => {}
            Some(w) => {
                problem.get_or_insert(format!("{what}: {got:?} (kernels, products, replays, host copies), not {w:?}"));
            }
            None => {
                problem.get_or_insert(format!("{what}: no count to hold it to"));
            }
        }
    };
    let nets = [
        ("mlp", include_str!("../../../models/mnist_mlp.toml"), 128),
        ("cnn", include_str!("../../../models/mnist_cnn.toml"), 64),
    ];
    for (name, text, batch) in nets {
        let spec = ModelSpec::parse(text, std::path::Path::new(name))?;
        for graphed in [false, true] {
            let mut queued = Vec::new();
            for batches in [4, 6] {
                // On the device, as the benchmarks have it.
                let train = data.train.subset(&(0..batches * batch).collect::<Vec<_>>())?.to(device)?;
                let model = spec.build_model(&[784], &task, &mut Rng::seed(0))?;
                model.to(device)?;
                let mut opt = Sgd::new(model.parameters(), 0.05)?;
                let cfg = sinapse::train::FitConfig {
                    epochs: 1,
                    batch_size: batch,
                    cuda_graph: graphed,
                    ..spec.fit_config(task)
                };
                let before = counts()?;
                let history = fit(&model, &mut opt, &train, None, &cfg, &mut Silent)?;
                if graphed && !history.notes.iter().any(|n| n.contains("captured after")) {
                    return Ok(Some(format!("{name}: no graph: {:?}", history.notes)));
                }
                queued.push(since(before, counts()?));
            }
            let step: [f64; 4] = std::array::from_fn(|k| (queued[1][k] - queued[0][k]) / 2.0);
            judge(format!("{name}{} training step", if graphed { " (CUDA graph)" } else { "" }), step);
        }
        if name == "mlp" {
            let model = spec.build_model(&[784], &task, &mut Rng::seed(0))?;
            model.to(device)?;
            let mut graph = InferenceGraph::capture(&model, &[1, 784], device)?;
            let x = data.test.x().narrow(0, 0, 1)?.to(device)?;
            let before = counts()?;
            let _output = graph.run(&x)?;
            // The wait reads no error word: no kernel that can record a bad index ran.
            sinapse::backend::synchronize(device)?;
            judge(format!("{name} batch-1 inference graph run and wait"), since(before, counts()?));
            // A layer a launch: product, bias and ReLU together, for a few rows.
            let before = counts()?;
            let _output = {
                let _off = sinapse::no_grad();
                model.forward(&x, sinapse::nn::Mode::Eval)?
            };
            judge(format!("{name} batch-1 eager forward"), since(before, counts()?));
        }
    }
    Ok(problem)
}

/// A folder of this process's own (unique name, mode 700), removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("sinapse-devices-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| sinapse::Error::InvalidArgument { op: "test", msg: format!("{}: {e}", dir.display()) })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A layer that, each time it runs, has another thread put a tensor on `device`, and keeps
/// what that thread got.
struct SpawnsWork {
    device: Device,
    seen: std::sync::Mutex<Vec<std::result::Result<(), String>>>,
}

impl sinapse::nn::Parameters for SpawnsWork {
    fn visit_parameters(&self, _prefix: &str, _out: &mut Vec<(String, Tensor)>) {}
}

impl sinapse::nn::Module for SpawnsWork {
    fn forward(&self, x: &Tensor, _mode: sinapse::nn::Mode) -> Result<Tensor> {
        let other = std::thread::scope(|s| s.spawn(|| Tensor::zeros_on(&[4], self.device).map(drop)).join());
        let other =
            other.map_err(|_| sinapse::Error::InvalidArgument { op: "test", msg: "the thread panicked".into() })?;
        self.seen.lock().expect("not poisoned").push(other.map_err(|e| e.to_string()));
        x.relu()
    }

    fn describe(&self) -> String {
        "SpawnsWork".into()
    }
}

/// The kernel profile on `device`: while on, every launch counted is timed once under its
/// name and sizes (the spin kernel before each is neither counted nor listed), a graph's step
/// is captured and replayed untimed (an event there would fail the capture), and reading the
/// profile empties it; off, nothing is timed.
fn profile_check(device: Device) -> Result<Option<String>> {
    use sinapse::backend::{device_launches, kernel_profile, set_kernel_profiling};
    use sinapse::nn::{InferenceGraph, Linear, Module, Relu, Sequential};
    /// Turns the profile off when dropped, whatever returns early.
    struct Off(Device);
    impl Drop for Off {
        fn drop(&mut self) {
            let _ = set_kernel_profiling(self.0, false);
        }
    }
    let launches = || device_launches(device).map(|c| c.kernels + c.products).unwrap_or(0);
    let a = Tensor::from_vec((0..40).map(|v| v as f32 / 7.0 - 2.0).collect(), &[8, 5])?.to(device)?;
    let b = Tensor::from_vec((0..15).map(|v| v as f32 / 5.0 - 1.0).collect(), &[5, 3])?.to(device)?;
    kernel_profile(device)?; // whatever an earlier check left
    let off = Off(device);
    set_kernel_profiling(device, true)?;
    let before = launches();
    let y = a.matmul(&b)?.relu()?.sum_all()?.to_scalar()?;
    let queued = launches() - before;
    let profile = kernel_profile(device)?;
    let want: f32 = {
        let (a, b) = (a.to_vec(), b.to_vec());
        let cell = |i: usize, j: usize| (0..5).map(|k| a[i * 5 + k] * b[k * 3 + j]).sum::<f32>().max(0.0);
        (0..8).flat_map(|i| (0..3).map(move |j| (i, j))).map(|(i, j)| cell(i, j)).sum()
    };
    if (y - want).abs() > 1e-4 * want.abs().max(1.0) {
        return Ok(Some(format!("while profiling, relu(a·b) summed to {y}, not {want}")));
    }
    let timed: u64 = profile.iter().map(|t| t.launches).sum();
    if timed != queued || queued < 3 {
        return Ok(Some(format!("{timed} launches timed, {queued} queued: {profile:?}")));
    }
    let product = profile.iter().find(|t| t.what == "sgemm [8 x 5] · [5 x 3]");
    if product.map(|t| t.launches) != Some(1) {
        return Ok(Some(format!("the product is not timed once: {profile:?}")));
    }
    if let Some(t) = profile.iter().find(|t| t.what.starts_with("spin") || !(t.seconds > 0.0 && t.seconds < 10.0)) {
        return Ok(Some(format!("an entry that should not be there: {t:?}")));
    }
    if !kernel_profile(device)?.is_empty() {
        return Ok(Some("a second read of the profile is not empty".into()));
    }
    // A graph captured and replayed while the profile is on.
    let model = Sequential::new().add(Linear::new(5, 4, &mut Rng::seed(3))?).add(Relu);
    model.to(device)?;
    let mut graph = InferenceGraph::capture(&model, &[2, 5], device)?;
    let replayed = graph.run(&a.narrow(0, 0, 2)?)?.to_vec();
    let _no_grad = sinapse::no_grad();
    let eager = model.forward(&a.narrow(0, 0, 2)?, sinapse::nn::Mode::Eval)?.to_vec();
    if replayed != eager {
        return Ok(Some(format!("a graph captured while profiling gave {replayed:?}, eager {eager:?}")));
    }
    drop(off);
    kernel_profile(device)?;
    a.relu()?.sum_all()?.to_scalar()?;
    let untimed = kernel_profile(device)?;
    Ok((!untimed.is_empty()).then(|| format!("timed with the profile off: {untimed:?}")))
}

/// While a forward pass is recorded and captured into a graph on `device`, another thread's
/// work there is refused (CUDA would add it to the graph); before and after, it runs.
fn capture_thread_check(device: Device) -> Result<Option<String>> {
    use sinapse::nn::InferenceGraph;
    let layer = SpawnsWork { device, seen: std::sync::Mutex::new(Vec::new()) };
    let mut graph = InferenceGraph::capture(&layer, &[2, 3], device)?;
    let x = Tensor::from_vec(vec![-1.0, 2.0, -3.0, 4.0, 0.5, -0.5], &[2, 3])?;
    let y = graph.run(&x)?.to_vec();
    let seen = layer.seen.lock().expect("not poisoned").clone();
    let after = std::thread::scope(|s| s.spawn(|| Tensor::zeros_on(&[4], device).map(drop)).join());
    match seen.as_slice() {
        [Ok(()), Err(recording), Err(capturing)]
            if recording.contains("another thread is recording")
                && capturing.contains("another thread is capturing") => {}
        other => return Ok(Some(format!("the other thread got {other:?} (eager, recorded, captured)"))),
    }
    if !matches!(after, Ok(Ok(()))) {
        return Ok(Some(format!("after the capture, another thread got {after:?}")));
    }
    Ok(mismatch(&y, &[0.0, 2.0, 0.0, 4.0, 0.5, 0.0]).map(|p| format!("the graph's output: {p}")))
}

/// Where no GPU is, the suite runs again in a child process whose `cuda:0` is a GPU emulated
/// on the CPU ([`sinapse::backend::install_emulated_gpu`]): the CUDA backend's host code
/// (allocator, kernel arguments, cuBLAS operands, graph capture) against the CPU, launches
/// checked for races (`SINAPSE_EMULATOR_RACECHECK`: a missing atomic or barrier; the larger
/// launches sampled, see `install_emulated_gpu`) and the MNIST training left
/// out; then in a second child whose kernels run their blocks and threads in descending order
/// (`SINAPSE_EMULATOR_ORDER`), so that a kernel whose threads depend on one another's order
/// reads another thread's write in one run and misses it in the other, training included. Both keep their
/// compiled kernels in a fresh folder (`SINAPSE_KERNEL_CACHE`): the first compiles them and
/// leaves one file there, which the second loads instead of compiling (the file is not
/// replaced). Returns whether both passed or were skipped (they are required where CI asks
/// for the emulator and NVRTC).
fn run_on_emulated_gpu() -> bool {
    let cache = match Scratch::new() {
        Ok(dir) => dir,
        Err(e) => {
            println!("device suite: the emulated GPU not run: {e}");
            return !emulator_required();
        }
    };
    // The kept files, with their inode numbers (a file compiled again is a new one).
    let kept = || -> Vec<(std::ffi::OsString, u64)> {
        use std::os::unix::fs::MetadataExt;
        let entries = std::fs::read_dir(&cache.0).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default();
        entries.iter().map(|e| (e.file_name(), e.metadata().map_or(0, |m| m.ino()))).collect()
    };
    if !run_on_emulated_gpu_in("ascending", &cache.0) {
        return false;
    }
    let first = kept();
    if !run_on_emulated_gpu_in("descending", &cache.0) {
        return false;
    }
    let second = kept();
    // Nothing is kept where NVRTC (or the emulator) is missing and the runs were skipped.
    let skipped = first.is_empty() && second.is_empty() && !emulator_required();
    if !skipped && (first.len() != 1 || first != second) {
        println!("device suite: the kernel cache held {first:?} after the first run, {second:?} after the second");
        return false;
    }
    true
}

/// Whether CI asks for the emulated GPU's runs (the emulator and NVRTC both required).
fn emulator_required() -> bool {
    ["SINAPSE_REQUIRE_EMULATOR", "SINAPSE_REQUIRE_NVRTC"].iter().all(|v| std::env::var(v).is_ok_and(|v| v == "1"))
}

/// [`run_on_emulated_gpu`] with the emulator's blocks and threads in `order`, compiled
/// kernels kept in `cache`.
fn run_on_emulated_gpu_in(order: &str, cache: &std::path::Path) -> bool {
    let required = emulator_required();
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            println!("device suite: the emulated GPU not run: {e}");
            return !required;
        }
    };
    let mut child = std::process::Command::new(exe);
    child.env(EMULATED, "1").env(ORDER, order).env("SINAPSE_KERNEL_CACHE", cache);
    // The first run also looks for races (the second would find the same).
    if order == "ascending" {
        child.env(RACECHECK, "1");
    }
    if required {
        child.env("SINAPSE_REQUIRE_CUDA", "1");
    }
    match child.status() {
        Ok(status) => status.success(),
        Err(e) => {
            println!("device suite: the emulated GPU not run: {e}");
            !required
        }
    }
}

/// Set in the child process that runs the suite on an emulated GPU.
const EMULATED: &str = "SINAPSE_EMULATED_GPU";
/// The order of the emulated kernels' blocks and threads there: ascending or descending.
const ORDER: &str = "SINAPSE_EMULATOR_ORDER";
/// Set where the emulated kernels check each launch for races.
const RACECHECK: &str = "SINAPSE_EMULATOR_RACECHECK";

fn main() {
    let emulated = std::env::var(EMULATED).is_ok_and(|v| v == "1");
    let racecheck = emulated && std::env::var(RACECHECK).is_ok_and(|v| v == "1");
    if emulated {
        if let Err(e) = sinapse::backend::install_emulated_gpu() {
            println!("device suite (emulated GPU): not run: {e}");
            std::process::exit(i32::from(std::env::var("SINAPSE_REQUIRE_CUDA").is_ok_and(|v| v == "1")));
        }
        let order = std::env::var(ORDER).unwrap_or_else(|_| "ascending".into());
        let races = if racecheck { ", launches checked for races" } else { "" };
        println!(
            "device suite: cuda:0 is a GPU emulated on the CPU (the CUDA backend's host code over CPU builds of its \
             kernels, blocks and threads in {order} order{races})"
        );
    }
    let mut failures = Vec::new();
    let mut checks = 0;
    // The harness must be able to fail: a result with two elements swapped is caught.
    let probe = Outcome { shape: vec![3], output: vec![0.3, -1.2, 2.0], grads: vec![] };
    let swapped = Outcome { shape: vec![3], output: vec![-1.2, 0.3, 2.0], grads: vec![] };
    assert!(compare(&swapped, &probe).is_some(), "the comparison must catch a wrong index");

    let cases = cases();
    let references: Vec<Result<Outcome>> = cases.iter().map(|c| run(c, Device::Cpu, Layout::Contiguous)).collect();
    let optimizer_refs: Vec<Result<Vec<f32>>> =
        OPTIMIZERS.iter().map(|o| optimizer_outcome(o, Device::Cpu, Layout::Contiguous)).collect();
    let devices = Device::available();
    let mut record = |what: String, problem: Option<String>| {
        checks += 1;
        if let Some(p) = problem {
            failures.push(format!("{what}: {p}"));
        }
    };
    let outcome_of = |got: Result<Option<String>>, reference_failed: Option<String>| match (got, reference_failed) {
        (_, Some(e)) => Some(format!("the CPU reference failed: {e}")),
        (Ok(problem), None) => problem,
        (Err(e), None) => Some(format!("error: {e}")),
    };
    for &device in &devices {
        for layout in LAYOUTS {
            if device == Device::Cpu && layout == Layout::Contiguous {
                continue; // the references themselves
            }
            for (case, reference) in cases.iter().zip(&references) {
                let got = run(case, device, layout);
                let problem = match reference {
                    Ok(want) => outcome_of(got.map(|g| compare(&g, want)), None),
                    Err(e) => outcome_of(Ok(None), Some(e.to_string())),
                };
                record(format!("{} on {device}, {layout:?} inputs", case.name), problem);
            }
            for (which, reference) in OPTIMIZERS.iter().zip(&optimizer_refs) {
                let got = optimizer_outcome(which, device, layout);
                let problem = match reference {
                    Ok(want) => outcome_of(got.map(|g| mismatch(&g, want)), None),
                    Err(e) => outcome_of(Ok(None), Some(e.to_string())),
                };
                record(format!("optimizer {which} on {device}, {layout:?} gradients"), problem);
            }
            if device != Device::Cpu && layout == Layout::Contiguous {
                // One optimizer over parameters on two devices: each run of them on its own.
                let got = optimizer_outcome_on("adam", &|k| if k % 3 == 1 { Device::Cpu } else { device }, layout);
                let adam = OPTIMIZERS.iter().position(|&o| o == "adam").expect("adam is among the optimizers");
                let problem = match &optimizer_refs[adam] {
                    Ok(want) => outcome_of(got.map(|g| mismatch(&g, want)), None),
                    Err(e) => outcome_of(Ok(None), Some(e.to_string())),
                };
                record(format!("optimizer adam over the cpu and {device}"), problem);
            }
        }
    }
    for &device in &devices {
        let problem = moved_inference_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("Linear inference after a move to {device} and back"), problem);
        let problem = bad_label_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("a bad class label on {device}"), problem);
        let problem = correct_count_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("correct answers counted on {device}"), problem);
        let problem = memory_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("a tensor larger than {device}'s memory refused"), problem);
    }
    for &device in devices.iter().filter(|d| **d != Device::Cpu) {
        let problem = graph_bad_index_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("a bad index in an inference graph on {device}"), problem);
        let problem = graph_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("training with a CUDA graph on {device} against eager"), problem);
        let problem = inference_graph_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("inference in a CUDA graph on {device} against eager"), problem);
        let problem = capture_thread_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("another thread's work refused during a capture on {device}"), problem);
        let problem = profile_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("the kernel profile on {device}"), problem);
        let problem = launch_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
        record(format!("launches per step on {device}"), problem);
        if racecheck {
            // Training would take this run twice as long for kernels it has checked already.
            println!("device suite: MNIST training on {device} left to the run without the race check");
        } else {
            let problem = end_to_end_check(device).unwrap_or_else(|e| Some(format!("error: {e}")));
            record(format!("MNIST MLP, CNNs and LSTM trained on {device} against the CPU"), problem);
        }
        if emulated {
            // NCCL would load NVIDIA's driver by its own name (libcuda.so.1), not the emulated one.
            println!("device suite: NCCL not covered on the emulated {device}");
            continue;
        }
        match nccl_check(device) {
            Ok(problem) => record(format!("NCCL all-reduce and broadcast on {device} (one rank)"), problem),
            Err(e) => {
                println!("device suite: NCCL not covered on {device}: {e}");
                if std::env::var("SINAPSE_REQUIRE_NCCL").is_ok_and(|v| v == "1") {
                    record(format!("NCCL on {device}"), Some(format!("SINAPSE_REQUIRE_NCCL=1 but {e}")));
                }
            }
        }
    }
    let covered: Vec<String> = devices.iter().map(Device::to_string).collect();
    println!(
        "device suite: {} ops and {} optimizers in {} layouts on {}: {checks} comparisons with the CPU",
        cases.len(),
        OPTIMIZERS.len(),
        LAYOUTS.len(),
        covered.join(", ")
    );
    for other in [Device::Cuda(0)] {
        if let Err(e) = other.check_available() {
            println!("device suite: not covered: {e}");
            // On a GPU machine's check a skipped GPU is a failure, not a quiet pass.
            if std::env::var("SINAPSE_REQUIRE_CUDA").is_ok_and(|v| v == "1") {
                println!("device suite: SINAPSE_REQUIRE_CUDA=1 but {other} is not usable");
                std::process::exit(1);
            }
        }
    }
    if !failures.is_empty() {
        for f in &failures {
            println!("FAILED {f}");
        }
        println!("device suite: {} of {checks} comparisons failed", failures.len());
        std::process::exit(1);
    }
    println!("device suite: all {checks} comparisons passed");
    if !emulated && !devices.iter().any(|d| *d != Device::Cpu) && !run_on_emulated_gpu() {
        println!("device suite: the run on the emulated GPU failed");
        std::process::exit(1);
    }
}
