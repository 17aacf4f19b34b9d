//! A convolutional network on handwritten digits (the `cnn` benchmark's network):
//! conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU maxpool 2x2, flatten (512),
//! linear(512->10), trained with Adam (lr 1e-3, batch 64) for 8 epochs on the MNIST subset.
//!
//! 18,378 parameters: a dense layer from the 784 pixels to just 24 units would already need as
//! many. Convolution reuses each small filter at every position of the image.
//!
//! Run: `cargo run --release --example mnist_cnn [DATA_DIR]`

use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::optim::Adam;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, ProgressReporter, Task, Verbosity};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let mnist::Mnist { train, test } = mnist::load(&dir)?;

    let mut rng = Rng::seed(0);
    let model = nn::Sequential::new()
        .add(nn::Reshape(vec![1, 28, 28])) // rows of 784 pixels -> 1-channel 28x28 images
        .add(nn::Conv2d::new(1, 16, [5, 5], &mut rng)?) // -> [16, 24, 24]
        .add(nn::Relu)
        .add(nn::Pool2d::max([2, 2])) // -> [16, 12, 12]
        .add(nn::Conv2d::new(16, 32, [5, 5], &mut rng)?) // -> [32, 8, 8]
        .add(nn::Relu)
        .add(nn::Pool2d::max([2, 2])) // -> [32, 4, 4]
        .add(nn::Flatten) // -> 512
        .add(nn::Linear::new(512, 10, &mut rng)?);
    print!("{}", nn::summary(&model, &[784])?);

    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 8, batch_size: 64, ..FitConfig::new(task) };
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    fit(&model, &mut opt, &train, None, &cfg, &mut ProgressReporter::new(Verbosity::Normal))?;
    let result = evaluate(&model, &test, &task, LossKind::CrossEntropy, 500)?;
    println!("test accuracy: {:.4}", result.metric());
    Ok(())
}
