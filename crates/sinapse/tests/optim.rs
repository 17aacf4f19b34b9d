//! Optimizers, schedules and clipping, one step at a time against the published update
//! equations (PyTorch's documentation), with the numbers worked out by hand.

use sinapse::optim::{clip_grad_norm, Adam, AdamConfig, AdamW, LrSchedule, Optimizer, RmsProp, Sgd, StepMode};
use sinapse::{Result, Tensor};

/// A scalar parameter starting at 1.
fn param() -> Tensor {
    Tensor::from_vec(vec![1.0], &[1]).unwrap().set_requires_grad(true)
}

/// Runs `steps` steps on L = w² (dL/dw = 2w) or, with `constant`, on L = 2w (dL/dw = 2); returns w after each step.
fn run(w: &Tensor, opt: &mut dyn Optimizer, steps: usize, constant: bool) -> Vec<f32> {
    (0..steps)
        .map(|_| {
            let loss = if constant { w.mul_scalar(2.0) } else { w.mul(w) }.and_then(|l| l.sum_all()).unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            w.to_vec()[0]
        })
        .collect()
}

fn close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 2e-6, "got {got:?}, want {want:?}");
    }
}

#[test]
fn sgd_plain_momentum_nesterov_and_weight_decay() -> Result<()> {
    // Plain: w1 = 1 - 0.1·2 = 0.8, w2 = 0.8 - 0.1·1.6 = 0.64.
    let w = param();
    close(&run(&w, &mut Sgd::new(vec![w.clone()], 0.1)?, 2, false), &[0.8, 0.64]);
    // Momentum 0.9: b1 = g1 = 2, w1 = 0.8; g2 = 1.6, b2 = 0.9·2 + 1.6 = 3.4, w2 = 0.8 - 0.34 = 0.46.
    let w = param();
    close(&run(&w, &mut Sgd::with_options(vec![w.clone()], 0.1, 0.9, false, 0.0)?, 2, false), &[0.8, 0.46]);
    // Nesterov: b1 = 2, step = 2 + 0.9·2 = 3.8, w1 = 0.62; g2 = 1.24, b2 = 1.8 + 1.24 = 3.04,
    // step = 1.24 + 0.9·3.04 = 3.976, w2 = 0.62 - 0.3976 = 0.2224.
    let w = param();
    close(&run(&w, &mut Sgd::with_options(vec![w.clone()], 0.1, 0.9, true, 0.0)?, 2, false), &[0.62, 0.2224]);
    // Weight decay 0.1: g = 2w + 0.1w = 2.1w, w1 = 1 - 0.21 = 0.79, w2 = 0.79·0.79 = 0.6241.
    let w = param();
    close(&run(&w, &mut Sgd::with_options(vec![w.clone()], 0.1, 0.0, false, 0.1)?, 2, false), &[0.79, 0.6241]);
    assert!(Sgd::with_options(vec![], 0.1, 0.0, true, 0.0).is_err(), "Nesterov needs momentum");
    assert!(Sgd::with_options(vec![], -1.0, 0.0, false, 0.0).is_err());
    Ok(())
}

#[test]
fn adam_follows_kingma_and_ba() -> Result<()> {
    // Step 1, g = 2: m = 0.2, v = 0.004, m̂ = 2, v̂ = 4, w = 1 - 0.1·2/2 = 0.9.
    // Step 2, g = 1.8: m = 0.36, v = 0.007236, m̂ = 1.894737, v̂ = 3.619810, w = 0.800412.
    let w = param();
    let mut adam = Adam::new(vec![w.clone()], 0.1)?;
    close(&run(&w, &mut adam, 3, false), &[0.9000000005, 0.8004122287, 0.7015862729]);
    // L2 weight decay 0.5 enters the gradient: on L = 2w, g = 2 + 0.5w.
    let w = param();
    let cfg = AdamConfig { lr: 0.1, weight_decay: 0.5, ..AdamConfig::default() };
    close(&run(&w, &mut Adam::with_config(vec![w.clone()], cfg)?, 2, true), &[0.9, 0.8000577575]);
    let w = param();
    close(&run(&w, &mut Adam::new(vec![w.clone()], 0.1)?, 2, true), &[0.9, 0.8]);
    assert!(Adam::with_config(vec![], AdamConfig { beta1: 1.0, ..AdamConfig::default() }).is_err());
    Ok(())
}

