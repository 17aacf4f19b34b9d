//! Layers loaded from a PyTorch checkpoint (parameters under PyTorch's names, saved by
//! `fixtures/make_torch_fixtures.py`) compute PyTorch's outputs and gradients.

mod common;

use std::collections::HashMap;
use std::path::Path;

use sinapse::nn::{CellKind, Conv1d, Conv2d, Embedding, Mode, Module, Pool2d, PoolKind, Recurrent, RecurrentState};
use sinapse::train::checkpoint::{load_into, load_weights};
use sinapse::{Rng, Tensor};

struct Fixture(HashMap<String, Tensor>);

impl Fixture {
    fn load() -> Fixture {
        Fixture::open("torch_layers.safetensors")
    }

    /// A fixture file of `tests/fixtures/`.
    fn open(file: &str) -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(file);
        Fixture(load_weights(path).unwrap().into_iter().collect())
    }

    fn get(&self, name: &str) -> Tensor {
        self.0.get(name).unwrap_or_else(|| panic!("fixture has no {name}")).clone()
    }

    /// The layer's parameters under their PyTorch names (without the `prefix.`).
    fn params(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let p = format!("{prefix}.");
        let data = ["input", "output", "upstream", "grad.", "indices"];
        self.0
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|n| (n.to_string(), v.clone())))
            .filter(|(n, _)| !data.iter().any(|d| n.starts_with(d)))
            .collect()
    }

    /// Loads the parameters into `layer` by name (every name and shape must match).
    fn load_into(&self, prefix: &str, layer: &dyn Module) {
        load_into(layer, &self.params(prefix), Path::new(prefix)).unwrap();
    }

    /// Compares outputs, then backpropagates Σ output_i · upstream_i and compares the
    /// gradients of every parameter and of the inputs PyTorch recorded.
    fn check(&self, prefix: &str, layer: &dyn Module, inputs: &[Tensor], outputs: &[Tensor]) {
        let mut loss = Tensor::scalar(0.0);
        for (i, out) in outputs.iter().enumerate() {
            close(&format!("{prefix}.output{i}"), out, &self.get(&format!("{prefix}.output{i}")));
            loss = loss.add(&out.mul(&self.get(&format!("{prefix}.upstream{i}"))).unwrap().sum_all().unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        for (name, p) in layer.named_parameters() {
            close(
                &format!("{prefix}.grad.{name}"),
                grads.get(&p).unwrap(),
                &self.get(&format!("{prefix}.grad.{name}")),
            );
        }
        for (i, x) in inputs.iter().enumerate() {
            if let Some(want) = self.0.get(&format!("{prefix}.grad.input{i}")) {
                close(&format!("{prefix}.grad.input{i}"), grads.get(x).unwrap(), want);
            }
        }
    }
}

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    for (i, (g, w)) in got.to_vec().iter().zip(want.to_vec()).enumerate() {
        assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{what}[{i}]: sinapse {g}, pytorch {w}");
    }
}

fn input(f: &Fixture, name: &str) -> Tensor {
    f.get(name).set_requires_grad(true)
}

#[test]
fn conv2d_with_stride_padding_and_dilation() {
    let f = Fixture::load();
    let conv = Conv2d::new(2, 3, [3, 2], &mut Rng::seed(0)).unwrap().stride([2, 1]).padding([1, 1]).dilation([1, 2]);
    f.load_into("conv2d", &conv);
    let x = input(&f, "conv2d.input0");
    let y = conv.forward(&x, Mode::Eval).unwrap();
    f.check("conv2d", &conv, &[x], &[y]);
}

#[test]
fn conv1d() {
    let f = Fixture::load();
    let mut conv = Conv1d::new(2, 4, 3, &mut Rng::seed(0)).unwrap();
    (conv.stride, conv.padding, conv.dilation) = (2, 1, 2);
    f.load_into("conv1d", &conv);
    let x = input(&f, "conv1d.input0");
    let y = conv.forward(&x, Mode::Eval).unwrap();
    f.check("conv1d", &conv, &[x], &[y]);
}

