//! Training: the fit loop, evaluation and prediction, metrics, progress, checkpoints.
//!
//! [`fit`] is the course's training procedure: for each epoch, shuffle the training set and,
//! batch by batch, run the forward pass, the loss, backpropagation and one optimizer step;
//! then measure the loss (and accuracy) on validation data the model never trains on. Watching
//! the two curves part ways is how overfitting shows; early stopping stops there and can put
//! back the weights of the best validation epoch.

pub mod checkpoint;
pub mod metrics;
mod progress;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use metrics::{regression_metrics, ConfusionMatrix, RegressionMetrics};
pub use progress::{ProgressReporter, Verbosity};

use crate::data::{one_hot, DataLoader, Dataset};
use crate::dist::{all_reduce_gradients, Communicator};
use crate::nn::{loss, Mode, Module};
use crate::optim::{clip_grad_norm, Optimizer, Per, Schedule, StepMode};
use crate::{no_grad, Error, Result, Tensor};

/// The headline metric of classification: the fraction of samples classified right.
const CLASSIFICATION_METRIC: &str = "accuracy";
/// The headline metric of regression: the mean absolute error (the loss, MSE, is reported
/// beside it; R² too where a whole set is scored).
const REGRESSION_METRIC: &str = "mae";
/// The headline metric of reconstruction: the mean squared error per input value.
const RECONSTRUCTION_METRIC: &str = "mse";

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Task {
    /// One of `classes` classes; targets are class indices `[N]`, outputs `[N, classes]`.
    Classification {
        /// Number of classes.
        classes: usize,
    },
    /// Numbers; targets are `[N]` (outputs `[N, 1]`) or `[N, k]` (outputs `[N, k]`).
    Regression,
    /// The input itself (unsupervised: an autoencoder); targets are the inputs `[N, features]`.
    /// With the binary cross-entropy loss the outputs are logits and the reconstruction is
    /// their sigmoid.
    Reconstruction {
        /// Values per input sample.
        features: usize,
    },
}

impl Task {
    /// Number of model outputs the task needs.
    pub fn outputs(&self) -> usize {
        match self {
            Task::Classification { classes } => *classes,
            Task::Regression => 1,
            Task::Reconstruction { features } => *features,
        }
    }

    /// Name of the task's headline metric (see [`Metrics::headline`]): `accuracy`, `mae` or
    /// (reconstruction) `mse`.
    pub fn metric_name(&self) -> &'static str {
        match self {
            Task::Classification { .. } => CLASSIFICATION_METRIC,
            Task::Regression => REGRESSION_METRIC,
            Task::Reconstruction { .. } => RECONSTRUCTION_METRIC,
        }
    }
}

/// The loss to minimise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// Softmax cross-entropy on logits against class indices (classification only).
    CrossEntropy,
    /// Mean squared error: against the values (regression, reconstruction) or one-hot rows
    /// (classification, as the course trains XOR).
    Mse,
    /// Binary cross-entropy of the outputs' sigmoid (the outputs are logits) against targets
    /// in [0, 1]: pixels, for reconstruction.
    BinaryCrossEntropy,
}

impl LossKind {
    /// Every loss's name, as written in a model spec.
    pub const NAMES: [&'static str; 3] = ["cross_entropy", "mse", "binary_cross_entropy"];

    /// The usual loss of a task: cross-entropy for classification, MSE for regression and
    /// reconstruction.
    pub fn default_for(task: &Task) -> LossKind {
        match task {
            Task::Classification { .. } => LossKind::CrossEntropy,
            Task::Regression | Task::Reconstruction { .. } => LossKind::Mse,
        }
    }

    /// Checks that the loss fits the task.
    pub fn check(&self, task: &Task) -> Result<()> {
        match (self, task) {
            (LossKind::CrossEntropy, Task::Regression | Task::Reconstruction { .. }) => Err(Error::invalid(
                "loss",
                "cross_entropy needs a classification task; use mse (or binary_cross_entropy for reconstruction)",
            )),
            (LossKind::BinaryCrossEntropy, Task::Classification { .. } | Task::Regression) => {
                Err(Error::invalid("loss", "binary_cross_entropy is for the reconstruction task (targets in [0, 1])"))
            }
            _ => Ok(()),
        }
    }

    /// What the model's `outputs` predict: the outputs themselves, or their sigmoid when they
    /// are the logits of binary cross-entropy.
    pub fn prediction(&self, outputs: &Tensor) -> Result<Tensor> {
        match self {
            LossKind::BinaryCrossEntropy => outputs.sigmoid(),
            _ => Ok(outputs.clone()),
        }
    }

    /// The loss of `outputs` against targets `y` (class indices or values, `[N]`).
    pub fn compute(&self, task: &Task, outputs: &Tensor, y: &Tensor) -> Result<Tensor> {
        match (self, task) {
            (LossKind::CrossEntropy, _) => loss::cross_entropy(outputs, y),
            (LossKind::Mse, Task::Classification { classes }) => loss::mse(outputs, &one_hot(y, *classes)?),
            // Targets [N] are one value per sample, the outputs [N, 1]; targets [N, k] go as
            // they are.
            (LossKind::Mse, Task::Regression) if y.rank() == 1 => loss::mse(outputs, &y.unsqueeze(1)?),
            (LossKind::Mse, Task::Regression | Task::Reconstruction { .. }) => loss::mse(outputs, y),
            (LossKind::BinaryCrossEntropy, _) => loss::binary_cross_entropy_with_logits(outputs, y),
        }
    }
}

/// Stop when the validation loss has not improved for `patience` epochs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs in a row without improvement before stopping (0: stop at the first one).
    pub patience: usize,
    /// Put back the weights of the best epoch at the end.
    #[serde(default = "yes")]
    pub restore_best: bool,
    /// Smallest decrease that counts as an improvement.
    #[serde(default)]
    pub min_delta: f32,
}

/// `true`, as a serde default.
pub(crate) fn yes() -> bool {
    true
}

impl EarlyStopping {
    /// Checks the settings: `min_delta` must be a finite number >= 0.
    pub fn validate(&self) -> Result<()> {
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(Error::invalid("early_stopping", format!("min_delta must be >= 0, got {}", self.min_delta)));
        }
        Ok(())
    }
}

