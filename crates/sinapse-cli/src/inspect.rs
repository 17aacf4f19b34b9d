//! `sinapse summary SPEC` and `sinapse gradcheck SPEC`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use sinapse::{job, nn, Rng};

/// Options of `sinapse summary`.
#[derive(Args)]
pub struct SummaryArgs {
    /// The model spec (TOML).
    spec: PathBuf,
}

/// Prints the spec's model as a table.
pub fn summary(args: SummaryArgs) -> Result<()> {
    let (spec, base) = crate::load_spec(&args.spec)?;
    let raw = spec.load_data(&base)?;
    let input_shape = raw.train.x().shape()[1..].to_vec();
    let model = spec.build_model(&input_shape, &raw.task, &mut Rng::seed(spec.seed))?;
    out!("{}", nn::summary(&model, &input_shape)?);
    Ok(())
}

/// Options of `sinapse gradcheck`.
#[derive(Args)]
pub struct GradcheckArgs {
    /// The model spec (TOML).
    spec: PathBuf,
    /// Samples in the batch.
    #[arg(long, default_value_t = 8)]
    samples: usize,
    /// Elements checked per parameter tensor (chosen at random when the tensor is larger).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    per_tensor: u64,
}

/// Compares gradients and prints the worst relative error.
pub fn gradcheck(args: GradcheckArgs) -> Result<()> {
    let (spec, base) = crate::load_spec(&args.spec)?;
    let checks = job::gradcheck(&spec, &base, args.samples, args.per_tensor as usize)?;
    let mut worst: (f64, &str) = (0.0, "");
    let (mut outside, mut kinks) = (0, 0);
    for c in &checks {
        let r = &c.report;
        outln!(
            "{:<12} {:>4} checked, max abs error {:.2e}, max rel error {:.2e}, {} outside tolerance, {} at kinks",
            c.name,
            r.checked,
            r.max_abs_error,
            r.max_rel_error,
            r.failure_count,
            c.kinks
        );
        outside += r.failure_count;
        kinks += c.kinks;
        if r.max_rel_error >= worst.0 {
            worst = (r.max_rel_error, &c.name);
        }
    }
    let checked: usize = checks.iter().map(|c| c.report.checked).sum();
    if kinks > 0 {
        outln!("{kinks} elements skipped: a kink (ReLU switching) lies within the finite-difference step");
    }
    outln!("largest relative error: {:.3e} ({}), {outside} of {checked} outside tolerance", worst.0, worst.1);
    Ok(())
}
