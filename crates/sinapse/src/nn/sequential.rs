//! A chain of layers.

use super::{join_name, Conv2d, Linear, Mode, Module, Parameters, Pool2d, PoolKind, Relu};
use crate::{Result, Tensor};

/// Layers applied one after the other: the output of each is the input of the next (the
/// course's feed-forward network). Parameter names are prefixed with the layer's position,
/// as in PyTorch: `0.weight`, `0.bias`, `2.weight`, ...
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty chain.
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// Appends a layer (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a boxed layer.
    pub fn push(&mut self, layer: Box<dyn Module>) {
        self.layers.push(layer);
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

/// Layers are named by position, as in PyTorch: `0.weight`, `2.bias`.
impl Parameters for Sequential {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_parameters(&join_name(prefix, &i.to_string()), out);
        }
    }
    fn visit_buffers(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_buffers(&join_name(prefix, &i.to_string()), out);
        }
    }
}

/// Whether `layer` is a ReLU.
fn is_relu(layer: &dyn Module) -> bool {
    layer.as_any().is_some_and(|l| l.is::<Relu>())
}

/// `layer` as a dense layer, if it is one.
fn as_linear(layer: &dyn Module) -> Option<&Linear> {
    layer.as_any().and_then(|l| l.downcast_ref::<Linear>())
}

/// `layer` as a max pooling, if it is one.
fn as_max_pool(layer: &dyn Module) -> Option<&Pool2d> {
    layer.as_any().and_then(|l| l.downcast_ref::<Pool2d>()).filter(|p| p.kind == PoolKind::Max)
}

/// `layer` as a convolution [`Tensor::conv2d_max_pool2`] covers (stride 1, no dilation).
fn as_plain_conv(layer: &dyn Module) -> Option<&Conv2d> {
    let conv = layer.as_any().and_then(|l| l.downcast_ref::<Conv2d>())?;
    (conv.stride == [1, 1] && conv.dilation == [1, 1]).then_some(conv)
}

/// Whether `layer` is a 2x2 max pooling with stride 2 and no padding.
fn is_max_pool2(layer: &dyn Module) -> bool {
    layer
        .as_any()
        .and_then(|l| l.downcast_ref::<Pool2d>())
        .is_some_and(|p| p.kind == PoolKind::Max && p.kernel == [2, 2] && p.stride == [2, 2] && p.padding == [0, 0])
}

