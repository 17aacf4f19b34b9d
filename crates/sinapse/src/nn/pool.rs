//! Pooling layers: the maximum or the mean of each window.

use super::{Mode, Module, Parameters};
use crate::{Error, Result, Tensor};

/// Whether a [`Pool2d`] takes the maximum or the mean of each window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// `nn.MaxPool2d`.
    Max,
    /// `nn.AvgPool2d` (padding counted as zeros).
    Avg,
}

/// Max or average pooling over `[N, C, H, W]` (PyTorch's `MaxPool2d` / `AvgPool2d`; the
/// stride defaults to the kernel size).
#[derive(Clone, Copy, Debug, Parameters)]
pub struct Pool2d {
    /// Max or average.
    pub kind: PoolKind,
    /// Window size.
    pub kernel: [usize; 2],
    /// Step between windows.
    pub stride: [usize; 2],
    /// Padding on each side (at most half the kernel).
    pub padding: [usize; 2],
}

impl Pool2d {
    /// Max pooling with stride = kernel and no padding.
    pub fn max(kernel: [usize; 2]) -> Pool2d {
        Pool2d { kind: PoolKind::Max, kernel, stride: kernel, padding: [0, 0] }
    }

    /// Average pooling with stride = kernel and no padding.
    pub fn avg(kernel: [usize; 2]) -> Pool2d {
        Pool2d { kind: PoolKind::Avg, kernel, stride: kernel, padding: [0, 0] }
    }
}

impl Module for Pool2d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        match self.kind {
            PoolKind::Max => x.max_pool2d(self.kernel, self.stride, self.padding),
            PoolKind::Avg => x.avg_pool2d(self.kernel, self.stride, self.padding),
        }
    }

    fn describe(&self) -> String {
        let name = if self.kind == PoolKind::Max { "MaxPool2d" } else { "AvgPool2d" };
        format!("{name}(kernel {:?}, stride {:?}, padding {:?})", self.kernel, self.stride, self.padding)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

/// Adaptive average pooling to a fixed output size (PyTorch's `nn.AdaptiveAvgPool2d`):
/// whatever the input's height and width, the output is `[N, C, size[0], size[1]]`, each
/// pixel the mean of its share of the input. `[1, 1]` is global average pooling.
#[derive(Clone, Copy, Debug, Parameters)]
pub struct AdaptiveAvgPool2d {
    /// Output height and width.
    pub size: [usize; 2],
}

impl Module for AdaptiveAvgPool2d {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        x.adaptive_avg_pool2d(self.size)
    }

    fn describe(&self) -> String {
        format!("AdaptiveAvgPool2d({:?})", self.size)
    }
}

/// How [`Upsample`] fills the new pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    /// Copies of the nearest input pixel.
    Nearest,
    /// Linear interpolation along both axes (PyTorch's `align_corners=False`).
    Bilinear,
    /// Bilinear with the corner pixels aligned (`align_corners=True`).
    BilinearAlignCorners,
}

/// Upsampling of `[N, C, H, W]` by whole factors (PyTorch's `nn.Upsample(scale_factor,
/// mode)`): `[N, C, H·scale[0], W·scale[1]]`.
#[derive(Clone, Copy, Debug, Parameters)]
pub struct Upsample {
    /// Factor per axis (height, width).
    pub scale: [usize; 2],
    /// Nearest or bilinear.
    pub mode: UpsampleMode,
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        let (h, w) = match *x.shape() {
            [_, _, h, w] => (h, w),
            ref s => return Err(Error::invalid("Upsample", format!("expects input [N, C, H, W], got shape {s:?}"))),
        };
        let size = match (h.checked_mul(self.scale[0]), w.checked_mul(self.scale[1])) {
            (Some(a), Some(b)) => [a, b],
            _ => return Err(Error::invalid("Upsample", format!("scale {:?} overflows a {h}x{w} image", self.scale))),
        };
        match self.mode {
            UpsampleMode::Nearest => x.upsample_nearest2d(size),
            UpsampleMode::Bilinear => x.upsample_bilinear2d(size, false),
            UpsampleMode::BilinearAlignCorners => x.upsample_bilinear2d(size, true),
        }
    }

    fn describe(&self) -> String {
        format!("Upsample(scale {:?}, {:?})", self.scale, self.mode)
    }
}