/// Settings of [`fit`].
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per minibatch (the last batch of an epoch keeps the remainder).
    pub batch_size: usize,
    /// What the model predicts.
    pub task: Task,
    /// The loss.
    pub loss: LossKind,
    /// Learning-rate schedule, from the optimizer's rate at the start (stepped per epoch or
    /// per batch; `LrSchedule::Cosine { .. }.into()` steps per epoch).
    pub schedule: Schedule,
    /// Early stopping (needs validation data).
    pub early_stopping: Option<EarlyStopping>,
    /// Clip the global gradient norm to this value (the norm is read to the host every
    /// step: on a GPU, a synchronisation per step).
    pub clip_grad_norm: Option<f32>,
    /// Seed of the per-epoch shuffle.
    pub seed: u64,
    /// Batches between reads of the loss to the host (the NaN check and the observer's
    /// `on_batch` calls happen then, for each batch since the last read, after its update).
    /// `None`: every batch on the CPU, where reading is free (and the check comes before the
    /// update, so a non-finite loss leaves the weights as they were), and every 25 on a GPU,
    /// where each read waits for the device (a non-finite loss is then found after up to 24
    /// more updates). The epoch's metrics are kept on the device and read once.
    pub progress_every: Option<usize>,
    /// Data-parallel training over the ranks of this communicator ([`crate::dist`]): every
    /// rank starts from rank 0's weights and buffers, takes its contiguous part of each
    /// batch (the batch size is the global one), and the gradients, the batch loss and the
    /// metric sums are summed over the ranks in one message per step, so every rank steps
    /// alike and reports the figures of the whole batch. Validation is split over the ranks
    /// and reduced. `None` (or a world of one): this process alone.
    pub communicator: Option<Communicator>,
    /// Capture the training step (forward, loss, backward, optimizer update) into a CUDA
    /// graph after two warm-up batches, and replay it for every batch of the full size
    /// (PyTorch's `torch.cuda.graphs`): one launch per step instead of one per kernel. Needs a
    /// model on a CUDA device and an optimizer that can stage its numbers (the built-in ones);
    /// refused with `clip_grad_norm` (it reads the norm to the host every step) and with a
    /// communicator. A step that cannot be captured (one that copies values from the host,
    /// as dropout's masks do) runs eagerly, with a note in [`History::notes`]. A non-finite
    /// loss is found after its update, as with `progress_every > 1`. Each batch from a
    /// training set on the host is copied into the graph's inputs; with the training set on
    /// the model's device ([`Dataset::to`]), only its row numbers are, and the graph gathers
    /// the rows (one small upload per step).
    pub cuda_graph: bool,
}

impl FitConfig {
    /// Defaults for a task: 10 epochs, batch 32, cross-entropy (classification) or MSE.
    pub fn new(task: Task) -> FitConfig {
        let loss = LossKind::default_for(&task);
        FitConfig {
            epochs: 10,
            batch_size: 32,
            task,
            loss,
            schedule: Schedule::default(),
            early_stopping: None,
            clip_grad_norm: None,
            seed: 0,
            progress_every: None,
            communicator: None,
            cuda_graph: false,
        }
    }
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Learning rate used (with a per-batch schedule: the rate of the epoch's first batch).
    pub lr: f32,
    /// Mean training loss over the epoch's samples.
    pub train_loss: f32,
    /// Training accuracy or MAE, measured on each batch before its update.
    pub train_metric: f32,
    /// Validation loss after the epoch.
    pub val_loss: Option<f32>,
    /// Validation accuracy or MAE after the epoch.
    pub val_metric: Option<f32>,
    /// Seconds of the training loop (batching, forward, backward, update), validation excluded.
    pub seconds: f64,
    /// Training samples per second.
    pub samples_per_sec: f64,
}

/// Everything [`fit`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// One record per epoch run.
    pub records: Vec<EpochRecord>,
    /// `accuracy` or `mae`.
    pub metric: &'static str,
    /// The epoch with the lowest validation loss, when there was validation data.
    pub best_epoch: Option<usize>,
    /// True when early stopping ended training before the last epoch.
    pub stopped_early: bool,
    /// True when the best epoch's weights were put back.
    pub restored_best: bool,
    /// What training decided on its own and the user may want to know: whether the step ran
    /// in a CUDA graph ([`FitConfig::cuda_graph`]), or why it could not.
    pub notes: Vec<String>,
}

impl History {
    /// The history as CSV:
    /// `epoch,lr,train_loss,train_<metric>,val_loss,val_<metric>,seconds,samples_per_sec`.
    pub fn to_csv(&self) -> String {
        let m = self.metric;
        let mut out = format!("epoch,lr,train_loss,train_{m},val_loss,val_{m},seconds,samples_per_sec\n");
        let opt = |v: Option<f32>| v.map_or(String::new(), |v| v.to_string());
        for r in &self.records {
            out.push_str(&format!(
                "{},{},{},{},{},{},{:.4},{:.0}\n",
                r.epoch,
                r.lr,
                r.train_loss,
                r.train_metric,
                opt(r.val_loss),
                opt(r.val_metric),
                r.seconds,
                r.samples_per_sec
            ));
        }
        out
    }
}

/// Hooks [`fit`] calls as training goes: progress bars, logs.
pub trait Observer {
    /// Before the first epoch, with the settings and the number of batches per epoch.
    fn on_fit_start(&mut self, _cfg: &FitConfig, _batches: usize) {}
    /// After every batch: its number (from 1) of `batches`, its size and its loss.
    fn on_batch(&mut self, _epoch: usize, _batch: usize, _batches: usize, _size: usize, _loss: f32) {}
    /// After every epoch.
    fn on_epoch(&mut self, _record: &EpochRecord, _epochs: usize) {}
}

/// An observer that does nothing.
pub struct Silent;

impl Observer for Silent {}

