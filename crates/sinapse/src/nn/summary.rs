//! A Keras-style summary of a model: each layer, its output shape and parameter count.

use super::{Mode, Module, Sequential};
use crate::{no_grad, Result, Tensor};

/// One row of a [`summary`].
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// Position and description, e.g. `0: Linear(784 -> 256)`.
    pub layer: String,
    /// Output shape with the batch axis shown as `-1`, e.g. `[-1, 256]`.
    pub output_shape: Vec<isize>,
    /// Trainable scalars of the layer.
    pub params: usize,
}

/// Runs one zero sample of shape `input_shape` (without the batch axis) through `model`,
/// layer by layer, and records every layer's output shape and parameter count.
pub fn layer_summaries(model: &Sequential, input_shape: &[usize]) -> Result<Vec<LayerSummary>> {
    let _off = no_grad();
    let mut shape = vec![1];
    shape.extend_from_slice(input_shape);
    let mut h = Tensor::zeros_on(&shape, model.device())?;
    let mut rows = Vec::with_capacity(model.len());
    for (i, layer) in model.layers().iter().enumerate() {
        h = layer.forward(&h, Mode::Eval)?;
        let mut out: Vec<isize> = h.shape().iter().map(|&d| d as isize).collect();
        if let Some(first) = out.first_mut() {
            *first = -1;
        }
        rows.push(LayerSummary {
            layer: format!("{i}: {}", layer.describe()),
            output_shape: out,
            params: layer.num_parameters(),
        });
    }
    Ok(rows)
}

/// The summary as a table, as Keras's `model.summary()` prints it.
pub fn summary(model: &Sequential, input_shape: &[usize]) -> Result<String> {
    let rows = layer_summaries(model, input_shape)?;
    let shape_text = |s: &[isize]| format!("{s:?}");
    let w0 = rows.iter().map(|r| r.layer.len()).chain(["Layer (type)".len()]).max().unwrap_or(12);
    let w1 = rows.iter().map(|r| shape_text(&r.output_shape).len()).chain(["Output Shape".len()]).max().unwrap_or(12);
    let w2 = rows.iter().map(|r| r.params.to_string().len()).chain(["Param #".len()]).max().unwrap_or(7);
    let rule = "=".repeat(w0 + w1 + w2 + 4);
    let mut out = format!(
        "input: {:?}\n{rule}\n",
        [&[-1isize][..], &input_shape.iter().map(|&d| d as isize).collect::<Vec<_>>()].concat()
    );
    out.push_str(&format!("{:<w0$}  {:<w1$}  {:>w2$}\n{rule}\n", "Layer (type)", "Output Shape", "Param #"));
    for r in &rows {
        out.push_str(&format!("{:<w0$}  {:<w1$}  {:>w2$}\n", r.layer, shape_text(&r.output_shape), r.params));
    }
    let total: usize = rows.iter().map(|r| r.params).sum();
    out.push_str(&format!("{rule}\nTotal params: {total}\nTrainable params: {total}\n"));
    Ok(out)
}
