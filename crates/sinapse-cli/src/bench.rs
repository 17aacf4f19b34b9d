//! `sinapse bench`: the benchmarks of BENCHMARKS.md, timed on the training loop only.

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::optim::Sgd;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Silent, Task};
use sinapse::Rng;

/// Options of `sinapse bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark name: mlp or cnn.
    name: String,
    /// Runs; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory with the MNIST IDX files [default: the bundled data/mnist-10k].
    #[arg(long)]
    data: Option<std::path::PathBuf>,
}

/// Runs the command.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    match args.name.as_str() {
        "mlp" => mlp(&args),
        "cnn" => cnn(&args),
        other => bail!("unknown benchmark '{other}' (valid: mlp, cnn)"),
    }
}

/// The `cnn` benchmark's network: conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU
/// maxpool 2x2, flatten (512), linear(512->10), on `[N, 784]` pixel rows.
pub fn mnist_cnn(rng: &mut Rng) -> sinapse::Result<nn::Sequential> {
    Ok(nn::Sequential::new()
        .add(nn::Reshape(vec![1, 28, 28]))
        .add(nn::Conv2d::new(1, 16, [5, 5], rng)?)
        .add(nn::Relu)
        .add(nn::Pool2d::max([2, 2]))
        .add(nn::Conv2d::new(16, 32, [5, 5], rng)?)
        .add(nn::Relu)
        .add(nn::Pool2d::max([2, 2]))
        .add(nn::Flatten)
        .add(nn::Linear::new(512, 10, rng)?))
}

/// Trains fresh models (same seed) `runs` times and prints each run's samples/s and test
/// accuracy, then the median run as `NAME: N samples/s, test accuracy X`.
fn run_benchmark(
    args: &BenchArgs,
    name: &str,
    build: fn(&mut Rng) -> sinapse::Result<nn::Sequential>,
    lr: f32,
    cfg: &FitConfig,
) -> Result<()> {
    let dir = args.data.clone().unwrap_or_else(|| crate::repo_path("data/mnist-10k"));
    let mnist::Mnist { train, test } =
        mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let mut runs = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let model = build(&mut Rng::seed(0))?;
        let mut opt = Sgd::new(model.parameters(), lr)?;
        let history = fit(&model, &mut opt, &train, None, cfg, &mut Silent)?;
        let seconds: f64 = history.records.iter().map(|r| r.seconds).sum();
        let rate = (train.len() * history.records.len()) as f64 / seconds;
        let acc = evaluate(&model, &test, &cfg.task, cfg.loss, 1000)?.metric();
        println!("run {run}/{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.runs);
        runs.push((rate, acc));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, acc) = runs[runs.len() / 2];
    println!("{name}: {rate:.0} samples/s, test accuracy {acc:.4}");
    Ok(())
}

/// `cnn`: the network above, softmax cross-entropy, SGD lr 0.05, batch 64, 1 epoch.
fn cnn(args: &BenchArgs) -> Result<()> {
    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 1, batch_size: 64, loss: LossKind::CrossEntropy, seed: 0, ..FitConfig::new(task) };
    run_benchmark(args, "cnn", mnist_cnn, 0.05, &cfg)
}

/// `mlp`: 784-256-128-10 ReLU, softmax cross-entropy, SGD lr 0.1, batch 128 (last partial batch
/// kept), 5 epochs, reshuffled each epoch with a fixed seed.
fn mlp(args: &BenchArgs) -> Result<()> {
    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 5, batch_size: 128, loss: LossKind::CrossEntropy, seed: 0, ..FitConfig::new(task) };
    run_benchmark(args, "mlp", crate::train::mnist_mlp, 0.1, &cfg)
}
