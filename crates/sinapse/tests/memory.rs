//! Long training does not leak: resident memory is flat once the first epochs have warmed the
//! allocator up. Alone in its test binary, so no other test's allocations move the figure.

use sinapse::data::mnist;
use sinapse::nn::{self, Module};
use sinapse::optim::Adam;
use sinapse::train::{fit, EpochRecord, FitConfig, Observer, Task};
use sinapse::Rng;

/// This process's resident memory in bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

struct Rss(Vec<u64>);

impl Observer for Rss {
    fn on_epoch(&mut self, _record: &EpochRecord, _epochs: usize) {
        self.0.push(resident_bytes());
    }
}

#[test]
fn resident_memory_is_flat_over_many_epochs() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k");
    let data = mnist::load(dir).unwrap().train.subset(&(0..2000).collect::<Vec<_>>()).unwrap();
    let mut rng = Rng::seed(0);
    // An MLP with dropout (random masks each step) and Adam (state per parameter).
    let model = nn::Sequential::new()
        .add(nn::Linear::new(784, 256, &mut rng).unwrap())
        .add(nn::Relu)
        .add(nn::Dropout::new(0.2, &mut rng).unwrap())
        .add(nn::Linear::new(256, 10, &mut rng).unwrap());
    let mut opt = Adam::new(model.parameters(), 1e-3).unwrap();
    let cfg = FitConfig { epochs: 40, batch_size: 64, ..FitConfig::new(Task::Classification { classes: 10 }) };
    let mut rss = Rss(Vec::new());
    fit(&model, &mut opt, &data, Some(&data), &cfg, &mut rss).unwrap();
    // 40 epochs of 32 steps: a leak of one step's graph or gradients (about 1 MB) would add
    // over 1 GB; a leak of one small tensor per step would add megabytes.
    let warm = rss.0[4];
    let late = *rss.0[20..].iter().max().unwrap();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        late <= warm + (2 << 20),
        "resident memory grew from {:.1} MiB after epoch 5 to {:.1} MiB",
        mib(warm),
        mib(late)
    );
}
