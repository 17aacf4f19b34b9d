//! Every differentiable op against central finite differences, including broadcasting,
//! reductions over each axis, strided inputs and the losses.

// `&[x.clone()]` reads better than `std::slice::from_ref(&x)` in a list of checks.
#![allow(clippy::cloned_ref_to_slice_refs)]

mod common;

use common::{away_from_zero, distinct, positive, rand};
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
    check("matmul vector right", |x| x[0].matmul(&x[1]), &[rand(&[3, 4], 24), rand(&[4], 25)]);
    check("matmul vector left", |x| x[0].matmul(&x[1]), &[rand(&[4], 26), rand(&[4, 2], 27)]);
    check("dot", |x| x[0].matmul(&x[1]), &[rand(&[4], 28), rand(&[4], 29)]);
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
    check("bce_with_logits", |x| loss::binary_cross_entropy_with_logits(&x[0], &x[1]), &[logits.clone(), labels]);
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
