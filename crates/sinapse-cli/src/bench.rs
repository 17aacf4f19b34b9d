//! `sinapse bench`: the benchmarks of the README's "Speed against PyTorch", timed on the training loop (or, for
//! `infer`, the forward pass) only.
//!
//! The networks are the bundled specs' (`models/mnist_mlp.toml`, `models/mnist_cnn.toml`,
//! `models/mnist_lstm.toml`), built into the binary so the bench runs from anywhere; the
//! training settings (optimizer, batch, epochs) are the benchmarks' own. Each benchmark prints
//! the process's peak resident memory before its last line.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::{mnist, Dataset};
use sinapse::nn::{InferenceGraph, Mode, Module, Sequential};
use sinapse::optim::{Adam, Optimizer, Sgd};
use sinapse::spec::ModelSpec;
use sinapse::train::{evaluate, fit, FitConfig, LossKind, Silent, Task};
use sinapse::{Device, Rng, Tensor};

/// Options of `sinapse bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Benchmark name: mlp, cnn, lstm, infer or mlp-large (a GPU benchmark).
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
    /// Let GPU matrix products use TF32 tensor cores (full f32 precision otherwise).
    #[arg(long)]
    tf32: bool,
    /// Capture the training step (for `infer`, the forward pass too) into a CUDA graph and
    /// replay it (a GPU option).
    #[arg(long)]
    cuda_graph: bool,
    /// Train this many epochs instead of the benchmark's (a quick check, not its figure).
    #[arg(long)]
    epochs: Option<usize>,
    /// After the timed runs, time each kernel launch and cuBLAS product of this many eager
    /// training steps (after 2 untimed) on the GPU, alone (a GPU option; not for `infer`),
    /// and print them per step, the longest first.
    #[arg(long, value_name = "STEPS", num_args = 0..=1, default_missing_value = "20")]
    profile_kernels: Option<usize>,
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
const LSTM: Network = Network { file: "models/mnist_lstm.toml", text: include_str!("../../../models/mnist_lstm.toml") };
/// The GPU benchmark: 784-4096-4096-10 with ReLU (20.0 M weights).
const MLP_LARGE: Network = Network {
    file: "mlp-large",
    text: "seed = 0\nepochs = 3\nbatch_size = 1024\n[data]\nformat = \"idx\"\ntrain_images = \"-\"\n\
           train_labels = \"-\"\n[[layers]]\ntype = \"linear\"\nunits = 4096\n[[layers]]\ntype = \"relu\"\n\
           [[layers]]\ntype = \"linear\"\nunits = 4096\n[[layers]]\ntype = \"relu\"\n[[layers]]\n\
           type = \"linear\"\nunits = 10\n[optimizer]\ntype = \"sgd\"\nlr = 0.01\n",
};
/// The training samples of `mlp-large`: the training images tiled to this many.
const MLP_LARGE_SAMPLES: usize = 65_536;

impl Network {
    /// A fresh model (seed 0) for `[N, 784]` pixel rows.
    fn build(&self) -> Result<Sequential> {
        let spec = ModelSpec::parse(self.text, std::path::Path::new(self.file))?;
        Ok(spec.build_model(&[784], &Task::Classification { classes: 10 }, &mut Rng::seed(0))?)
    }
}

/// A training benchmark: the network, its optimizer and the fit settings.
struct Training {
    network: &'static Network,
    /// The optimizer over the model's parameters.
    optimizer: fn(Vec<Tensor>) -> sinapse::Result<Box<dyn Optimizer>>,
    epochs: usize,
    batch_size: usize,
    /// Training samples: the training images repeated to this many (`None`: as they are).
    tiled_to: Option<usize>,
}

