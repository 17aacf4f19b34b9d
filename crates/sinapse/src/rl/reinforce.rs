//! REINFORCE with a learned baseline (Williams, 1992): policy gradients on CartPole.
//!
//! The policy is a Sinapse network from the observation to one logit per action; actions are
//! sampled from its softmax. After each episode, every step's return G_t = Σ γ^k r_{t+k} is
//! compared with a second network's estimate V(s_t) of it (the baseline): the advantage
//! A_t = G_t - V(s_t), normalised over the episode, says how much better than expected the
//! action turned out. Gradient descent on -Σ log π(a_t | s_t)·A_t makes better-than-expected
//! actions more likely; the baseline learns by mean squared error on the returns. Subtracting
//! a baseline leaves the gradient's expectation unchanged and lowers its variance.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::cartpole::{CartPole, ACTIONS, OBSERVATION_SIZE};
use crate::nn::{Linear, Mode, Module, Relu, Sequential};
use crate::optim::{Adam, Optimizer};
use crate::train::checkpoint;
use crate::{Error, Result, Rng, Tensor};

/// Settings of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct ReinforceConfig {
    /// Most episodes to train for (training stops once solved).
    pub episodes: usize,
    /// Seeds the networks' initial weights, the environment's starts and the sampled actions.
    pub seed: u64,
    /// Discount γ of future rewards.
    pub gamma: f32,
    /// Adam's learning rate for the policy.
    pub policy_lr: f32,
    /// Adam's learning rate for the baseline.
    pub value_lr: f32,
    /// Units of each network's hidden layer.
    pub hidden: usize,
    /// Solved: the mean return over this many consecutive episodes...
    pub solve_window: usize,
    /// ...reaches this (475 for CartPole-v1).
    pub solve_threshold: f32,
}

impl Default for ReinforceConfig {
    fn default() -> Self {
        ReinforceConfig {
            episodes: 1000,
            seed: 0,
            gamma: 0.99,
            policy_lr: 5e-3,
            value_lr: 1e-2,
            hidden: 128,
            solve_window: 100,
            solve_threshold: 475.0,
        }
    }
}

/// A policy: observation in, one logit per action out (`0.weight`, `0.bias`, `2.weight`,
/// `2.bias`: Linear, ReLU, Linear).
pub struct Policy {
    /// The network.
    pub network: Sequential,
    /// Units of its hidden layer.
    pub hidden: usize,
}

/// What a saved policy directory's `policy.toml` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCard {
    /// Format version.
    pub format: u32,
    /// The environment (`CartPole-v1`).
    pub env: String,
    /// How it was trained.
    pub algorithm: String,
    /// Units of the policy's hidden layer.
    pub hidden: usize,
    /// The training seed.
    pub seed: u64,
    /// Episodes trained.
    pub episodes: usize,
    /// The episode by which the last-100 mean return reached the threshold, if it did.
    pub solved_after: Option<usize>,
    /// Mean return over the last (up to) 100 training episodes.
    pub mean_return: f32,
}

/// The card's file in a policy directory.
pub const POLICY_CARD: &str = "policy.toml";
/// The weights' file in a policy directory.
pub const POLICY_WEIGHTS: &str = "policy.safetensors";

/// A policy directory as [`crate::atomic`] sees it: one whose `policy.toml` reads as a card.
const POLICY_DIR: crate::atomic::Owner<'static> =
    crate::atomic::Owner { what: "Sinapse policy directory", recognise: &is_policy_dir, legacy_names: &[] };

fn is_policy_dir(dir: &Path) -> bool {
    crate::data::files::read_text(&dir.join(POLICY_CARD)).is_ok_and(|t| toml::from_str::<PolicyCard>(&t).is_ok())
}

/// An MLP observation -> `hidden` (ReLU) -> `outputs`.
fn mlp(hidden: usize, outputs: usize, rng: &mut Rng) -> Result<Sequential> {
    Ok(Sequential::new()
        .add(Linear::new(OBSERVATION_SIZE, hidden, rng)?)
        .add(Relu)
        .add(Linear::new(hidden, outputs, rng)?))
}

impl Policy {
    /// A fresh policy with PyTorch's default initialisation.
    pub fn new(hidden: usize, rng: &mut Rng) -> Result<Policy> {
        if hidden == 0 {
            return Err(Error::invalid("policy", "the hidden layer needs at least one unit"));
        }
        Ok(Policy { network: mlp(hidden, ACTIONS, rng)?, hidden })
    }

    /// The action probabilities for one observation (no gradients).
    pub fn probabilities(&self, observation: &[f32; OBSERVATION_SIZE]) -> Result<Vec<f32>> {
        let _guard = crate::no_grad();
        let x = Tensor::from_vec(observation.to_vec(), &[1, OBSERVATION_SIZE])?;
        self.network.forward(&x, Mode::Eval)?.softmax(1)?.try_to_vec()
    }

