//! Optimizers: how parameters move once their gradients are known.
//!
//! Each optimizer follows PyTorch's published update equations (see each type's docs), keeps
//! its per-parameter state (momentum, moment estimates) in the order of the parameter list it
//! was built with, and skips parameters that received no gradient.

mod adam;
mod clip;
mod rmsprop;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamConfig, AdamW};
pub use clip::clip_grad_norm;
pub use rmsprop::RmsProp;
pub use schedule::{LrSchedule, Per, Schedule};
pub use sgd::Sgd;

use crate::backend::OptimizerUpdate;
use crate::tensor::ParamUpdate;
use crate::{Error, Gradients, Result, Tensor};

/// The common interface of optimizers, used by the training loop.
pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &Gradients) -> Result<()>;
    /// The current learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (schedules call this once per epoch).
    fn set_lr(&mut self, lr: f32);
    /// Switches how [`Optimizer::step`] runs, for a training step captured into a CUDA graph
    /// ([`crate::train::FitConfig::cuda_graph`]); `Ok(false)` when this optimizer cannot
    /// (the default: only [`StepMode::Eager`]). The built-in optimizers can.
    fn set_step_mode(&mut self, mode: StepMode) -> Result<bool> {
        Ok(mode == StepMode::Eager)
    }
}

/// How [`Optimizer::step`] runs around a captured training step (a CUDA graph replays the
/// kernels it recorded with the arguments they had, so what changes from step to step, the
/// learning rate and Adam's bias corrections, must come from device memory instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StepMode {
    /// Each step queues its updates with their numbers as kernel arguments (the default).
    #[default]
    Eager,
    /// Each step writes its changing numbers to a device buffer and queues updates that read
    /// them there: the step being captured. (Captured, the numbers are written when the
    /// optimizer is switched to [`StepMode::StageOnly`], before the graph's first replay;
    /// switched back to `Eager` instead, the capture is taken as abandoned and the step
    /// counters are put back.)
    Staged,
    /// Each step only advances the counters and writes the numbers to the device buffer; the
    /// updates are the captured ones, run by the graph's replay that follows.
    StageOnly,
}

/// The device buffer a staged optimizer writes its changing numbers to.
struct Staged {
    mode: StepMode,
    /// [`crate::backend::STAGED`] numbers per parameter, where the parameters are.
    values: Tensor,
    /// The numbers of the last step, on the host.
    host: Vec<f32>,
    /// The numbers `values` holds (written only when they change: a constant learning rate
    /// costs no copy per step).
    written: Vec<f32>,
    /// The last step was captured and its numbers are not on the device yet.
    pending: bool,
    /// The step counters before the step being captured, put back if it is abandoned.
    saved_steps: Vec<i32>,
}

/// Per-parameter state buffers (momentum, moment estimates), made as zeros beside each
/// parameter, on its device, at its first update, and the count of each one's updates.
pub(crate) struct State {
    buffers: Vec<Vec<Tensor>>,
    /// Updates applied to each parameter (one without a gradient does not step, as in PyTorch).
    steps: Vec<i32>,
    staged: Option<Staged>,
}

impl State {
    /// No buffers yet, for `n` parameters.
    pub(crate) fn new(n: usize) -> State {
        State { buffers: vec![Vec::new(); n], steps: vec![0; n], staged: None }
    }

    /// True when parameter `i` has not been updated yet.
    pub(crate) fn is_fresh(&self, i: usize) -> bool {
        self.buffers[i].is_empty()
    }

    /// Updates of parameter `i` so far, counting the one being built.
    pub(crate) fn steps(&self, i: usize) -> i32 {
        self.steps[i]
    }

    /// Applies `update(i)` (the update for parameter `i`, asked for only when it has a
    /// gradient) to every parameter with a gradient, each as one fused pass (on a GPU, one
    /// launch for up to 16 parameters), or, staged, as [`StepMode`] says.
    pub(crate) fn step(
        &mut self,
        op: &'static str,
        params: &[Tensor],
        grads: &Gradients,
        mut update: impl FnMut(usize, &State) -> OptimizerUpdate,
    ) -> Result<()> {
        let mode = self.staged.as_ref().map_or(StepMode::Eager, |s| s.mode);
        let capturing = params.first().is_some_and(|p| crate::backend::capturing(p.device()));
        if let Some(s) = self.staged.as_mut().filter(|_| mode == StepMode::Staged) {
            s.saved_steps.clone_from(&self.steps);
            s.pending = capturing;
        }
        // A parameter counts a step only if its update is queued.
        let before = self.steps.clone();
        let result = self.step_counted(op, params, grads, &mut update, mode, capturing);
        if let Err((e, from)) = result {
            self.steps[from..].copy_from_slice(&before[from..]);
            return Err(e);
        }
        Ok(())
    }

