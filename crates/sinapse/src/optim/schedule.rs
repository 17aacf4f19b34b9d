//! Learning-rate schedules: a shape ([`LrSchedule`]), stepped once per epoch or once per
//! batch, after an optional linear warmup ([`Schedule`]).

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

    /// The learning rate after `epoch` completed steps (epochs, or batches when stepped per
    /// batch), from the base rate `lr0`.
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

/// When a schedule takes its steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Once per epoch (the count is epochs).
    #[default]
    Epoch,
    /// Once per batch, as PyTorch's schedulers are usually stepped (the count is batches).
    Batch,
}

/// A learning-rate schedule as training applies it: the shape `kind`, stepped `per` epoch or
/// batch, after `warmup` steps of linear warmup (the rate rises from `lr0 / warmup` to `lr0`,
/// then `kind` starts from `lr0`), as `get_*_schedule_with_warmup` and PyTorch's
/// `LinearLR` + `SequentialLR` do.
///
/// In a model spec, one `[schedule]` table: `type` and its settings as for [`LrSchedule`],
/// plus `per = "epoch" | "batch"` (default epoch) and `warmup` (default 0).
#[derive(Clone, Copy, Debug, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "ScheduleTable", into = "ScheduleTable")]
pub struct Schedule {
    /// The shape of the schedule.
    pub kind: LrSchedule,
    /// When it steps.
    pub per: Per,
    /// Steps of linear warmup first (0: none).
    pub warmup: usize,
}

impl From<LrSchedule> for Schedule {
    fn from(kind: LrSchedule) -> Schedule {
        Schedule { kind, per: Per::Epoch, warmup: 0 }
    }
}

impl Schedule {
    /// `kind` stepped once per batch, after `warmup` batches of linear warmup.
    pub fn per_batch(kind: LrSchedule, warmup: usize) -> Schedule {
        Schedule { kind, per: Per::Batch, warmup }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.kind.validate()
    }

    /// The learning rate after `step` completed steps (in the unit of `per`).
    pub fn lr_at(&self, lr0: f32, step: usize) -> f32 {
        if step < self.warmup {
            lr0 * (step + 1) as f32 / self.warmup as f32
        } else {
            self.kind.lr_at(lr0, step - self.warmup)
        }
    }
}

/// A `[schedule]` table as a spec writes it: one flat table for the kind and its settings.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleTable {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gamma: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t_max: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eta_min: Option<f32>,
    #[serde(default)]
    per: Per,
    #[serde(default)]
    warmup: usize,
}

impl TryFrom<ScheduleTable> for Schedule {
    type Error = String;
    fn try_from(t: ScheduleTable) -> std::result::Result<Schedule, String> {
        let given = [
            ("step_size", t.step_size.is_some()),
            ("gamma", t.gamma.is_some()),
            ("t_max", t.t_max.is_some()),
            ("eta_min", t.eta_min.is_some()),
        ];
        let takes: &[&str] = match t.kind.as_str() {
            "constant" => &[],
            "step" => &["step_size", "gamma"],
            "exponential" => &["gamma"],
            "cosine" => &["t_max", "eta_min"],
            other => {
                return Err(format!(
                    "unknown schedule type `{other}`, expected one of `constant`, `step`, `exponential`, `cosine`"
                ))
            }
        };
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !takes.contains(f)) {
            return Err(format!("schedule type `{}` takes no `{field}` (it takes: {})", t.kind, takes.join(", ")));
        }
        let need = |v: Option<f32>, name: &str| v.ok_or_else(|| format!("schedule type `{}` needs `{name}`", t.kind));
        let kind = match t.kind.as_str() {
            "constant" => LrSchedule::Constant,
            "step" => LrSchedule::Step {
                step_size: t.step_size.ok_or_else(|| "schedule type `step` needs `step_size`".to_string())?,
                gamma: need(t.gamma, "gamma")?,
            },
            "exponential" => LrSchedule::Exponential { gamma: need(t.gamma, "gamma")? },
            _ => LrSchedule::Cosine {
                t_max: t.t_max.ok_or_else(|| "schedule type `cosine` needs `t_max`".to_string())?,
                eta_min: t.eta_min.unwrap_or(0.0),
            },
        };
        Ok(Schedule { kind, per: t.per, warmup: t.warmup })
    }
}

impl From<Schedule> for ScheduleTable {
    fn from(s: Schedule) -> ScheduleTable {
        let mut t = ScheduleTable {
            kind: String::new(),
            step_size: None,
            gamma: None,
            t_max: None,
            eta_min: None,
            per: s.per,
            warmup: s.warmup,
        };
        t.kind = match s.kind {
            LrSchedule::Constant => "constant",
            LrSchedule::Step { step_size, gamma } => {
                (t.step_size, t.gamma) = (Some(step_size), Some(gamma));
                "step"
            }
            LrSchedule::Exponential { gamma } => {
                t.gamma = Some(gamma);
                "exponential"
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                (t.t_max, t.eta_min) = (Some(t_max), Some(eta_min));
                "cosine"
            }
        }
        .to_string();
        t
    }
}
