//! An MLP on handwritten digits: 784-256-128-10 with ReLU, softmax cross-entropy and
//! minibatch SGD (lr 0.1, batch 128), 15 epochs on the bundled MNIST subset.
//!
//! Run: `cargo run --release --example mnist_mlp [DATA_DIR]`

use std::time::Instant;

use sinapse::data::mnist;
use sinapse::nn::{self, loss, Mode, Module};
use sinapse::optim::Sgd;
use sinapse::train::{batch_indices, correct_count, evaluate};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let data = mnist::load(&dir)?;
    let (x, labels) = (&data.train.images, &data.train.labels);
    let n = x.dim(0)?;
    println!("{n} training images, {} test images", data.test.images.dim(0)?);

    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(784, 256, &mut rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(256, 128, &mut rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(128, 10, &mut rng)?);
    let mut opt = Sgd::new(model.parameters(), 0.1);

    for epoch in 1..=15 {
        let start = Instant::now();
        let (mut loss_sum, mut correct) = (0.0, 0);
        for idx in batch_indices(n, 128, Some(&mut rng))? {
            let xb = x.index_select(0, &idx)?; // a minibatch of images
            let yb = labels.index_select(0, &idx)?;
            let logits = model.forward(&xb, Mode::Train)?;
            let loss = loss::cross_entropy(&logits, &yb)?;
            opt.step(&loss.backward()?)?;
            loss_sum += loss.to_scalar()? * idx.elem_count() as f32;
            correct += correct_count(&logits, &yb)?;
        }
        println!(
            "epoch {epoch:2}: loss {:.4}, train accuracy {:.4}, {:.2}s",
            loss_sum / n as f32,
            correct as f32 / n as f32,
            start.elapsed().as_secs_f64()
        );
    }
    let (_, acc) = evaluate(&model, &data.test.images, &data.test.labels, 1000)?;
    println!("test accuracy: {acc:.4}");
    Ok(())
}
