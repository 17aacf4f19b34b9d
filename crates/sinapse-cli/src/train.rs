//! `sinapse train [SPEC] [--out DIR]`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use sinapse::dist::Communicator;
use sinapse::job;
use sinapse::nn::Module;
use sinapse::spec::{ModelSpec, TaskKind, TrainedModel, ValidationSpec};
use sinapse::train::{
    ConfusionMatrix, EpochRecord, Evaluation, FitConfig, Metrics, Observer, ProgressReporter, Task, Verbosity,
};

/// Options of `sinapse train`.
#[derive(Args)]
pub struct TrainArgs {
    /// The model spec (TOML) [default: models/mnist_mlp.toml].
    spec: Option<PathBuf>,
    /// Where to save the model directory [default: runs/<spec name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print only the final lines.
    #[arg(long)]
    quiet: bool,
    /// Device to train on: cpu, cuda, cuda:N or auto [default: the spec's `device`, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Let GPU matrix products use TF32 tensor cores (as the spec's `tf32 = true`).
    #[arg(long)]
    tf32: bool,
    /// Capture each training step into a CUDA graph and replay it (as the spec's
    /// `cuda_graph = true`; ignored on the CPU).
    #[arg(long)]
    cuda_graph: bool,
    /// Train this many epochs instead of the spec's.
    #[arg(long)]
    epochs: Option<usize>,
    /// Data-parallel training over the processes mpirun started (`mpirun -np 2 sinapse train
    /// SPEC --distributed`): each takes its part of every batch, gradients are averaged by
    /// MPI (by NCCL on GPUs, one per process), rank 0 prints and saves. Needs a binary built
    /// with `--features mpi`.
    #[arg(long)]
    distributed: bool,
}

/// One line of metrics for an evaluation.
pub fn describe(e: &Evaluation) -> String {
    match &e.metrics {
        Metrics::Classification(m) => format!(
            "loss {:.4}, accuracy {:.4}, macro precision {:.4}, recall {:.4}, F1 {:.4}",
            e.loss,
            m.accuracy(),
            m.macro_precision(),
            m.macro_recall(),
            m.macro_f1()
        ),
        Metrics::Regression(r) | Metrics::Reconstruction(r) => {
            format!("mse {:.6}, mae {:.6}, r2 {:.4}", r.mse, r.mae, r.r2)
        }
    }
}

/// The last line: `test accuracy: 0.NNNN`, `test mse: X` or (an autoencoder)
/// `test reconstruction mse: X`.
pub fn final_line(prefix: &str, e: &Evaluation) -> String {
    match &e.metrics {
        Metrics::Classification(m) => format!("{prefix}accuracy: {:.4}", m.accuracy()),
        Metrics::Regression(r) => format!("{prefix}mse: {:.6}", r.mse),
        Metrics::Reconstruction(r) => format!("{prefix}reconstruction mse: {:.6}", r.mse),
    }
}

/// What an autoencoder's two pictures show: test images with their reconstructions, and the
/// codes of the test set in a plane with their labels.
struct AutoencoderPictures {
    originals: Vec<Vec<f32>>,
    rebuilt: Vec<Vec<f32>>,
    side: Option<usize>,
    points: Vec<[f32; 2]>,
    labels: Vec<usize>,
    names: Vec<String>,
    axes: [&'static str; 2],
}

/// Test images shown in `reconstructions.png`, and most test samples in `codes.png`.
const SHOWN_IMAGES: usize = 10;
const PLOTTED_CODES: usize = 2000;

fn autoencoder_pictures(model: &TrainedModel, spec: &ModelSpec, base: &Path) -> Result<AutoencoderPictures> {
    let raw = spec.load_data(base)?;
    let (data, labels) = match (&raw.test, &raw.labels) {
        (Some(test), Some((_, Some(l)))) => (test.clone(), l.clone()),
        (_, Some((l, _))) => (raw.train.clone(), l.clone()),
        _ => anyhow::bail!("the spec's data has no labels to colour the codes"),
    };
    let n = data.len().min(PLOTTED_CODES);
    let x = data.x().narrow(0, 0, n)?;
    let codes = model.codes(&x)?;
    let width = codes.shape()[1];
    let (points, axes) = if width == 2 {
        (codes.to_vec2()?.iter().map(|r| [r[0], r[1]]).collect(), ["code 0", "code 1"])
    } else {
        (crate::plot::principal_plane(&codes.try_to_vec()?, n, width), ["first principal axis of the codes", "second"])
    };
    let shown = x.narrow(0, 0, n.min(SHOWN_IMAGES))?;
    // Only images are drawn as images (a CSV with 4 or 9 columns is no picture).
    let features = model.card.feature_names.len();
    let images = matches!(spec.data, sinapse::spec::DataSpec::Idx { .. });
    let side = (1..=features).find(|s| s * s == features).filter(|_| images);
    Ok(AutoencoderPictures {
        originals: shown.to_vec2()?,
        rebuilt: model.reconstructions(&shown)?.to_vec2()?,
        side,
        points,
        labels: labels.try_to_vec()?.iter().take(n).map(|&l| l as usize).collect(),
        names: model.card.classes.as_ref().map(|c| c.classes.clone()).unwrap_or_default(),
        axes,
    })
}

impl AutoencoderPictures {
    /// `codes.png`, and `reconstructions.png` when the inputs are square images.
    fn draw(&self, dir: &Path) -> sinapse::Result<()> {
        if let Some(side) = self.side {
            crate::plot::reconstructions(&dir.join("reconstructions.png"), &self.originals, &self.rebuilt, side)?;
        }
        crate::plot::codes(&dir.join("codes.png"), &self.points, &self.labels, &self.names, self.axes)
    }
}

/// Two observers in one: the progress lines and the dashboard's live file.
struct Both<'a>(&'a mut dyn Observer, &'a mut dyn Observer);

impl Observer for Both<'_> {
    fn on_fit_start(&mut self, cfg: &FitConfig, batches: usize) {
        self.0.on_fit_start(cfg, batches);
        self.1.on_fit_start(cfg, batches);
    }
    fn on_batch(&mut self, epoch: usize, batch: usize, batches: usize, size: usize, loss: f32) {
        self.0.on_batch(epoch, batch, batches, size, loss);
        self.1.on_batch(epoch, batch, batches, size, loss);
    }
    fn on_epoch(&mut self, record: &EpochRecord, epochs: usize) {
        self.0.on_epoch(record, epochs);
        self.1.on_epoch(record, epochs);
    }
}

