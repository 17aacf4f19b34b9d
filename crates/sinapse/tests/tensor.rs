//! Forward values of tensor creation, views, elementwise ops, reductions, matmul and indexing,
//! and the errors for bad arguments.

mod common;

use common::assert_close;
use sinapse::backend::Window;
use sinapse::{Error, Rng, Tensor};

fn t(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(data, shape).unwrap()
}

#[test]
fn creation() {
    assert_eq!(Tensor::zeros(&[2, 2]).to_vec(), vec![0.0; 4]);
    assert_eq!(Tensor::ones(&[3]).to_vec(), vec![1.0; 3]);
    assert_eq!(Tensor::full(&[2], 7.5).to_vec(), vec![7.5, 7.5]);
    assert_eq!(Tensor::arange(0.0, 1.0, 0.25).unwrap().to_vec(), vec![0.0, 0.25, 0.5, 0.75]);
    assert_eq!(Tensor::arange(3.0, 0.0, -1.0).unwrap().to_vec(), vec![3.0, 2.0, 1.0]);
    assert!(Tensor::arange(0.0, 1.0, 0.0).is_err());
    assert_eq!(Tensor::scalar(2.0).shape(), &[] as &[usize]);
    let err = Tensor::from_vec(vec![1.0, 2.0, 3.0], &[2, 2]).unwrap_err();
    assert!(matches!(err, Error::ElementCount { expected: 4, got: 3, .. }), "{err}");
}

#[test]
fn seeded_random_tensors_repeat_and_have_the_right_moments() {
    let a = Tensor::rand_normal(&[10_000], 1.0, 2.0, &mut Rng::seed(42)).unwrap();
    let b = Tensor::rand_normal(&[10_000], 1.0, 2.0, &mut Rng::seed(42)).unwrap();
    assert_eq!(a.to_vec(), b.to_vec());
    let mean = a.mean_all().unwrap().to_scalar().unwrap();
    let var = a.add_scalar(-mean).unwrap().powf(2.0).unwrap().mean_all().unwrap().to_scalar().unwrap();
    assert!((mean - 1.0).abs() < 0.06, "mean {mean}");
    assert!((var.sqrt() - 2.0).abs() < 0.06, "std {}", var.sqrt());
    let u = Tensor::rand_uniform(&[10_000], -2.0, 4.0, &mut Rng::seed(1)).unwrap();
    assert!(u.to_vec().iter().all(|&v| (-2.0..4.0).contains(&v)));
    assert!((u.mean_all().unwrap().to_scalar().unwrap() - 1.0).abs() < 0.06);
    assert!(Tensor::rand_uniform(&[2], 1.0, 1.0, &mut Rng::seed(1)).is_err());
}

#[test]
fn views_share_storage_and_reorder() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(x.t().unwrap().to_vec(), vec![1., 4., 2., 5., 3., 6.]);
    assert_eq!(x.reshape(&[3, 2]).unwrap().to_vec(), vec![1., 2., 3., 4., 5., 6.]);
    assert_eq!(x.narrow(1, 1, 2).unwrap().to_vec(), vec![2., 3., 5., 6.]);
    assert_eq!(x.unsqueeze(0).unwrap().shape(), &[1, 2, 3]);
    assert_eq!(x.unsqueeze(2).unwrap().squeeze(2).unwrap().shape(), &[2, 3]);
    assert_eq!(
        x.narrow(0, 1, 1).unwrap().broadcast_to(&[2, 2, 3]).unwrap().to_vec(),
        vec![4., 5., 6., 4., 5., 6., 4., 5., 6., 4., 5., 6.]
    );
    let y = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 3, 4]).unwrap();
    let p = y.permute(&[2, 0, 1]).unwrap();
    assert_eq!(p.shape(), &[4, 2, 3]);
    assert_eq!(&p.to_vec()[..6], &[0., 4., 8., 12., 16., 20.]);
    assert!(!p.layout().is_contiguous());
    assert!(p.contiguous().unwrap().layout().is_contiguous());
    // A reshape of a non-contiguous view copies in logical order.
    assert_eq!(x.t().unwrap().reshape(&[6]).unwrap().to_vec(), vec![1., 4., 2., 5., 3., 6.]);
    assert_eq!(y.flatten(1, 2).unwrap().shape(), &[2, 12]);
}

