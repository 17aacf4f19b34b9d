//! Running a [`ModelSpec`] end to end: train (with holdout validation and a test set),
//! cross-validate (k-fold, leave-one-out), and check the model's gradients. The `sinapse` CLI
//! is a thin layer over these.

use std::path::Path;

use crate::data::{split, Dataset, Scaler, Scaling};
use crate::dist::Communicator;
use crate::gradcheck::{gradcheck_parameters, GradcheckOptions, ParamCheck};
use crate::nn::{Mode, Module, Sequential};
use crate::spec::{class_indices, ModelCard, ModelSpec, RawData, TrainedModel, ValidationSpec, SPLIT_SALT};
use crate::train::{evaluate, evaluate_distributed, fit, Evaluation, History, Metrics, Observer, Task};
use crate::{Error, Result, Rng};

/// What [`train`] produced.
pub struct JobOutcome {
    /// The trained model with its card (ready to save).
    pub model: TrainedModel,
    /// Per-epoch losses and metrics.
    pub history: History,
    /// Final evaluation on the holdout validation part, if any.
    pub validation: Option<Evaluation>,
    /// Evaluation on the test set, if the spec has one.
    pub test: Option<Evaluation>,
}

/// Fits the spec's scaling on `train` only and applies it to every part.
fn scale(
    spec: &ModelSpec,
    train: &Dataset,
    others: &[Option<&Dataset>],
) -> Result<(Scaler, Dataset, Vec<Option<Dataset>>)> {
    let scaler = Scaler::fit(spec.scaling(), train.x())?;
    // A reconstruction's targets are its inputs, scaled alike.
    let own_target = matches!(spec.task_kind(), crate::spec::TaskKind::Reconstruction);
    let apply = |d: &Dataset| -> Result<Dataset> {
        let x = scaler.transform(d.x())?;
        let y = if own_target { x.clone() } else { d.y().clone() };
        Dataset::new(x, y)
    };
    let train = apply(train)?;
    let others = others.iter().map(|d| d.map(apply).transpose()).collect::<Result<Vec<_>>>()?;
    Ok((scaler, train, others))
}

/// A fresh model, initialised from the spec's seed (on the host, so every device starts from
/// the same weights), on the spec's device.
fn fresh_model(spec: &ModelSpec, input_shape: &[usize], task: &Task) -> Result<Sequential> {
    let model = spec.build_model(input_shape, task, &mut Rng::seed(spec.seed))?;
    crate::backend::set_tf32(spec.tf32.unwrap_or(false));
    model.to(spec.device()?)?;
    Ok(model)
}

/// Trains the job: splits off the holdout validation part when the spec asks for one, fits
/// the scaling on the training part, trains a fresh model, and evaluates it on the validation
/// and test sets. `base` is the spec's folder (data paths are relative to it).
pub fn train(spec: &ModelSpec, base: &Path, observer: &mut dyn Observer) -> Result<JobOutcome> {
    train_distributed(spec, base, observer, &Communicator::local())
}

/// [`train`] as one rank of data-parallel training over `comm` (each rank runs this with the
/// same spec; see [`crate::train::FitConfig::communicator`]): the same split, scaling and
/// initial weights everywhere, each batch shared out over the ranks, and the validation and
/// test evaluations split and reduced, so every rank returns the figures of the whole sets.
/// Writing the model is the caller's, on rank 0 only.
pub fn train_distributed(
    spec: &ModelSpec,
    base: &Path,
    observer: &mut dyn Observer,
    comm: &Communicator,
) -> Result<JobOutcome> {
    let raw = spec.load_data(base)?;
    let (train_part, val_part) = match spec.validation {
        Some(ValidationSpec::Holdout { train_fraction, stratified }) => {
            let strata = if stratified { class_indices(&raw.train, &raw.task) } else { None };
            let fold = split::holdout(
                raw.train.len(),
                train_fraction,
                strata.as_deref(),
                &mut Rng::seed(spec.seed ^ SPLIT_SALT),
            )?;
            (raw.train.subset(&fold.train)?, Some(raw.train.subset(&fold.test)?))
        }
        _ => (raw.train.clone(), None),
    };
    let (scaler, train, mut others) = scale(spec, &train_part, &[val_part.as_ref(), raw.test.as_ref()])?;
    let test = others.pop().flatten();
    let val = others.pop().flatten();
    let input_shape = train.x().shape()[1..].to_vec();
    let model = fresh_model(spec, &input_shape, &raw.task)?;
    let mut opt = spec.optimizer.build(model.parameters())?;
    let mut cfg = spec.fit_config(raw.task);
    cfg.communicator = Some(comm.clone());
    let history = fit(&model, opt.as_mut(), &train, val.as_ref(), &cfg, observer)?;
    let eval = |d: &Dataset| evaluate_distributed(comm, &model, d, &raw.task, cfg.loss, 1024);
    let validation = val.as_ref().map(eval).transpose()?;
    let test = test.as_ref().map(eval).transpose()?;
    let card = model_card(spec, &raw, input_shape, scaler);
    Ok(JobOutcome { model: TrainedModel { card, model }, history, validation, test })
}

