//! Checking gradients against finite differences.
//!
//! For a function `f` of some tensors, backpropagation gives dL/dx for L = Σ f(x) ⊙ R, where
//! R is a fixed random tensor (a random projection: checking L catches errors that a plain
//! sum would hide, such as any error in softmax's rule, whose plain sum is constant).
//! The numerical estimate of the same derivative is the central difference
//!
//! ```text
//! dL/dx_i ≈ (L(x + h e_i) - L(x - h e_i)) / (2h)
//! ```
//!
//! with error O(h²). The difference quotient, the projection and the comparison are computed
//! in f64: the function itself runs in f32 storage, and the step actually taken is measured as
//! the f64 difference of the two perturbed f32 values. Every element of every input that
//! requires a gradient is checked.

use crate::{no_grad, Error, Result, Rng, Tensor};

/// Tolerances of [`gradcheck`].
#[derive(Clone, Copy, Debug)]
pub struct GradcheckOptions {
    /// Step h of the central difference.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (of the numerical value).
    pub rtol: f64,
    /// Seed of the projection R.
    pub seed: u64,
}

impl Default for GradcheckOptions {
    /// h = 5e-3, |analytic - numeric| <= 1e-3 + 1e-2·|numeric|: loose enough for f32 forward
    /// passes, tight enough that a wrong sign or a missing term fails.
    fn default() -> Self {
        GradcheckOptions { eps: 5e-3, atol: 1e-3, rtol: 1e-2, seed: 0 }
    }
}

/// The worst disagreement found by [`gradcheck`].
#[derive(Clone, Debug)]
pub struct GradcheckReport {
    /// Number of (input, element) derivatives compared.
    pub checked: usize,
    /// Largest |analytic - numeric|.
    pub max_abs_error: f64,
    /// Largest |analytic - numeric| / max(|analytic|, |numeric|, atol).
    pub max_rel_error: f64,
    /// Derivatives outside the tolerance: (input, element, analytic, numeric), the first 10.
    pub failures: Vec<(usize, usize, f64, f64)>,
    /// Total number of derivatives outside the tolerance.
    pub failure_count: usize,
}

impl GradcheckReport {
    fn empty() -> GradcheckReport {
        GradcheckReport { checked: 0, max_abs_error: 0.0, max_rel_error: 0.0, failures: Vec::new(), failure_count: 0 }
    }

    /// Adds one comparison of an analytic and a numerical derivative.
    fn record(&mut self, opts: GradcheckOptions, input: usize, element: usize, analytic: f64, numeric: f64) {
        let abs = (analytic - numeric).abs();
        let rel = abs / analytic.abs().max(numeric.abs()).max(opts.atol);
        self.checked += 1;
        self.max_abs_error = self.max_abs_error.max(abs);
        self.max_rel_error = self.max_rel_error.max(rel);
        if abs.is_nan() || abs > opts.atol + opts.rtol * numeric.abs() {
            self.failure_count += 1;
            if self.failures.len() < 10 {
                self.failures.push((input, element, analytic, numeric));
            }
        }
    }

    /// True when every derivative was within tolerance.
    pub fn passed(&self) -> bool {
        self.failure_count == 0
    }
}

impl std::fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} derivatives, max abs error {:.3e}, max rel error {:.3e}, {} outside tolerance",
            self.checked, self.max_abs_error, self.max_rel_error, self.failure_count
        )?;
        for (input, i, a, n) in &self.failures {
            write!(f, "\n  input {input} element {i}: analytic {a:.6} numeric {n:.6}")?;
        }
        Ok(())
    }
}

/// L = Σ out ⊙ R in f64.
fn project(out: &Tensor, r: &[f64]) -> Result<f64> {
    Ok(out.try_to_vec()?.iter().zip(r).map(|(&o, &r)| o as f64 * r).sum())
}