    /// [`State::step`]; an error comes with the first parameter whose update was not queued.
    fn step_counted(
        &mut self,
        op: &'static str,
        params: &[Tensor],
        grads: &Gradients,
        update: &mut impl FnMut(usize, &State) -> OptimizerUpdate,
        mode: StepMode,
        capturing: bool,
    ) -> std::result::Result<(), (Error, usize)> {
        let prepared = self.prepare(op, params, grads, update, capturing).map_err(|e| (e, 0))?;
        if mode != StepMode::Eager && !capturing {
            // Written (queued) before the updates that read them.
            self.write_staged().map_err(|e| (e, 0))?;
        }
        if mode == StepMode::StageOnly {
            return Ok(());
        }
        // Every update in one call: on a GPU, one launch for many parameters.
        let items: Vec<ParamUpdate<'_>> = prepared
            .iter()
            .map(|(i, g, u)| ParamUpdate {
                param: &params[*i],
                grad: g,
                state: &self.buffers[*i],
                update: *u,
                staged: match (&self.staged, mode) {
                    (Some(s), StepMode::Staged) => Some((&s.values, i * crate::backend::STAGED)),
                    _ => None,
                },
            })
            .collect();
        Tensor::apply_updates(op, &items).map_err(|(e, k)| (e, prepared[k].0))
    }

    /// Each parameter with a gradient, its gradient and its update (its step counted, its
    /// state buffers made, its staged numbers kept on the host).
    fn prepare(
        &mut self,
        op: &'static str,
        params: &[Tensor],
        grads: &Gradients,
        update: &mut impl FnMut(usize, &State) -> OptimizerUpdate,
        capturing: bool,
    ) -> Result<Vec<(usize, Tensor, OptimizerUpdate)>> {
        let mut updates = Vec::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if p.shape() != g.shape() {
                return Err(Error::shapes(op, p.shape(), g.shape()));
            }
            self.steps[i] += 1;
            let u = update(i, self);
            let wanted = u.state_buffers();
            if self.buffers[i].len() != wanted {
                if capturing {
                    // Zeros made inside a capture would be made only when the graph runs.
                    return Err(Error::invalid(
                        op,
                        "the optimizer's state would be created inside a captured step: take one step \
                         before capturing",
                    ));
                }
                self.buffers[i] = (0..wanted).map(|_| p.zeros_like()).collect::<Result<_>>()?;
            }
            // The state lives where the parameter lives, also after `model.to(device)`.
            for s in &self.buffers[i] {
                s.move_to(p.device())?;
            }
            if let Some(s) = &mut self.staged {
                let at = i * crate::backend::STAGED;
                s.host[at..at + crate::backend::STAGED].copy_from_slice(&u.staged());
            }
            updates.push((i, g.clone(), u));
        }
        Ok(updates)
    }

    /// Switches the mode (see [`Optimizer::set_step_mode`]); the staged buffer is made beside
    /// the first parameter on the first switch away from `Eager`.
    pub(crate) fn set_mode(&mut self, mode: StepMode, params: &[Tensor]) -> Result<bool> {
        if mode == StepMode::Eager {
            if let Some(s) = self.staged.take() {
                if s.pending {
                    self.steps = s.saved_steps;
                }
            }
            return Ok(true);
        }
        let Some(first) = params.first() else { return Ok(false) };
        let staged = match self.staged.take() {
            Some(s) => s,
            None => {
                let n = params.len() * crate::backend::STAGED;
                Staged {
                    mode,
                    values: Tensor::zeros_on(&[n], first.device())?,
                    host: vec![0.0; n],
                    written: vec![0.0; n],
                    pending: false,
                    saved_steps: Vec::new(),
                }
            }
        };
        self.staged = Some(Staged { mode, ..staged });
        if mode == StepMode::StageOnly && self.staged.as_ref().is_some_and(|s| s.pending) {
            // The captured step's numbers, for the graph's first replay.
            self.write_staged()?;
        }
        Ok(true)
    }

    /// Copies the host's staged numbers to the device buffer.
    fn write_staged(&mut self) -> Result<()> {
        if let Some(s) = &mut self.staged {
            // Bit for bit: a -0.0 is not a 0.0.
            if !s.host.iter().zip(&s.written).all(|(a, b)| a.to_bits() == b.to_bits()) {
                s.values.write_host(&s.host)?;
                s.written.clone_from(&s.host);
            }
            s.pending = false;
        }
        Ok(())
    }
}

/// Refuses an empty parameter list: an optimizer over nothing would train nothing, silently
/// (a custom module that lists no parameters, say).
pub(crate) fn check_params(op: &'static str, params: &[Tensor]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::invalid(
            op,
            "no parameters to optimize: the model lists none (derive Parameters on a custom module, and \
             keep the tensors set_requires_grad(true) returns)",
        ));
    }
    Ok(())
}

