//! `sinapse`: train models, run Rosenblatt's perceptron, and benchmark, from the command line.
#![warn(missing_docs)]

mod bench;
mod perceptron;
mod train;

use clap::{Parser, Subcommand};

/// Sinapse: a deep-learning framework to learn from.
#[derive(Parser)]
#[command(name = "sinapse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the MNIST MLP (784-256-128-10, ReLU, SGD) on the bundled data and report test accuracy.
    Train(train::TrainArgs),
    /// Rosenblatt's perceptron on a logic gate, optionally printing every step.
    Perceptron(perceptron::PerceptronArgs),
    /// Run a benchmark of ../BENCHMARKS (mlp) and print samples/s and test accuracy.
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Perceptron(args) => perceptron::run(args),
        Command::Bench(args) => bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The bundled MNIST subset: `data/mnist-10k` under the current directory when it exists (the
/// repository root), else the copy next to the sources this binary was built from.
pub(crate) fn default_mnist_dir() -> std::path::PathBuf {
    let local = std::path::PathBuf::from("data/mnist-10k");
    if local.is_dir() {
        local
    } else {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-10k")
    }
}