#[test]
fn max_and_average_pooling_with_padding() {
    let f = Fixture::load();
    for (prefix, kind) in [("maxpool", PoolKind::Max), ("avgpool", PoolKind::Avg)] {
        let pool = Pool2d { kind, kernel: [3, 3], stride: [2, 2], padding: [1, 1] };
        let x = input(&f, &format!("{prefix}.input0"));
        let y = pool.forward(&x, Mode::Eval).unwrap();
        f.check(prefix, &pool, &[x], &[y]);
    }
}

#[test]
fn two_layer_lstm_batch_first_with_initial_state() {
    let f = Fixture::load();
    let lstm = Recurrent::new(CellKind::Lstm, 4, 5, 2, true, &mut Rng::seed(0)).unwrap();
    f.load_into("lstm", &lstm);
    let x = input(&f, "lstm.input0");
    let state = RecurrentState { h: f.get("lstm.input1"), c: Some(f.get("lstm.input2")) };
    let (out, last) = lstm.forward_with_state(&x, Some(&state)).unwrap();
    f.check("lstm", &lstm, &[x], &[out, last.h, last.c.unwrap()]);
}

#[test]
fn two_layer_gru_sequence_first() {
    let f = Fixture::load();
    let gru = Recurrent::new(CellKind::Gru, 4, 5, 2, false, &mut Rng::seed(0)).unwrap();
    f.load_into("gru", &gru);
    let x = input(&f, "gru.input0");
    let state = RecurrentState { h: f.get("gru.input1"), c: None };
    let (out, last) = gru.forward_with_state(&x, Some(&state)).unwrap();
    f.check("gru", &gru, &[x], &[out, last.h]);
}

#[test]
fn elman_rnn() {
    let f = Fixture::load();
    let rnn = Recurrent::new(CellKind::Rnn, 4, 5, 1, true, &mut Rng::seed(0)).unwrap();
    f.load_into("rnn", &rnn);
    let x = input(&f, "rnn.input0");
    let state = RecurrentState { h: f.get("rnn.input1"), c: None };
    let (out, last) = rnn.forward_with_state(&x, Some(&state)).unwrap();
    f.check("rnn", &rnn, &[x], &[out, last.h]);
}

#[test]
fn embedding() {
    let f = Fixture::load();
    let emb = Embedding::new(10, 3, &mut Rng::seed(0)).unwrap();
    f.load_into("embedding", &emb);
    let y = emb.forward(&f.get("embedding.indices"), Mode::Eval).unwrap();
    f.check("embedding", &emb, &[], &[y]);
}

#[test]
fn parameter_names_and_shapes_are_pytorchs() {
    let lstm = Recurrent::new(CellKind::Lstm, 4, 5, 2, true, &mut Rng::seed(0)).unwrap();
    let names: Vec<(String, Vec<usize>)> =
        lstm.named_parameters().into_iter().map(|(n, t)| (n, t.shape().to_vec())).collect();
    assert_eq!(names[0], ("weight_ih_l0".to_string(), vec![20, 4]));
    assert_eq!(names[1], ("weight_hh_l0".to_string(), vec![20, 5]));
    assert_eq!(names[4], ("weight_ih_l1".to_string(), vec![20, 5]));
    let conv = Conv2d::new(3, 8, [5, 5], &mut Rng::seed(0)).unwrap();
    assert_eq!(conv.weight.shape(), &[8, 3, 5, 5]);
    // A checkpoint for another shape is refused with the offending name.
    let f = Fixture::load();
    let wrong = Recurrent::new(CellKind::Lstm, 4, 6, 2, true, &mut Rng::seed(0)).unwrap();
    let e = load_into(&wrong, &f.params("lstm"), Path::new("torch_layers.safetensors")).unwrap_err().to_string();
    assert!(e.contains("weight_hh_l0 has shape [20, 5], the model needs [24, 6]"), "{e}");
}

