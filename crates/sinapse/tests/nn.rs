//! Activations and losses against known values; layers; training that must work.

mod common;

use common::assert_close;
use sinapse::data::idx::read_labelled_images;
use sinapse::data::mnist;
use sinapse::data::Dataset;
use sinapse::nn::{self, loss, Mode, Module};
use sinapse::optim::{Optimizer, Sgd};
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Silent, Task};
use sinapse::{Rng, Tensor};

fn t(data: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(data, shape).unwrap()
}

fn round3(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| (x * 1000.0).round() / 1000.0).collect()
}

#[test]
fn softmax_matches_the_course_example() {
    let y = t(&[1., 2., 3., 4., 5.], &[5]).softmax(0).unwrap().to_vec();
    assert_eq!(round3(&y), vec![0.012, 0.032, 0.086, 0.234, 0.636]);
    assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn activations_are_stable_for_large_inputs() {
    let big = t(&[1000., 1001.], &[2]);
    let s = big.softmax(0).unwrap().to_vec();
    assert_close(&s, &[0.26894142, 0.7310586], 1e-6);
    let ls = big.log_softmax(0).unwrap().to_vec();
    assert_close(&ls, &[-1.3132616, -0.31326166], 1e-5);
    let tiny = t(&[-1000., 0.], &[2]).log_softmax(0).unwrap().to_vec();
    assert!(tiny.iter().all(|v| v.is_finite()), "{tiny:?}");
    assert_eq!(tiny[0], -1000.0);
    let sig = t(&[-1000., 0., 1000.], &[3]).sigmoid().unwrap().to_vec();
    assert_eq!(sig, vec![0.0, 0.5, 1.0]);
    assert_eq!(t(&[-1000., 1000.], &[2]).tanh().unwrap().to_vec(), vec![-1.0, 1.0]);
}

#[test]
fn activation_values() {
    let x = t(&[-2., -0.5, 0., 0.5, 2.], &[5]);
    assert_eq!(x.step().unwrap().to_vec(), vec![0., 0., 0., 1., 1.]);
    assert_eq!(x.relu().unwrap().to_vec(), vec![0., 0., 0., 0.5, 2.]);
    assert_eq!(x.leaky_relu(0.1).unwrap().to_vec(), vec![-0.2, -0.05, 0., 0.5, 2.]);
    assert_close(&x.sigmoid().unwrap().to_vec(), &[0.11920292, 0.37754067, 0.5, 0.62245935, 0.8807971], 1e-6);
    assert_close(&x.tanh().unwrap().to_vec(), &[-0.9640276, -0.46211717, 0., 0.46211717, 0.9640276], 1e-6);
    // The step passes no gradient: its derivative is 0 wherever it exists.
    let xg = x.set_requires_grad(true);
    let g = xg.step().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&xg).unwrap().to_vec(), vec![0.0; 5]);
}