#[test]
fn adamw_decays_the_weights_directly() -> Result<()> {
    // Step 1: w ← 1·(1 - 0.1·0.1) = 0.99, then the Adam step of size lr = 0.1: w = 0.89.
    // Step 2: g = 2·0.89 = 1.78, w ← 0.89·0.99, then the Adam step: w = 0.781572.
    let w = param();
    let cfg = AdamConfig { lr: 0.1, weight_decay: 0.1, ..AdamConfig::default() };
    close(&run(&w, &mut AdamW::with_config(vec![w.clone()], cfg)?, 2, false), &[0.89, 0.7815718559]);
    Ok(())
}

#[test]
fn rmsprop_with_and_without_momentum() -> Result<()> {
    // Step 1, g = 2: v = 0.01·4 = 0.04, w = 1 - 0.01·2/0.2 = 0.9.
    // Step 2, g = 1.8: v = 0.0396 + 0.0324 = 0.072, w = 0.9 - 0.01·1.8/0.268328 = 0.832918.
    let w = param();
    close(&run(&w, &mut RmsProp::new(vec![w.clone()], 0.01)?, 2, false), &[0.900000005, 0.832917968]);
    // Momentum 0.9: b2 = 0.9·10 + 1.8/0.268328 = 15.708204, w2 = 0.9 - 0.157082 = 0.742918.
    let w = param();
    let mut opt = RmsProp::with_options(vec![w.clone()], 0.01, 0.99, 1e-8, 0.9, 0.0)?;
    close(&run(&w, &mut opt, 2, false), &[0.900000005, 0.742917972]);
    Ok(())
}

#[test]
fn schedules_match_their_formulas() {
    let at = |s: LrSchedule| (0..6).map(|e| s.lr_at(1.0, e) as f64).collect::<Vec<_>>();
    let approx = |got: Vec<f64>, want: &[f64]| {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    };
    approx(at(LrSchedule::Step { step_size: 2, gamma: 0.5 }), &[1.0, 1.0, 0.5, 0.5, 0.25, 0.25]);
    approx(at(LrSchedule::Exponential { gamma: 0.9 }), &[1.0, 0.9, 0.81, 0.729, 0.6561, 0.59049]);
    // 0.5·(1 + cos(π·e/4)): 1, 0.853553, 0.5, 0.146447, 0, then held at eta_min.
    approx(at(LrSchedule::Cosine { t_max: 4, eta_min: 0.0 }), &[1.0, 0.8535534, 0.5, 0.1464466, 0.0, 0.0]);
    approx(at(LrSchedule::Constant), &[1.0; 6]);
    assert!(LrSchedule::Step { step_size: 0, gamma: 0.5 }.validate().is_err());
    assert!(LrSchedule::Cosine { t_max: 0, eta_min: 0.0 }.validate().is_err());
}

