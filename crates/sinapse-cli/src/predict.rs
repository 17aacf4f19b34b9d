//! `sinapse predict MODEL INPUT.csv [--out FILE]`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sinapse::atomic::write_atomically;
use sinapse::data::csv::read_features;
use sinapse::spec::TrainedModel;
use sinapse::train::Task;

/// Options of `sinapse predict`.
#[derive(Args)]
pub struct PredictArgs {
    /// A model directory saved by `sinapse train`.
    model: PathBuf,
    /// A CSV file with the model's feature columns (other columns are ignored).
    input: PathBuf,
    /// Write the predictions here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Device to run on: cpu, cuda, cuda:N or auto [default: the spec's `device`, else cpu].
    #[arg(long)]
    device: Option<String>,
    /// Autoencoders: write the reconstructions (one column per feature) instead of the codes.
    #[arg(long)]
    reconstructions: bool,
}

/// Runs the command.
pub fn run(args: PredictArgs) -> Result<()> {
    let model = crate::load_model(&args.model, args.device)?;
    let x = read_features(&args.input, &model.card.feature_names)?;
    if args.reconstructions && !matches!(model.card.task, Task::Reconstruction { .. }) {
        anyhow::bail!("--reconstructions is for autoencoders (task = \"reconstruction\")");
    }
    let outputs = match model.card.task {
        Task::Reconstruction { .. } if args.reconstructions => model.reconstructions(&x)?,
        Task::Reconstruction { .. } => model.codes(&x)?,
        _ => model.outputs(&x)?,
    };
    // Through the csv crate: class names holding commas or quotes are quoted as CSV needs.
    let mut w = csv::Writer::from_writer(Vec::new());
    match model.card.task {
        Task::Classification { classes } => {
            let names: Vec<String> = match &model.card.classes {
                Some(c) => c.classes.clone(),
                None => (0..classes).map(|c| c.to_string()).collect(),
            };
            // Probabilities: the softmax of the outputs, unless the model already ends in a
            // softmax layer.
            let probs = if ends_in_softmax(&model) { outputs } else { outputs.softmax(1)? };
            w.write_record(std::iter::once("prediction".to_string()).chain(names.iter().map(|n| format!("p_{n}"))))?;
            for row in probs.to_vec2()? {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                w.write_record(std::iter::once(names[best].clone()).chain(row.iter().map(|p| format!("{p:.6}"))))?;
            }
        }
        Task::Regression => {
            w.write_record(["prediction"])?;
            for v in outputs.try_to_vec()? {
                w.write_record([v.to_string()])?;
            }
        }
        Task::Reconstruction { .. } => {
            // Codes (code0, code1, ...) or reconstructions (named as the input columns).
            let header: Vec<String> = if args.reconstructions {
                model.card.feature_names.clone()
            } else {
                (0..outputs.shape()[1]).map(|i| format!("code{i}")).collect()
            };
            w.write_record(&header)?;
            for row in outputs.to_vec2()? {
                w.write_record(row.iter().map(|v| format!("{v:.6}")))?;
            }
        }
    }
    let csv = String::from_utf8(w.into_inner()?)?;
    match &args.out {
        Some(path) => {
            write_atomically(path, csv.as_bytes())?;
            crate::output::note(format_args!("{} predictions written to {}", x.shape()[0], path.display()));
        }
        None => out!("{csv}"),
    }
    Ok(())
}

/// True when the spec's last layer is a softmax: its outputs are probabilities already.
fn ends_in_softmax(model: &TrainedModel) -> bool {
    matches!(model.card.spec.layers.last(), Some(sinapse::spec::LayerSpec::Softmax))
}
