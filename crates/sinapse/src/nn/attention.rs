//! Attention (Vaswani et al., 2017): each position of a sequence looks at every position of
//! another (or the same) sequence and takes a weighted average of their values, the weights
//! coming from how well its query matches their keys. [`MultiheadAttention`] runs several
//! such averages side by side; [`TransformerEncoderLayer`] stacks attention and a small MLP
//! per position, each with a residual connection and layer normalisation; a
//! [`PositionalEncoding`] tells the positions apart, which attention alone cannot. All in
//! tensor ops, so they run on every device and differentiate through autograd.

use super::{Dropout, Init, LayerNorm, Linear, Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// `softmax(q·kᵀ / √d + mask) · v` over the last two axes: queries `[.., L, d]`, keys
/// `[.., S, d]`, values `[.., S, dv]` give `[.., L, dv]` (leading axes broadcast), as
/// PyTorch's `F.scaled_dot_product_attention`. Returns the output and the attention weights
/// `[.., L, S]` (each row sums to 1).
///
/// `mask`, broadcast to `[.., L, S]`, says which keys each query may attend to: non-zero where
/// it may, 0 where it may not (PyTorch's boolean `attn_mask`). `causal` lets query `i` see
/// only keys `0..=i` (`is_causal`). A query that may attend to no key gets NaN, as in PyTorch.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Result<(Tensor, Tensor)> {
    let op = "scaled_dot_product_attention";
    if q.rank() < 2 || k.rank() < 2 || v.rank() < 2 {
        return Err(Error::invalid(
            op,
            format!("needs [.., L, d] operands, got {:?}, {:?}, {:?}", q.shape(), k.shape(), v.shape()),
        ));
    }
    let (d, s) = (q.shape()[q.rank() - 1], k.shape()[k.rank() - 2]);
    if k.shape()[k.rank() - 1] != d {
        return Err(Error::shapes("scaled_dot_product_attention (query vs key size)", q.shape(), k.shape()));
    }
    if v.shape()[v.rank() - 2] != s {
        return Err(Error::shapes("scaled_dot_product_attention (keys vs values)", k.shape(), v.shape()));
    }
    let l = q.shape()[q.rank() - 2];
    let mut scores = q.matmul(&k.transpose(-2, -1)?)?.mul_scalar(1.0 / (d.max(1) as f32).sqrt())?;
    let blocked = Tensor::full_on(&[], f32::NEG_INFINITY, q.device())?;
    let open = Tensor::full_on(&[], 0.0, q.device())?;
    if causal {
        // Key j is visible to query i when j <= i.
        let rows = Tensor::arange_on(0.0, l as f32, 1.0, q.device())?.reshape(&[l, 1])?;
        let cols = Tensor::arange_on(0.0, s as f32, 1.0, q.device())?.reshape(&[1, s])?;
        scores = scores.add(&cols.le(&rows)?.where_cond(&open, &blocked)?)?;
    }
    if let Some(m) = mask {
        let zero = Tensor::full_on(&[], 0.0, m.device())?;
        scores = scores.add(&m.ne(&zero)?.where_cond(&open, &blocked)?)?;
    }
    let weights = scores.softmax(-1)?;
    Ok((weights.matmul(v)?, weights))
}

/// Multi-head attention with PyTorch's parameters and names (`nn.MultiheadAttention` with
/// `batch_first=True`): the queries, keys and values projected by `in_proj_weight`
/// `[3·embed, embed]` and `in_proj_bias` `[3·embed]` (the three stacked in that order), split
/// into `heads` heads of `embed / heads` values, attended to separately, joined, and projected
/// by `out_proj` (`out_proj.weight`, `out_proj.bias`). Inputs are `[batch, length, embed]`.
///
/// As a [`Module`] it is self-attention: `forward(x)` attends from `x` to `x`.
#[derive(Parameters)]
pub struct MultiheadAttention {
    /// The query, key and value projections stacked, `[3·embed, embed]`.
    pub in_proj_weight: Tensor,
    /// Their biases, `[3·embed]`.
    pub in_proj_bias: Tensor,
    /// The output projection, `embed -> embed`.
    pub out_proj: Linear,
    /// Number of heads.
    #[parameters(skip)]
    pub heads: usize,
    /// Dropout on the attention weights (training only).
    pub dropout: Dropout,
}