/// The training benchmarks.
fn training(name: &str) -> Option<Training> {
    Some(match name {
        // 784-256-128-10 ReLU, softmax cross-entropy, SGD lr 0.1, batch 128 (last partial
        // batch kept), 5 epochs, reshuffled each epoch with a fixed seed.
        "mlp" => Training {
            network: &MLP,
            optimizer: |p| Ok(Box::new(Sgd::new(p, 0.1)?)),
            epochs: 5,
            batch_size: 128,
            tiled_to: None,
        },
        // conv(1->16, 5x5) ReLU maxpool 2x2, conv(16->32, 5x5) ReLU maxpool 2x2, flatten,
        // linear(512->10), softmax cross-entropy, SGD lr 0.05, batch 64, 1 epoch.
        "cnn" => Training {
            network: &CNN,
            optimizer: |p| Ok(Box::new(Sgd::new(p, 0.05)?)),
            epochs: 1,
            batch_size: 64,
            tiled_to: None,
        },
        // 28 rows of 28 pixels, LSTM(28->128) batch first, last step, linear(128->10), softmax
        // cross-entropy, Adam lr 2e-3, batch 64, 1 epoch.
        "lstm" => Training {
            network: &LSTM,
            optimizer: |p| Ok(Box::new(Adam::new(p, 2e-3)?)),
            epochs: 1,
            batch_size: 64,
            tiled_to: None,
        },
        // 784-4096-4096-10 ReLU, softmax cross-entropy, SGD lr 0.01, batch 1024, the training
        // images tiled to 65,536 samples, 3 epochs (a GPU benchmark: minutes on a CPU).
        "mlp-large" => Training {
            network: &MLP_LARGE,
            optimizer: |p| Ok(Box::new(Sgd::new(p, 0.01)?)),
            epochs: 3,
            batch_size: 1024,
            tiled_to: Some(MLP_LARGE_SAMPLES),
        },
        _ => return None,
    })
}

