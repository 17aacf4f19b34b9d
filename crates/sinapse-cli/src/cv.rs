//! `sinapse cv SPEC (--folds K | --loo) [--stratified]`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use sinapse::job::{cross_validate, fold_score, CvMethod};
use sinapse::train::Silent;

/// Options of `sinapse cv`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("method").required(true).args(["folds", "loo"])))]
pub struct CvArgs {
    /// The model spec (TOML).
    spec: PathBuf,
    /// k-fold cross-validation with this many folds.
    #[arg(long)]
    folds: Option<usize>,
    /// Leave-one-out cross-validation.
    #[arg(long)]
    loo: bool,
    /// Keep class proportions in every fold (k-fold, classification).
    #[arg(long)]
    stratified: bool,
}

/// Runs the command.
pub fn run(args: CvArgs) -> Result<()> {
    let (spec, base) = crate::load_spec(&args.spec)?;
    let method = match (args.folds, args.loo) {
        (Some(k), false) => CvMethod::KFold { k, stratified: args.stratified },
        (None, true) => {
            if args.stratified {
                bail!("--stratified applies to k-fold only (leave-one-out tests one sample per fold)");
            }
            CvMethod::LeaveOneOut
        }
        _ => bail!("give exactly one of --folds K and --loo"),
    };
    let outcome = cross_validate(&spec, &base, method, &mut Silent, |i, n, f| {
        let width = n.to_string().len();
        println!(
            "fold {i:>width$}/{n}: {} {:.4} (train {}, test {})",
            metric_name(&f.evaluation),
            fold_score(&f.evaluation),
            f.train_size,
            f.test_size
        );
    })?;
    let (mean, std) = outcome.mean_std();
    println!("{}: mean {mean:.4} ± {std:.4} over {} folds", outcome.metric, outcome.folds.len());
    Ok(())
}

fn metric_name(e: &sinapse::train::Evaluation) -> &'static str {
    match e.metrics {
        sinapse::train::Metrics::Classification(_) => "accuracy",
        sinapse::train::Metrics::Regression(_) => "mse",
    }
}
