//! Every differentiable op against central finite differences, including broadcasting,
//! reductions over each axis, strided inputs and the losses.

// `&[x.clone()]` reads better than `std::slice::from_ref(&x)` in a list of checks.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{away_from_zero, distinct, positive, rand};
use sinapse::backend::Window;
use sinapse::gradcheck::{gradcheck, GradcheckOptions};
use sinapse::nn::loss;
use sinapse::{Result, Tensor};

fn check(name: &str, f: impl Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let report = gradcheck(f, inputs, GradcheckOptions::default()).unwrap();
    assert!(report.checked > 0, "{name}: nothing checked");
    assert!(report.passed(), "{name}: {report}");
}

#[test]
fn binary_ops_with_broadcasting() {
    let shapes: [(&[usize], &[usize]); 5] =
        [(&[2, 3], &[2, 3]), (&[2, 3], &[3]), (&[2, 1, 4], &[3, 1]), (&[], &[2, 3]), (&[4, 1], &[1])];
    for (i, (sa, sb)) in shapes.iter().enumerate() {
        let a = rand(sa, i as u64);
        let b = rand(sb, 100 + i as u64);
        check(&format!("add {sa:?} {sb:?}"), |x| x[0].add(&x[1]), &[a.clone(), b.clone()]);
        check(&format!("sub {sa:?} {sb:?}"), |x| x[0].sub(&x[1]), &[a.clone(), b.clone()]);
        check(&format!("mul {sa:?} {sb:?}"), |x| x[0].mul(&x[1]), &[a.clone(), b.clone()]);
        let pb = positive(sb, 200 + i as u64);
        check(&format!("div {sa:?} {sb:?}"), |x| x[0].div(&x[1]), &[a.clone(), pb]);
    }
}

#[test]
fn binary_ops_on_strided_inputs() {
    // A transposed (non-contiguous) operand and an operand used twice.
    let a = rand(&[3, 2], 1);
    let b = rand(&[2, 3], 2);
    check("mul transposed", |x| x[0].t()?.mul(&x[1]), &[a.clone(), b.clone()]);
    check("x*x + x", |x| x[0].mul(&x[0])?.add(&x[0]), &[a]);
}

#[test]
fn maximum_and_minimum() {
    let a = rand(&[3, 4], 3);
    // b differs from a by at least 0.1 everywhere: no ties near the finite-difference step.
    let offsets = away_from_zero(&[3, 4], 4).detach().mul_scalar(0.5).unwrap();
    let b = a.detach().add(&offsets).unwrap().set_requires_grad(true);
    check("maximum", |x| x[0].maximum(&x[1]), &[a.clone(), b.clone()]);
    check("minimum", |x| x[0].minimum(&x[1]), &[a.clone(), b.clone()]);
    let row = rand(&[4], 5);
    check("maximum broadcast", |x| x[0].maximum(&x[1]), &[distinct(&[3, 4], 6), row]);
}

#[test]
fn unary_ops() {
    let x = rand(&[2, 3], 7);
    let p = positive(&[2, 3], 8);
    let nz = away_from_zero(&[2, 3], 9);
    check("neg", |x| x[0].neg(), &[x.clone()]);
    check("affine", |x| x[0].affine(-2.5, 0.3), &[x.clone()]);
    check("add_scalar", |x| x[0].add_scalar(4.0), &[x.clone()]);
    check("mul_scalar", |x| x[0].mul_scalar(-3.0), &[x.clone()]);
    check("exp", |x| x[0].exp(), &[x.clone()]);
    check("log", |x| x[0].log(), &[p.clone()]);
    check("sqrt", |x| x[0].sqrt(), &[p.clone()]);
    check("powf 3", |x| x[0].powf(3.0), &[x.clone()]);
    check("powf -1.5", |x| x[0].powf(-1.5), &[p.clone()]);
    check("abs", |x| x[0].abs(), &[nz.clone()]);
    check("sin", |x| x[0].sin(), &[x.clone()]);
    check("cos", |x| x[0].cos(), &[x.clone()]);
    check("log1p", |x| x[0].log1p(), &[p.clone()]);
    check("expm1", |x| x[0].expm1(), &[x.clone()]);
    check("erf", |x| x[0].erf(), &[x.clone()]);
    // Values in [-1, 1) clamped to [-0.5, 0.5]: both the passing and the clipped parts, kept
    // away from the bounds.
    let c = Tensor::from_vec(vec![-0.9, -0.3, 0.1, 0.45, 0.8, -0.62], &[2, 3]).unwrap().set_requires_grad(true);
    check("clamp", |x| x[0].clamp(-0.5, 0.5), &[c]);
}