/// The per-batch metric sum, as a scalar tensor where the outputs are (no read to the host):
/// correct predictions (classification), absolute error (regression; outputs `[B, 1]` against
/// targets `[B]` or `[B, 1]`, compared value by value) or squared error of the reconstruction
/// (`loss` says whether the outputs are logits).
fn metric_sum(task: &Task, loss: LossKind, outputs: &Tensor, y: &Tensor) -> Result<Tensor> {
    let _off = no_grad();
    match task {
        Task::Classification { .. } => metrics::correct(outputs, y),
        Task::Regression => outputs.flatten_all()?.sub(&y.flatten_all()?)?.abs()?.sum_all(),
        Task::Reconstruction { .. } => {
            let diff = loss.prediction(outputs)?.sub(y)?;
            (&diff * &diff)?.sum_all()
        }
    }
}

/// The losses of the batches since the last report, read to the host together (one
/// transfer), checked, then added to the epoch's sum and reported to the observer batch by
/// batch, after their updates.
struct PendingLosses {
    /// (batch number from 1, its loss as a detached scalar tensor, its size, its value once read).
    batches: Vec<(usize, Tensor, usize, Option<f32>)>,
}

impl PendingLosses {
    /// Reads the values not read yet and fails on the first non-finite one, naming its batch.
    fn read(&mut self, epoch: usize) -> Result<()> {
        let unread: Vec<usize> = (0..self.batches.len()).filter(|&i| self.batches[i].3.is_none()).collect();
        let values = match unread.as_slice() {
            [] => return Ok(()),
            [i] => vec![self.batches[*i].1.to_scalar()?],
            _ => {
                let refs: Vec<&Tensor> = unread.iter().map(|&i| &self.batches[i].1).collect();
                Tensor::stack(&refs, 0)?.try_to_vec()?
            }
        };
        for (&i, value) in unread.iter().zip(values) {
            let b = self.batches[i].0;
            if !value.is_finite() {
                return Err(Error::NonFinite { what: format!("loss at epoch {epoch}, batch {b}"), value });
            }
            self.batches[i].3 = Some(value);
        }
        Ok(())
    }

    /// Reads what is unread, then adds every batch to `loss_sum` and tells the observer.
    fn report(&mut self, epoch: usize, batches: usize, loss_sum: &mut f64, observer: &mut dyn Observer) -> Result<()> {
        self.read(epoch)?;
        for (b, _, size, value) in self.batches.drain(..) {
            let value = value.unwrap_or(f32::NAN);
            *loss_sum += value as f64 * size as f64;
            observer.on_batch(epoch, b, batches, size, value);
        }
        Ok(())
    }
}