    /// An action drawn from the policy's probabilities.
    pub fn sample(&self, observation: &[f32; OBSERVATION_SIZE], rng: &mut Rng) -> Result<usize> {
        let p = self.probabilities(observation)?;
        if p.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "the policy's action probabilities".into(), value: f32::NAN });
        }
        let u = rng.unit();
        let mut acc = 0.0;
        for (a, &pa) in p.iter().enumerate() {
            acc += pa;
            if u < acc {
                return Ok(a);
            }
        }
        Ok(p.len() - 1)
    }

    /// The most probable action.
    pub fn greedy(&self, observation: &[f32; OBSERVATION_SIZE]) -> Result<usize> {
        let p = self.probabilities(observation)?;
        Ok(p.iter().enumerate().fold(0, |best, (a, &v)| if v > p[best] { a } else { best }))
    }

    /// Writes a policy directory atomically: `policy.toml` (`card`), `policy.safetensors`, and
    /// whatever `extra` writes (returns, plots). An existing `dir` is replaced only when it is
    /// a policy directory holding only what a save wrote, or empty.
    pub fn save(&self, dir: &Path, card: &PolicyCard, extra: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let text = toml::to_string(card).map_err(|e| Error::invalid("save policy", e.to_string()))?;
        let weights = checkpoint::weights_to_bytes(&self.network.state_dict())?;
        crate::atomic::write_dir_atomically(dir, &POLICY_DIR, |tmp| {
            let write = |name: &str, bytes: &[u8]| {
                let p = tmp.join(name);
                std::fs::write(&p, bytes).map_err(|source| Error::Io { path: p, source })
            };
            write(POLICY_CARD, text.as_bytes())?;
            write(POLICY_WEIGHTS, &weights)?;
            extra(tmp)
        })
    }

    /// Checks before training that [`Policy::save`] may write to `dir` (see there).
    pub fn check_out_dir(dir: &Path) -> Result<()> {
        crate::atomic::check_replaceable(dir, &POLICY_DIR)
    }

    /// Reads a policy directory: the card, and the weights checked by name and shape.
    pub fn load(dir: &Path) -> Result<(Policy, PolicyCard)> {
        let card_path = dir.join(POLICY_CARD);
        let card: PolicyCard = toml::from_str(&crate::data::files::read_text(&card_path)?)
            .map_err(|e| Error::Format { path: card_path.clone(), msg: e.message().to_string() })?;
        if card.env != "CartPole-v1" {
            return Err(Error::Format { path: card_path, msg: format!("unknown environment '{}'", card.env) });
        }
        let policy = Policy::new(card.hidden, &mut Rng::seed(card.seed))?;
        let weights_path = dir.join(POLICY_WEIGHTS);
        checkpoint::load_into(&policy.network, &checkpoint::load_weights(&weights_path)?, &weights_path)?;
        Ok((policy, card))
    }
}

/// One finished training episode, as [`train`] reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpisodeReport {
    /// 1-based.
    pub episode: usize,
    /// Its return (steps the pole stayed up).
    pub episode_return: f32,
    /// Mean return over the last (up to) `solve_window` episodes.
    pub mean_return: f32,
}

/// What [`train`] returns.
pub struct ReinforceOutcome {
    /// The trained policy.
    pub policy: Policy,
    /// Each episode's return.
    pub returns: Vec<f32>,
    /// The episode by which the mean over `solve_window` episodes reached the threshold.
    pub solved_after: Option<usize>,
}

impl ReinforceOutcome {
    /// Mean return over the last (up to) `window` episodes.
    pub fn mean_return(&self, window: usize) -> f32 {
        mean_of_last(&self.returns, window)
    }
}

fn mean_of_last(v: &[f32], window: usize) -> f32 {
    let tail = &v[v.len().saturating_sub(window.max(1))..];
    if tail.is_empty() {
        0.0
    } else {
        tail.iter().sum::<f32>() / tail.len() as f32
    }
}

/// The discounted returns G_t = r_t + γ·G_{t+1} of one episode's rewards.
pub fn discounted_returns(rewards: &[f32], gamma: f32) -> Vec<f32> {
    let mut out = vec![0.0; rewards.len()];
    let mut g = 0.0f32;
    for (t, &r) in rewards.iter().enumerate().rev() {
        g = r + gamma * g;
        out[t] = g;
    }
    out
}

