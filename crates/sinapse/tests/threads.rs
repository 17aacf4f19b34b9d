//! `work_on_this_thread` and `hot_workers`, in a test binary of its own: they change the
//! process's thread pool, so everything runs in one test, in order.

use std::time::{Duration, Instant};

use sinapse::data::Dataset;
use sinapse::nn::{self, Module};
use sinapse::optim::Sgd;
use sinapse::train::{fit, FitConfig, Silent, Task};
use sinapse::{Rng, Tensor};

/// Waits up to 10 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Trains a small MLP (3 epochs, its matrix products split over the threads) on the calling
/// thread and returns its weights.
fn trained_weights() -> Vec<Vec<f32>> {
    let mut rng = Rng::seed(5);
    let n = 512;
    let x = Tensor::rand_normal(&[n, 64], 0.0, 1.0, &mut rng).unwrap();
    let labels: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
    let data = Dataset::new(x, Tensor::from_vec(labels, &[n]).unwrap()).unwrap();
    let model = nn::Sequential::new()
        .add(nn::Linear::new(64, 256, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Linear::new(256, 3, &mut rng).unwrap());
    let cfg = FitConfig { epochs: 3, batch_size: 128, ..FitConfig::new(Task::Classification { classes: 3 }) };
    let mut opt = Sgd::new(model.parameters(), 0.1).unwrap();
    let h = fit(&model, &mut opt, &data, None, &cfg, &mut Silent).unwrap();
    assert!(h.records.iter().all(|r| r.train_loss.is_finite()), "{h:?}");
    model.parameters().iter().map(|p| p.to_vec()).collect()
}

#[test]
fn the_calling_thread_joins_the_pool_once_and_kernels_still_split() {
    // Before any parallel work the pool can still be built around this thread.
    sinapse::work_on_this_thread().unwrap();
    // A second call cannot rebuild it, and says so.
    let e = sinapse::work_on_this_thread().unwrap_err().to_string();
    assert!(e.contains("already started"), "{e}");
    // A kernel large enough to be split over the threads gives the same values as by hand.
    let n = 1 << 18;
    let x = Tensor::from_vec((0..n).map(|i| i as f32).collect(), &[n]).unwrap();
    let y = x.mul_scalar(2.0).unwrap().to_vec();
    assert!(y.iter().enumerate().all(|(i, &v)| v == 2.0 * i as f32));

    // Hot workers: every pool thread but this one spins while the guard lives. (Counted as
    // started, not as spinning now: a spinning thread first woken on this thread's core can
    // hold it, and end idle, before this thread looks again.)
    let others = rayon::current_num_threads() - 1;
    let hot = sinapse::hot_workers();
    eventually("the other pool threads spin", || hot.started() == others);
    let y = x.mul_scalar(3.0).unwrap().to_vec();
    assert!(y.iter().enumerate().all(|(i, &v)| v == 3.0 * i as f32), "kernels split over spinning threads");
    // Without work for 2 ms they sleep again, until renewed.
    eventually("idle spinners stop", || hot.spinning() == 0);
    hot.renew();
    eventually("renewed spinners start", || hot.started() == 2 * others);
    eventually("and stop again", || hot.spinning() == 0);
    assert_eq!(hot.started(), 2 * others, "one spinning task per thread and renewal");
    // A thread outside the pool gets a guard that does nothing: it would only take a core.
    let outside = std::thread::spawn(|| {
        let g = sinapse::hot_workers();
        g.renew();
        std::thread::sleep(Duration::from_millis(20));
        g.started()
    });
    assert_eq!(outside.join().unwrap(), 0);
    // A dropped guard's spinners end even while work keeps coming (which resets their idle
    // time): a new guard's spinning task then finds their threads free (a thread still
    // spinning for the old guard would turn it away) while this thread keeps splitting kernels.
    eventually("renewed once more", || {
        hot.renew();
        hot.spinning() == others
    });
    drop(hot);
    let dropped = Instant::now();
    let again = sinapse::hot_workers();
    eventually("a new guard's spinners start", || {
        let y = x.mul_scalar(4.0).unwrap().to_vec();
        assert_eq!(y[n - 1], 4.0 * (n - 1) as f32);
        again.started() == others
    });
    // Well before the 100 ms after which a spinner ends anyway.
    assert!(dropped.elapsed() < Duration::from_millis(50), "{:?} after the drop", dropped.elapsed());
    drop(again);
    // Asked to wait passively (several processes sharing the cores), a guard does nothing.
    // (`set_var` is unsafe from edition 2024 on: no other thread of this test binary reads the
    // environment now; the pool's threads only run the kernels above.)
    unsafe { std::env::set_var("SINAPSE_WAIT", "passive") };
    let passive = sinapse::hot_workers();
    passive.renew();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(passive.started(), 0);
    unsafe { std::env::remove_var("SINAPSE_WAIT") };

    // `fit` on this thread holds a guard; on a thread outside the pool it cannot. The
    // kernels split the same way either way: the same weights, bit for bit.
    let here = trained_weights();
    let elsewhere = std::thread::spawn(trained_weights).join().unwrap();
    assert_eq!(here, elsewhere);
}
