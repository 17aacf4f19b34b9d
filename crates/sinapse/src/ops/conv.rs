//! Convolution and pooling, built from one primitive, `im2col`, and on the CPU a direct
//! kernel for the common case.
//!
//! `im2col` lays every k×k window of the batch out as a column of one matrix. Then
//! - a convolution is a matrix product: weights `[out, in·k·k]` times columns
//!   `[in·k·k, images·positions]`, so it runs on the fast gemm kernel and its gradients are
//!   those of the matrix product. On the CPU a convolution with stride 1 and no dilation
//!   runs a direct kernel instead, which never writes the columns (25x the input for a 5x5
//!   kernel), and so does its filters' gradient; the input's gradient still goes through
//!   `col2im`;
//! - average pooling is the mean of each column. Max pooling has its own kernel, which
//!   remembers where each maximum came from so that its gradient goes straight there.
//!
//! The gradient of `im2col` is `col2im`: each column entry's gradient is added back onto the
//! pixel it was read from (pixels shared by overlapping windows collect several).
//!
//! Output size per axis: ⌊(in + 2·padding - dilation·(kernel - 1) - 1) / stride⌋ + 1.

use super::grad_if;
use crate::backend::ImageDims;
pub use crate::backend::Window;
use crate::layout::checked_elem_count;
use crate::{Error, Result, Tensor};

/// Reads an `[N, C, H, W]` shape, or fails naming `op`.
fn nchw(op: &'static str, x: &Tensor) -> Result<[usize; 4]> {
    match *x.shape() {
        [n, c, h, w] => Ok([n, c, h, w]),
        ref s => Err(Error::invalid(op, format!("expects input [N, C, H, W], got shape {s:?}"))),
    }
}

/// Checks a window against an input of height `h` and width `w`; returns the output size.
fn output_size(op: &'static str, win: &Window, h: usize, w: usize) -> Result<[usize; 2]> {
    if win.kernel.contains(&0) || win.stride.contains(&0) || win.dilation.contains(&0) {
        return Err(Error::invalid(op, format!("kernel, stride and dilation must be at least 1, got {win:?}")));
    }
    match (win.output_size(0, h), win.output_size(1, w)) {
        (Some(oh), Some(ow)) => Ok([oh, ow]),
        _ => Err(Error::invalid(
            op,
            format!(
                "a {:?} kernel (dilation {:?}) does not fit a {h}x{w} input padded by {:?}",
                win.kernel, win.dilation, win.padding
            ),
        )),
    }
}

