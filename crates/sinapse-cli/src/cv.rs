//! `sinapse cv SPEC (--folds K | --loo) [--stratified]`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use sinapse::job::{cross_validate, fold_score, CvMethod};
use sinapse::spec::ValidationSpec;
use sinapse::train::{Metrics, Silent};

/// Options of `sinapse cv`. Without `--folds` or `--loo`, the spec's `[validation]` (kfold or
/// loo) decides.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("method").args(["folds", "loo"])))]
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
    /// Device to train on: cpu, cuda, cuda:N or auto [default: the spec's `device`, else cpu].
    #[arg(long)]
    device: Option<String>,
}

/// Runs the command.
pub fn run(args: CvArgs) -> Result<()> {
    let (mut spec, base) = crate::load_spec(&args.spec)?;
    crate::override_device(&mut spec, args.device)?;
    let method = match (args.folds, args.loo, spec.validation) {
        (Some(k), false, _) => CvMethod::KFold { k, stratified: args.stratified },
        (None, true, _) if args.stratified => {
            bail!("--stratified applies to k-fold only (leave-one-out tests one sample per fold)")
        }
        (None, true, _) => CvMethod::LeaveOneOut,
        (None, false, Some(ValidationSpec::Kfold { folds, stratified })) => {
            CvMethod::KFold { k: folds, stratified: stratified || args.stratified }
        }
        (None, false, Some(ValidationSpec::Loo)) => CvMethod::LeaveOneOut,
        _ => bail!("give --folds K or --loo (the spec's [validation] is not kfold or loo)"),
    };
    let mut write_error = None;
    let outcome = cross_validate(&spec, &base, method, &mut Silent, |i, n, f| {
        let width = n.to_string().len();
        let (metric, score) = fold_score(&f.evaluation);
        let r2 = match &f.evaluation.metrics {
            Metrics::Regression(r) | Metrics::Reconstruction(r) => format!(", r2 {:.4}", r.r2),
            Metrics::Classification(_) => String::new(),
        };
        let line = format_args!(
            "fold {i:>width$}/{n}: {metric} {score:.4}{r2} (train {}, test {})\n",
            f.train_size, f.test_size
        );
        if let Err(e) = crate::output::write(line) {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let (mean, std) = outcome.mean_std();
    outln!("{}: mean {mean:.4} ± {std:.4} over {} folds", outcome.metric, outcome.folds.len());
    if let Some((mean, std)) = outcome.r2_mean_std() {
        outln!("r2: mean {mean:.4} ± {std:.4}");
    }
    Ok(())
}