/// Runs the command.
pub fn run(args: BenchArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let device = crate::parse_device(&args.device)?;
    sinapse::backend::set_tf32(args.tf32);
    let infer = args.name == "infer";
    // `infer` times the trained `mlp`.
    let Some(bench) = training(if infer { "mlp" } else { &args.name }) else {
        bail!("unknown benchmark '{}' (valid: mlp, cnn, lstm, infer, mlp-large)", args.name);
    };
    if args.epochs == Some(0) {
        bail!("--epochs must be at least 1");
    }
    if args.cuda_graph && device == Device::Cpu {
        bail!("--cuda-graph needs a CUDA device (--device cuda)");
    }
    match args.profile_kernels {
        Some(_) if device == Device::Cpu => bail!("--profile-kernels times GPU launches: it needs --device cuda"),
        Some(_) if infer => bail!("--profile-kernels times training steps: profile `mlp`, the network `infer` runs"),
        Some(0) => bail!("--profile-kernels must time at least 1 step"),
        _ => {}
    }
    let task = Task::Classification { classes: 10 };
    let cfg = FitConfig {
        epochs: args.epochs.unwrap_or(bench.epochs),
        batch_size: bench.batch_size,
        loss: LossKind::CrossEntropy,
        seed: 0,
        cuda_graph: args.cuda_graph,
        ..FitConfig::new(task)
    };
    let dir = args.data.clone().unwrap_or_else(|| crate::repo_path("data/mnist-10k"));
    let mnist::Mnist { train, test } =
        mnist::load(&dir).with_context(|| format!("loading MNIST from {}", dir.display()))?;
    let train = match bench.tiled_to {
        Some(n) => {
            let rows: Vec<f32> = (0..n).map(|i| (i % train.len()) as f32).collect();
            let rows = Tensor::from_vec(rows, &[n])?;
            Dataset::new(train.x().index_select(0, &rows)?, train.y().index_select(0, &rows)?)?
        }
        None => train,
    };
    // On a GPU the training set is moved there once, as PyTorch's side does: batches are
    // gathered on the device (in the graph, with --cuda-graph), not copied from the host.
    let train = if device == Device::Cpu { train } else { train.to(device)? };
    // Which of the kernels' compiled paths this CPU runs (picked at run time).
    outln!("vector instructions: {}", sinapse::backend::simd_level());
    outln!(
        "device: {device}{}{}",
        if args.tf32 && device != Device::Cpu { " (TF32 allowed)" } else { "" },
        match (args.cuda_graph, infer) {
            (true, false) => " (training step in a CUDA graph)",
            (true, true) => " (training step and forward pass in CUDA graphs)",
            (false, _) => "",
        }
    );
    // On a GPU, one untimed epoch first, as PyTorch's side does: the driver's module loads,
    // cuBLAS's first calls, the allocator's first blocks and the clocks' climb from idle would
    // otherwise land in run 1 (an epoch of `mlp` is a few milliseconds there).
    if device != Device::Cpu {
        let model = bench.network.build()?;
        model.to(device)?;
        let mut opt = (bench.optimizer)(model.parameters())?;
        fit(&model, opt.as_mut(), &train, None, &FitConfig { epochs: 1, ..cfg.clone() }, &mut Silent)?;
        outln!("warm-up: one untimed epoch on {device} before the timed runs");
    }
    let mut runs = Vec::with_capacity(args.runs);
    let mut weights = 0;
    for run in 1..=args.runs {
        let model = bench.network.build()?;
        weights = model.num_parameters();
        model.to(device)?;
        let mut opt = (bench.optimizer)(model.parameters())?;
        let before = (run == 1).then(|| sinapse::backend::device_launches(device)).flatten();
        let history = fit(&model, opt.as_mut(), &train, None, &cfg, &mut Silent)?;
        if run == 1 {
            for note in &history.notes {
                outln!("{note}");
            }
            // On a GPU, what one training step queues (launches bound small networks there).
            if let (Some(a), Some(b)) = (before, sinapse::backend::device_launches(device)) {
                let steps = (history.records.len() * train.len().div_ceil(cfg.batch_size)).max(1) as f64;
                let per_step = |x: u64, y: u64| y.saturating_sub(x) as f64 / steps;
                outln!(
                    "launches per training step: {:.1} kernels, {:.1} cuBLAS products, {:.2} graph replays, \
                     {:.2} host copies (run 1, {steps} steps)",
                    per_step(a.kernels, b.kernels),
                    per_step(a.products, b.products),
                    per_step(a.graph_replays, b.graph_replays),
                    per_step(a.host_copies, b.host_copies)
                );
            }
        }
        if infer {
            let (latency, rate) = time_inference(&model, &test, device, args.cuda_graph)?;
            outln!("run {run}/{}: batch1 {latency:.1} us, batch1024 {rate:.0} samples/s", args.runs);
            runs.push((latency, rate));
        } else {
            let seconds: f64 = history.records.iter().map(|r| r.seconds).sum();
            let rate = (train.len() * history.records.len()) as f64 / seconds;
            let acc = evaluate(&model, &test, &cfg.task, cfg.loss, 1000)?.metric();
            outln!("run {run}/{}: {rate:.0} samples/s, test accuracy {acc:.4}", args.runs);
            runs.push((rate, f64::from(acc)));
        }
    }
    if let Some(steps) = args.profile_kernels {
        let cfg = FitConfig { epochs: 1, cuda_graph: false, ..cfg.clone() };
        profile_kernels(&bench, &train, &cfg, steps, device)?;
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (a, b) = runs[runs.len() / 2];
    match peak_resident_mib() {
        Some(mib) => outln!("peak resident memory: {mib:.1} MiB"),
        None => outln!("peak resident memory: unknown on this system"),
    }
    if let Some(m) = sinapse::backend::device_memory(device) {
        outln!(
            "peak device memory: {:.1} MiB ({} blocks from the driver, {} reused)",
            m.peak as f64 / (1 << 20) as f64,
            m.driver_allocations,
            m.reuses
        );
    }
    if infer {
        outln!("infer: batch1 {a:.1} us, batch1024 {b:.0} samples/s");
    } else {
        if args.name.starts_with("mlp") {
            // A dense network's step: 2 x weights per sample forward, 4 x backward (a
            // convolution or recurrence reuses its weights: there the count says nothing).
            outln!("arithmetic: {:.2} TFLOP/s (6 x {weights} weights x samples/s)", 6.0 * weights as f64 * a / 1e12);
        }
        outln!("{}: {a:.0} samples/s, test accuracy {b:.4}", args.name);
    }
    Ok(())
}

/// Trains a fresh model of `bench` for 2 batches of `train` with `cfg` (eager), then for
/// `steps` more while `device`'s kernel profile is on, and prints each kernel and product's
/// time per step, the longest first: the GPU's own time for each, without the host's gaps
/// between launches.
fn profile_kernels(bench: &Training, train: &Dataset, cfg: &FitConfig, steps: usize, device: Device) -> Result<()> {
    let rows = (steps * cfg.batch_size).min(train.len());
    let batches = rows.div_ceil(cfg.batch_size);
    let part = train.subset(&(0..rows).collect::<Vec<_>>())?;
    let warm_up = train.subset(&(0..(2 * cfg.batch_size).min(train.len())).collect::<Vec<_>>())?;
    let model = bench.network.build()?;
    model.to(device)?;
    let mut opt = (bench.optimizer)(model.parameters())?;
    fit(&model, opt.as_mut(), &warm_up, None, cfg, &mut Silent)?;
    sinapse::backend::kernel_profile(device)?; // a fresh start
    sinapse::backend::set_kernel_profiling(device, true)?;
    let fitted = fit(&model, opt.as_mut(), &part, None, cfg, &mut Silent);
    sinapse::backend::set_kernel_profiling(device, false)?;
    fitted?;
    let profile = sinapse::backend::kernel_profile(device)?;
    let total: f64 = profile.iter().map(|t| t.seconds).sum();
    let per_step = |x: f64| x / batches as f64;
    outln!(
        "kernel profile: {batches} eager training steps, each launch timed alone on the GPU (CUDA events, \
         after a spin kernel); per step:"
    );
    outln!("{:>10} {:>6} {:>8}  what", "us", "share", "launches");
    for t in &profile {
        outln!(
            "{:>10.1} {:>5.1}% {:>8.2}  {}",
            per_step(t.seconds) * 1e6,
            100.0 * t.seconds / total.max(f64::MIN_POSITIVE),
            per_step(t.launches as f64),
            t.what
        );
    }
    let launches: u64 = profile.iter().map(|t| t.launches).sum();
    outln!(
        "kernel profile total: {:.1} us per step in {:.2} launches (the GPU's time, without the host's gaps)",
        per_step(total) * 1e6,
        per_step(launches as f64)
    );
    Ok(())
}

/// Calls timed for the batch-1 latency (the median is reported).
const BATCH1_CALLS: usize = 2000;
/// Batches of 1024 timed for the throughput.
const BATCH1024_CALLS: usize = 100;

/// The forward pass of `model` without gradients: the median latency of one sample (us) and
/// the throughput of batches of 1024 (samples/s), on test images; with `graphs`, the pass
/// captured into a CUDA graph per batch size, each call one graph launch that copies its
/// input in and its output out (PyTorch's side queues `static_input.copy_(x);
/// graph.replay(); static_output.clone()`).
fn time_inference(model: &dyn Module, test: &Dataset, device: Device, graphs: bool) -> Result<(f64, f64)> {
    let _guard = sinapse::no_grad();
    // As in training: the kernels' pool threads spin between calls instead of sleeping
    // (renewed before each timed call: a spinner sleeps again after 2 ms without work).
    let hot = (device == Device::Cpu).then(sinapse::hot_workers);
    let renew = || hot.iter().for_each(sinapse::HotWorkers::renew);
    let x = test.x().to(device)?;
    let n = test.len();
    if n == 0 {
        bail!("the test set is empty: nothing to time inference on");
    }
    let singles: Vec<Tensor> = (0..BATCH1_CALLS.min(n)).map(|i| x.narrow(0, i, 1)).collect::<sinapse::Result<_>>()?;
    let graph_for = |rows: usize| -> Result<Option<InferenceGraph<'_>>> {
        let mut shape = x.shape().to_vec();
        shape[0] = rows;
        Ok(if graphs { Some(InferenceGraph::capture(model, &shape, device)?) } else { None })
    };
    let forward = |graph: &mut Option<InferenceGraph<'_>>, x: &Tensor| match graph {
        Some(g) => g.run(x),
        None => model.forward(x, Mode::Eval),
    };
    let mut one = graph_for(1)?;
    let mut latencies = Vec::with_capacity(BATCH1_CALLS);
    for i in 0..BATCH1_CALLS {
        renew();
        let start = Instant::now();
        let out = forward(&mut one, &singles[i % singles.len()])?;
        sinapse::backend::synchronize(device)?;
        latencies.push(start.elapsed().as_secs_f64());
        drop(out);
    }
    latencies.sort_by(f64::total_cmp);
    let latency_us = latencies[latencies.len() / 2] * 1e6;
    // Batches of 1024 test images (wrapping round the test set).
    let batch = 1024;
    let idx: Vec<f32> = (0..batch).map(|i| (i % n) as f32).collect();
    let big = x.index_select(0, &Tensor::from_vec(idx, &[batch])?.to(device)?)?;
    drop(one);
    let mut many = graph_for(batch)?;
    forward(&mut many, &big)?; // warm-up, not timed
    sinapse::backend::synchronize(device)?;
    renew();
    let start = Instant::now();
    for _ in 0..BATCH1024_CALLS {
        renew();
        forward(&mut many, &big)?;
    }
    sinapse::backend::synchronize(device)?;
    let rate = (batch * BATCH1024_CALLS) as f64 / start.elapsed().as_secs_f64();
    Ok((latency_us, rate))
}

/// The process's peak resident memory in MiB (Linux `VmHWM`); `None` where unknown.
fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
