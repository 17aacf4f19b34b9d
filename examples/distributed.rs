//! Data-parallel training written out by hand: the MNIST MLP of `mnist_mlp.rs` (784-256-128-10,
//! SGD lr 0.1, global batch 128, 15 epochs) on every rank `mpirun` starts, each rank taking
//! its part of every batch, the gradients summed over the ranks before each step.
//!
//! Rank 0 prints each epoch's samples per second and the share of the step time spent in the
//! all-reduce, then the test accuracy (the same as one process gets, to float rounding); with
//! `--bandwidth` it then times all-reduces of 1M to 25M floats (25M: a ResNet-50's gradients).
//!
//! Build and run (MPI from Debian's `openmpi-bin`, `libopenmpi-dev`, `libclang-dev`):
//! `cargo build --release -p sinapse --features mpi --example distributed`, then
//! `mpirun -np 2 target/release/examples/distributed [--bandwidth]` (add `--allow-run-as-root`
//! as root).

use std::time::{Duration, Instant};

use sinapse::data::{mnist, DataLoader};
use sinapse::dist::{all_reduce_gradients, Communicator};
use sinapse::nn::{loss, Mode, Module};
use sinapse::optim::{Optimizer, Sgd};
use sinapse::spec::ModelSpec;
use sinapse::train::metrics::correct_count;
use sinapse::train::{evaluate_distributed, LossKind, Task};
use sinapse::{Result, Rng, Tensor};

const BATCH: usize = 128;
const EPOCHS: usize = 15;

fn main() -> Result<()> {
    sinapse::work_on_this_thread()?;
    let comm = Communicator::mpi()?;
    // An error on one rank would leave the others waiting in their next collective: it ends
    // them all.
    if let Err(e) = train(&comm) {
        eprintln!("error: rank {} of {}: {e}", comm.rank(), comm.world_size());
        comm.abort(1);
    }
    Ok(())
}

fn train(comm: &Communicator) -> Result<()> {
    let (rank, world) = (comm.rank(), comm.world_size());
    let root = comm.is_root();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/mnist-10k");
    let mnist::Mnist { train, test } = mnist::load(dir)?;
    if root {
        println!("{world} processes over {}; {} training images, batches of {BATCH}", comm.engine(), train.len());
    }

    let spec = ModelSpec::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/mnist_mlp.toml"))?;
    let task = Task::Classification { classes: 10 };
    let model = spec.build_model(&[784], &task, &mut Rng::seed(spec.seed))?;
    // Every replica starts from rank 0's weights.
    comm.broadcast(&model.parameters(), 0)?;
    let params = model.parameters();
    let mut opt = Sgd::new(params.clone(), 0.1)?;
    // The same shuffle on every rank; each takes its contiguous part of every batch.
    let mut loader = DataLoader::new(&train, BATCH)?.shuffle(0).shard(rank, world);

    for epoch in 1..=EPOCHS {
        let start = Instant::now();
        let mut reducing = Duration::ZERO;
        let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
        for (b, batch) in loader.epoch()?.enumerate() {
            let (x, y) = batch?;
            let (size, global) = (x.shape()[0], BATCH.min(train.len() - b * BATCH));
            // A short last batch may leave a rank no rows: it adds zeros, but still joins.
            let (mut grads, counts) = if size > 0 {
                let logits = model.forward(&x, Mode::Train)?;
                let loss = loss::cross_entropy(&logits, &y)?;
                // This rank's share of the whole batch's mean loss: summed over the ranks, the
                // gradients are those of the whole batch.
                let grads = loss.mul_scalar(size as f32 / global as f32)?.backward()?;
                (grads, vec![loss.to_scalar()? * size as f32, correct_count(&logits, &y)? as f32])
            } else {
                (sinapse::Gradients::default(), vec![0.0, 0.0])
            };
            let counts = Tensor::from_vec(counts, &[2])?;
            let t = Instant::now();
            let sums = all_reduce_gradients(comm, &params, &mut grads, 1.0, &[counts])?;
            reducing += t.elapsed();
            opt.step(&grads)?;
            let sums = sums[0].to_vec();
            loss_sum += f64::from(sums[0]);
            correct += f64::from(sums[1]);
        }
        let seconds = start.elapsed().as_secs_f64();
        if root {
            println!(
                "epoch {epoch:2}: loss {:.4}, train accuracy {:.4}, {:.0} samples/s, all-reduce {:.1}% of the time",
                loss_sum / train.len() as f64,
                correct / train.len() as f64,
                train.len() as f64 / seconds,
                100.0 * reducing.as_secs_f64() / seconds
            );
        }
    }
    // Each rank scores its part of the test set; the parts are joined on every rank.
    let result = evaluate_distributed(comm, &model, &test, &task, LossKind::CrossEntropy, 1000)?;
    if root {
        println!("test accuracy: {:.4}", result.metric());
    }

    if std::env::args().any(|a| a == "--bandwidth") {
        for millions in [1usize, 5, 25] {
            let data = Tensor::full_on(&[millions << 20], 1.0, sinapse::Device::Cpu)?;
            comm.all_reduce_sum(std::slice::from_ref(&data))?; // warm-up
            let runs = 5;
            let t = Instant::now();
            for _ in 0..runs {
                comm.all_reduce_sum(std::slice::from_ref(&data))?;
            }
            let each = t.elapsed().as_secs_f64() / runs as f64;
            if root {
                let bytes = (millions << 20) as f64 * 4.0;
                println!(
                    "all-reduce of {millions}M floats ({:.0} MB): {:.1} ms, {:.2} GB/s of buffer per second",
                    bytes / 1e6,
                    each * 1e3,
                    bytes / each / 1e9
                );
            }
        }
    }
    Ok(())
}
