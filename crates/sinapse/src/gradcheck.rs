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
fn project(out: &Tensor, r: &[f64]) -> f64 {
    out.to_vec().iter().zip(r).map(|(&o, &r)| o as f64 * r).sum()
}

/// Compares backpropagated gradients of `f` with central differences, for every element of
/// every input that has `requires_grad` (make inputs with `set_requires_grad(true)`).
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<GradcheckReport> {
    let out = f(inputs)?;
    let mut rng = Rng::seed(opts.seed);
    let r: Vec<f64> = (0..out.elem_count()).map(|_| rng.standard_normal() as f64).collect();
    let r_tensor = Tensor::from_vec(r.iter().map(|&v| v as f32).collect(), out.shape())?;
    let grads = out.mul(&r_tensor)?.sum_all()?.backward()?;

    let mut report =
        GradcheckReport { checked: 0, max_abs_error: 0.0, max_rel_error: 0.0, failures: Vec::new(), failure_count: 0 };
    let _off = no_grad();
    for (k, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            continue;
        }
        let analytic = match grads.get(x) {
            Some(g) => g.to_vec(),
            None => vec![0.0; x.elem_count()], // f does not depend on x
        };
        let base = x.to_vec();
        for i in 0..base.len() {
            let eval = |value: f32| -> Result<f64> {
                let mut v = base.clone();
                v[i] = value;
                let mut xs = inputs.to_vec();
                xs[k] = Tensor::from_vec(v, x.shape())?;
                let out = f(&xs)?;
                if out.shape() != r_tensor.shape() {
                    return Err(Error::shapes("gradcheck", r_tensor.shape(), out.shape()));
                }
                Ok(project(&out, &r))
            };
            let plus = (base[i] as f64 + opts.eps) as f32;
            let minus = (base[i] as f64 - opts.eps) as f32;
            let numeric = (eval(plus)? - eval(minus)?) / (plus as f64 - minus as f64);
            let a = analytic[i] as f64;
            let abs = (a - numeric).abs();
            let rel = abs / a.abs().max(numeric.abs()).max(opts.atol);
            report.checked += 1;
            report.max_abs_error = report.max_abs_error.max(abs);
            report.max_rel_error = report.max_rel_error.max(rel);
            if abs.is_nan() || abs > opts.atol + opts.rtol * numeric.abs() {
                report.failure_count += 1;
                if report.failures.len() < 10 {
                    report.failures.push((k, i, a, numeric));
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x² with a custom (deliberately wrong) gradient rule `rule(g, x)`.
    fn square_with_rule(x: &Tensor, rule: fn(&Tensor, &Tensor) -> Result<Tensor>) -> Tensor {
        let data = x.to_vec().iter().map(|v| v * v).collect();
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
}
