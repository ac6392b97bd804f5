//! 2-D convolution layers over `[N, C, H, W]` batches (PyTorch's `nn.Conv2d` and
//! `nn.ConvTranspose2d`, groups = 1): the weight and bias around kiln-tensor's `conv2d` and
//! `conv_transpose2d`.

use kiln_tensor::{Activation, Conv2dOptions, ConvTranspose2dOptions, Shape, Tensor, Var};

use crate::init::fans;
use crate::{Init, Module, NnError, Path, Result};

/// How a [`Conv2d`] is applied and its tensors made. The default is PyTorch's: stride 1, no
/// padding, no dilation, a bias, weights from [`Init::PYTORCH_WEIGHT`] and biases from
/// [`Init::pytorch_bias`] of the weight's fan-in (`in·kh·kw`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conv2dConfig {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub bias: bool,
    pub weight_init: Init,
    /// `None`: PyTorch's default, U(-1/√fan_in, 1/√fan_in) with the weight's fan-in.
    pub bias_init: Option<Init>,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Conv2dConfig {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            bias: true,
            weight_init: Init::PYTORCH_WEIGHT,
            bias_init: None,
        }
    }
}

/// How a [`ConvTranspose2d`] is applied and its tensors made; the default is PyTorch's, as
/// for [`Conv2dConfig`], with no output padding. PyTorch takes the weight's fan-in from its
/// dim 1, so for a weight `[in, out, kh, kw]` both default bounds are 1/√(out·kh·kw).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvTranspose2dConfig {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
    pub bias: bool,
    pub weight_init: Init,
    /// `None`: PyTorch's default, U(-1/√fan_in, 1/√fan_in) with the weight's fan-in.
    pub bias_init: Option<Init>,
}

impl Default for ConvTranspose2dConfig {
    fn default() -> Self {
        ConvTranspose2dConfig {
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
            bias: true,
            weight_init: Init::PYTORCH_WEIGHT,
            bias_init: None,
        }
    }
}

/// Registers `weight` of `weight_shape` and, if asked, `bias [channels]`, in that order.
fn weight_and_bias(
    path: &Path,
    weight_shape: Shape,
    channels: usize,
    bias: bool,
    weight_init: Init,
    bias_init: Option<Init>,
) -> Result<(Var, Option<Var>)> {
    let (fan_in, _) = fans(&weight_shape);
    let weight = path.parameter("weight", weight_shape, weight_init)?;
    let bias = if bias {
        let init = bias_init.unwrap_or_else(|| Init::pytorch_bias(fan_in));
        Some(path.parameter("bias", [channels], init)?)
    } else {
        None
    };
    Ok((weight, bias))
}

/// `x [N, in, H, W] → [N, out, OH, OW]`, `OH = ⌊(H + 2·padding - dilation·(kh - 1) - 1) /
/// stride⌋ + 1` (likewise OW): the cross-correlation of `x` with `weight [out, in, kh, kw]`
/// plus `bias [out]`, registered as `weight` then `bias`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Var,
    bias: Option<Var>,
    options: Conv2dOptions,
}

impl Conv2d {
    pub fn new(
        path: &Path,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        config: Conv2dConfig,
    ) -> Result<Conv2d> {
        let (weight, bias) = weight_and_bias(
            path,
            [out_channels, in_channels, kernel[0], kernel[1]].into(),
            out_channels,
            config.bias,
            config.weight_init,
            config.bias_init,
        )?;
        let options = Conv2dOptions {
            stride: config.stride,
            padding: config.padding,
            dilation: config.dilation,
        };
        Ok(Conv2d {
            weight,
            bias,
            options,
        })
    }

    /// `[out, in, kh, kw]`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    pub fn options(&self) -> Conv2dOptions {
        self.options
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Activation::Identity)
    }

    fn forward_activated(&self, x: &Tensor, activation: Activation) -> Option<Result<Tensor>> {
        Some(self.forward_with(x, activation))
    }
}

impl Conv2d {
    /// `activation(conv2d(x) + bias)` as one op ([`Tensor::conv2d_bias_act`]).
    fn forward_with(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        check_input("Conv2d", x, self.weight.dims()[1])?;
        let bias = self.bias.as_ref().map(Var::as_tensor);
        Ok(x.conv2d_bias_act(&self.weight, bias, self.options, activation)?) // [N, OC, OH, OW]
    }
}

/// `x [N, in, H, W] → [N, out, OH, OW]`: the transposed convolution (the input-gradient of a
/// `Conv2d`) with `weight [in, out, kh, kw]` plus `bias [out]`, registered as `weight` then
/// `bias`. `OH = (H - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1`,
/// likewise OW.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Var,
    bias: Option<Var>,
    options: ConvTranspose2dOptions,
}

impl ConvTranspose2d {
    pub fn new(
        path: &Path,
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        config: ConvTranspose2dConfig,
    ) -> Result<ConvTranspose2d> {
        let (weight, bias) = weight_and_bias(
            path,
            [in_channels, out_channels, kernel[0], kernel[1]].into(),
            out_channels,
            config.bias,
            config.weight_init,
            config.bias_init,
        )?;
        let options = ConvTranspose2dOptions {
            stride: config.stride,
            padding: config.padding,
            output_padding: config.output_padding,
            dilation: config.dilation,
        };
        Ok(ConvTranspose2d {
            weight,
            bias,
            options,
        })
    }

    /// `[in, out, kh, kw]`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    pub fn options(&self) -> ConvTranspose2dOptions {
        self.options
    }
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Activation::Identity)
    }

    fn forward_activated(&self, x: &Tensor, activation: Activation) -> Option<Result<Tensor>> {
        Some(self.forward_with(x, activation))
    }
}

impl ConvTranspose2d {
    /// `activation(conv_transpose2d(x) + bias)` as one op
    /// ([`Tensor::conv_transpose2d_bias_act`]).
    fn forward_with(&self, x: &Tensor, activation: Activation) -> Result<Tensor> {
        check_input("ConvTranspose2d", x, self.weight.dims()[0])?;
        let bias = self.bias.as_ref().map(Var::as_tensor);
        let (weight, options) = (&self.weight, self.options);
        Ok(x.conv_transpose2d_bias_act(weight, bias, options, activation)?) // [N, OC, OH, OW]
    }
}

/// The layer's own error for an input that is not `[N, channels, H, W]`.
fn check_input(layer: &'static str, x: &Tensor, channels: usize) -> Result<()> {
    if x.rank() != 4 || x.dims()[1] != channels {
        return Err(NnError::invalid(
            layer,
            format!("expected input [N, {channels}, H, W], got {}", x.shape()),
        ));
    }
    Ok(())
}