#[test]
fn shapes_too_large_to_count_are_errors_not_wraparounds() {
    let e = Tensor::zeros(&[0]).reshape(&[1 << 32, 1 << 32, 0, 1 << 40]).unwrap_err();
    assert!(e.to_string().contains("more elements than fit"), "{e}");
    let e = Tensor::zeros(&[1, 1]).broadcast_to(&[usize::MAX, 3]).unwrap_err();
    assert!(e.to_string().contains("broadcast_to"), "{e}");
    let (a, b) = (Tensor::zeros(&[1, 1]), Tensor::zeros(&[1]));
    let (a, b) = (a.broadcast_to(&[1 << 40, 1]).unwrap(), b.broadcast_to(&[1 << 40]).unwrap());
    assert!(a.add(&b.unsqueeze(1).unwrap().t().unwrap()).is_err(), "[2^40, 1] + [1, 2^40] overflows");
    assert!(Tensor::from_vec(vec![], &[usize::MAX, 2]).is_err());
}

#[test]
fn view_errors_name_the_op() {
    let x = Tensor::zeros(&[2, 3]);
    let msg = |e: Error| e.to_string();
    assert!(msg(x.reshape(&[4]).unwrap_err()).contains("reshape"));
    assert!(msg(x.transpose(0, 2).unwrap_err()).contains("transpose"));
    assert!(msg(x.narrow(1, 2, 2).unwrap_err()).contains("narrow"));
    assert!(msg(x.squeeze(0).unwrap_err()).contains("squeeze"));
    assert!(msg(x.permute(&[0, 0]).unwrap_err()).contains("permute"));
    assert!(msg(x.broadcast_to(&[3, 3]).unwrap_err()).contains("broadcast_to"));
}

#[test]
fn elementwise_with_broadcasting() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let row = t(&[10., 20., 30.], &[3]);
    let col = t(&[100., 200.], &[2, 1]);
    assert_eq!(a.add(&row).unwrap().to_vec(), vec![11., 22., 33., 14., 25., 36.]);
    assert_eq!(a.add(&col).unwrap().to_vec(), vec![101., 102., 103., 204., 205., 206.]);
    assert_eq!(row.add(&col).unwrap().shape(), &[2, 3]);
    assert_eq!(a.sub(&row).unwrap().to_vec(), vec![-9., -18., -27., -6., -15., -24.]);
    assert_eq!(a.mul(&Tensor::scalar(2.0)).unwrap().to_vec(), vec![2., 4., 6., 8., 10., 12.]);
    assert_eq!(a.div(&row).unwrap().to_vec()[0], 0.1);
    assert_eq!((&a + &row).unwrap().to_vec(), a.add(&row).unwrap().to_vec());
    let err = a.add(&t(&[1., 2.], &[2])).unwrap_err();
    assert_eq!(err.to_string(), "shape mismatch in add: [2, 3] vs [2]");
}

#[test]
fn unary_and_comparisons() {
    let x = t(&[-2., -0.5, 0., 1., 4.], &[5]);
    assert_close(&x.exp().unwrap().to_vec(), &[(-2f32).exp(), (-0.5f32).exp(), 1.0, 1f32.exp(), 4f32.exp()], 1e-6);
    assert_close(&t(&[1., 4.], &[2]).log().unwrap().to_vec(), &[0.0, 4f32.ln()], 1e-6);
    assert_eq!(t(&[4., 9.], &[2]).sqrt().unwrap().to_vec(), vec![2., 3.]);
    assert_eq!(x.abs().unwrap().to_vec(), vec![2., 0.5, 0., 1., 4.]);
    assert_eq!(x.neg().unwrap().to_vec(), vec![2., 0.5, -0., -1., -4.]);
    assert_eq!(x.powf(2.0).unwrap().to_vec(), vec![4., 0.25, 0., 1., 16.]);
    assert_eq!(x.clamp(-1.0, 1.0).unwrap().to_vec(), vec![-1., -0.5, 0., 1., 1.]);
    assert!(x.clamp(1.0, -1.0).is_err());
    let zero = Tensor::scalar(0.0);
    assert_eq!(x.gt(&zero).unwrap().to_vec(), vec![0., 0., 0., 1., 1.]);
    assert_eq!(x.ge(&zero).unwrap().to_vec(), vec![0., 0., 1., 1., 1.]);
    assert_eq!(x.lt(&zero).unwrap().to_vec(), vec![1., 1., 0., 0., 0.]);
    assert_eq!(x.le(&zero).unwrap().to_vec(), vec![1., 1., 1., 0., 0.]);
    assert_eq!(x.eq(&zero).unwrap().to_vec(), vec![0., 0., 1., 0., 0.]);
    assert_eq!(x.ne(&zero).unwrap().to_vec(), vec![1., 1., 0., 1., 1.]);
    assert_eq!(x.maximum(&zero).unwrap().to_vec(), vec![0., 0., 0., 1., 4.]);
    // NaN propagates, as in PyTorch: a diverging model must not look finite.
    let nan = t(&[f32::NAN, 1.0], &[2]);
    assert!(nan.maximum(&zero).unwrap().to_vec()[0].is_nan());
    assert!(nan.minimum(&zero).unwrap().to_vec()[0].is_nan());
    assert!(nan.relu().unwrap().to_vec()[0].is_nan());
    assert_eq!(x.minimum(&zero).unwrap().to_vec(), vec![-2., -0.5, 0., 0., 0.]);
}

