//! XOR, the problem that stopped the perceptron and started the multi-layer network.
//!
//! 1. Rosenblatt's perceptron cannot learn XOR: no single line separates (0,1),(1,0) from
//!    (0,0),(1,1), so its rule never settles.
//! 2. A network with one hidden layer (2-4-1, tanh then sigmoid), trained by full-batch
//!    gradient descent on the mean squared error, gets all four cases right.
//!
//! Run: `cargo run --release --example xor`

use sinapse::nn::{self, loss, Mode, Module};
use sinapse::optim::{Optimizer, Sgd};
use sinapse::perceptron::{format_weights, Gate, Perceptron, GATE_INPUTS};
use sinapse::{Result, Rng, Tensor};

fn main() -> Result<()> {
    // --- The perceptron ---------------------------------------------------------------------
    let inputs: Vec<Vec<f64>> = GATE_INPUTS.iter().map(|p| p.to_vec()).collect();
    let mut perceptron = Perceptron::with_weights(vec![1.0, 0.2, -0.3])?;
    let outcome = perceptron.train(&inputs, &Gate::Xor.targets(), 100, |_| {})?;
    println!(
        "perceptron on XOR: {} after {} epochs, w = {}",
        if outcome.converged { "converged" } else { "did not converge" },
        outcome.epochs,
        format_weights(&perceptron.weights)
    );

    // --- A multi-layer perceptron -------------------------------------------------------------
    let x = Tensor::from_vec(vec![0., 0., 0., 1., 1., 0., 1., 1.], &[4, 2])?;
    let y = Tensor::from_vec(vec![0., 1., 1., 0.], &[4, 1])?;
    let mut rng = Rng::seed(1);
    let model = nn::Sequential::new()
        .add(nn::Linear::new(2, 4, &mut rng)?)
        .add(nn::Tanh)
        .add(nn::Linear::new(4, 1, &mut rng)?)
        .add(nn::Sigmoid);
    let mut opt = Sgd::new(model.parameters(), 1.0)?;
    for epoch in 1..=3000 {
        let prediction = model.forward(&x, Mode::Train)?; // forward pass (MLPFORWARD)
        let loss = loss::mse(&prediction, &y)?;
        let grads = loss.backward()?; // backpropagation (MLPBACK)
        opt.step(&grads)?; // w <- w - lr * dL/dw
        if epoch % 500 == 0 {
            println!("epoch {epoch:4}: mse {:.5}", loss.to_scalar()?);
        }
    }
    let out = model.forward(&x, Mode::Eval)?.to_vec();
    let mut right = 0;
    for (i, pair) in GATE_INPUTS.iter().enumerate() {
        let predicted = if out[i] > 0.5 { 1.0 } else { 0.0 };
        right += usize::from(predicted == Gate::Xor.targets()[i]);
        println!("{pair:?} -> {:.3} (class {predicted}, target {})", out[i], Gate::Xor.targets()[i]);
    }
    println!("MLP 2-4-1: {right}/4 right");
    Ok(())
}
