//! `sinapse train`: the default job, the MNIST MLP.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::train::{evaluate, train_classifier, SgdConfig};
use sinapse::Rng;

/// Options of `sinapse train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Directory with the MNIST IDX files [default: the bundled data/mnist-10k].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Passes over the training set.
    #[arg(long, default_value_t = 15)]
    epochs: usize,
    /// Learning rate of SGD.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Minibatch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The benchmark network: 784-256-128-10 with ReLU.
pub fn mnist_mlp(rng: &mut Rng) -> sinapse::Result<nn::Sequential> {
    Ok(nn::Sequential::new()
        .add(nn::Linear::new(784, 256, rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(256, 128, rng)?)
        .add(nn::Relu)
        .add(nn::Linear::new(128, 10, rng)?))
}

/// Runs the command.
pub fn run(args: TrainArgs) -> Result<()> {
    let dir = args.data.unwrap_or_else(crate::default_mnist_dir);
    let data = mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let mut rng = Rng::seed(args.seed);
    let model = mnist_mlp(&mut rng)?;
    println!(
        "MNIST MLP {}: {} parameters, {} training / {} test images, SGD lr {} batch {}",
        model.describe(),
        model.num_parameters(),
        data.train.images.dim(0)?,
        data.test.images.dim(0)?,
        args.lr,
        args.batch_size
    );
    let cfg = SgdConfig { epochs: args.epochs, batch_size: args.batch_size, lr: args.lr, seed: args.seed };
    train_classifier(&model, &data.train.images, &data.train.labels, &cfg, |s| {
        println!(
            "epoch {:>2}/{}: loss {:.4}, accuracy {:.4}, time {:.2}s",
            s.epoch, cfg.epochs, s.loss, s.accuracy, s.seconds
        );
    })?;
    let (_, acc) = evaluate(&model, &data.test.images, &data.test.labels, 1000)?;
    println!("test accuracy: {acc:.4}");
    Ok(())
}
