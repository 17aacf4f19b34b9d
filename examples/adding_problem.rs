//! The adding problem (Hochreiter & Schmidhuber, 1997): why recurrent networks with gates.
//!
//! Each sequence holds random values and two markers; the target is the sum of the two marked
//! values. Predicting the mean scores MSE 1/6 ≈ 0.167. An LSTM, reading one step at a time,
//! learns to store the first marked value in its cell until the second arrives. An MLP with
//! about as many parameters sees the whole flattened sequence at once, but has to learn the
//! products value × marker position by position, and at long lengths it does not catch up.
//!
//! Run: `cargo run --release --example adding_problem [STEPS..]` (default: 10 and 50 steps)

use std::time::Instant;

use sinapse::data::synthetic::adding_problem;
use sinapse::nn::{self, Module};
use sinapse::optim::Adam;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Metrics, Silent, Task};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    // This thread runs its share of the kernels instead of waiting for the thread pool.
    sinapse::work_on_this_thread()?;
    let lengths: Vec<usize> = std::env::args().skip(1).filter_map(|s| s.parse().ok()).collect();
    for steps in if lengths.is_empty() { vec![10, 50] } else { lengths } {
        compare(steps)?;
    }
    Ok(())
}

/// Trains an LSTM and an MLP of about the same size on sequences of `steps` steps.
fn compare(steps: usize) -> Result<()> {
    let mut rng = Rng::seed(0);
    let train = adding_problem(8000, steps, &mut rng)?;
    let test = adding_problem(1000, steps, &mut rng)?;
    println!("adding problem, {steps} steps: 8000 training and 1000 test sequences");
    println!("  baseline (always predict 1): test MSE {:.4}", baseline_mse(test.y().to_vec()));

    let hidden = 32;
    let lstm = nn::Sequential::new()
        .add(nn::Recurrent::lstm(2, hidden, &mut rng)?)
        .add(nn::LastStep)
        .add(nn::Linear::new(hidden, 1, &mut rng)?);
    // An MLP over the flattened sequence with two hidden layers of `width` units and about the
    // LSTM's parameter count: width² + (2·steps + 3)·width + 1 = parameters.
    let (p, b) = (lstm.num_parameters() as f64, (2 * steps + 3) as f64);
    let width = ((-b + (b * b + 4.0 * (p - 1.0)).sqrt()) / 2.0).round().max(1.0) as usize;
    let mlp = nn::Sequential::new()
        .add(nn::Flatten)
        .add(nn::Linear::new(2 * steps, width, &mut rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(width, width, &mut rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(width, 1, &mut rng)?);

    let task = Task::Regression;
    // The MLP is cheap: it gets ten times the LSTM's epochs.
    for (name, model, epochs) in [("LSTM", &lstm, 10), ("MLP", &mlp, 100)] {
        let start = Instant::now();
        let cfg = FitConfig { epochs, batch_size: 64, loss: LossKind::Mse, ..FitConfig::new(task) };
        let mut opt = Adam::new(model.parameters(), 3e-3)?;
        fit(model, &mut opt, &train, None, &cfg, &mut Silent)?;
        if let Metrics::Regression(m) = evaluate(model, &test, &task, LossKind::Mse, 500)?.metrics {
            println!(
                "  {name:4} ({} parameters): test MSE {:.4} after {epochs} epochs, {:.0}s",
                model.num_parameters(),
                m.mse,
                start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
/// MSE of always predicting 1.
fn baseline_mse(targets: Vec<f32>) -> f64 {
    targets.iter().map(|&t| (t as f64 - 1.0).powi(2)).sum::<f64>() / targets.len() as f64
}