#[test]
fn activations() {
    let x = rand(&[3, 4], 10).mul_scalar(3.0).unwrap().detach().set_requires_grad(true);
    let nz = away_from_zero(&[3, 4], 11);
    check("sigmoid", |x| x[0].sigmoid(), &[x.clone()]);
    check("tanh", |x| x[0].tanh(), &[x.clone()]);
    check("relu", |x| x[0].relu(), &[nz.clone()]);
    check("leaky_relu", |x| x[0].leaky_relu(0.1), &[nz.clone()]);
    check("step (zero gradient)", |x| x[0].step(), &[nz.clone()]);
    check("gelu", |x| x[0].gelu(), &[x.clone()]);
    check("silu", |x| x[0].silu(), &[x.clone()]);
    check("elu", |x| x[0].elu(0.7), &[nz.clone()]);
    check("softplus", |x| x[0].softplus(), &[x.clone()]);
    for dim in 0..2 {
        check(&format!("softmax dim {dim}"), |x| x[0].softmax(dim), &[x.clone()]);
        check(&format!("log_softmax dim {dim}"), |x| x[0].log_softmax(dim), &[x.clone()]);
    }
    let x3 = rand(&[2, 3, 4], 12);
    check("softmax middle axis of 3-D", |x| x[0].softmax(1), &[x3.clone()]);
    check("log_softmax of a transposed view", |x| x[0].t()?.log_softmax(1), &[x.clone()]);
}

#[test]
fn reductions_over_each_axis() {
    let x = rand(&[2, 3, 4], 13);
    let d = distinct(&[2, 3, 4], 14);
    for dim in 0..3 {
        for keepdim in [false, true] {
            check(&format!("sum {dim} {keepdim}"), |x| x[0].sum(dim, keepdim), &[x.clone()]);
            check(&format!("mean {dim} {keepdim}"), |x| x[0].mean(dim, keepdim), &[x.clone()]);
            check(&format!("max {dim} {keepdim}"), |x| x[0].max(dim, keepdim), &[d.clone()]);
            check(&format!("min {dim} {keepdim}"), |x| x[0].min(dim, keepdim), &[d.clone()]);
        }
    }
    check("sum_all", |x| x[0].sum_all(), &[x.clone()]);
    check("mean_all", |x| x[0].mean_all(), &[x.clone()]);
    check("max_all", |x| x[0].max_all(), &[d.clone()]);
    check("min_all", |x| x[0].min_all(), &[d.clone()]);
    check("sum_dims [0, 2]", |x| x[0].sum_dims(&[2, 0], true), &[x.clone()]);
    check("sum_to_shape", |x| x[0].sum_to_shape(&[3, 1]), &[x.clone()]);
    check("sum of a permuted view", |x| x[0].permute(&[2, 0, 1])?.sum(1, false), &[x.clone()]);
}

#[test]
fn views() {
    let x = rand(&[2, 3, 4], 15);
    check("reshape", |x| x[0].reshape(&[6, 4]), &[x.clone()]);
    check("flatten", |x| x[0].flatten(1, 2), &[x.clone()]);
    check("transpose", |x| x[0].transpose(0, 2), &[x.clone()]);
    check("permute", |x| x[0].permute(&[1, 2, 0]), &[x.clone()]);
    check("narrow", |x| x[0].narrow(1, 1, 2), &[x.clone()]);
    check("narrow then reshape (copy)", |x| x[0].narrow(2, 1, 2)?.reshape(&[12]), &[x.clone()]);
    check("unsqueeze/squeeze", |x| x[0].unsqueeze(1)?.mul_scalar(2.0)?.squeeze(1), &[x.clone()]);
    check("broadcast_to", |x| x[0].broadcast_to(&[5, 2, 3, 4]), &[x.clone()]);
    check("contiguous", |x| x[0].transpose(0, 1)?.contiguous(), &[x.clone()]);
}