#[test]
fn loss_values_match_pytorch() {
    // Reference values computed with torch.nn.functional (2.x), mean reduction.
    let pred = t(&[0.5, -1.0, 2.0, 0.0], &[2, 2]);
    let target = t(&[1.0, -1.0, 0.0, 0.5], &[2, 2]);
    assert_close(&[loss::mse(&pred, &target).unwrap().to_scalar().unwrap()], &[(0.25 + 0.0 + 4.0 + 0.25) / 4.0], 1e-7);

    let p = t(&[0.9, 0.2, 0.6], &[3]);
    let y = t(&[1.0, 0.0, 1.0], &[3]);
    let want = -((0.9f32).ln() + (0.8f32).ln() + (0.6f32).ln()) / 3.0;
    assert_close(&[loss::binary_cross_entropy(&p, &y).unwrap().to_scalar().unwrap()], &[want], 1e-6);
    // p = 0 with y = 1: log clamped at -100, as PyTorch.
    let clamped = loss::binary_cross_entropy(&t(&[0.0], &[1]), &t(&[1.0], &[1])).unwrap();
    assert_eq!(clamped.to_scalar().unwrap(), 100.0);
    assert!(loss::binary_cross_entropy(&t(&[1.5], &[1]), &t(&[1.0], &[1])).is_err());

    let logits = t(&[2.1972246, -1.3862944, 0.4054651], &[3]); // logit(0.9), logit(0.2), logit(0.6)
    assert_close(&[loss::binary_cross_entropy_with_logits(&logits, &y).unwrap().to_scalar().unwrap()], &[want], 1e-5);
    // Huge logits stay finite: the loss of a confident wrong answer is about |x|.
    let far = loss::binary_cross_entropy_with_logits(&t(&[-500.0, 500.0], &[2]), &t(&[1.0, 0.0], &[2])).unwrap();
    assert_close(&[far.to_scalar().unwrap()], &[500.0], 1e-3);

    // F.cross_entropy(tensor([[1., 2., 3.], [1., 0., -1.]]), tensor([2, 0])) = 0.4076059
    let ce_logits = t(&[1., 2., 3., 1., 0., -1.], &[2, 3]);
    let classes = t(&[2., 0.], &[2]);
    assert_close(&[loss::cross_entropy(&ce_logits, &classes).unwrap().to_scalar().unwrap()], &[0.4076059], 1e-6);
    let one_hot = t(&[0., 0., 1., 1., 0., 0.], &[2, 3]);
    assert_close(
        &[loss::cross_entropy_with_probs(&ce_logits, &one_hot).unwrap().to_scalar().unwrap()],
        &[0.4076059],
        1e-6,
    );
    // Large logits: finite and exact.
    let big = loss::cross_entropy(&t(&[1000., 0.], &[1, 2]), &t(&[1.], &[1])).unwrap();
    assert_eq!(big.to_scalar().unwrap(), 1000.0);
}

#[test]
fn loss_shape_errors_name_the_loss() {
    let e = loss::mse(&Tensor::zeros(&[2, 3]), &Tensor::zeros(&[3])).unwrap_err();
    assert_eq!(e.to_string(), "shape mismatch in mse: [2, 3] vs [3]");
    let e = loss::cross_entropy(&Tensor::zeros(&[2, 3]), &Tensor::zeros(&[3])).unwrap_err();
    assert!(e.to_string().contains("cross_entropy"), "{e}");
    let e = loss::cross_entropy(&Tensor::zeros(&[2, 3]), &t(&[0., 3.], &[2])).unwrap_err();
    assert!(e.to_string().contains("class label 3 is not a class index in 0..3"), "{e}");
}

#[test]
fn linear_layer() {
    let w = t(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
    let b = t(&[0.5, -0.5], &[2]);
    let layer = nn::Linear::from_tensors(w, Some(b)).unwrap();
    let y = layer.forward(&t(&[1., 0., -1.], &[1, 3]), Mode::Eval).unwrap();
    assert_eq!(y.to_vec(), vec![1. - 3. + 0.5, 4. - 6. - 0.5]);
    assert_eq!(layer.num_parameters(), 8);
    let names: Vec<String> = layer.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["weight", "bias"]);
    let e = layer.forward(&Tensor::zeros(&[4, 5]), Mode::Eval).unwrap_err();
    assert!(e.to_string().contains("Linear(3 -> 2) expects inputs [.., 3], got shape [4, 5]"), "{e}");

    // PyTorch's default init: uniform in ±1/sqrt(fan_in), weight and bias.
    let l = nn::Linear::new(400, 300, &mut Rng::seed(0)).unwrap();
    let bound = 1.0 / 20.0;
    let w = l.weight.to_vec();
    assert!(w.iter().all(|v| v.abs() <= bound));
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(max > 0.99 * bound, "weights should fill the range, max {max}");
    assert!(l.bias.as_ref().unwrap().to_vec().iter().all(|v| v.abs() <= bound));
}