/// GELU, SiLU, ELU, softplus and the elementwise ops sin, cos, log1p, expm1 and erf against
/// PyTorch's outputs and input gradients (`fixtures/make_activation_fixture.py`), inputs from
/// -30 to 25 with exact zeros.
#[test]
fn activations_and_elementwise_ops_match_pytorch() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_activations.safetensors");
    let fx: HashMap<String, Tensor> = load_weights(path).unwrap().into_iter().collect();
    let upstream = fx["upstream"].clone();
    type Op = fn(&Tensor) -> sinapse::Result<Tensor>;
    let ops: [(&str, Op); 10] = [
        ("gelu", |t| t.gelu()),
        ("silu", |t| t.silu()),
        ("elu", |t| t.elu(1.0)),
        ("elu_half", |t| t.elu(0.5)),
        ("softplus", |t| t.softplus()),
        ("sin", |t| t.sin()),
        ("cos", |t| t.cos()),
        ("log1p", |t| t.log1p()),
        ("expm1", |t| t.expm1()),
        ("erf", |t| t.erf()),
    ];
    for (name, op) in ops {
        let x = fx[&format!("{name}.input")].detach().set_requires_grad(true);
        let y = op(&x).unwrap();
        let g = y.mul(&upstream).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, got, want) in [
            ("output", y.to_vec(), fx[&format!("{name}.output")].to_vec()),
            ("gradient", g.get(&x).unwrap().to_vec(), fx[&format!("{name}.grad")].to_vec()),
        ] {
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * (1.0 + b.abs());
                assert!((a - b).abs() <= tol, "{name} {what} [{i}] (x = {}): {a} vs PyTorch's {b}", x.to_vec()[i]);
            }
        }
    }
}

/// LayerNorm and GroupNorm with PyTorch's parameters compute PyTorch's outputs and the
/// gradients of the input and of both parameters (`fixtures/make_norm_fixture.py`).
#[test]
fn normalisation_layers_match_pytorch() {
    use sinapse::nn::{GroupNorm, LayerNorm};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_norms.safetensors");
    let fx: HashMap<String, Tensor> = load_weights(path).unwrap().into_iter().collect();
    let layers: [(&str, Box<dyn Module>); 2] = [
        ("layer_norm", Box::new(LayerNorm::new(6, 1e-5).unwrap())),
        ("group_norm", Box::new(GroupNorm::new(3, 6, 1e-5).unwrap())),
    ];
    for (name, layer) in layers {
        let params: Vec<(String, Tensor)> =
            ["weight", "bias"].iter().map(|p| (p.to_string(), fx[&format!("{name}.{p}")].clone())).collect();
        load_into(layer.as_ref(), &params, Path::new(name)).unwrap();
        let x = fx[&format!("{name}.input")].detach().set_requires_grad(true);
        let y = layer.forward(&x, Mode::Train).unwrap();
        let g = y.mul(&fx[&format!("{name}.upstream")]).unwrap().sum_all().unwrap().backward().unwrap();
        let named = layer.named_parameters();
        let param = |p: &str| named.iter().find(|(n, _)| n == p).unwrap().1.clone();
        for (what, got, want) in [
            ("output", y.to_vec(), fx[&format!("{name}.output")].to_vec()),
            ("input gradient", g.get(&x).unwrap().to_vec(), fx[&format!("{name}.grad.input")].to_vec()),
            ("weight gradient", g.get(&param("weight")).unwrap().to_vec(), fx[&format!("{name}.grad.weight")].to_vec()),
            ("bias gradient", g.get(&param("bias")).unwrap().to_vec(), fx[&format!("{name}.grad.bias")].to_vec()),
        ] {
            assert_eq!(got.len(), want.len(), "{name} {what}");
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name} {what} [{i}]: {a} vs PyTorch's {b}");
            }
        }
    }
}

/// Asserts `got` equals PyTorch's `want` within 1e-5 relative (plus 1e-5 absolute).
fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{what} [{i}]: {a} vs PyTorch's {b}");
    }
}

