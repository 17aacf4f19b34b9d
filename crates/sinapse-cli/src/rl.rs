//! `sinapse rl cartpole`: trains a policy network on CartPole by policy gradients, saves it
//! with a plot of the returns, or plays a saved one.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use sinapse::rl::{self, Policy, PolicyCard, ReinforceConfig};

/// Options of `sinapse rl`.
#[derive(Args)]
pub struct RlArgs {
    /// The environment: cartpole (Gymnasium's CartPole-v1).
    env: String,
    /// Most training episodes (training stops once solved); with --play, episodes to play.
    #[arg(long)]
    episodes: Option<usize>,
    /// Seed of the networks' weights, the episodes' starts and the sampled actions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to save the policy directory [default: runs/cartpole].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Play the policy saved in this directory (greedy actions) and print its mean return.
    #[arg(long)]
    play: Option<PathBuf>,
    /// Print only the final lines.
    #[arg(long)]
    quiet: bool,
}

/// Training episodes by default, and played episodes with --play.
const TRAIN_EPISODES: usize = 1000;
const PLAY_EPISODES: usize = 100;

/// Runs the command.
pub fn run(args: RlArgs) -> Result<()> {
    if args.env != "cartpole" {
        bail!("unknown environment '{}' (valid: cartpole)", args.env);
    }
    if let Some(dir) = &args.play {
        let (policy, card) = Policy::load(dir).with_context(|| format!("loading policy {}", dir.display()))?;
        let episodes = args.episodes.unwrap_or(PLAY_EPISODES);
        let mean = rl::play(&policy, episodes, args.seed)?;
        outln!("policy {} ({}, {} episodes trained)", dir.display(), card.algorithm, card.episodes);
        outln!("mean return {mean:.1} over {episodes} episodes (greedy actions, seed {})", args.seed);
        return Ok(());
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from("runs").join("cartpole"));
    Policy::check_out_dir(&out)?;
    let cfg =
        ReinforceConfig { episodes: args.episodes.unwrap_or(TRAIN_EPISODES), seed: args.seed, ..Default::default() };
    if !args.quiet {
        outln!(
            "CartPole-v1, REINFORCE with a learned baseline: up to {} episodes, seed {}, solved at a mean return of {} over {} episodes",
            cfg.episodes,
            cfg.seed,
            cfg.solve_threshold,
            cfg.solve_window
        );
    }
    let start = std::time::Instant::now();
    let mut printing: Result<()> = Ok(());
    let outcome = rl::train(&cfg, &mut |r| {
        if !args.quiet && (r.episode % 50 == 0 || r.episode == 1) && printing.is_ok() {
            printing = (|| {
                outln!(
                    "episode {}: return {:.0}, mean of the last {} {:.1}",
                    r.episode,
                    r.episode_return,
                    cfg.solve_window,
                    r.mean_return
                );
                Ok(())
            })();
        }
    })?;
    printing?;
    let seconds = start.elapsed().as_secs_f64();
    let episodes = outcome.returns.len();
    let mean = outcome.mean_return(cfg.solve_window);
    let card = PolicyCard {
        format: 1,
        env: "CartPole-v1".into(),
        algorithm: "reinforce with a learned baseline".into(),
        hidden: outcome.policy.hidden,
        seed: cfg.seed,
        episodes,
        solved_after: outcome.solved_after,
        mean_return: mean,
    };
    let returns = outcome.returns.clone();
    outcome.policy.save(&out, &card, |dir| {
        let mut csv = String::from("episode,return\n");
        for (i, r) in returns.iter().enumerate() {
            csv.push_str(&format!("{},{r}\n", i + 1));
        }
        let path = dir.join("returns.csv");
        std::fs::write(&path, csv).map_err(|source| sinapse::Error::Io { path, source })?;
        crate::plot::returns(&dir.join("returns.png"), &returns, cfg.solve_window, cfg.solve_threshold)
    })?;
    outln!("saved policy, returns.csv and returns.png to {} ({seconds:.1} s of training)", out.display());
    match outcome.solved_after {
        Some(n) => outln!("solved after {n} episodes: mean return {mean:.1} over the last {}", cfg.solve_window),
        None => {
            outln!("not solved after {episodes} episodes: mean return {mean:.1} over the last {}", cfg.solve_window)
        }
    }
    Ok(())
}