/// The card of a model the spec built for `raw`'s data, with its fitted scaler.
fn model_card(spec: &ModelSpec, raw: &RawData, input_shape: Vec<usize>, scaler: Scaler) -> ModelCard {
    ModelCard {
        format: 1,
        task: raw.task,
        feature_names: raw.feature_names.clone(),
        input_shape,
        classes: raw.classes.clone(),
        scaler,
        spec: spec.clone(),
    }
}

/// A model directory's contents from a spec and weights trained elsewhere (a PyTorch
/// `state_dict` saved with `safetensors.torch.save_file`): the network the spec builds, with
/// every tensor of the file loaded by name, and the card the spec's data gives (input shape,
/// classes, and the scaling fitted on all of the spec's training data: no holdout validation
/// part is set aside, as no training happens; or `scaler`, the one the weights were trained
/// with, which must be of the spec's kind and width). Missing, extra or mis-shaped tensors are
/// an error naming each.
pub fn import_weights(spec: &ModelSpec, base: &Path, weights: &Path, scaler: Option<Scaler>) -> Result<TrainedModel> {
    let raw = spec.load_data(base)?;
    let (scaler, train) = match scaler {
        None => {
            let (scaler, train, _) = scale(spec, &raw.train, &[])?;
            (scaler, train)
        }
        Some(given) => {
            let kind = match given {
                Scaler::None => Scaling::None,
                Scaler::Standard { .. } => Scaling::Standard,
                Scaler::MinMax { .. } => Scaling::MinMax,
            };
            if kind != spec.scaling() {
                return Err(Error::invalid(
                    "import",
                    format!("the spec scales its features by {:?} but the given scaler is {kind:?}", spec.scaling()),
                ));
            }
            // Applied once to the training features: a scaler of another width is an error here.
            let x = given.transform(raw.train.x())?;
            (given, Dataset::new(x, raw.train.y().clone())?)
        }
    };
    let input_shape = train.x().shape()[1..].to_vec();
    let model = spec.build_model(&input_shape, &raw.task, &mut Rng::seed(spec.seed))?;
    crate::train::checkpoint::load_into(&model, &crate::train::checkpoint::load_weights(weights)?, weights)?;
    model.to(spec.device()?)?;
    Ok(TrainedModel { card: model_card(spec, &raw, input_shape, scaler), model })
}

/// A learning curve's training rows: `fraction` of `n` rows drawn at random, per class when
/// `strata` gives each row's class (at least one row of each class, and of all), in the
/// data's own order (so that the whole set trains exactly as `train` does).
fn curve_subset(n: usize, fraction: f64, strata: Option<&[usize]>, rng: &mut Rng) -> Vec<usize> {
    let take = |rows: &[usize]| ((rows.len() as f64 * fraction).round() as usize).clamp(1, rows.len().max(1));
    let order = rng.permutation(n);
    let mut rows: Vec<usize> = match strata {
        Some(classes) => {
            let k = classes.iter().max().map_or(0, |&m| m + 1);
            let mut groups = vec![Vec::new(); k];
            for &i in &order {
                groups[classes[i]].push(i);
            }
            groups.iter().filter(|g| !g.is_empty()).flat_map(|g| g[..take(g)].to_vec()).collect()
        }
        None => order[..take(&order).min(n)].to_vec(),
    };
    rows.sort_unstable();
    rows
}

/// Salt of the seeds that draw a learning curve's training subsets.
const CURVE_SALT: u64 = 0x1ea7_c0de;

