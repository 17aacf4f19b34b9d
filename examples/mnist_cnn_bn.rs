//! Batch normalisation on the MNIST CNN: the network of `models/mnist_cnn.toml` and the same
//! network with a `batch_norm2d` layer after each convolution (`models/mnist_cnn_bn.toml`),
//! trained with the same recipe (Adam lr 1e-3, batch 64, 8 epochs, the same seed) on 80% of
//! the training images, with the other 20% held out for validation after every epoch.
//!
//! Normalising each channel over the batch keeps every layer's inputs at mean 0 and variance 1
//! while the layers before it change, so training moves faster: the example prints each
//! network's validation accuracy per epoch and the first epoch at which it reaches the bar
//! (96% by default). At evaluation the layers use the running mean and variance they tracked
//! during training, so a test image's prediction does not depend on the rest of its batch.
//!
//! Run: `cargo run --release --example mnist_cnn_bn [DATA_DIR] [BAR]`

use sinapse::data::{mnist, split};
use sinapse::nn::Module;
use sinapse::spec::ModelSpec;
use sinapse::train::{evaluate, fit, LossKind, ProgressReporter, Task, Verbosity};
use sinapse::{Error, Result, Rng};

fn main() -> Result<()> {
    sinapse::work_on_this_thread()?;
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k").into());
    let bar: f32 = match args.next() {
        Some(s) => s.parse().map_err(|_| Error::InvalidArgument {
            op: "mnist_cnn_bn",
            msg: format!("BAR must be a number, got {s:?}"),
        })?,
        None => 0.96,
    };
    let mnist::Mnist { train, test } = mnist::load(&dir)?;
    let fold = split::holdout(train.len(), 0.8, None, &mut Rng::seed(7))?;
    let (fit_set, val_set) = (train.subset(&fold.train)?, train.subset(&fold.test)?);
    let task = Task::Classification { classes: 10 };
    println!("{} training images, {} held out for validation, bar {bar}", fit_set.len(), val_set.len());

    let mut reached = Vec::new();
    let mut last_test = 0.0;
    for name in ["mnist_cnn", "mnist_cnn_bn"] {
        let path = format!("{}/../../models/{name}.toml", env!("CARGO_MANIFEST_DIR"));
        let spec = ModelSpec::from_file(&path)?;
        let model = spec.build_model(&[784], &task, &mut Rng::seed(spec.seed))?;
        model.to(spec.device()?)?;
        println!("\n{name}: {}", model.describe());
        let mut opt = spec.optimizer.build(model.parameters())?;
        let history = fit(
            &model,
            opt.as_mut(),
            &fit_set,
            Some(&val_set),
            &spec.fit_config(task),
            &mut ProgressReporter::new(Verbosity::Normal),
        )?;
        let epoch = history.records.iter().find(|r| r.val_metric.is_some_and(|a| a >= bar)).map(|r| r.epoch);
        let test_acc = evaluate(&model, &test, &task, LossKind::CrossEntropy, 500)?.metric();
        println!(
            "{name}: validation accuracy {bar} first reached at epoch {}, test accuracy {test_acc:.4}",
            show(epoch)
        );
        reached.push((name, epoch));
        last_test = test_acc;
    }
    let [(_, plain), (_, normed)] = [reached[0], reached[1]];
    println!(
        "\nepochs to {bar} validation accuracy: {} without batch normalisation, {} with it",
        show(plain),
        show(normed)
    );
    println!("test accuracy: {last_test:.4}");
    Ok(())
}

/// An epoch number, or "not within the epochs".
fn show(epoch: Option<usize>) -> String {
    epoch.map_or_else(|| "not within the epochs".to_string(), |e| e.to_string())
}
