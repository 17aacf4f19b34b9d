//! `sinapse eval MODEL DATA`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::data::csv::{read_csv, Target};
use sinapse::data::idx::read_labelled_images;
use sinapse::data::mnist;
use sinapse::data::Dataset;
use sinapse::spec::{DataSpec, TrainedModel};
use sinapse::train::{evaluate, Metrics, Task};

/// Options of `sinapse eval`.
#[derive(Args)]
pub struct EvalArgs {
    /// A model directory saved by `sinapse train`.
    model: PathBuf,
    /// Labelled data: a CSV file with the training columns, an IDX images file (its labels
    /// file found by name), or a folder holding t10k-images/t10k-labels IDX files.
    data: PathBuf,
    /// Device to run on: cpu, cuda, cuda:N or auto [default: the spec's `device`, else cpu].
    #[arg(long)]
    device: Option<String>,
}

/// Reads labelled data in the model's own format, with its label column and class names.
pub fn read_labelled(model: &TrainedModel, path: &Path) -> Result<Dataset> {
    let card = &model.card;
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
        let DataSpec::Csv { label, .. } = &card.spec.data else {
            bail!("{}: the model was trained on IDX images, not CSV", path.display());
        };
        let target = match card.task {
            Task::Classification { .. } | Task::Reconstruction { .. } => Target::Class,
            Task::Regression => Target::Value,
        };
        if matches!(card.task, Task::Reconstruction { .. }) {
            // An autoencoder needs the features only; its targets are the features.
            let x = sinapse::data::csv::read_features(path, &card.feature_names)?;
            return Ok(Dataset::new(x.clone(), x)?);
        }
        let table = read_csv(path, Some(label), target, card.classes.as_ref())?;
        let features = if table.feature_names == card.feature_names {
            table.features
        } else {
            // Same columns in another order, or extra columns: pick the model's by name.
            sinapse::data::csv::read_features(path, &card.feature_names)?
        };
        let y = table.targets.context("the CSV has no label column")?;
        return Ok(Dataset::new(features, y)?);
    }
    if path.is_dir() {
        return Ok(mnist::load_split(path, "t10k")?);
    }
    let (images, labels) = {
        let name = path.to_string_lossy();
        if !name.contains("images-idx3") {
            bail!("{}: expected a .csv file, an IDX images file (…images-idx3…) or a folder", path.display());
        }
        (path.to_path_buf(), PathBuf::from(name.replace("images-idx3", "labels-idx1")))
    };
    Ok(read_labelled_images(&images, &labels)?)
}

/// Runs the command.
pub fn run(args: EvalArgs) -> Result<()> {
    let model = crate::load_model(&args.model, args.device)?;
    let data = read_labelled(&model, &args.data)?;
    let x = model.card.scaler.transform(data.x())?;
    // An autoencoder's targets are its own (scaled) inputs; the labels are not used.
    let y = if matches!(model.card.task, Task::Reconstruction { .. }) { x.clone() } else { data.y().clone() };
    let scaled = Dataset::new(x, y)?;
    let loss = model.card.spec.loss_for(&model.card.task);
    let e = evaluate(&model.model, &scaled, &model.card.task, loss, 1024)?;
    outln!("{} samples from {}", data.len(), args.data.display());
    outln!("{}", crate::train::describe(&e));
    if let Metrics::Classification(m) = &e.metrics {
        let names = model.card.classes.as_ref().map(|c| c.classes.clone());
        out!("{}", m.render(names.as_deref()));
    }
    outln!("{}", crate::train::final_line("", &e));
    Ok(())
}
