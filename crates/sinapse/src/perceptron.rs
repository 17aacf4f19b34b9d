//! Rosenblatt's perceptron (1957), as the course states it.
//!
//! - The input gets a constant first component X0 = 1, so the bias is just the weight w0.
//! - Net input z = W·X; output o = 1 if z > 0 else 0 (the Heaviside step).
//! - Learning rule, one sample at a time: w(t+1) = w(t) + lr·(Y - o(t))·X. A correct output
//!   changes nothing; a wrong one moves the weights towards (Y = 1) or away from (Y = 0) X.
//!
//! The rule finds a separating line whenever one exists (AND, OR) and cycles forever when none
//! does (XOR is not linearly separable), so training stops after an epoch limit.
//! It is not gradient descent: the step function has no useful derivative.

use crate::{Error, Result};

/// A single-layer perceptron with a step activation.
#[derive(Clone, Debug, PartialEq)]
pub struct Perceptron {
    /// `[w0 (bias), w1, .., wn]`.
    pub weights: Vec<f64>,
    /// Learning rate (1 in Rosenblatt's rule).
    pub lr: f64,
}

/// What one application of the learning rule saw and did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Step number, from 1.
    pub t: usize,
    /// Epoch number, from 1.
    pub epoch: usize,
    /// The input (without the constant X0 = 1).
    pub x: Vec<f64>,
    /// The target Y.
    pub y: f64,
    /// The net input z = W·X.
    pub z: f64,
    /// The output o = step(z).
    pub o: f64,
    /// The weights after the update.
    pub w: Vec<f64>,
}

/// The outcome of [`Perceptron::train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// True when an epoch classified every sample correctly.
    pub converged: bool,
    /// Epochs run; when converged, the first error-free epoch is the last one counted.
    pub epochs: usize,
}

impl Perceptron {
    /// A perceptron for `n_inputs` inputs with all weights 0 and lr 1.
    pub fn new(n_inputs: usize) -> Perceptron {
        Perceptron { weights: vec![0.0; n_inputs + 1], lr: 1.0 }
    }

    /// A perceptron with given weights `[w0, w1, ..]` and lr 1.
    pub fn with_weights(weights: Vec<f64>) -> Result<Perceptron> {
        if weights.is_empty() {
            return Err(Error::invalid("Perceptron", "needs at least the bias weight w0"));
        }
        Ok(Perceptron { weights, lr: 1.0 })
    }

    fn check_input(&self, x: &[f64]) -> Result<()> {
        if x.len() + 1 != self.weights.len() {
            return Err(Error::invalid(
                "Perceptron",
                format!(
                    "{} weights (w0 for the bias, then one per input) do not fit {} inputs",
                    self.weights.len(),
                    x.len()
                ),
            ));
        }
        Ok(())
    }

    /// Net input z = w0·1 + Σ wi·xi.
    pub fn net_input(&self, x: &[f64]) -> Result<f64> {
        self.check_input(x)?;
        Ok(self.weights[0] + self.weights[1..].iter().zip(x).map(|(w, x)| w * x).sum::<f64>())
    }

    /// The output o = 1 if z > 0 else 0.
    pub fn predict(&self, x: &[f64]) -> Result<f64> {
        Ok(if self.net_input(x)? > 0.0 { 1.0 } else { 0.0 })
    }

    /// Applies the learning rule to one sample; returns (z, o) before the update.
    pub fn learn(&mut self, x: &[f64], y: f64) -> Result<(f64, f64)> {
        let z = self.net_input(x)?;
        let o = if z > 0.0 { 1.0 } else { 0.0 };
        let delta = self.lr * (y - o);
        self.weights[0] += delta; // X0 = 1
        for (w, xi) in self.weights[1..].iter_mut().zip(x) {
            *w += delta * xi;
        }
        Ok((z, o))
    }