impl MultiheadAttention {
    /// `heads` heads over `embed` values per position (a multiple of `heads`), with dropout
    /// `p` on the attention weights; initialised as PyTorch's (Xavier-uniform projections,
    /// zero biases).
    pub fn new(embed: usize, heads: usize, dropout: f32, rng: &mut Rng) -> Result<MultiheadAttention> {
        if embed == 0 || heads == 0 || !embed.is_multiple_of(heads) {
            return Err(Error::invalid(
                "MultiheadAttention",
                format!("the embedding size must be a positive multiple of the heads, got {embed} and {heads} heads"),
            ));
        }
        let in_proj_weight =
            Init::XavierUniform.weight(&[3 * embed, embed], embed, 3 * embed, rng)?.set_requires_grad(true);
        let mut out_proj = Linear::new(embed, embed, rng)?;
        out_proj.bias = Some(Tensor::zeros(&[embed]).set_requires_grad(true));
        Ok(MultiheadAttention {
            in_proj_weight,
            in_proj_bias: Tensor::zeros(&[3 * embed]).set_requires_grad(true),
            out_proj,
            heads,
            dropout: Dropout::new(dropout, rng)?,
        })
    }

    /// The embedding size.
    pub fn embed(&self) -> usize {
        self.out_proj.in_features()
    }

    /// Attention from `query` `[N, L, E]` to `key` and `value` `[N, S, E]`. `key_padding_mask`
    /// `[N, S]` is non-zero at the keys to ignore (padding; PyTorch's `key_padding_mask`);
    /// `causal` hides later positions. Returns the output `[N, L, E]` and the attention
    /// weights averaged over the heads, `[N, L, S]` (PyTorch's default `need_weights`; in
    /// training, after dropout).
    pub fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        causal: bool,
        mode: Mode,
    ) -> Result<(Tensor, Tensor)> {
        let e = self.embed();
        if self.heads == 0 || !e.is_multiple_of(self.heads) {
            return Err(Error::invalid(
                "MultiheadAttention",
                format!("{} heads do not divide the embedding size {e}", self.heads),
            ));
        }
        let (h, d) = (self.heads, e / self.heads);
        for (what, t) in [("query", query), ("key", key), ("value", value)] {
            if t.rank() != 3 || t.shape()[2] != e {
                return Err(Error::invalid(
                    "MultiheadAttention",
                    format!("expects {what} [batch, length, {e}], got {:?}", t.shape()),
                ));
            }
        }
        let (n, l, s) = (query.shape()[0], query.shape()[1], key.shape()[1]);
        if key.shape()[0] != n || value.shape()[..2] != key.shape()[..2] {
            return Err(Error::shapes("MultiheadAttention (key vs value)", key.shape(), value.shape()));
        }
        // [N, T, E] -> [N, H, T, d], projected by rows `part*E..(part+1)*E` of in_proj.
        let project = |x: &Tensor, part: usize| -> Result<Tensor> {
            let w = self.in_proj_weight.narrow(0, part * e, e)?;
            let b = self.in_proj_bias.narrow(0, part * e, e)?;
            let t = x.shape()[1];
            x.matmul(&w.t()?)?.add(&b)?.reshape(&[n, t, h, d])?.permute(&[0, 2, 1, 3])
        };
        let (q, k, v) = (project(query, 0)?, project(key, 1)?, project(value, 2)?);
        let mask = match key_padding_mask {
            Some(m) if m.shape() != [n, s] => {
                return Err(Error::shapes(
                    "MultiheadAttention (key_padding_mask vs [batch, keys])",
                    m.shape(),
                    &[n, s],
                ));
            }
            // Non-zero marks padding: attend where it is 0. [N, 1, 1, S] broadcasts over heads and queries.
            Some(m) => Some(m.eq(&Tensor::full_on(&[], 0.0, m.device())?)?.reshape(&[n, 1, 1, s])?),
            None => None,
        };
        let (_, weights) = scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), causal)?;
        // The weights returned are those applied: after dropout, as PyTorch's.
        let weights = self.dropout.forward(&weights, mode)?;
        let out = weights.matmul(&v)?.permute(&[0, 2, 1, 3])?.reshape(&[n, l, e])?;
        Ok((self.out_proj.forward(&out, mode)?, weights.mean(1, false)?))
    }
}

impl Module for MultiheadAttention {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(self.attend(x, x, x, None, false, mode)?.0)
    }
    fn describe(&self) -> String {
        format!("MultiheadAttention({}, heads {})", self.embed(), self.heads)
    }
}

