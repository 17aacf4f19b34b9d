//! Loss functions, each the mean over all elements (or all samples), as PyTorch's default
//! `reduction="mean"`.
//!
//! | loss | formula (per element / sample) | use |
//! | --- | --- | --- |
//! | [`mse`] | (ŷ - y)² | regression |
//! | [`binary_cross_entropy`] | -(y ln p + (1-y) ln(1-p)) | two classes, p a probability |
//! | [`binary_cross_entropy_with_logits`] | the same with p = σ(x), computed stably | two classes, raw scores |
//! | [`cross_entropy`] | -ln softmax(x)\[class\] | many classes, class indices |
//! | [`cross_entropy_with_probs`] | -Σc tc ln softmax(x)c | many classes, one-hot or soft targets |

use crate::ops::binary::binary_op;
use crate::ops::grad_if;
use crate::{Error, Result, Tensor};

fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shapes(op, a.shape(), b.shape()));
    }
    Ok(())
}

/// Mean squared error: mean((prediction - target)²). Shapes must match exactly.
pub fn mse(prediction: &Tensor, target: &Tensor) -> Result<Tensor> {
    same_shape("mse", prediction, target)?;
    let diff = prediction.sub(target)?;
    diff.mul(&diff)?.mean_all()
}

/// Binary cross-entropy on probabilities `p` in [0, 1] against targets `y` in [0, 1].
///
/// As in PyTorch, each logarithm is clamped at -100 so that p = 0 or 1 gives a large finite
/// loss instead of infinity, and the gradient divides by max(p(1-p), 1e-12).
pub fn binary_cross_entropy(p: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("binary_cross_entropy", p, y)?;
    if let Some(bad) = p.to_vec().into_iter().find(|v| !(0.0..=1.0).contains(v)) {
        return Err(Error::invalid("binary_cross_entropy", format!("probabilities must lie in [0, 1], found {bad}")));
    }
    let clamped_ln = |v: f32| v.ln().max(-100.0);
    let per_element = binary_op(
        p,
        y,
        "binary_cross_entropy",
        move |p, y| -(y * clamped_ln(p) + (1.0 - y) * clamped_ln(1.0 - p)),
        move |g, x, _| {
            Ok(vec![
                // d/dp = (p - y) / (p (1 - p))
                grad_if(&x[0], || {
                    let d = x[0].map2(&x[1], |p, y| (p - y) / (p * (1.0 - p)).max(1e-12))?;
                    g.mul(&d)
                })?,
                // d/dy = ln(1 - p) - ln p
                grad_if(&x[1], || g.mul(&x[0].map1(move |p| clamped_ln(1.0 - p) - clamped_ln(p))))?,
            ])
        },
    )?;
    per_element.mean_all()
}

/// Binary cross-entropy on raw scores (logits) `x`, with p = σ(x), in the stable form
/// max(x, 0) - x·y + ln(1 + e^-|x|), which never overflows. Gradient: σ(x) - y.
pub fn binary_cross_entropy_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("binary_cross_entropy_with_logits", x, y)?;
    let per_element = binary_op(
        x,
        y,
        "binary_cross_entropy_with_logits",
        |x, y| x.max(0.0) - x * y + (-x.abs()).exp().ln_1p(),
        |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.mul(&x[0].sigmoid()?.sub(&x[1])?))?, grad_if(&x[1], || g.mul(&x[0].neg()?))?])
        },
    )?;
    per_element.mean_all()
}

/// Categorical cross-entropy of `logits` `[N, C]` against class indices `classes` `[N]`
/// (whole numbers in `0..C`): mean over samples of -log softmax(logits)[class].
///
/// Softmax and log are fused ([`Tensor::log_softmax`]) so large logits stay finite; this is
/// PyTorch's `CrossEntropyLoss`.
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || classes.shape() != [logits.shape()[0]] {
        return Err(Error::shapes("cross_entropy (logits [N, C], classes [N])", logits.shape(), classes.shape()));
    }
    let log_probs = logits.log_softmax(1)?;
    log_probs.gather(1, &classes.unsqueeze(1)?)?.mean_all()?.neg()
}

/// Categorical cross-entropy of `logits` `[N, C]` against target distributions `[N, C]`
/// (one-hot rows or probabilities): mean over samples of -Σc target_c · log softmax(logits)_c.
pub fn cross_entropy_with_probs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    same_shape("cross_entropy_with_probs", logits, targets)?;
    if logits.rank() != 2 {
        return Err(Error::invalid(
            "cross_entropy_with_probs",
            format!("logits must be [N, C], got {:?}", logits.shape()),
        ));
    }
    let log_probs = logits.log_softmax(1)?;
    targets.mul(&log_probs)?.sum(1, false)?.mean_all()?.neg()
}
