//! `sinapse import SPEC WEIGHTS --out DIR`: a model directory from a spec and a PyTorch
//! state_dict saved as safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use sinapse::job;
use sinapse::spec::TrainedModel;
use sinapse::train::evaluate;

/// Options of `sinapse import`.
#[derive(Args)]
pub struct ImportArgs {
    /// The model spec (TOML) describing the network layer by layer as the PyTorch module does
    /// (its parameter names, `0.weight`, `2.bias`, ..., must be the state_dict's).
    spec: PathBuf,
    /// The weights: `safetensors.torch.save_file(model.state_dict(), "weights.safetensors")`.
    weights: PathBuf,
    /// Where to save the model directory [default: runs/<spec name>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The feature scaling the weights were trained with (CSV specs), instead of one fitted on
    /// the spec's data: a TOML file with `kind = "standard"`, `mean = [..]`, `std = [..]` (or
    /// `"min_max"` with `min` and `max`), or a model directory's `model.toml`.
    #[arg(long)]
    scaler: Option<PathBuf>,
}

/// Runs the command.
pub fn run(args: ImportArgs) -> Result<()> {
    let (spec, base) = crate::load_spec(&args.spec)?;
    let out = args.out.unwrap_or_else(|| {
        PathBuf::from("runs").join(args.spec.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned()))
    });
    TrainedModel::check_out_dir(&out)?;
    let scaler = args.scaler.as_deref().map(sinapse::data::Scaler::load).transpose()?;
    let model = job::import_weights(&spec, &base, &args.weights, scaler)
        .with_context(|| format!("importing {} into {}", args.weights.display(), args.spec.display()))?;
    let tensors = sinapse::nn::Module::state_dict(&model.model).len();
    // The test set, when the spec has one, scores the imported weights.
    let raw = spec.load_data(&base)?;
    let test = match raw.test {
        Some(t) => {
            let x = model.card.scaler.transform(t.x())?;
            let y = if matches!(model.card.task, sinapse::train::Task::Reconstruction { .. }) {
                x.clone()
            } else {
                t.y().clone()
            };
            let data = sinapse::data::Dataset::new(x, y)?;
            Some(evaluate(&model.model, &data, &model.card.task, spec.loss_for(&model.card.task), 1024)?)
        }
        None => None,
    };
    model.save(&out, |_| Ok(())).with_context(|| format!("saving the model to {}", out.display()))?;
    outln!("imported {tensors} tensors from {} into {}", args.weights.display(), out.display());
    if let Some(e) = &test {
        outln!("test: {}", crate::train::describe(e));
        outln!("{}", crate::train::final_line("test ", e));
    }
    Ok(())
}