/// The position-wise network's activation in a [`TransformerEncoderLayer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FeedForwardActivation {
    /// ReLU (PyTorch's default).
    #[default]
    Relu,
    /// GELU (exact).
    Gelu,
}

/// One transformer encoder layer with PyTorch's parameter names
/// (`nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
/// batch_first=True, norm_first)`): self-attention, then a two-layer network applied at every
/// position, each added back to its input (residual) and layer-normalised: after the sum
/// (post-norm, the original paper and PyTorch's default) or before the block (pre-norm,
/// `norm_first`, which trains deep stacks more easily). Inputs `[batch, length, d_model]`.
#[derive(Parameters)]
pub struct TransformerEncoderLayer {
    /// Self-attention.
    pub self_attn: MultiheadAttention,
    /// `d_model -> dim_feedforward`.
    pub linear1: Linear,
    /// Dropout inside the position-wise network.
    pub dropout: Dropout,
    /// `dim_feedforward -> d_model`.
    pub linear2: Linear,
    /// Normalisation of the attention block.
    pub norm1: LayerNorm,
    /// Normalisation of the position-wise block.
    pub norm2: LayerNorm,
    /// Dropout on the attention block's output.
    pub dropout1: Dropout,
    /// Dropout on the position-wise block's output.
    pub dropout2: Dropout,
    /// The position-wise network's activation.
    pub activation: FeedForwardActivation,
    /// Pre-norm when true, post-norm when false.
    pub norm_first: bool,
    /// Whether each position sees only itself and earlier ones (a causal mask).
    pub causal: bool,
}

impl TransformerEncoderLayer {
    /// A layer of width `d_model` with `heads` heads, a position-wise network of
    /// `dim_feedforward` units, and dropout `p` in the three places PyTorch puts it (and on
    /// the attention weights); post-norm, ReLU, no mask.
    pub fn new(
        d_model: usize,
        heads: usize,
        dim_feedforward: usize,
        p: f32,
        rng: &mut Rng,
    ) -> Result<TransformerEncoderLayer> {
        Ok(TransformerEncoderLayer {
            self_attn: MultiheadAttention::new(d_model, heads, p, rng)?,
            linear1: Linear::new(d_model, dim_feedforward, rng)?,
            dropout: Dropout::new(p, rng)?,
            linear2: Linear::new(dim_feedforward, d_model, rng)?,
            norm1: LayerNorm::new(d_model, super::DEFAULT_EPS)?,
            norm2: LayerNorm::new(d_model, super::DEFAULT_EPS)?,
            dropout1: Dropout::new(p, rng)?,
            dropout2: Dropout::new(p, rng)?,
            activation: FeedForwardActivation::Relu,
            norm_first: false,
            causal: false,
        })
    }

    /// The forward pass with a padding mask over the keys (`[batch, length]`, non-zero at
    /// padding, as PyTorch's `src_key_padding_mask`).
    pub fn forward_masked(&self, x: &Tensor, key_padding_mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let attention = |h: &Tensor| -> Result<Tensor> {
            let (a, _) = self.self_attn.attend(h, h, h, key_padding_mask, self.causal, mode)?;
            self.dropout1.forward(&a, mode)
        };
        let feed_forward = |h: &Tensor| -> Result<Tensor> {
            let hidden = self.linear1.forward(h, mode)?;
            let hidden = match self.activation {
                FeedForwardActivation::Relu => hidden.relu()?,
                FeedForwardActivation::Gelu => hidden.gelu()?,
            };
            let out = self.linear2.forward(&self.dropout.forward(&hidden, mode)?, mode)?;
            self.dropout2.forward(&out, mode)
        };
        if self.norm_first {
            let x = x.add(&attention(&self.norm1.forward(x, mode)?)?)?;
            x.add(&feed_forward(&self.norm2.forward(&x, mode)?)?)
        } else {
            let x = self.norm1.forward(&x.add(&attention(x)?)?, mode)?;
            self.norm2.forward(&x.add(&feed_forward(&x)?)?, mode)
        }
    }
}

impl Module for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_masked(x, None, mode)
    }
    fn describe(&self) -> String {
        format!(
            "TransformerEncoderLayer({}, heads {}, feed-forward {}, {}{})",
            self.self_attn.embed(),
            self.self_attn.heads,
            self.linear1.out_features(),
            if self.norm_first { "pre-norm" } else { "post-norm" },
            if self.causal { ", causal" } else { "" }
        )
    }
}