impl Tensor {
    /// Every window of an `[N, C, H, W]` batch as a column of one matrix:
    /// `[C·KH·KW, N·OH·OW]`, columns ordered by image, then row, then column of the output.
    /// Taps that fall in the padding read `pad_value`. Gradient: [`Tensor::col2im`].
    pub fn im2col(&self, win: Window, pad_value: f32) -> Result<Tensor> {
        let input = nchw("im2col", self)?;
        let [_, _, h, w] = input;
        let dims = ImageDims { input, output: output_size("im2col", &win, h, w)? };
        let shape = columns_shape("im2col", &dims, &win)?;
        let cols = self.storage().im2col(self.layout(), dims, &win, pad_value)?;
        Ok(Tensor::from_op(cols, &shape, "im2col", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.col2im(input, win))?])
        }))
    }

    /// The adjoint of [`Tensor::im2col`] (PyTorch's `fold`): every entry of a
    /// `[C·KH·KW, N·OH·OW]` matrix added back onto the pixel of an `input`-shaped
    /// `[N, C, H, W]` batch it was read from (taps in the padding are dropped). Gradient:
    /// `im2col` of the output gradient.
    pub fn col2im(&self, input: [usize; 4], win: Window) -> Result<Tensor> {
        checked_elem_count("col2im", &input)?;
        let [_, _, h, w] = input;
        let dims = ImageDims { input, output: output_size("col2im", &win, h, w)? };
        let want = columns_shape("col2im", &dims, &win)?;
        if self.shape() != want {
            return Err(Error::shapes("col2im", self.shape(), &want));
        }
        let img = self.storage().col2im(self.layout(), dims, &win)?;
        Ok(Tensor::from_op(img, &input, "col2im", &[self], move |g, x, _| {
            Ok(vec![grad_if(&x[0], || g.im2col(win, 0.0))?])
        }))
    }

    /// 2-D convolution (cross-correlation, as in PyTorch) of `[N, C, H, W]` with weights
    /// `[O, C, KH, KW]` and an optional bias `[O]`: `[N, O, OH, OW]`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Tensor> {
        let [n, c, h, w] = nchw("conv2d", self)?;
        let [o, wc, kh, kw] = match *weight.shape() {
            [o, wc, kh, kw] => [o, wc, kh, kw],
            ref s => return Err(Error::invalid("conv2d", format!("weight must be [out, in, kh, kw], got {s:?}"))),
        };
        if wc != c {
            return Err(Error::invalid(
                "conv2d",
                format!("input has {c} channels but the weight {:?} expects {wc}", weight.shape()),
            ));
        }
        if let Some(b) = bias {
            if b.shape() != [o] {
                return Err(Error::shapes("conv2d bias", b.shape(), &[o]));
            }
        }
        let win = Window { kernel: [kh, kw], stride, padding, dilation };
        let [oh, ow] = output_size("conv2d", &win, h, w)?;
        // Stride 1 without dilation has a direct kernel on the CPU (for windows that read
        // something: with no input channels the output is the bias, as im2col's path gives;
        // `output_size` has already refused an empty kernel).
        if stride == [1, 1] && dilation == [1, 1] && c > 0 {
            let dims = ImageDims { input: [n, c, h, w], output: [oh, ow] };
            if let Some(out) = self.conv2d_direct(weight, bias, dims, padding)? {
                return Ok(out);
            }
        }
        self.conv2d_im2col(weight, bias, win, [oh, ow])
    }

    /// [`Tensor::conv2d`] as im2col and one matrix product (every device, any window).
    fn conv2d_im2col(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        win: Window,
        [oh, ow]: [usize; 2],
    ) -> Result<Tensor> {
        let ([n, c, _, _], [o, _, kh, kw]) = (nchw("conv2d", self)?, nchw("conv2d", weight)?);
        // Columns [C·KH·KW, N·OH·OW]; the product [O, N·OH·OW], seen as [N, O, OH·OW] (a
        // view), which the bias add (or a copy) makes row-major.
        let cols = self.im2col(win, 0.0)?;
        let out = weight.reshape(&[o, c * kh * kw])?.matmul(&cols)?;
        let images = out.reshape(&[o, n, oh * ow])?.permute(&[1, 0, 2])?;
        let images = match bias {
            Some(b) => images.add(&b.reshape(&[o, 1])?)?,
            None => images.contiguous()?,
        };
        images.reshape(&[n, o, oh, ow])
    }

    /// [`Tensor::conv2d`] by the device's direct kernel (stride 1, no dilation), or `None` where
    /// the device has none. The gradients are im2col's, as in [`Tensor::conv2d_im2col`]: the
    /// input's is col2im of the filters' transpose times the output gradient (on the CPU image
    /// by image, each image's columns in cache), the filters' the output gradient times the
    /// input's im2col (on the CPU a direct kernel of the same sum, which never writes the
    /// columns), the bias's the output gradient's sum. (On the CPU, 3x3 and 5x5 kernels with
    /// at least 8 channels and filters run Winograd's algorithm for all three instead, its
    /// gradients the adjoints of its steps.)
    ///
    /// (The input's gradient as a direct convolution of the padded output gradient with the
    /// flipped filters was tried: on the `cnn` benchmark's second layer it spent twice the
    /// multiply-adds, on the padding's zeros, and was slower than col2im.)
    fn conv2d_direct(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        dims: ImageDims,
        padding: [usize; 2],
    ) -> Result<Option<Tensor>> {
        let out = self.with_filters(weight, bias, |x, w, b| {
            x.conv2d_direct(self.layout(), w, weight.layout(), b, dims, padding)
        })?;
        let Some(out) = out else { return Ok(None) };
        let [n, _, _, _] = dims.input;
        let [o, _, kh, kw] = nchw("conv2d", weight)?;
        let [oh, ow] = dims.output;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(Some(Tensor::from_op(out, &[n, o, oh, ow], "conv2d", &inputs, move |g, x, _| {
            let (input, weight) = (&x[0], &x[1]);
            let dx = grad_if(input, || g.conv_input_grad(weight, dims, padding))?;
            let dw = grad_if(weight, || g.conv_weight_grad(input, dims, [kh, kw], padding))?;
            let mut grads = vec![dx, dw];
            if let Some(b) = x.get(2) {
                grads.push(grad_if(b, || g.channel_sums())?);
            }
            Ok(grads)
        })))
    }

    /// `f(images, filters, bias and its layout)` on the storages of this tensor, `weight` and
    /// `bias`, each locked for reading while it runs (a dense layer's inputs, weight and bias
    /// too).
    pub(super) fn with_filters<R>(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        f: impl FnOnce(
            &crate::backend::Storage,
            &crate::backend::Storage,
            Option<(&crate::backend::Storage, &crate::layout::Layout)>,
        ) -> R,
    ) -> R {
        match bias {
            Some(bt) => Tensor::with_storages([self, weight, bt], |[x, w, b]| f(x, w, Some((b, bt.layout())))),
            None => Tensor::with_storages([self, weight], |[x, w]| f(x, w, None)),
        }
    }

    /// The input's gradient of a stride-1, undilated convolution by `weight` of images of
    /// `dims` with `padding`, from this output gradient `[N, O, OH, OW]`: the device's kernel
    /// where it has one, else the filters' transpose times the gradient's columns, and col2im.
    fn conv_input_grad(&self, weight: &Tensor, dims: ImageDims, padding: [usize; 2]) -> Result<Tensor> {
        let c = dims.input[1];
        let [o, _, kh, kw] = nchw("conv2d", weight)?;
        let win = Window { kernel: [kh, kw], stride: [1, 1], padding, dilation: [1, 1] };
        let direct = Tensor::with_storages([self, weight], |[gs, ws]| {
            gs.conv2d_input_grad(self.layout(), ws, weight.layout(), dims, &win)
        })?;
        if let Some(dx) = direct {
            return Ok(Tensor::from_storage(dx, crate::layout::Layout::contiguous(&dims.input)));
        }
        let dcols = weight.reshape(&[o, c * kh * kw])?.t()?.matmul(&self.as_columns()?)?;
        dcols.col2im(dims.input, win)
    }

    /// The filters' gradient of a stride-1, undilated convolution of `input` (images of
    /// `dims`) by filters of `kernel` with `padding`, from this output gradient
    /// `[N, O, OH, OW]`: the device's kernel where it has one, else the gradient's columns
    /// times the input's im2col.
    fn conv_weight_grad(
        &self,
        input: &Tensor,
        dims: ImageDims,
        [kh, kw]: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Tensor> {
        let (c, o) = (dims.input[1], self.shape()[1]);
        let direct = Tensor::with_storages([input, self], |[xs, gs]| {
            xs.conv2d_weight_grad(input.layout(), gs, self.layout(), dims, [kh, kw], padding)
        })?;
        if let Some(dw) = direct {
            return Ok(Tensor::from_storage(dw, crate::layout::Layout::contiguous(&[o, c, kh, kw])));
        }
        let win = Window { kernel: [kh, kw], stride: [1, 1], padding, dilation: [1, 1] };
        let cols = input.im2col(win, 0.0)?; // [C·KH·KW, N·OH·OW]
        self.as_columns()?.matmul(&cols.t()?)?.reshape(&[o, c, kh, kw])
    }

    /// This `[N, O, H, W]` output gradient as `[O, N·H·W]`, the layout of im2col's columns
    /// (a copy).
    fn as_columns(&self) -> Result<Tensor> {
        let [n, o, h, w] = nchw("conv2d", self)?;
        self.reshape(&[n, o, h * w])?.permute(&[1, 0, 2])?.reshape(&[o, n * h * w])
    }

    /// The sum of each channel of this `[N, O, H, W]` gradient: `[O]`, a convolution's bias
    /// gradient.
    fn channel_sums(&self) -> Result<Tensor> {
        let [n, o, h, w] = nchw("conv2d", self)?;
        self.reshape(&[n, o, h * w])?.sum(2, false)?.sum(0, false)
    }

    /// A stride-1, undilated convolution followed by 2x2 max pooling with stride 2, the usual
    /// convolution block: the values of `self.conv2d(weight, bias, [1, 1], padding, [1, 1])?
    /// .max_pool2d([2, 2], [2, 2], [0, 0])`, as one op. On the CPU, for shapes that do not
    /// take Winograd's path (which needs 3x3 or 5x5 kernels, at least 8 channels and 8
    /// filters, and at least as many images as threads: a network's first layer, with one to
    /// three channels, never does), each image is convolved and pooled while it is in
    /// cache, and the filters' gradient is taken straight
    /// from the pooled gradient and the pooling's taps: the full-size output and its
    /// gradient are never written (on the `cnn` benchmark's first layer, 2.4 MB each per
    /// batch). The input's gradient is the two ops' bit for bit; the filters' and the bias's
    /// are theirs up to the order of their sums. On a GPU, the convolution's matrix product
    /// is pooled where it lies, the bias added as the pooling reads it (see
    /// [`Tensor::conv2d_max_pool2_relu`]). Elsewhere (Winograd's path on the CPU) it runs the
    /// two ops.
    pub fn conv2d_max_pool2(&self, weight: &Tensor, bias: Option<&Tensor>, padding: [usize; 2]) -> Result<Tensor> {
        if let Some(pooled) = self.conv2d_max_pool2_fused(weight, bias, padding)? {
            return Ok(pooled);
        }
        if let Some(pooled) = self.conv2d_max_pool2_channel_major(weight, bias, padding, false)? {
            return Ok(pooled);
        }
        self.conv2d(weight, bias, [1, 1], padding, [1, 1])?.max_pool2d([2, 2], [2, 2], [0, 0])
    }

    /// `self.conv2d_max_pool2(weight, bias, padding)?.relu()`, the usual convolution block
    /// with its ReLU moved after the pooling (the same values and gradients). On a GPU, im2col
    /// and one matrix product, then the bias, the pooling and the ReLU in one launch that
    /// reads the product's `[O, N·OH·OW]` output as the `[N, O, OH, OW]` images; the
    /// pooling's gradient comes back in the product's layout, so neither the output nor its
    /// gradient is copied between the two.
    pub fn conv2d_max_pool2_relu(&self, weight: &Tensor, bias: Option<&Tensor>, padding: [usize; 2]) -> Result<Tensor> {
        if let Some(pooled) = self.conv2d_max_pool2_fused(weight, bias, padding)? {
            return pooled.relu();
        }
        if let Some(pooled) = self.conv2d_max_pool2_channel_major(weight, bias, padding, true)? {
            return Ok(pooled);
        }
        self.conv2d(weight, bias, [1, 1], padding, [1, 1])?.max_pool2d_relu([2, 2], [2, 2], [0, 0])
    }

    /// [`Tensor::conv2d_max_pool2`] (with `relu`, its ReLU) on a GPU: im2col and one matrix
    /// product, whose `[O, N·OH·OW]` output the pooling reads as `[N, O, OH, OW]` in place,
    /// adding the bias as it reads (one launch, [`Tensor::max_pool2d_fused`]). The
    /// convolution's output is never copied to row-major images nor written again with its
    /// bias, and the pooling's gradient comes back in the product's layout, which the
    /// product's own gradient takes without a copy. `None` on the CPU (whose fused kernel or
    /// Winograd's path does better), for a weight on another device, and for shapes the two
    /// ops refuse or pool to nothing (they give the answer or the error).
    fn conv2d_max_pool2_channel_major(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        padding: [usize; 2],
        relu: bool,
    ) -> Result<Option<Tensor>> {
        if self.device() == crate::Device::Cpu || weight.device() != self.device() {
            return Ok(None);
        }
        let Some((dims, [o, c, kh, kw])) = conv_pool_shapes(self, weight, bias, padding) else {
            return Ok(None);
        };
        let ([n, _, _, _], [oh, ow]) = (dims.input, dims.output);
        let win = Window { kernel: [kh, kw], stride: [1, 1], padding, dilation: [1, 1] };
        let cols = self.im2col(win, 0.0)?;
        let product = weight.reshape(&[o, c * kh * kw])?.matmul(&cols)?;
        let images = product.reshape(&[o, n, oh, ow])?.permute(&[1, 0, 2, 3])?;
        images.max_pool2d_fused([2, 2], [2, 2], [0, 0], bias, relu)
    }

    /// [`Tensor::conv2d_max_pool2`] as one op where the device has the kernel for it and the
    /// shapes are ones it takes; `None` elsewhere (the caller runs the two ops, which also
    /// give the errors for shapes they refuse).
    fn conv2d_max_pool2_fused(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        padding: [usize; 2],
    ) -> Result<Option<Tensor>> {
        let Some((dims, [o, c, kh, kw])) = conv_pool_shapes(self, weight, bias, padding) else {
            return Ok(None);
        };
        let ([n, _, _, _], [oh, ow]) = (dims.input, dims.output);
        let fused = self.with_filters(weight, bias, |x, w, b| {
            x.conv2d_max_pool2(self.layout(), w, weight.layout(), b, dims, padding)
        })?;
        let Some((values, taps)) = fused else { return Ok(None) };
        let pooled = [n, o, oh / 2, ow / 2];
        let taps = Tensor::from_storage(taps, crate::layout::Layout::contiguous(&pooled));
        let pool = ImageDims { input: [n, o, oh, ow], output: [oh / 2, ow / 2] };
        let pool_win = Window::POOL_2X2;
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        Ok(Some(Tensor::from_op(values, &pooled, "conv2d_max_pool2", &inputs, move |g, x, _| {
            let (input, weight) = (&x[0], &x[1]);
            // The convolution's full-size output gradient (the pooling's), where one is needed.
            let full = || -> Result<Tensor> {
                let (dy, layout) = Tensor::with_storages([g, &taps], |[gs, ts]| {
                    gs.max_pool2d_backward(g.layout(), ts, taps.layout(), pool, &pool_win, false)
                })?;
                Ok(Tensor::from_storage(dy, layout))
            };
            let dx = grad_if(input, || full()?.conv_input_grad(weight, dims, padding))?;
            let dw = grad_if(weight, || {
                let direct = Tensor::with_storages([input, g, &taps], |[xs, gs, ts]| {
                    xs.conv2d_pooled_weight_grad(
                        input.layout(),
                        gs,
                        g.layout(),
                        ts,
                        taps.layout(),
                        dims,
                        [kh, kw],
                        padding,
                    )
                })?;
                match direct {
                    Some(dw) => Ok(Tensor::from_storage(dw, crate::layout::Layout::contiguous(&[o, c, kh, kw]))),
                    None => full()?.conv_weight_grad(input, dims, [kh, kw], padding),
                }
            })?;
            let mut grads = vec![dx, dw];
            if let Some(b) = x.get(2) {
                // Each window's gradient goes to one pixel: the sum over the full-size
                // gradient is the pooled gradient's sum.
                grads.push(grad_if(b, || g.channel_sums())?);
            }
            Ok(grads)
        })))
    }

    /// 1-D convolution of `[N, C, L]` with weights `[O, C, K]`: the 2-D convolution of a
    /// height-1 image.
    pub fn conv1d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
    ) -> Result<Tensor> {
        if self.rank() != 3 || weight.rank() != 3 {
            return Err(Error::invalid(
                "conv1d",
                format!(
                    "expects input [N, C, L] and weight [O, C, K], got {:?} and {:?}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        let out = self.unsqueeze(2)?.conv2d(&weight.unsqueeze(2)?, bias, [1, stride], [0, padding], [1, dilation])?;
        out.squeeze(2)
    }

    /// Max pooling: the largest value of each window (padding never wins). The gradient goes
    /// to the input element that was the maximum (the first one, on a tie, as in PyTorch).
    pub fn max_pool2d(&self, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        self.max_pool2d_fused(kernel, stride, padding, None, false)?
            .ok_or_else(|| Error::invalid("max_pool2d", "the device ran no pooling"))
    }

    /// `self.max_pool2d(kernel, stride, padding)?.relu()`, the same values and gradients (the
    /// ReLU never reorders two values, so it commutes with the maximum), in one launch on a
    /// GPU; on the CPU, the two ops.
    pub fn max_pool2d_relu(&self, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        match self.max_pool2d_fused(kernel, stride, padding, None, true)? {
            Some(t) => Ok(t),
            None => self.max_pool2d(kernel, stride, padding)?.relu(),
        }
    }

    /// [`Tensor::max_pool2d`] of these images plus a `bias` per channel (`[C]`, added
    /// before the pooling: a convolution's), followed with `relu` by a ReLU, as one op. Plain
    /// pooling runs on every device; with a bias or the ReLU, only where the device has the
    /// kernel (a GPU), `None` elsewhere. The images' gradient is written in their layout
    /// where that is channel-major and the device can (see [`Storage::max_pool2d_backward`]).
    ///
    /// [`Storage::max_pool2d_backward`]: crate::backend::Storage::max_pool2d_backward
    fn max_pool2d_fused(
        &self,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        bias: Option<&Tensor>,
        relu: bool,
    ) -> Result<Option<Tensor>> {
        let input = nchw("max_pool2d", self)?;
        let [n, c, h, w] = input;
        if h == 0 || w == 0 {
            return Err(Error::invalid("max_pool2d", format!("needs a non-empty image, got {h}x{w}")));
        }
        if let Some(b) = bias.filter(|b| b.shape() != [c]) {
            return Err(Error::shapes("max_pool2d bias", b.shape(), &[c]));
        }
        let win = pool_window("max_pool2d", kernel, stride, padding)?;
        let dims = ImageDims { input, output: output_size("max_pool2d", &win, h, w)? };
        let (values, taps) = if relu || bias.is_some() {
            let fused = match bias {
                Some(b) => Tensor::with_storages([self, b], |[x, bs]| {
                    x.max_pool2d_fused(self.layout(), Some((bs, b.layout())), dims, &win, relu)
                })?,
                None => self.storage().max_pool2d_fused(self.layout(), None, dims, &win, relu)?,
            };
            match fused {
                Some(pooled) => pooled,
                None => return Ok(None),
            }
        } else {
            self.storage().max_pool2d(self.layout(), dims, &win)?
        };
        let [oh, ow] = dims.output;
        let taps = Tensor::from_storage(taps, crate::layout::Layout::contiguous(&[n, c, oh, ow]));
        let name = match (bias.is_some(), relu) {
            (false, false) => "max_pool2d",
            (false, true) => "max_pool2d_relu",
            (true, false) => "bias_max_pool2d",
            (true, true) => "bias_max_pool2d_relu",
        };
        let channel_major = is_channel_major(self.layout());
        let mut inputs = vec![self];
        inputs.extend(bias);
        Ok(Some(Tensor::from_op(values, &[n, c, oh, ow], name, &inputs, move |g, x, _| {
            let dx = Tensor::with_storages([g, &taps], |[gs, ts]| {
                gs.max_pool2d_backward(g.layout(), ts, taps.layout(), dims, &win, channel_major)
            })?;
            let dx = Tensor::from_storage(dx.0, dx.1);
            let mut grads = vec![];
            if let Some(b) = x.get(1) {
                // The bias reached every pixel of its channel: its gradient is the channel's
                // sum of the images' (a sum along rows where that is channel-major).
                grads.push(grad_if(b, || {
                    if dx.layout().is_contiguous() {
                        dx.channel_sums()
                    } else {
                        dx.permute(&[1, 0, 2, 3])?.reshape(&[c, n * h * w])?.sum(1, false)
                    }
                })?);
            }
            grads.insert(0, if x[0].requires_grad() { Some(dx) } else { None });
            Ok(grads)
        })))
    }

    /// Average pooling: the mean of each window, padding counted as zeros (PyTorch's
    /// `count_include_pad=True`). The gradient is spread evenly over the window.
    pub fn avg_pool2d(&self, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Tensor> {
        let [n, c, h, w] = nchw("avg_pool2d", self)?;
        let win = pool_window("avg_pool2d", kernel, stride, padding)?;
        let [oh, ow] = output_size("avg_pool2d", &win, h, w)?;
        // Each channel as its own one-channel image: the columns are then exactly the windows.
        let planes = self.reshape(&[n * c, 1, h, w])?;
        let cols = planes.im2col(win, 0.0)?; // [KH·KW, N·C·OH·OW]
        cols.mean(0, false)?.reshape(&[n, c, oh, ow])
    }
}

/// The images' and output's sizes and the filters' `[O, C, KH, KW]` of a stride-1,
/// undilated convolution of `x` by `weight` (and `bias`) with `padding`, followed by a 2x2
/// pooling; `None` for shapes the two ops refuse, or whose pooling is empty (the two ops then
/// give the answer).
fn conv_pool_shapes(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: [usize; 2],
) -> Option<(ImageDims, [usize; 4])> {
    let (Ok([n, c, h, w]), Ok([o, wc, kh, kw])) = (nchw("conv2d", x), nchw("conv2d", weight)) else {
        return None;
    };
    let win = Window { kernel: [kh, kw], stride: [1, 1], padding, dilation: [1, 1] };
    let [oh, ow] = output_size("conv2d", &win, h, w).ok()?;
    if wc != c || c == 0 || oh < 2 || ow < 2 || bias.is_some_and(|b| b.shape() != [o]) {
        return None;
    }
    Some((ImageDims { input: [n, c, h, w], output: [oh, ow] }, [o, c, kh, kw]))
}

/// True when `[N, C, H, W]` images at `l` are a view of a `[C, N, H, W]` buffer (as a
/// convolution's matrix product leaves them), and not also row-major.
fn is_channel_major(l: &crate::layout::Layout) -> bool {
    match *l.shape() {
        [n, _, h, w] => !l.is_contiguous() && l.strides() == [h * w, n * h * w, w, 1],
        _ => false,
    }
}

/// The `[C·KH·KW, N·OH·OW]` shape of the columns of a window over `dims.input`, checked to
/// fit in memory's counting.
fn columns_shape(op: &'static str, dims: &ImageDims, win: &Window) -> Result<[usize; 2]> {
    let [n, c, _, _] = dims.input;
    let [oh, ow] = dims.output;
    let rows = checked_elem_count(op, &[c, win.kernel[0], win.kernel[1]])?;
    let cols = checked_elem_count(op, &[n, oh, ow])?;
    checked_elem_count(op, &[rows, cols])?;
    Ok([rows, cols])
}

/// A pooling window, checked: padding at most half the kernel, as PyTorch requires.
fn pool_window(op: &'static str, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) -> Result<Window> {
    if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
        return Err(Error::invalid(op, format!("padding {padding:?} must be at most half the kernel {kernel:?}")));
    }
    Ok(Window { kernel, stride, padding, dilation: [1, 1] })
}

impl Tensor {
    /// Transposed 2-D convolution (PyTorch's `conv_transpose2d`, the gradient of `conv2d`
    /// with respect to its input): `[N, C, H, W]` with weights `[C, O, KH, KW]` and an
    /// optional bias `[O]` gives `[N, O, OH, OW]`, `OH = (H - 1)·stride - 2·padding +
    /// dilation·(KH - 1) + output_padding + 1`. Each input pixel spreads its filter over the
    /// output, which is how decoders and generators upsample. Built as a matrix product and
    /// [`Tensor::col2im`], so its gradients are theirs.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Tensor> {
        let op = "conv_transpose2d";
        let [n, c, h, w] = nchw(op, self)?;
        let [wc, o, kh, kw] = match *weight.shape() {
            [wc, o, kh, kw] => [wc, o, kh, kw],
            ref s => return Err(Error::invalid(op, format!("weight must be [in, out, kh, kw], got {s:?}"))),
        };
        if wc != c {
            return Err(Error::invalid(
                op,
                format!("input has {c} channels but the weight {:?} expects {wc}", weight.shape()),
            ));
        }
        if let Some(b) = bias {
            if b.shape() != [o] {
                return Err(Error::shapes("conv_transpose2d bias", b.shape(), &[o]));
            }
        }
        if stride.contains(&0) || dilation.contains(&0) || kh == 0 || kw == 0 {
            return Err(Error::invalid(op, "kernel, stride and dilation must be at least 1"));
        }
        if output_padding[0] >= stride[0] || output_padding[1] >= stride[1] {
            // PyTorch also takes an output padding below the dilation alone; not supported here.
            return Err(Error::invalid(
                op,
                format!("output_padding {output_padding:?} must be smaller than the stride {stride:?}"),
            ));
        }
        if n == 0 || h == 0 || w == 0 {
            return Err(Error::invalid(op, format!("expects a non-empty input, got {:?}", self.shape())));
        }
        let out_size = |axis: usize, input: usize, k: usize| -> Result<usize> {
            let full = (input - 1)
                .checked_mul(stride[axis])
                .and_then(|v| v.checked_add(dilation[axis].checked_mul(k - 1)?))
                .and_then(|v| v.checked_add(output_padding[axis] + 1))
                .ok_or_else(|| Error::invalid(op, format!("the output size overflows (stride {stride:?})")))?;
            full.checked_sub(padding[axis].saturating_mul(2))
                .filter(|&s| s > 0)
                .ok_or_else(|| Error::invalid(op, format!("padding {padding:?} leaves no output for a {h}x{w} input")))
        };
        let (oh, ow) = (out_size(0, h, kh)?, out_size(1, w, kw)?);
        checked_elem_count(op, &[n, o, oh, ow])?;
        let win = Window { kernel: [kh, kw], stride, padding, dilation };
        // Columns [O·KH·KW, N·H·W]: every input pixel's contribution to its window of the output.
        let pixels = self.permute(&[1, 0, 2, 3])?.reshape(&[c, n * h * w])?;
        let cols = weight.reshape(&[c, o * kh * kw])?.t()?.matmul(&pixels)?;
        let out = cols.col2im([n, o, oh, ow], win)?;
        match bias {
            Some(b) => out.add(&b.reshape(&[o, 1, 1])?),
            None => Ok(out),
        }
    }

    /// Resizes the last two axes of `[.., H, W]` by matrices: `mh` `[OH, H]` and `mw`
    /// `[OW, W]` give `mh · x · mwᵀ` `[.., OH, OW]` (each output pixel a weighted sum of input
    /// pixels). The gradients are those of the two products.
    fn resample2d(&self, mh: Vec<f32>, oh: usize, mw: Vec<f32>, ow: usize) -> Result<Tensor> {
        let r = self.rank();
        let (h, w) = (self.shape()[r - 2], self.shape()[r - 1]);
        let mh = Tensor::from_vec(mh, &[oh, h])?.to(self.device())?;
        let mw = Tensor::from_vec(mw, &[ow, w])?.to(self.device())?;
        mh.matmul(&self.matmul(&mw.t()?)?)
    }

    /// Adaptive average pooling (PyTorch's `adaptive_avg_pool2d`): `[N, C, H, W]` to
    /// `[N, C, OH, OW]`, output pixel `(i, j)` the mean of rows `⌊i·H/OH⌋..⌈(i+1)·H/OH⌉` and
    /// the same span of columns, so any input size gives the same output size.
    pub fn adaptive_avg_pool2d(&self, size: [usize; 2]) -> Result<Tensor> {
        let [_, _, h, w] = nchw("adaptive_avg_pool2d", self)?;
        check_resize("adaptive_avg_pool2d", self, size)?;
        self.resample2d(adaptive_matrix(size[0], h), size[0], adaptive_matrix(size[1], w), size[1])
    }

    /// Nearest-neighbour upsampling of `[N, C, H, W]` to `[N, C, OH, OW]` (PyTorch's
    /// `interpolate(mode="nearest")`): output row `i` copies input row `⌊i·H/OH⌋`, and the
    /// same for columns. Gradient: each input pixel collects its copies' gradients.
    pub fn upsample_nearest2d(&self, size: [usize; 2]) -> Result<Tensor> {
        let [_, _, h, w] = nchw("upsample_nearest2d", self)?;
        check_resize("upsample_nearest2d", self, size)?;
        let pick = |out: usize, inp: usize| {
            super::index::index_tensor(
                "upsample_nearest2d",
                (0..out).map(|i| ((i * inp) / out).min(inp - 1)),
                self.device(),
            )
        };
        self.index_select(2, &pick(size[0], h)?)?.index_select(3, &pick(size[1], w)?)
    }

    /// Bilinear upsampling (or downsampling) of `[N, C, H, W]` to `[N, C, OH, OW]` (PyTorch's
    /// `interpolate(mode="bilinear", align_corners=...)`): each output pixel mixes the four
    /// input pixels around its source position, `(i + 0.5)·H/OH - 0.5` (or `i·(H-1)/(OH-1)`
    /// with `align_corners`).
    pub fn upsample_bilinear2d(&self, size: [usize; 2], align_corners: bool) -> Result<Tensor> {
        let [_, _, h, w] = nchw("upsample_bilinear2d", self)?;
        check_resize("upsample_bilinear2d", self, size)?;
        let mh = linear_matrix(size[0], h, align_corners);
        let mw = linear_matrix(size[1], w, align_corners);
        self.resample2d(mh, size[0], mw, size[1])
    }
}

/// Checks a resize of `x` to `size`: positive sizes, an output whose element count fits,
/// and resampling matrices (`[size, input]` per axis) the memory can hold.
fn check_resize(op: &'static str, x: &Tensor, size: [usize; 2]) -> Result<()> {
    let [n, c, h, w] = nchw(op, x)?;
    if size.contains(&0) || h == 0 || w == 0 {
        return Err(Error::invalid(
            op,
            format!("needs a positive size and a non-empty input, got {size:?} for {h}x{w}"),
        ));
    }
    checked_elem_count(op, &[n, c, size[0], size[1]])?;
    let matrices = checked_elem_count(op, &[size[0], h])?.saturating_add(checked_elem_count(op, &[size[1], w])?);
    crate::backend::ensure_room(crate::Device::Cpu, (matrices as u64).saturating_mul(4), op)
}

/// `[out, inp]`: row `i` averages inputs `⌊i·inp/out⌋..⌈(i+1)·inp/out⌉`.
pub(crate) fn adaptive_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut m = vec![0.0; out * inp];
    for i in 0..out {
        let (start, end) = ((i * inp) / out, ((i + 1) * inp).div_ceil(out));
        for j in start..end {
            m[i * inp + j] = 1.0 / (end - start) as f32;
        }
    }
    m
}

/// `[out, inp]`: linear interpolation weights, PyTorch's source-index rule.
pub(crate) fn linear_matrix(out: usize, inp: usize, align_corners: bool) -> Vec<f32> {
    let mut m = vec![0.0; out * inp];
    for i in 0..out {
        let src = if align_corners {
            if out > 1 {
                i as f64 * (inp - 1) as f64 / (out - 1) as f64
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * inp as f64 / out as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let frac = (src - i0 as f64) as f32;
        m[i * inp + i0] += 1.0 - frac;
        m[i * inp + i1] += frac;
    }
    m
}

#[cfg(test)]
mod tests {
    use crate::{Rng, Tensor};

    /// The direct kernels (stride 1, no dilation) against im2col and a matrix product, on
    /// shapes that leave partial steps: output widths that are not multiples of 8, filter
    /// counts that are not multiples of 8, padding, 1x1 and whole-image kernels, no bias; the
    /// `cnn` benchmark's second layer takes the CPU's Winograd path, the 7-channel 5x5 one
    /// the direct kernel.
    #[test]
    fn direct_convolution_matches_im2col() {
        let mut rng = Rng::seed(41);
        // ([N, C, H, W], [O, KH, KW], padding, bias)
        let cases = [
            ([3, 1, 28, 28], [16, 5, 5], [0, 0], true),
            ([2, 16, 12, 12], [32, 5, 5], [0, 0], true),
            ([2, 7, 12, 12], [9, 5, 5], [1, 2], true),
            ([2, 3, 7, 13], [9, 3, 3], [1, 1], true),
            ([1, 2, 5, 21], [17, 3, 2], [2, 1], false),
            ([2, 4, 6, 6], [5, 1, 1], [0, 0], true),
            ([1, 3, 4, 5], [2, 4, 5], [0, 0], false),
            ([2, 2, 3, 3], [3, 3, 3], [2, 2], true),
        ];
        for ([n, c, h, w], [o, kh, kw], padding, with_bias) in cases {
            let x = Tensor::rand_normal(&[n, c, h, w], 0.0, 1.0, &mut rng).unwrap();
            let wt = Tensor::rand_normal(&[o, c, kh, kw], 0.0, 1.0, &mut rng).unwrap();
            let b = Tensor::rand_normal(&[o], 0.0, 1.0, &mut rng).unwrap();
            let bias = with_bias.then_some(&b);
            let win = super::Window { kernel: [kh, kw], stride: [1, 1], padding, dilation: [1, 1] };
            let [oh, ow] = super::output_size("conv2d", &win, h, w).unwrap();
            let dims = super::ImageDims { input: [n, c, h, w], output: [oh, ow] };
            let direct = x.conv2d_direct(&wt, bias, dims, padding).unwrap().expect("the CPU has a direct kernel");
            let reference = x.conv2d_im2col(&wt, bias, win, [oh, ow]).unwrap();
            assert_eq!(direct.shape(), reference.shape());
            let scale = (c * kh * kw) as f32;
            for (i, (d, r)) in direct.to_vec().iter().zip(reference.to_vec()).enumerate() {
                assert!(
                    (d - r).abs() <= 1e-5 * scale,
                    "x {:?} w {:?} padding {padding:?}: element {i}: {d} vs {r}",
                    [n, c, h, w],
                    [o, c, kh, kw]
                );
            }
        }
    }

    /// The direct path on views (a transposed image batch and a permuted weight, which the
    /// CPU storage copies to row-major first), and its gradients when only some inputs ask for one, against im2col's path on
    /// contiguous copies.
    #[test]
    fn direct_convolution_reads_views_and_gives_the_gradients_asked_for() {
        let mut rng = Rng::seed(43);
        let close = |a: &Tensor, b: &Tensor, what: &str| {
            assert_eq!(a.shape(), b.shape(), "{what}");
            for (i, (x, y)) in a.to_vec().iter().zip(b.to_vec()).enumerate() {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
            }
        };
        let x = Tensor::rand_normal(&[2, 3, 9, 7], 0.0, 1.0, &mut rng).unwrap().permute(&[0, 1, 3, 2]).unwrap();
        let w = Tensor::rand_normal(&[3, 5, 3, 3], 0.0, 1.0, &mut rng).unwrap().permute(&[1, 0, 2, 3]).unwrap();
        let b = Tensor::rand_normal(&[5], 0.0, 1.0, &mut rng).unwrap();
        assert!(!x.layout().is_contiguous() && !w.layout().is_contiguous());
        let win = super::Window { kernel: [3, 3], stride: [1, 1], padding: [1, 1], dilation: [1, 1] };
        let reference = |x: &Tensor, w: &Tensor, b: &Tensor| x.conv2d_im2col(w, Some(b), win, [7, 9]).unwrap();
        let direct = x.conv2d(&w, Some(&b), [1, 1], [1, 1], [1, 1]).unwrap();
        close(&direct, &reference(&x.contiguous().unwrap(), &w.contiguous().unwrap(), &b), "views");
        let r = Tensor::rand_normal(&[2, 5, 7, 9], 0.0, 1.0, &mut rng).unwrap();
        for wants in [[true, false, false], [false, true, true], [false, false, true]] {
            let inputs = [&x, &w, &b].map(|t| t.contiguous().unwrap().set_requires_grad(false));
            let inputs = [0, 1, 2].map(|i| inputs[i].set_requires_grad(wants[i]));
            let [xi, wi, bi] = &inputs;
            let by_direct =
                xi.conv2d(wi, Some(bi), [1, 1], [1, 1], [1, 1]).unwrap().mul(&r).unwrap().sum_all().unwrap();
            let by_im2col = reference(xi, wi, bi).mul(&r).unwrap().sum_all().unwrap();
            let (gd, gi) = (by_direct.backward().unwrap(), by_im2col.backward().unwrap());
            for (t, &want) in inputs.iter().zip(&wants) {
                match (gd.get(t), gi.get(t)) {
                    (Some(d), Some(i)) if want => close(d, i, &format!("gradient, asked for {wants:?}")),
                    (None, None) if !want => {}
                    (d, i) => panic!("asked for {wants:?}: direct gave {}, im2col {}", d.is_some(), i.is_some()),
                }
            }
        }
    }

    /// Windows over no input channels read nothing: the output is the bias (the direct kernel
    /// is not taken; its steps need at least one tap).
    #[test]
    fn convolution_of_no_channels_is_the_bias() {
        let (x, w) = (Tensor::zeros(&[1, 0, 4, 4]), Tensor::zeros(&[2, 0, 3, 3]));
        let b = Tensor::from_vec(vec![1.5, -2.0], &[2]).unwrap();
        let y = x.conv2d(&w, Some(&b), [1, 1], [0, 0], [1, 1]).unwrap();
        assert_eq!(y.shape(), [1, 2, 2, 2]);
        assert_eq!(y.to_vec(), [[1.5f32; 4], [-2.0; 4]].concat());
    }
}