#[test]
fn max_of_two_splits_the_gradient_on_ties() {
    let a = t(&[1.0, 2.0], &[2]).set_requires_grad(true);
    let b = t(&[1.0, 3.0], &[2]).set_requires_grad(true);
    let g = a.maximum(&b).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&a).unwrap().to_vec(), vec![0.5, 0.0]);
    assert_eq!(g.get(&b).unwrap().to_vec(), vec![0.5, 1.0]);
}

#[test]
fn reductions() {
    let x = t(&[1., 5., 3., 4., 2., 6.], &[2, 3]);
    assert_eq!(x.sum(0, false).unwrap().to_vec(), vec![5., 7., 9.]);
    assert_eq!(x.sum(1, true).unwrap().shape(), &[2, 1]);
    assert_eq!(x.sum(1, false).unwrap().to_vec(), vec![9., 12.]);
    assert_eq!(x.mean(1, false).unwrap().to_vec(), vec![3., 4.]);
    assert_eq!(x.max(1, false).unwrap().to_vec(), vec![5., 6.]);
    assert_eq!(x.min(0, false).unwrap().to_vec(), vec![1., 2., 3.]);
    assert_eq!(x.argmax(1, false).unwrap().to_vec(), vec![1., 2.]);
    assert_eq!(x.argmin(1, false).unwrap().to_vec(), vec![0., 1.]);
    assert_eq!(x.argmax(0, true).unwrap().shape(), &[1, 3]);
    assert_eq!(x.sum_all().unwrap().to_scalar().unwrap(), 21.0);
    assert_eq!(x.mean_all().unwrap().to_scalar().unwrap(), 3.5);
    assert_eq!(x.max_all().unwrap().to_scalar().unwrap(), 6.0);
    assert_eq!(x.min_all().unwrap().to_scalar().unwrap(), 1.0);
    assert_eq!(x.t().unwrap().sum(1, false).unwrap().to_vec(), vec![5., 7., 9.]);
    assert_eq!(x.sum_dims(&[0, 1], false).unwrap().to_vec(), vec![21.0]);
    let y = Tensor::arange(0.0, 24.0, 1.0).unwrap().reshape(&[2, 3, 4]).unwrap();
    assert_eq!(y.sum(1, false).unwrap().to_vec(), vec![12., 15., 18., 21., 48., 51., 54., 57.]);
    assert!(x.sum(2, false).unwrap_err().to_string().contains("dimension 2 out of range"));
    assert!(Tensor::zeros(&[0, 2]).max(0, false).is_err());
    // NaN propagates through max, as a NaN loss must.
    assert!(t(&[1.0, f32::NAN, 3.0], &[3]).max_all().unwrap().to_scalar().unwrap().is_nan());
}

#[test]
fn matmul_values_and_errors() {
    let a = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[7., 8., 9., 10., 11., 12.], &[3, 2]);
    assert_eq!(a.matmul(&b).unwrap().to_vec(), vec![58., 64., 139., 154.]);
    // Transposed operands read in place.
    assert_eq!(b.t().unwrap().matmul(&a.t().unwrap()).unwrap().to_vec(), vec![58., 139., 64., 154.]);
    // Batched, with the batch axis broadcast.
    let batch = Tensor::stack(&[&a, &a.mul_scalar(2.0).unwrap()], 0).unwrap();
    let out = batch.matmul(&b).unwrap();
    assert_eq!(out.shape(), &[2, 2, 2]);
    assert_eq!(out.to_vec(), vec![58., 64., 139., 154., 116., 128., 278., 308.]);
    assert_eq!(a.matmul(&t(&[1., 1., 1.], &[3])).unwrap().to_vec(), vec![6., 15.]);
    let err = a.matmul(&a).unwrap_err();
    assert_eq!(err.to_string(), "shape mismatch in matmul: [2, 3] vs [2, 3]");
    // A larger product against a plain triple loop (exercises gemm's blocking and threads).
    let mut rng = Rng::seed(3);
    let (m, k, n) = (67, 300, 45);
    let x = Tensor::rand_uniform(&[m, k], -1.0, 1.0, &mut rng).unwrap();
    let y = Tensor::rand_uniform(&[k, n], -1.0, 1.0, &mut rng).unwrap();
    let (xv, yv) = (x.to_vec(), y.to_vec());
    let mut want = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| xv[i * k + p] as f64 * yv[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    assert_close(&x.matmul(&y).unwrap().to_vec(), &want, 1e-4);
    // A small result over a long inner axis, with a transposed operand (a convolution's weight
    // gradient): the inner axis is split across threads.
    let (m, k, n) = (5, 20_011, 3);
    let x = Tensor::rand_uniform(&[m, k], -1.0, 1.0, &mut rng).unwrap();
    let y = Tensor::rand_uniform(&[n, k], -1.0, 1.0, &mut rng).unwrap();
    let (xv, yv) = (x.to_vec(), y.to_vec());
    let want: Vec<f32> = (0..m * n)
        .map(|ij| (0..k).map(|p| xv[ij / n * k + p] as f64 * yv[ij % n * k + p] as f64).sum::<f64>() as f32)
        .collect();
    assert_close(&x.matmul(&y.t().unwrap()).unwrap().to_vec(), &want, 2e-3);
}

