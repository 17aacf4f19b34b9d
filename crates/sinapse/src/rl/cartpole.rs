//! CartPole: a pole hinged on a cart that moves along a track; the agent pushes the cart left
//! or right and earns 1 for every step the pole stays up (Barto, Sutton and Anderson, 1983).
//!
//! The dynamics, limits and reward are exactly those of Gymnasium's `CartPole-v1` (checked by
//! replaying trajectories recorded from Gymnasium, `tests/rl.rs`): the equations of motion of
//! Florian's correction of the 1983 paper, integrated by Euler steps of 0.02 s in f64; the
//! episode terminates when the pole leans past 12 degrees or the cart leaves ±2.4, and is
//! truncated after 500 steps. Observations are the state `[x, ẋ, θ, θ̇]` rounded to f32, as
//! Gymnasium returns them.

use crate::{Error, Result, Rng};

/// g, m/s².
const GRAVITY: f64 = 9.8;
/// Mass of the cart, kg.
const MASS_CART: f64 = 1.0;
/// Mass of the pole, kg.
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_CART + MASS_POLE;
/// Half the pole's length, m.
const HALF_LENGTH: f64 = 0.5;
const POLE_MASS_LENGTH: f64 = MASS_POLE * HALF_LENGTH;
/// The push, N.
const FORCE: f64 = 10.0;
/// Seconds per step.
const TAU: f64 = 0.02;
/// The pole falls past 12 degrees.
pub const THETA_LIMIT: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
/// The cart leaves the track past ±2.4 m.
pub const X_LIMIT: f64 = 2.4;
/// Episodes are truncated after this many steps (Gymnasium's `max_episode_steps`).
pub const MAX_STEPS: usize = 500;
/// Size of an observation.
pub const OBSERVATION_SIZE: usize = 4;
/// Number of actions: 0 pushes left, 1 pushes right.
pub const ACTIONS: usize = 2;

/// What one step returns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The state after the step, as f32.
    pub observation: [f32; OBSERVATION_SIZE],
    /// 1 for every step, the last one included.
    pub reward: f32,
    /// The pole fell or the cart left the track.
    pub terminated: bool,
    /// The step limit was reached.
    pub truncated: bool,
}

/// The environment's state and step count.
#[derive(Clone, Debug, PartialEq)]
pub struct CartPole {
    state: [f64; OBSERVATION_SIZE],
    steps: usize,
    over: bool,
}

impl Default for CartPole {
    fn default() -> Self {
        CartPole::from_state([0.0; OBSERVATION_SIZE])
    }
}

impl CartPole {
    /// An environment in `state` (`[x, ẋ, θ, θ̇]`), at step 0.
    pub fn from_state(state: [f64; OBSERVATION_SIZE]) -> CartPole {
        CartPole { state, steps: 0, over: false }
    }

    /// Starts an episode: each state variable uniform in [-0.05, 0.05), as Gymnasium's reset.
    pub fn reset(&mut self, rng: &mut Rng) -> [f32; OBSERVATION_SIZE] {
        self.state = std::array::from_fn(|_| f64::from(rng.uniform(-0.05, 0.05)));
        self.steps = 0;
        self.over = false;
        self.observation()
    }

    /// The state `[x, ẋ, θ, θ̇]` in full precision.
    pub fn state(&self) -> [f64; OBSERVATION_SIZE] {
        self.state
    }

    /// The state as the agent sees it (f32).
    pub fn observation(&self) -> [f32; OBSERVATION_SIZE] {
        self.state.map(|v| v as f32)
    }

    /// Steps taken in this episode.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Pushes the cart left (action 0) or right (1) for one step. An action other than 0 or
    /// 1, or a step after the episode ended, is an error.
    pub fn step(&mut self, action: usize) -> Result<Step> {
        if action >= ACTIONS {
            return Err(Error::invalid("cartpole", format!("action {action} is not 0 (left) or 1 (right)")));
        }
        if self.over {
            return Err(Error::invalid("cartpole", "step after the episode ended; call reset"));
        }
        let [x, x_dot, theta, theta_dot] = self.state;
        let force = if action == 1 { FORCE } else { -FORCE };
        let (sin, cos) = (theta.sin(), theta.cos());
        // Each product grouped as Gymnasium's (NumPy's np.square(v) is one rounded v·v), so
        // that the f64 results agree to the last digits and long episodes do not drift.
        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sin) / TOTAL_MASS;
        let theta_acc =
            (GRAVITY * sin - cos * temp) / (HALF_LENGTH * (4.0 / 3.0 - MASS_POLE * (cos * cos) / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS;
        // Euler: positions move with the old velocities.
        self.state = [x + TAU * x_dot, x_dot + TAU * x_acc, theta + TAU * theta_dot, theta_dot + TAU * theta_acc];
        self.steps += 1;
        let [x, _, theta, _] = self.state;
        let terminated = !(-X_LIMIT..=X_LIMIT).contains(&x) || !(-THETA_LIMIT..=THETA_LIMIT).contains(&theta);
        // As Gymnasium's TimeLimit: the limit truncates whether or not the pole also fell.
        let truncated = self.steps >= MAX_STEPS;
        self.over = terminated || truncated;
        Ok(Step { observation: self.observation(), reward: 1.0, terminated, truncated })
    }
}
