//! Synthetic datasets for experiments whose right answer is known.

use super::Dataset;
use crate::{Error, Result, Rng, Tensor};

/// The adding problem (Hochreiter & Schmidhuber, 1997): sequences of `steps` pairs
/// `(value, marker)`, values uniform in [0, 1), exactly two markers set to 1, one in each half
/// of the sequence. The target is the sum of the two marked values. Inputs `[n, steps, 2]`,
/// targets `[n]`.
///
/// Always predicting the mean, 1, scores a mean squared error of 1/6 (the variance of a sum of
/// two uniform values): a model must remember the first marked value across the whole
/// sequence to do better.
pub fn adding_problem(n: usize, steps: usize, rng: &mut Rng) -> Result<Dataset> {
    if steps < 2 || n == 0 {
        return Err(Error::invalid("adding_problem", format!("needs n >= 1 and steps >= 2, got {n}, {steps}")));
    }
    let mut x = vec![0.0f32; n * steps * 2];
    let mut y = Vec::with_capacity(n);
    let half = steps / 2;
    for s in 0..n {
        let seq = &mut x[s * steps * 2..(s + 1) * steps * 2];
        for t in 0..steps {
            seq[2 * t] = rng.unit();
        }
        let first = rng.below(half)?;
        let second = half + rng.below(steps - half)?;
        seq[2 * first + 1] = 1.0;
        seq[2 * second + 1] = 1.0;
        y.push(seq[2 * first] + seq[2 * second]);
    }
    Dataset::new(Tensor::from_vec(x, &[n, steps, 2])?, Tensor::from_vec(y, &[n])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_sums_of_the_marked_values() {
        let d = adding_problem(50, 10, &mut Rng::seed(0)).unwrap();
        let (x, y) = (d.x().to_vec(), d.y().to_vec());
        for s in 0..50 {
            let seq = &x[s * 20..(s + 1) * 20];
            let marked: Vec<usize> = (0..10).filter(|&t| seq[2 * t + 1] == 1.0).collect();
            assert_eq!(marked.len(), 2);
            assert!(marked[0] < 5 && marked[1] >= 5);
            assert_eq!(y[s], seq[2 * marked[0]] + seq[2 * marked[1]]);
        }
    }
}