/// The fused dense-layer op gives exactly what the three ops it replaces give, values and
/// gradients, with and without a bias, for one row (the matrix-vector kernel) and for many
/// (gemm), with gradients asked for only some inputs; bad shapes are errors that say so.
#[test]
fn linear_is_matmul_by_the_transpose_plus_bias() {
    let mut rng = Rng::seed(11);
    // (rows, in, out, x a transposed view, W a transposed view): one row, many, none, a single
    // output or input (the products' gradients then take other kernels), a column-major x,
    // and a column-major W (tied weights).
    let cases = [
        (1, 784, 20, false, false),
        (1, 9, 3, false, false),
        (37, 50, 19, false, false),
        (0, 4, 3, false, false),
        (2100, 7, 1, false, false),
        (5, 1, 7, false, false),
        (6, 5, 4, true, false),
        (6, 5, 4, false, true),
    ];
    // A [rows, cols] parameter, stored as given or as the transpose of a [cols, rows] one: the
    // tensor used and the one whose gradient is looked up.
    fn param(rows: usize, cols: usize, transposed: bool, rng: &mut Rng) -> (Tensor, Tensor) {
        let shape = if transposed { [cols, rows] } else { [rows, cols] };
        let base = Tensor::rand_uniform(&shape, -1.0, 1.0, rng).unwrap().set_requires_grad(true);
        let used = if transposed { base.t().unwrap() } else { base.clone() };
        (used, base)
    }
    for (rows, inputs, outputs, x_t, w_t) in cases {
        let (x, x_base) = param(rows, inputs, x_t, &mut rng);
        let (w, w_base) = param(outputs, inputs, w_t, &mut rng);
        let b = Tensor::rand_uniform(&[outputs], -1.0, 1.0, &mut rng).unwrap().set_requires_grad(true);
        let fused = x.linear(&w, Some(&b)).unwrap();
        let plain = x.matmul(&w.t().unwrap()).unwrap().add(&b).unwrap();
        assert_eq!(fused.shape(), &[rows, outputs]);
        assert_eq!(fused.to_vec(), plain.to_vec(), "{rows}x{inputs}x{outputs}");
        // A loss that weighs each output differently, so that every gradient term shows.
        let weights = Tensor::rand_uniform(&[rows, outputs], -1.0, 1.0, &mut rng).unwrap();
        let gf = fused.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = plain.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, p) in [("x", &x_base), ("w", &w_base), ("b", &b)] {
            let (f, q) = (gf.get(p).unwrap(), gp.get(p).unwrap());
            assert_eq!(f.to_vec(), q.to_vec(), "gradient of {name}, {rows}x{inputs}x{outputs}");
            assert_eq!(f.layout(), q.layout(), "layout of {name}'s gradient");
        }
        let no_bias = x.linear(&w, None).unwrap();
        assert_eq!(no_bias.to_vec(), x.matmul(&w.t().unwrap()).unwrap().to_vec());
    }
    // Only the weight asks for a gradient: the others get none, and the weight's is gᵀ·x.
    let x = t(&[1., 2., 3., 4.], &[2, 2]);
    let w = t(&[1., 0., 0., 1., 1., 1.], &[3, 2]).set_requires_grad(true);
    let b = t(&[0.5, -0.5, 0.], &[3]);
    let y = x.linear(&w, Some(&b)).unwrap();
    assert_eq!(y.to_vec(), vec![1.5, 1.5, 3., 3.5, 3.5, 7.]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none() && g.get(&b).is_none());
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![4., 6., 4., 6., 4., 6.]);
    // Shapes.
    let e = |r: sinapse::Result<Tensor>| r.unwrap_err().to_string();
    assert!(e(x.linear(&t(&[1., 2., 3.], &[1, 3]), None)).contains("[2, 2] vs [1, 3]"));
    assert!(e(x.linear(&w, Some(&t(&[1., 2.], &[2])))).contains("linear bias"));
    assert!(e(x.reshape(&[4]).unwrap().linear(&w, None)).contains("input must be [rows, in]"));
    assert!(e(x.linear(&w.reshape(&[6]).unwrap(), None)).contains("weight must be [out, in]"));
}