/// Trains `model` with `opt` on `train`, validating on `val` after every epoch.
///
/// A NaN or infinite loss stops training with an error naming the epoch and batch. Early
/// stopping (in `cfg`) needs `val`.
pub fn fit(
    model: &dyn Module,
    opt: &mut dyn Optimizer,
    train: &Dataset,
    val: Option<&Dataset>,
    cfg: &FitConfig,
    observer: &mut dyn Observer,
) -> Result<History> {
    cfg.loss.check(&cfg.task)?;
    cfg.schedule.validate()?;
    if cfg.epochs == 0 {
        return Err(Error::invalid("fit", "epochs must be at least 1"));
    }
    if train.is_empty() {
        return Err(Error::invalid("fit", "the training set is empty"));
    }
    if let Some(es) = cfg.early_stopping {
        if val.is_none() {
            return Err(Error::invalid("fit", "early stopping needs validation data"));
        }
        es.validate()?;
    }
    let params = model.parameters();
    if params.is_empty() {
        return Err(Error::invalid(
            "fit",
            format!("{} has no parameters to train (derive Parameters on a custom module)", model.describe()),
        ));
    }
    let state = model.state_dict();
    let base_lr = opt.lr();
    let dist = cfg.communicator.as_ref().filter(|c| c.world_size() > 1);
    // Eager from here (a graph sets other modes batch by batch), and again however fit
    // returns: declared before the graph, the guard is dropped after it.
    opt.set_step_mode(StepMode::Eager)?;
    let mut opt = EagerAfter(opt);
    let mut graph = if cfg.cuda_graph {
        let refuse = |why: &str| Err(Error::invalid("cuda_graph", why.to_string()));
        if cfg.clip_grad_norm.is_some() {
            return refuse("clip_grad_norm reads the gradients' norm to the host every step, which a graph cannot");
        }
        if model.device() == crate::Device::Cpu {
            return refuse("CUDA graphs need the model on a CUDA device; it is on the CPU");
        }
        if dist.is_some() {
            return refuse("a step shared over processes is not captured; train without cuda_graph");
        }
        Some(StepGraph::new(model.device()))
    } else {
        None
    };
    // Batches are gathered where the data is and handed over on the model's device. A graph
    // takes a batch from the host into its inputs with one copy each (no launch); from a
    // training set on the model's device it takes the batch's row numbers, and gathers the
    // rows itself, in the graph.
    let mut loader = DataLoader::new(train, cfg.batch_size)?.shuffle(cfg.seed);
    let on = |t: &Tensor, d: crate::Device| t.device() == d;
    let feed = match graph {
        Some(_) if on(train.x(), model.device()) && on(train.y(), model.device()) => Feed::Rows,
        Some(_) if on(train.x(), crate::Device::Cpu) && on(train.y(), crate::Device::Cpu) => Feed::Host,
        _ => Feed::Gathered,
    };
    if feed == Feed::Gathered {
        loader = loader.to_device(model.device());
    }
    if let Some(c) = dist {
        // Every replica starts from rank 0's weights and buffers.
        let tensors: Vec<Tensor> = state.iter().map(|(_, t)| t.clone()).collect();
        c.broadcast(&tensors, 0)?;
        loader = loader.shard(c.rank(), c.world_size());
    }
    // Target values per sample (what regression metrics are averaged over).
    let per_sample = train.y().elem_count() / train.len();
    let batches = loader.len();
    let every = cfg.progress_every.unwrap_or(if model.device() == crate::Device::Cpu { 1 } else { 25 }).max(1);
    let mut history = History {
        records: Vec::new(),
        metric: cfg.task.metric_name(),
        best_epoch: None,
        stopped_early: false,
        restored_best: false,
        notes: Vec::new(),
    };
    observer.on_fit_start(cfg, batches);
    // The CPU kernels' pool threads spin between kernels while the loop runs (not when other
    // processes share the step: they may share the machine's cores too).
    let hot = (model.device() == crate::Device::Cpu && dist.is_none()).then(crate::hot_workers);
    let mut best: Option<(f32, Vec<Vec<f32>>)> = None;
    let mut waited = 0;
    // The schedule's step count: epochs, or batches over all epochs.
    let step_of = |epoch: usize, batch: usize| match cfg.schedule.per {
        Per::Epoch => epoch - 1,
        Per::Batch => (epoch - 1) * batches + batch,
    };
    for epoch in 1..=cfg.epochs {
        // The rate the epoch starts with (per batch, it then moves every batch).
        let lr = cfg.schedule.lr_at(base_lr, step_of(epoch, 0));
        opt.set_lr(lr);
        let start = Instant::now();
        let mut loss_sum = 0.0f64;
        // Each batch's metric sum, kept where the model is and read once at the epoch's end
        // (then added in f64, as the losses are).
        let mut metric_sums: Vec<Tensor> = Vec::with_capacity(batches);
        let mut pending = PendingLosses { batches: Vec::with_capacity(every) };
        // What the metric is averaged over: samples, or target values (k per sample).
        let mut metric_count = 0usize;
        let epoch_batches: Box<dyn Iterator<Item = Result<Batch<'_>>>> = match feed {
            Feed::Rows => Box::new(loader.epoch_rows()?.map(|rows| Ok(Batch::Rows(rows?, train)))),
            Feed::Host | Feed::Gathered => Box::new(loader.epoch()?.map(|b| b.map(|(x, y)| Batch::Samples(x, y)))),
        };
        for (b, batch) in epoch_batches.enumerate() {
            let batch = batch?;
            if let Some(hot) = &hot {
                hot.renew();
            }
            if cfg.schedule.per == Per::Batch {
                opt.set_lr(cfg.schedule.lr_at(base_lr, step_of(epoch, b)));
            }
            // Samples in the whole batch (over all ranks).
            let global = cfg.batch_size.min(train.len() - b * cfg.batch_size);
            metric_count += match cfg.task {
                Task::Classification { .. } => global,
                Task::Regression | Task::Reconstruction { .. } => global * per_sample,
            };
            let replayed = match &mut graph {
                Some(g) => g.run(model, &mut *opt, cfg, &batch, &mut history.notes)?,
                None => None,
            };
            let metric = match replayed {
                // The graph's update is done: the loss is read (and checked) after it.
                Some((loss, metric)) => {
                    pending.batches.push((b + 1, loss, global, None));
                    metric
                }
                None => {
                    let (x, y) = batch.samples(model.device())?;
                    let size = x.shape()[0];
                    // A short last batch may leave a rank no rows: it adds zeros, but still joins.
                    let (mut grads, loss, metric) = if size > 0 {
                        let outputs = model.forward(&x, Mode::Train)?;
                        let loss = cfg.loss.compute(&cfg.task, &outputs, &y)?;
                        // This rank's share of the global batch's mean loss (1 for one
                        // process): summed over the ranks, the gradients are those of the
                        // whole batch.
                        let grads = if size == global {
                            loss.backward()?
                        } else {
                            loss.mul_scalar(size as f32 / global as f32)?.backward()?
                        };
                        (grads, loss.detach(), metric_sum(&cfg.task, cfg.loss, &outputs, &y)?)
                    } else {
                        let zero = Tensor::zeros_on(&[], model.device())?;
                        (crate::Gradients::default(), zero.clone(), zero)
                    };
                    let (loss, metric) = match dist {
                        None => (loss, metric),
                        Some(c) => {
                            // Gradients, the loss summed over samples and the metric sum in
                            // one message.
                            let sums = [loss.mul_scalar(size as f32)?, metric];
                            let [loss_sum, metric] =
                                <[Tensor; 2]>::try_from(all_reduce_gradients(c, &params, &mut grads, 1.0, &sums)?)
                                    .expect("two sums in, two out");
                            (loss_sum.mul_scalar(1.0 / global as f32)?, metric)
                        }
                    };
                    pending.batches.push((b + 1, loss, global, None));
                    if every == 1 {
                        // Read before the update (free on the CPU): a non-finite loss leaves
                        // the weights as they were. Read every few batches (a GPU), it is found
                        // after up to `every - 1` more updates.
                        pending.read(epoch)?;
                    }
                    if let Some(max_norm) = cfg.clip_grad_norm {
                        clip_grad_norm(&params, &mut grads, max_norm)?;
                    }
                    opt.step(&grads)?;
                    metric
                }
            };
            metric_sums.push(metric);
            if pending.batches.len() >= every {
                pending.report(epoch, batches, &mut loss_sum, observer)?;
            }
        }
        pending.report(epoch, batches, &mut loss_sum, observer)?;
        let metric: f64 = if metric_sums.is_empty() {
            0.0
        } else {
            let refs: Vec<&Tensor> = metric_sums.iter().collect();
            Tensor::stack(&refs, 0)?.try_to_vec()?.iter().map(|&v| f64::from(v)).sum()
        };
        let seconds = start.elapsed().as_secs_f64();
        let n = train.len() as f64;
        if let Some(c) = dist {
            // Running statistics (batch norm) saw only each rank's shards: rank 0's are kept.
            let buffers: Vec<Tensor> = model.named_buffers().into_iter().map(|(_, t)| t).collect();
            c.broadcast(&buffers, 0)?;
        }
        let (val_loss, val_metric) = match val {
            Some(v) => {
                let e = match dist {
                    Some(c) => evaluate_distributed(c, model, v, &cfg.task, cfg.loss, cfg.batch_size.max(256))?,
                    None => evaluate(model, v, &cfg.task, cfg.loss, cfg.batch_size.max(256))?,
                };
                (Some(e.loss), Some(e.metric()))
            }
            None => (None, None),
        };
        let record = EpochRecord {
            epoch,
            lr,
            train_loss: (loss_sum / n) as f32,
            train_metric: (metric / metric_count.max(1) as f64) as f32,
            val_loss,
            val_metric,
            seconds,
            samples_per_sec: n / seconds.max(1e-9),
        };
        observer.on_epoch(&record, cfg.epochs);
        history.records.push(record);
        if let Some(v) = val_loss {
            if !v.is_finite() {
                return Err(Error::NonFinite { what: format!("validation loss at epoch {epoch}"), value: v });
            }
            let min_delta = cfg.early_stopping.map_or(0.0, |e| e.min_delta);
            if best.as_ref().is_none_or(|(b, _)| v < b - min_delta) {
                // The whole state (buffers too: running statistics belong to those weights).
                let snapshot = match cfg.early_stopping {
                    Some(e) if e.restore_best => state.iter().map(|(_, t)| t.try_to_vec()).collect::<Result<_>>()?,
                    _ => Vec::new(),
                };
                best = Some((v, snapshot));
                history.best_epoch = Some(epoch);
                waited = 0;
            } else {
                // As Keras: stop once `patience` epochs in a row brought no improvement.
                waited += 1;
                if cfg.early_stopping.is_some_and(|es| waited >= es.patience) && epoch < cfg.epochs {
                    history.stopped_early = true;
                    break;
                }
            }
        }
    }
    if let (Some(es), Some((_, weights))) = (cfg.early_stopping, &best) {
        if es.restore_best && history.best_epoch != Some(history.records.len()) {
            for ((_, p), w) in state.iter().zip(weights) {
                p.copy_from(&Tensor::from_slice(w, p.shape())?)?;
            }
            history.restored_best = true;
        }
    }
    if let Some(g) = graph.as_ref().filter(|g| g.captured.is_none() && !g.off) {
        history.notes.push(match &g.last_failure {
            Some(why) => format!("cuda_graph: no step was captured before training ended: {why}"),
            None => format!(
                "cuda_graph: no step was captured: training ended within {} batches of {} samples",
                GRAPH_WARMUP + 1,
                cfg.batch_size
            ),
        });
    }
    Ok(history)
}

