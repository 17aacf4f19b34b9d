//! ONNX export: a trained model directory as an ONNX graph (opset 17) that deployment
//! runtimes (onnxruntime, TensorRT, ...) run unchanged.
//!
//! The graph takes the raw features, as `predict` does: the fitted scaler is its first nodes
//! (`(x - offset) / scale`). Each spec layer becomes ONNX's own operator: `Gemm` for linear,
//! `Conv`, `MaxPool`, `AveragePool` (padding counted, as Sinapse's), `Flatten`, `Reshape`,
//! dropout as `Identity`, the activations, `Softmax`, `RNN`/`LSTM`/`GRU` (between transposes to
//! and from sequence-first, their gate blocks reordered from PyTorch's to ONNX's), `Gather` for embeddings and a `Slice` for
//! the last step. The output is the network's own output (logits, for classification).
//! The protobuf is written by the `onnx-protobuf` crate (ONNX's schema, generated).

use std::collections::HashMap;

use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto, Message, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use super::{LayerSpec, Size2, TrainedModel};
use crate::data::Scaler;
use crate::nn::{Mode, Module};
use crate::{Error, Result, Tensor};

/// The ONNX operator set the graph is written for.
pub const OPSET: i64 = 17;

/// An attribute value of a node.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// The graph under construction.
struct Builder {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    counter: usize,
}

impl Builder {
    /// GELU as 0.5·x·(1 + erf(x/√2)): ONNX's Gelu is opset 20.
    fn gelu(&mut self, x: &str) -> String {
        let root2 = self.constant("sqrt2", &[], vec![std::f32::consts::SQRT_2]);
        let (one, half) = (self.constant("one", &[], vec![1.0]), self.constant("half", &[], vec![0.5]));
        let scaled = self.node("Div", &[x, &root2], vec![]);
        let erf = self.node("Erf", &[&scaled], vec![]);
        let cdf = self.node("Add", &[&erf, &one], vec![]);
        let xc = self.node("Mul", &[x, &cdf], vec![]);
        self.node("Mul", &[&xc, &half], vec![])
    }

    /// `x · wᵀ + b` over the last axis of `x` (any rank), `w` given as `[out, in]` values.
    fn dense(&mut self, x: &str, w: &[f32], b: &[f32], out: usize, inp: usize) -> String {
        let wn = self.constant("weight_t", &[inp, out], transposed(w, out, inp));
        let bn = self.constant("bias", &[out], b.to_vec());
        let y = self.node("MatMul", &[x, &wn], vec![]);
        self.node("Add", &[&y, &bn], vec![])
    }

    /// `mh · x · mwᵀ` over the last two axes, `mh` `[OH, H]` and `mw` `[OW, W]` given as values.
    fn resample(&mut self, x: &str, mh: Vec<f32>, hs: [usize; 2], mw: Vec<f32>, ws: [usize; 2]) -> String {
        let mh = self.constant("rows", &hs, mh);
        let mwt = self.constant("cols", &[ws[1], ws[0]], transposed(&mw, ws[0], ws[1]));
        let y = self.node("MatMul", &[x, &mwt], vec![]);
        self.node("MatMul", &[&mh, &y], vec![])
    }

    /// A fresh value name.
    fn name(&mut self, what: &str) -> String {
        self.counter += 1;
        format!("{what}_{}", self.counter)
    }

    /// A constant f32 tensor; returns its name.
    fn constant(&mut self, what: &str, dims: &[usize], values: Vec<f32>) -> String {
        let name = self.name(what);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.data_type = DataType::FLOAT as i32;
        t.float_data = values;
        self.initializers.push(t);
        name
    }

    /// A constant i64 tensor (shapes, axes, indices); returns its name.
    fn ints(&mut self, what: &str, values: &[i64]) -> String {
        let name = self.name(what);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.dims = vec![values.len() as i64];
        t.data_type = DataType::INT64 as i32;
        t.int64_data = values.to_vec();
        self.initializers.push(t);
        name
    }