/// Trains a CartPole policy by REINFORCE with a learned baseline, one update per episode,
/// until solved (the mean return of `solve_window` consecutive episodes reaches
/// `solve_threshold`) or `episodes` run out; `on_episode` hears of every episode.
pub fn train(cfg: &ReinforceConfig, on_episode: &mut dyn FnMut(&EpisodeReport)) -> Result<ReinforceOutcome> {
    if cfg.episodes == 0 || cfg.solve_window == 0 || !(0.0..=1.0).contains(&cfg.gamma) {
        return Err(Error::invalid("reinforce", "needs episodes >= 1, solve_window >= 1 and gamma in [0, 1]"));
    }
    let mut rng = Rng::seed(cfg.seed);
    let policy = Policy::new(cfg.hidden, &mut rng)?;
    let value = mlp(cfg.hidden, 1, &mut rng)?;
    let mut policy_opt = Adam::new(policy.network.parameters(), cfg.policy_lr)?;
    let mut value_opt = Adam::new(value.parameters(), cfg.value_lr)?;
    let mut env = CartPole::default();
    let mut returns = Vec::with_capacity(cfg.episodes);
    let mut solved_after = None;
    for episode in 1..=cfg.episodes {
        // Play one episode with the current policy.
        let (mut states, mut actions, mut rewards) = (Vec::new(), Vec::new(), Vec::new());
        let mut obs = env.reset(&mut rng);
        loop {
            let action = policy.sample(&obs, &mut rng)?;
            let step = env.step(action)?;
            states.extend_from_slice(&obs);
            actions.push(action as f32);
            rewards.push(step.reward);
            obs = step.observation;
            if step.terminated || step.truncated {
                break;
            }
        }
        update(&policy, &value, &mut policy_opt, &mut value_opt, cfg.gamma, &states, &actions, &rewards)
            .map_err(|e| Error::invalid("reinforce", format!("episode {episode}: {e}")))?;
        let episode_return: f32 = rewards.iter().sum();
        returns.push(episode_return);
        let mean_return = mean_of_last(&returns, cfg.solve_window);
        on_episode(&EpisodeReport { episode, episode_return, mean_return });
        if returns.len() >= cfg.solve_window && mean_return >= cfg.solve_threshold {
            solved_after = Some(episode);
            break;
        }
    }
    Ok(ReinforceOutcome { policy, returns, solved_after })
}

/// One policy-gradient step and one baseline step from an episode.
#[allow(clippy::too_many_arguments)]
fn update(
    policy: &Policy,
    value: &Sequential,
    policy_opt: &mut Adam,
    value_opt: &mut Adam,
    gamma: f32,
    states: &[f32],
    actions: &[f32],
    rewards: &[f32],
) -> Result<()> {
    let t = rewards.len();
    let g = discounted_returns(rewards, gamma);
    let x = Tensor::from_vec(states.to_vec(), &[t, OBSERVATION_SIZE])?;
    // The baseline, fitted to the returns (scaled to about 1: returns reach 100).
    let scale = 1.0 / (1.0 - gamma).max(0.01);
    let targets = Tensor::from_vec(g.iter().map(|v| v / scale).collect(), &[t, 1])?;
    let v = value.forward(&x, Mode::Train)?;
    let baseline: Vec<f32> = v.try_to_vec()?.iter().map(|b| b * scale).collect();
    // Advantages, normalised over the episode (a one-step episode's is 0: no update).
    let adv: Vec<f32> = g.iter().zip(&baseline).map(|(g, b)| g - b).collect();
    let mean = adv.iter().sum::<f32>() / t as f32;
    let std = (adv.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / t as f32).sqrt();
    let adv: Vec<f32> = adv.iter().map(|a| (a - mean) / (std + 1e-8)).collect();
    let log_probs = policy.network.forward(&x, Mode::Train)?.log_softmax(1)?;
    let taken = log_probs.gather(1, &Tensor::from_vec(actions.to_vec(), &[t, 1])?)?;
    let policy_loss = (&taken * &Tensor::from_vec(adv, &[t, 1])?)?.mean_all()?.neg()?;
    let value_loss = crate::nn::loss::mse(&v, &targets)?;
    let grads = (&policy_loss + &value_loss)?.backward()?;
    policy_opt.step(&grads)?;
    value_opt.step(&grads)
}

/// Mean return of `episodes` episodes of `policy` acting greedily, starts seeded by `seed`.
pub fn play(policy: &Policy, episodes: usize, seed: u64) -> Result<f32> {
    if episodes == 0 {
        return Err(Error::invalid("play", "needs at least one episode"));
    }
    let mut rng = Rng::seed(seed);
    let mut env = CartPole::default();
    let mut total = 0.0;
    for _ in 0..episodes {
        let mut obs = env.reset(&mut rng);
        loop {
            let step = env.step(policy.greedy(&obs)?)?;
            total += step.reward;
            obs = step.observation;
            if step.terminated || step.truncated {
                break;
            }
        }
    }
    Ok(total / episodes as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_are_discounted_from_the_end() {
        let g = discounted_returns(&[1.0, 1.0, 1.0], 0.5);
        assert_eq!(g, vec![1.75, 1.5, 1.0]);
        assert_eq!(discounted_returns(&[], 0.9), Vec::<f32>::new());
    }
}
