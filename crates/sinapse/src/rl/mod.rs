//! Reinforcement learning, the course's third kind of learning: an agent acts in an
//! environment and learns from the rewards it gets, not from labelled examples.
//!
//! [`cartpole`] is the environment (Gymnasium's `CartPole-v1`, exactly); [`reinforce`] trains
//! a Sinapse network as its policy by policy gradients with a learned baseline
//! (`sinapse rl cartpole` on the command line).

pub mod cartpole;
pub mod reinforce;

pub use cartpole::{CartPole, Step};
pub use reinforce::{play, train, Policy, PolicyCard, ReinforceConfig, ReinforceOutcome};
