//! A denoising autoencoder (Vincent et al., 2008): the MNIST autoencoder of
//! `models/mnist_autoencoder.toml` trained to rebuild each clean digit from a copy with
//! Gaussian noise added (σ = 0.3, drawn afresh every epoch, training inputs only). Learning
//! to remove noise, it cannot just copy its input; it has to learn what digits look like.
//!
//! At the end it compares, on noisy test digits, how far the noisy input itself and the
//! network's reconstruction are from the clean digit (mean squared error per pixel).
//!
//! Run: `cargo run --release --example denoising_autoencoder [DATA_DIR]`

use sinapse::data::{mnist, DataLoader, Dataset};
use sinapse::nn::{loss, Mode, Module};
use sinapse::optim::{Adam, Optimizer};
use sinapse::spec::ModelSpec;
use sinapse::train::{predict, LossKind, Task};
use sinapse::{Result, Rng, Tensor};

/// Standard deviation of the noise added to the pixels.
const NOISE: f32 = 0.3;

/// `x` with Gaussian noise of standard deviation [`NOISE`] added to every pixel.
fn noisy(x: &Tensor, rng: &mut Rng) -> Result<Tensor> {
    x + &Tensor::rand_normal(x.shape(), 0.0, NOISE, rng)?
}

/// Mean squared error per pixel between two image batches.
fn mse(a: &Tensor, b: &Tensor) -> Result<f32> {
    loss::mse(a, b)?.to_scalar()
}

fn main() -> Result<()> {
    sinapse::work_on_this_thread()?;
    let dir =
        std::env::args().nth(1).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let mnist::Mnist { train, test } = mnist::load(&dir)?;
    println!("{} training images, {} test images, noise σ = {NOISE}", train.len(), test.len());

    // 784-256-32-256-784 from the spec; the outputs are logits, the reconstruction their
    // sigmoid, trained by binary cross-entropy against the clean pixels.
    let spec = ModelSpec::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist_autoencoder.toml"))?;
    let task = Task::Reconstruction { features: 784 };
    let model = spec.build_model(&[784], &task, &mut Rng::seed(spec.seed))?;
    let mut opt = Adam::new(model.parameters(), 1e-3)?;
    let mut rng = Rng::seed(1);
    // Batches of (index) rows: each batch's clean images are picked, then noise is added.
    let order = Tensor::arange(0.0, train.len() as f32, 1.0)?.unsqueeze(1)?;
    let rows = Dataset::new(order.clone(), order)?;
    let mut loader = DataLoader::new(&rows, 128)?.shuffle(0);
    for epoch in 1..=spec.epochs {
        let mut loss_sum = 0.0;
        for batch in loader.epoch()? {
            let (rows, _) = batch?;
            let clean = train.x().index_select(0, &rows.flatten_all()?)?;
            let logits = model.forward(&noisy(&clean, &mut rng)?, Mode::Train)?;
            let loss = loss::binary_cross_entropy_with_logits(&logits, &clean)?;
            opt.step(&loss.backward()?)?;
            loss_sum += loss.to_scalar()? * clean.shape()[0] as f32;
        }
        println!("epoch {epoch:2}: loss {:.4}", loss_sum / train.len() as f32);
    }

    // Noisy test digits (noise the network never saw), against their clean originals.
    let clean = test.x();
    let corrupted = noisy(clean, &mut Rng::seed(2))?;
    let rebuilt = LossKind::BinaryCrossEntropy.prediction(&predict(&model, &corrupted, 1000)?)?;
    println!(
        "noisy test input mse: {:.6} (how far the corrupted digits are from the clean ones)",
        mse(&corrupted, clean)?
    );
    println!("test reconstruction mse: {:.6}", mse(&rebuilt, clean)?);
    Ok(())
}
