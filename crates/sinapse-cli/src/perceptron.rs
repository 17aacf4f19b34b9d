//! `sinapse perceptron`: Rosenblatt's rule on AND, OR or XOR.

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::perceptron::{format_number, format_weights, Gate, Perceptron, GATE_INPUTS};

/// Options of `sinapse perceptron`.
#[derive(Args)]
pub struct PerceptronArgs {
    /// The gate to learn: and, or, xor.
    #[arg(long)]
    gate: String,
    /// Initial weights w0 (bias), w1, w2, comma-separated [default: 0,0,0].
    #[arg(long, allow_hyphen_values = true)]
    init: Option<String>,
    /// Learning rate.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    lr: f64,
    /// Epoch limit.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Print one row per step: t, x, y, z, o and the weights after the step.
    #[arg(long)]
    trace: bool,
}

fn parse_weights(s: &str) -> Result<Vec<f64>> {
    let w = s
        .split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("--init: '{p}' is not a number")))
        .collect::<Result<Vec<f64>>>()?;
    if w.len() != 3 {
        bail!("--init needs 3 weights (w0 for the bias, w1, w2), got {}", w.len());
    }
    if let Some(bad) = w.iter().find(|v| !v.is_finite()) {
        bail!("--init: weight {bad} is not finite");
    }
    Ok(w)
}

/// Runs the command.
pub fn run(args: PerceptronArgs) -> Result<()> {
    let gate = Gate::parse(&args.gate)?;
    let init = match &args.init {
        Some(s) => parse_weights(s)?,
        None => vec![0.0; 3],
    };
    if !args.lr.is_finite() || args.lr <= 0.0 {
        bail!("--lr must be a positive number, got {}", args.lr);
    }
    let mut p = Perceptron::with_weights(init)?;
    p.lr = args.lr;
    let inputs: Vec<Vec<f64>> = GATE_INPUTS.iter().map(|x| x.to_vec()).collect();
    if args.trace {
        outln!("{:>4}  {:>6}  {:>1}  {:>8}  {:>1}  w after", "t", "x", "y", "z", "o");
    }
    let mut write_error = None;
    let outcome = p.train(&inputs, &gate.targets(), args.epochs, |s| {
        if args.trace && write_error.is_none() {
            write_error = crate::output::write(format_args!(
                "{:>4}  ({},{})  {}  {:>8}  {}  {}\n",
                s.t,
                format_number(s.x[0]),
                format_number(s.x[1]),
                format_number(s.y),
                format_number(s.z),
                format_number(s.o),
                format_weights(&s.w)
            ))
            .err();
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let verdict = if outcome.converged { "converged" } else { "did not converge" };
    outln!("{verdict} after {} epochs: w = {}", outcome.epochs, format_weights(&p.weights));
    Ok(())
}