/// The confusion matrix as CSV: a header of class names, then each true class's name and
/// its counts by predicted class (what the dashboard reads).
fn confusion_csv(m: &ConfusionMatrix, names: Option<&[String]>) -> sinapse::Result<String> {
    let name = |c: usize| names.and_then(|n| n.get(c).cloned()).unwrap_or_else(|| c.to_string());
    let mut w = csv::Writer::from_writer(Vec::new());
    let io = |e: csv::Error| sinapse::Error::InvalidArgument { op: "confusion.csv", msg: e.to_string() };
    w.write_record(std::iter::once("true\\predicted".to_string()).chain((0..m.classes()).map(name))).map_err(io)?;
    for (t, row) in m.counts.iter().enumerate() {
        w.write_record(std::iter::once(name(t)).chain(row.iter().map(|v| v.to_string()))).map_err(io)?;
    }
    let bytes =
        w.into_inner().map_err(|e| sinapse::Error::InvalidArgument { op: "confusion.csv", msg: e.to_string() })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Above this many classes no confusion matrix is drawn or written.
const MAX_PLOTTED_CLASSES: usize = 50;

/// The processes to train with: MPI's world under `--distributed`, else this one alone.
#[cfg(feature = "mpi")]
fn communicator(distributed: bool) -> Result<Communicator> {
    Ok(if distributed { Communicator::mpi()? } else { Communicator::local() })
}

/// The processes to train with: this one alone (`--distributed` needs the `mpi` feature).
#[cfg(not(feature = "mpi"))]
fn communicator(distributed: bool) -> Result<Communicator> {
    if distributed {
        anyhow::bail!(
            "--distributed: this sinapse was built without MPI; build it with `cargo build --release -p \
             sinapse-cli --features mpi` (needs Debian's openmpi-bin, libopenmpi-dev and libclang-dev)"
        );
    }
    Ok(Communicator::local())
}

/// Runs the command.
pub fn run(args: TrainArgs) -> Result<()> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
        .unwrap_or(1);
    if launched > 1 && !args.distributed {
        crate::output::note(format_args!(
            "note: started by mpirun with {launched} processes but without --distributed: each trains alone \
             (and they write the same model directory)"
        ));
    }
    let comm = communicator(args.distributed)?;
    if comm.world_size() == 1 {
        return run_on(args, &comm);
    }
    // One rank's error would leave the others waiting in their next all-reduce: it ends
    // them all (mpirun then names the rank that called the abort).
    run_on(args, &comm).or_else(|e| {
        crate::output::note(format_args!(
            "error: rank {} of {}: {}",
            comm.rank(),
            comm.world_size(),
            crate::one_line(&e)
        ));
        comm.abort(1)
    })
}

