//! Convolutional layers.

use super::{Init, Mode, Module, Parameters};
use crate::{Error, Result, Rng, Tensor};

/// A 2-D convolution over `[N, C, H, W]` inputs, as PyTorch's `nn.Conv2d`: `weight`
/// `[out, in, kh, kw]`, `bias` `[out]`, with stride, zero padding and dilation.
///
/// Each output channel slides one small filter over all input channels: the same few weights
/// are reused at every position, which is why a convolution needs far fewer parameters than a
/// dense layer on the same image.
#[derive(Parameters)]
pub struct Conv2d {
    /// Filters, `[out_channels, in_channels, kh, kw]`.
    pub weight: Tensor,
    /// Bias per output channel, `[out_channels]`.
    pub bias: Option<Tensor>,
    /// Step between window positions (height, width).
    pub stride: [usize; 2],
    /// Zero padding on each side (height, width).
    pub padding: [usize; 2],
    /// Spacing between kernel taps (height, width).
    pub dilation: [usize; 2],
}

impl Conv2d {
    /// A convolution with PyTorch's default initialisation (uniform in ±1/√(in·kh·kw)), stride
    /// 1, no padding, no dilation, with bias.
    pub fn new(in_channels: usize, out_channels: usize, kernel: [usize; 2], rng: &mut Rng) -> Result<Conv2d> {
        Conv2d::with_init(in_channels, out_channels, kernel, Init::PytorchDefault, rng)
    }

    /// A convolution with weights drawn by `init` (fan-in = in·kh·kw, fan-out = out·kh·kw).
    pub fn with_init(
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        init: Init,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        if in_channels == 0 || out_channels == 0 || kernel.contains(&0) {
            return Err(Error::invalid(
                "Conv2d",
                format!("channels and kernel must be positive, got {in_channels} -> {out_channels}, {kernel:?}"),
            ));
        }
        let taps = kernel[0] * kernel[1];
        let weight = init.weight(
            &[out_channels, in_channels, kernel[0], kernel[1]],
            in_channels * taps,
            out_channels * taps,
            rng,
        )?;
        let bias = init.bias(&[out_channels], in_channels * taps, rng)?;
        Ok(Conv2d {
            weight: weight.set_requires_grad(true),
            bias: Some(bias.set_requires_grad(true)),
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        })
    }

    /// Sets the stride (builder style).
    pub fn stride(mut self, stride: [usize; 2]) -> Conv2d {
        self.stride = stride;
        self
    }

    /// Sets the zero padding (builder style).
    pub fn padding(mut self, padding: [usize; 2]) -> Conv2d {
        self.padding = padding;
        self
    }

    /// Sets the dilation (builder style).
    pub fn dilation(mut self, dilation: [usize; 2]) -> Conv2d {
        self.dilation = dilation;
        self
    }

    /// Removes the bias (builder style).
    pub fn without_bias(mut self) -> Conv2d {
        self.bias = None;
        self
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.conv2d(&self.weight, self.bias.as_ref(), self.stride, self.padding, self.dilation)
    }

    fn describe(&self) -> String {
        let s = |i: usize| self.weight.shape().get(i).copied().unwrap_or(0);
        format!(
            "Conv2d({} -> {}, kernel {}x{}, stride {:?}, padding {:?}, dilation {:?})",
            s(1),
            s(0),
            s(2),
            s(3),
            self.stride,
            self.padding,
            self.dilation
        )
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// A 1-D convolution over `[N, C, L]` inputs, as PyTorch's `nn.Conv1d`: `weight` `[out, in, k]`.
#[derive(Parameters)]
pub struct Conv1d {
    /// Filters, `[out_channels, in_channels, k]`.
    pub weight: Tensor,
    /// Bias per output channel.
    pub bias: Option<Tensor>,
    /// Step between window positions.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Spacing between kernel taps.
    pub dilation: usize,
}

impl Conv1d {
    /// A 1-D convolution with PyTorch's default initialisation, stride 1, no padding.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize, rng: &mut Rng) -> Result<Conv1d> {
        let c = Conv2d::new(in_channels, out_channels, [1, kernel], rng)?;
        Ok(Conv1d {
            weight: c.weight.squeeze(2)?.set_requires_grad(true),
            bias: c.bias,
            stride: 1,
            padding: 0,
            dilation: 1,
        })
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.conv1d(&self.weight, self.bias.as_ref(), self.stride, self.padding, self.dilation)
    }

    fn describe(&self) -> String {
        let s = |i: usize| self.weight.shape().get(i).copied().unwrap_or(0);
        format!(
            "Conv1d({} -> {}, kernel {}, stride {}, padding {}, dilation {})",
            s(1),
            s(0),
            s(2),
            self.stride,
            self.padding,
            self.dilation
        )
    }
}

/// A transposed 2-D convolution over `[N, C, H, W]` inputs, as PyTorch's
/// `nn.ConvTranspose2d`: `weight` `[in, out, kh, kw]`, `bias` `[out]`. With stride 2 it
/// doubles the image size: the learned upsampling of decoders and generators.
#[derive(Parameters)]
pub struct ConvTranspose2d {
    /// Filters, `[in_channels, out_channels, kh, kw]`.
    pub weight: Tensor,
    /// Bias per output channel, `[out_channels]`.
    pub bias: Option<Tensor>,
    /// Step between the input pixels' windows in the output (height, width).
    pub stride: [usize; 2],
    /// Rows and columns removed from each side of the output (height, width).
    pub padding: [usize; 2],
    /// Rows and columns added to one side of the output, to pick among the sizes a strided
    /// convolution maps to the same input size (smaller than the stride).
    pub output_padding: [usize; 2],
    /// Spacing between kernel taps (height, width).
    pub dilation: [usize; 2],
}

impl ConvTranspose2d {
    /// A layer with PyTorch's default initialisation (uniform in ±1/√(out·kh·kw): PyTorch
    /// takes the fan-in of the transposed weight from its second axis), stride 1, no padding.
    pub fn new(in_channels: usize, out_channels: usize, kernel: [usize; 2], rng: &mut Rng) -> Result<ConvTranspose2d> {
        if in_channels == 0 || out_channels == 0 || kernel.contains(&0) {
            return Err(Error::invalid(
                "ConvTranspose2d",
                format!("channels and kernel must be positive, got {in_channels} -> {out_channels}, {kernel:?}"),
            ));
        }
        let fan_in = out_channels * kernel[0] * kernel[1];
        let init = Init::PytorchDefault;
        let weight = init.weight(&[in_channels, out_channels, kernel[0], kernel[1]], fan_in, fan_in, rng)?;
        let bias = init.bias(&[out_channels], fan_in, rng)?;
        Ok(ConvTranspose2d {
            weight: weight.set_requires_grad(true),
            bias: Some(bias.set_requires_grad(true)),
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
        })
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.conv_transpose2d(
            &self.weight,
            self.bias.as_ref(),
            self.stride,
            self.padding,
            self.output_padding,
            self.dilation,
        )
    }

    fn describe(&self) -> String {
        let s = |i: usize| self.weight.shape().get(i).copied().unwrap_or(0);
        format!(
            "ConvTranspose2d({} -> {}, kernel {}x{}, stride {:?}, padding {:?}, output padding {:?})",
            s(0),
            s(1),
            s(2),
            s(3),
            self.stride,
            self.padding,
            self.output_padding
        )
    }
}
