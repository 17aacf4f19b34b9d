//! The fully connected layer.

use std::sync::Mutex;

use super::{Init, Mode, Module, Parameters};
use crate::tensor::ValuesKey;
use crate::{Device, Error, Result, Rng, Tensor};

/// A fully connected (dense) layer: `y = x·Wᵀ + b`, with `W` of shape `[out, in]` and `b` of
/// shape `[out]`, as in PyTorch's `nn.Linear`. Each output is the weighted sum of all inputs
/// plus a bias: the course's neuron, `out` of them side by side.
#[derive(Parameters)]
pub struct Linear {
    /// Weights, `[out_features, in_features]`.
    pub weight: Tensor,
    /// Bias, `[out_features]`, if the layer has one.
    pub bias: Option<Tensor>,
    /// `Wᵀ` laid out `[in, out]`, kept for inference on the CPU (see [`Linear::weight_for`]).
    #[parameters(skip)]
    transposed: Mutex<Option<(ValuesKey, Tensor)>>,
}

impl Linear {
    /// A layer with PyTorch's default initialisation, drawn from `rng`.
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Result<Linear> {
        Linear::with_init(in_features, out_features, Init::PytorchDefault, rng)
    }

    /// A layer with weights and bias drawn by `init`.
    pub fn with_init(in_features: usize, out_features: usize, init: Init, rng: &mut Rng) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::invalid(
                "Linear",
                format!("needs at least one input and one output, got {in_features} -> {out_features}"),
            ));
        }
        let weight = init.weight(&[out_features, in_features], in_features, out_features, rng)?;
        let bias = init.bias(&[out_features], in_features, rng)?;
        Linear::from_tensors(weight, Some(bias))
    }

    /// A layer from given weights `[out, in]` and optional bias `[out]`; they become
    /// trainable.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>) -> Result<Linear> {
        if weight.rank() != 2 {
            return Err(Error::invalid("Linear", format!("weight must be [out, in], got {:?}", weight.shape())));
        }
        if let Some(b) = &bias {
            if b.shape() != [weight.shape()[0]] {
                return Err(Error::shapes("Linear bias", b.shape(), &weight.shape()[..1]));
            }
        }
        Ok(Linear {
            weight: weight.set_requires_grad(true),
            bias: bias.map(|b| b.set_requires_grad(true)),
            transposed: Mutex::new(None),
        })
    }

    /// Number of inputs.
    pub fn in_features(&self) -> usize {
        self.weight.shape().get(1).copied().unwrap_or(0)
    }

    /// Number of outputs.
    pub fn out_features(&self) -> usize {
        self.weight.shape().first().copied().unwrap_or(0)
    }
}

