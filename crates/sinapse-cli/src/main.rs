//! `sinapse`: train, evaluate and use models from TOML specs, run Rosenblatt's perceptron,
//! check gradients, and benchmark, from the command line.
#![warn(missing_docs)]

// First: the output macros are used by the modules below.
#[macro_use]
mod output;
mod bench;
mod curve;
mod cv;
mod dashboard;
mod eval;
mod export;
mod import;
mod inspect;
mod perceptron;
mod plot;
mod predict;
mod rl;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use sinapse::nn::Module;
use sinapse::spec::ModelSpec;

/// Training allocates and frees the same large buffers every step; glibc's malloc returns
/// them to the system and page-faults them back in each time, mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_t`, the same in mimalloc 2
/// and 3): how long freed memory waits before it is given back to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory for reuse instead of giving it back to the OS. By default mimalloc
/// returns it after 10 ms, and the next step's buffers are then page-faulted and zeroed by
/// the kernel again: measured on the `cnn` bench, a sixth of the process's time (sys time
/// 1.8 s against 1.2 s). The memory is returned when the process ends.
fn keep_freed_memory() {
    // SAFETY: sets one of mimalloc's documented options to a documented value (-1: never
    // purge); mimalloc reads it when it next considers purging.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// Sinapse: a deep-learning framework to learn from.
#[derive(Parser)]
#[command(name = "sinapse", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model from a spec (default: the MNIST MLP), save it, its history and plots.
    Train(train::TrainArgs),
    /// Evaluate a saved model on labelled data: metrics and confusion matrix.
    Eval(eval::EvalArgs),
    /// Predict with a saved model: a CSV of classes and probabilities, or values.
    Predict(predict::PredictArgs),
    /// Cross-validate a spec: k-fold or leave-one-out, per-fold scores and mean ± std.
    Cv(cv::CvArgs),
    /// Print a spec's model: layers, output shapes, parameter counts.
    Summary(inspect::SummaryArgs),
    /// Compare the model's backpropagated gradients with finite differences on one batch.
    Gradcheck(inspect::GradcheckArgs),
    /// Rosenblatt's perceptron on a logic gate, optionally printing every step.
    Perceptron(perceptron::PerceptronArgs),
    /// Run a benchmark (mlp, mlp-large, cnn, lstm or infer) and print its speed and test accuracy.
    Bench(bench::BenchArgs),
    /// Reinforcement learning: train a policy on CartPole by policy gradients, or play one.
    Rl(rl::RlArgs),
    /// Train a spec on growing fractions of its data: training and test metric by size.
    LearningCurve(curve::CurveArgs),
    /// Make a model directory from a spec and PyTorch weights (a safetensors state_dict).
    Import(import::ImportArgs),
    /// Write a model directory's network as an ONNX model (scaler included).
    Export(export::ExportArgs),
    /// Serve a local page (127.0.0.1) with the runs' curves, live while they train.
    Dashboard(dashboard::DashboardArgs),
}

/// Makes this (the main) thread one of the kernels' worker threads
/// ([`sinapse::work_on_this_thread`]): it runs its share of each split kernel instead of
/// sleeping while the pool works (mlp bench 1.15-1.3x, cnn 1.1-1.2x on a 2-core AMD EPYC).
fn work_on_the_main_thread() {
    if let Err(e) = sinapse::work_on_this_thread() {
        // Only a speed setting: the default pool works too.
        output::note(format_args!("{e}"));
    }
}

fn main() {
    keep_freed_memory();
    work_on_the_main_thread();
    let cli = Cli::parse();
    // An unknown SINAPSE_CPU_CAPABILITY is an error here, not a warning the kernels ignore.
    if let Err(e) = sinapse::backend::check_cpu_capability() {
        output::note(format_args!("error: {e}"));
        std::process::exit(1);
    }
    // For tests on a machine without a GPU: `cuda:0` is the GPU emulated on the CPU (slow).
    if std::env::var("SINAPSE_EMULATED_GPU").is_ok_and(|v| v == "1") {
        if let Err(e) = sinapse::backend::install_emulated_gpu() {
            output::note(format_args!("error: SINAPSE_EMULATED_GPU=1: the emulated GPU: {e}"));
            std::process::exit(1);
        }
    }
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Cv(args) => cv::run(args),
        Command::Summary(args) => inspect::summary(args),
        Command::Gradcheck(args) => inspect::gradcheck(args),
        Command::Perceptron(args) => perceptron::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Rl(args) => rl::run(args),
        Command::LearningCurve(args) => curve::run(args),
        Command::Import(args) => import::run(args),
        Command::Export(args) => export::run(args),
        Command::Dashboard(args) => dashboard::run(args),
    };
    if let Err(e) = result {
        output::note(format_args!("error: {}", one_line(&e)));
        std::process::exit(1);
    }
    output::finish();
}

/// The error and its causes on one line, each cause once: a cause whose text its context
/// already quotes (an IO error inside "path: error") is not repeated.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// A path inside the repository this binary was built from: `rel` under the current
/// directory when it exists there (running from the repository root), else next to the
/// sources.
pub(crate) fn repo_path(rel: &str) -> PathBuf {
    let local = PathBuf::from(rel);
    if local.exists() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
    }
}

/// Reads a `--device` flag. `auto` without a usable GPU means the CPU, said in one line on
/// stderr with the reason (the driver library, the GPU or a CUDA library missing).
pub(crate) fn parse_device(name: &str) -> Result<sinapse::Device> {
    let device = sinapse::Device::parse(name)?;
    if name.trim() == "auto" && device == sinapse::Device::Cpu {
        if let Err(why) = sinapse::Device::Cuda(0).check_available() {
            eprintln!("note: --device auto: running on the CPU ({why})");
        }
    }
    Ok(device)
}

/// Puts the `--device` flag, when given, in place of the spec's `device` key (as given:
/// a model trained with `auto` on a GPU still loads on a machine without one).
pub(crate) fn override_device(spec: &mut ModelSpec, flag: Option<String>) -> Result<()> {
    if let Some(name) = flag {
        parse_device(&name)?;
        spec.device = Some(name);
    }
    Ok(())
}

/// Loads a model directory and moves the model to the `--device` flag's device, or else to
/// the device its spec names.
pub(crate) fn load_model(dir: &Path, device: Option<String>) -> Result<sinapse::spec::TrainedModel> {
    let mut model =
        sinapse::spec::TrainedModel::load(dir).with_context(|| format!("loading model {}", dir.display()))?;
    override_device(&mut model.card.spec, device)?;
    let device = model.card.spec.device()?;
    model.model.to(device).with_context(|| format!("moving model {} to {device}", dir.display()))?;
    Ok(model)
}

/// Reads a spec; returns it with the folder its relative paths start from.
pub(crate) fn load_spec(path: &Path) -> Result<(ModelSpec, PathBuf)> {
    let spec = ModelSpec::from_file(path).with_context(|| format!("reading spec {}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((spec, base))
}