/// BatchNorm1d/2d against PyTorch over 3 training steps and an evaluation step: outputs, the
/// gradients of input, weight and bias, and the running statistics after each step, with
/// momentum 0.1, 0.3 and `None` (cumulative), and eps 1e-5 and 1e-3
/// (`fixtures/make_batchnorm_fixture.py`). Then PyTorch's own `state_dict` (with its int64
/// `num_batches_tracked`) loads by name into a fresh layer and gives the same evaluation.
#[test]
fn batch_norm_matches_pytorch_in_both_modes() {
    use sinapse::nn::BatchNorm;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_batchnorm.safetensors");
    let fx: HashMap<String, Tensor> = load_weights(path).unwrap().into_iter().collect();
    let cases: [(&str, BatchNorm); 4] = [
        ("bn1d", BatchNorm::new_1d(5).unwrap()),
        ("bn1d_seq", BatchNorm::new_1d(5).unwrap().with_eps_momentum(1e-3, Some(0.3)).unwrap()),
        ("bn1d_cumulative", BatchNorm::new_1d(5).unwrap().with_eps_momentum(1e-5, None).unwrap()),
        ("bn2d", BatchNorm::new_2d(3).unwrap()),
    ];
    for (name, layer) in cases {
        layer.weight.as_ref().unwrap().copy_from(&fx[&format!("{name}.weight")]).unwrap();
        layer.bias.as_ref().unwrap().copy_from(&fx[&format!("{name}.bias")]).unwrap();
        for step in 0..4 {
            let s = format!("{name}.step{step}");
            let mode = if step < 3 { Mode::Train } else { Mode::Eval };
            let x = fx[&format!("{s}.input")].detach().set_requires_grad(true);
            let y = layer.forward(&x, mode).unwrap();
            let g = y.mul(&fx[&format!("{s}.upstream")]).unwrap().sum_all().unwrap().backward().unwrap();
            let (w, b) = (layer.weight.as_ref().unwrap(), layer.bias.as_ref().unwrap());
            assert_close(&format!("{s} output"), &y.to_vec(), &fx[&format!("{s}.output")].to_vec());
            assert_close(
                &format!("{s} input gradient"),
                &g.get(&x).unwrap().to_vec(),
                &fx[&format!("{s}.grad.input")].to_vec(),
            );
            assert_close(
                &format!("{s} weight gradient"),
                &g.get(w).unwrap().to_vec(),
                &fx[&format!("{s}.grad.weight")].to_vec(),
            );
            assert_close(
                &format!("{s} bias gradient"),
                &g.get(b).unwrap().to_vec(),
                &fx[&format!("{s}.grad.bias")].to_vec(),
            );
            let buffers: HashMap<String, Tensor> = layer.named_buffers().into_iter().collect();
            for stat in ["running_mean", "running_var", "num_batches_tracked"] {
                assert_close(&format!("{s} {stat}"), &buffers[stat].to_vec(), &fx[&format!("{s}.{stat}")].to_vec());
            }
        }
    }
    // PyTorch's state_dict, names and int64 counter included, loads into a fresh layer.
    let state: Vec<(String, Tensor)> =
        fx.iter().filter_map(|(k, v)| k.strip_prefix("bn2d.state_dict.").map(|n| (n.to_string(), v.clone()))).collect();
    assert_eq!(state.len(), 5, "weight, bias and three buffers");
    let fresh = BatchNorm::new_2d(3).unwrap();
    load_into(&fresh, &state, Path::new("bn2d.state_dict")).unwrap();
    assert_eq!(fresh.named_buffers()[2].1.to_vec(), [3.0]);
    let y = fresh.forward(&fx["bn2d.step3.input"], Mode::Eval).unwrap();
    assert_close("bn2d loaded state_dict, evaluation", &y.to_vec(), &fx["bn2d.step3.output"].to_vec());
}