#[test]
fn clipping_scales_the_global_norm() {
    let a = Tensor::from_vec(vec![1.0], &[1]).unwrap().set_requires_grad(true);
    let b = Tensor::from_vec(vec![1.0], &[1]).unwrap().set_requires_grad(true);
    // L = 3a + 4b: gradients 3 and 4, global norm 5.
    let loss = a.mul_scalar(3.0).unwrap().add(&b.mul_scalar(4.0).unwrap()).unwrap().sum_all().unwrap();
    let mut grads = loss.backward().unwrap();
    let params = [a.clone(), b.clone()];
    assert_eq!(clip_grad_norm(&params, &mut grads, 10.0).unwrap(), 5.0);
    assert_eq!(grads.get(&a).unwrap().to_vec(), vec![3.0], "under the limit: unchanged");
    assert_eq!(clip_grad_norm(&params, &mut grads, 1.0).unwrap(), 5.0);
    let (ga, gb) = (grads.get(&a).unwrap().to_vec()[0], grads.get(&b).unwrap().to_vec()[0]);
    assert!((ga - 0.6).abs() < 1e-6 && (gb - 0.8).abs() < 1e-6, "{ga} {gb}");
    assert!(clip_grad_norm(&params, &mut grads, 0.0).is_err());
    // Gradients whose squares overflow f32 still have a finite norm, and clip to the limit.
    let mut huge = sinapse::Gradients::default();
    huge.insert(&a, Tensor::from_vec(vec![3e20], &[1]).unwrap());
    huge.insert(&b, Tensor::from_vec(vec![4e20], &[1]).unwrap());
    let norm = clip_grad_norm(&params, &mut huge, 1.0).unwrap();
    assert!((norm / 5e20 - 1.0).abs() < 1e-6, "norm {norm}");
    let ga = huge.get(&a).unwrap().to_vec()[0];
    assert!((ga - 0.6).abs() < 1e-6, "{ga}");
}