#[test]
fn matrix_products() {
    check("matmul 2-D", |x| x[0].matmul(&x[1]), &[rand(&[3, 4], 16), rand(&[4, 5], 17)]);
    check("matmul transposed operands", |x| x[0].t()?.matmul(&x[1].t()?), &[rand(&[4, 3], 18), rand(&[5, 4], 19)]);
    check("matmul batched", |x| x[0].matmul(&x[1]), &[rand(&[2, 3, 4], 20), rand(&[2, 4, 2], 21)]);
    check("matmul batch broadcast", |x| x[0].matmul(&x[1]), &[rand(&[2, 1, 3, 4], 22), rand(&[3, 4, 2], 23)]);
    // A transposed matrix (a weight, `x·Wᵀ`) against a batch: its gradient sums over the batch.
    check(
        "matmul batch by a transposed matrix",
        |x| x[0].matmul(&x[1].t()?),
        &[rand(&[2, 3, 4], 40), rand(&[5, 4], 41)],
    );
    check(
        "matmul transposed matrix by a batch",
        |x| x[0].t()?.matmul(&x[1]),
        &[rand(&[4, 3], 42), rand(&[2, 4, 5], 43)],
    );
    check("matmul vector right", |x| x[0].matmul(&x[1]), &[rand(&[3, 4], 24), rand(&[4], 25)]);
    check("matmul vector left", |x| x[0].matmul(&x[1]), &[rand(&[4], 26), rand(&[4, 2], 27)]);
    check("dot", |x| x[0].matmul(&x[1]), &[rand(&[4], 28), rand(&[4], 29)]);
    check("linear", |x| x[0].linear(&x[1], Some(&x[2])), &[rand(&[3, 4], 44), rand(&[5, 4], 45), rand(&[5], 46)]);
    check("linear without bias", |x| x[0].linear(&x[1], None), &[rand(&[1, 9], 47), rand(&[10, 9], 48)]);
    check(
        "linear of a transposed input",
        |x| x[0].t()?.linear(&x[1], Some(&x[2])),
        &[rand(&[4, 3], 49), rand(&[2, 4], 50), rand(&[2], 51)],
    );
}

#[test]
fn index_ops() {
    let x = rand(&[4, 3], 30);
    let rows = Tensor::from_vec(vec![2.0, 0.0, 2.0], &[3]).unwrap();
    check("index_select rows (repeated)", |x| x[0].index_select(0, &rows), &[x.clone()]);
    let cols = Tensor::from_vec(vec![1.0, 1.0, 0.0, 2.0], &[4]).unwrap();
    check("index_select cols", |x| x[0].index_select(1, &cols), &[x.clone()]);
    let idx = Tensor::from_vec(vec![0.0, 2.0, 1.0, 1.0, 2.0, 0.0, 0.0, 0.0], &[4, 2]).unwrap();
    check("gather dim 1", |x| x[0].gather(1, &idx), &[x.clone()]);
    let idx0 = Tensor::from_vec(vec![3.0, 0.0, 1.0], &[1, 3]).unwrap();
    check("gather dim 0", |x| x[0].gather(0, &idx0), &[x.clone()]);
    let y = rand(&[4, 2], 31);
    check("cat dim 1", |x| Tensor::cat(&[&x[0], &x[1]], 1), &[x.clone(), y.clone()]);
    check(
        "cat dim 0",
        |x| Tensor::cat(&[&x[0], &x[1].t()?.narrow(0, 0, 1)?.narrow(1, 0, 3)?], 0),
        &[x.clone(), y.clone()],
    );
    let z = rand(&[4, 3], 32);
    check("stack", |x| Tensor::stack(&[&x[0], &x[1]], 1), &[x.clone(), z]);
    check("pad", |x| x[0].pad(1, 2, 1, 0.5), &[x.clone()]);
    check("narrow then pad", |x| x[0].narrow(0, 1, 2)?.pad(0, 3, 0, 0.0), &[x.clone()]);
    // The adjoints, differentiated in both of their inputs (repeated positions add up).
    let src = rand(&[3, 3], 33);
    check("index_add", |x| x[0].index_add(0, &rows, &x[1]), &[x.clone(), src]);
    let src = rand(&[4, 2], 34);
    check("scatter_add", |x| x[0].scatter_add(1, &idx, &x[1]), &[x.clone(), src]);
    let cond = Tensor::from_vec(vec![1., 0., 0., 1., 1., 0., 0., 1., 0., 1., 1., 1.], &[4, 3]).unwrap();
    let other = rand(&[3], 35);
    check("where_cond", |x| cond.where_cond(&x[0], &x[1]), &[x.clone(), other]);
}