/// An optimizer lent to [`fit`], put back in [`StepMode::Eager`] when dropped (a CUDA graph
/// leaves it staging its numbers for replays that will not come).
struct EagerAfter<'a>(&'a mut dyn Optimizer);

impl<'a> std::ops::Deref for EagerAfter<'a> {
    type Target = dyn Optimizer + 'a;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl std::ops::DerefMut for EagerAfter<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0
    }
}

impl Drop for EagerAfter<'_> {
    fn drop(&mut self) {
        // Cannot fail for the built-in optimizers; a custom one that cannot stage never left
        // the eager mode.
        let _ = self.0.set_step_mode(StepMode::Eager);
    }
}

/// How the training loop takes its batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    /// Gathered where the data is, then moved to the model's device.
    Gathered,
    /// Gathered on the host and kept there until a step needs them (a graph copies them into
    /// its inputs, one copy each).
    Host,
    /// As row numbers of a training set on the model's device (a graph gathers the rows).
    Rows,
}

/// One batch of the training loop.
enum Batch<'a> {
    /// Its inputs and targets.
    Samples(Tensor, Tensor),
    /// Its row numbers (an index tensor on the host) in a dataset.
    Rows(Tensor, &'a Dataset),
}

impl Batch<'_> {
    /// Its inputs and targets on `device`.
    fn samples(self, device: crate::Device) -> Result<(Tensor, Tensor)> {
        let (x, y) = match self {
            Batch::Samples(x, y) => (x, y),
            Batch::Rows(rows, data) => data.batch(&rows)?,
        };
        Ok((x.to(device)?, y.to(device)?))
    }
}

/// What a captured step reads its batch from.
enum Inputs {
    /// Fixed inputs and targets, each batch copied into them.
    Samples(Tensor, Tensor),
    /// Fixed row numbers, each batch's copied into them, of a training set on the device
    /// (the step gathers the rows).
    Rows(Tensor),
}

/// Full batches run eagerly before the step is captured (the optimizer makes its state; the
/// last of them runs with the graph's pool in place, which so learns the step's buffers).
const GRAPH_WARMUP: usize = 2;
/// Captures tried before training goes on eagerly for good.
const GRAPH_ATTEMPTS: usize = 3;

/// The training step captured into a CUDA graph ([`FitConfig::cuda_graph`]): reads its batch
/// from fixed input tensors, and leaves its loss and metric sum in fixed output tensors.
struct StepGraph {
    device: crate::Device,
    /// Full batches run eagerly so far (up to [`GRAPH_WARMUP`]).
    warm: usize,
    /// Captures that failed, and why the last one did.
    failed: usize,
    last_failure: Option<String>,
    /// No more captures (they failed, or the optimizer cannot stage its numbers).
    off: bool,
    /// What the graph reads its batch from.
    inputs: Option<Inputs>,
    /// The buffers of the recorded step, for the capture.
    pool: Option<crate::backend::GraphPool>,
    captured: Option<Captured>,
}

/// What a captured step keeps: the graph, and the tensors its replays write.
struct Captured {
    graph: crate::backend::Graph,
    /// The gradients (which parameters have one is what [`Optimizer::step`] needs to stage).
    grads: crate::Gradients,
    loss: Tensor,
    metric: Tensor,
}

impl StepGraph {
    fn new(device: crate::Device) -> StepGraph {
        StepGraph {
            device,
            warm: 0,
            failed: 0,
            last_failure: None,
            off: false,
            inputs: None,
            pool: None,
            captured: None,
        }
    }