#[test]
fn a_failed_step_changes_nothing() {
    // A gradient of the wrong shape is an error, and Adam's step count does not advance: the
    // next good step is still its first (w1 = 1 - lr·sign(g) = 0.9, as for any first step).
    let w = Tensor::from_vec(vec![1.0], &[1]).unwrap().set_requires_grad(true);
    let mut opt = Adam::new(vec![w.clone()], 0.1).unwrap();
    let mut bad = sinapse::Gradients::default();
    bad.insert(&w, Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
    assert!(opt.step(&bad).unwrap_err().to_string().contains("[1] vs [2]"));
    assert_eq!(w.to_vec(), vec![1.0]);
    let mut good = sinapse::Gradients::default();
    good.insert(&w, Tensor::from_vec(vec![2.0], &[1]).unwrap());
    opt.step(&good).unwrap();
    assert!((w.to_vec()[0] - 0.9).abs() < 1e-6, "{:?}", w.to_vec());
}

#[test]
fn schedules_step_per_batch_after_a_linear_warmup() {
    use sinapse::optim::{Per, Schedule};
    // 4 warmup steps reach the base rate, then the cosine runs from it over 4 steps.
    let s = Schedule::per_batch(LrSchedule::Cosine { t_max: 4, eta_min: 0.0 }, 4);
    let lrs: Vec<f64> = (0..9).map(|k| s.lr_at(1.0, k) as f64).collect();
    let want = [0.25, 0.5, 0.75, 1.0, 1.0, 0.8535534, 0.5, 0.1464466, 0.0];
    assert!(lrs.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{lrs:?}");
    assert_eq!(Schedule::from(LrSchedule::Constant).per, Per::Epoch);
}

#[test]
fn fit_moves_the_rate_every_batch_when_asked() {
    use sinapse::data::Dataset;
    use sinapse::nn::{Linear, Module};
    use sinapse::optim::Schedule;
    use sinapse::train::{Task, Trainer};
    let mut rng = sinapse::Rng::seed(0);
    let data = Dataset::new(Tensor::rand_normal(&[40, 2], 0.0, 1.0, &mut rng).unwrap(), Tensor::zeros(&[40])).unwrap();
    let model = Linear::new(2, 1, &mut rng).unwrap();
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    // 2 epochs of 4 batches, per batch with 2 warmup batches: an epoch cosine would have two
    // rates; here each epoch starts at its own batch-count rate.
    let trainer = Trainer::new(Task::Regression)
        .epochs(2)
        .batch_size(10)
        .schedule(Schedule::per_batch(LrSchedule::Cosine { t_max: 6, eta_min: 0.0 }, 2));
    let history = trainer.fit(&model, &mut opt, &data).unwrap();
    let starts: Vec<f32> = history.records.iter().map(|r| r.lr).collect();
    // Epoch 1 starts at warmup step 0 (0.1·1/2); epoch 2 at batch 4, the cosine's step 2.
    let want = [0.05, 0.1 * (1.0 + (std::f32::consts::PI * 2.0 / 6.0).cos()) / 2.0];
    assert!((starts[0] - want[0]).abs() < 1e-6 && (starts[1] - want[1]).abs() < 1e-6, "{starts:?}");
    // The optimizer ends on the rate of the last batch (step 7 = cosine step 5).
    let last = 0.1 * (1.0 + (std::f32::consts::PI * 5.0 / 6.0).cos()) / 2.0;
    assert!((opt.lr() - last).abs() < 1e-6, "{}", opt.lr());
}

/// Two parameters of a few values each, the same for every optimizer compared.
fn pair() -> Vec<Tensor> {
    vec![
        Tensor::from_vec(vec![1.0, -0.5, 0.25], &[3]).unwrap().set_requires_grad(true),
        Tensor::from_vec(vec![0.75, 2.0], &[2]).unwrap().set_requires_grad(true),
    ]
}

/// Steps of L = Σ w³ on `params` (gradients 3w², different every step), the learning rate
/// changed halfway; the parameters' values after each step.
fn cubic_steps(params: &[Tensor], opt: &mut dyn Optimizer) -> Vec<Vec<f32>> {
    (0..6)
        .map(|k| {
            if k == 3 {
                opt.set_lr(opt.lr() * 0.5);
            }
            let loss = params
                .iter()
                .map(|w| w.mul(w).and_then(|w2| w2.mul(w)).and_then(|c| c.sum_all()).unwrap())
                .reduce(|a, b| a.add(&b).unwrap())
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            params.iter().flat_map(|w| w.to_vec()).collect()
        })
        .collect()
}

#[test]
fn staged_numbers_give_the_eager_updates_bit_for_bit() {
    // What a captured step (CUDA graph) runs: the learning rate, Adam's bias corrections and
    // SGD's first-step flag read from a buffer the optimizer writes each step, not passed.
    type Make = fn(Vec<Tensor>) -> Box<dyn Optimizer>;
    let makers: [(&str, Make); 5] = [
        ("sgd", |p| Box::new(Sgd::new(p, 0.05).unwrap())),
        ("sgd momentum nesterov", |p| Box::new(Sgd::with_options(p, 0.05, 0.9, true, 0.01).unwrap())),
        ("adam", |p| Box::new(Adam::new(p, 0.1).unwrap())),
        ("adamw", |p| Box::new(AdamW::new(p, 0.1).unwrap())),
        ("rmsprop momentum", |p| Box::new(RmsProp::with_options(p, 0.01, 0.9, 1e-8, 0.5, 0.01).unwrap())),
    ];
    for (name, make) in makers {
        let (eager_params, staged_params) = (pair(), pair());
        let mut eager = make(eager_params.clone());
        let mut staged = make(staged_params.clone());
        assert!(staged.set_step_mode(StepMode::Staged).unwrap(), "{name} stages its numbers");
        let want = cubic_steps(&eager_params, eager.as_mut());
        let got = cubic_steps(&staged_params, staged.as_mut());
        assert_eq!(got, want, "{name}");
        assert_ne!(want[0], want[5], "{name}: the parameters moved");
    }
}

#[test]
fn stage_only_counts_the_step_and_leaves_the_weights() {
    // Replaying a captured step, the optimizer only advances its counters and writes the
    // numbers; the graph runs the update (not here: nothing was captured). Adam's next
    // update is then its third, with the bias corrections of t = 3.
    let w = param();
    let mut opt = Adam::new(vec![w.clone()], 0.1).unwrap();
    let grads = || {
        let mut g = sinapse::Gradients::default();
        g.insert(&w, Tensor::from_vec(vec![2.0], &[1]).unwrap());
        g
    };
    opt.set_step_mode(StepMode::Staged).unwrap();
    opt.step(&grads()).unwrap();
    let after_one = w.to_vec();
    opt.set_step_mode(StepMode::StageOnly).unwrap();
    opt.step(&grads()).unwrap();
    assert_eq!(w.to_vec(), after_one, "a stage-only step leaves the weights to the graph");
    // Back to eager: the third step is counted as the third (bias corrections of t = 3).
    opt.set_step_mode(StepMode::Eager).unwrap();
    let mut g = sinapse::Gradients::default();
    g.insert(&w, Tensor::from_vec(vec![-4.0], &[1]).unwrap());
    opt.step(&g).unwrap();
    // The moments saw the two gradients whose updates ran (2, then -4); the count is 3 (with
    // t = 2 the step would differ by about 5e-3).
    let (b1, b2) = (0.9f64, 0.999f64);
    let (mut m, mut v) = (0.0f64, 0.0f64);
    for g in [2.0, -4.0] {
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
    }
    let step3 = 0.1 * (m / (1.0 - b1.powi(3))) / ((v / (1.0 - b2.powi(3))).sqrt() + 1e-8);
    close(&w.to_vec(), &[after_one[0] as f64 - step3]);
}

#[test]
fn an_optimizer_of_its_own_stays_eager() {
    struct Mine;
    impl Optimizer for Mine {
        fn step(&mut self, _: &sinapse::Gradients) -> Result<()> {
            Ok(())
        }
        fn lr(&self) -> f32 {
            0.1
        }
        fn set_lr(&mut self, _: f32) {}
    }
    assert!(!Mine.set_step_mode(StepMode::Staged).unwrap());
    assert!(Mine.set_step_mode(StepMode::Eager).unwrap());
}

#[test]
fn a_cuda_graph_is_refused_on_the_cpu_and_with_clipping() {
    use sinapse::data::Dataset;
    use sinapse::nn::{Linear, Module};
    use sinapse::train::{fit, FitConfig, Silent, Task};
    let mut rng = sinapse::Rng::seed(0);
    let data = Dataset::new(Tensor::rand_normal(&[8, 2], 0.0, 1.0, &mut rng).unwrap(), Tensor::zeros(&[8])).unwrap();
    let model = Linear::new(2, 1, &mut rng).unwrap();
    let before: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.to_vec()).collect();
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let cfg = FitConfig { cuda_graph: true, epochs: 1, batch_size: 4, ..FitConfig::new(Task::Regression) };
    let err = fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("cuda_graph") && err.contains("CPU"), "{err}");
    let clipped = FitConfig { clip_grad_norm: Some(1.0), ..cfg };
    let err = fit(&model, &mut opt, &data, None, &clipped, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("cuda_graph") && err.contains("clip_grad_norm"), "{err}");
    let after: Vec<Vec<f32>> = model.parameters().iter().map(|p| p.to_vec()).collect();
    assert_eq!(before, after, "refused before any step");
}