#[test]
fn losses() {
    let pred = rand(&[4, 3], 33);
    let target = rand(&[4, 3], 34);
    check("mse", |x| loss::mse(&x[0], &x[1]), &[pred.clone(), target.clone()]);
    let probs = Tensor::rand_uniform(&[4, 3], 0.1, 0.9, &mut sinapse::Rng::seed(35)).unwrap().set_requires_grad(true);
    let labels = Tensor::rand_uniform(&[4, 3], 0.0, 1.0, &mut sinapse::Rng::seed(36)).unwrap().set_requires_grad(true);
    check("binary_cross_entropy", |x| loss::binary_cross_entropy(&x[0], &x[1]), &[probs, labels.clone()]);
    let logits = rand(&[4, 3], 37).mul_scalar(3.0).unwrap().detach().set_requires_grad(true);
    check(
        "bce_with_logits",
        |x| loss::binary_cross_entropy_with_logits(&x[0], &x[1]),
        &[logits.clone(), labels.clone()],
    );
    // The elementwise BCE ops broadcast like every binary op; their gradients sum back.
    let p_col = Tensor::rand_uniform(&[4, 1], 0.1, 0.9, &mut sinapse::Rng::seed(38)).unwrap().set_requires_grad(true);
    check("bce broadcast", |x| x[0].binary_cross_entropy_elementwise(&x[1]), &[p_col, labels.clone()]);
    let y_row = Tensor::rand_uniform(&[3], 0.0, 1.0, &mut sinapse::Rng::seed(39)).unwrap().set_requires_grad(true);
    check(
        "bce_with_logits broadcast",
        |x| x[0].binary_cross_entropy_with_logits_elementwise(&x[1]),
        &[logits.clone(), y_row],
    );
    let classes = Tensor::from_vec(vec![2.0, 0.0, 1.0, 2.0], &[4]).unwrap();
    check("cross_entropy", |x| loss::cross_entropy(&x[0], &classes), &[logits.clone()]);
    let soft = Tensor::from_vec(vec![0.2, 0.3, 0.5, 1.0, 0.0, 0.0, 0.1, 0.8, 0.1, 0.0, 0.5, 0.5], &[4, 3]).unwrap();
    check("cross_entropy_with_probs", |x| loss::cross_entropy_with_probs(&x[0], &soft), &[logits]);
}

#[test]
fn a_small_mlp_end_to_end() {
    // Gradients of every parameter of Linear-tanh-Linear-log_softmax-NLL at once.
    let x = rand(&[5, 4], 40).detach();
    let classes = Tensor::from_vec(vec![0.0, 2.0, 1.0, 1.0, 0.0], &[5]).unwrap();
    let params = [rand(&[6, 4], 41), rand(&[6], 42), rand(&[3, 6], 43), rand(&[3], 44)];
    check(
        "mlp",
        |p| {
            let h = x.matmul(&p[0].t()?)?.add(&p[1])?.tanh()?;
            let logits = h.matmul(&p[2].t()?)?.add(&p[3])?;
            loss::cross_entropy(&logits, &classes)
        },
        &params,
    );
}

/// The CPU's Winograd path (3x3 and 5x5 kernels, stride 1, at least 8 channels and filters):
/// its f32 forward pass rounds a few more times than a direct sum, which the default step's
/// differences turn into noise of about 1e-3; the convolution is linear in the input and in
/// the filters, so a step of 0.25 has no truncation error and divides that noise by 50.
#[test]
fn winograd_convolution() {
    let options = GradcheckOptions { eps: 0.25, ..GradcheckOptions::default() };
    // (input [N, C, H, W], weight [O, C, K, K], padding)
    let cases: [([usize; 4], [usize; 4], [usize; 2]); 2] = [
        ([2, 8, 6, 7], [8, 8, 3, 3], [1, 1]),  // F(4x4, 3x3), partial tiles
        ([1, 9, 6, 6], [10, 9, 5, 5], [2, 1]), // F(4x4, 5x5), padding per axis, partial vectors
    ];
    for (i, (xs, ws, padding)) in cases.into_iter().enumerate() {
        let seed = 400 + 3 * i as u64;
        let (x, w, b) = (rand(&xs, seed), rand(&ws, seed + 1), rand(&[ws[0]], seed + 2));
        let f = |t: &[Tensor]| t[0].conv2d(&t[1], Some(&t[2]), [1, 1], padding, [1, 1]);
        let report = gradcheck(f, &[x, w, b], options).unwrap();
        assert!(report.checked > 0 && report.passed(), "Winograd case {i}: x {xs:?} w {ws:?}: {report}");
    }
}