/// Checks a hyper-parameter that must be a finite number >= 0 (or > 0 when `positive`).
pub(crate) fn check_hyper(op: &'static str, name: &str, v: f32, positive: bool) -> Result<()> {
    let ok = v.is_finite() && if positive { v > 0.0 } else { v >= 0.0 };
    if !ok {
        let need = if positive { "> 0" } else { ">= 0" };
        return Err(Error::invalid(op, format!("{name} must be a finite number {need}, got {v}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_reads_the_staged_numbers_not_its_arguments() {
        // SGD from w = 1 with g = 2: lr 0.1 as an argument, 0.5 staged; the staged one wins.
        let w = Tensor::from_vec(vec![1.0], &[1]).unwrap();
        let g = Tensor::from_vec(vec![2.0], &[1]).unwrap();
        let u = OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0, first_step: true };
        let staged = Tensor::from_vec(vec![9.0, 0.5, 1.0, 1.0], &[4]).unwrap();
        let step = |staged| {
            let item = ParamUpdate { param: &w, grad: &g, state: &[], update: u, staged: Some(staged) };
            Tensor::apply_updates("test", &[item])
        };
        step((&staged, 1)).unwrap();
        assert_eq!(w.to_vec(), vec![0.0]);
        // Past the end, or the parameter itself: refused.
        assert!(step((&staged, 2)).is_err());
        assert!(step((&w, 0)).is_err());
    }

    #[test]
    fn updates_of_several_parameters_are_checked_first_and_may_share_storages() {
        let u = OptimizerUpdate::Sgd { lr: 0.5, momentum: 0.0, nesterov: false, weight_decay: 0.0, first_step: true };
        let item = |param, grad| ParamUpdate { param, grad, state: &[], update: u, staged: None };
        // Two parameters viewing one storage (one at an offset) are updated one at a time.
        let base = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4]).unwrap();
        let (a, b) = (base.narrow(0, 0, 2).unwrap(), base.narrow(0, 2, 2).unwrap());
        let g = Tensor::from_vec(vec![2.0, 4.0], &[2]).unwrap();
        Tensor::apply_updates("test", &[item(&a, &g), item(&b, &g)]).unwrap();
        assert_eq!(base.to_vec(), vec![0.0, 0.0, 2.0, 2.0]);
        // One gradient read by two parameters of their own: one launch's worth, both right.
        let (c, d) = (Tensor::from_vec(vec![1.0, 1.0], &[2]).unwrap(), Tensor::from_vec(vec![3.0, 3.0], &[2]).unwrap());
        Tensor::apply_updates("test", &[item(&c, &g), item(&d, &g)]).unwrap();
        assert_eq!((c.to_vec(), d.to_vec()), (vec![0.0, -1.0], vec![2.0, 1.0]));
        // A wrong second item: nothing is queued, so the first item not queued is the first.
        let short = Tensor::from_vec(vec![1.0], &[1]).unwrap();
        let (e, at) = Tensor::apply_updates("test", &[item(&c, &g), item(&short, &g)]).unwrap_err();
        assert_eq!(at, 0, "{e}");
        assert_eq!(c.to_vec(), vec![0.0, -1.0]);
    }

    #[test]
    fn a_refused_step_counts_no_parameters_step() {
        // The second parameter is a transposed view (no in-place update): the step is refused
        // before anything is queued, so the first one's count must not move either (else its
        // next update would take the second step's bias corrections).
        let a = Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap();
        let b = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap().transpose(0, 1).unwrap();
        let params = [a.clone(), b.clone()];
        let mut grads = Gradients::default();
        grads.insert(&a, Tensor::from_vec(vec![0.5, 0.5], &[2]).unwrap());
        grads.insert(&b, Tensor::from_vec(vec![0.5; 4], &[2, 2]).unwrap());
        let mut state = State::new(2);
        let sgd = OptimizerUpdate::Sgd { lr: 0.1, momentum: 0.0, nesterov: false, weight_decay: 0.0, first_step: true };
        assert!(state.step("test", &params, &grads, |_, _| sgd).is_err());
        assert_eq!((state.steps(0), state.steps(1)), (0, 0));
        assert_eq!(a.to_vec(), vec![1.0, 2.0], "not updated");
    }

    #[test]
    fn a_staged_step_writes_each_parameters_numbers() {
        let p = vec![
            Tensor::from_vec(vec![1.0], &[1]).unwrap().set_requires_grad(true),
            Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap().set_requires_grad(true),
        ];
        let mut state = State::new(2);
        assert!(state.set_mode(StepMode::Staged, &p).unwrap());
        // Only the second parameter has a gradient: it alone steps (t = 1, then 2).
        let mut grads = Gradients::default();
        grads.insert(&p[1], Tensor::from_vec(vec![0.5, 0.5], &[2]).unwrap());
        let adam = |t: i32| OptimizerUpdate::Adam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            bias1: 1.0 - 0.9f32.powi(t),
            bias2: 1.0 - 0.999f32.powi(t),
        };
        for _ in 0..2 {
            state.step("test", &p, &grads, |i, s| adam(s.steps(i))).unwrap();
        }
        assert_eq!(state.steps, vec![0, 2]);
        let values = state.staged.as_ref().unwrap().values.to_vec();
        assert_eq!(values[3..], adam(2).staged(), "the second parameter's numbers, t = 2");
        assert_eq!(values[..3], [0.0; 3], "the first never stepped");
        assert!(!state.staged.as_ref().unwrap().pending, "written at once: nothing is being captured");
        // Back to eager: nothing was captured, so the counts stand.
        assert!(state.set_mode(StepMode::Eager, &p).unwrap());
        assert_eq!(state.steps, vec![0, 2]);
    }
}