/// One training-set size of a learning curve: the headline metric on the examples trained
/// on and on the test set, mean and (population) standard deviation over the repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct CurvePoint {
    /// The fraction of the training data used.
    pub fraction: f64,
    /// Training examples at that fraction.
    pub examples: usize,
    /// The metric on those training examples: (mean, std).
    pub train: (f64, f64),
    /// The metric on the test set: (mean, std).
    pub test: (f64, f64),
}

/// A learning curve: how the metric moves with the number of training examples.
#[derive(Clone, Debug, PartialEq)]
pub struct LearningCurve {
    /// The headline metric's name (`accuracy`, `mae`).
    pub metric: &'static str,
    /// One point per fraction, in the order given.
    pub points: Vec<CurvePoint>,
}

/// Trains the spec on growing fractions of its training data (subsets drawn stratified by
/// class for classification, seeded by the spec's seed and the repeat) and scores each model
/// on the examples it trained on and on the spec's test set; `repeats` models per fraction
/// (each from its own initial weights and subset). The spec's holdout validation and early
/// stopping are not used: every model trains the spec's epochs. `on_point` hears of each
/// point as it is done.
pub fn learning_curve(
    spec: &ModelSpec,
    base: &Path,
    fractions: &[f64],
    repeats: usize,
    on_point: &mut dyn FnMut(&CurvePoint),
) -> Result<LearningCurve> {
    if fractions.is_empty() || repeats == 0 {
        return Err(Error::invalid("learning curve", "needs at least one fraction and one repeat"));
    }
    if let Some(f) = fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        return Err(Error::invalid("learning curve", format!("fractions must be in (0, 1], got {f}")));
    }
    let raw = spec.load_data(base)?;
    let test = raw.test.as_ref().ok_or_else(|| {
        Error::invalid("learning curve", "the spec has no test set (give test_images, test_path or test_fraction)")
    })?;
    let strata = class_indices(&raw.train, &raw.task);
    let mut points = Vec::with_capacity(fractions.len());
    let mut metric = raw.task.metric_name();
    for &fraction in fractions {
        let (mut train_scores, mut test_scores, mut examples) = (Vec::new(), Vec::new(), 0);
        for repeat in 0..repeats as u64 {
            let seed = spec.seed ^ CURVE_SALT ^ repeat.wrapping_mul(0x9e37_79b9);
            let rows = curve_subset(raw.train.len(), fraction, strata.as_deref(), &mut Rng::seed(seed));
            examples = rows.len();
            let subset = raw.train.subset(&rows)?;
            let (_, train, others) = scale(spec, &subset, &[Some(test)])?;
            let test = others.into_iter().next().flatten().expect("the test set was given");
            let mut seeded = spec.clone();
            seeded.seed = spec.seed.wrapping_add(repeat);
            let model = fresh_model(&seeded, &train.x().shape()[1..], &raw.task)?;
            let mut opt = seeded.optimizer.build(model.parameters())?;
            let mut cfg = seeded.fit_config(raw.task);
            cfg.early_stopping = None;
            fit(&model, opt.as_mut(), &train, None, &cfg, &mut crate::train::Silent)?;
            let score = |d: &Dataset| -> Result<(&'static str, f64)> {
                Ok(evaluate(&model, d, &raw.task, cfg.loss, 1024)?.metrics.headline())
            };
            let (name, on_train) = score(&train)?;
            metric = name;
            train_scores.push(on_train);
            test_scores.push(score(&test)?.1);
        }
        let point = CurvePoint { fraction, examples, train: mean_std(&train_scores), test: mean_std(&test_scores) };
        on_point(&point);
        points.push(point);
    }
    Ok(LearningCurve { metric, points })
}

/// How to cross-validate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CvMethod {
    /// `k` folds, optionally stratified by class.
    KFold {
        /// Number of folds.
        k: usize,
        /// Keep class proportions in every fold.
        stratified: bool,
    },
    /// One fold per sample.
    LeaveOneOut,
}

/// One fold's result.
pub struct FoldOutcome {
    /// Training samples of the fold.
    pub train_size: usize,
    /// Test samples of the fold.
    pub test_size: usize,
    /// The fold's model on the fold's test part.
    pub evaluation: Evaluation,
}

/// The folds of a cross-validation.
pub struct CvOutcome {
    /// Per-fold results, in fold order.
    pub folds: Vec<FoldOutcome>,
    /// The task's headline metric: `accuracy` (classification) or `mae` (regression).
    pub metric: &'static str,
}

