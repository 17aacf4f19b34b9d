//! Dropout (Srivastava et al., 2014).

use std::sync::Mutex;

use super::{Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// Inverted dropout: in training, each element is zeroed with probability `p` and the
/// survivors are scaled by 1/(1-p), so the expected value of every element is unchanged; in
/// evaluation the layer is the identity. Randomly silencing units keeps them from relying on
/// each other (co-adaptation), a defence against overfitting.
#[derive(Parameters)]
pub struct Dropout {
    p: f32,
    #[parameters(skip)]
    rng: Mutex<Rng>,
}

impl Dropout {
    /// Dropout with drop probability `p` in [0, 1], drawing its masks from a generator seeded
    /// from `rng`.
    pub fn new(p: f32, rng: &mut Rng) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(Error::invalid("Dropout", format!("p must be in [0, 1], got {p}")));
        }
        Ok(Dropout { p, rng: Mutex::new(rng.fork()) })
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Eval || self.p == 0.0 {
            return Ok(x.clone());
        }
        if self.p == 1.0 {
            return x.mul_scalar(0.0);
        }
        let keep_scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            (0..x.elem_count()).map(|_| if rng.unit() < self.p { 0.0 } else { keep_scale }).collect()
        };
        // Drawn on the host from the layer's seeded generator, so a seed gives the same masks on
        // every device.
        x.mul(&Tensor::from_vec(mask, x.shape())?.to(x.device())?)
    }

    fn describe(&self) -> String {
        format!("Dropout(p={})", self.p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_about_one_minus_p_and_preserves_the_mean() {
        let d = Dropout::new(0.3, &mut Rng::seed(0)).unwrap();
        let x = Tensor::ones(&[200_000]);
        let y = d.forward(&x, Mode::Train).unwrap().to_vec();
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
        assert!((kept - 0.7).abs() < 0.005, "kept fraction {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6));
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // Evaluation mode is the identity.
        assert_eq!(d.forward(&x, Mode::Eval).unwrap().to_vec(), x.to_vec());
        // A new mask each call.
        let y2 = d.forward(&x, Mode::Train).unwrap().to_vec();
        assert_ne!(y, y2);
        assert!(Dropout::new(1.5, &mut Rng::seed(0)).is_err());
    }

    #[test]
    fn gradient_flows_through_kept_units_only() {
        let d = Dropout::new(0.5, &mut Rng::seed(1)).unwrap();
        let x = Tensor::ones(&[1000]).set_requires_grad(true);
        let y = d.forward(&x, Mode::Train).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert_eq!(g.get(&x).unwrap().to_vec(), y.to_vec(), "d(x·m)/dx = m");
    }
}
