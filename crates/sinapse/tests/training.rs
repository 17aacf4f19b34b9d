//! The training stack on real data: specs, fit, validation, early stopping, checkpoints.

mod common;

use std::path::{Path, PathBuf};

use sinapse::data::{Dataset, Scaler};
use sinapse::job::{self, CvMethod};
use sinapse::nn::{self, Init, Module};
use sinapse::optim::Sgd;
use sinapse::spec::{ModelSpec, TrainedModel};
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Metrics, Silent, Task};
use sinapse::{Rng, Tensor};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

fn models_dir() -> PathBuf {
    repo("models")
}

fn spec(name: &str) -> ModelSpec {
    ModelSpec::from_file(models_dir().join(name)).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sinapse-training-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn iris_five_fold_stratified_cv_reaches_095() {
    let cv = job::cross_validate(
        &spec("iris.toml"),
        &models_dir(),
        CvMethod::KFold { k: 5, stratified: true },
        &mut Silent,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(cv.folds.len(), 5);
    let (mean, std) = cv.mean_std();
    assert!(mean >= 0.95, "mean accuracy {mean} ± {std}");
}

#[test]
fn leave_one_out_runs_one_fold_per_sample() {
    let mut s = spec("iris.toml");
    s.epochs = 5;
    if let sinapse::spec::DataSpec::Csv { test_fraction, .. } = &mut s.data {
        *test_fraction = Some(0.9); // 15 training rows: 15 folds
    }
    let cv = job::cross_validate(&s, &models_dir(), CvMethod::LeaveOneOut, &mut Silent, |_, _, _| {}).unwrap();
    assert_eq!(cv.folds.len(), 15);
    assert!(cv.folds.iter().all(|f| f.test_size == 1 && f.train_size == 14));
}

#[test]
fn mnist_mlp_with_adam_reaches_0935() {
    // PyTorch, same setup: 0.940 and 0.942.
    let outcome = job::train(&spec("mnist_mlp_adam.toml"), &models_dir(), &mut Silent).unwrap();
    let acc = outcome.test.unwrap().metric();
    assert!(acc >= 0.935, "test accuracy {acc}");
}

/// Least squares by the normal equations (XᵀX) w = Xᵀy, in f64, with a bias column.
#[allow(clippy::needless_range_loop)] // index arithmetic reads like the textbook here
fn least_squares_mse(x: &[Vec<f64>], y: &[f64]) -> f64 {
    let d = x[0].len() + 1;
    let row = |i: usize| -> Vec<f64> { x[i].iter().copied().chain([1.0]).collect() };
    let mut a = vec![vec![0.0; d + 1]; d];
    for i in 0..x.len() {
        let r = row(i);
        for p in 0..d {
            for q in 0..d {
                a[p][q] += r[p] * r[q];
            }
            a[p][d] += r[p] * y[i];
        }
    }
    // Gauss-Jordan elimination with partial pivoting.
    for c in 0..d {
        let pivot = (c..d).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap();
        a.swap(c, pivot);
        for r in 0..d {
            if r != c {
                let f = a[r][c] / a[c][c];
                for k in c..=d {
                    a[r][k] -= f * a[c][k];
                }
            }
        }
    }
    let w: Vec<f64> = (0..d).map(|i| a[i][d] / a[i][i]).collect();
    (0..x.len()).map(|i| (row(i).iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() - y[i]).powi(2)).sum::<f64>()
        / x.len() as f64
}

#[test]
fn linear_regression_gets_within_5_percent_of_least_squares() {
    // y = 2·x1 - 3·x2 + 0.5·x3 + 1 + noise, 300 rows.
    let mut rng = Rng::seed(11);
    let mut x = Vec::new();
    let mut y = Vec::new();
    let mut csv = String::from("x1,x2,x3,y\n");
    for _ in 0..300 {
        let r: Vec<f64> = (0..3).map(|_| rng.uniform(-2.0, 2.0) as f64 * 3.0).collect();
        let t = 2.0 * r[0] - 3.0 * r[1] + 0.5 * r[2] + 1.0 + rng.standard_normal() as f64;
        // Through f32 text, as the model will read them.
        let r: Vec<f64> = r.iter().map(|v| *v as f32 as f64).collect();
        let t = t as f32 as f64;
        csv.push_str(&format!("{},{},{},{}\n", r[0] as f32, r[1] as f32, r[2] as f32, t as f32));
        x.push(r);
        y.push(t);
    }
    let optimum = least_squares_mse(&x, &y);
    let dir = temp_dir("regression");
    std::fs::write(dir.join("linear.csv"), csv).unwrap();
    let spec_text = r#"
seed = 0
epochs = 200
batch_size = 32
[data]
format = "csv"
path = "linear.csv"
label = "y"
task = "regression"
scaling = "standard"
test_path = "linear.csv"
[[layers]]
type = "linear"
units = 1
[optimizer]
type = "sgd"
lr = 0.05
momentum = 0.9
[schedule]
type = "cosine"
t_max = 200
"#;
    let s = ModelSpec::parse(spec_text, &dir.join("spec.toml")).unwrap();
    let outcome = job::train(&s, &dir, &mut Silent).unwrap();
    let Metrics::Regression(r) = outcome.test.unwrap().metrics else { panic!("regression metrics") };
    assert!(r.mse <= optimum * 1.05, "mse {} vs least squares {optimum}", r.mse);
    assert!(r.r2 > 0.95, "r2 {}", r.r2);
    // The history's training MAE and the test MAE are one metric, on the same rows here.
    assert_eq!(outcome.history.metric, "mae");
    let train_mae = outcome.history.records.last().unwrap().train_metric as f64;
    assert!((train_mae - r.mae).abs() < 0.25 * r.mae, "training mae {train_mae} vs test mae {}", r.mae);
    // Cross-validation scores folds by the same metric, with R² beside it.
    let cv =
        job::cross_validate(&s, &dir, CvMethod::KFold { k: 3, stratified: false }, &mut Silent, |_, _, _| {}).unwrap();
    assert_eq!(cv.metric, "mae");
    let (mae, _) = cv.mean_std();
    assert!((mae - r.mae).abs() < 0.3 * r.mae, "cv mae {mae} vs test mae {}", r.mae);
    let (r2, _) = cv.r2_mean_std().expect("regression folds have an R²");
    assert!(r2 > 0.95, "cv r2 {r2}");
}

#[test]
fn the_training_mae_is_right_for_both_target_shapes() {
    // Dataset::new documents regression targets as [N] or [N, 1]: both give one history.
    let mut rng = Rng::seed(5);
    let n = 64;
    let x = Tensor::rand_normal(&[n, 3], 0.0, 1.0, &mut rng).unwrap();
    let y: Vec<f32> = (0..n).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let mean_abs_y = y.iter().map(|v| v.abs()).sum::<f32>() / n as f32;
    let history = |shape: &[usize]| {
        let data = Dataset::new(x.clone(), Tensor::from_vec(y.clone(), shape).unwrap()).unwrap();
        let model = nn::Linear::new(3, 1, &mut Rng::seed(0)).unwrap();
        let mut opt = Sgd::new(model.parameters(), 0.05).unwrap();
        let cfg = FitConfig { epochs: 3, batch_size: 16, ..FitConfig::new(Task::Regression) };
        let h = fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap();
        h.records.iter().map(|r| r.train_metric).collect::<Vec<_>>()
    };
    let (flat, column) = (history(&[n]), history(&[n, 1]));
    assert_eq!(flat, column);
    // A mean absolute error, not a sum over a broadcast [B, B] grid: of the order of |y|.
    assert!(flat[0] < 2.0 * mean_abs_y + 2.0, "mae {flat:?} vs mean |y| {mean_abs_y}");
}

#[test]
fn the_same_seed_gives_bit_identical_weights() {
    let mut s = spec("iris.toml");
    s.epochs = 20;
    s.early_stopping = None;
    // A dropout layer too, so its random masks are covered by the seed.
    s.layers.insert(2, sinapse::spec::LayerSpec::Dropout { p: 0.2 });
    let weights = |s: &ModelSpec| -> Vec<Vec<u32>> {
        let out = job::train(s, &models_dir(), &mut Silent).unwrap();
        out.model.model.parameters().iter().map(|p| p.to_vec().iter().map(|v| v.to_bits()).collect()).collect()
    };
    let (a, b) = (weights(&s), weights(&s));
    assert_eq!(a, b);
    s.seed = 1;
    assert_ne!(a, weights(&s), "another seed, other weights");
}

#[test]
fn early_stopping_restores_the_best_epoch() {
    // A wide network on a small noisy problem overfits: the validation loss turns up.
    let mut rng = Rng::seed(3);
    let n = 60;
    let x = Tensor::rand_normal(&[n, 5], 0.0, 1.0, &mut rng).unwrap();
    let labels: Vec<f32> = (0..n).map(|_| (rng.unit() < 0.5) as u8 as f32).collect();
    let data = Dataset::new(x, Tensor::from_vec(labels, &[n]).unwrap()).unwrap();
    let train = data.subset(&(0..40).collect::<Vec<_>>()).unwrap();
    let val = data.subset(&(40..60).collect::<Vec<_>>()).unwrap();
    let model = nn::Sequential::new()
        .add(nn::Linear::with_init(5, 64, Init::KaimingUniform, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Linear::new(64, 2, &mut rng).unwrap());
    let task = Task::Classification { classes: 2 };
    let cfg = FitConfig {
        epochs: 200,
        batch_size: 8,
        early_stopping: Some(sinapse::train::EarlyStopping { patience: 10, restore_best: true, min_delta: 0.0 }),
        ..FitConfig::new(task)
    };
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let h = fit(&model, &mut opt, &train, Some(&val), &cfg, &mut Silent).unwrap();
    assert!(h.stopped_early && h.restored_best, "{h:?}");
    let best = h.best_epoch.unwrap();
    assert_eq!(h.records.len(), best + 10, "stops `patience` epochs after the best");
    let best_loss = h.records[best - 1].val_loss.unwrap();
    assert!(h.records.iter().all(|r| r.val_loss.unwrap() >= best_loss));
    let now = evaluate(&model, &val, &task, LossKind::CrossEntropy, 256).unwrap().loss;
    assert_eq!(now, best_loss, "the restored weights are the best epoch's");
    // patience 0 stops at the first epoch that does not improve, and not before.
    let model = nn::Sequential::new().add(nn::Linear::new(5, 2, &mut Rng::seed(4)).unwrap());
    let cfg0 = FitConfig {
        epochs: 50,
        batch_size: 8,
        early_stopping: Some(sinapse::train::EarlyStopping { patience: 0, restore_best: false, min_delta: 0.0 }),
        ..FitConfig::new(task)
    };
    let mut opt = Sgd::new(model.parameters(), 0.5).unwrap();
    let h0 = fit(&model, &mut opt, &train, Some(&val), &cfg0, &mut Silent).unwrap();
    let n = h0.records.len();
    assert!(n > 1 && h0.stopped_early, "{n} epochs");
    assert!(h0.records[n - 1].val_loss >= h0.records[n - 2].val_loss);
    assert!(h0.records.windows(2).take(n - 2).all(|w| w[1].val_loss < w[0].val_loss));
    let bad = FitConfig {
        early_stopping: Some(sinapse::train::EarlyStopping { min_delta: f32::NAN, ..cfg0.early_stopping.unwrap() }),
        ..cfg0
    };
    assert!(fit(&model, &mut opt, &train, Some(&val), &bad, &mut Silent).is_err());
    let csv = h.to_csv();
    assert!(csv.starts_with("epoch,lr,train_loss,train_accuracy,val_loss,val_accuracy,seconds,samples_per_sec\n"));
    assert_eq!(csv.lines().count(), h.records.len() + 1);
}

#[test]
fn a_saved_model_reloads_and_predicts_the_same() {
    let mut s = spec("iris.toml");
    s.epochs = 10;
    let out = job::train(&s, &models_dir(), &mut Silent).unwrap();
    let dir = temp_dir("saved").join("iris");
    out.model.save(&dir, |_| Ok(())).unwrap();
    let loaded = TrainedModel::load(&dir).unwrap();
    assert_eq!(loaded.card, out.model.card);
    assert!(matches!(loaded.card.scaler, Scaler::Standard { .. }));
    let x = Tensor::from_vec(vec![5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3], &[2, 4]).unwrap();
    assert_eq!(loaded.outputs(&x).unwrap().to_vec(), out.model.outputs(&x).unwrap().to_vec());
    // A weights file of another model is refused with the names that do not fit.
    let mut other = s.clone();
    other.layers[0] = sinapse::spec::LayerSpec::Linear { units: 8, init: Init::PytorchDefault, bias: true };
    let other_out = job::train(&other, &models_dir(), &mut Silent).unwrap();
    let other_dir = temp_dir("saved-other").join("iris");
    other_out.model.save(&other_dir, |_| Ok(())).unwrap();
    std::fs::copy(other_dir.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let e = TrainedModel::load(&dir).err().unwrap().to_string();
    assert!(e.contains("0.weight has shape [8, 4], the model needs [16, 4]"), "{e}");
    // A model card whose parts disagree is refused when loaded, not when used.
    let card = std::fs::read_to_string(dir.join("model.toml")).unwrap();
    std::fs::write(dir.join("model.toml"), card.replace("\"virginica\"", "")).unwrap();
    let e = TrainedModel::load(&dir).err().unwrap().to_string();
    assert!(e.contains("model.toml") && e.contains("2 class names for 3 classes"), "{e}");
}

#[test]
fn a_nan_loss_names_epoch_and_batch_in_fit() {
    let x = Tensor::from_vec(vec![1.0, 2.0, f32::INFINITY, 0.0], &[4, 1]).unwrap();
    let y = Tensor::from_vec(vec![0.0, 1.0, 0.0, 1.0], &[4]).unwrap();
    let data = Dataset::new(x, y).unwrap();
    let model = nn::Linear::new(1, 2, &mut Rng::seed(0)).unwrap();
    let mut cfg = FitConfig::new(Task::Classification { classes: 2 });
    cfg.batch_size = 2;
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let e = fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap_err().to_string();
    assert!(e.starts_with("non-finite value") && e.contains("loss at epoch 1, batch"), "{e}");
}

#[test]
fn init_schemes_have_their_published_scales() {
    let mut rng = Rng::seed(0);
    let (fan_in, fan_out) = (300, 200);
    let std_of = |t: &Tensor| {
        let v = t.to_vec();
        let m = v.iter().sum::<f32>() / v.len() as f32;
        (v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32).sqrt()
    };
    let shape = [fan_out, fan_in];
    let xu = Init::XavierUniform.weight(&shape, fan_in, fan_out, &mut rng).unwrap();
    let bound = (6.0f32 / 500.0).sqrt();
    assert!(xu.to_vec().iter().all(|v| v.abs() <= bound));
    assert!((std_of(&xu) - bound / 3f32.sqrt()).abs() < 0.01 * bound);
    let xn = Init::XavierNormal.weight(&shape, fan_in, fan_out, &mut rng).unwrap();
    assert!((std_of(&xn) - (2.0f32 / 500.0).sqrt()).abs() < 0.02 * (2.0f32 / 500.0).sqrt());
    let ku = Init::KaimingUniform.weight(&shape, fan_in, fan_out, &mut rng).unwrap();
    assert!(ku.to_vec().iter().all(|v| v.abs() <= (6.0f32 / 300.0).sqrt()));
    let kn = Init::KaimingNormal.weight(&shape, fan_in, fan_out, &mut rng).unwrap();
    assert!((std_of(&kn) - (2.0f32 / 300.0).sqrt()).abs() < 0.02 * (2.0f32 / 300.0).sqrt());
    assert_eq!(Init::XavierUniform.bias(&[4], fan_in, &mut rng).unwrap().to_vec(), vec![0.0; 4]);
}

#[test]
fn summary_lists_layers_shapes_and_parameters() {
    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(12, 5, &mut rng).unwrap())
        .add(nn::Dropout::new(0.5, &mut rng).unwrap())
        .add(nn::Linear::new(5, 2, &mut rng).unwrap());
    let rows = nn::layer_summaries(&model, &[3, 4]).unwrap();
    let shapes: Vec<Vec<isize>> = rows.iter().map(|r| r.output_shape.clone()).collect();
    assert_eq!(shapes, vec![vec![-1, 12], vec![-1, 5], vec![-1, 5], vec![-1, 2]]);
    assert_eq!(rows.iter().map(|r| r.params).collect::<Vec<_>>(), vec![0, 65, 0, 12]);
    let text = nn::summary(&model, &[3, 4]).unwrap();
    assert!(text.contains("Total params: 77"), "{text}");
}
