//! A convolutional network on handwritten digits (the `cnn` benchmark's network), built from
//! its spec `models/mnist_cnn.toml`: reshape to 1x28x28, conv(1->16, 5x5) ReLU maxpool 2x2
//! (-> 16x12x12), conv(16->32, 5x5) ReLU maxpool 2x2 (-> 32x4x4), flatten (512),
//! linear(512->10), trained with Adam (lr 1e-3, batch 64) for 8 epochs on the MNIST subset.
//!
//! 18,378 parameters: a dense layer from the 784 pixels to just 24 units would already need as
//! many. Convolution reuses each small filter at every position of the image.
//!
//! Run: `cargo run --release --example mnist_cnn [DATA_DIR]`

use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::spec::ModelSpec;
use sinapse::train::{evaluate, fit, LossKind, ProgressReporter, Task, Verbosity};
use sinapse::{Result, Rng};

fn main() -> Result<()> {
    // This thread runs its share of the kernels instead of waiting for the thread pool.
    sinapse::work_on_this_thread()?;
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let mnist::Mnist { train, test } = mnist::load(&dir)?;

    // The network, optimizer and settings of the spec (the same one `sinapse train` reads).
    let spec = ModelSpec::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist_cnn.toml"))?;
    let task = Task::Classification { classes: 10 };
    let model = spec.build_model(&[784], &task, &mut Rng::seed(spec.seed))?;
    model.to(spec.device()?)?; // the spec's `device` key (the CPU when it has none)
    print!("{}", nn::summary(&model, &[784])?);

    let mut opt = spec.optimizer.build(model.parameters())?;
    let cfg = spec.fit_config(task);
    fit(&model, opt.as_mut(), &train, None, &cfg, &mut ProgressReporter::new(Verbosity::Normal))?;
    let result = evaluate(&model, &test, &task, LossKind::CrossEntropy, 500)?;
    println!("test accuracy: {:.4}", result.metric());
    Ok(())
}
