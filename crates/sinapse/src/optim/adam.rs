//! Adam and AdamW.

use super::{check_hyper, Optimizer, State, StepMode};
use crate::backend::OptimizerUpdate;
use crate::{Error, Gradients, Result, Tensor};

/// Settings shared by [`Adam`] and [`AdamW`].
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    /// Learning rate (PyTorch's default 1e-3).
    pub lr: f32,
    /// Decay of the first-moment estimate (0.9).
    pub beta1: f32,
    /// Decay of the second-moment estimate (0.999).
    pub beta2: f32,
    /// Added to the denominator for stability (1e-8).
    pub eps: f32,
    /// Weight decay: an L2 term in Adam, a decoupled shrink in AdamW.
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

impl AdamConfig {
    fn check(&self, op: &'static str) -> Result<()> {
        check_hyper(op, "lr", self.lr, true)?;
        check_hyper(op, "eps", self.eps, false)?;
        check_hyper(op, "weight_decay", self.weight_decay, false)?;
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(op, format!("{name} must be in [0, 1), got {b}")));
            }
        }
        Ok(())
    }
}

/// The moment estimates of one Adam-style optimizer (and, in [`State`], each parameter's
/// step count: one without a gradient does not step, as in PyTorch, so its bias correction
/// does not advance either).
struct Moments {
    cfg: AdamConfig,
    decoupled: bool,
    /// `[m, v]` per parameter.
    state: State,
}

impl Moments {
    fn step(&mut self, op: &'static str, params: &[Tensor], grads: &Gradients) -> Result<()> {
        let AdamConfig { lr, beta1, beta2, eps, weight_decay } = self.cfg;
        let decoupled = self.decoupled;
        self.state.step(op, params, grads, |i, state| {
            let t = state.steps(i);
            OptimizerUpdate::Adam {
                lr,
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
                bias1: 1.0 - beta1.powi(t),
                bias2: 1.0 - beta2.powi(t),
            }
        })
    }
}

/// Adam (Kingma & Ba, 2015), as PyTorch's `torch.optim.Adam`:
///
/// ```text
/// g ← g + weight_decay · w
/// m ← β1·m + (1 - β1)·g          v ← β2·v + (1 - β2)·g²
/// m̂ = m / (1 - β1^t)             v̂ = v / (1 - β2^t)
/// w ← w - lr · m̂ / (√v̂ + eps)
/// ```
pub struct Adam {
    params: Vec<Tensor>,
    state: Moments,
}

impl Adam {
    /// Adam with PyTorch's defaults and learning rate `lr`.
    pub fn new(params: Vec<Tensor>, lr: f32) -> Result<Adam> {
        Adam::with_config(params, AdamConfig { lr, ..AdamConfig::default() })
    }

    /// Adam with every setting given.
    pub fn with_config(params: Vec<Tensor>, cfg: AdamConfig) -> Result<Adam> {
        super::check_params("Adam", &params)?;
        cfg.check("Adam")?;
        let n = params.len();
        Ok(Adam { params, state: Moments { cfg, decoupled: false, state: State::new(n) } })
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let op = if self.state.decoupled { "AdamW::step" } else { "Adam::step" };
        self.state.step(op, &self.params, grads)
    }
    fn lr(&self) -> f32 {
        self.state.cfg.lr
    }
    fn set_lr(&mut self, lr: f32) {
        self.state.cfg.lr = lr;
    }
    fn set_step_mode(&mut self, mode: StepMode) -> Result<bool> {
        self.state.state.set_mode(mode, &self.params)
    }
}

/// AdamW (Loshchilov & Hutter, 2019), as PyTorch's `torch.optim.AdamW`: Adam whose weight
/// decay shrinks the weights directly, `w ← w·(1 - lr·weight_decay)`, instead of entering the
/// gradient (PyTorch's default decay 0.01).
pub struct AdamW(Adam);

impl AdamW {
    /// AdamW with PyTorch's defaults (weight decay 0.01) and learning rate `lr`.
    pub fn new(params: Vec<Tensor>, lr: f32) -> Result<AdamW> {
        AdamW::with_config(params, AdamConfig { lr, weight_decay: 0.01, ..AdamConfig::default() })
    }

    /// AdamW with every setting given.
    pub fn with_config(params: Vec<Tensor>, cfg: AdamConfig) -> Result<AdamW> {
        cfg.check("AdamW")?;
        let mut adam = Adam::with_config(params, cfg)?;
        adam.state.decoupled = true;
        Ok(AdamW(adam))
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        self.0.step(grads)
    }
    fn lr(&self) -> f32 {
        self.0.lr()
    }
    fn set_lr(&mut self, lr: f32) {
        self.0.set_lr(lr);
    }
    fn set_step_mode(&mut self, mode: StepMode) -> Result<bool> {
        self.0.set_step_mode(mode)
    }
}