/// The score cross-validation reports per fold, with its name: the task's headline metric
/// ([`Metrics::headline`]), as training reports it.
pub fn fold_score(e: &Evaluation) -> (&'static str, f64) {
    e.metrics.headline()
}

/// Mean and (population) standard deviation.
fn mean_std(scores: &[f64]) -> (f64, f64) {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

impl CvOutcome {
    /// Mean and (population) standard deviation of the per-fold scores.
    pub fn mean_std(&self) -> (f64, f64) {
        mean_std(&self.folds.iter().map(|f| fold_score(&f.evaluation).1).collect::<Vec<_>>())
    }

    /// For regression, mean and standard deviation of the per-fold R² (what users compare
    /// models by); `None` for classification. Folds whose targets are constant (R² undefined)
    /// are left out.
    pub fn r2_mean_std(&self) -> Option<(f64, f64)> {
        let r2: Vec<f64> = self
            .folds
            .iter()
            .filter_map(|f| match &f.evaluation.metrics {
                Metrics::Regression(r) | Metrics::Reconstruction(r) => Some(r.r2),
                Metrics::Classification(_) => None,
            })
            .collect();
        if r2.is_empty() {
            return None;
        }
        let defined: Vec<f64> = r2.into_iter().filter(|v| v.is_finite()).collect();
        Some(if defined.is_empty() { (f64::NAN, f64::NAN) } else { mean_std(&defined) })
    }
}

/// Cross-validates the job on its training data: for each fold, a fresh model (same seed),
/// scaling fitted on the fold's training part, trained without validation (early stopping is
/// not used), and evaluated on the fold's test part. `on_fold` sees each fold as it finishes.
pub fn cross_validate(
    spec: &ModelSpec,
    base: &Path,
    method: CvMethod,
    observer: &mut dyn Observer,
    mut on_fold: impl FnMut(usize, usize, &FoldOutcome),
) -> Result<CvOutcome> {
    let RawData { train: data, task, .. } = spec.load_data(base)?;
    let folds = match method {
        CvMethod::KFold { k, stratified } => {
            let strata = if stratified { class_indices(&data, &task) } else { None };
            split::kfold(data.len(), k, strata.as_deref(), &mut Rng::seed(spec.seed ^ SPLIT_SALT))?
        }
        CvMethod::LeaveOneOut => split::leave_one_out(data.len())?,
    };
    let mut cfg = spec.fit_config(task);
    cfg.early_stopping = None;
    let mut outcomes = Vec::with_capacity(folds.len());
    for (i, fold) in folds.iter().enumerate() {
        let (_, train, test) = scale(spec, &data.subset(&fold.train)?, &[Some(&data.subset(&fold.test)?)])?;
        let test =
            test.into_iter().flatten().next().ok_or_else(|| Error::invalid("cross_validate", "empty test fold"))?;
        let model = fresh_model(spec, &train.x().shape()[1..], &task)?;
        let mut opt = spec.optimizer.build(model.parameters())?;
        fit(&model, opt.as_mut(), &train, None, &cfg, observer)?;
        let evaluation = evaluate(&model, &test, &task, cfg.loss, 1024)?;
        let outcome = FoldOutcome { train_size: train.len(), test_size: test.len(), evaluation };
        on_fold(i + 1, folds.len(), &outcome);
        outcomes.push(outcome);
    }
    Ok(CvOutcome { folds: outcomes, metric: task.metric_name() })
}

/// Compares backpropagated and numerical gradients of a fresh model's parameters on the first
/// `samples` training samples (evaluation mode, so dropout is off), checking up to
/// `per_tensor` elements of each parameter.
pub fn gradcheck(spec: &ModelSpec, base: &Path, samples: usize, per_tensor: usize) -> Result<Vec<ParamCheck>> {
    let raw = spec.load_data(base)?;
    let n = samples.clamp(1, raw.train.len().max(1));
    let (_, train, _) = scale(spec, &raw.train, &[])?;
    let model = fresh_model(spec, &train.x().shape()[1..], &raw.task)?;
    let batch = train.subset(&(0..n).collect::<Vec<_>>())?.to(model.device())?;
    let loss_kind = spec.loss_for(&raw.task);
    let loss = || loss_kind.compute(&raw.task, &model.forward(batch.x(), Mode::Eval)?, batch.y());
    gradcheck_parameters(
        &model.named_parameters(),
        loss,
        per_tensor,
        GradcheckOptions { seed: spec.seed, ..Default::default() },
    )
}