#[test]
fn sequential_names_parameters_like_pytorch() {
    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(4, 3, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Linear::new(3, 2, &mut rng).unwrap());
    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["0.weight", "0.bias", "2.weight", "2.bias"]);
    assert_eq!(model.num_parameters(), 4 * 3 + 3 + 3 * 2 + 2);
    assert_eq!(model.describe(), "Sequential(Linear(4 -> 3), ReLU, Linear(3 -> 2))");
}

#[test]
fn sgd_step_is_w_minus_lr_grad() {
    let w = t(&[1.0, -2.0], &[2]).set_requires_grad(true);
    // L = 3·w1 + w2²  =>  dL/dw = [3, 2·w2] = [3, -4]
    let loss = w
        .mul(&t(&[3.0, 0.0], &[2]))
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&w.narrow(0, 1, 1).unwrap().powf(2.0).unwrap().sum_all().unwrap())
        .unwrap();
    let mut opt = Sgd::new(vec![w.clone()], 0.1).unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
    assert_close(&w.to_vec(), &[1.0 - 0.3, -2.0 + 0.4], 1e-6);
}

#[test]
fn an_mlp_learns_xor_where_the_perceptron_cannot() {
    let x = t(&[0., 0., 0., 1., 1., 0., 1., 1.], &[4, 2]);
    let y = t(&[0., 1., 1., 0.], &[4, 1]);
    let mut rng = Rng::seed(1);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(2, 4, &mut rng).unwrap())
        .add(nn::Tanh)
        .add(nn::Linear::new(4, 1, &mut rng).unwrap())
        .add(nn::Sigmoid);
    let mut opt = Sgd::new(model.parameters(), 1.0).unwrap();
    let first = loss::mse(&model.forward(&x, Mode::Train).unwrap(), &y).unwrap().to_scalar().unwrap();
    for _ in 0..3000 {
        let loss = loss::mse(&model.forward(&x, Mode::Train).unwrap(), &y).unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
    }
    let out = model.forward(&x, Mode::Eval).unwrap().to_vec();
    let classes: Vec<f32> = out.iter().map(|&o| if o > 0.5 { 1.0 } else { 0.0 }).collect();
    assert_eq!(classes, vec![0., 1., 1., 0.], "outputs {out:?}");
    let last = loss::mse(&model.forward(&x, Mode::Eval).unwrap(), &y).unwrap().to_scalar().unwrap();
    assert!(last < 0.01 && last < first / 10.0, "mse {first} -> {last}");
}

#[test]
fn mnist_mlp_reaches_the_course_accuracy() {
    // The bar: at least 0.91 test accuracy after 15 epochs (PyTorch: 0.920, 0.919).
    let mnist::Mnist { train, test } =
        mnist::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k")).unwrap();
    assert_eq!(train.x().shape(), &[8004, 784]);
    assert_eq!(test.x().shape(), &[1996, 784]);
    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(784, 256, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Linear::new(256, 128, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Linear::new(128, 10, &mut rng).unwrap());
    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 15, batch_size: 128, ..FitConfig::new(task) };
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let history = fit(&model, &mut opt, &train, None, &cfg, &mut Silent).unwrap();
    assert!(history.records[14].train_loss < history.records[0].train_loss / 3.0);
    let acc = evaluate(&model, &test, &task, LossKind::CrossEntropy, 500).unwrap().metric();
    assert!(acc >= 0.91, "test accuracy {acc}");
}

#[test]
fn a_nan_loss_stops_training_with_its_epoch_and_batch() {
    let x = t(&[1.0, f32::NAN, 0.0, 1.0], &[2, 2]);
    let labels = t(&[0.0, 1.0], &[2]);
    let model = nn::Linear::new(2, 2, &mut Rng::seed(0)).unwrap();
    let cfg = FitConfig { epochs: 3, batch_size: 2, ..FitConfig::new(Task::Classification { classes: 2 }) };
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let data = Dataset::new(x, labels).unwrap();
    let e = fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap_err();
    assert_eq!(e.to_string(), "non-finite value NaN in loss at epoch 1, batch 1");
}

