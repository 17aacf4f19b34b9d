//! `sinapse bench`: the benchmarks of BENCHMARKS.md, timed on the training loop only.
//!
//! The networks are the bundled specs' (`models/mnist_mlp.toml`, `models/mnist_cnn.toml`),
//! built into the binary so the bench runs from anywhere; the training settings (optimizer,
//! batch, epochs) are the benchmarks' own.

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::mnist;
use sinapse::nn::{Module, Sequential};
use sinapse::optim::Sgd;
use sinapse::spec::ModelSpec;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Silent, Task};
use sinapse::{Device, Rng};

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
    /// Device to train on: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// The network of a benchmark, from its bundled spec.
struct Network {
    /// The spec's file name, for error messages.
    file: &'static str,
    /// The spec's text.
    text: &'static str,
}

const MLP: Network = Network { file: "models/mnist_mlp.toml", text: include_str!("../../../models/mnist_mlp.toml") };
const CNN: Network = Network { file: "models/mnist_cnn.toml", text: include_str!("../../../models/mnist_cnn.toml") };

impl Network {
    /// A fresh model (seed 0) for `[N, 784]` pixel rows.
    fn build(&self) -> Result<Sequential> {
        let spec = ModelSpec::parse(self.text, std::path::Path::new(self.file))?;
        Ok(spec.build_model(&[784], &Task::Classification { classes: 10 }, &mut Rng::seed(0))?)
    }
}

/// Runs the command.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let device = Device::parse(&args.device)?;
    let task = Task::Classification { classes: 10 };
    let (network, lr, cfg) = match args.name.as_str() {
        // `mlp`: 784-256-128-10 ReLU, softmax cross-entropy, SGD lr 0.1, batch 128 (last
        // partial batch kept), 5 epochs, reshuffled each epoch with a fixed seed.
        "mlp" => (&MLP, 0.1, FitConfig { epochs: 5, batch_size: 128, ..FitConfig::new(task) }),
        // `cnn`: conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU maxpool 2x2,
        // flatten, linear(512->10), softmax cross-entropy, SGD lr 0.05, batch 64, 1 epoch.
        "cnn" => (&CNN, 0.05, FitConfig { epochs: 1, batch_size: 64, ..FitConfig::new(task) }),
        other => bail!("unknown benchmark '{other}' (valid: mlp, cnn)"),
    };
    let cfg = FitConfig { loss: LossKind::CrossEntropy, seed: 0, ..cfg };
    let dir = args.data.clone().unwrap_or_else(|| crate::repo_path("data/mnist-10k"));
    let mnist::Mnist { train, test } =
        mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let mut runs = Vec::with_capacity(args.runs);
    for run in 1..=args.runs {
        let model = network.build()?;
        model.to(device)?;
        let mut opt = Sgd::new(model.parameters(), lr)?;
        let history = fit(&model, &mut opt, &train, None, &cfg, &mut Silent)?;
        let seconds: f64 = history.records.iter().map(|r| r.seconds).sum();
        let rate = (train.len() * history.records.len()) as f64 / seconds;
        let acc = evaluate(&model, &test, &cfg.task, cfg.loss, 1000)?.metric();
        outln!("run {run}/{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.runs);
        runs.push((rate, acc));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (rate, acc) = runs[runs.len() / 2];
    outln!("{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.name);
    Ok(())
}
