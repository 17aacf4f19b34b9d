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
    /// `Wᵀ` laid out `[in, out]`, kept for inference on the CPU (see [`Linear::kept`]).
    #[parameters(skip)]
    transposed: Mutex<Option<Kept>>,
}

/// The copy of `Wᵀ` a [`Linear`] keeps for inference on the CPU.
struct Kept {
    /// The weight's values the copy was made from.
    key: ValuesKey,
    /// `Wᵀ`, laid out `[in, out]`.
    wt: Tensor,
    /// Whether every value is finite, so that a product may skip the inputs that are zero.
    finite: bool,
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
    /// The layer followed by a ReLU: for a batch of rows, [`Linear::product`] with its ReLU
    /// (one fused op with a bias, [`Tensor::linear_relu`], or in the zero-skipping kernel);
    /// for inputs with leading axes, the layer's output through [`Tensor::relu`]. The same
    /// values and gradients either way.
    pub(crate) fn forward_relu(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if x.rank() == 2 {
            self.check_input(x)?;
            return self.product(x, true);
        }
        self.forward(x, mode)?.relu()
    }

    /// `x·Wᵀ + b` for `x` of shape `[rows, in]`, through a ReLU when `relu`.
    ///
    /// For inference on the CPU on one or two rows that are mostly zeros
    /// ([`Linear::skips_zeros`]), the product is the sum of the rows of the kept `Wᵀ`
    /// ([`Linear::kept`]) that the nonzero inputs pick, so the zeros and the weights they
    /// would multiply are never read: for MNIST digits (81% of the pixels are 0), a fifth of
    /// the first layer's weights. On a 2-core Intel Xeon (AVX-512), the `infer` benchmark's MLP
    /// (784-256-128-10) ran one sample in 6.3-6.4 us this way against 8.2-8.5 us (two runs
    /// of a scratch loop over 1990 test images as the benchmark times them: the median of 10
    /// alternating rounds, each the median of the 1990 calls; rounds 5.9-9.0 against
    /// 7.7-9.8); 784 x 256 alone on two rows, medians of 11.0-14.4 us against 18.8-24.5.
    ///
    /// With fewer zeros the gain shrinks: one row of 784 x 256 took 6.3 us skipping against
    /// 7.7 whole at 71% zeros, 7.6 against 7.4 at 62% and 10.4 against 8.1 at 40% (medians of
    /// 15 rounds; at 53% the best times were 8.0 against 7.0), hence the rule of two thirds; a
    /// hidden layer after a ReLU (about half zeros, 256 x 128) took 1.77 us against 1.50.
    /// Larger batches multiply the whole weight: a kernel that went through `Wᵀ` in tiles
    /// kept in cache, each row adding the tile rows its nonzero inputs pick, ran 784 x 256 on
    /// 4-8 rows 2.6-3.8x slower than gemm, on 128 rows at 0.95-1.04x its speed and on 1024
    /// rows at 0.99-1.13x (not kept). A weight that is not all finite is multiplied whole,
    /// since a skipped `0 · inf` would be NaN.
    fn product(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        if self.skips_zeros(x) {
            if let Some((wt, true)) = self.kept()? {
                if let Some(y) = x.linear_skipping_zeros(&wt, self.bias.as_ref(), relu)? {
                    return Ok(y);
                }
            }
        }
        let weight = self.weight_for(x.shape()[0])?;
        match (&self.bias, relu) {
            (Some(bias), true) => x.linear_relu(&weight, bias),
            (bias, false) => x.linear(&weight, bias.as_ref()),
            (None, true) => x.linear(&weight, None)?.relu(),
        }
    }

    /// Whether [`Linear::product`] skips the zero entries of `x` (`[rows, in]`): for
    /// inference on the CPU, at least 16 outputs, at most [`SKIP_ZEROS_ROWS`] rows, and at
    /// least two thirds of the values zeros (99% of the MNIST test images have more).
    fn skips_zeros(&self, x: &Tensor) -> bool {
        let rows = x.shape().first().copied().unwrap_or(0);
        if crate::is_grad_enabled()
            || x.rank() != 2
            || rows == 0
            || rows > SKIP_ZEROS_ROWS
            || self.out_features() < 16
            || x.device() != Device::Cpu
            || self.weight.device() != Device::Cpu
        {
            return false;
        }
        let values = x.to_vec();
        let zeros = values.iter().filter(|&&v| v == 0.0).count();
        3 * zeros >= 2 * values.len()
    }

