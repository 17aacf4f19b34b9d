//! An LSTM that reads each handwritten digit row by row: 28 steps of 28 pixels, hidden size
//! 128, classified from the last step's output. Adam (lr 2e-3, batch 64), 10 epochs on the
//! MNIST subset.
//!
//! Run: `cargo run --release --example mnist_lstm [DATA_DIR]`

use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::optim::Adam;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, ProgressReporter, Task, Verbosity};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    // This thread runs its share of the kernels instead of waiting for the thread pool.
    sinapse::work_on_this_thread()?;
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let mnist::Mnist { train, test } = mnist::load(&dir)?;

    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Reshape(vec![28, 28])) // [N, 784] -> [N, 28 steps, 28 pixels]
        .add(nn::Recurrent::lstm(28, 128, &mut rng)?) // -> [N, 28, 128]
        .add(nn::LastStep) // -> [N, 128]: the state after the last row
        .add(nn::Linear::new(128, 10, &mut rng)?);
    print!("{}", nn::summary(&model, &[784])?);

    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 10, batch_size: 64, ..FitConfig::new(task) };
    let mut opt = Adam::new(model.parameters(), 2e-3)?;
    fit(&model, &mut opt, &train, None, &cfg, &mut ProgressReporter::new(Verbosity::Normal))?;
    let result = evaluate(&model, &test, &task, LossKind::CrossEntropy, 500)?;
    println!("test accuracy: {:.4}", result.metric());
    Ok(())
}