#[test]
fn indexing() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
    let rows = t(&[2., 0.], &[2]);
    assert_eq!(x.index_select(0, &rows).unwrap().to_vec(), vec![5., 6., 1., 2.]);
    assert_eq!(x.index_select(1, &t(&[1.], &[1])).unwrap().to_vec(), vec![2., 4., 6.]);
    let idx = t(&[1., 0., 0.], &[3, 1]);
    assert_eq!(x.gather(1, &idx).unwrap().to_vec(), vec![2., 3., 5.]);
    let c = Tensor::cat(&[&x, &x.narrow(0, 0, 1).unwrap()], 0).unwrap();
    assert_eq!(c.shape(), &[4, 2]);
    assert_eq!(c.to_vec(), vec![1., 2., 3., 4., 5., 6., 1., 2.]);
    let s = Tensor::stack(&[&t(&[1., 2.], &[2]), &t(&[3., 4.], &[2])], 1).unwrap();
    assert_eq!(s.to_vec(), vec![1., 3., 2., 4.]);
    // Errors name the op and the offending index.
    let e = x.index_select(0, &t(&[3.], &[1])).unwrap_err();
    assert_eq!(e.to_string(), "index_select: index 3 out of range for size 3");
    assert!(x.gather(1, &t(&[0.5, 0., 0.], &[3, 1])).unwrap_err().to_string().contains("index 0.5"));
    assert!(x.gather(1, &t(&[-1., 0., 0.], &[3, 1])).is_err());
    assert!(Tensor::cat(&[&x, &Tensor::zeros(&[1, 3])], 0).unwrap_err().to_string().contains("cat"));
    assert!(Tensor::cat(&[], 0).is_err());
    assert!(Tensor::stack(&[&x, &x.t().unwrap()], 0).is_err());
    // The adjoints: rows 2 and 0 of [3, 2] zeros get [1, 1] twice and [5, 5] once.
    let z = Tensor::zeros(&[3, 2]);
    let added = z.index_add(0, &t(&[2., 0., 2.], &[3]), &t(&[1., 1., 5., 5., 1., 1.], &[3, 2])).unwrap();
    assert_eq!(added.to_vec(), vec![5., 5., 0., 0., 2., 2.]);
    let scattered = z.scatter_add(1, &t(&[1., 1., 0.], &[3, 1]), &t(&[1., 2., 3.], &[3, 1])).unwrap();
    assert_eq!(scattered.to_vec(), vec![0., 1., 0., 2., 3., 0.]);
    assert!(z
        .scatter_add(1, &t(&[2., 0., 0.], &[3, 1]), &t(&[1., 2., 3.], &[3, 1]))
        .unwrap_err()
        .to_string()
        .contains("scatter_add: index 2"));
    assert!(z.index_add(0, &t(&[0.], &[1]), &t(&[1., 2., 3.], &[1, 3])).is_err(), "source of the wrong shape");
    let padded = t(&[1., 2., 3., 4.], &[2, 2]).pad(1, 1, 2, 9.).unwrap();
    assert_eq!(padded.to_vec2().unwrap(), vec![vec![9., 1., 2., 9., 9.], vec![9., 3., 4., 9., 9.]]);
    let picked = t(&[1., 0., 1.], &[3]).where_cond(&t(&[1., 2., 3.], &[3]), &t(&[-1.], &[1])).unwrap();
    assert_eq!(picked.to_vec(), vec![1., -1., 3.]);
}

#[test]
fn empty_axes_and_huge_windows_are_not_panics() {
    // Softmax over an empty axis is an empty result.
    assert_eq!(Tensor::zeros(&[2, 0, 3]).softmax(1).unwrap().shape(), &[2, 0, 3]);
    // Output sizes that do not fit in memory's counting are errors naming the op.
    let huge = Window { kernel: [1, 1], stride: [1 << 40, 1 << 40], padding: [0, 0], dilation: [1, 1] };
    let e = Tensor::zeros(&[1, 1]).col2im([1, 1, 1 << 40, 1 << 40], huge).unwrap_err().to_string();
    assert!(e.contains("col2im"), "{e}");
    let padded = Window { kernel: [1, 1], stride: [1, 1], padding: [1 << 31, 1 << 31], dilation: [1, 1] };
    let e = Tensor::zeros(&[1, 1, 1, 1]).im2col(padded, 0.0).unwrap_err().to_string();
    assert!(e.contains("im2col"), "{e}");
}

