//! `sinapse bench`: the benchmarks of BENCHMARKS.md, timed on the training loop only.

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::mnist;
use sinapse::train::{evaluate, train_classifier, SgdConfig};
use sinapse::Rng;

/// Options of `sinapse bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark name: mlp.
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
        other => bail!("unknown benchmark '{other}' (valid: mlp)"),
    }
}

/// `mlp`: 784-256-128-10 ReLU, softmax cross-entropy, SGD lr 0.1, batch 128 (last partial batch
/// kept), 5 epochs, reshuffled each epoch with a fixed seed.
fn mlp(args: &BenchArgs) -> Result<()> {
    let dir = args.data.clone().unwrap_or_else(crate::default_mnist_dir);
    let data = mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let cfg = SgdConfig { epochs: 5, batch_size: 128, lr: 0.1, seed: 0 };
    let mut runs = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let model = crate::train::mnist_mlp(&mut Rng::seed(0))?;
        let history = train_classifier(&model, &data.train.images, &data.train.labels, &cfg, |_| {})?;
        let samples: usize = history.iter().map(|s| s.samples).sum();
        let seconds: f64 = history.iter().map(|s| s.seconds).sum();
        let (_, acc) = evaluate(&model, &data.test.images, &data.test.labels, 1000)?;
        let rate = samples as f64 / seconds;
        println!("run {run}/{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.runs);
        runs.push((rate, acc));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, acc) = runs[runs.len() / 2];
    println!("mlp: {rate:.0} samples/s, test accuracy {acc:.4}");
    Ok(())
}
