//! `sinapse learning-curve SPEC`: the spec trained on growing fractions of its training
//! data, its metric on those examples and on the test set, as a table and a plot.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::job::{self, LearningCurve};

/// Options of `sinapse learning-curve`.
#[derive(Args)]
pub struct CurveArgs {
    /// The model spec (TOML).
    spec: PathBuf,
    /// Fractions of the training data to train on, comma-separated, each in (0, 1].
    #[arg(long, default_value = "0.05,0.1,0.25,0.5,1")]
    fractions: String,
    /// Models trained per fraction (each from its own subset and initial weights).
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// A second spec drawn on the same plot, for comparison.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Where to write learning_curve.csv and learning_curve.png
    /// [default: runs/<spec name>-learning-curve].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A learning-curve directory, as the atomic writer sees it: one holding learning_curve.csv.
const CURVE_DIR: sinapse::atomic::Owner<'static> = sinapse::atomic::Owner {
    what: "Sinapse learning-curve directory",
    recognise: &|dir: &Path| dir.join("learning_curve.csv").is_file(),
    legacy_names: &[],
};

fn parse_fractions(text: &str) -> Result<Vec<f64>> {
    let fractions = text
        .split(',')
        .map(|p| p.trim().parse::<f64>().with_context(|| format!("--fractions: '{p}' is not a number")))
        .collect::<Result<Vec<_>>>()?;
    if let Some(f) = fractions.iter().find(|f| !(**f > 0.0 && **f <= 1.0)) {
        bail!("--fractions: {f} is not in (0, 1]");
    }
    Ok(fractions)
}

/// The spec's name: its file name without the extension.
fn name_of(spec: &Path) -> String {
    spec.file_stem().map_or("spec".into(), |s| s.to_string_lossy().into_owned())
}

/// Runs the command.
pub fn run(args: CurveArgs) -> Result<()> {
    let fractions = parse_fractions(&args.fractions)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{}-learning-curve", name_of(&args.spec))));
    sinapse::atomic::check_replaceable(&out, &CURVE_DIR)?;
    let mut curves: Vec<(String, LearningCurve)> = Vec::new();
    for spec_path in std::iter::once(&args.spec).chain(args.compare.as_ref()) {
        let (spec, base) = crate::load_spec(spec_path)?;
        let name = name_of(spec_path);
        outln!("{name}: {} epochs per model, {} repeat(s) per size", spec.epochs, args.repeats);
        let mut printing: Result<()> = Ok(());
        let mut header_done = false;
        let curve = job::learning_curve(&spec, &base, &fractions, args.repeats, &mut |p| {
            if printing.is_ok() {
                printing = (|| {
                    if !header_done {
                        outln!("{:>9} {:>9} {:>16} {:>16}", "fraction", "examples", "train", "test");
                        header_done = true;
                    }
                    outln!(
                        "{:>9} {:>9} {:>9.4} ± {:.4} {:>9.4} ± {:.4}",
                        p.fraction,
                        p.examples,
                        p.train.0,
                        p.train.1,
                        p.test.0,
                        p.test.1
                    );
                    Ok(())
                })();
            }
        })
        .with_context(|| format!("learning curve of {}", spec_path.display()))?;
        printing?;
        curves.push((name, curve));
    }
    if let [(a, ca), (b, cb)] = &curves[..] {
        if ca.metric != cb.metric {
            bail!("{a} is scored by {} and {b} by {}: one plot cannot compare them", ca.metric, cb.metric);
        }
    }
    let mut csv = String::from("spec,fraction,examples,metric,train_mean,train_std,test_mean,test_std\n");
    for (name, c) in &curves {
        for p in &c.points {
            csv.push_str(&format!(
                "{name},{},{},{},{},{},{},{}\n",
                p.fraction, p.examples, c.metric, p.train.0, p.train.1, p.test.0, p.test.1
            ));
        }
    }
    sinapse::atomic::write_dir_atomically(&out, &CURVE_DIR, |dir| {
        let path = dir.join("learning_curve.csv");
        std::fs::write(&path, &csv).map_err(|source| sinapse::Error::Io { path, source })?;
        crate::plot::learning_curves(&dir.join("learning_curve.png"), &curves)
    })?;
    outln!("saved learning_curve.csv and learning_curve.png to {}", out.display());
    Ok(())
}