    /// Runs the batch by replaying the graph (capturing it first when it is time; the last
    /// warm-up batch is run here too, recorded), and returns the batch's loss and metric sum;
    /// `None` when the caller is to run the batch eagerly (warm-up, a batch of another size, a
    /// failed capture), with the optimizer set for it.
    fn run(
        &mut self,
        model: &dyn Module,
        opt: &mut dyn Optimizer,
        cfg: &FitConfig,
        batch: &Batch<'_>,
        notes: &mut Vec<String>,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let size = match batch {
            Batch::Samples(x, _) => x.shape()[0],
            Batch::Rows(rows, _) => rows.elem_count(),
        };
        let fits = match (batch, &self.inputs) {
            (_, None) | (Batch::Rows(..), Some(Inputs::Rows(_))) => true,
            (Batch::Samples(x, y), Some(Inputs::Samples(xs, ys))) => xs.shape() == x.shape() && ys.shape() == y.shape(),
            _ => false,
        };
        if self.off || !fits || size != cfg.batch_size {
            if self.captured.is_some() {
                // Eager updates that read the numbers they write where the graph reads them.
                opt.set_step_mode(StepMode::Staged)?;
            }
            return Ok(None);
        }
        if let Some(c) = &self.captured {
            self.copy_in(batch)?;
            opt.set_step_mode(StepMode::StageOnly)?;
            // Advances the step counters and writes this step's numbers for the replay.
            opt.step(&c.grads)?;
            c.graph.replay()?;
            // Both out of the buffers the next replay writes, in one launch.
            let both = Tensor::stack(&[&c.loss, &c.metric], 0)?;
            return Ok(Some((both.narrow(0, 0, 1)?.reshape(&[])?, both.narrow(0, 1, 1)?.reshape(&[])?)));
        }
        if self.warm + 1 < GRAPH_WARMUP {
            self.warm += 1;
            return Ok(None);
        }
        if self.inputs.is_none() {
            self.inputs = Some(match batch {
                Batch::Samples(x, y) => Inputs::Samples(
                    Tensor::zeros_on(x.shape(), self.device)?,
                    Tensor::zeros_on(y.shape(), self.device)?,
                ),
                Batch::Rows(rows, _) => Inputs::Rows(Tensor::zeros_on(rows.shape(), self.device)?),
            });
        }
        self.copy_in(batch)?;
        let data = match batch {
            Batch::Rows(_, data) => Some(*data),
            Batch::Samples(..) => None,
        };
        let inputs = self.inputs.as_ref().expect("made above");
        let Some(pool) = &self.pool else {
            if !opt.set_step_mode(StepMode::Staged)? {
                self.give_up(notes, "this optimizer cannot stage its numbers for a graph".into());
                return Ok(None);
            }
            opt.set_step_mode(StepMode::Eager)?;
            // The last warm-up batch, run eagerly from the fixed inputs (as the graph will),
            // its buffers recorded into the graph's pool.
            let pool = crate::backend::GraphPool::record(self.device)?;
            let stepped = captured_step(model, opt, cfg, inputs, data);
            let host_op = pool.end_recording()?;
            let (_, loss, metric) = match stepped {
                Ok(out) => out,
                Err(e) => {
                    // Run again without the pool (the update had not begun unless the
                    // optimizer failed, which it then does again).
                    self.give_up(notes, format!("the recorded step failed: {e}"));
                    return Ok(None);
                }
            };
            self.warm += 1;
            match host_op {
                Some(op) => self.give_up(
                    notes,
                    format!("the step copies values between the host and the GPU ({op}), which a graph would replay unchanged"),
                ),
                None => self.pool = Some(pool),
            }
            // Copied out of the pool's blocks, which go back to it (the capture needs them).
            return Ok(Some((loss.copied()?, metric.copied()?)));
        };
        if !opt.set_step_mode(StepMode::Staged)? {
            self.give_up(notes, "this optimizer cannot stage its numbers for a graph".into());
            return Ok(None);
        }
        let began = pool.begin_capture();
        let (stepped, ended) = match began {
            Ok(()) => {
                let stepped = captured_step(model, opt, cfg, inputs, data);
                let ended = pool.end_capture(stepped.is_ok());
                (stepped, ended)
            }
            Err(e) => (Err(e), Err(Error::invalid("cuda_graph", "the capture did not begin"))),
        };
        match (stepped, ended) {
            (Ok((grads, loss, metric)), Ok(graph)) => {
                // Writes the captured step's numbers, for this first replay.
                opt.set_step_mode(StepMode::StageOnly)?;
                graph.replay()?;
                let out = (loss.copied()?, metric.copied()?);
                self.captured = Some(Captured { graph, grads, loss, metric });
                // The graph keeps its pool.
                self.pool = None;
                notes.push(format!(
                    "cuda_graph: the training step was captured after {} eager batches{}, and replayed for every \
                     batch of {} samples from then on",
                    self.warm,
                    if self.failed > 0 { format!(" and {} failed captures", self.failed) } else { String::new() },
                    cfg.batch_size
                ));
                Ok(Some(out))
            }
            (stepped, ended) => {
                // The captured step never ran: the optimizer takes back its counters, and the
                // batch runs eagerly.
                opt.set_step_mode(StepMode::Eager)?;
                let why = match (stepped, ended) {
                    (Err(e), _) | (Ok(_), Err(e)) => e.to_string(),
                    (Ok(_), Ok(_)) => unreachable!("both succeeded is the arm above"),
                };
                self.failed += 1;
                if self.failed >= GRAPH_ATTEMPTS {
                    self.give_up(notes, why.clone());
                }
                self.last_failure = Some(why);
                Ok(None)
            }
        }
    }

    /// Copies `batch` into the inputs the graph reads (made for its kind of batch).
    fn copy_in(&self, batch: &Batch<'_>) -> Result<()> {
        match (batch, &self.inputs) {
            (Batch::Samples(x, y), Some(Inputs::Samples(xs, ys))) => {
                xs.copy_from(x)?;
                ys.copy_from(y)
            }
            (Batch::Rows(rows, _), Some(Inputs::Rows(fixed))) => fixed.copy_from(rows),
            _ => Err(Error::invalid("cuda_graph", "a batch of another kind than the graph reads")),
        }
    }

    /// No graph for the rest of training: its pool goes back to the cache, and a note says why.
    fn give_up(&mut self, notes: &mut Vec<String>, why: String) {
        self.off = true;
        self.pool = None;
        notes.push(format!("cuda_graph: the training step could not be captured, so it ran eagerly: {why}"));
    }
}