#[test]
fn copy_from_a_view_of_itself() {
    // The source shares the destination's storage: contiguous, and transposed.
    let x = t(&[1., 2., 3., 4.], &[2, 2]);
    x.copy_from(&x.detach()).unwrap();
    assert_eq!(x.to_vec(), vec![1., 2., 3., 4.]);
    x.copy_from(&x.t().unwrap()).unwrap();
    assert_eq!(x.to_vec(), vec![1., 3., 2., 4.]);
}

#[test]
fn copy_from_a_strided_view_into_a_view() {
    // Another tensor's transpose into two columns of a wider one: only those change.
    let src = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let dst = Tensor::full(&[3, 4], 9.0);
    dst.narrow(1, 1, 2).unwrap().copy_from(&src.t().unwrap()).unwrap();
    assert_eq!(dst.to_vec(), vec![9., 1., 4., 9., 9., 2., 5., 9., 9., 3., 6., 9.]);
    assert_eq!(src.to_vec(), vec![1., 2., 3., 4., 5., 6.]);
}

#[test]
fn devices_are_values_a_user_handles() {
    use sinapse::nn::{Linear, Module};
    use sinapse::Device;
    let x = t(&[1., 2., 3., 4.], &[2, 2]);
    assert_eq!(x.device(), Device::Cpu);
    assert_eq!(x.dtype(), sinapse::DType::F32);
    // Moving to where it already is returns the same tensor.
    assert_eq!(x.to(Device::Cpu).unwrap().id(), x.id());
    assert_eq!(Device::parse("auto").unwrap(), Device::best());
    assert!(Device::available().contains(&Device::Cpu));
    // An absent device is an error naming it, from tensors, modules and constructors alike
    // (no machine has GPU number 999).
    let absent = Device::Cuda(999);
    let e = x.to(absent).unwrap_err().to_string();
    assert!(e.contains("cuda:999") && e.contains("not available"), "{e}");
    let layer = Linear::new(2, 3, &mut sinapse::Rng::seed(0)).unwrap();
    let before = layer.weight.to_vec();
    assert!(layer.to(absent).unwrap_err().to_string().contains("cuda:999"));
    assert_eq!(layer.device(), Device::Cpu, "a failed move leaves the parameters where they were");
    assert_eq!(layer.weight.to_vec(), before);
    layer.to(Device::Cpu).unwrap();
    assert!(Tensor::zeros_on(&[2], absent).is_err());
    assert_eq!(Tensor::zeros_on(&[2], Device::Cpu).unwrap().to_vec(), vec![0., 0.]);
    assert_eq!(x.ones_like().unwrap().device(), Device::Cpu);
    assert_eq!(Tensor::arange_on(0., 3., 1., Device::Cpu).unwrap().to_vec(), vec![0., 1., 2.]);
}

#[test]
fn large_elementwise_ops_match_small_ones() {
    // Above the parallel threshold the work is split across threads; results must not change.
    let n = 200_000;
    let x = Tensor::rand_uniform(&[n], -3.0, 3.0, &mut Rng::seed(5)).unwrap();
    let y = x.exp().unwrap().add(&x).unwrap().to_vec();
    let xv = x.to_vec();
    for i in (0..n).step_by(9973) {
        assert_eq!(y[i], xv[i].exp() + xv[i]);
    }
}

#[test]
fn debug_output_is_short_and_informative() {
    let x = Tensor::ones(&[2]).set_requires_grad(true);
    assert_eq!(format!("{x:?}"), "Tensor(shape=[2], data=[1.0, 1.0], requires_grad)");
    let y = x.exp().unwrap();
    assert!(format!("{y:?}").contains("grad_fn=exp"));
    assert!(format!("{:?}", Tensor::zeros(&[100])).contains("..."));
}

#[test]
fn negative_axes_count_from_the_back() {
    let x = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    assert_eq!(x.softmax(-1).unwrap().to_vec(), x.softmax(1).unwrap().to_vec());
    assert_eq!(x.sum(-2, false).unwrap().to_vec(), vec![5., 7., 9.]);
    assert_eq!(x.transpose(-2, -1).unwrap().shape(), &[3, 2]);
    assert_eq!(x.unsqueeze(-1).unwrap().shape(), &[2, 3, 1], "-1 appends an axis");
    assert_eq!(Tensor::cat(&[&x, &x], -1).unwrap().shape(), &[2, 6]);
    assert_eq!(Tensor::stack(&[&x, &x], -1).unwrap().shape(), &[2, 3, 2]);
    assert_eq!(x.narrow(-1, 1, 2).unwrap().to_vec(), vec![2., 3., 5., 6.]);
    assert_eq!(x.dim(-1).unwrap(), 3);
    let e = x.softmax(-3).unwrap_err().to_string();
    assert!(e.contains("softmax: dimension -3 out of range for a tensor of rank 2"), "{e}");
}

