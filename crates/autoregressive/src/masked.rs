//! The masked convolution that makes PixelCNN autoregressive: a same-size, stride-1
//! convolution whose kernel is multiplied by a constant mask in every forward, so that an
//! output pixel sees only the input pixels before it in raster order. Single-channel images
//! only: no sub-masks between colour channels.

use kiln_nn::layers::{Conv2d, Conv2dConfig};
use kiln_nn::{Module, NnError, Path, Result};
use kiln_tensor::{no_grad, Activation, Conv2dOptions, Tensor, Var};

/// Which kernel taps a [`MaskedConv2d`] keeps: those before the centre in raster order (the
/// rows above it, and its own row left of it), and for type B the centre too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskType {
    /// The first layer's: the centre tap is masked, so an output never sees its own pixel.
    A,
    /// Every later layer's: the centre tap is kept, since by then the feature at a pixel
    /// depends only on the pixels before it.
    B,
}

impl MaskType {
    /// The mask of a `kernel × kernel` kernel (`kernel` odd), row-major: 1 where a tap is
    /// kept, 0 where it is masked.
    pub fn values(self, kernel: usize) -> Vec<f64> {
        let centre = kernel / 2;
        let mut mask = Vec::with_capacity(kernel * kernel);
        for row in 0..kernel {
            for column in 0..kernel {
                let kept = row < centre
                    || (row == centre
                        && match self {
                            MaskType::A => column < centre,
                            MaskType::B => column <= centre,
                        });
                mask.push(if kept { 1.0 } else { 0.0 });
            }
        }
        mask
    }
}

/// `x [N, in, H, W] → [N, out, H, W]`: the convolution of `x` with `weight·mask` (`weight
/// [out, in, k, k]`, `mask [1, 1, k, k]`), zero-padded by k/2, plus `bias [out]`. Registers
/// `weight` and `bias` as PyTorch's `nn.Conv2d` does; the mask is derived from the type and
/// size, not stored. The masked weights start at zero and, their gradient being exactly zero,
/// stay there under Adam, so the stored weights load into a plain `nn.Conv2d` as they are.
#[derive(Debug, Clone)]
pub struct MaskedConv2d {
    weight: Var,
    bias: Option<Var>,
    /// `[1, 1, k, k]`, of the weight's dtype.
    mask: Tensor,
    mask_type: MaskType,
    options: Conv2dOptions,
}

impl MaskedConv2d {
    /// A `kernel × kernel` masked convolution (with a bias), initialised as PyTorch's
    /// `nn.Conv2d` (fan-in in·k·k) and then masked.
    pub fn new(
        path: &Path,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        mask_type: MaskType,
    ) -> Result<MaskedConv2d> {
        if kernel.is_multiple_of(2) {
            return Err(NnError::invalid(
                "MaskedConv2d",
                format!("the kernel must have an odd size to have a centre, got {kernel}"),
            ));
        }
        let config = Conv2dConfig {
            padding: [kernel / 2, kernel / 2],
            ..Default::default()
        };
        let conv = Conv2d::new(path, in_channels, out_channels, [kernel, kernel], config)?;
        let mask = Tensor::from_vec(
            mask_type.values(kernel),
            [1, 1, kernel, kernel],
            path.device(),
        )?
        .to_dtype(path.dtype())?; // [1, 1, k, k]
        let weight = conv.weight().clone();
        no_grad(|| weight.set(&weight.mul(&mask)?))?;
        Ok(MaskedConv2d {
            weight,
            bias: conv.bias().cloned(),
            mask,
            mask_type,
            options: conv.options(),
        })
    }

    /// `[out, in, k, k]`, as stored (its masked entries zero unless set otherwise).
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// `[out]`.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    /// `[1, 1, k, k]`: 1 where a tap is kept.
    pub fn mask(&self) -> &Tensor {
        &self.mask
    }

    pub fn mask_type(&self) -> MaskType {
        self.mask_type
    }
}

impl Module for MaskedConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Activation::Identity)
    }

    fn forward_activated(&self, x: &Tensor, activation: Activation) -> Option<Result<Tensor>> {
        Some(self.forward_with(x, activation))
    }
}

impl MaskedConv2d {
    /// `activation(conv2d(x, weight · mask) + bias)`, the bias and the activation applied as
    /// the convolution writes its output ([`Tensor::conv2d_bias_act`]).
    fn forward_with(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        let channels = self.weight.dims()[1];
        if x.rank() != 4 || x.dims()[1] != channels {
            return Err(NnError::invalid(
                "MaskedConv2d",
                format!("expected input [N, {channels}, H, W], got {}", x.shape()),
            ));
        }
        // Masked in every forward, not once: the gradient then reaches only the kept taps.
        let weight = self.weight.mul(&self.mask)?; // [out, in, k, k]
        let bias = self.bias.as_ref().map(Var::as_tensor);
        Ok(x.conv2d_bias_act(&weight, bias, self.options, activation)?) // [N, out, H, W]
    }
}