/// The step a graph records: forward, loss, backward, metric sum and the optimizer's update,
/// with nothing read to the host.
fn captured_step(
    model: &dyn Module,
    opt: &mut dyn Optimizer,
    cfg: &FitConfig,
    inputs: &Inputs,
    data: Option<&Dataset>,
) -> Result<(crate::Gradients, Tensor, Tensor)> {
    let (x, y) = match (inputs, data) {
        (Inputs::Samples(x, y), _) => (x.clone(), y.clone()),
        // The rows gathered on the device, in the graph.
        (Inputs::Rows(rows), Some(data)) => data.batch(rows)?,
        (Inputs::Rows(_), None) => return Err(Error::invalid("cuda_graph", "row numbers without their dataset")),
    };
    let outputs = model.forward(&x, Mode::Train)?;
    let loss = cfg.loss.compute(&cfg.task, &outputs, &y)?;
    let grads = loss.backward()?;
    let metric = metric_sum(&cfg.task, cfg.loss, &outputs, &y)?;
    opt.step(&grads)?;
    Ok((grads, loss.detach(), metric))
}

/// Loss and metrics of a model on a dataset.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f32,
    /// The confusion matrix (classification) or regression metrics.
    pub metrics: Metrics,
}

/// Task-specific metrics of an [`Evaluation`].
#[derive(Clone, Debug)]
pub enum Metrics {
    /// Counts of true vs predicted classes, with accuracy and macro P/R/F1 derived from it.
    Classification(ConfusionMatrix),
    /// MSE, MAE, R².
    Regression(RegressionMetrics),
    /// MSE, MAE, R² of a reconstruction, pooled over every input value (headline: MSE).
    Reconstruction(RegressionMetrics),
}

impl Metrics {
    /// The task's headline metric, with its name: accuracy, MAE for regression, MSE for
    /// reconstruction ([`Task::metric_name`]). The history records it every epoch and
    /// cross-validation scores folds by it.
    pub fn headline(&self) -> (&'static str, f64) {
        match self {
            Metrics::Classification(m) => (CLASSIFICATION_METRIC, m.accuracy()),
            Metrics::Regression(r) => (REGRESSION_METRIC, r.mae),
            Metrics::Reconstruction(r) => (RECONSTRUCTION_METRIC, r.mse),
        }
    }
}

impl Evaluation {
    /// The headline metric's value ([`Metrics::headline`]), the metric of the history.
    pub fn metric(&self) -> f32 {
        self.metrics.headline().1 as f32
    }

    /// Fraction classified right (classification), else `None`.
    pub fn accuracy(&self) -> Option<f64> {
        self.confusion().map(ConfusionMatrix::accuracy)
    }

    /// The confusion matrix (classification), else `None`.
    pub fn confusion(&self) -> Option<&ConfusionMatrix> {
        match &self.metrics {
            Metrics::Classification(m) => Some(m),
            Metrics::Regression(_) | Metrics::Reconstruction(_) => None,
        }
    }

    /// Mean squared error (regression), else `None`.
    pub fn mse(&self) -> Option<f64> {
        self.regression().map(|r| r.mse)
    }

    /// Mean absolute error (regression), else `None`.
    pub fn mae(&self) -> Option<f64> {
        self.regression().map(|r| r.mae)
    }

    /// Coefficient of determination R² (regression), else `None`.
    pub fn r2(&self) -> Option<f64> {
        self.regression().map(|r| r.r2)
    }

    fn regression(&self) -> Option<&RegressionMetrics> {
        match &self.metrics {
            Metrics::Regression(r) | Metrics::Reconstruction(r) => Some(r),
            Metrics::Classification(_) => None,
        }
    }
}

/// [`fit`], [`evaluate`] and [`predict`] with their settings kept in one place and defaults
/// for the rest: silent unless asked, no validation unless given, evaluation with the task,
/// loss and batch size training used.
///
/// ```
/// use sinapse::data::Dataset;
/// use sinapse::nn::{Linear, Module};
/// use sinapse::optim::Adam;
/// use sinapse::train::{Task, Trainer};
/// use sinapse::{Rng, Tensor};
///
/// let mut rng = Rng::seed(0);
/// let x = Tensor::rand_normal(&[64, 3], 0.0, 1.0, &mut rng)?;
/// let y = x.matmul(&Tensor::from_vec(vec![1.0, -2.0, 0.5], &[3, 1])?)?; // y = x·w
/// let data = Dataset::new(x, y)?;
/// let model = Linear::new(3, 1, &mut rng)?;
/// let mut opt = Adam::new(model.parameters(), 0.05)?;
/// let trainer = Trainer::new(Task::Regression).epochs(60).batch_size(16);
/// trainer.fit(&model, &mut opt, &data)?;
/// assert!(trainer.evaluate(&model, &data)?.mse().unwrap() < 1e-3);
/// # Ok::<(), sinapse::Error>(())
/// ```
pub struct Trainer<'a> {
    cfg: FitConfig,
    validation: Option<&'a Dataset>,
    verbosity: Verbosity,
}