/// Trains as one rank of `comm`.
fn run_on(args: TrainArgs, comm: &Communicator) -> Result<()> {
    let spec_path = args.spec.unwrap_or_else(|| crate::repo_path("models/mnist_mlp.toml"));
    let (mut spec, base) = crate::load_spec(&spec_path)?;
    crate::override_device(&mut spec, args.device)?;
    let root = comm.is_root();
    let mut comm = comm.clone();
    if comm.world_size() > 1 && matches!(spec.device()?, sinapse::Device::Cuda(_)) {
        // One GPU per process, by its rank on the machine (modulo the GPUs it sees: a
        // launcher may show each process one); gradients go over NCCL.
        let device = sinapse::Device::Cuda(comm.local_rank() % sinapse::backend::cuda_device_count().max(1));
        crate::override_device(&mut spec, Some(device.to_string()))?;
        comm = comm.nccl(device)?;
    }
    if args.tf32 {
        spec.tf32 = Some(true);
    }
    if args.cuda_graph {
        spec.cuda_graph = Some(true);
    }
    if let Some(epochs) = args.epochs {
        spec.epochs = epochs;
        spec.validate()?;
    }
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(spec_path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()))
    });
    // Before any work: where the model will go must be free, empty or a model directory.
    if root {
        sinapse::spec::TrainedModel::check_out_dir(&out)?;
    }
    // Only rank 0 speaks.
    let verbosity = if args.quiet || !root { Verbosity::Quiet } else { Verbosity::Normal };
    let mut progress = ProgressReporter::new(verbosity);
    if let (true, Some(ValidationSpec::Kfold { .. } | ValidationSpec::Loo)) = (root, &spec.validation) {
        outln!(
            "note: the spec's cross-validation runs with `sinapse cv`; train fits one model on all the training data"
        );
    }
    if verbosity == Verbosity::Normal {
        outln!("spec {}: {} samples per batch, {} epochs", spec_path.display(), spec.batch_size, spec.epochs);
        if comm.world_size() > 1 {
            outln!(
                "distributed: {} processes over {}, {} samples of each batch per process",
                comm.world_size(),
                comm.engine(),
                spec.batch_size.div_ceil(comm.world_size())
            );
        }
    }
    if !root {
        job::train_distributed(&spec, &base, &mut progress, &comm)?;
        return Ok(());
    }
    // For `sinapse dashboard`: the run so far, rewritten after every epoch beside `out`.
    let metric = match spec.task_kind() {
        TaskKind::Classification => "accuracy",
        TaskKind::Regression => "mae",
        TaskKind::Reconstruction => "mse",
    };
    let mut live =
        crate::dashboard::LiveWriter::new(&out, &spec_path, crate::dashboard::spec_summary(&spec), metric, spec.epochs);
    let trained = job::train_distributed(&spec, &base, &mut Both(&mut progress, &mut live), &comm);
    let outcome = match trained {
        Ok(o) => o,
        Err(e) => {
            live.failed(e.to_string());
            return Err(e.into());
        }
    };
    // What training found is printed after the save: nothing about standard output (a full
    // disk behind a redirection) may lose the trained model.
    let mut summary = Vec::new();
    if !args.quiet {
        summary.push(format!(
            "model {}: {} parameters",
            outcome.model.model.describe(),
            outcome.model.model.num_parameters()
        ));
        summary.extend(outcome.history.notes.iter().cloned());
        if let Some(best) = outcome.history.best_epoch {
            let note = if outcome.history.restored_best { " (weights restored)" } else { "" };
            let stop = if outcome.history.stopped_early { ", stopped early" } else { "" };
            summary.push(format!("best validation loss at epoch {best}{note}{stop}"));
        }
        if let Some(v) = &outcome.validation {
            summary.push(format!("validation: {}", describe(v)));
        }
    }
    let history_csv = outcome.history.to_csv();
    // An autoencoder's pictures need the test images again, with their labels.
    // A picture that cannot be made is a note, not a lost model.
    let pictures = match outcome.model.card.task {
        Task::Reconstruction { .. } => match autoencoder_pictures(&outcome.model, &spec, &base) {
            Ok(p) => Some(p),
            Err(e) => {
                crate::output::note(format_args!("note: no codes.png or reconstructions.png: {e:#}"));
                None
            }
        },
        _ => None,
    };
    let for_plot = outcome.test.as_ref().or(outcome.validation.as_ref());
    let classes = outcome.model.card.classes.clone();
    let saved = outcome
        .model
        .save(&out, |dir| {
            let write = |name: &str, text: &str| {
                std::fs::write(dir.join(name), text)
                    .map_err(|source| sinapse::Error::Io { path: dir.join(name), source })
            };
            write("history.csv", &history_csv)?;
            crate::plot::curves(dir, &outcome.history)?;
            if let Some(p) = &pictures {
                p.draw(dir)?;
            }
            if let Some(Evaluation { metrics: Metrics::Classification(m), .. }) = for_plot {
                // A confusion matrix of hundreds of classes is no picture (and a huge file).
                if m.classes() <= MAX_PLOTTED_CLASSES {
                    let names = classes.as_ref().map(|c| c.classes.clone());
                    crate::plot::confusion(&dir.join("confusion.png"), m, names.as_deref())?;
                    write("confusion.txt", &m.render(names.as_deref()))?;
                    write("confusion.csv", &confusion_csv(m, names.as_deref())?)?;
                }
            }
            Ok(())
        })
        .with_context(|| format!("saving the model to {}", out.display()));
    match saved {
        Ok(()) => live.finished(),
        Err(e) => {
            live.failed(crate::one_line(&e));
            return Err(e);
        }
    }
    for line in summary {
        outln!("{line}");
    }
    outln!("saved model, history.csv and plots to {}", out.display());
    if let Some(t) = &outcome.test {
        outln!("test: {}", describe(t));
        outln!("{}", final_line("test ", t));
    }
    Ok(())
}
