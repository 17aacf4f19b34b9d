//! Pooling layers: the maximum or the mean of each window.

use super::{Mode, Module, Parameters};
use crate::{Result, Tensor};

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
}