#[test]
fn arithmetic_with_numbers() -> sinapse::Result<()> {
    let x = t(&[1., 2., 4.], &[3]);
    assert_eq!((&x + 1.0)?.to_vec(), vec![2., 3., 5.]);
    assert_eq!((&x - 1.0)?.to_vec(), vec![0., 1., 3.]);
    assert_eq!((1.0 - &x)?.to_vec(), vec![0., -1., -3.]);
    assert_eq!((&x * 2.0)?.to_vec(), vec![2., 4., 8.]);
    assert_eq!((2.0 * &x)?.to_vec(), vec![2., 4., 8.]);
    assert_eq!((&x / 2.0)?.to_vec(), vec![0.5, 1., 2.]);
    assert_eq!((4.0 / &x)?.to_vec(), vec![4., 2., 1.]);
    // Gradients flow through them like through the named ops: d(1 - 2x)/dx = -2.
    let w = x.set_requires_grad(true);
    let g = (1.0 - &(&w * 2.0)?)?.sum_all()?.backward()?;
    assert_eq!(g.get(&w).unwrap().to_vec(), vec![-2., -2., -2.]);
    assert!(format!("{g:?}").starts_with("Gradients(1 tensors"));
    Ok(())
}

/// Four disagreements with PyTorch found by replaying random graphs against it, fixed.
#[test]
fn edge_cases_agree_with_pytorch() {
    // d/dx x^0 is 0 everywhere, at x = 0 too (the formula p·x^(p-1) would give 0·∞ = NaN).
    let x = t(&[0.0, 2.0, -1.5], &[3]).set_requires_grad(true);
    let g = x.powf(0.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec(), vec![0.0, 0.0, 0.0]);
    // p = 2 still has its gradient 2x.
    let g = x.powf(2.0).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec(), vec![0.0, 4.0, -3.0]);

    // max/min over a lane holding a NaN: the NaN is the result, and the gradient goes to it,
    // not NaN into every element.
    let x = t(&[1.0, f32::NAN, 3.0, 4.0, 5.0, 2.0], &[2, 3]).set_requires_grad(true);
    for reduce in [|x: &Tensor| x.max(1, false), |x: &Tensor| x.min(1, false)] {
        let y = reduce(&x).unwrap();
        assert!(y.to_vec()[0].is_nan());
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g.get(&x).unwrap().to_vec();
        assert_eq!(g[..3], [0.0, 1.0, 0.0], "the gradient goes to the NaN");
        assert_eq!(g[3..].iter().sum::<f32>(), 1.0, "the other lane is unchanged: {g:?}");
    }

    // An empty range is an error, not a panic.
    let e = sinapse::Rng::seed(0).below(0).unwrap_err().to_string();
    assert!(e.contains("0..0"), "{e}");
    assert!(sinapse::Rng::seed(0).below(3).unwrap() < 3);

    // Summing an axis named twice is an error, as in PyTorch.
    let x = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let e = x.sum_dims(&[1, 1], false).unwrap_err().to_string();
    assert!(e.contains("repeated"), "{e}");
    assert_eq!(x.sum_dims(&[0, 1], false).unwrap().to_vec(), vec![10.0]);
}