/// A stack of [`TransformerEncoderLayer`]s applied in turn, named `layers.0.*`, `layers.1.*`
/// as PyTorch's `nn.TransformerEncoder` (without its optional final norm).
#[derive(Parameters)]
pub struct TransformerEncoder {
    /// The layers, in order.
    pub layers: Vec<TransformerEncoderLayer>,
}

impl TransformerEncoder {
    /// The forward pass with a padding mask over the keys, given to every layer.
    pub fn forward_masked(&self, x: &Tensor, key_padding_mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = layer.forward_masked(&h, key_padding_mask, mode)?;
        }
        Ok(h)
    }
}

impl Module for TransformerEncoder {
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_masked(x, None, mode)
    }
    fn describe(&self) -> String {
        match self.layers.first() {
            Some(l) => format!("TransformerEncoder({} x {})", self.layers.len(), l.describe()),
            None => "TransformerEncoder(no layers)".into(),
        }
    }
}

/// Adds a vector per position to `[batch, length, dim]` inputs, so that attention, which
/// treats its inputs as a set, can tell positions apart: the fixed sines and cosines of
/// Vaswani et al. (`PE[t, 2i] = sin(t / 10000^(2i/dim))`, `PE[t, 2i+1] = cos(..)`), or a
/// learned table `weight` `[max_len, dim]` (as BERT and GPT do).
#[derive(Parameters)]
pub struct PositionalEncoding {
    /// The learned table `[max_len, dim]` (a parameter), or `None` for the sinusoidal one.
    pub weight: Option<Tensor>,
    /// The fixed sinusoidal table `[max_len, dim]` (not a parameter: it is recomputed, not saved).
    #[parameters(skip)]
    fixed: Option<Tensor>,
}

impl PositionalEncoding {
    /// The fixed sinusoidal encoding for up to `max_len` positions of `dim` values.
    pub fn sinusoidal(max_len: usize, dim: usize) -> Result<PositionalEncoding> {
        check_sizes(max_len, dim)?;
        let mut table = vec![0.0f32; max_len * dim];
        for t in 0..max_len {
            for i in 0..dim {
                let rate = 10000f64.powf(-((i - i % 2) as f64) / dim as f64);
                let angle = t as f64 * rate;
                table[t * dim + i] = if i % 2 == 0 { angle.sin() } else { angle.cos() } as f32;
            }
        }
        Ok(PositionalEncoding { weight: None, fixed: Some(Tensor::from_vec(table, &[max_len, dim])?) })
    }

    /// A learned table for up to `max_len` positions, drawn from N(0, 0.02²) (GPT-2's).
    pub fn learned(max_len: usize, dim: usize, rng: &mut Rng) -> Result<PositionalEncoding> {
        check_sizes(max_len, dim)?;
        let weight = Tensor::rand_normal(&[max_len, dim], 0.0, 0.02, rng)?.set_requires_grad(true);
        Ok(PositionalEncoding { weight: Some(weight), fixed: None })
    }

    fn table(&self) -> Result<&Tensor> {
        self.weight.as_ref().or(self.fixed.as_ref()).ok_or_else(|| Error::invalid("PositionalEncoding", "no table"))
    }
}

fn check_sizes(max_len: usize, dim: usize) -> Result<()> {
    if max_len == 0 || dim == 0 {
        return Err(Error::invalid("PositionalEncoding", format!("sizes must be positive, got {max_len} x {dim}")));
    }
    Ok(())
}

impl Module for PositionalEncoding {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let table = self.table()?;
        let (max_len, dim) = (table.shape()[0], table.shape()[1]);
        if x.rank() != 3 || x.shape()[2] != dim || x.shape()[1] > max_len {
            return Err(Error::invalid(
                "PositionalEncoding",
                format!("expects inputs [batch, length <= {max_len}, {dim}], got {:?}", x.shape()),
            ));
        }
        // The rows this input needs, moved to its device when the table lives elsewhere.
        x.add(&table.narrow(0, 0, x.shape()[1])?.to(x.device())?)
    }
    fn describe(&self) -> String {
        let kind = if self.weight.is_some() { "learned" } else { "sinusoidal" };
        self.table().map_or_else(
            |_| "PositionalEncoding".into(),
            |t| format!("PositionalEncoding({kind}, {} x {})", t.shape()[0], t.shape()[1]),
        )
    }
}
