//! Learning-rate schedules, stepped once per epoch.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate changes with the epoch (PyTorch's `StepLR`, `ExponentialLR`,
/// `CosineAnnealingLR`). `epoch` counts completed epochs, so epoch 0 uses the base rate.
///
/// In a model spec: `[schedule]` with `type = "step"` (`step_size`, `gamma`), `"exponential"`
/// (`gamma`), `"cosine"` (`t_max`, `eta_min` default 0) or `"constant"`.
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// `lr0 · gamma^floor(epoch / step_size)`.
    Step {
        /// Epochs between decays.
        step_size: usize,
        /// Factor per decay.
        gamma: f32,
    },
    /// `lr0 · gamma^epoch`.
    Exponential {
        /// Factor per epoch.
        gamma: f32,
    },
    /// `eta_min + (lr0 - eta_min) · (1 + cos(π · epoch / t_max)) / 2`, then `eta_min` after
    /// `t_max` epochs.
    Cosine {
        /// Epochs of the half cosine.
        t_max: usize,
        /// The final rate (default 0).
        #[serde(default)]
        eta_min: f32,
    },
}

impl LrSchedule {
    /// Checks the schedule's settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid("LrSchedule", msg));
        match *self {
            LrSchedule::Constant => Ok(()),
            LrSchedule::Step { step_size, gamma } => {
                if step_size == 0 {
                    return bad("step_size must be at least 1".into());
                }
                if !(gamma.is_finite() && gamma > 0.0) {
                    return bad(format!("gamma must be > 0, got {gamma}"));
                }
                Ok(())
            }
            LrSchedule::Exponential { gamma } if !(gamma.is_finite() && gamma > 0.0) => {
                bad(format!("gamma must be > 0, got {gamma}"))
            }
            LrSchedule::Exponential { .. } => Ok(()),
            LrSchedule::Cosine { t_max, eta_min } => {
                if t_max == 0 {
                    return bad("t_max must be at least 1".into());
                }
                if !(eta_min.is_finite() && eta_min >= 0.0) {
                    return bad(format!("eta_min must be >= 0, got {eta_min}"));
                }
                Ok(())
            }
        }
    }

    /// The learning rate after `epoch` completed epochs, from the base rate `lr0`.
    pub fn lr_at(&self, lr0: f32, epoch: usize) -> f32 {
        match *self {
            LrSchedule::Constant => lr0,
            LrSchedule::Step { step_size, gamma } => lr0 * gamma.powi((epoch / step_size.max(1)) as i32),
            LrSchedule::Exponential { gamma } => lr0 * gamma.powi(epoch as i32),
            LrSchedule::Cosine { t_max, eta_min } => {
                let progress = epoch.min(t_max) as f32 / t_max.max(1) as f32;
                eta_min + (lr0 - eta_min) * (1.0 + (std::f32::consts::PI * progress).cos()) / 2.0
            }
        }
    }
}
