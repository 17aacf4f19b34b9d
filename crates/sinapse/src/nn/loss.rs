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
//! | [`cross_entropy_smoothed`] | (1-ε)·CE + ε·mean_c(-ln softmax(x)c) | label smoothing |
//! | [`nll`] | -logp\[class\] | log-probabilities in, class indices |
//! | [`l1`] | \|ŷ - y\| | regression, robust to outliers |
//! | [`huber`] | ½d² if \|d\| < δ else δ(\|d\| - ½δ) | regression, smooth L1 |
//! | [`kl_div`] | Σc pc (ln pc - ln qc), per sample | distributions (log q in, p target) |
//! | [`binary_cross_entropy_with_logits_weighted`] | BCE with logits, positives weighted per class | imbalanced labels |

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
/// PyTorch's `CrossEntropyLoss`. One op on the tape: the forward runs the log-softmax,
/// gather and sum kernels and one multiplication by -1/N (the mean and the negation in one;
/// on a GPU, for up to 65,536 logits, the log-softmax and one kernel for the rest), and the
/// gradient, `(softmax - one_hot) / N` times the loss's gradient, is one kernel where
/// the gradients of `log_softmax`, `gather`, `mean_all` and `neg` took about ten, with the
/// same values bit for bit.
pub fn cross_entropy(logits: &Tensor, classes: &Tensor) -> Result<Tensor> {
    use crate::backend::{ClassTotal, Indices, ReduceOp, UnaryOp};
    use crate::layout::Layout;
    if logits.rank() != 2 || classes.shape() != [logits.shape()[0]] {
        return Err(Error::shapes("cross_entropy (logits [N, C], classes [N])", logits.shape(), classes.shape()));
    }
    let (rows, n) = (logits.shape()[0], logits.shape()[1]);
    let lp_l = Layout::contiguous(&[rows, n]);
    let log_probs = logits.softmax_kernel(1, true)?;
    // -(Σ picked · (1/N)) is Σ picked · (-(1/N)): a product's rounding does not depend on signs.
    let scale = -(1.0 / rows as f32);
    let loss = Tensor::with_storages([classes], |[c]| {
        // One launch where the device has a kernel for the whole sum (a GPU, small batches).
        let picked_sum = ClassTotal::Picked { scale };
        if let Some(loss) = log_probs.class_total("cross_entropy", &lp_l, c, classes.layout(), picked_sum)? {
            return Ok(loss);
        }
        // The user passed labels, not indices into a gather: a bad one is named in their terms.
        let picked =
            log_probs.gather(&lp_l, 1, c, &classes.layout().unsqueeze(1)?, Indices::Labels("cross_entropy"))?;
        let total = picked.reduce(&Layout::contiguous(&[rows, 1]), None, ReduceOp::Sum)?;
        total.unary(&Layout::contiguous(&[]), UnaryOp::Affine { mul: scale, add: 0.0 })
    })?;
    let classes = classes.detach();
    Ok(Tensor::from_op(loss, &[], "cross_entropy", &[logits], move |g, x, _| {
        Ok(vec![crate::ops::grad_if(&x[0], || {
            let grad = Tensor::with_storages([g, &classes], |[gs, cs]| {
                log_probs.cross_entropy_grad(&lp_l, cs, classes.layout(), gs, g.layout(), scale)
            })?;
            Ok(Tensor::from_storage(grad, Layout::contiguous(&[rows, n])))
        })?])
    }))
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

/// The class indices `classes` `[N]` picked from `values` `[N, C]` (an error naming `op` for
/// a label that is not a class index).
fn pick(op: &'static str, values: &Tensor, classes: &Tensor) -> Result<Tensor> {
    if values.rank() != 2 || classes.shape() != [values.shape()[0]] {
        return Err(Error::shapes(op, values.shape(), classes.shape()));
    }
    values.gather_as(1, &classes.unsqueeze(1)?, crate::backend::Indices::Labels(op))
}

/// Negative log-likelihood of log-probabilities `log_probs` `[N, C]` (a log_softmax's output)
/// against class indices `[N]`: mean over samples of -log_probs\[class\], PyTorch's
/// `NLLLoss`. `cross_entropy` is this after a log_softmax.
pub fn nll(log_probs: &Tensor, classes: &Tensor) -> Result<Tensor> {
    pick("nll (log-probabilities [N, C], classes [N])", log_probs, classes)?.mean_all()?.neg()
}

/// Cross-entropy with label smoothing ε (Szegedy et al., 2016), PyTorch's
/// `CrossEntropyLoss(label_smoothing=ε)`: the target puts 1 - ε on the class and spreads ε
/// evenly over all C classes.
pub fn cross_entropy_smoothed(logits: &Tensor, classes: &Tensor, smoothing: f32) -> Result<Tensor> {
    if !(0.0..=1.0).contains(&smoothing) {
        return Err(Error::invalid("cross_entropy_smoothed", format!("smoothing must be in [0, 1], got {smoothing}")));
    }
    let log_probs = logits.log_softmax(1)?;
    let hard = pick("cross_entropy_smoothed (logits [N, C], classes [N])", &log_probs, classes)?.mean_all()?;
    let spread = log_probs.mean(1, false)?.mean_all()?;
    hard.mul_scalar(1.0 - smoothing)?.add(&spread.mul_scalar(smoothing)?)?.neg()
}

/// Mean absolute error: mean |prediction - target|, PyTorch's `L1Loss`.
pub fn l1(prediction: &Tensor, target: &Tensor) -> Result<Tensor> {
    same_shape("l1", prediction, target)?;
    prediction.sub(target)?.abs()?.mean_all()
}

/// Huber loss with threshold δ > 0, PyTorch's `HuberLoss(delta=δ)`: quadratic for errors
/// below δ, linear above (smooth L1 with β = δ, times δ), so outliers pull less than in MSE.
pub fn huber(prediction: &Tensor, target: &Tensor, delta: f32) -> Result<Tensor> {
    same_shape("huber", prediction, target)?;
    if delta.is_nan() || delta <= 0.0 {
        return Err(Error::invalid("huber", format!("delta must be > 0, got {delta}")));
    }
    let d = prediction.sub(target)?.abs()?;
    // min(|d|, δ) carries the quadratic part, the rest of |d| the linear part:
    // ½m² + δ(|d| - m) equals both branches.
    let m = d.clamp(0.0, delta)?;
    m.mul(&m)?.mul_scalar(0.5)?.add(&d.sub(&m)?.mul_scalar(delta)?)?.mean_all()
}

/// Kullback-Leibler divergence KL(p ‖ q) from log-probabilities `log_q` to probabilities `p`
/// (both `[N, C]`), summed over classes and averaged over samples: PyTorch's
/// `kl_div(log_q, p, reduction="batchmean")`. Entries with p = 0 count 0 (0·ln 0 = 0).
pub fn kl_div(log_q: &Tensor, p: &Tensor) -> Result<Tensor> {
    same_shape("kl_div", log_q, p)?;
    if log_q.rank() != 2 {
        return Err(Error::invalid("kl_div", format!("inputs must be [N, C], got {:?}", log_q.shape())));
    }
    // p·ln p with ln taken of max(p, tiny): exact where p > 0, and 0 where p = 0.
    let p_ln_p = p.mul(&p.clamp(f32::MIN_POSITIVE, f32::INFINITY)?.log()?)?;
    p_ln_p.sub(&p.mul(log_q)?)?.sum(1, false)?.mean_all()
}

/// Binary cross-entropy with logits where positives of each class count `pos_weight[c]`
/// times (`[C]`, broadcast over `[N, C]`), PyTorch's `BCEWithLogitsLoss(pos_weight=...)`: a
/// rare class weighted by (negatives / positives) counts as much as a common one.
pub fn binary_cross_entropy_with_logits_weighted(x: &Tensor, y: &Tensor, pos_weight: &Tensor) -> Result<Tensor> {
    same_shape("binary_cross_entropy_with_logits_weighted", x, y)?;
    if x.rank() != 2 || pos_weight.shape() != [x.shape()[1]] {
        return Err(Error::shapes(
            "binary_cross_entropy_with_logits_weighted (x [N, C], pos_weight [C])",
            x.shape(),
            pos_weight.shape(),
        ));
    }
    // (1 - y)·x + (1 + (w - 1)·y)·softplus(-x), with softplus(-x) = -ln σ(x) computed stably.
    let softplus_neg = x.neg()?.softplus()?;
    let weight = y.mul(&pos_weight.add_scalar(-1.0)?)?.add_scalar(1.0)?;
    let one_minus_y = y.neg()?.add_scalar(1.0)?;
    one_minus_y.mul(x)?.add(&weight.mul(&softplus_neg)?)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rng;

    /// The loss as the four recorded ops it fuses.
    fn four_ops(logits: &Tensor, classes: &Tensor) -> Tensor {
        let picked = logits.log_softmax(1).unwrap().gather(1, &classes.unsqueeze(1).unwrap()).unwrap();
        picked.mean_all().unwrap().neg().unwrap()
    }

    #[test]
    fn cross_entropy_is_the_four_ops_bit_for_bit() {
        let same =
            |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        let mut rng = Rng::seed(7);
        // Small (one thread) and large enough to be split over the threads (rows x classes
        // past 2^16), with rows of very large and very negative logits, and upstream
        // gradients of 1, of 3.5 and of 0.
        for (rows, n) in [(37usize, 11usize), (700, 100)] {
            let mut data: Vec<f32> = (0..rows * n).map(|_| 4.0 * rng.standard_normal()).collect();
            data[..n].iter_mut().enumerate().for_each(|(c, v)| *v = if c == 2 { 80.0 } else { -3.0 });
            data[n..2 * n].fill(-1e4);
            let labels: Vec<f32> = (0..rows).map(|i| ((i * 7 + 3) % n) as f32).collect();
            let classes = Tensor::from_vec(labels, &[rows]).unwrap();
            for upstream in [1.0f32, 3.5, 0.0] {
                let x = Tensor::from_vec(data.clone(), &[rows, n]).unwrap().set_requires_grad(true);
                let fused = cross_entropy(&x, &classes).unwrap();
                assert!(format!("{fused:?}").contains("grad_fn=cross_entropy"), "{fused:?}");
                let plain = four_ops(&x, &classes);
                assert!(same(&fused.to_vec(), &plain.to_vec()), "loss {:?} vs {:?}", fused.to_vec(), plain.to_vec());
                let g_fused = fused.mul_scalar(upstream).unwrap().backward().unwrap().get(&x).unwrap().to_vec();
                let g_plain = plain.mul_scalar(upstream).unwrap().backward().unwrap().get(&x).unwrap().to_vec();
                assert!(same(&g_fused, &g_plain), "gradient, {rows} x {n}, upstream {upstream}");
                // (softmax - one_hot) / N: a wrong sign or a missing one-hot would show here.
                let p = x.softmax(1).unwrap().to_vec();
                let (r, c) = (5, (5 * 7 + 3) % n);
                let want = upstream * (p[r * n + c] - 1.0) / rows as f32;
                assert!(
                    (g_fused[r * n + c] - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{} vs {want}",
                    g_fused[r * n + c]
                );
            }
        }
    }

    #[test]
    fn cross_entropy_names_a_label_that_is_not_a_class() {
        let x = Tensor::zeros(&[2, 3]);
        let err = cross_entropy(&x, &Tensor::from_vec(vec![1.0, 3.0], &[2]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("class label 3 is not a class index in 0..3"), "{err}");
        let err = cross_entropy(&x, &Tensor::from_vec(vec![0.5, 1.0], &[2]).unwrap()).unwrap_err().to_string();
        assert!(err.contains("class label 0.5"), "{err}");
    }
}