#[test]
fn bad_mnist_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("sinapse-bad-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let images = dir.join("images");
    let labels = dir.join("labels");
    // 2 images of 2x2 but only 6 bytes of pixels.
    std::fs::write(&images, [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6]).unwrap();
    std::fs::write(&labels, [0, 0, 8, 1, 0, 0, 0, 2, 1, 2]).unwrap();
    let e = read_labelled_images(&images, &labels).err().unwrap().to_string();
    assert!(e.contains("images") && e.contains("promises 8 bytes, file holds 6"), "{e}");
    std::fs::write(&images, [0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 9]).unwrap();
    let e = read_labelled_images(&images, &labels).err().unwrap().to_string();
    assert!(e.contains("2 labels for 1 images"), "{e}");
    let e = mnist::load(dir.join("missing")).err().unwrap().to_string();
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn backward_after_an_in_place_update_is_an_error() {
    // Two losses from one forward pass each; an optimizer step between the first backward and
    // the second changes the weights the second graph saved: its backward must refuse.
    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new().add(nn::Linear::new(3, 2, &mut rng).unwrap());
    let x = Tensor::rand_normal(&[4, 3], 0.0, 1.0, &mut rng).unwrap();
    let y = Tensor::zeros(&[4, 2]);
    let loss = |m: &nn::Sequential| loss::mse(&m.forward(&x, Mode::Train).unwrap(), &y).unwrap();
    let (first, second) = (loss(&model), loss(&model));
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    opt.step(&first.backward().unwrap()).unwrap();
    let e = second.backward().expect_err("the weights changed under the graph").to_string();
    assert!(e.contains("modified in place") && e.contains("compute the loss again"), "{e}");
    // copy_from counts as a write too; a fresh forward pass is fine.
    let third = loss(&model);
    model.parameters()[0].copy_from(&Tensor::zeros(&[2, 3])).unwrap();
    assert!(third.backward().is_err());
    assert!(loss(&model).backward().is_ok());
}

/// A custom block: parameters are found through the fields, named as PyTorch names them.
#[derive(nn::Parameters)]
struct Block {
    fc1: nn::Linear,
    extra: Vec<nn::Linear>,
    head: Option<nn::Linear>,
    gate: Tensor,
    scale: f32,
    /// A field of a type that does not implement Parameters is skipped by name.
    #[parameters(skip)]
    _log: std::sync::Mutex<Vec<String>>,
}

impl Module for Block {
    fn forward(&self, x: &Tensor, mode: Mode) -> sinapse::Result<Tensor> {
        let mut h = self.fc1.forward(x, mode)?.relu()?;
        for l in &self.extra {
            h = l.forward(&h, mode)?;
        }
        h.mul(&self.gate)?.mul_scalar(self.scale)
    }
    fn describe(&self) -> String {
        "Block".into()
    }
}

#[derive(nn::Parameters)]
struct Pair(nn::Linear, nn::Linear);

#[test]
fn parameters_are_collected_from_the_fields() {
    let mut rng = Rng::seed(0);
    let block = Block {
        fc1: nn::Linear::new(3, 4, &mut rng).unwrap(),
        extra: vec![nn::Linear::new(4, 4, &mut rng).unwrap(), nn::Linear::new(4, 4, &mut rng).unwrap()],
        head: None,
        gate: Tensor::ones(&[4]).set_requires_grad(true),
        scale: 2.0,
        _log: std::sync::Mutex::new(Vec::new()),
    };
    let names: Vec<String> = block.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["fc1.weight", "fc1.bias", "extra.0.weight", "extra.0.bias", "extra.1.weight", "extra.1.bias", "gate"]
    );
    // Nested in a Sequential, and in a tuple struct.
    let seq = nn::Sequential::new().add(block).add(nn::Relu);
    assert_eq!(seq.named_parameters()[6].0, "0.gate");
    let pair = Pair(nn::Linear::new(2, 2, &mut rng).unwrap(), nn::Linear::new(2, 2, &mut rng).unwrap());
    let names: Vec<String> = nn::Module::named_parameters(&Wrap(pair)).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["0.0.weight", "0.0.bias", "0.1.weight", "0.1.bias"]);
    // They train: the gradient reaches every one.
    let x = Tensor::rand_normal(&[5, 3], 0.0, 1.0, &mut rng).unwrap();
    let loss = seq.forward(&x, Mode::Train).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    assert!(seq.parameters().iter().all(|p| grads.get(p).is_some()));
}