#[test]
fn convolution_edge_cases() {
    // (input [N, C, H, W], weight [O, C, KH, KW], stride, padding, dilation)
    type Case = ([usize; 4], [usize; 4], [usize; 2], [usize; 2], [usize; 2]);
    let cases: [Case; 8] = [
        ([2, 2, 5, 5], [3, 2, 3, 3], [1, 1], [0, 0], [1, 1]),  // plain
        ([1, 2, 6, 5], [2, 2, 3, 2], [2, 1], [1, 0], [1, 1]),  // stride and padding per axis
        ([1, 1, 7, 7], [2, 1, 3, 3], [1, 1], [2, 2], [2, 2]),  // dilation with padding
        ([1, 2, 5, 4], [2, 2, 2, 2], [3, 3], [0, 1], [1, 1]),  // stride larger than the kernel
        ([2, 3, 4, 4], [2, 3, 1, 1], [1, 1], [0, 0], [1, 1]),  // 1x1 convolution
        ([1, 2, 3, 3], [2, 2, 3, 3], [1, 1], [0, 0], [1, 1]),  // kernel = input: one output
        ([1, 1, 4, 4], [1, 1, 3, 3], [2, 2], [1, 1], [1, 1]),  // windows half in the padding
        ([1, 2, 4, 11], [9, 2, 3, 3], [1, 1], [1, 1], [1, 1]), // direct kernel: 9 filters, 11 columns, padding
    ];
    for (i, (xs, ws, stride, padding, dilation)) in cases.into_iter().enumerate() {
        let seed = 300 + 3 * i as u64;
        let (x, w, b) = (rand(&xs, seed), rand(&ws, seed + 1), rand(&[ws[0]], seed + 2));
        let name =
            format!("conv2d case {i}: x {xs:?} w {ws:?} stride {stride:?} padding {padding:?} dilation {dilation:?}");
        check(&name, |t| t[0].conv2d(&t[1], Some(&t[2]), stride, padding, dilation), &[x.clone(), w.clone(), b]);
        check(&format!("{name}, no bias"), |t| t[0].conv2d(&t[1], None, stride, padding, dilation), &[x, w]);
    }
    let (x, w) = (rand(&[2, 2, 9], 330), rand(&[3, 2, 3], 331));
    check("conv1d stride 2 padding 1 dilation 2", |t| t[0].conv1d(&t[1], None, 2, 1, 2), &[x, w]);
    // im2col and its adjoint col2im, each the other's gradient.
    let win = Window { kernel: [3, 2], stride: [2, 1], padding: [1, 1], dilation: [1, 2] };
    check("im2col", |t| t[0].im2col(win, 0.0), &[rand(&[2, 2, 5, 6], 332)]);
    let cols = t_shape_of_im2col([2, 2, 5, 6], win);
    check("col2im", |t| t[0].col2im([2, 2, 5, 6], win), &[rand(&cols, 333)]);
}

/// The `[C·KH·KW, N·OH·OW]` shape im2col gives for an `[N, C, H, W]` input.
fn t_shape_of_im2col(input: [usize; 4], win: Window) -> [usize; 2] {
    let probe = Tensor::zeros(&input).im2col(win, 0.0).unwrap();
    [probe.shape()[0], probe.shape()[1]]
}

#[test]
fn pooling_edge_cases() {
    for (i, (kernel, stride, padding)) in
        [([2, 2], [2, 2], [0, 0]), ([3, 3], [2, 2], [1, 1]), ([3, 2], [1, 2], [1, 0]), ([2, 2], [3, 3], [0, 0])]
            .into_iter()
            .enumerate()
    {
        // Distinct values: no ties within the finite-difference step.
        let x = distinct(&[2, 2, 5, 6], 340 + i as u64);
        check(
            &format!("max_pool2d {kernel:?} {stride:?} {padding:?}"),
            |t| t[0].max_pool2d(kernel, stride, padding),
            &[x.clone()],
        );
        check(
            &format!("avg_pool2d {kernel:?} {stride:?} {padding:?}"),
            |t| t[0].avg_pool2d(kernel, stride, padding),
            &[x],
        );
    }
}

