//! Reinforcement learning: CartPole against Gymnasium's own trajectories, and REINFORCE
//! solving it.

use sinapse::rl::cartpole::CartPole;
use sinapse::rl::{self, Policy, PolicyCard, ReinforceConfig};
use sinapse::Rng;

/// Every trajectory of `tests/fixtures/cartpole_gymnasium.json` (recorded from Gymnasium's
/// CartPole-v1 by `make_cartpole_fixture.py`): its start and each (action, state after,
/// reward, terminated, truncated).
#[test]
fn cartpole_replays_gymnasium_to_1e_6() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/cartpole_gymnasium.json"))
        .expect("fixture");
    let fixture: serde_json::Value = serde_json::from_str(&text).expect("json");
    let trajectories = fixture["trajectories"].as_array().expect("trajectories");
    assert!(trajectories.len() >= 10);
    let floats = |v: &serde_json::Value| -> [f64; 4] {
        let a = v.as_array().expect("array");
        std::array::from_fn(|i| a[i].as_f64().expect("number"))
    };
    let (mut steps, mut truncations, mut terminations) = (0, 0, 0);
    let mut worst = 0.0f64;
    for (k, t) in trajectories.iter().enumerate() {
        let mut env = CartPole::from_state(floats(&t["start"]));
        for (i, s) in t["steps"].as_array().expect("steps").iter().enumerate() {
            let step = env.step(s["action"].as_u64().expect("action") as usize).expect("step");
            let want = floats(&s["state"]);
            let got = env.state();
            for d in 0..4 {
                assert!((got[d] - want[d]).abs() <= 1e-6, "trajectory {k}, step {}: state {got:?} vs {want:?}", i + 1);
                // The observation is the state rounded to f32 (the state's last-digit
                // differences from NumPy's sin and cos can round either way).
                assert!((f64::from(step.observation[d]) - want[d]).abs() <= 1e-6, "observation {:?}", step.observation);
                worst = worst.max((got[d] - want[d]).abs());
            }
            assert_eq!(step.reward as f64, s["reward"].as_f64().unwrap(), "trajectory {k}, step {}", i + 1);
            assert_eq!(step.terminated, s["terminated"].as_bool().unwrap(), "trajectory {k}, step {}", i + 1);
            assert_eq!(step.truncated, s["truncated"].as_bool().unwrap(), "trajectory {k}, step {}", i + 1);
            terminations += usize::from(step.terminated);
            truncations += usize::from(step.truncated);
            steps += 1;
        }
        assert!(env.step(0).is_err(), "trajectory {k}: a step after the end is an error");
    }
    assert!(steps > 1000 && terminations >= 8 && truncations >= 2, "{steps} steps, {terminations}, {truncations}");
    println!("{steps} steps replayed; largest state difference from Gymnasium {worst:.1e}");
}

#[test]
fn cartpole_refuses_bad_actions_and_starts_small() {
    let mut env = CartPole::default();
    let e = env.step(2).unwrap_err().to_string();
    assert!(e.contains("action 2"), "{e}");
    let mut rng = Rng::seed(3);
    for _ in 0..100 {
        let obs = env.reset(&mut rng);
        assert!(obs.iter().all(|v| (-0.05..0.05).contains(v)), "{obs:?}");
    }
    // Pushing one way only tips the pole within the limit.
    env.reset(&mut rng);
    let mut n = 0;
    while !env.step(1).unwrap().terminated {
        n += 1;
    }
    assert!(n < 50, "{n} steps");
}

/// The target: solved (mean return >= 475 over 100 consecutive episodes) within 1,000
/// episodes. Seed 0; the README's figures give seeds 0, 1 and 2.
#[test]
fn reinforce_solves_cartpole() {
    let cfg = ReinforceConfig { seed: 0, ..Default::default() };
    let mut seen = 0;
    let outcome = rl::train(&cfg, &mut |r| {
        seen += 1;
        assert_eq!(r.episode, seen);
    })
    .unwrap();
    let solved = outcome.solved_after.expect("solved within 1000 episodes");
    assert!((100..=1000).contains(&solved), "{solved}");
    assert_eq!(outcome.returns.len(), solved, "training stops once solved");
    assert!(outcome.mean_return(100) >= 475.0);
    // Early episodes are short: learning, not luck, made the difference.
    let first: f32 = outcome.returns[..20].iter().sum::<f32>() / 20.0;
    assert!(first < 100.0, "{first}");
    let played = rl::play(&outcome.policy, 20, 1).unwrap();
    assert!(played >= 475.0, "greedy play {played}");

    // Saved and loaded, the policy plays the same.
    let dir = std::env::temp_dir().join(format!("sinapse-rl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let card = PolicyCard {
        format: 1,
        env: "CartPole-v1".into(),
        algorithm: "test".into(),
        hidden: outcome.policy.hidden,
        seed: 0,
        episodes: solved,
        solved_after: Some(solved),
        mean_return: outcome.mean_return(100),
    };
    outcome.policy.save(&dir, &card, |_| Ok(())).unwrap();
    let (loaded, card_back) = Policy::load(&dir).unwrap();
    assert_eq!(card_back, card);
    assert_eq!(rl::play(&loaded, 20, 1).unwrap(), played);
    // A folder that is not a policy directory is not overwritten.
    let other = std::env::temp_dir().join(format!("sinapse-rl-other-{}", std::process::id()));
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    assert!(outcome.policy.save(&other, &card, |_| Ok(())).is_err());
    assert_eq!(std::fs::read_to_string(other.join("notes.txt")).unwrap(), "mine");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}
