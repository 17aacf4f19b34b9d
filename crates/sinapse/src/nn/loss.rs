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
    if p.elem_count() > 0 {
        // The two ends of the range (two small reads, on any device); a NaN propagates into
        // both and fails the check too.
        let _off = crate::no_grad();
        let (lo, hi) = (p.min_all()?.to_scalar()?, p.max_all()?.to_scalar()?);
        if !(0.0 <= lo && hi <= 1.0) {
            let bad = if lo.is_nan() || lo < 0.0 { lo } else { hi };
            return Err(Error::invalid(
                "binary_cross_entropy",
                format!("probabilities must lie in [0, 1], found {bad}"),
            ));
        }
    }
    p.binary_cross_entropy_elementwise(y)?.mean_all()
}

/// Binary cross-entropy on raw scores (logits) `x`, with p = σ(x), in the stable form
/// max(x, 0) - x·y + ln(1 + e^-|x|), which never overflows. Gradient: σ(x) - y.
pub fn binary_cross_entropy_with_logits(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("binary_cross_entropy_with_logits", x, y)?;
    x.binary_cross_entropy_with_logits_elementwise(y)?.mean_all()
}

/// Categorical cross-entropy of `logits` `[N, C]` against class indices `classes` `[N]`
/// (whole numbers in `0..C`): mean over samples of -log softmax(logits)\[class\].
///
/// Softmax and log are fused ([`Tensor::log_softmax`]) so large logits stay finite; this is
/// PyTorch's `CrossEntropyLoss`.
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    if logits.rank() != 2 || classes.shape() != [logits.shape()[0]] {
        return Err(Error::shapes("cross_entropy (logits [N, C], classes [N])", logits.shape(), classes.shape()));
    }
    let log_probs = logits.log_softmax(1)?;
    let picked = log_probs.gather(1, &classes.unsqueeze(1)?).map_err(|e| match e {
        // The user passed labels, not indices into a gather: say so in their terms.
        Error::IndexOutOfRange { index, size, .. } => Error::invalid(
            "cross_entropy",
            format!("class label {index} is not a class index in 0..{size} (labels must be whole numbers)"),
        ),
        other => other,
    })?;
    picked.mean_all()?.neg()
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