#[test]
fn recurrent_cells_through_time() {
    use sinapse::nn::{CellKind, Module, Recurrent, RecurrentState};
    for kind in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
        for (layers, batch_first) in [(1, true), (2, false)] {
            let net = Recurrent::new(kind, 3, 4, layers, batch_first, &mut sinapse::Rng::seed(350)).unwrap();
            let x = rand(if batch_first { &[2, 5, 3] } else { &[5, 2, 3] }, 351);
            let h0 = rand(&[layers, 2, 4], 352);
            let c0 = rand(&[layers, 2, 4], 353);
            let inputs = [x, h0, c0];
            let f = |t: &[Tensor]| {
                let state = RecurrentState { h: t[1].clone(), c: (kind == CellKind::Lstm).then(|| t[2].clone()) };
                let (out, last) = net.forward_with_state(&t[0], Some(&state))?;
                // Output sequence and final states, all checked at once.
                let mut parts = vec![out.flatten_all()?, last.h.flatten_all()?];
                if let Some(c) = last.c {
                    parts.push(c.flatten_all()?);
                }
                Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)
            };
            let name = format!("{kind:?} layers {layers} batch_first {batch_first}");
            // The input sequence and the initial states...
            let report = gradcheck(f, &inputs, GradcheckOptions::default()).unwrap();
            assert!(report.passed(), "{name} (inputs): {report}");
            // ...and every weight, perturbed in place in the layer.
            let named = net.named_parameters();
            let loss = || {
                let state =
                    RecurrentState { h: inputs[1].detach(), c: (kind == CellKind::Lstm).then(|| inputs[2].detach()) };
                let (out, _) = net.forward_with_state(&inputs[0].detach(), Some(&state))?;
                out.mul(&out)?.sum_all()
            };
            for c in sinapse::gradcheck::gradcheck_parameters(&named, loss, 12, GradcheckOptions::default()).unwrap() {
                assert!(c.report.passed() && c.kinks == 0, "{name} {}: {}", c.name, c.report);
            }
        }
    }
}

/// One LSTM step written in plain tensor ops: the reference for the fused op.
fn lstm_step_reference(x: &Tensor, w: &[Tensor], h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
    let hs = h.shape()[1];
    let z = x.matmul(&w[0].t()?)?.add(&w[2])?.add(&h.matmul(&w[1].t()?)?.add(&w[3])?)?;
    let gate = |k: usize| z.narrow(1, k * hs, hs);
    let (i, f, g, o) = (gate(0)?.sigmoid()?, gate(1)?.sigmoid()?, gate(2)?.tanh()?, gate(3)?.sigmoid()?);
    let c = f.mul(c)?.add(&i.mul(&g)?)?;
    Ok((o.mul(&c.tanh()?)?, c))
}

#[test]
fn fused_lstm_matches_the_unrolled_cell_and_finite_differences() {
    // 17 rows: split into blocks that run on different threads (8 rows or more each).
    fused_lstm_case([4, 17, 3, 5], false, 370);
    // One step (dL/dW_hh from h0 alone), and the input read through a batch-first view.
    fused_lstm_case([1, 9, 2, 3], true, 380);
    fused_lstm_case([3, 10, 2, 4], true, 390);
}

