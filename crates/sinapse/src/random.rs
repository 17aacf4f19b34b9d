//! Seeded random numbers: every random draw in Sinapse comes from an [`Rng`] the caller owns,
//! so the same seed gives the same numbers, and the same training run, every time.

use rand::seq::SliceRandom;
use rand::{Rng as _, RngCore, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

/// A seeded pseudo-random generator (ChaCha12, through the `rand` crate).
#[derive(Clone, Debug)]
pub struct Rng(rand::rngs::StdRng);

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn seed(seed: u64) -> Rng {
        Rng(rand::rngs::StdRng::seed_from_u64(seed))
    }

    /// A new generator seeded from this one: for a component (a dropout layer) that needs its
    /// own stream, still fixed by the original seed.
    pub fn fork(&mut self) -> Rng {
        Rng::seed(self.0.next_u64())
    }

    /// A uniform draw from `[low, high)`.
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        self.0.random_range(low..high)
    }

    /// A draw from the standard normal distribution N(0, 1).
    pub fn standard_normal(&mut self) -> f32 {
        StandardNormal.sample(&mut self.0)
    }

    /// `len` standard normal draws, in order (test data).
    #[cfg(test)]
    pub(crate) fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.standard_normal()).collect()
    }

    /// A uniform integer in `0..n`; an error for `n = 0` (the range is empty).
    pub fn below(&mut self, n: usize) -> crate::Result<usize> {
        if n == 0 {
            return Err(crate::Error::invalid("Rng::below", "the range 0..0 is empty"));
        }
        Ok(self.0.random_range(0..n))
    }

    /// A uniform draw from `[0, 1)`.
    pub fn unit(&mut self) -> f32 {
        self.0.random::<f32>()
    }

    /// Shuffles `items` in place (Fisher-Yates, from `rand`).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.0);
    }

    /// `0..n` in random order.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }
}