/// A model of one field holding a tuple struct (`0.0.weight`).
#[derive(nn::Parameters)]
struct Wrap(Pair);

impl Module for Wrap {
    fn forward(&self, x: &Tensor, mode: Mode) -> sinapse::Result<Tensor> {
        self.0 .1.forward(&self.0 .0.forward(x, mode)?, mode)
    }
    fn describe(&self) -> String {
        "Wrap".into()
    }
}

/// A module that holds no parameters.
#[derive(nn::Parameters)]
struct Doubler;

impl Module for Doubler {
    fn forward(&self, x: &Tensor, _mode: Mode) -> sinapse::Result<Tensor> {
        x.mul_scalar(2.0)
    }
    fn describe(&self) -> String {
        "Doubler".into()
    }
}

#[test]
fn nothing_to_train_is_an_error_not_a_silent_no_op() {
    // An optimizer or fit over a model with no parameters.
    let e = Sgd::new(Doubler.parameters(), 0.1).err().unwrap().to_string();
    assert!(e.contains("no parameters to optimize"), "{e}");
    assert!(sinapse::optim::Adam::new(vec![], 1e-3).is_err());
    let data = Dataset::new(Tensor::zeros(&[4, 2]), Tensor::zeros(&[4, 2])).unwrap();
    let w = Tensor::ones(&[1]).set_requires_grad(true);
    let mut opt = Sgd::new(vec![w], 0.1).unwrap();
    let e = fit(&Doubler, &mut opt, &data, None, &FitConfig::new(Task::Regression), &mut Silent).unwrap_err();
    assert!(e.to_string().contains("Doubler has no parameters to train"), "{e}");
    // backward() on a loss that nothing in its graph asks a gradient of: the forgotten
    // `let w = w.set_requires_grad(true);`.
    let w = Tensor::ones(&[3]);
    #[allow(unused_must_use)]
    {
        w.set_requires_grad(true); // the mistake: the result is dropped
    }
    let e = w.mul(&w).unwrap().sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(e.contains("nothing in this loss's graph requires a gradient"), "{e}");
    // gradcheck with nothing to check.
    let opts = sinapse::gradcheck::GradcheckOptions::default();
    let e = sinapse::gradcheck::gradcheck(|x| x[0].exp(), &[Tensor::ones(&[2])], opts).unwrap_err().to_string();
    assert!(e.contains("no input requires a gradient"), "{e}");
}

#[test]
fn loss_errors_speak_of_labels() {
    let logits = Tensor::zeros(&[2, 3]);
    let e = loss::cross_entropy(&logits, &t(&[0.5, 1.0], &[2])).unwrap_err().to_string();
    assert!(e.contains("cross_entropy: class label 0.5 is not a class index in 0..3"), "{e}");
    let e = loss::cross_entropy(&logits, &t(&[3.0, 1.0], &[2])).unwrap_err().to_string();
    assert!(e.starts_with("cross_entropy: class label 3"), "{e}");
}

/// A generic wrapper: the derive bounds its type parameter itself.
#[derive(nn::Parameters)]
struct Wrapped<M> {
    inner: M,
}

impl<M: Module> Module for Wrapped<M> {
    fn forward(&self, x: &Tensor, mode: Mode) -> sinapse::Result<Tensor> {
        self.inner.forward(x, mode)
    }
    fn describe(&self) -> String {
        "Wrapped".into()
    }
}