    /// Adds a node of `op` reading `inputs`; returns its (first) output's name.
    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.name(&op.to_lowercase());
        self.node_with_outputs(op, inputs, &[&out], attrs);
        out
    }

    fn node_with_outputs(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        let mut n = NodeProto::new();
        n.op_type = op.to_string();
        n.name = self.name(&format!("{}_node", op.to_lowercase()));
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        for (name, value) in attrs {
            let mut a = AttributeProto::new();
            a.name = name.to_string();
            match value {
                Attr::Int(i) => {
                    a.type_ = AttributeType::INT.into();
                    a.i = i;
                }
                Attr::Ints(v) => {
                    a.type_ = AttributeType::INTS.into();
                    a.ints = v;
                }
                Attr::Float(f) => {
                    a.type_ = AttributeType::FLOAT.into();
                    a.f = f;
                }
            }
            n.attribute.push(a);
        }
        self.nodes.push(n);
    }
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix's values.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols * rows).map(|e| m[(e % rows) * cols + e / rows]).collect()
}

/// A graph input or output of f32 values with a symbolic batch axis `N`.
fn value_info(name: &str, shape_after_batch: &[usize]) -> ValueInfoProto {
    let mut dims = Vec::with_capacity(shape_after_batch.len() + 1);
    let mut batch = tensor_shape_proto::Dimension::new();
    batch.set_dim_param("N".into());
    dims.push(batch);
    for &d in shape_after_batch {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.set_dim_value(d as i64);
        dims.push(dim);
    }
    let mut shape = TensorShapeProto::new();
    shape.dim = dims;
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = protobuf::MessageField::some(shape);
    let mut ty = TypeProto::new();
    ty.set_tensor_type(tensor);
    let mut v = ValueInfoProto::new();
    v.name = name.to_string();
    v.type_ = protobuf::MessageField::some(ty);
    v
}

/// The blocks of `gates` rows each of a `[gates·h, cols]` matrix (or `[gates·h]` vector),
/// reordered: block `k` of the result is block `order[k]` of `values`.
fn reorder_gates(values: &[f32], h: usize, order: &[usize]) -> Vec<f32> {
    let block = values.len() / order.len();
    debug_assert_eq!(block % h.max(1), 0);
    order.iter().flat_map(|&k| values[k * block..(k + 1) * block].iter().copied()).collect()
}