/// NLL, label-smoothed cross-entropy, L1, Huber, KL divergence and positively weighted BCE
/// against PyTorch's values and input gradients (`fixtures/make_loss_fixture.py`).
#[test]
fn losses_match_pytorch() {
    use sinapse::nn::loss;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_losses.safetensors");
    let fx: HashMap<String, Tensor> = load_weights(path).unwrap().into_iter().collect();
    let (classes, target, p, y, w) = (&fx["classes"], &fx["target"], &fx["p"], &fx["y"], &fx["pos_weight"]);
    type LossFn<'a> = Box<dyn Fn(&Tensor) -> sinapse::Result<Tensor> + 'a>;
    let cases: Vec<(&str, LossFn)> = vec![
        ("nll", Box::new(|t| loss::nll(&t.log_softmax(1)?, classes))),
        ("smoothed", Box::new(|t| loss::cross_entropy_smoothed(t, classes, 0.1))),
        ("l1", Box::new(|t| loss::l1(t, target))),
        ("huber", Box::new(|t| loss::huber(t, target, 0.7))),
        ("kl", Box::new(|t| loss::kl_div(&t.log_softmax(1)?, p))),
        ("bce_weighted", Box::new(|t| loss::binary_cross_entropy_with_logits_weighted(t, y, w))),
    ];
    for (name, f) in cases {
        let x = fx[&format!("{name}.input")].detach().set_requires_grad(true);
        let l = f(&x).unwrap();
        let want = fx[&format!("{name}.loss")].to_vec()[0];
        let got = l.to_scalar().unwrap();
        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name}: loss {got} vs PyTorch's {want}");
        let g = l.backward().unwrap();
        for (i, (a, b)) in g.get(&x).unwrap().to_vec().iter().zip(fx[&format!("{name}.grad")].to_vec()).enumerate() {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name} gradient [{i}]: {a} vs PyTorch's {b}");
        }
    }
}

/// Scaled dot-product attention with a boolean mask and causal, MultiheadAttention with a key
/// padding mask (output and head-averaged weights), and TransformerEncoderLayer post-norm
/// (ReLU), pre-norm (GELU) and causal, all with PyTorch's parameters under PyTorch's names:
/// outputs and every gradient (`fixtures/make_attention_fixture.py`).
#[test]
fn attention_and_transformer_layers_match_pytorch() {
    use sinapse::nn::{
        scaled_dot_product_attention, FeedForwardActivation, MultiheadAttention, PositionalEncoding,
        TransformerEncoderLayer,
    };
    let f = Fixture::open("torch_attention.safetensors");
    let (q, k, v) = (input(&f, "sdpa.q"), input(&f, "sdpa.k"), input(&f, "sdpa.v"));
    let mask = f.get("sdpa.mask");
    for (name, m, causal) in [("sdpa_mask", Some(&mask), false), ("sdpa_causal", None, true)] {
        let (y, w) = scaled_dot_product_attention(&q, &k, &v, m, causal).unwrap();
        close(&format!("{name}.output"), &y, &f.get(&format!("{name}.output")));
        let rows = w.sum(-1, false).unwrap().to_vec();
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-5), "{name}: attention rows sum to 1");
        let g = y.mul(&f.get(&format!("{name}.upstream"))).unwrap().sum_all().unwrap().backward().unwrap();
        for (t, n) in [(&q, "q"), (&k, "k"), (&v, "v")] {
            close(&format!("{name}.grad.{n}"), g.get(t).unwrap(), &f.get(&format!("{name}.grad.{n}")));
        }
    }

    let mut rng = Rng::seed(0);
    let mha = MultiheadAttention::new(8, 2, 0.0, &mut rng).unwrap();
    f.load_into("mha", &mha);
    let xs = [input(&f, "mha.input0"), input(&f, "mha.input1"), input(&f, "mha.input2")];
    let pad = f.get("mha_padding");
    let (y, w) = mha.attend(&xs[0], &xs[1], &xs[2], Some(&pad), false, Mode::Train).unwrap();
    f.check("mha", &mha, &xs, &[y, w]);

    for (name, norm_first, activation, causal) in [
        ("enc_post", false, FeedForwardActivation::Relu, false),
        ("enc_pre", true, FeedForwardActivation::Gelu, false),
        ("enc_causal", false, FeedForwardActivation::Relu, true),
    ] {
        let mut layer = TransformerEncoderLayer::new(8, 2, 16, 0.0, &mut rng).unwrap();
        (layer.norm_first, layer.activation, layer.causal) = (norm_first, activation, causal);
        f.load_into(name, &layer);
        let x = input(&f, &format!("{name}.input0"));
        let y = layer.forward(&x, Mode::Train).unwrap();
        f.check(name, &layer, std::slice::from_ref(&x), &[y]);
    }

    let table = PositionalEncoding::sinusoidal(10, 8).unwrap();
    let y = table.forward(&Tensor::zeros(&[1, 10, 8]), Mode::Eval).unwrap();
    close("sinusoidal", &y.reshape(&[10, 8]).unwrap(), &f.get("sinusoidal"));
    let e = table.forward(&Tensor::zeros(&[1, 11, 8]), Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("length <= 10"), "{e}");
}

