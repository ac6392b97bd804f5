//! Pooling and nearest-neighbour upsampling of `[N, C, H, W]` batches as modules (PyTorch's
//! `nn.MaxPool2d`, `nn.AvgPool2d` and `nn.Upsample(mode="nearest")`), for
//! [`Sequential`](super::Sequential) models. They have no parameters.

use kiln_tensor::{Pool2dOptions, Tensor};

use crate::{Module, NnError, Result};

/// `x [N, C, H, W] → [N, C, OH, OW]`, each output the max of its window, `OH = ⌊(H +
/// 2·padding - kh) / stride⌋ + 1` (likewise OW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2d {
    pub options: Pool2dOptions,
}

impl MaxPool2d {
    /// Non-overlapping windows of `kernel` (stride = kernel, PyTorch's default), no padding.
    pub fn new(kernel: [usize; 2]) -> MaxPool2d {
        MaxPool2d::with_options(Pool2dOptions::new(kernel))
    }

    pub fn with_options(options: Pool2dOptions) -> MaxPool2d {
        MaxPool2d { options }
    }
}

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.max_pool2d(self.options)?)
    }
}

/// `x [N, C, H, W] → [N, C, OH, OW]`, each output the mean of its window with padding counted
/// as zeros (PyTorch's default `count_include_pad=True`); sizes as for [`MaxPool2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub options: Pool2dOptions,
}

impl AvgPool2d {
    /// Non-overlapping windows of `kernel` (stride = kernel, PyTorch's default), no padding.
    pub fn new(kernel: [usize; 2]) -> AvgPool2d {
        AvgPool2d::with_options(Pool2dOptions::new(kernel))
    }

    pub fn with_options(options: Pool2dOptions) -> AvgPool2d {
        AvgPool2d { options }
    }
}

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.avg_pool2d(self.options)?)
    }
}

/// The output size of an [`UpsampleNearest2d`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Size([usize; 2]),
    Scale([usize; 2]),
}

/// `x [N, C, H, W] → [N, C, OH, OW]` by nearest-neighbour resizing: output row `i` copies
/// input row `min(⌊i·H/OH⌋, H - 1)`, likewise columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsampleNearest2d {
    target: Target,
}

impl UpsampleNearest2d {
    /// To a fixed `[OH, OW]` (PyTorch's `nn.Upsample(size=(OH, OW))`).
    pub fn with_size(size: [usize; 2]) -> UpsampleNearest2d {
        UpsampleNearest2d {
            target: Target::Size(size),
        }
    }

    /// To `[H·scale₀, W·scale₁]`, each pixel repeated (PyTorch's `nn.Upsample(scale_factor=s)`
    /// for whole-number `s`, which picks the same rows).
    pub fn with_scale(scale: [usize; 2]) -> UpsampleNearest2d {
        UpsampleNearest2d {
            target: Target::Scale(scale),
        }
    }
}

impl Module for UpsampleNearest2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [out_height, out_width] = match self.target {
            Target::Size(size) => size,
            Target::Scale(scale) => {
                if x.rank() != 4 {
                    return Err(NnError::invalid(
                        "UpsampleNearest2d",
                        format!("expected input [N, C, H, W], got {}", x.shape()),
                    ));
                }
                [x.dims()[2] * scale[0], x.dims()[3] * scale[1]]
            }
        };
        Ok(x.upsample_nearest2d(out_height, out_width)?)
    }
}