/// The model directory's network as ONNX protobuf bytes; an unsupported layer is an error
/// naming it.
pub fn export(trained: &TrainedModel) -> Result<Vec<u8>> {
    let card = &trained.card;
    let params: HashMap<String, Tensor> = trained.model.state_dict().into_iter().collect();
    let param = |name: String| -> Result<&Tensor> {
        params.get(&name).ok_or_else(|| Error::invalid("onnx export", format!("the model has no parameter {name}")))
    };
    let values = |t: &Tensor| t.to(crate::Device::Cpu).map(|t| t.to_vec());
    let mut g = Builder { nodes: Vec::new(), initializers: Vec::new(), counter: 0 };
    let mut x = "input".to_string();
    // The scaler: (x - offset) / scale per feature.
    let scaling = match &card.scaler {
        Scaler::None => None,
        Scaler::Standard { mean, std } => Some((mean.clone(), std.clone())),
        Scaler::MinMax { min, max } => Some((min.clone(), max.iter().zip(min).map(|(a, b)| a - b).collect())),
    };
    if let Some((offset, scale)) = scaling {
        let f = offset.len();
        let o = g.constant("scaler_offset", &[f], offset);
        let s = g.constant("scaler_scale", &[f], scale);
        x = g.node("Sub", &[&x, &o], vec![]);
        x = g.node("Div", &[&x, &s], vec![]);
    }
    // Each layer's output shape, from a probe sample (for the reshapes and the sequences).
    let _guard = crate::no_grad();
    let mut probe_shape = vec![1];
    probe_shape.extend_from_slice(&card.input_shape);
    let mut probe = Tensor::zeros(&probe_shape);
    let layers = trained.model.layers();
    if layers.len() != card.spec.layers.len() {
        return Err(Error::invalid("onnx export", "the network does not match its spec's layers"));
    }
    for (i, (spec, layer)) in card.spec.layers.iter().zip(layers).enumerate() {
        let p = |s: &str| format!("{i}.{s}");
        let unsupported =
            |why: &str| Error::invalid("onnx export", format!("layer {i} ({}) cannot be exported: {why}", spec.kind()));
        x = match spec {
            LayerSpec::Linear { .. } => {
                let w = param(p("weight"))?;
                let wn = g.constant("weight", w.shape(), values(w)?);
                match params.get(&p("bias")) {
                    Some(b) => {
                        let bn = g.constant("bias", b.shape(), values(b)?);
                        g.node("Gemm", &[&x, &wn, &bn], vec![("transB", Attr::Int(1))])
                    }
                    None => g.node("Gemm", &[&x, &wn], vec![("transB", Attr::Int(1))]),
                }
            }
            LayerSpec::Relu => g.node("Relu", &[&x], vec![]),
            LayerSpec::LeakyRelu { slope } => g.node("LeakyRelu", &[&x], vec![("alpha", Attr::Float(*slope))]),
            LayerSpec::Sigmoid => g.node("Sigmoid", &[&x], vec![]),
            LayerSpec::Tanh => g.node("Tanh", &[&x], vec![]),
            LayerSpec::Step => {
                let zero = g.constant("zero", &[], vec![0.0]);
                let above = g.node("Greater", &[&x, &zero], vec![]);
                g.node("Cast", &[&above], vec![("to", Attr::Int(DataType::FLOAT as i64))])
            }
            LayerSpec::Softmax => g.node("Softmax", &[&x], vec![("axis", Attr::Int(-1))]),
            LayerSpec::LayerNorm { eps } => {
                let w = param(p("weight"))?;
                let b = param(p("bias"))?;
                let (wn, bn) = (g.constant("weight", w.shape(), values(w)?), g.constant("bias", b.shape(), values(b)?));
                g.node(
                    "LayerNormalization",
                    &[&x, &wn, &bn],
                    vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(*eps))],
                )
            }
            LayerSpec::BatchNorm1d { eps, .. } | LayerSpec::BatchNorm2d { eps, .. } => {
                // Inference form: the running statistics, then the per-channel scale and shift.
                let mut inputs = Vec::new();
                for name in ["weight", "bias", "running_mean", "running_var"] {
                    let t = param(p(name))?;
                    inputs.push(g.constant(name, t.shape(), values(t)?));
                }
                let refs: Vec<&str> = std::iter::once(x.as_str()).chain(inputs.iter().map(String::as_str)).collect();
                g.node("BatchNormalization", &refs, vec![("epsilon", Attr::Float(*eps))])
            }
            LayerSpec::GroupNorm { groups, eps } => {
                // [N, G, rest] standardised along the last axis, back to the input's shape,
                // then the per-channel scale and shift (ONNX's GroupNormalization is opset 18+).
                let w = param(p("weight"))?;
                let b = param(p("bias"))?;
                let rank = probe.rank();
                let mut per_channel = vec![w.elem_count()];
                per_channel.extend(std::iter::repeat_n(1, rank - 2));
                let (wn, bn) =
                    (g.constant("weight", &per_channel, values(w)?), g.constant("bias", &per_channel, values(b)?));
                let shape = g.node("Shape", &[&x], vec![]);
                let grouped_shape = g.ints("shape", &[0, *groups as i64, -1]);
                let grouped = g.node("Reshape", &[&x, &grouped_shape], vec![]);
                let mean =
                    g.node("ReduceMean", &[&grouped], vec![("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))]);
                let centred = g.node("Sub", &[&grouped, &mean], vec![]);
                let square = g.node("Mul", &[&centred, &centred], vec![]);
                let var =
                    g.node("ReduceMean", &[&square], vec![("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))]);
                let e = g.constant("eps", &[], vec![*eps]);
                let shifted = g.node("Add", &[&var, &e], vec![]);
                let std = g.node("Sqrt", &[&shifted], vec![]);
                let normed = g.node("Div", &[&centred, &std], vec![]);
                let back = g.node("Reshape", &[&normed, &shape], vec![]);
                let scaled = g.node("Mul", &[&back, &wn], vec![]);
                g.node("Add", &[&scaled, &bn], vec![])
            }
            LayerSpec::Gelu => g.gelu(&x),
            LayerSpec::Silu => {
                let s = g.node("Sigmoid", &[&x], vec![]);
                g.node("Mul", &[&x, &s], vec![])
            }
            LayerSpec::Elu { alpha } => g.node("Elu", &[&x], vec![("alpha", Attr::Float(*alpha))]),
            LayerSpec::Softplus => g.node("Softplus", &[&x], vec![]),
            LayerSpec::Dropout { .. } => g.node("Identity", &[&x], vec![]),
            LayerSpec::Flatten => g.node("Flatten", &[&x], vec![("axis", Attr::Int(1))]),
            LayerSpec::Reshape { shape } => {
                // 0 copies the batch axis.
                let target: Vec<i64> = std::iter::once(0).chain(shape.iter().map(|&d| d as i64)).collect();
                let s = g.ints("shape", &target);
                g.node("Reshape", &[&x, &s], vec![])
            }
            LayerSpec::Conv2d { stride, padding, dilation, .. } => {
                let w = param(p("weight"))?;
                let wn = g.constant("weight", w.shape(), values(w)?);
                let [ph, pw] = padding.pair().map(|v| v as i64);
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(w.shape()[2..].iter().map(|&d| d as i64).collect())),
                    ("strides", Attr::Ints(stride.pair().iter().map(|&d| d as i64).collect())),
                    ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                    ("dilations", Attr::Ints(dilation.pair().iter().map(|&d| d as i64).collect())),
                ];
                match params.get(&p("bias")) {
                    Some(b) => {
                        let bn = g.constant("bias", b.shape(), values(b)?);
                        g.node("Conv", &[&x, &wn, &bn], attrs)
                    }
                    None => g.node("Conv", &[&x, &wn], attrs),
                }
            }
            LayerSpec::ConvTranspose2d { stride, padding, output_padding, dilation, .. } => {
                let w = param(p("weight"))?;
                let wn = g.constant("weight", w.shape(), values(w)?);
                let [ph, pw] = padding.pair().map(|v| v as i64);
                let ints = |s: Size2| Attr::Ints(s.pair().iter().map(|&d| d as i64).collect());
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(w.shape()[2..].iter().map(|&d| d as i64).collect())),
                    ("strides", ints(*stride)),
                    ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                    ("output_padding", ints(*output_padding)),
                    ("dilations", ints(*dilation)),
                ];
                match params.get(&p("bias")) {
                    Some(b) => {
                        let bn = g.constant("bias", b.shape(), values(b)?);
                        g.node("ConvTranspose", &[&x, &wn, &bn], attrs)
                    }
                    None => g.node("ConvTranspose", &[&x, &wn], attrs),
                }
            }
            LayerSpec::AdaptiveAvgPool2d { size } => {
                let [h, w] = [probe.shape()[2], probe.shape()[3]];
                let [oh, ow] = size.pair();
                let (mh, mw) = (crate::ops::conv::adaptive_matrix(oh, h), crate::ops::conv::adaptive_matrix(ow, w));
                g.resample(&x, mh, [oh, h], mw, [ow, w])
            }
            LayerSpec::Upsample { scale, mode, align_corners } => {
                let [h, w] = [probe.shape()[2], probe.shape()[3]];
                let [oh, ow] = [h * scale.pair()[0], w * scale.pair()[1]];
                match mode {
                    super::layers::UpsampleKind::Nearest => {
                        let rows: Vec<i64> = (0..oh).map(|i| ((i * h) / oh) as i64).collect();
                        let cols: Vec<i64> = (0..ow).map(|i| ((i * w) / ow) as i64).collect();
                        let (r, c) = (g.ints("rows", &rows), g.ints("cols", &cols));
                        let y = g.node("Gather", &[&x, &r], vec![("axis", Attr::Int(2))]);
                        g.node("Gather", &[&y, &c], vec![("axis", Attr::Int(3))])
                    }
                    super::layers::UpsampleKind::Bilinear => {
                        let mh = crate::ops::conv::linear_matrix(oh, h, *align_corners);
                        let mw = crate::ops::conv::linear_matrix(ow, w, *align_corners);
                        g.resample(&x, mh, [oh, h], mw, [ow, w])
                    }
                }
            }
            LayerSpec::Conv1d { stride, padding, dilation, .. } => {
                let w = param(p("weight"))?;
                let wn = g.constant("weight", w.shape(), values(w)?);
                let attrs = vec![
                    ("kernel_shape", Attr::Ints(vec![w.shape()[2] as i64])),
                    ("strides", Attr::Ints(vec![*stride as i64])),
                    ("pads", Attr::Ints(vec![*padding as i64, *padding as i64])),
                    ("dilations", Attr::Ints(vec![*dilation as i64])),
                ];
                match params.get(&p("bias")) {
                    Some(b) => {
                        let bn = g.constant("bias", b.shape(), values(b)?);
                        g.node("Conv", &[&x, &wn, &bn], attrs)
                    }
                    None => g.node("Conv", &[&x, &wn], attrs),
                }
            }
            LayerSpec::MaxPool2d { kernel, stride, padding } | LayerSpec::AvgPool2d { kernel, stride, padding } => {
                let kernel = kernel.pair();
                let stride = stride.map_or(kernel, |s| s.pair());
                let [ph, pw] = padding.pair().map(|v| v as i64);
                let mut attrs = vec![
                    ("kernel_shape", Attr::Ints(kernel.iter().map(|&d| d as i64).collect())),
                    ("strides", Attr::Ints(stride.iter().map(|&d| d as i64).collect())),
                    ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                ];
                if matches!(spec, LayerSpec::MaxPool2d { .. }) {
                    g.node("MaxPool", &[&x], attrs)
                } else {
                    // Sinapse's average counts the padding, as PyTorch's default.
                    attrs.push(("count_include_pad", Attr::Int(1)));
                    g.node("AveragePool", &[&x], attrs)
                }
            }
            LayerSpec::Rnn { hidden, layers }
            | LayerSpec::Lstm { hidden, layers }
            | LayerSpec::Gru { hidden, layers } => {
                let h = *hidden;
                let (op, gates, order): (&str, usize, &[usize]) = match spec {
                    // ONNX's gate order: LSTM i, o, f, c (PyTorch's i, f, g, o); GRU z, r, h
                    // (PyTorch's r, z, n).
                    LayerSpec::Lstm { .. } => ("LSTM", 4, &[0, 3, 1, 2]),
                    LayerSpec::Gru { .. } => ("GRU", 3, &[1, 0, 2]),
                    _ => ("RNN", 1, &[0]),
                };
                // Sequence first (`layout` 0, which runtimes support): [N, T, I] -> [T, N, I].
                let mut seq = g.node("Transpose", &[&x], vec![("perm", Attr::Ints(vec![1, 0, 2]))]);
                for l in 0..*layers {
                    let w_ih = param(p(&format!("weight_ih_l{l}")))?;
                    let w_hh = param(p(&format!("weight_hh_l{l}")))?;
                    let b_ih = param(p(&format!("bias_ih_l{l}")))?;
                    let b_hh = param(p(&format!("bias_hh_l{l}")))?;
                    let inputs = w_ih.shape()[1];
                    let w = g.constant("W", &[1, gates * h, inputs], reorder_gates(&values(w_ih)?, h, order));
                    let r = g.constant("R", &[1, gates * h, h], reorder_gates(&values(w_hh)?, h, order));
                    let mut biases = reorder_gates(&values(b_ih)?, h, order);
                    biases.extend(reorder_gates(&values(b_hh)?, h, order));
                    let b = g.constant("B", &[1, 2 * gates * h], biases);
                    let mut attrs = vec![("hidden_size", Attr::Int(h as i64))];
                    if op == "GRU" {
                        // PyTorch applies the reset gate after the hidden state's product.
                        attrs.push(("linear_before_reset", Attr::Int(1)));
                    }
                    let y = g.name("y");
                    g.node_with_outputs(op, &[&seq, &w, &r, &b], &[&y], attrs);
                    // Y is [T, directions = 1, N, H].
                    let axes = g.ints("axes", &[1]);
                    seq = g.node("Squeeze", &[&y, &axes], vec![]);
                }
                g.node("Transpose", &[&seq], vec![("perm", Attr::Ints(vec![1, 0, 2]))])
            }
            LayerSpec::LastStep => {
                let (starts, ends, axes) = (g.ints("starts", &[-1]), g.ints("ends", &[i64::MAX]), g.ints("axes", &[1]));
                let last = g.node("Slice", &[&x, &starts, &ends, &axes], vec![]);
                let squeeze_axes = g.ints("axes", &[1]);
                g.node("Squeeze", &[&last, &squeeze_axes], vec![])
            }
            LayerSpec::PositionalEncoding { .. } => {
                // The table for this input length: the layer's output for zeros.
                let zeros = Tensor::zeros(probe.shape());
                let table = layer.forward(&zeros, Mode::Eval).map_err(|e| unsupported(&e.to_string()))?;
                let t = g.constant("positions", &probe.shape()[1..], values(&table)?);
                g.node("Add", &[&x, &t], vec![])
            }
            LayerSpec::TransformerEncoder { heads, activation, norm_first, causal, layers, .. } => {
                let (t, d) = (probe.shape()[1], probe.shape()[2]);
                let (h, hd) = (*heads, d / heads.max(&1));
                let mut x = x;
                for j in 0..(*layers).max(1) {
                    let q = |s: &str| format!("{i}.layers.{j}.{s}");
                    let w_in = values(param(q("self_attn.in_proj_weight"))?)?;
                    let b_in = values(param(q("self_attn.in_proj_bias"))?)?;
                    let norm = |g: &mut Builder, x: &str, n: &str| -> Result<String> {
                        let w = values(param(q(&format!("{n}.weight")))?)?;
                        let b = values(param(q(&format!("{n}.bias")))?)?;
                        let (wn, bn) = (g.constant("weight", &[d], w), g.constant("bias", &[d], b));
                        Ok(g.node(
                            "LayerNormalization",
                            &[x, &wn, &bn],
                            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(crate::nn::DEFAULT_EPS))],
                        ))
                    };
                    let attention = |g: &mut Builder, x: &str| -> Result<String> {
                        // [N, T, D] -> [N, H, T, hd] per projection (keys as [N, H, hd, T]).
                        let split = g.ints("shape", &[0, t as i64, h as i64, hd as i64]);
                        let mut parts = Vec::new();
                        for (part, perm) in [(0, [0, 2, 1, 3]), (1, [0, 2, 3, 1]), (2, [0, 2, 1, 3])] {
                            let rows = part * d * d..(part + 1) * d * d;
                            let y = g.dense(x, &w_in[rows], &b_in[part * d..(part + 1) * d], d, d);
                            let y = g.node("Reshape", &[&y, &split], vec![]);
                            parts.push(g.node("Transpose", &[&y], vec![("perm", Attr::Ints(perm.to_vec()))]));
                        }
                        let scores = g.node("MatMul", &[&parts[0], &parts[1]], vec![]);
                        let scale = g.constant("scale", &[], vec![1.0 / (hd.max(1) as f32).sqrt()]);
                        let mut scores = g.node("Mul", &[&scores, &scale], vec![]);
                        if *causal {
                            let mask: Vec<f32> =
                                (0..t * t).map(|e| if e % t <= e / t { 0.0 } else { f32::NEG_INFINITY }).collect();
                            let m = g.constant("causal_mask", &[t, t], mask);
                            scores = g.node("Add", &[&scores, &m], vec![]);
                        }
                        let weights = g.node("Softmax", &[&scores], vec![("axis", Attr::Int(-1))]);
                        let out = g.node("MatMul", &[&weights, &parts[2]], vec![]);
                        let out = g.node("Transpose", &[&out], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]);
                        let join = g.ints("shape", &[0, t as i64, d as i64]);
                        let out = g.node("Reshape", &[&out, &join], vec![]);
                        let w = values(param(q("self_attn.out_proj.weight"))?)?;
                        let b = values(param(q("self_attn.out_proj.bias"))?)?;
                        Ok(g.dense(&out, &w, &b, d, d))
                    };
                    let feed_forward = |g: &mut Builder, x: &str| -> Result<String> {
                        let (w1, b1) = (param(q("linear1.weight"))?, param(q("linear1.bias"))?);
                        let ff = w1.shape()[0];
                        let hidden = g.dense(x, &values(w1)?, &values(b1)?, ff, d);
                        let hidden = match activation {
                            super::layers::FeedForwardKind::Relu => g.node("Relu", &[&hidden], vec![]),
                            super::layers::FeedForwardKind::Gelu => g.gelu(&hidden),
                        };
                        let (w2, b2) = (param(q("linear2.weight"))?, param(q("linear2.bias"))?);
                        Ok(g.dense(&hidden, &values(w2)?, &values(b2)?, d, ff))
                    };
                    x = if *norm_first {
                        let n1 = norm(&mut g, &x, "norm1")?;
                        let a = attention(&mut g, &n1)?;
                        let x1 = g.node("Add", &[&x, &a], vec![]);
                        let n2 = norm(&mut g, &x1, "norm2")?;
                        let f = feed_forward(&mut g, &n2)?;
                        g.node("Add", &[&x1, &f], vec![])
                    } else {
                        let a = attention(&mut g, &x)?;
                        let s1 = g.node("Add", &[&x, &a], vec![]);
                        let x1 = norm(&mut g, &s1, "norm1")?;
                        let f = feed_forward(&mut g, &x1)?;
                        let s2 = g.node("Add", &[&x1, &f], vec![]);
                        norm(&mut g, &s2, "norm2")?
                    };
                }
                x
            }
            LayerSpec::Embedding { .. } => {
                let w = param(p("weight"))?;
                let wn = g.constant("weight", w.shape(), values(w)?);
                let ids = g.node("Cast", &[&x], vec![("to", Attr::Int(DataType::INT64 as i64))]);
                g.node("Gather", &[&wn, &ids], vec![("axis", Attr::Int(0))])
            }
        };
        probe = layer.forward(&probe, Mode::Eval).map_err(|e| unsupported(&e.to_string()))?;
    }
    g.node_with_outputs("Identity", &[&x], &["output"], vec![]);
    let mut graph = GraphProto::new();
    graph.name = "sinapse".into();
    graph.node = g.nodes;
    graph.initializer = g.initializers;
    graph.input = vec![value_info("input", &card.input_shape)];
    graph.output = vec![value_info("output", &probe.shape()[1..])];
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.producer_name = "sinapse".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.graph = protobuf::MessageField::some(graph);
    model.write_to_bytes().map_err(|e| Error::invalid("onnx export", e.to_string()))
}