/// ConvTranspose2d (stride, padding, output padding, dilation), adaptive average pooling,
/// nearest and bilinear resizing (up and down, both corner rules): outputs and the gradients
/// of inputs and parameters against PyTorch's (`fixtures/make_resample_fixture.py`).
#[test]
fn transposed_convolution_and_resampling_match_pytorch() {
    use sinapse::nn::{AdaptiveAvgPool2d, ConvTranspose2d, Upsample, UpsampleMode};
    let f = Fixture::open("torch_resample.safetensors");
    let mut conv = ConvTranspose2d::new(3, 2, [3, 2], &mut Rng::seed(0)).unwrap();
    (conv.stride, conv.padding, conv.output_padding, conv.dilation) = ([2, 1], [1, 0], [1, 0], [1, 2]);
    f.load_into("conv_transpose", &conv);
    let x = input(&f, "conv_transpose.input0");
    let y = conv.forward(&x, Mode::Train).unwrap();
    f.check("conv_transpose", &conv, std::slice::from_ref(&x), &[y]);

    type Resize = fn(&Tensor) -> sinapse::Result<Tensor>;
    let cases: [(&str, Resize); 6] = [
        ("adaptive", |x| AdaptiveAvgPool2d { size: [3, 2] }.forward(x, Mode::Train)),
        ("nearest_size", |x| x.upsample_nearest2d([5, 7])),
        ("nearest_x2", |x| Upsample { scale: [2, 2], mode: UpsampleMode::Nearest }.forward(x, Mode::Train)),
        ("bilinear_up", |x| x.upsample_bilinear2d([7, 9], false)),
        ("bilinear_down", |x| x.upsample_bilinear2d([3, 2], false)),
        ("bilinear_corners", |x| x.upsample_bilinear2d([6, 5], true)),
    ];
    for (name, resize) in cases {
        let x = input(&f, &format!("{name}.input0"));
        let y = resize(&x).unwrap();
        f.check(name, &AdaptiveAvgPool2d { size: [1, 1] }, std::slice::from_ref(&x), &[y]);
    }
    let e = Tensor::zeros(&[1, 3, 4, 4])
        .conv_transpose2d(&conv.weight, None, [2, 2], [0, 0], [2, 0], [1, 1])
        .unwrap_err()
        .to_string();
    assert!(e.contains("output_padding [2, 0] must be smaller than the stride"), "{e}");
}

