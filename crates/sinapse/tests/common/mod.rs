//! Helpers shared by the integration tests.
#![allow(dead_code)]

use sinapse::{Rng, Tensor};

/// Uniform values in [-1, 1), requiring grad.
pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, -1.0, 1.0, &mut Rng::seed(seed)).unwrap().set_requires_grad(true)
}

/// Values in [0.5, 2), requiring grad (for log, sqrt, division).
pub fn positive(shape: &[usize], seed: u64) -> Tensor {
    Tensor::rand_uniform(shape, 0.5, 2.0, &mut Rng::seed(seed)).unwrap().set_requires_grad(true)
}

/// Values with 0.2 <= |v| < 1.2 and random sign, requiring grad: at least 0.2 away from the
/// kink of relu, abs and step, far more than gradcheck's step.
pub fn away_from_zero(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::seed(seed);
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            let m = rng.uniform(0.2, 1.2);
            if rng.unit() < 0.5 {
                -m
            } else {
                m
            }
        })
        .collect();
    Tensor::from_vec(v, shape).unwrap().set_requires_grad(true)
}

/// Distinct values 0.1 apart in random order (no near-ties for max/min), requiring grad.
pub fn distinct(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let perm = Rng::seed(seed).permutation(n);
    let v = perm.iter().map(|&p| p as f32 * 0.1 - n as f32 * 0.05).collect();
    Tensor::from_vec(v, shape).unwrap().set_requires_grad(true)
}

/// Elementwise closeness.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: got {g}, want {w} (tol {tol})\n got {got:?}\nwant {want:?}");
    }
}