impl Module for Sequential {
    /// Each layer's output is the next one's input. A ReLU followed by a max pooling (the
    /// usual convolution block) runs in the other order, pooling first: max(relu(a), relu(b))
    /// = relu(max(a, b)) because ReLU never reorders two values, so the outputs are the same,
    /// and so are the gradients (both send a window's gradient to its largest input when that
    /// is positive, and nothing otherwise; ties resolve to the same tap). The ReLU and its
    /// gradient then touch a quarter of the values with 2x2 windows; on a GPU both run in the
    /// pooling's launch ([`Tensor::max_pool2d_relu`]). A `Linear` followed by a
    /// ReLU runs as one op ([`Tensor::linear_relu`]): the same values and gradients, one pass
    /// less over the output. A stride-1 convolution followed by a 2x2 max pooling (with or
    /// without a ReLU between) runs as one op too ([`Tensor::conv2d_max_pool2`]), the ReLU
    /// after it: the same values and input gradient, and the filters' and bias's gradients up
    /// to the order of their sums (on a GPU, the convolution's product pooled in place, with
    /// its bias and the ReLU in the pooling's launch).
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            let layer = self.layers[i].as_ref();
            let next = self.layers.get(i + 1).map(|n| n.as_ref());
            let after = self.layers.get(i + 2).map(|n| n.as_ref());
            if let Some(conv) = as_plain_conv(layer) {
                let conv_pool = |h: &Tensor| h.conv2d_max_pool2(&conv.weight, conv.bias.as_ref(), conv.padding);
                if next.is_some_and(is_max_pool2) {
                    h = conv_pool(&h)?;
                    i += 2;
                    continue;
                }
                if let (Some(true), Some(true)) = (next.map(is_relu), after.map(is_max_pool2)) {
                    h = h.conv2d_max_pool2_relu(&conv.weight, conv.bias.as_ref(), conv.padding)?;
                    i += 3;
                    continue;
                }
            }
            if let (Some(linear), Some(true)) = (as_linear(layer), next.map(is_relu)) {
                h = linear.forward_relu(&h, mode)?;
                i += 2;
            } else if let Some(pool) = next.and_then(as_max_pool).filter(|_| is_relu(layer)) {
                h = h.max_pool2d_relu(pool.kernel, pool.stride, pool.padding)?;
                i += 2;
            } else {
                h = layer.forward(&h, mode)?;
                i += 1;
            }
        }
        Ok(h)
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.layers.iter().map(|l| l.describe()).collect();
        format!("Sequential({})", inner.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The output of `layers` run one by one, as written, and its gradient for `x`.
    fn unfused(layers: &[&dyn Module], x: &Tensor, w: &Tensor) -> (Vec<f32>, Vec<f32>) {
        let mut h = x.clone();
        for layer in layers {
            h = layer.forward(&h, Mode::Train).unwrap();
        }
        let grads = h.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
        (h.to_vec(), grads.get(x).unwrap().to_vec())
    }

    /// A `Linear` then a ReLU run as one op, with bit-for-bit the values and gradients (input,
    /// weight, bias) of the two ops; outputs below, at and above 0 and a NaN among them. A
    /// layer without a bias, or inputs with more than two axes, run as two ops, the same.
    #[test]
    fn linear_then_relu_runs_as_one_op_with_the_same_values_and_gradients() {
        let same =
            |a: &[f32], b: &[f32]| a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        for (with_bias, shape) in [(true, vec![5, 4]), (false, vec![5, 4]), (true, vec![2, 3, 4])] {
            let rows = shape[..shape.len() - 1].iter().product::<usize>();
            let mut data: Vec<f32> = (0..rows * 4).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
            data[1] = f32::NAN;
            let x = Tensor::from_vec(data, &shape).unwrap().set_requires_grad(true);
            let weight = Tensor::from_vec((0..12).map(|i| (i % 5) as f32 - 2.0).collect(), &[3, 4]).unwrap();
            let bias = Tensor::from_vec(vec![0.5, -1.0, 0.0], &[3]).unwrap();
            // A layer, and handles on its weight and bias (the same tensors) for their gradients.
            let make = || {
                let layer = Linear::from_tensors(weight.detach(), with_bias.then(|| bias.detach())).unwrap();
                let (w, b) = (layer.weight.clone(), layer.bias.clone());
                (layer, w, b)
            };
            let ((fused, fw, fb), (plain, pw, pb)) = (make(), make());
            let y = Sequential::new().add(fused).add(Relu).forward(&x, Mode::Train).unwrap();
            let recorded = format!("{y:?}");
            let one_op = with_bias && shape.len() == 2;
            assert_eq!(recorded.contains("grad_fn=linear_relu"), one_op, "{recorded}");
            let want = plain.forward(&x, Mode::Train).unwrap().relu().unwrap();
            assert!(same(&y.to_vec(), &want.to_vec()), "outputs differ ({with_bias}, {shape:?})");
            assert!(y.to_vec().iter().any(|v| v.is_nan()) && y.to_vec().contains(&0.0), "a NaN and zeros among them");
            let w = Tensor::from_vec((0..y.elem_count()).map(|i| i as f32 - 6.0).collect(), y.shape()).unwrap();
            let g_fused = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_plain = want.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |g: &crate::Gradients, t: &Tensor| g.get(t).unwrap().to_vec();
            assert!(same(&grad(&g_fused, &x), &grad(&g_plain, &x)), "dx ({with_bias}, {shape:?})");
            assert!(same(&grad(&g_fused, &fw), &grad(&g_plain, &pw)), "dW ({with_bias}, {shape:?})");
            if let (Some(fb), Some(pb)) = (fb, pb) {
                assert!(same(&grad(&g_fused, &fb), &grad(&g_plain, &pb)), "db ({with_bias}, {shape:?})");
            }
        }
    }

    /// A stride-1 convolution then a 2x2 max pooling, with a ReLU between or after, runs as
    /// one op ([`Tensor::conv2d_max_pool2`]) with the layers' values and input gradient bit
    /// for bit, and their filters' and bias's gradients to the rounding of the sums' order.
    /// A strided convolution, and one with enough channels for Winograd's path, give the same
    /// values as the layers too (the second, on up to 3 threads, through the op's two-op
    /// fallback).
    #[test]
    fn convolution_then_max_pool_runs_as_one_op_with_the_layers_values_and_gradients() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let close = |a: &[f32], b: &[f32]| {
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            scale > 0.0 && a.len() == b.len() && a.iter().zip(b).all(|(p, q)| (p - q).abs() <= 1e-5 * scale)
        };
        // (input channels, stride, ReLU between, fused)
        let cases = [(2, 1, true, true), (2, 1, false, true), (2, 2, true, false), (8, 1, true, true)];
        for (c, stride, relu_between, fused) in cases {
            let mut rng = crate::Rng::seed(7);
            let x = Tensor::rand_uniform(&[3, c, 11, 12], -1.0, 1.0, &mut rng).unwrap().set_requires_grad(true);
            let make = || {
                let mut conv = Conv2d::new(c, 9, [3, 3], &mut crate::Rng::seed(8)).unwrap();
                conv.stride = [stride, stride];
                conv.padding = [1, 0];
                let (w, b) = (conv.weight.clone(), conv.bias.clone().expect("a bias"));
                (conv, w, b)
            };
            let ((conv, fw, fb), (plain, pw, pb)) = (make(), make());
            let pool = Pool2d::max([2, 2]);
            let model = match relu_between {
                true => Sequential::new().add(conv).add(Relu).add(pool),
                false => Sequential::new().add(conv).add(pool).add(Relu),
            };
            let y = model.forward(&x, Mode::Train).unwrap();
            let recorded = format!("{y:?}");
            let case = format!("{c} channels, stride {stride}, ReLU between {relu_between}: {recorded}");
            assert!(recorded.contains("grad_fn=relu"), "{case}");
            let layers: [&dyn Module; 3] = if relu_between { [&plain, &Relu, &pool] } else { [&plain, &pool, &Relu] };
            let mut want = x.clone();
            for layer in layers {
                want = layer.forward(&want, Mode::Train).unwrap();
            }
            assert_eq!(bits(&y.to_vec()), bits(&want.to_vec()), "{case}: values");
            let w = Tensor::from_vec((0..y.elem_count()).map(|i| (i % 13) as f32 - 6.0).collect(), y.shape()).unwrap();
            let g_model = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let g_layers = want.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let grad = |g: &crate::Gradients, t: &Tensor| g.get(t).unwrap().to_vec();
            assert_eq!(bits(&grad(&g_model, &x)), bits(&grad(&g_layers, &x)), "{case}: dx");
            assert!(close(&grad(&g_model, &fw), &grad(&g_layers, &pw)), "{case}: dW");
            assert!(close(&grad(&g_model, &fb), &grad(&g_layers, &pb)), "{case}: db");
            // Where the pooling ran inside the convolution's op, the op before the ReLU is it.
            // 8 channels take Winograd's path, and with it the two ops, when there are at least
            // as many images (3) as threads.
            let winograd = c >= 8 && 3 >= rayon::current_num_threads();
            let before_relu = y.node().expect("recorded").inputs[0].node().expect("recorded").op;
            assert_eq!(before_relu == "conv2d_max_pool2", fused && !winograd, "{case}: {before_relu}");
        }
    }

    #[test]
    fn relu_before_max_pool_runs_after_it_with_the_same_values_and_gradients() {
        // Windows all negative, all zero, with ties between positives, with a NaN, and
        // mixed; a padded pooling as well as a plain 2x2 one.
        let mut data: Vec<f32> = (0..2 * 3 * 6 * 6).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        // The 2x2 windows of the first plane: all negative, zeros and a negative, a tie
        // between positives, a NaN.
        let windows: [([usize; 2], [f32; 4]); 4] = [
            ([0, 0], [-1.0, -2.0, -3.0, -4.0]),
            ([0, 2], [0.0, 0.0, -1.0, 0.0]),
            ([0, 4], [2.0, 2.0, 1.0, -1.0]),
            ([2, 0], [f32::NAN, 1.0, -2.0, 5.0]),
        ];
        for ([r, c], v) in windows {
            data[r * 6 + c..][..2].copy_from_slice(&v[..2]);
            data[(r + 1) * 6 + c..][..2].copy_from_slice(&v[2..]);
        }
        for pool in
            [Pool2d::max([2, 2]), Pool2d { kind: PoolKind::Max, kernel: [3, 3], stride: [2, 2], padding: [1, 1] }]
        {
            let x = Tensor::from_vec(data.clone(), &[2, 3, 6, 6]).unwrap().set_requires_grad(true);
            let model = Sequential::new().add(Relu).add(pool);
            let y = model.forward(&x, Mode::Train).unwrap();
            // The reorder ran: the ReLU is the last op recorded.
            let recorded = format!("{y:?}");
            assert!(recorded.contains("grad_fn=relu"), "pooling ran last: {recorded}");
            let w = Tensor::from_vec((0..y.elem_count()).map(|i| i as f32 - 20.0).collect(), y.shape()).unwrap();
            let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
            let (want_y, want_g) = unfused(&[&Relu, &pool], &x, &w);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same(&y.to_vec(), &want_y), "outputs differ with {pool:?}");
            assert!(same(&grads.get(&x).unwrap().to_vec(), &want_g), "gradients differ with {pool:?}");
            if pool.padding == [0, 0] {
                assert_eq!(want_y[..3].iter().map(|v| v.to_bits()).collect::<Vec<_>>(), [0u32, 0, 2.0f32.to_bits()]);
                assert!(want_y[3].is_nan(), "a NaN in a window stays NaN");
            }
        }
        // Average pooling is not reordered (ReLU of a mean is not the mean of ReLUs).
        let x = Tensor::from_vec(vec![-4.0, 2.0, 1.0, 1.0], &[1, 1, 2, 2]).unwrap();
        let y = Sequential::new().add(Relu).add(Pool2d::avg([2, 2])).forward(&x, Mode::Eval).unwrap();
        assert_eq!(y.to_vec(), [1.0]);
    }
}