#[test]
fn shared_tensors_step_once_and_generics_derive() {
    let mut rng = Rng::seed(0);
    // Tied weights: one tensor under two names, one parameter to step.
    let first = nn::Linear::new(2, 2, &mut rng).unwrap();
    let mut second = nn::Linear::new(2, 2, &mut rng).unwrap();
    second.weight = first.weight.clone();
    let model = Wrap(Pair(first, second));
    assert_eq!(model.named_parameters().len(), 4, "both names are listed");
    assert_eq!(model.parameters().len(), 3, "the shared weight is one parameter");
    // One SGD step moves it by lr times its whole gradient (both uses summed), once.
    let w = model.0 .0.weight.clone();
    let before = w.to_vec();
    let x = Tensor::rand_normal(&[4, 2], 0.0, 1.0, &mut rng).unwrap();
    let grads = model.forward(&x, Mode::Train).unwrap().sum_all().unwrap().backward().unwrap();
    let g = grads.get(&w).unwrap().to_vec();
    Sgd::new(model.parameters(), 0.1).unwrap().step(&grads).unwrap();
    for ((after, b), g) in w.to_vec().iter().zip(&before).zip(&g) {
        assert!((after - (b - 0.1 * g)).abs() < 1e-6, "stepped once: {after} vs {b} - 0.1·{g}");
    }
    let wrapped = Wrapped { inner: nn::Linear::new(3, 1, &mut rng).unwrap() };
    let names: Vec<String> = wrapped.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["inner.weight", "inner.bias"]);
    // A tensor that results from an op is no parameter, even when it requires a gradient.
    let w = Tensor::ones(&[2]).set_requires_grad(true);
    let mut out = Vec::new();
    nn::Parameters::visit_parameters(&w.mul_scalar(2.0).unwrap(), "cached", &mut out);
    assert!(out.is_empty());
}

#[test]
fn multi_output_regression_metrics_are_per_value() {
    // Two target columns of very different scales: the training MAE is per value (not k
    // times it), and R² averages the columns' own R².
    let mut rng = Rng::seed(3);
    let x = Tensor::rand_normal(&[64, 2], 0.0, 1.0, &mut rng).unwrap();
    let y = x.mul(&t(&[1.0, 100.0], &[2])).unwrap();
    let data = Dataset::new(x, y).unwrap();
    let model = nn::Linear::new(2, 2, &mut rng).unwrap();
    let mut opt = sinapse::optim::Adam::new(model.parameters(), 0.05).unwrap();
    let trainer = sinapse::train::Trainer::new(Task::Regression).epochs(3).validation(&data);
    let h = trainer.fit(&model, &mut opt, &data).unwrap();
    let last = h.records.last().unwrap();
    let (train_mae, val_mae) = (last.train_metric, last.val_metric.unwrap());
    assert!(train_mae < 2.0 * val_mae && val_mae < 2.0 * train_mae, "train {train_mae} vs validation {val_mae}");
    let e = trainer.evaluate(&model, &data).unwrap();
    let m = sinapse::train::metrics::regression_metrics_columns(
        &model.forward(data.x(), Mode::Eval).unwrap().to_vec(),
        &data.y().to_vec(),
        2,
    )
    .unwrap();
    assert_eq!(e.r2(), Some(m.r2));
    let pooled = sinapse::train::metrics::regression_metrics(
        &model.forward(data.x(), Mode::Eval).unwrap().to_vec(),
        &data.y().to_vec(),
    )
    .unwrap();
    // Pooling columns of other scales gives another figure (here lower, elsewhere higher).
    assert!((m.r2 - pooled.r2).abs() > 0.05, "per column {} vs pooled {}", m.r2, pooled.r2);
}