/// The fused LSTM op against the same steps in plain tensor ops, values and gradients, for
/// two losses (every output weighted differently, and the plain sum, whose gradient reaches
/// the op as a broadcast view), then against finite differences. With `batch_first`, the
/// input is a `[N, T, I]` tensor seen time first.
fn fused_lstm_case([t, n, i, h]: [usize; 4], batch_first: bool, seed: u64) {
    let inputs = vec![
        rand(&if batch_first { [n, t, i] } else { [t, n, i] }, seed),
        rand(&[4 * h, i], seed + 1),
        rand(&[4 * h, h], seed + 2),
        rand(&[4 * h], seed + 3),
        rand(&[4 * h], seed + 4),
        rand(&[n, h], seed + 5),
        rand(&[n, h], seed + 6),
    ];
    let time_first = move |x: &Tensor| if batch_first { x.transpose(0, 1) } else { Ok(x.clone()) };
    let fused = move |x: &[Tensor]| time_first(&x[0])?.lstm(&x[1], &x[2], &x[3], &x[4], &x[5], &x[6]);
    let unrolled = move |x: &[Tensor]| {
        let (mut hp, mut cp) = (x[5].clone(), x[6].clone());
        let mut steps = Vec::new();
        let seq = time_first(&x[0])?;
        for s in 0..t {
            (hp, cp) = lstm_step_reference(&seq.narrow(0, s, 1)?.squeeze(0)?, &x[1..5], &hp, &cp)?;
            steps.push(Tensor::cat(&[&hp, &cp], 1)?);
        }
        Tensor::stack(&steps.iter().collect::<Vec<_>>(), 0)
    };
    let weights = rand(&[t, n, 2 * h], seed + 7);
    let run = |f: &dyn Fn(&[Tensor]) -> Result<Tensor>, weighted: bool| {
        let leaves: Vec<Tensor> = inputs.iter().map(|x| x.detach().set_requires_grad(true)).collect();
        let out = f(&leaves).unwrap();
        let loss = if weighted { out.mul(&weights).unwrap().sum_all() } else { out.sum_all() };
        let grads = loss.unwrap().backward().unwrap();
        let grads: Vec<Vec<f32>> = leaves.iter().map(|l| grads.get(l).unwrap().to_vec()).collect();
        (out.to_vec(), grads)
    };
    let near = |a: &[f32], b: &[f32], what: &str| {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{what}[{k}]: fused {x}, unrolled {y}");
        }
    };
    for weighted in [true, false] {
        let (out_fused, grads_fused) = run(&fused, weighted);
        let (out_ref, grads_ref) = run(&unrolled, weighted);
        near(&out_fused, &out_ref, "output");
        for (k, (a, b)) in grads_fused.iter().zip(&grads_ref).enumerate() {
            near(a, b, &format!("gradient of input {k} (weighted loss: {weighted})"));
        }
    }
    check("fused lstm", fused, &inputs);
}

#[test]
fn embedding_gradient_adds_into_looked_up_rows() {
    use sinapse::nn::{Embedding, Mode, Module};
    let emb = Embedding::new(5, 3, &mut sinapse::Rng::seed(360)).unwrap();
    let idx = Tensor::from_vec(vec![1.0, 3.0, 1.0, 0.0], &[2, 2]).unwrap();
    let named = emb.named_parameters();
    let loss = || emb.forward(&idx, Mode::Train)?.powf(2.0)?.sum_all();
    for c in sinapse::gradcheck::gradcheck_parameters(&named, loss, 15, GradcheckOptions::default()).unwrap() {
        assert!(c.report.passed() && c.report.checked == 15, "{}", c.report);
    }
}

#[test]
fn an_output_that_depends_on_no_gradient_input_checks_zero_derivatives() {
    // A comparison is flat almost everywhere: analytic 0, and the differences find 0 too.
    let x = rand(&[4], 40);
    let report = gradcheck(|t| t[0].gt(&Tensor::zeros(&[4])), &[x], GradcheckOptions::default()).unwrap();
    assert!(report.passed() && report.checked == 4, "{report}");
}

#[test]
fn transposed_convolution_and_resampling() {
    let (x, w, b) = (rand(&[2, 3, 3, 4], 60), rand(&[3, 2, 3, 2], 61), rand(&[2], 62));
    check(
        "conv_transpose2d (stride, padding, output padding, dilation)",
        |t| t[0].conv_transpose2d(&t[1], Some(&t[2]), [2, 1], [1, 0], [1, 0], [1, 2]),
        &[x.clone(), w.clone(), b],
    );
    check("conv_transpose2d, no bias", |t| t[0].conv_transpose2d(&t[1], None, [1, 2], [0, 1], [0, 1], [1, 1]), &[x, w]);
    let img = rand(&[1, 2, 5, 7], 63);
    check("adaptive_avg_pool2d", |t| t[0].adaptive_avg_pool2d([3, 2]), &[img.clone()]);
    check("upsample_nearest2d", |t| t[0].upsample_nearest2d([7, 9]), &[img.clone()]);
    check("upsample_bilinear2d", |t| t[0].upsample_bilinear2d([8, 4], false), &[img.clone()]);
    check("upsample_bilinear2d, corners", |t| t[0].upsample_bilinear2d([6, 10], true), &[img]);
}

#[test]
fn attention() {
    use sinapse::nn::scaled_dot_product_attention;
    let (q, k, v) = (rand(&[2, 3, 4], 64), rand(&[2, 5, 4], 65), rand(&[2, 5, 3], 66));
    check(
        "attention",
        |t| Ok(scaled_dot_product_attention(&t[0], &t[1], &t[2], None, false)?.0),
        &[q.clone(), k.clone(), v.clone()],
    );
    let mask = Tensor::from_vec(vec![1., 1., 0., 1., 0., 1., 0., 1., 1., 1., 1., 0., 0., 0., 1.], &[3, 5]).unwrap();
    check(
        "attention, masked",
        |t| Ok(scaled_dot_product_attention(&t[0], &t[1], &t[2], Some(&mask), false)?.0),
        &[q.clone(), k.clone(), v.clone()],
    );
    check("attention, causal", |t| Ok(scaled_dot_product_attention(&t[0], &t[1], &t[2], None, true)?.0), &[q, k, v]);
}