    /// Presents the samples in order, epoch after epoch, until an epoch makes no mistake or
    /// `max_epochs` have run. `on_step` sees every step (for a trace).
    pub fn train(
        &mut self,
        inputs: &[Vec<f64>],
        targets: &[f64],
        max_epochs: usize,
        mut on_step: impl FnMut(&StepRecord),
    ) -> Result<TrainOutcome> {
        if inputs.len() != targets.len() {
            return Err(Error::invalid(
                "Perceptron::train",
                format!("{} inputs but {} targets", inputs.len(), targets.len()),
            ));
        }
        let mut t = 0;
        for epoch in 1..=max_epochs {
            let mut mistakes = 0;
            for (x, &y) in inputs.iter().zip(targets) {
                t += 1;
                let (z, o) = self.learn(x, y)?;
                if o != y {
                    mistakes += 1;
                }
                on_step(&StepRecord { t, epoch, x: x.clone(), y, z, o, w: self.weights.clone() });
            }
            if mistakes == 0 {
                return Ok(TrainOutcome { converged: true, epochs: epoch });
            }
        }
        Ok(TrainOutcome { converged: false, epochs: max_epochs })
    }
}

/// Formats weights for people: `[0, 0.2, -0.3]`, rounded to 6 decimals with trailing zeros
/// dropped (so float noise such as -0.30000000000000004 prints as -0.3).
pub fn format_weights(w: &[f64]) -> String {
    let parts: Vec<String> = w.iter().map(|&v| format_number(v)).collect();
    format!("[{}]", parts.join(", "))
}

/// One number as in [`format_weights`].
pub fn format_number(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// The four input pairs of a two-input logic gate, in the course's order.
pub const GATE_INPUTS: [[f64; 2]; 4] = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]];

/// A two-input logic gate's truth table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// 1 only when both inputs are 1.
    And,
    /// 1 when either input is 1.
    Or,
    /// 1 when exactly one input is 1 (not linearly separable).
    Xor,
}

impl Gate {
    /// The gate's output for each of [`GATE_INPUTS`].
    pub fn targets(self) -> [f64; 4] {
        match self {
            Gate::And => [0.0, 0.0, 0.0, 1.0],
            Gate::Or => [0.0, 1.0, 1.0, 1.0],
            Gate::Xor => [0.0, 1.0, 1.0, 0.0],
        }
    }

    /// Parses `and`, `or` or `xor`.
    pub fn parse(name: &str) -> Result<Gate> {
        match name.to_ascii_lowercase().as_str() {
            "and" => Ok(Gate::And),
            "or" => Ok(Gate::Or),
            "xor" => Ok(Gate::Xor),
            other => Err(Error::invalid("gate", format!("unknown gate '{other}' (valid: and, or, xor)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_data() -> Vec<Vec<f64>> {
        GATE_INPUTS.iter().map(|p| p.to_vec()).collect()
    }

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn reproduces_the_course_trace_on_and() {
        let mut p = Perceptron::with_weights(vec![1.0, 0.2, -0.3]).unwrap();
        let expected = [[0.0, 0.2, -0.3], [0.0, 0.2, -0.3], [-1.0, -0.8, -0.3], [0.0, 0.2, 0.7]];
        for (x, (y, want)) in GATE_INPUTS.iter().zip(Gate::And.targets().iter().zip(expected)) {
            p.learn(x, *y).unwrap();
            assert!(close(&p.weights, &want), "{:?} != {:?}", p.weights, want);
        }
    }

    #[test]
    fn converges_on_and_and_or_but_not_xor() {
        for gate in [Gate::And, Gate::Or] {
            let mut p = Perceptron::with_weights(vec![1.0, 0.2, -0.3]).unwrap();
            let out = p.train(&gate_data(), &gate.targets(), 100, |_| {}).unwrap();
            assert!(out.converged, "{gate:?}");
            for (x, y) in GATE_INPUTS.iter().zip(gate.targets()) {
                assert_eq!(p.predict(x).unwrap(), y, "{gate:?} {x:?}");
            }
        }
        let mut p = Perceptron::with_weights(vec![1.0, 0.2, -0.3]).unwrap();
        let out = p.train(&gate_data(), &Gate::Xor.targets(), 100, |_| {}).unwrap();
        assert_eq!(out, TrainOutcome { converged: false, epochs: 100 });
    }

    #[test]
    fn weights_print_without_float_noise() {
        assert_eq!(format_weights(&[1.0, -1.8, -0.30000000000000004, -0.0, 2.5e-7]), "[1, -1.8, -0.3, 0, 0]");
    }

    #[test]
    fn wrong_input_sizes_are_errors() {
        let mut p = Perceptron::new(2);
        assert!(p.learn(&[1.0], 1.0).is_err());
        assert!(p.train(&gate_data(), &[0.0], 5, |_| {}).is_err());
        assert!(Gate::parse("nand").unwrap_err().to_string().contains("valid: and, or, xor"));
    }
}