/// The common op set against PyTorch: values, indices where the op returns some, and the
/// gradients of every input (`fixtures/make_ops_fixture.py`).
#[test]
fn common_ops_match_pytorch() {
    use sinapse::PadMode;
    let f = Fixture::open("torch_ops.safetensors");
    type Op = Box<dyn Fn(&[Tensor]) -> sinapse::Result<Tensor>>;
    let t = |v: &[f32], s: &[usize]| Tensor::from_slice(v, s).unwrap();
    let (mask, index) = (t(&[1., 0., 0., 1.], &[4]), t(&[0., 2., 4., 1., 3., 0.], &[3, 2]));
    let cases: Vec<(&str, usize, Op)> = vec![
        ("pow", 2, Box::new(|x| x[0].pow(&x[1]))),
        ("floor", 1, Box::new(|x| x[0].floor())),
        ("ceil", 1, Box::new(|x| x[0].ceil())),
        ("round", 1, Box::new(|x| x[0].round())),
        ("masked_fill", 1, Box::new(move |x| x[0].masked_fill(&mask, -1.5))),
        ("scatter", 2, Box::new(move |x| x[0].scatter(1, &index, &x[1]))),
        ("cumsum1", 1, Box::new(|x| x[0].cumsum(1))),
        ("cumsum0", 1, Box::new(|x| x[0].cumsum(0))),
        ("prod", 1, Box::new(|x| x[0].prod(1, false))),
        ("var", 1, Box::new(|x| x[0].var(1, 1, false))),
        ("std", 1, Box::new(|x| x[0].std(0, 0, true))),
        ("norm2", 1, Box::new(|x| x[0].norm(2.0))),
        ("norm3", 1, Box::new(|x| x[0].norm(3.0))),
        ("logsumexp", 1, Box::new(|x| x[0].logsumexp(1, false))),
        ("repeat", 1, Box::new(|x| x[0].repeat(&[2, 1, 3]))),
        ("flip", 1, Box::new(|x| x[0].flip(&[0, 1]))),
        ("roll", 1, Box::new(|x| x[0].roll(-2, 1))),
        ("pad_reflect", 1, Box::new(|x| x[0].pad_with(2, 2, 1, PadMode::Reflect))),
        ("pad_replicate", 1, Box::new(|x| x[0].pad_with(2, 3, 2, PadMode::Replicate))),
        ("tril", 1, Box::new(|x| x[0].tril(-1))),
        ("triu", 1, Box::new(|x| x[0].triu(1))),
        ("einsum_bmm", 2, Box::new(|x| Tensor::einsum("bij,bjk->bik", &[&x[0], &x[1]]))),
        ("einsum_attn", 2, Box::new(|x| Tensor::einsum("bhqd,bhkd->bhqk", &[&x[0], &x[1]]))),
        ("einsum_outer", 2, Box::new(|x| Tensor::einsum("i,j->ij", &[&x[0], &x[1]]))),
        ("einsum_implicit", 2, Box::new(|x| Tensor::einsum("ik,kj", &[&x[0], &x[1]]))),
        ("einsum_sum", 2, Box::new(|x| Tensor::einsum("ijk,jl->il", &[&x[0], &x[1]]))),
        ("einsum_one", 1, Box::new(|x| Tensor::einsum("ijk->kj", &[&x[0]]))),
        ("sort", 1, Box::new(|x| Ok(x[0].sort(1, true)?.0))),
        ("topk", 1, Box::new(|x| Ok(x[0].topk(2, 0, false)?.0))),
    ];
    for (name, arity, op) in cases {
        let xs: Vec<Tensor> = (0..arity).map(|i| input(&f, &format!("{name}.input{i}"))).collect();
        let y = op(&xs).unwrap();
        close(&format!("{name} output"), &y, &f.get(&format!("{name}.output")));
        let Some(up) = f.0.get(&format!("{name}.upstream")) else { continue };
        let g = y.mul(up).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, x) in xs.iter().enumerate() {
            close(
                &format!("{name} gradient of input {i}"),
                g.get(x).unwrap(),
                &f.get(&format!("{name}.grad.input{i}")),
            );
        }
    }
    let x = f.get("sort.input0");
    close("sort indices", &x.sort(1, true).unwrap().1, &f.get("sort.indices"));
    close("topk indices", &f.get("topk.input0").topk(2, 0, false).unwrap().1, &f.get("topk.indices"));
}
