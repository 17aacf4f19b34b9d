//! Training a classifier: minibatches, the SGD loop, accuracy.
//!
//! One epoch of minibatch SGD, as the course's MLPBACK: shuffle the training set; for each
//! batch, forward, loss, backward (the chain rule through the whole network), and one
//! gradient step `w ← w - lr·dL/dw`.

use std::time::Instant;

use crate::nn::{loss, Mode, Module};
use crate::optim::Sgd;
use crate::{no_grad, Error, Result, Rng, Tensor};

/// The row indices of each minibatch, as index tensors for [`Tensor::index_select`]. With an
/// `rng` the order is shuffled; the last batch keeps the remainder (it may be smaller).
pub fn batch_indices(n: usize, batch_size: usize, rng: Option<&mut Rng>) -> Result<Vec<Tensor>> {
    if batch_size == 0 {
        return Err(Error::invalid("batch_indices", "batch size must be at least 1"));
    }
    let order: Vec<usize> = match rng {
        Some(rng) => rng.permutation(n),
        None => (0..n).collect(),
    };
    order.chunks(batch_size).map(|c| Tensor::from_vec(c.iter().map(|&i| i as f32).collect(), &[c.len()])).collect()
}

/// Number of rows whose largest logit is at the label's class.
pub fn correct_count(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(logits.rank().saturating_sub(1), false)?;
    Ok(predicted.eq(labels)?.sum_all()?.to_scalar()? as usize)
}

/// Fraction of rows whose largest logit is at the label's class.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    let n = labels.elem_count().max(1);
    Ok(correct_count(logits, labels)? as f32 / n as f32)
}

/// Mean cross-entropy and accuracy of `model` on `(x, labels)`, evaluated without gradients in
/// batches of `batch_size`.
pub fn evaluate(model: &dyn Module, x: &Tensor, labels: &Tensor, batch_size: usize) -> Result<(f32, f32)> {
    let _off = no_grad();
    let n = x.dim(0)?;
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    for idx in batch_indices(n, batch_size, None)? {
        let xb = x.index_select(0, &idx)?;
        let yb = labels.index_select(0, &idx)?;
        let logits = model.forward(&xb, Mode::Eval)?;
        loss_sum += loss::cross_entropy(&logits, &yb)?.to_scalar()? as f64 * idx.elem_count() as f64;
        correct += correct_count(&logits, &yb)?;
    }
    let n = n.max(1) as f64;
    Ok(((loss_sum / n) as f32, (correct as f64 / n) as f32))
}

/// Settings of [`train_classifier`].
#[derive(Clone, Debug)]
pub struct SgdConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per minibatch (the last batch of an epoch keeps the remainder).
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f32,
    /// Seed of the per-epoch shuffle.
    pub seed: u64,
}

/// What happened in one epoch.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's samples.
    pub loss: f32,
    /// Training accuracy over the epoch (measured on each batch before its update).
    pub accuracy: f32,
    /// Wall-clock seconds of the epoch's training loop (batching, forward, backward, update).
    pub seconds: f64,
    /// Samples seen.
    pub samples: usize,
}

/// Trains `model` as a classifier with softmax cross-entropy and minibatch SGD.
///
/// `x` is `[N, features]`, `labels` `[N]` class indices. Calls `on_epoch` after each epoch. A
/// NaN or infinite loss stops training with an error naming the epoch and batch.
pub fn train_classifier(
    model: &dyn Module,
    x: &Tensor,
    labels: &Tensor,
    cfg: &SgdConfig,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<Vec<EpochStats>> {
    let n = x.dim(0)?;
    if labels.shape() != [n] {
        return Err(Error::shapes("train_classifier (x rows vs labels)", x.shape(), labels.shape()));
    }
    let mut rng = Rng::seed(cfg.seed);
    let mut opt = Sgd::new(model.parameters(), cfg.lr);
    let mut history = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for (b, idx) in batch_indices(n, cfg.batch_size, Some(&mut rng))?.iter().enumerate() {
            let xb = x.index_select(0, idx)?;
            let yb = labels.index_select(0, idx)?;
            let logits = model.forward(&xb, Mode::Train)?;
            let loss = loss::cross_entropy(&logits, &yb)?;
            let value = loss.to_scalar()?;
            if !value.is_finite() {
                return Err(Error::NonFinite { what: format!("loss at epoch {epoch}, batch {}", b + 1), value });
            }
            opt.step(&loss.backward()?)?;
            loss_sum += value as f64 * idx.elem_count() as f64;
            correct += correct_count(&logits, &yb)?;
        }
        let stats = EpochStats {
            epoch,
            loss: (loss_sum / n.max(1) as f64) as f32,
            accuracy: correct as f32 / n.max(1) as f32,
            seconds: start.elapsed().as_secs_f64(),
            samples: n,
        };
        on_epoch(&stats);
        history.push(stats);
    }
    Ok(history)
}
