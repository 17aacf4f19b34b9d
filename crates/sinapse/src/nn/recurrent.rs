//! Recurrent networks: Elman RNN, LSTM and GRU, with PyTorch's equations, gate order and
//! parameter names.
//!
//! A recurrent layer reads a sequence one step at a time and feeds its own output (the hidden
//! state h) back in at the next step. Each step is written below with ordinary tensor ops, so
//! the graph of a whole sequence is the network unrolled in time, and `backward()` on it is
//! backpropagation through time.
//!
//! | cell | step |
//! | --- | --- |
//! | RNN | h' = tanh(W_ih x + b_ih + W_hh h + b_hh) |
//! | LSTM | i, f, g, o = σ, σ, tanh, σ of (W_ih x + b_ih + W_hh h + b_hh), in that order; c' = f·c + i·g; h' = o·tanh(c') |
//! | GRU | r, z = σ(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}); n = tanh(W_in x + b_in + r·(W_hn h + b_hn)); h' = (1 - z)·n + z·h |

use super::{join_name, Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// The kind of recurrent cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CellKind {
    /// Elman RNN with tanh.
    Rnn,
    /// Long short-term memory (Hochreiter & Schmidhuber, 1997).
    Lstm,
    /// Gated recurrent unit (Cho et al., 2014).
    Gru,
}

impl CellKind {
    /// Gate blocks stacked in the weight matrices: 1, 4 (i, f, g, o) or 3 (r, z, n).
    pub fn gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            CellKind::Rnn => "RNN",
            CellKind::Lstm => "LSTM",
            CellKind::Gru => "GRU",
        }
    }
}

/// The weights of one layer: `weight_ih` `[gates·H, input]`, `weight_hh` `[gates·H, H]`,
/// `bias_ih` and `bias_hh` `[gates·H]`.
struct LayerWeights {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
}

/// The state carried between steps: `h` `[layers, N, H]`, and for an LSTM the cell `c`.
#[derive(Clone, Debug)]
pub struct RecurrentState {
    /// Hidden state of every layer.
    pub h: Tensor,
    /// Cell state of every layer (LSTM only).
    pub c: Option<Tensor>,
}

/// A stack of recurrent layers (PyTorch's `nn.RNN`, `nn.LSTM`, `nn.GRU`).
///
/// Input `[T, N, I]`, or `[N, T, I]` with `batch_first`; output: the last layer's hidden state
/// at every step, `[T, N, H]` or `[N, T, H]`. Parameters are named `weight_ih_l0`,
/// `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `..._l1`, as in PyTorch, and initialised
/// uniformly in ±1/√H, as in PyTorch.
pub struct Recurrent {
    kind: CellKind,
    input_size: usize,
    hidden_size: usize,
    batch_first: bool,
    layers: Vec<LayerWeights>,
}