impl Linear {
    /// The layer followed by a ReLU: one fused op ([`Tensor::linear_relu`]) for a batch of
    /// rows with a bias, else the layer's output through [`Tensor::relu`]. The same values and
    /// gradients either way.
    pub(crate) fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match &self.bias {
            Some(bias) if x.rank() == 2 => {
                self.check_input(x)?;
                x.linear_relu(&self.weight_for(x.shape()[0])?, bias)
            }
            _ => self.forward(x, mode)?.relu(),
        }
    }

    /// The weight to multiply `rows` input rows by: [`Linear::weight`], or, for inference on
    /// the CPU (no gradient recorded, at least two rows), the same values read from a copy
    /// laid out `[in, out]`. The layer keeps the copy between calls and makes it again when a
    /// call finds the weight changed (an in-place write such as an optimizer step, or another
    /// tensor in its place); a call that finds the weight on another device drops it.
    ///
    /// The matrix product then reads `Wᵀ` with contiguous rows, which gemm uses as it is,
    /// instead of repacking the whole weight on one thread at every call while the other
    /// threads wait. On a 2-core Intel Xeon (AVX-512), a 1024 x 784 x 256 product ran in a
    /// median 2164-2263 us this way against 2296-2617 us (a scratch program, 80 alternating
    /// rounds of 20 calls). Small batches gain most: 2-4 rows by 784 x 256 took 13-15 us
    /// against 102-120, 64 rows 134 against 199 (medians of 9 x 100 calls, alternating).
    ///
    /// One row keeps the weight (its matrix-vector kernel reads `W`'s rows), and so does a
    /// layer with fewer than 16 outputs: gemm ran `[2..16, 128] x [128, 10]` in 1.1-1.5 us
    /// from `W` against 2.7-4.0 from the copy, and larger batches within 12% either way. A
    /// weight whose transpose is contiguous already is read as it is.
    fn weight_for(&self, rows: usize) -> Result<Tensor> {
        if rows < 2 || self.out_features() < 16 || crate::is_grad_enabled() || self.weight.rank() != 2 {
            return Ok(self.weight.clone());
        }
        let mut cache = self.transposed.lock().unwrap_or_else(|e| e.into_inner());
        // The device first: moving a weight to another device keeps its storage and version
        // (the values are the same), so the key alone would still match the CPU copy.
        if self.weight.device() != Device::Cpu {
            *cache = None;
            return Ok(self.weight.clone());
        }
        if let Some((key, wt)) = cache.as_ref() {
            if key.matches(&self.weight) {
                return wt.t();
            }
        }
        // Stale, or never made: the old copy goes before a new one is made.
        *cache = None;
        let wt = self.weight.t()?;
        if wt.layout().is_contiguous() {
            return Ok(self.weight.clone());
        }
        // The key is taken before the values are read. A write in between moves the version
        // on after the key was taken, so the copy may be newer than its key (and is made again
        // next time), never older (see `write_lock`).
        let key = self.weight.values_key();
        let wt = wt.contiguous()?;
        let weight = wt.t()?;
        *cache = Some((key, wt));
        Ok(weight)
    }

    /// The weight's rank and the input's last axis, checked with errors naming the layer.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        if self.weight.rank() != 2 {
            return Err(Error::invalid("Linear", format!("weight must be [out, in], got {:?}", self.weight.shape())));
        }
        if x.rank() == 0 || x.shape()[x.rank() - 1] != self.in_features() {
            return Err(Error::invalid(
                "Linear",
                format!("{} expects inputs [.., {}], got shape {:?}", self.describe(), self.in_features(), x.shape()),
            ));
        }
        Ok(())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        self.check_input(x)?;
        if x.rank() == 2 {
            return x.linear(&self.weight_for(x.shape()[0])?, self.bias.as_ref());
        }
        // Leading axes ([batch, time, ..]) are flattened into rows: one matrix product, and
        // its weight gradient one product too, instead of a batch of small ones.
        let rows = x.reshape(&[x.elem_count() / self.in_features().max(1), self.in_features()])?;
        let y = rows.linear(&self.weight_for(rows.shape()[0])?, self.bias.as_ref())?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.out_features();
        y.reshape(&shape)
    }

    fn describe(&self) -> String {
        format!("Linear({} -> {})", self.in_features(), self.out_features())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Optimizer, Sgd};

    fn random(shape: &[usize], rng: &mut Rng) -> Tensor {
        Tensor::from_vec(rng.normals(shape.iter().product()), shape).expect("a tensor")
    }

    /// Checks `layer` on `x` under `no_grad` against `relu?(x·Wᵀ + b)` summed in f64 from the
    /// weight's values as they are now, for the layer alone and fused with its ReLU.
    fn check_inference(layer: &Linear, x: &Tensor) -> Result<()> {
        let [rows, inputs] = *x.shape() else { panic!("x is [rows, in]") };
        let outputs = layer.out_features();
        let (xv, wv) = (x.to_vec(), layer.weight.to_vec());
        let bv = layer.bias.as_ref().map(Tensor::to_vec).unwrap_or_else(|| vec![0.0; outputs]);
        let _off = crate::no_grad();
        for relu in [false, true] {
            let y = if relu { layer.forward_relu(x, Mode::Eval)? } else { layer.forward(x, Mode::Eval)? };
            assert_eq!(y.shape(), [rows, outputs]);
            for (i, got) in y.to_vec().chunks(outputs).enumerate() {
                for (j, &v) in got.iter().enumerate() {
                    let terms = (0..inputs).map(|p| f64::from(xv[i * inputs + p]) * f64::from(wv[j * inputs + p]));
                    let (sum, scale) = terms.fold((f64::from(bv[j]), 0.0), |(s, a), t| (s + t, a + t.abs()));
                    let want = if relu { sum.max(0.0) } else { sum };
                    assert!(
                        (f64::from(v) - want).abs() <= 1e-5 * (1.0 + scale),
                        "relu {relu} ({i}, {j}): {v} vs {want}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether the layer holds a copy, and that a call with `rows` rows under `no_grad` reads
    /// it (a view of the copy's storage).
    fn reads_copy(layer: &Linear, rows: usize) -> Result<bool> {
        let _off = crate::no_grad();
        let weight = layer.weight_for(rows)?;
        let cache = layer.transposed.lock().expect("not poisoned");
        Ok(cache.as_ref().is_some_and(|(_, wt)| weight.same_storage(wt) && !weight.same_storage(&layer.weight)))
    }

    #[test]
    fn inference_reads_a_transposed_copy_that_follows_the_weight() -> Result<()> {
        let mut rng = Rng::seed(5);
        let mut layer = Linear::new(37, 19, &mut rng)?;
        let x = random(&[6, 37], &mut rng);
        // Recording gradients, or one row: the weight itself, no copy made.
        layer.forward(&x, Mode::Eval)?;
        check_inference(&layer, &x.narrow(0, 2, 1)?)?;
        assert!(layer.transposed.lock().expect("not poisoned").is_none());
        check_inference(&layer, &x)?;
        assert!(reads_copy(&layer, 6)?);
        // The copy gives the product the layer gives with gradients, to rounding.
        let recorded = layer.forward(&x, Mode::Eval)?.to_vec();
        let inferred = {
            let _off = crate::no_grad();
            layer.forward(&x, Mode::Eval)?.to_vec()
        };
        for (a, b) in recorded.iter().zip(&inferred) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
        }

        // Another tensor of the same shape and version (0) in the weight's place.
        layer.weight = random(&[19, 37], &mut rng);
        check_inference(&layer, &x)?;
        // Two views of one storage, at different offsets.
        let both = random(&[38, 37], &mut rng);
        layer.weight = both.narrow(0, 0, 19)?;
        check_inference(&layer, &x)?;
        layer.weight = both.narrow(0, 19, 19)?;
        check_inference(&layer, &x)?;
        assert!(reads_copy(&layer, 6)?);
        // An optimizer step writes the weight in place: the next inference sees the new values.
        layer.weight = random(&[19, 37], &mut rng).set_requires_grad(true);
        let grads = {
            let y = layer.forward(&x, Mode::Train)?;
            y.mul(&y)?.sum_all()?.backward()?
        };
        check_inference(&layer, &x)?;
        Sgd::new(layer.parameters(), 0.5)?.step(&grads)?;
        check_inference(&layer, &x)?;
        // So does a copy into it, through a view of the weight.
        layer.weight.narrow(0, 3, 4)?.copy_from(&random(&[4, 37], &mut rng))?;
        check_inference(&layer, &x)?;
        // A weight whose transpose is contiguous already is read as it is, and the stale copy
        // is dropped.
        layer.weight = random(&[37, 19], &mut rng).t()?;
        check_inference(&layer, &x)?;
        assert!(layer.transposed.lock().expect("not poisoned").is_none());
        layer.weight = random(&[19, 37], &mut rng);
        layer.bias = None;
        check_inference(&layer, &x)?;
        // A narrow layer reads its weight.
        let narrow = Linear::new(37, 10, &mut rng)?;
        check_inference(&narrow, &x)?;
        assert!(narrow.transposed.lock().expect("not poisoned").is_none());
        // Rows under leading axes go through the same copy.
        let batched = random(&[2, 3, 37], &mut rng);
        let _off = crate::no_grad();
        let y = layer.forward(&batched, Mode::Eval)?;
        let flat = layer.forward(&batched.reshape(&[6, 37])?, Mode::Eval)?;
        assert_eq!(y.shape(), [2, 3, 19]);
        assert_eq!(y.to_vec(), flat.to_vec());
        assert!(reads_copy(&layer, 6)?);
        Ok(())
    }
}