#[test]
fn fused_lstm_names_the_input_of_the_wrong_shape() {
    let z = |s: &[usize]| Tensor::zeros(s);
    let (x, w_ih, w_hh, b, s) = (z(&[3, 2, 4]), z(&[20, 4]), z(&[20, 5]), z(&[20]), z(&[2, 5]));
    assert!(x.lstm(&w_ih, &w_hh, &b, &b, &s, &s).is_ok());
    let cases: [(&str, Result<Tensor, sinapse::Error>); 5] = [
        ("expects input [T, N, I]", z(&[3, 4]).lstm(&w_ih, &w_hh, &b, &b, &s, &s)),
        ("weight_hh must be [4H, H]", x.lstm(&w_ih, &z(&[20]), &b, &b, &s, &s)),
        ("weight_hh must be [4H, H]", x.lstm(&w_ih, &z(&[19, 5]), &b, &b, &s, &s)),
        ("weight_ih must have shape [20, 4]", x.lstm(&z(&[20, 3]), &w_hh, &b, &b, &s, &s)),
        ("c0 must have shape [2, 5]", x.lstm(&w_ih, &w_hh, &b, &b, &s, &z(&[3, 5]))),
    ];
    for (want, got) in cases {
        let e = got.unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
}

#[test]
fn recurrent_layers_pass_the_state_through_an_empty_sequence() {
    use sinapse::nn::{CellKind, Recurrent, RecurrentState};
    for kind in [CellKind::Rnn, CellKind::Lstm, CellKind::Gru] {
        let net = Recurrent::new(kind, 3, 4, 2, true, &mut sinapse::Rng::seed(1)).unwrap();
        let h = Tensor::from_vec((0..16).map(|v| v as f32 / 16.0).collect(), &[2, 2, 4]).unwrap();
        let c = (kind == CellKind::Lstm).then(|| h.mul_scalar(-1.0).unwrap());
        let state = RecurrentState { h: h.clone(), c: c.clone() };
        let (out, last) = net.forward_with_state(&Tensor::zeros(&[2, 0, 3]), Some(&state)).unwrap();
        assert_eq!(out.shape(), [2, 0, 4], "{kind:?}");
        assert_eq!(last.h.to_vec(), h.to_vec(), "{kind:?}");
        assert_eq!(last.c.map(|c| c.to_vec()), c.map(|c| c.to_vec()), "{kind:?}");
    }
}

/// Batch normalisation's running statistics are buffers: named after their layer in the
/// state_dict, never handed to the optimizer, saved and loaded with the weights, and used in
/// evaluation so that a sample's output does not depend on its batch.
#[test]
fn batch_norm_buffers_are_saved_loaded_and_not_trained() {
    let mut rng = Rng::seed(3);
    let make = |rng: &mut Rng| {
        nn::Sequential::new()
            .add(nn::Linear::new(4, 3, rng).unwrap())
            .add(nn::BatchNorm::new_1d(3).unwrap())
            .add(nn::Relu)
    };
    let model = make(&mut rng);
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    );
    assert_eq!(model.parameters().len(), 4, "buffers are not trained");
    let x = Tensor::rand_normal(&[16, 4], 2.0, 1.5, &mut rng).unwrap();
    model.forward(&x, Mode::Train).unwrap();
    model.forward(&x, Mode::Train).unwrap();
    let buffers = model.named_buffers();
    assert_eq!(buffers[2].1.to_vec(), [2.0], "two training batches counted");
    let mean = buffers[0].1.to_vec();
    assert!(mean.iter().any(|m| m.abs() > 1e-3), "the running mean moved: {mean:?}");

    // Evaluation: one sample alone gives what it gives inside a batch (up to rounding: a
    // single row takes the matrix-vector kernel, a batch the matrix product).
    let alone = model.forward(&x.narrow(0, 0, 1).unwrap(), Mode::Eval).unwrap().to_vec();
    let in_batch = model.forward(&x, Mode::Eval).unwrap().to_vec();
    for (a, b) in alone.iter().zip(&in_batch[..3]) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{alone:?} vs {:?}", &in_batch[..3]);
    }
    // Training on one value per channel is an error naming the layer, as in PyTorch.
    let e = model.forward(&x.narrow(0, 0, 1).unwrap(), Mode::Train).unwrap_err().to_string();
    assert!(e.contains("BatchNorm1d") && e.contains("more than 1 value per channel"), "{e}");

    let dir = std::env::temp_dir().join(format!("sinapse-bn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bn.safetensors");
    model.save(&path).unwrap();
    let other = make(&mut Rng::seed(9));
    other.load(&path).unwrap();
    assert_eq!(other.named_buffers()[1].1.to_vec(), model.named_buffers()[1].1.to_vec());
    assert_eq!(other.forward(&x, Mode::Eval).unwrap().to_vec(), in_batch);
    // A checkpoint without the buffers does not fit: it names them.
    let params_only = sinapse::train::checkpoint::weights_to_bytes(&model.named_parameters()).unwrap();
    std::fs::write(&path, params_only).unwrap();
    let e = other.load(&path).unwrap_err().to_string();
    assert!(e.contains("missing 1.num_batches_tracked, 1.running_mean, 1.running_var"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reading the losses every few batches (as on a GPU, where each read waits for the device)
/// changes nothing that training reports: the same history, the observer told of every batch
/// with its own loss, and a non-finite loss still named by its batch.
#[test]
fn losses_read_every_few_batches_report_the_same_as_every_batch() {
    use sinapse::train::{EpochRecord, Observer};
    struct Losses(Vec<(usize, usize, f32)>);
    impl Observer for Losses {
        fn on_batch(&mut self, epoch: usize, batch: usize, _batches: usize, _size: usize, loss: f32) {
            self.0.push((epoch, batch, loss));
        }
        fn on_epoch(&mut self, _record: &EpochRecord, _epochs: usize) {}
    }
    let mut rng = Rng::seed(4);
    let x = Tensor::rand_normal(&[90, 3], 0.0, 1.0, &mut rng).unwrap();
    let y = x.sum(1, false).unwrap().gt(&Tensor::scalar(0.0)).unwrap();
    let data = Dataset::new(x.clone(), y.clone()).unwrap();
    let run = |every: Option<usize>| {
        let model = nn::Linear::new(3, 2, &mut Rng::seed(1)).unwrap();
        let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
        let cfg = FitConfig {
            epochs: 2,
            batch_size: 8,
            progress_every: every,
            ..FitConfig::new(Task::Classification { classes: 2 })
        };
        let mut seen = Losses(Vec::new());
        let history = fit(&model, &mut opt, &data, None, &cfg, &mut seen).unwrap();
        (history, seen.0)
    };
    let (each, each_losses) = run(None);
    let (grouped, grouped_losses) = run(Some(5));
    assert_eq!(each.records.len(), 2);
    for (a, b) in each.records.iter().zip(&grouped.records) {
        assert_eq!((a.train_loss, a.train_metric), (b.train_loss, b.train_metric));
    }
    assert_eq!(each_losses.len(), 2 * 12, "every batch of both epochs (90 samples in batches of 8)");
    assert_eq!(each_losses, grouped_losses);

    // A NaN in one sample (whichever batch the shuffle puts it in) is named by that batch
    // whether the losses are read every batch or every five.
    let mut bad = x.to_vec();
    bad[3 * 89] = f32::NAN;
    let data = Dataset::new(Tensor::from_vec(bad, &[90, 3]).unwrap(), y).unwrap();
    let model = nn::Linear::new(3, 2, &mut Rng::seed(1)).unwrap();
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let mut errors = Vec::new();
    for every in [None, Some(5)] {
        let cfg = FitConfig {
            epochs: 1,
            batch_size: 8,
            progress_every: every,
            ..FitConfig::new(Task::Classification { classes: 2 })
        };
        errors.push(fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap_err().to_string());
    }
    assert!(errors[0].starts_with("non-finite value NaN in loss at epoch 1, batch "), "{}", errors[0]);
    assert_eq!(errors[0], errors[1], "the same batch is named");
}
