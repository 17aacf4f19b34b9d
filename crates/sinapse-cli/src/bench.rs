//! `sinapse bench`: the benchmarks of BENCHMARKS.md, timed on the training loop only.

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::mnist;
use sinapse::nn::Module;
use sinapse::optim::Sgd;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Silent, Task};
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
    let dir = args.data.clone().unwrap_or_else(|| crate::repo_path("data/mnist-10k"));
    let mnist::Mnist { train, test } =
        mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig { epochs: 5, batch_size: 128, loss: LossKind::CrossEntropy, seed: 0, ..FitConfig::new(task) };
    let mut runs = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let model = crate::train::mnist_mlp(&mut Rng::seed(0))?;
        let mut opt = Sgd::new(model.parameters(), 0.1);
        let history = fit(&model, &mut opt, &train, None, &cfg, &mut Silent)?;
        let seconds: f64 = history.records.iter().map(|r| r.seconds).sum();
        let rate = (train.len() * history.records.len()) as f64 / seconds;
        let acc = evaluate(&model, &test, &task, cfg.loss, 1000)?.metric();
        println!("run {run}/{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.runs);
        runs.push((rate, acc));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, acc) = runs[runs.len() / 2];
    println!("mlp: {rate:.0} samples/s, test accuracy {acc:.4}");
    Ok(())
}
