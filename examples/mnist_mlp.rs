//! An MLP on handwritten digits: 784-256-128-10 with ReLU (the network of the default job's
//! spec, `models/mnist_mlp.toml`), softmax cross-entropy and minibatch SGD (lr 0.1, batch
//! 128), 15 epochs on the bundled MNIST subset. The training loop is written out: forward,
//! loss, backward, step.
//!
//! Run: `cargo run --release --example mnist_mlp [DATA_DIR]`

use std::time::Instant;

use sinapse::data::{mnist, DataLoader};
use sinapse::nn::{loss, Mode, Module};
use sinapse::optim::{Optimizer, Sgd};
use sinapse::spec::ModelSpec;
use sinapse::train::metrics::correct_count;
use sinapse::train::{evaluate, LossKind, Task};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    // This thread runs its share of the kernels instead of waiting for the thread pool.
    sinapse::work_on_this_thread()?;
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let mnist::Mnist { train, test } = mnist::load(&dir)?;
    println!("{} training images, {} test images", train.len(), test.len());

    // Linear(784 -> 256), ReLU, Linear(256 -> 128), ReLU, Linear(128 -> 10), from the spec.
    let spec = ModelSpec::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist_mlp.toml"))?;
    let task = Task::Classification { classes: 10 };
    let model = spec.build_model(&[784], &task, &mut Rng::seed(spec.seed))?;
    let mut opt = Sgd::new(model.parameters(), 0.1)?;
    let mut loader = DataLoader::new(&train, 128)?.shuffle(0);

    for epoch in 1..=15 {
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0, 0);
        for batch in loader.epoch()? {
            let (x, y) = batch?; // a minibatch of images and their digits
            let logits = model.forward(&x, Mode::Train)?; // forward pass
            let loss = loss::cross_entropy(&logits, &y)?;
            opt.step(&loss.backward()?)?; // backpropagation, then w <- w - lr * dL/dw
            loss_sum += loss.to_scalar()? * x.shape()[0] as f32;
            correct += correct_count(&logits, &y)?;
        }
        println!(
            "epoch {epoch:2}: loss {:.4}, train accuracy {:.4}, {:.2}s",
            loss_sum / train.len() as f32,
            correct as f32 / train.len() as f32,
            start.elapsed().as_secs_f64()
        );
    }
    let result = evaluate(&model, &test, &task, LossKind::CrossEntropy, 1000)?;
    println!("test accuracy: {:.4}", result.metric());
    Ok(())
}