/// Compares backpropagated gradients of `f` with central differences, for every element of
/// every input that has `requires_grad` (make inputs with `set_requires_grad(true)`).
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    // Checking nothing is not a pass.
    if !inputs.iter().any(|x| x.requires_grad() && x.elem_count() > 0) {
        return Err(Error::invalid(
            "gradcheck",
            "no input requires a gradient, so no derivative would be checked: make inputs with \
             `set_requires_grad(true)` (and keep the tensor it returns)",
        ));
    }
    let out = f(inputs)?;
    let mut rng = Rng::seed(opts.seed);
    let r: Vec<f64> = (0..out.elem_count()).map(|_| rng.standard_normal() as f64).collect();
    let r_tensor = Tensor::from_vec(r.iter().map(|&v| v as f32).collect(), out.shape())?.to(out.device())?;
    // An output that depends on no input with a gradient (a comparison, say) has derivative
    // 0 everywhere, and the differences must find 0 too.
    let grads = if out.requires_grad() { out.mul(&r_tensor)?.sum_all()?.backward()? } else { Default::default() };

    let mut report = GradcheckReport::empty();
    let _off = no_grad();
    for (k, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            continue;
        }
        let analytic = match grads.get(x) {
            Some(g) => g.try_to_vec()?,
            None => vec![0.0; x.elem_count()], // f does not depend on x
        };
        let base = x.try_to_vec()?;
        for i in 0..base.len() {
            let eval = |value: f32| -> Result<f64> {
                let mut v = base.clone();
                v[i] = value;
                let mut xs = inputs.to_vec();
                xs[k] = Tensor::from_vec(v, x.shape())?.to(x.device())?;
                let out = f(&xs)?;
                if out.shape() != r_tensor.shape() {
                    return Err(Error::shapes("gradcheck", r_tensor.shape(), out.shape()));
                }
                project(&out, &r)
            };
            let plus = (base[i] as f64 + opts.eps) as f32;
            let minus = (base[i] as f64 - opts.eps) as f32;
            let numeric = (eval(plus)? - eval(minus)?) / (plus as f64 - minus as f64);
            report.record(opts, k, i, analytic[i] as f64, numeric);
        }
    }
    Ok(report)
}

/// The result of checking one parameter tensor in [`gradcheck_parameters`].
#[derive(Clone, Debug)]
pub struct ParamCheck {
    /// The parameter's name (`0.weight`).
    pub name: String,
    /// The comparisons made (the worst, and the failures).
    pub report: GradcheckReport,
    /// Elements skipped because the loss has a kink (ReLU, abs, max) within the
    /// finite-difference step there, so no difference quotient estimates a derivative.
    pub kinks: usize,
}