#[test]
fn common_ops() {
    use sinapse::PadMode;
    let x = rand(&[3, 4], 70);
    check("pow, base", |t| t[0].pow(&t[1]), &[positive(&[3, 4], 71), rand(&[4], 72)]);
    check("masked_fill", |t| t[0].masked_fill(&Tensor::from_vec(vec![0., 1., 1., 0.], &[4])?, 2.0), &[x.clone()]);
    let index = Tensor::from_vec(vec![3., 1., 0., 2., 2., 3.], &[3, 2]).unwrap();
    check("scatter", |t| t[0].scatter(1, &index, &t[1]), &[x.clone(), rand(&[3, 2], 73)]);
    check("cumsum", |t| t[0].cumsum(1), &[x.clone()]);
    check("cumsum axis 0", |t| t[0].cumsum(0), &[x.clone()]);
    let with_zero =
        Tensor::from_vec(vec![0.5, 0.0, -1.5, 2.0, 0.7, 1.1, -0.3, 0.9, 1.3], &[3, 3]).unwrap().set_requires_grad(true);
    check("prod with a zero", |t| t[0].prod(1, false), &[with_zero]);
    check("prod odd length", |t| t[0].prod(0, true), &[rand(&[5, 2], 74)]);
    check("var", |t| t[0].var(1, 1, false), &[x.clone()]);
    check("std", |t| t[0].std(0, 0, true), &[x.clone()]);
    check("norm 2", |t| t[0].norm(2.0), &[x.clone()]);
    check("norm 1.5", |t| t[0].norm(1.5), &[away_from_zero(&[3, 4], 75)]);
    check("logsumexp", |t| t[0].logsumexp(1, true), &[x.clone()]);
    check("sort values", |t| Ok(t[0].sort(1, false)?.0), &[distinct(&[3, 4], 76)]);
    check("topk values", |t| Ok(t[0].topk(2, 0, true)?.0), &[distinct(&[3, 4], 77)]);
    check("repeat", |t| t[0].repeat(&[2, 2, 1]), &[x.clone()]);
    check("flip", |t| t[0].flip(&[1]), &[x.clone()]);
    check("roll", |t| t[0].roll(3, 1), &[x.clone()]);
    check("pad reflect", |t| t[0].pad_with(1, 2, 3, PadMode::Reflect), &[x.clone()]);
    check("pad replicate", |t| t[0].pad_with(0, 2, 1, PadMode::Replicate), &[x.clone()]);
    check("tril", |t| t[0].tril(0), &[x.clone()]);
    check("triu", |t| t[0].triu(-1), &[x.clone()]);
    check("chunk", |t| t[0].chunk(3, 1)?[1].mul_scalar(2.0), &[x.clone()]);
    check("unbind", |t| t[0].unbind(0)?[2].exp(), &[x.clone()]);
    check(
        "einsum batched product",
        |t| Tensor::einsum("bij,bkj->bik", &[&t[0], &t[1]]),
        &[rand(&[2, 3, 4], 78), rand(&[2, 5, 4], 79)],
    );
    check("einsum with a summed-out letter", |t| Tensor::einsum("ij,jk->i", &[&t[0], &t[1]]), &[x, rand(&[4, 2], 80)]);
}

/// The convolution with 2x2 max pooling as one op: input, filters and bias, with an odd
/// output width (a last column no window covers) and padding.
#[test]
fn convolution_with_max_pooling() {
    let x = rand(&[2, 2, 6, 7], 501);
    let w = rand(&[3, 2, 3, 3], 502);
    let b = rand(&[3], 503);
    let f = |t: &[Tensor]| t[0].conv2d_max_pool2(&t[1], Some(&t[2]), [1, 1]);
    let y = f(&[x.clone(), w.clone(), b.clone()]).unwrap();
    assert!(format!("{y:?}").contains("grad_fn=conv2d_max_pool2"), "{y:?}");
    check("conv2d_max_pool2", f, &[x, w, b]);
}