impl<'a> Trainer<'a> {
    /// Training for `task` with [`FitConfig::new`]'s defaults (10 epochs, batch 32, the task's
    /// usual loss), silent.
    pub fn new(task: Task) -> Trainer<'a> {
        Trainer { cfg: FitConfig::new(task), validation: None, verbosity: Verbosity::Quiet }
    }

    /// From a whole configuration.
    pub fn with_config(cfg: FitConfig) -> Trainer<'a> {
        Trainer { cfg, validation: None, verbosity: Verbosity::Quiet }
    }

    /// Passes over the training set.
    pub fn epochs(mut self, epochs: usize) -> Self {
        self.cfg.epochs = epochs;
        self
    }

    /// Samples per minibatch.
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.cfg.batch_size = batch_size;
        self
    }

    /// The loss.
    pub fn loss(mut self, loss: LossKind) -> Self {
        self.cfg.loss = loss;
        self
    }

    /// The learning-rate schedule (an [`crate::optim::LrSchedule`] steps per epoch; a
    /// [`Schedule`] says per batch and warmup).
    pub fn schedule(mut self, schedule: impl Into<Schedule>) -> Self {
        self.cfg.schedule = schedule.into();
        self
    }

    /// Early stopping on the validation loss (needs [`Trainer::validation`]).
    pub fn early_stopping(mut self, es: EarlyStopping) -> Self {
        self.cfg.early_stopping = Some(es);
        self
    }

    /// Clips the global gradient norm to `max_norm`.
    pub fn clip_grad_norm(mut self, max_norm: f32) -> Self {
        self.cfg.clip_grad_norm = Some(max_norm);
        self
    }

    /// Seed of the per-epoch shuffle.
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Data to validate on after every epoch.
    pub fn validation(mut self, data: &'a Dataset) -> Self {
        self.validation = Some(data);
        self
    }

    /// A line per epoch (and a bar on a terminal).
    pub fn verbose(mut self, on: bool) -> Self {
        self.verbosity = if on { Verbosity::Normal } else { Verbosity::Quiet };
        self
    }

    /// The settings.
    pub fn config(&self) -> &FitConfig {
        &self.cfg
    }

    /// Trains `model` with `opt` on `train` ([`fit`]).
    pub fn fit(&self, model: &dyn Module, opt: &mut dyn Optimizer, train: &Dataset) -> Result<History> {
        let mut progress = ProgressReporter::new(self.verbosity);
        fit(model, opt, train, self.validation, &self.cfg, &mut progress)
    }

    /// Loss and metrics of `model` on `data`, with the task and loss of training.
    pub fn evaluate(&self, model: &dyn Module, data: &Dataset) -> Result<Evaluation> {
        evaluate(model, data, &self.cfg.task, self.cfg.loss, self.cfg.batch_size.max(256))
    }

    /// The model's outputs for inputs `x` ([`predict`]).
    pub fn predict(&self, model: &dyn Module, x: &Tensor) -> Result<Tensor> {
        predict(model, x, self.cfg.batch_size.max(256))
    }
}

/// The model's outputs for inputs `x`, in evaluation mode and without gradients, computed in
/// batches of `batch_size`. Each batch is moved to the model's device; the outputs stay there.
pub fn predict(model: &dyn Module, x: &Tensor, batch_size: usize) -> Result<Tensor> {
    let _off = no_grad();
    let n = x.dim(0)?;
    let device = model.device();
    let mut outs = Vec::new();
    for idx in crate::data::batch_indices(n, batch_size, None, false)? {
        let batch = x.index_select(0, &idx.to(x.device())?)?.to(device)?;
        outs.push(model.forward(&batch, Mode::Eval)?);
    }
    if outs.is_empty() {
        let probe = model.forward(&x.narrow(0, 0, 0)?.to(device)?, Mode::Eval)?;
        return Ok(probe);
    }
    let refs: Vec<&Tensor> = outs.iter().collect();
    Tensor::cat(&refs, 0)
}

/// Mean loss and metrics of `model` on `data`.
pub fn evaluate(
    model: &dyn Module,
    data: &Dataset,
    task: &Task,
    loss: LossKind,
    batch_size: usize,
) -> Result<Evaluation> {
    score(predict(model, data.x(), batch_size)?, data, task, loss)
}

/// [`evaluate`] split over the ranks of `comm`: each rank predicts its contiguous part of
/// `data`, the parts are joined on every rank (one all-reduce of the outputs, each rank's
/// rows in place and zeros elsewhere), and every rank scores the whole: the figures are those
/// of one process evaluating all of `data`.
pub fn evaluate_distributed(
    comm: &Communicator,
    model: &dyn Module,
    data: &Dataset,
    task: &Task,
    loss: LossKind,
    batch_size: usize,
) -> Result<Evaluation> {
    if comm.world_size() == 1 {
        return evaluate(model, data, task, loss, batch_size);
    }
    let rows = comm.shard(data.len());
    let part = predict(model, &data.x().narrow(0, rows.start, rows.len())?, batch_size)?;
    let full = {
        let _off = no_grad();
        let mut shape = part.shape().to_vec();
        let mut pieces = Vec::with_capacity(3);
        shape[0] = rows.start;
        pieces.push(Tensor::zeros_on(&shape, part.device())?);
        pieces.push(part.clone());
        shape[0] = data.len() - rows.end;
        pieces.push(Tensor::zeros_on(&shape, part.device())?);
        let refs: Vec<&Tensor> = pieces.iter().collect();
        let placed = Tensor::cat(&refs, 0)?;
        comm.all_reduce_sum(&[placed])?.remove(0)
    };
    score(full, data, task, loss)
}

/// Loss and metrics of the model's `outputs` for every sample of `data`.
fn score(outputs: Tensor, data: &Dataset, task: &Task, loss: LossKind) -> Result<Evaluation> {
    let loss_value = {
        let _off = no_grad();
        loss.compute(task, &outputs, &data.y().to(outputs.device())?)?.to_scalar()?
    };
    if !loss_value.is_finite() {
        // NaN outputs make no metrics worth printing.
        return Err(Error::NonFinite { what: "loss on the evaluation data".into(), value: loss_value });
    }
    let metrics = match task {
        Task::Classification { classes } => {
            let predicted = outputs.argmax(1, false)?.try_to_vec()?.iter().map(|&p| p as usize).collect::<Vec<_>>();
            let truth = data.y().try_to_vec()?.iter().map(|&t| t as usize).collect::<Vec<_>>();
            Metrics::Classification(ConfusionMatrix::from_predictions(&predicted, &truth, *classes)?)
        }
        Task::Regression => {
            // R² per target column, averaged (as scikit-learn's default): columns of other
            // scales are not pooled.
            let columns = if data.y().rank() == 2 { data.y().shape()[1] } else { 1 };
            let (predicted, truth) = (outputs.try_to_vec()?, data.y().try_to_vec()?);
            Metrics::Regression(metrics::regression_metrics_columns(&predicted, &truth, columns)?)
        }
        Task::Reconstruction { .. } => {
            // Every value of every sample pooled: the MSE per pixel, and R² against the mean
            // pixel.
            let (predicted, truth) = (loss.prediction(&outputs)?.try_to_vec()?, data.y().try_to_vec()?);
            Metrics::Reconstruction(metrics::regression_metrics_columns(&predicted, &truth, 1)?)
        }
    };
    Ok(Evaluation { loss: loss_value, metrics })
}