/// The common op set's shapes, edge cases and errors (values and gradients are checked
/// against PyTorch in torch_parity.rs and by gradcheck).
#[test]
fn common_ops_shapes_and_errors() {
    use sinapse::PadMode;
    let x = Tensor::arange(0.0, 12.0, 1.0).unwrap().reshape(&[3, 4]).unwrap();
    let shapes = |v: Vec<Tensor>| v.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>();
    assert_eq!(shapes(x.split(3, 1).unwrap()), [vec![3, 3], vec![3, 1]]);
    assert_eq!(shapes(x.chunk(2, 0).unwrap()), [vec![2, 4], vec![1, 4]]);
    assert_eq!(shapes(x.unbind(1).unwrap()), vec![vec![3]; 4]);
    assert_eq!(x.unbind(0).unwrap()[1].to_vec(), [4.0, 5.0, 6.0, 7.0]);
    assert_eq!(Tensor::eye(3).unwrap().to_vec(), [1., 0., 0., 0., 1., 0., 0., 0., 1.]);
    assert_eq!(x.prod(1, false).unwrap().to_vec(), [0.0, 840.0, 7920.0]);
    assert_eq!(Tensor::zeros(&[2, 0]).prod(1, false).unwrap().to_vec(), [1.0, 1.0], "the empty product");
    assert!(x.var(0, 3, false).unwrap().to_vec().iter().all(|v| v.is_infinite()), "n <= correction divides by 0");
    assert_eq!(Tensor::zeros(&[3]).norm(2.0).unwrap().to_scalar().unwrap(), 0.0);
    let inf = Tensor::from_vec(vec![f32::NEG_INFINITY; 3], &[1, 3]).unwrap();
    assert_eq!(inf.logsumexp(1, false).unwrap().to_vec(), [f32::NEG_INFINITY]);
    let nan = Tensor::from_vec(vec![2.0, f32::NAN, 1.0], &[3]).unwrap();
    let (v, i) = nan.sort(0, false).unwrap();
    assert_eq!(i.to_vec(), [2.0, 0.0, 1.0], "NaN sorts last");
    assert!(v.to_vec()[2].is_nan());
    assert_eq!(x.pad_with(1, 1, 1, PadMode::Constant(-1.0)).unwrap().shape(), [3, 6]);

    let err = |r: sinapse::Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(x.topk(5, 1, true).map(|p| p.0)).contains("k = 5 is more than axis 1"));
    assert!(err(x.pad_with(1, 4, 0, PadMode::Reflect)).contains("must be smaller than axis 1 of size 4"));
    assert!(err(x.norm(0.0)).contains("finite p > 0"));
    assert!(err(x.repeat(&[2])).contains("one count per axis"));
    assert!(err(Tensor::einsum("ij,jk->ik", &[&x, &x])).contains("letter j is 4 in one place and 3 in another"));
    assert!(err(Tensor::einsum("ii->i", &[&Tensor::eye(3).unwrap()])).contains("diagonals are not supported"));
    assert!(err(Tensor::einsum("ij->k", &[&x])).contains("output letter k"));
    assert!(err(Tensor::einsum("ij,jk,kl->il", &[&x, &x])).contains("one or two are supported"));
    assert!(err(x.masked_fill(&Tensor::zeros(&[2, 3, 4]), 0.0)).contains("masked_fill"));
}

/// Edge cases a review found: infinities and NaN stay where they belong, PyTorch's values at
/// the limits, and sizes too large are errors, not panics.
#[test]
fn common_ops_edge_cases_follow_pytorch() {
    let t = |v: &[f32]| Tensor::from_slice(v, &[v.len()]).unwrap();
    let idx = Tensor::from_slice(&[0.0], &[1]).unwrap();
    assert_eq!(t(&[f32::INFINITY, 1.0]).scatter(0, &idx, &t(&[5.0])).unwrap().to_vec(), [5.0, 1.0]);
    assert_eq!(t(&[1.0, f32::INFINITY, 2.0]).cumsum(0).unwrap().to_vec(), [1.0, f32::INFINITY, f32::INFINITY]);
    let with_nan = t(&[1.0, f32::NAN]).cumsum(0).unwrap().to_vec();
    assert!(with_nan[0] == 1.0 && with_nan[1].is_nan(), "{with_nan:?}");
    let x = t(&[0.0, 1.0, 4.0]).set_requires_grad(true);
    let g = x.norm(0.5).unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().to_vec()[0], 0.0, "a zero entry's gradient for p < 1");
    assert_eq!(t(&[1.0, 2.0]).var(0, 2, false).unwrap().to_vec(), [f32::INFINITY]);
    assert!(t(&[3.0, 3.0]).var(0, 2, false).unwrap().to_vec()[0].is_nan());
    let err = |r: sinapse::Result<Tensor>| r.unwrap_err().to_string();
    assert!(err(t(&[1.0, 2.0]).flip(&[0, 0])).contains("appears twice"));
    let img = Tensor::zeros(&[1, 1, 4, 4]);
    assert!(err(img.adaptive_avg_pool2d([1 << 62, 1])).contains("adaptive_avg_pool2d"));
    assert!(err(img.upsample_nearest2d([usize::MAX, 2])).contains("upsample_nearest2d"));
    let w = Tensor::zeros(&[1, 1, 2, 2]);
    assert!(err(img.conv_transpose2d(&w, None, [usize::MAX, 1], [0, 0], [0, 0], [1, 1])).contains("overflows"));
    let up = sinapse::nn::Upsample { scale: [usize::MAX, 1], mode: sinapse::nn::UpsampleMode::Nearest };
    assert!(err(sinapse::nn::Module::forward(&up, &img, sinapse::nn::Mode::Eval)).contains("overflows"));
    assert!(err(Tensor::eye(1 << 40)).contains("eye"));
    let mut mha = sinapse::nn::MultiheadAttention::new(4, 2, 0.0, &mut sinapse::Rng::seed(0)).unwrap();
    mha.heads = 0;
    let e = sinapse::nn::Module::forward(&mha, &Tensor::zeros(&[1, 3, 4]), sinapse::nn::Mode::Eval).unwrap_err();
    assert!(e.to_string().contains("0 heads do not divide"), "{e}");
}