impl Recurrent {
    /// `num_layers` layers of `kind` reading `input_size` features with `hidden_size` units.
    pub fn new(
        kind: CellKind,
        input_size: usize,
        hidden_size: usize,
        num_layers: usize,
        batch_first: bool,
        rng: &mut Rng,
    ) -> Result<Recurrent> {
        if input_size == 0 || hidden_size == 0 || num_layers == 0 {
            return Err(Error::invalid(
                kind.name(),
                format!("sizes must be positive, got input {input_size}, hidden {hidden_size}, layers {num_layers}"),
            ));
        }
        let bound = 1.0 / (hidden_size as f32).sqrt();
        let g = kind.gates() * hidden_size;
        let mut draw = |shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::rand_uniform(shape, -bound, bound, rng)?.set_requires_grad(true))
        };
        let layers = (0..num_layers)
            .map(|l| {
                let inputs = if l == 0 { input_size } else { hidden_size };
                Ok(LayerWeights {
                    weight_ih: draw(&[g, inputs])?,
                    weight_hh: draw(&[g, hidden_size])?,
                    bias_ih: draw(&[g])?,
                    bias_hh: draw(&[g])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Recurrent { kind, input_size, hidden_size, batch_first, layers })
    }

    /// An LSTM (one layer, batch first).
    pub fn lstm(input_size: usize, hidden_size: usize, rng: &mut Rng) -> Result<Recurrent> {
        Recurrent::new(CellKind::Lstm, input_size, hidden_size, 1, true, rng)
    }

    /// A GRU (one layer, batch first).
    pub fn gru(input_size: usize, hidden_size: usize, rng: &mut Rng) -> Result<Recurrent> {
        Recurrent::new(CellKind::Gru, input_size, hidden_size, 1, true, rng)
    }

    /// An Elman RNN (one layer, batch first).
    pub fn rnn(input_size: usize, hidden_size: usize, rng: &mut Rng) -> Result<Recurrent> {
        Recurrent::new(CellKind::Rnn, input_size, hidden_size, 1, true, rng)
    }

    /// The cell kind.
    pub fn kind(&self) -> CellKind {
        self.kind
    }

    /// Units per layer.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// One step of one RNN or GRU layer: the new hidden state from input `x` `[N, I]` (an LSTM
    /// runs as one fused op instead, [`Recurrent::lstm_fused`]).
    fn step(&self, w: &LayerWeights, x: &Tensor, h: &Tensor) -> Result<Tensor> {
        let hs = self.hidden_size;
        let gate = |t: &Tensor, k: usize| t.narrow(1, k * hs, hs);
        let from_x = x.linear(&w.weight_ih, Some(&w.bias_ih))?;
        let from_h = h.linear(&w.weight_hh, Some(&w.bias_hh))?;
        match self.kind {
            CellKind::Rnn => from_x.add(&from_h)?.tanh(),
            CellKind::Lstm => Err(Error::invalid("LSTM", "runs as one fused op (Tensor::lstm), not step by step")),
            CellKind::Gru => {
                let r = gate(&from_x, 0)?.add(&gate(&from_h, 0)?)?.sigmoid()?;
                let z = gate(&from_x, 1)?.add(&gate(&from_h, 1)?)?.sigmoid()?;
                let n = gate(&from_x, 2)?.add(&r.mul(&gate(&from_h, 2)?)?)?.tanh()?;
                // h' = (1 - z)·n + z·h = n + z·(h - n)
                n.add(&z.mul(&h.sub(&n)?)?)
            }
        }
    }

    /// Runs the sequence from `state` (zeros when `None`); returns the output sequence and the
    /// final state of every layer.
    pub fn forward_with_state(&self, x: &Tensor, state: Option<&RecurrentState>) -> Result<(Tensor, RecurrentState)> {
        let op = self.kind.name();
        if x.rank() != 3 || x.shape()[2] != self.input_size {
            let layout = if self.batch_first { "[N, T, I]" } else { "[T, N, I]" };
            return Err(Error::invalid(
                op,
                format!("expects input {layout} with I = {}, got shape {:?}", self.input_size, x.shape()),
            ));
        }
        let time_axis = if self.batch_first { 1 } else { 0 };
        let (steps, n) = (x.shape()[time_axis], x.shape()[1 - time_axis]);
        let layers = self.layers.len();
        let state_shape = [layers, n, self.hidden_size];
        let (h0, c0) = match state {
            Some(s) => {
                if s.h.shape() != state_shape {
                    return Err(Error::shapes("initial hidden state", s.h.shape(), &state_shape));
                }
                let c = match (&s.c, self.kind) {
                    (Some(c), CellKind::Lstm) if c.shape() == state_shape => Some(c.clone()),
                    (_, CellKind::Lstm) => {
                        return Err(Error::invalid(op, format!("needs a cell state of shape {state_shape:?}")))
                    }
                    _ => None,
                };
                (s.h.clone(), c)
            }
            None => {
                let zeros = || Tensor::zeros_on(&state_shape, x.device());
                (zeros()?, (self.kind == CellKind::Lstm).then(zeros).transpose()?)
            }
        };
        if self.kind == CellKind::Lstm && steps > 0 {
            return self.lstm_fused(x, &h0, c0.as_ref().ok_or_else(|| Error::invalid(op, "missing cell state"))?);
        }
        // The sequence as one tensor per step, [N, features]; each layer turns it into the
        // next layer's input sequence.
        let mut seq: Vec<Tensor> =
            (0..steps).map(|t| x.narrow(time_axis, t, 1)?.squeeze(time_axis)).collect::<Result<_>>()?;
        let (mut h_last, mut c_last) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        // RNN and GRU layers; an LSTM gets here only for an empty sequence, whose final state
        // is the initial one.
        for (l, w) in self.layers.iter().enumerate() {
            let mut h = h0.narrow(0, l, 1)?.squeeze(0)?;
            let c = c0.as_ref().map(|c| c.narrow(0, l, 1)?.squeeze(0)).transpose()?;
            for x_t in seq.iter_mut() {
                h = self.step(w, x_t, &h)?;
                *x_t = h.clone();
            }
            h_last.push(h);
            if let Some(c) = c {
                c_last.push(c);
            }
        }
        let out = if steps == 0 {
            let shape = if self.batch_first { [n, 0, self.hidden_size] } else { [0, n, self.hidden_size] };
            Tensor::zeros_on(&shape, x.device())?
        } else {
            Tensor::stack(&seq.iter().collect::<Vec<_>>(), time_axis)?
        };
        let h_n = Tensor::stack(&h_last.iter().collect::<Vec<_>>(), 0)?;
        let c_n = if c_last.is_empty() { None } else { Some(Tensor::stack(&c_last.iter().collect::<Vec<_>>(), 0)?) };
        Ok((out, RecurrentState { h: h_n, c: c_n }))
    }
}

impl Recurrent {
    /// The LSTM's layers through the fused op ([`Tensor::lstm`], the equations of the table
    /// above), one recorded op per layer.
    fn lstm_fused(&self, x: &Tensor, h0: &Tensor, c0: &Tensor) -> Result<(Tensor, RecurrentState)> {
        let hs = self.hidden_size;
        // Time first, [T, N, features].
        let mut seq = if self.batch_first { x.transpose(0, 1)? } else { x.clone() };
        let (mut h_last, mut c_last) = (Vec::new(), Vec::new());
        for (l, w) in self.layers.iter().enumerate() {
            let layer = |s: &Tensor| s.narrow(0, l, 1)?.squeeze(0);
            let states = seq.lstm(&w.weight_ih, &w.weight_hh, &w.bias_ih, &w.bias_hh, &layer(h0)?, &layer(c0)?)?;
            let last = states.narrow(0, states.shape()[0] - 1, 1)?.squeeze(0)?;
            h_last.push(last.narrow(1, 0, hs)?);
            c_last.push(last.narrow(1, hs, hs)?);
            seq = states.narrow(2, 0, hs)?;
        }
        let out = if self.batch_first { seq.transpose(0, 1)? } else { seq };
        let h_n = Tensor::stack(&h_last.iter().collect::<Vec<_>>(), 0)?;
        let c_n = Tensor::stack(&c_last.iter().collect::<Vec<_>>(), 0)?;
        Ok((out, RecurrentState { h: h_n, c: Some(c_n) }))
    }
}

/// PyTorch's names: `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `..._l1`.
impl Parameters for Recurrent {
    fn visit_parameters(&self, prefix: &str, out: &mut Vec<(String, Tensor)>) {
        for (l, w) in self.layers.iter().enumerate() {
            for (name, t) in [
                ("weight_ih", &w.weight_ih),
                ("weight_hh", &w.weight_hh),
                ("bias_ih", &w.bias_ih),
                ("bias_hh", &w.bias_hh),
            ] {
                t.visit_parameters(&join_name(prefix, &format!("{name}_l{l}")), out);
            }
        }
    }
}

impl Module for Recurrent {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        Ok(self.forward_with_state(x, None)?.0)
    }

    fn describe(&self) -> String {
        format!(
            "{}({} -> {}, layers {}{})",
            self.kind.name(),
            self.input_size,
            self.hidden_size,
            self.layers.len(),
            if self.batch_first { ", batch first" } else { "" }
        )
    }
}