/// Checks the gradients of a scalar `loss` with respect to named parameters, perturbing each
/// checked element in place (and restoring it). Up to `per_tensor` elements of each tensor are
/// checked, chosen at random by `seed` when the tensor is larger; all of them otherwise.
///
/// Networks with ReLU have kinks: a step of ±h can switch a unit on or off, and the difference
/// quotient then measures no derivative. Each element is therefore estimated with steps h and
/// h/2 and passes if either estimate matches. When neither does, the one-sided slopes on the
/// two sides of the point tell a kink (they differ by a jump) from a wrong gradient rule (they
/// agree with each other, and not with the rule); kinks are counted, not failed.
pub fn gradcheck_parameters(
    params: &[(String, Tensor)],
    loss: impl Fn() -> Result<Tensor>,
    per_tensor: usize,
    opts: GradcheckOptions,
) -> Result<Vec<ParamCheck>> {
    if per_tensor == 0 || params.iter().all(|(_, p)| p.elem_count() == 0) {
        return Err(Error::invalid("gradcheck_parameters", "nothing to check: no parameter elements, or per_tensor 0"));
    }
    let value = loss()?;
    if value.elem_count() != 1 {
        return Err(Error::BackwardNonScalar { shape: value.shape().to_vec() });
    }
    let grads = value.backward()?;
    let mut rng = Rng::seed(opts.seed);
    let _off = no_grad();
    let mut out = Vec::with_capacity(params.len());
    for (name, p) in params {
        let analytic = match grads.get(p) {
            Some(g) => g.try_to_vec()?,
            None => vec![0.0; p.elem_count()],
        };
        let base = p.try_to_vec()?;
        let mut picks: Vec<usize> = (0..base.len()).collect();
        if picks.len() > per_tensor {
            rng.shuffle(&mut picks);
            picks.truncate(per_tensor);
            picks.sort_unstable();
        }
        let mut report = GradcheckReport::empty();
        let mut kinks = 0;
        for i in picks {
            // Element i alone is changed, in place; the rest of the parameter is untouched.
            let cell = p.element(i)?;
            let set = |v: f32| cell.copy_from(&Tensor::full(cell.shape(), v));
            // The loss at x + k·h/2 for k = -2..=2, and the steps actually taken in f32.
            let at = |k: f64| -> Result<(f64, f64)> {
                let v = (base[i] as f64 + k * opts.eps / 2.0) as f32;
                set(v)?;
                let l = loss().and_then(|l| l.to_scalar());
                set(base[i])?;
                Ok((v as f64, l? as f64))
            };
            let [(xm2, lm2), (xm1, lm1), (_, l0), (xp1, lp1), (xp2, lp2)] =
                [at(-2.0)?, at(-1.0)?, at(0.0)?, at(1.0)?, at(2.0)?];
            let wide = (lp2 - lm2) / (xp2 - xm2);
            let narrow = (lp1 - lm1) / (xp1 - xm1);
            let a = analytic[i] as f64;
            let tol = |n: f64| opts.atol + opts.rtol * n.abs();
            let within = |n: f64| (a - n).abs() <= tol(n);
            if !within(wide) && !within(narrow) {
                // One-sided slopes: equal up to the curvature where the loss is smooth, apart by
                // the jump in slope where a kink lies between them.
                let right = (lp1 - l0) / (xp1 - base[i] as f64);
                let left = (l0 - lm1) / (base[i] as f64 - xm1);
                if (right - left).abs() > 4.0 * tol(narrow) {
                    kinks += 1;
                    continue;
                }
            }
            report.record(opts, 0, i, a, if within(wide) && !within(narrow) { wide } else { narrow });
        }
        out.push(ParamCheck { name: name.clone(), report, kinks });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x² with a custom (deliberately wrong) gradient rule `rule(g, x)`.
    fn square_with_rule(x: &Tensor, rule: fn(&Tensor, &Tensor) -> Result<Tensor>) -> Tensor {
        let data = x.to_vec().iter().map(|v| v * v).collect();
        let data = crate::backend::Storage::from_host(x.device(), data).unwrap();
        Tensor::from_op(data, x.shape(), "square", &[x], move |g, x, _| Ok(vec![Some(rule(g, &x[0])?)]))
    }

    #[test]
    fn gradcheck_accepts_right_rules_and_catches_wrong_ones() {
        let x = Tensor::from_vec(vec![0.5, -1.25, 2.0], &[3]).unwrap().set_requires_grad(true);
        let run = |rule: fn(&Tensor, &Tensor) -> Result<Tensor>| {
            gradcheck(|x| Ok(square_with_rule(&x[0], rule)), std::slice::from_ref(&x), GradcheckOptions::default())
                .unwrap()
        };
        assert!(run(|g, x| g.mul(&x.mul_scalar(2.0)?)).passed());
        // Wrong sign, a missing term of the product rule, an off-by-a-little factor.
        assert_eq!(run(|g, x| g.mul(&x.mul_scalar(-2.0)?)).failure_count, 3);
        assert_eq!(run(|g, x| g.mul(x)).failure_count, 3);
        assert_eq!(run(|g, x| g.mul(&x.mul_scalar(2.1)?)).failure_count, 3);
    }

    #[test]
    fn parameter_check_tells_kinks_from_wrong_rules() {
        let opts = GradcheckOptions::default();
        // relu(w·1) at w = 0: the derivative jumps from 0 to 1 there.
        let w = Tensor::from_vec(vec![0.0, 0.7], &[2]).unwrap().set_requires_grad(true);
        let named = vec![("w".to_string(), w.clone())];
        let checks = gradcheck_parameters(&named, || w.relu()?.sum_all(), 10, opts).unwrap();
        assert_eq!(checks[0].kinks, 1);
        assert!(checks[0].report.passed() && checks[0].report.checked == 1);
        // A wrong rule at a smooth point is a failure, not a kink.
        let bad = || square_with_rule(&w.add_scalar(1.0)?, |g, x| g.mul(x)).sum_all();
        let checks = gradcheck_parameters(&named, bad, 10, opts).unwrap();
        assert_eq!((checks[0].kinks, checks[0].report.failure_count), (0, 2));
    }
}