#[test]
fn fit_trains_with_an_optimizer_left_staging_and_leaves_it_eager() {
    use sinapse::data::Dataset;
    use sinapse::nn::{Linear, Module};
    use sinapse::train::{fit, FitConfig, Silent, Task};
    let mut rng = sinapse::Rng::seed(0);
    let data = Dataset::new(Tensor::rand_normal(&[8, 2], 0.0, 1.0, &mut rng).unwrap(), Tensor::ones(&[8])).unwrap();
    let model = Linear::new(2, 1, &mut rng).unwrap();
    let weights = || model.parameters().iter().flat_map(|p| p.to_vec()).collect::<Vec<f32>>();
    let mut opt = Adam::new(model.parameters(), 0.1).unwrap();
    // Stage-only steps update nothing; fit must not train that way, nor leave it so.
    opt.set_step_mode(StepMode::StageOnly).unwrap();
    let before = weights();
    let cfg = FitConfig { epochs: 1, batch_size: 4, ..FitConfig::new(Task::Regression) };
    fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap();
    let trained = weights();
    assert_ne!(trained, before, "fit updated the weights");
    let mut grads = sinapse::Gradients::default();
    for p in model.parameters() {
        let shape = p.shape().to_vec();
        grads.insert(&p, Tensor::ones(&shape));
    }
    opt.step(&grads).unwrap();
    assert_ne!(weights(), trained, "after fit the optimizer updates by itself again");
}