    /// The weight to multiply `rows` input rows by: [`Linear::weight`], or, for inference on
    /// the CPU (no gradient recorded, at least two rows), the same values read from a copy
    /// laid out `[in, out]` ([`Linear::kept`]).
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
        match self.kept()? {
            Some((wt, _)) => wt.t(),
            None => Ok(self.weight.clone()),
        }
    }

    /// The kept copy of `Wᵀ` (`[in, out]`) and whether it is all finite, made now if the
    /// layer has none or the weight changed since: an in-place write such as an optimizer
    /// step, or another tensor in its place. `None`, and no copy kept, when the weight is on
    /// another device or its transpose is contiguous already (read as it is).
    fn kept(&self) -> Result<Option<(Tensor, bool)>> {
        let mut cache = self.transposed.lock().unwrap_or_else(|e| e.into_inner());
        // The device first: moving a weight to another device keeps its storage and version
        // (the values are the same), so the key alone would still match the CPU copy.
        if self.weight.device() != Device::Cpu || self.weight.rank() != 2 {
            *cache = None;
            return Ok(None);
        }
        if let Some(kept) = cache.as_ref() {
            if kept.key.matches(&self.weight) {
                return Ok(Some((kept.wt.clone(), kept.finite)));
            }
        }
        // Stale, or never made: the old copy goes before a new one is made.
        *cache = None;
        let wt = self.weight.t()?;
        if wt.layout().is_contiguous() {
            return Ok(None);
        }
        // The key is taken before the values are read. A write in between moves the version
        // on after the key was taken, so the copy may be newer than its key (and is made again
        // next time), never older (see `write_lock`).
        let key = self.weight.values_key();
        let wt = wt.contiguous()?;
        let finite = wt.try_to_vec()?.iter().all(|v| v.is_finite());
        *cache = Some(Kept { key, wt: wt.clone(), finite });
        Ok(Some((wt, finite)))
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

/// The most rows [`Linear::product`] skips zero inputs for.
const SKIP_ZEROS_ROWS: usize = 2;

impl Module for Linear {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        self.check_input(x)?;
        if x.rank() == 2 {
            return self.product(x, false);
        }
        // Leading axes ([batch, time, ..]) are flattened into rows: one matrix product, and
        // its weight gradient one product too, instead of a batch of small ones.
        let rows = x.reshape(&[x.elem_count() / self.in_features().max(1), self.in_features()])?;
        let y = self.product(&rows, false)?;
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
        Ok(cache.as_ref().is_some_and(|kept| weight.same_storage(&kept.wt) && !weight.same_storage(&layer.weight)))
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

    #[test]
    fn inference_on_rows_of_mostly_zeros_skips_them_unless_the_weight_is_not_finite() -> Result<()> {
        let mut rng = Rng::seed(6);
        // 70 outputs: one block of the kernel's columns and a tail.
        let mut layer = Linear::new(40, 70, &mut rng)?;
        // Two rows, each with 8 nonzero values of 40 (80% zeros); column 0 is zero in both.
        let mut values = vec![0.0f32; 80];
        for (i, v) in values.iter_mut().enumerate() {
            if i % 5 == 2 {
                *v = rng.standard_normal();
            }
        }
        let x = Tensor::from_vec(values, &[2, 40])?;
        let cached = |layer: &Linear| layer.transposed.lock().expect("not poisoned").is_some();
        // One row: only the skipping path makes a copy (the dense one reads W's rows).
        check_inference(&layer, &x.narrow(0, 1, 1)?)?;
        assert!(cached(&layer));
        check_inference(&layer, &x)?;
        // A row with too few zeros takes the dense path, to the same values.
        check_inference(&layer, &random(&[1, 40], &mut rng))?;
        // The copy follows the weight: a write through a view, then a new tensor.
        layer.weight.narrow(0, 5, 3)?.copy_from(&random(&[3, 40], &mut rng))?;
        check_inference(&layer, &x)?;
        layer.weight = random(&[70, 40], &mut rng);
        check_inference(&layer, &x.narrow(0, 0, 1)?)?;
        // Recording gradients: the whole product, whose gradients reach the weight, the bias
        // and the input (here a `[1, 2, in]` input, its leading axes flattened).
        layer.weight = layer.weight.set_requires_grad(true);
        let input = x.reshape(&[1, 2, 40])?.set_requires_grad(true);
        let y = layer.forward_relu(&input, Mode::Train)?;
        let grads = y.sum_all()?.backward()?;
        for (name, t) in [("weight", &layer.weight), ("input", &input)] {
            assert!(grads.get(t).is_some(), "no gradient for the {name}");
        }
        let bias = layer.bias.as_ref().expect("a bias");
        assert!(grads.get(bias).is_some(), "no gradient for the bias");
        // An infinite weight facing a zero input: 0 · inf is NaN, as the whole product gives.
        let mut w = layer.weight.to_vec();
        w[3 * 40] = f32::INFINITY;
        layer.weight = Tensor::from_vec(w, &[70, 40])?;
        let _off = crate::no_grad();
        for rows in [1, 2] {
            let y = layer.forward(&x.narrow(0, 0, rows)?, Mode::Eval)?.to_vec();
            for (i, v) in y.iter().enumerate() {
                assert_eq!(v.is_nan(), i % 70 == 3, "{rows} rows, output {i}: {v}");
            }
        }
        Ok(())
    }
}
