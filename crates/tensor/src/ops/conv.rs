//! Convolutions, transposed convolutions, pooling and nearest upsampling over `[N, C, H, W]`
//! batches, as PyTorch defines them (`torch.nn.functional.conv2d`, `conv_transpose2d`,
//! `max_pool2d`, `avg_pool2d`, `interpolate(mode="nearest")`), groups = 1.
//!
//! Two primitives carry the convolutions: `im2col` (unfold windows into GEMM columns) and
//! `col2im` (fold columns back, summing overlaps). Each is the other's adjoint, so each one's
//! backward rule is the other, and a convolution is `weight · im2col(x)`: the matrix product
//! and its backward rule do the rest, including the higher-order gradients WGAN-GP needs.
//! Pooling and upsampling are primitives of their own, each with a recorded backward (a
//! gather, deterministic on every device): average pooling and upsampling are adjoint pairs
//! with their backwards, and max pooling's backward is differentiated by gathering at its
//! indices.

use crate::backend::Operand;
use crate::op::Op;
use crate::ops::matmul::activation_pre_grad;
use crate::{Activation, Error, Result, Shape, Tensor};

/// Which convolution a fused [`Op::ConvBiasAct`] runs: `conv2d` of its input, or the input
/// gradient of one (`conv_transpose2d` of its input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConvPass {
    Forward,
    Transposed,
}

/// Options of `conv2d`: per-axis (height, width) stride, zero padding and dilation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Default for Conv2dOptions {
    /// Stride 1, no padding, no dilation (PyTorch's defaults).
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

/// Options of `conv_transpose2d`: those of the convolution it is the adjoint of, plus
/// `output_padding`, extra rows/columns on the bottom/right of the output that pick which of
/// the input sizes mapping to the same convolution output is meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvTranspose2dOptions {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub output_padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Default for ConvTranspose2dOptions {
    fn default() -> Self {
        ConvTranspose2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            output_padding: [0, 0],
            dilation: [1, 1],
        }
    }
}

/// Options of `max_pool2d` and `avg_pool2d` (floor mode; average pooling counts padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dOptions {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Pool2dOptions {
    /// Windows of `kernel` that do not overlap (stride = kernel, PyTorch's default), no
    /// padding.
    pub fn new(kernel: [usize; 2]) -> Self {
        Pool2dOptions {
            kernel,
            stride: kernel,
            padding: [0, 0],
        }
    }
}

/// Where every window of a 2-D sliding-window op lies: an image batch `[batch, channels,
/// height, width]`, the kernel's taps and an output grid of `out_height × out_width`
/// positions. Position `(oh, ow)`, tap `(ki, kj)` reads pixel
/// `(oh·stride₀ + ki·dilation₀ - padding₀, ow·stride₁ + kj·dilation₁ - padding₁)`; outside
/// the image it reads padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub out_height: usize,
    pub out_width: usize,
}

impl Conv2dGeometry {
    /// The shape of the image batch, `[N, C, H, W]`.
    pub fn image_shape(&self) -> Shape {
        Shape::from([self.batch, self.channels, self.height, self.width])
    }

    /// The shape of the columns, `[C·kh·kw, N·OH·OW]`.
    pub fn columns_shape(&self) -> Shape {
        Shape::from([
            self.channels * self.kernel[0] * self.kernel[1],
            self.batch * self.out_height * self.out_width,
        ])
    }
}

/// The number of window positions along one axis: `⌊(size + 2·padding - span) / stride⌋ + 1`
/// with `span = dilation·(kernel - 1) + 1`, or `None` when the window does not fit.
fn positions(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (kernel - 1) + 1;
    (size + 2 * padding)
        .checked_sub(span)
        .map(|room| room / stride + 1)
}

/// Errors for zero strides, dilations or kernel sizes, which PyTorch also rejects.
fn check_positive(op: &'static str, what: &str, values: [usize; 2]) -> Result<()> {
    if values.contains(&0) {
        return Err(Error::invalid(
            op,
            format!("{what} must be positive, got {values:?}"),
        ));
    }
    Ok(())
}

/// The error for a nearest resize between `[N, C, H, W]` and `[out_height, out_width]` when a
/// size is zero (checked by the tensor layer and again by the backends, whose source-row
/// formula needs positive sizes).
pub(crate) fn check_resize(
    op: &'static str,
    [batch, channels, height, width]: [usize; 4],
    [out_height, out_width]: [usize; 2],
) -> Result<()> {
    if out_height == 0 || out_width == 0 || height == 0 || width == 0 {
        return Err(Error::invalid(
            op,
            format!(
                "cannot resize [{batch}, {channels}, {height}, {width}] to {out_height}x{out_width}: sizes must be positive"
            ),
        ));
    }
    Ok(())
}

/// The geometry of a sliding window over a `[N, C, H, W]` batch of `dims`, with the output
/// grid the window positions make, or an error if the window does not fit.
pub(crate) fn window_geometry(
    op: &'static str,
    [batch, channels, height, width]: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Result<Conv2dGeometry> {
    check_positive(op, "kernel size", kernel)?;
    check_positive(op, "stride", stride)?;
    check_positive(op, "dilation", dilation)?;
    let fits = |axis: usize, size: usize| {
        positions(
            size,
            kernel[axis],
            stride[axis],
            padding[axis],
            dilation[axis],
        )
    };
    let (Some(out_height), Some(out_width)) = (fits(0, height), fits(1, width)) else {
        return Err(Error::invalid(
            op,
            format!(
                "a {}x{} kernel (dilation {:?}) does not fit the {}x{} input padded by {:?}",
                kernel[0], kernel[1], dilation, height, width, padding
            ),
        ));
    };
    Ok(Conv2dGeometry {
        batch,
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
        dilation,
        out_height,
        out_width,
    })
}

impl Tensor {
    /// `[N, C, H, W]` as a 4-tuple, or an error naming `op` and what it expects.
    pub(crate) fn image_dims(&self, op: &'static str, what: &str) -> Result<[usize; 4]> {
        match *self.dims() {
            [n, c, h, w] => Ok([n, c, h, w]),
            _ => Err(Error::invalid(
                op,
                format!(
                    "expected {what} of rank 4 [N, C, H, W], got {}",
                    self.shape()
                ),
            )),
        }
    }

    /// The geometry of a sliding window over this `[N, C, H, W]` tensor, with the output grid
    /// the window positions make, or an error if the window does not fit.
    fn window_geometry(
        &self,
        op: &'static str,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<Conv2dGeometry> {
        let dims = self.image_dims(op, "input")?;
        window_geometry(op, dims, kernel, stride, padding, dilation)
    }

    /// 2-D convolution (cross-correlation, as in PyTorch) of `[N, C, H, W]` with a weight
    /// `[OC, C, kh, kw]`: `[N, OC, OH, OW]`, `OH = ⌊(H + 2·padding - dilation·(kh - 1) - 1) /
    /// stride⌋ + 1`. No bias: [`Tensor::conv2d_bias_act`] adds one (and an activation).
    pub fn conv2d(&self, weight: &Tensor, options: Conv2dOptions) -> Result<Tensor> {
        let g = self.conv2d_geometry("conv2d", weight, options)?;
        self.conv2d_over(weight, &g)
    }

    /// `activation(conv2d(self, weight) + bias)`, with `bias` a `[OC]` added to each output
    /// channel: a `Conv2d` layer's forward (and the activation after it) in one op. Same values
    /// and gradients as that composition; on the CPU (f32, f64) the bias and the activation
    /// are applied to each image of the output in one pass, where the composition took a pass
    /// and a new buffer for each; elsewhere (CUDA, the half types) it runs as the composition.
    pub fn conv2d_bias_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        options: Conv2dOptions,
        activation: Activation,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_bias_act";
        let g = self.conv2d_geometry(OP, weight, options)?;
        self.conv_bias_act_over(OP, (weight, bias), &g, ConvPass::Forward, activation)
    }

    /// [`Tensor::conv2d`]'s checks, and its geometry.
    fn conv2d_geometry(
        &self,
        op: &'static str,
        weight: &Tensor,
        options: Conv2dOptions,
    ) -> Result<Conv2dGeometry> {
        self.same_dtype(op, weight)?;
        self.float_only(op)?;
        let [_, in_channels, kh, kw] = weight.image_dims(op, "weight")?;
        let g = self.window_geometry(
            op,
            [kh, kw],
            options.stride,
            options.padding,
            options.dilation,
        )?;
        if in_channels != g.channels {
            return Err(Error::invalid(
                op,
                format!(
                    "input {} has {} channels but weight {} expects {in_channels}",
                    self.shape(),
                    g.channels,
                    weight.shape()
                ),
            ));
        }
        Ok(g)
    }

    /// The gradient of `conv2d` with respect to its input (PyTorch's
    /// `torch.nn.grad.conv2d_input`): `self` is the gradient `[N, OC, OH, OW]` of the output,
    /// `weight` the convolution's `[OC, C, kh, kw]`, `input_size` the input's `[H, W]` (several
    /// sizes give one output size when the stride is above 1). Returns `[N, C, H, W]`.
    pub fn conv2d_input_grad(
        &self,
        weight: &Tensor,
        input_size: [usize; 2],
        options: Conv2dOptions,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_input_grad";
        self.same_dtype(OP, weight)?;
        self.float_only(OP)?;
        let [batch, out_channels, _, _] = self.image_dims(OP, "grad")?;
        let [weight_out, channels, kh, kw] = weight.image_dims(OP, "weight")?;
        let g = window_geometry(
            OP,
            [batch, channels, input_size[0], input_size[1]],
            [kh, kw],
            options.stride,
            options.padding,
            options.dilation,
        )?;
        let expected = Shape::from([batch, weight_out, g.out_height, g.out_width]);
        if out_channels != weight_out || self.shape() != &expected {
            return Err(Error::invalid(
                OP,
                format!(
                    "grad {} does not fit weight {} over a {}x{} input: expected {expected}",
                    self.shape(),
                    weight.shape(),
                    input_size[0],
                    input_size[1]
                ),
            ));
        }
        self.conv2d_input_grad_over(weight, &g)
    }

    /// The gradient of `conv2d` with respect to its weight (PyTorch's
    /// `torch.nn.grad.conv2d_weight`): `self` is the convolution's input `[N, C, H, W]`,
    /// `grad` the gradient `[N, OC, OH, OW]` of its output, `kernel` the weight's `[kh, kw]`.
    /// Returns `[OC, C, kh, kw]`.
    pub fn conv2d_weight_grad(
        &self,
        grad: &Tensor,
        kernel: [usize; 2],
        options: Conv2dOptions,
    ) -> Result<Tensor> {
        const OP: &str = "conv2d_weight_grad";
        self.same_dtype(OP, grad)?;
        self.float_only(OP)?;
        let g = self.window_geometry(
            OP,
            kernel,
            options.stride,
            options.padding,
            options.dilation,
        )?;
        let [grad_batch, out_channels, grad_height, grad_width] = grad.image_dims(OP, "grad")?;
        if [grad_batch, grad_height, grad_width] != [g.batch, g.out_height, g.out_width] {
            return Err(Error::invalid(
                OP,
                format!(
                    "grad {} does not fit input {} under a {}x{} kernel: expected [{}, {out_channels}, {}, {}]",
                    grad.shape(),
                    self.shape(),
                    kernel[0],
                    kernel[1],
                    g.batch,
                    g.out_height,
                    g.out_width
                ),
            ));
        }
        self.conv2d_weight_grad_over(grad, &g)
    }

    /// `conv2d` over a checked geometry: `self` is `g.image_shape()`, `weight` `[OC, C, kh,
    /// kw]`.
    pub(crate) fn conv2d_over(&self, weight: &Tensor, g: &Conv2dGeometry) -> Result<Tensor> {
        self.same_device("conv2d", weight)?;
        let out_channels = weight.dims()[0];
        let storage = self.storage().conv2d(
            self.layout(),
            Operand::new(&weight.storage(), weight.layout()),
            g,
        )?;
        let record = Tensor::record(&[self, weight], || Op::Conv2d {
            input: self.clone(),
            weight: weight.clone(),
            g: *g,
        });
        let shape = Shape::from([g.batch, out_channels, g.out_height, g.out_width]);
        Ok(Tensor::from_storage(storage, shape, record))
    }

    /// `conv2d_input_grad` over a checked geometry: `self` is the grad `[N, OC, OH, OW]`,
    /// `weight` `[OC, C, kh, kw]`; returns `g.image_shape()`.
    pub(crate) fn conv2d_input_grad_over(
        &self,
        weight: &Tensor,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.same_device("conv2d_input_grad", weight)?;
        let storage = self.storage().conv2d_input_grad(
            self.layout(),
            Operand::new(&weight.storage(), weight.layout()),
            g,
        )?;
        let record = Tensor::record(&[self, weight], || Op::Conv2dInputGrad {
            grad: self.clone(),
            weight: weight.clone(),
            g: *g,
        });
        Ok(Tensor::from_storage(storage, g.image_shape(), record))
    }

    /// `activation(pass(self, weight) + bias)` over a checked geometry: fused on the CPU in
    /// f32 and f64 (one op in the graph), else the composition of the convolution, the bias's
    /// broadcast add and the activation.
    fn conv_bias_act_over(
        &self,
        op: &'static str,
        (weight, bias): (&Tensor, Option<&Tensor>),
        g: &Conv2dGeometry,
        pass: ConvPass,
        activation: Activation,
    ) -> Result<Tensor> {
        self.same_device(op, weight)?;
        activation.check(op)?;
        let shape = match pass {
            ConvPass::Forward => {
                Shape::from([g.batch, weight.dims()[0], g.out_height, g.out_width])
            }
            ConvPass::Transposed => g.image_shape(),
        };
        let channels = shape.dims()[1];
        if let Some(bias) = bias {
            self.same_dtype(op, bias)?;
            self.same_device(op, bias)?;
            if bias.dims() != [channels] {
                return Err(Error::ShapeMismatch {
                    op,
                    expected: Shape::from([channels]),
                    got: bias.shape().clone(),
                });
            }
        }
        let fused = {
            let bias_storage = bias.map(|b| b.storage());
            self.storage().conv_bias_act(
                self.layout(),
                Operand::new(&weight.storage(), weight.layout()),
                bias_storage
                    .as_deref()
                    .zip(bias)
                    .map(|(s, b)| Operand::new(s, b.layout())),
                (g, pass == ConvPass::Transposed),
                activation,
            )?
        };
        let Some(storage) = fused else {
            return conv_plus_bias((self, weight, bias), (g, pass))?.activate(activation);
        };
        let inputs: Vec<&Tensor> = [self, weight].into_iter().chain(bias).collect();
        let record = Tensor::record(&inputs, || Op::ConvBiasAct {
            input: self.clone(),
            weight: weight.clone(),
            bias: bias.cloned(),
            g: *g,
            pass,
            activation,
        });
        Ok(Tensor::from_storage(storage, shape, record))
    }

    /// `conv2d_weight_grad` over a checked geometry: `self` is `g.image_shape()`, `grad`
    /// `[N, OC, OH, OW]`; returns `[OC, C, kh, kw]`.
    pub(crate) fn conv2d_weight_grad_over(
        &self,
        grad: &Tensor,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.same_device("conv2d_weight_grad", grad)?;
        let out_channels = grad.dims()[1];
        let storage = self.storage().conv2d_weight_grad(
            self.layout(),
            Operand::new(&grad.storage(), grad.layout()),
            g,
        )?;
        let record = Tensor::record(&[self, grad], || Op::Conv2dWeightGrad {
            input: self.clone(),
            grad: grad.clone(),
            g: *g,
        });
        let shape = Shape::from([out_channels, g.channels, g.kernel[0], g.kernel[1]]);
        Ok(Tensor::from_storage(storage, shape, record))
    }

    /// 2-D transposed convolution of `[N, IC, H, W]` with a weight `[IC, OC, kh, kw]` (the
    /// gradient of `conv2d` with respect to its input, as in PyTorch): `[N, OC, OH, OW]`,
    /// `OH = (H - 1)·stride - 2·padding + dilation·(kh - 1) + output_padding + 1`.
    pub fn conv_transpose2d(
        &self,
        weight: &Tensor,
        options: ConvTranspose2dOptions,
    ) -> Result<Tensor> {
        let g = self.conv_transpose2d_geometry("conv_transpose2d", weight, options)?;
        self.conv2d_input_grad_over(weight, &g) // [N, OC, OH, OW]
    }

    /// `activation(conv_transpose2d(self, weight) + bias)`, with `bias` a `[OC]` added to each
    /// output channel: a `ConvTranspose2d` layer's forward (and the activation after it) in
    /// one op, as [`Tensor::conv2d_bias_act`] is a `Conv2d` layer's.
    pub fn conv_transpose2d_bias_act(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        options: ConvTranspose2dOptions,
        activation: Activation,
    ) -> Result<Tensor> {
        const OP: &str = "conv_transpose2d_bias_act";
        let g = self.conv_transpose2d_geometry(OP, weight, options)?;
        self.conv_bias_act_over(OP, (weight, bias), &g, ConvPass::Transposed, activation)
    }

    /// [`Tensor::conv_transpose2d`]'s checks, and the geometry of the convolution it is the
    /// input gradient of.
    fn conv_transpose2d_geometry(
        &self,
        op: &'static str,
        weight: &Tensor,
        options: ConvTranspose2dOptions,
    ) -> Result<Conv2dGeometry> {
        self.same_dtype(op, weight)?;
        self.float_only(op)?;
        let [batch, channels, height, width] = self.image_dims(op, "input")?;
        let [in_channels, out_channels, kh, kw] = weight.image_dims(op, "weight")?;
        let ConvTranspose2dOptions {
            stride,
            padding,
            output_padding,
            dilation,
        } = options;
        check_positive(op, "kernel size", [kh, kw])?;
        check_positive(op, "stride", stride)?;
        check_positive(op, "dilation", dilation)?;
        if channels != in_channels {
            return Err(Error::invalid(
                op,
                format!(
                    "input {} has {channels} channels but weight {} expects {in_channels}",
                    self.shape(),
                    weight.shape()
                ),
            ));
        }
        let mut out_size = [0; 2];
        for (axis, input) in [height, width].into_iter().enumerate() {
            if output_padding[axis] >= stride[axis].max(dilation[axis]) {
                return Err(Error::invalid(
                    op,
                    format!(
                        "output padding {output_padding:?} must be smaller than the stride \
                         {stride:?} or the dilation {dilation:?}"
                    ),
                ));
            }
            let full = input.saturating_sub(1) * stride[axis]
                + dilation[axis] * ([kh, kw][axis] - 1)
                + output_padding[axis]
                + 1;
            out_size[axis] = match full.checked_sub(2 * padding[axis]) {
                Some(size) if size > 0 && input > 0 => size,
                _ => {
                    return Err(Error::invalid(
                        op,
                        format!(
                            "input {} with padding {padding:?} gives an empty output",
                            self.shape()
                        ),
                    ))
                }
            };
        }
        // The convolution this is the adjoint of: from the output image to the input's grid.
        let g = Conv2dGeometry {
            batch,
            channels: out_channels,
            height: out_size[0],
            width: out_size[1],
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            out_height: height,
            out_width: width,
        };
        Ok(g)
    }

    /// Max pooling of `[N, C, H, W]` over windows of `options.kernel`: `[N, C, OH, OW]`.
    /// Padding (at most half the kernel, as PyTorch requires) never wins; NaN propagates.
    pub fn max_pool2d(&self, options: Pool2dOptions) -> Result<Tensor> {
        Ok(self.max_pool2d_with_indices(options)?.0)
    }

    /// Max pooling, and for each output the index `ih·W + iw` of the maximum within its
    /// `[H, W]` plane (`u32`, like PyTorch's `return_indices=True`). The gradient flows to the
    /// maxima only.
    pub fn max_pool2d_with_indices(&self, options: Pool2dOptions) -> Result<(Tensor, Tensor)> {
        const OP: &str = "max_pool2d";
        self.float_only(OP)?;
        let g = self.pool_geometry(OP, options)?;
        if (g.height == 0 || g.width == 0) && g.batch * g.channels > 0 {
            return Err(Error::invalid(
                OP,
                format!("cannot pool the empty planes of {}", self.shape()),
            ));
        }
        let (values, indices) = self.storage().max_pool2d(self.layout(), &g)?;
        let out_shape = Shape::from([g.batch, g.channels, g.out_height, g.out_width]);
        let indices = Tensor::from_storage(indices, out_shape.clone(), None); // [N, C, OH, OW]
        let record = Tensor::record(&[self], || Op::MaxPool2d {
            input: self.clone(),
            indices: indices.clone(),
            g,
        });
        let values = Tensor::from_storage(values, out_shape, record); // [N, C, OH, OW]
        Ok((values, indices))
    }

    /// The gradient of max pooling: this grad `[N, C, OH, OW]` summed onto the maxima
    /// `indices` name, `[N, C, H, W]`. Recorded: its own gradient gathers at the indices.
    pub(crate) fn max_pool2d_backward(
        &self,
        indices: &Tensor,
        g: &Conv2dGeometry,
    ) -> Result<Tensor> {
        let out_shape = Shape::from([g.batch, g.channels, g.out_height, g.out_width]);
        self.expect_shape("max_pool2d_backward", &out_shape)?;
        indices.expect_shape("max_pool2d_backward", &out_shape)?;
        self.same_device("max_pool2d_backward", indices)?;
        let storage = self.storage().max_pool2d_backward(
            self.layout(),
            Operand::new(&indices.storage(), indices.layout()),
            g,
        )?;
        let record = Tensor::record(&[self], || Op::MaxPool2dBackward {
            grad: self.clone(),
            indices: indices.clone(),
            g: *g,
        });
        Ok(Tensor::from_storage(storage, g.image_shape(), record))
    }

    /// Average pooling of `[N, C, H, W]`: each output is the mean of its window, padding
    /// counted as zeros (PyTorch's `count_include_pad=True`): `[N, C, OH, OW]`.
    pub fn avg_pool2d(&self, options: Pool2dOptions) -> Result<Tensor> {
        const OP: &str = "avg_pool2d";
        self.float_only(OP)?;
        let g = self.pool_geometry(OP, options)?;
        self.avg_pool2d_over(&g)
    }

    /// Average pooling over the windows of `g` (this tensor has `g.image_shape()`).
    pub(crate) fn avg_pool2d_over(&self, g: &Conv2dGeometry) -> Result<Tensor> {
        self.expect_shape("avg_pool2d", &g.image_shape())?;
        let storage = self.storage().avg_pool2d(self.layout(), g)?;
        let record = Tensor::record(&[self], || Op::AvgPool2d(self.clone(), *g));
        let out_shape = Shape::from([g.batch, g.channels, g.out_height, g.out_width]);
        Ok(Tensor::from_storage(storage, out_shape, record))
    }

    /// The gradient of average pooling (its adjoint): grad `[N, C, OH, OW]` to `[N, C, H, W]`.
    pub(crate) fn avg_pool2d_backward(&self, g: &Conv2dGeometry) -> Result<Tensor> {
        let out_shape = Shape::from([g.batch, g.channels, g.out_height, g.out_width]);
        self.expect_shape("avg_pool2d_backward", &out_shape)?;
        let storage = self.storage().avg_pool2d_backward(self.layout(), g)?;
        let record = Tensor::record(&[self], || Op::AvgPool2dBackward(self.clone(), *g));
        Ok(Tensor::from_storage(storage, g.image_shape(), record))
    }

    fn pool_geometry(&self, op: &'static str, options: Pool2dOptions) -> Result<Conv2dGeometry> {
        let Pool2dOptions {
            kernel,
            stride,
            padding,
        } = options;
        if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return Err(Error::invalid(
                op,
                format!("padding {padding:?} must be at most half the kernel {kernel:?}"),
            ));
        }
        self.window_geometry(op, kernel, stride, padding, [1, 1])
    }

    /// Nearest-neighbour resize of `[N, C, H, W]` to `[N, C, out_height, out_width]`: output
    /// row `i` copies input row `min(⌊i·H/out_height⌋, H - 1)` (in f32, as PyTorch's
    /// `interpolate(size=..., mode="nearest")` computes it), and likewise for columns.
    pub fn upsample_nearest2d(&self, out_height: usize, out_width: usize) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d";
        let [batch, channels, height, width] = self.image_dims(OP, "input")?;
        check_resize(
            OP,
            [batch, channels, height, width],
            [out_height, out_width],
        )?;
        let storage = self
            .storage()
            .upsample_nearest2d(self.layout(), out_height, out_width)?;
        let record = Tensor::record(&[self], || Op::UpsampleNearest2d(self.clone()));
        let out_shape = Shape::from([batch, channels, out_height, out_width]);
        Ok(Tensor::from_storage(storage, out_shape, record))
    }

    /// The gradient of nearest resizing (its adjoint): grad `[N, C, OH, OW]` to
    /// `[N, C, height, width]`, each pixel the sum of the grads of the outputs that copy it.
    pub(crate) fn upsample_nearest2d_backward(
        &self,
        height: usize,
        width: usize,
    ) -> Result<Tensor> {
        const OP: &str = "upsample_nearest2d_backward";
        self.float_only(OP)?;
        let [batch, channels, out_height, out_width] = self.image_dims(OP, "grad")?;
        check_resize(
            OP,
            [batch, channels, height, width],
            [out_height, out_width],
        )?;
        let storage = self
            .storage()
            .upsample_nearest2d_backward(self.layout(), height, width)?;
        let record = Tensor::record(&[self], || Op::UpsampleNearest2dBackward(self.clone()));
        Ok(Tensor::from_storage(
            storage,
            Shape::from([batch, channels, height, width]),
            record,
        ))
    }

    /// Unfolds this image batch into GEMM columns (see `cpu::conv`).
    pub(crate) fn im2col(&self, g: &Conv2dGeometry) -> Result<Tensor> {
        self.expect_shape("im2col", &g.image_shape())?;
        let storage = self.storage().im2col(self.layout(), g)?;
        let record = Tensor::record(&[self], || Op::Im2Col(self.clone(), *g));
        Ok(Tensor::from_storage(storage, g.columns_shape(), record))
    }

    /// Folds GEMM columns back into an image batch, summing overlapping taps.
    pub(crate) fn col2im(&self, g: &Conv2dGeometry) -> Result<Tensor> {
        self.expect_shape("col2im", &g.columns_shape())?;
        self.float_only("col2im")?;
        let storage = self.storage().col2im(self.layout(), g)?;
        let record = Tensor::record(&[self], || Op::Col2Im(self.clone(), *g));
        Ok(Tensor::from_storage(storage, g.image_shape(), record))
    }

    fn expect_shape(&self, op: &'static str, shape: &Shape) -> Result<()> {
        if self.shape() != shape {
            return Err(Error::ShapeMismatch {
                op,
                expected: shape.clone(),
                got: self.shape().clone(),
            });
        }
        Ok(())
    }
}

/// The pooling and upsampling primitives against the compositions they replaced (max pool:
/// hand-written argmax loops, `gather` and `scatter_add`; average pool: `im2col` and `mean`;
/// upsample: two `index_select`s), forward and backward (through autograd of the old
/// composition), bit for bit, on pseudo-random shapes, views and values (ties, NaN, ±inf).
/// `pass(input, weight) + bias` by the unfused ops, recorded: the pre-activation of a
/// [`Op::ConvBiasAct`] where it runs as the composition, or is recomputed for a second
/// derivative.
fn conv_plus_bias(
    (input, weight, bias): (&Tensor, &Tensor, Option<&Tensor>),
    (g, pass): (&Conv2dGeometry, ConvPass),
) -> Result<Tensor> {
    let out = match pass {
        ConvPass::Forward => input.conv2d_over(weight, g)?,
        ConvPass::Transposed => input.conv2d_input_grad_over(weight, g)?,
    };
    match bias {
        Some(bias) => out.add(&bias.reshape([1, bias.dims()[0], 1, 1])?),
        None => Ok(out),
    }
}

/// Gradients of `activation(pass(input, weight) + bias)` (`node` is that output) for the
/// inputs that `wants` them, with the composition's values: the activation's derivative
/// ([`activation_pre_grad`]), then the convolution's two adjoints and the bias's sum over
/// images and positions (as `[1, C, 1, 1]`, the shape the composition broadcast it from).
pub(crate) fn conv_bias_act_backward(
    (input, weight, bias): (&Tensor, &Tensor, Option<&Tensor>),
    (g, pass): (&Conv2dGeometry, ConvPass),
    activation: Activation,
    (node, grad): (&Tensor, &Tensor),
    wants: &dyn Fn(&Tensor) -> bool,
) -> Result<Vec<(Tensor, Tensor)>> {
    let channels = node.dims()[1];
    let pre_grad = activation_pre_grad(activation, node, grad, &|| {
        conv_plus_bias((input, weight, bias), (g, pass))
    })?;
    // The kernels read the gradient in row-major order: a strided one (a slice of the
    // gradient of a `cat` after the convolution, as the U-Net's skip connections give) is
    // made so once here rather than by each of the two products (1.1% of a DDPM step).
    let pre_grad = if wants(input) && wants(weight) {
        pre_grad.contiguous()?
    } else {
        pre_grad
    };
    let mut grads = Vec::with_capacity(3);
    if wants(input) {
        let input_grad = match pass {
            ConvPass::Forward => pre_grad.conv2d_input_grad_over(weight, g)?,
            ConvPass::Transposed => pre_grad.conv2d_over(weight, g)?,
        };
        grads.push((input.clone(), input_grad));
    }
    if wants(weight) {
        let weight_grad = match pass {
            ConvPass::Forward => input.conv2d_weight_grad_over(&pre_grad, g)?,
            ConvPass::Transposed => pre_grad.conv2d_weight_grad_over(input, g)?,
        };
        grads.push((weight.clone(), weight_grad));
    }
    if let Some(bias) = bias.filter(|bias| wants(bias)) {
        let sums = pre_grad.sum_to(&Shape::from([1, channels, 1, 1]))?;
        grads.push((bias.clone(), sums.reshape([channels])?));
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    const FLOATS: [DType; 4] = [DType::F64, DType::F32, DType::F16, DType::BF16];

    /// A small xorshift generator.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// `shape` values of `dtype`: multiples of 0.5 in [-4, 4) (so windows tie), with NaN and
    /// ±inf sprinkled in when `special`; viewed through a permuted buffer every other case.
    fn input(rng: &mut Rng, shape: [usize; 4], dtype: DType, special: bool) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f64> = (0..n)
            .map(|_| match rng.below(if special { 40 } else { 1000 }) {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                _ => (rng.below(16) as f64 - 8.0) * 0.5,
            })
            .collect();
        let [a, b, c, d] = shape;
        let t = if rng.below(2) == 0 {
            Tensor::from_vec(values, [a, b, c, d], Device::Cpu)
        } else {
            // A channels-last buffer, read as [N, C, H, W].
            Tensor::from_vec(values, [a, c, d, b], Device::Cpu)
                .and_then(|t| t.permute(&[0, 3, 1, 2]))
        };
        t.and_then(|t| t.to_dtype(dtype)).unwrap()
    }

    /// Elements as f64 bits, NaNs made one (payloads are not compared).
    fn bits(t: &Tensor) -> Vec<u64> {
        let values = t.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
        values
            .into_iter()
            .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() })
            .collect()
    }

    /// Random pooling options whose window fits, over `[N, C, H, W]` with `N·C >= 2` (with a
    /// single output, `mean` took a lane-summed fast path the primitive does not copy).
    fn case(rng: &mut Rng) -> Option<([usize; 4], Pool2dOptions)> {
        let (n, c) = (1 + rng.below(3), 1 + rng.below(3));
        if n * c < 2 {
            return None;
        }
        let shape = [n, c, 1 + rng.below(9), 1 + rng.below(9)];
        let kernel = [1 + rng.below(4), 1 + rng.below(4)];
        let stride = [1 + rng.below(3), 1 + rng.below(3)];
        let padding = [rng.below(kernel[0] / 2 + 1), rng.below(kernel[1] / 2 + 1)];
        let fits = (0..2).all(|a| shape[2 + a] + 2 * padding[a] >= kernel[a]);
        fits.then_some((
            shape,
            Pool2dOptions {
                kernel,
                stride,
                padding,
            },
        ))
    }

    /// The gradient of `sum(f(x) * w)` with respect to `x`, for a fixed pseudo-random `w`.
    fn gradient(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>, seed: u64) -> Tensor {
        let x = x.detach().track().unwrap();
        let y = f(&x).unwrap();
        let mut rng = Rng(seed | 1);
        let n = y.elem_count();
        let w: Vec<f64> = (0..n)
            .map(|_| (rng.below(64) as f64 - 32.0) / 16.0)
            .collect();
        let w = Tensor::from_vec(w, y.dims().to_vec(), Device::Cpu)
            .and_then(|w| w.to_dtype(y.dtype()))
            .unwrap();
        let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
        grads.get(&x).cloned().unwrap()
    }

    /// The argmax loop max_pool2d_indices ran: first maximum in row-major window order,
    /// padding never, the first NaN for good.
    fn old_indices(x: &Tensor, g: &Conv2dGeometry) -> Vec<u32> {
        let values = x.to_dtype(DType::F64).unwrap().to_vec::<f64>().unwrap();
        let mut out = Vec::new();
        for plane in values.chunks(g.height * g.width) {
            for oh in 0..g.out_height {
                for ow in 0..g.out_width {
                    let mut best: Option<(usize, f64)> = None;
                    for ki in 0..g.kernel[0] {
                        for kj in 0..g.kernel[1] {
                            let ih = (oh * g.stride[0] + ki) as isize - g.padding[0] as isize;
                            let iw = (ow * g.stride[1] + kj) as isize - g.padding[1] as isize;
                            if ih < 0 || iw < 0 || ih >= g.height as isize || iw >= g.width as isize
                            {
                                continue;
                            }
                            let at = ih as usize * g.width + iw as usize;
                            let v = plane[at];
                            let wins = match best {
                                None => true,
                                Some((_, m)) => !m.is_nan() && (v > m || v.is_nan()),
                            };
                            if wins {
                                best = Some((at, v));
                            }
                        }
                    }
                    out.push(best.unwrap().0 as u32);
                }
            }
        }
        out
    }

    #[test]
    fn max_pool2d_equals_the_gather_composition() {
        let mut rng = Rng(0x5eed);
        let mut cases = 0;
        while cases < 300 {
            let Some((shape, options)) = case(&mut rng) else {
                continue;
            };
            let dtype = FLOATS[cases % 4];
            let x = input(&mut rng, shape, dtype, true);
            let g = x.pool_geometry("test", options).unwrap();
            let (values, indices) = x.max_pool2d_with_indices(options).unwrap();
            let expected = old_indices(&x, &g);
            assert_eq!(
                indices.to_vec::<u32>().unwrap(),
                expected,
                "{shape:?} {options:?}"
            );
            let planes = [g.batch * g.channels, g.height * g.width];
            let positions = [g.batch * g.channels, g.out_height * g.out_width];
            let old_index = Tensor::from_vec(expected, positions, Device::Cpu).unwrap();
            let old = |x: &Tensor| -> Result<Tensor> {
                x.reshape(planes)?
                    .gather(1, &old_index)?
                    .reshape(values.dims().to_vec())
            };
            assert_eq!(
                bits(&values),
                bits(&old(&x).unwrap()),
                "{shape:?} {options:?}"
            );
            let seed = rng.next();
            let new_grad = gradient(&x, |x| x.max_pool2d(options), seed);
            let old_grad = gradient(&x, old, seed);
            assert_eq!(
                bits(&new_grad),
                bits(&old_grad),
                "{shape:?} {options:?} {dtype}"
            );
            cases += 1;
        }
    }

    #[test]
    fn avg_pool2d_equals_the_im2col_mean_composition() {
        let mut rng = Rng(0xa11);
        let mut cases = 0;
        while cases < 300 {
            let Some((shape, options)) = case(&mut rng) else {
                continue;
            };
            let dtype = FLOATS[cases % 4];
            // Finer values than `input` gives, so the sums round.
            let x = input(&mut rng, shape, dtype, cases % 8 == 0)
                .affine(0.3, 0.01)
                .unwrap();
            let g = x.pool_geometry("test", options).unwrap();
            let old = |x: &Tensor| -> Result<Tensor> {
                let planes = Conv2dGeometry {
                    batch: g.batch * g.channels,
                    channels: 1,
                    ..g
                };
                x.reshape(planes.image_shape())?
                    .im2col(&planes)?
                    .mean(&[0], false)?
                    .reshape([g.batch, g.channels, g.out_height, g.out_width])
            };
            let new = x.avg_pool2d(options).unwrap();
            assert_eq!(
                bits(&new),
                bits(&old(&x).unwrap()),
                "{shape:?} {options:?} {dtype}"
            );
            let seed = rng.next();
            let new_grad = gradient(&x, |x| x.avg_pool2d(options), seed);
            let old_grad = gradient(&x, old, seed);
            assert_eq!(
                bits(&new_grad),
                bits(&old_grad),
                "{shape:?} {options:?} {dtype}"
            );
            cases += 1;
        }
    }

    #[test]
    fn upsample_nearest2d_equals_the_index_select_composition() {
        let mut rng = Rng(0x0b5);
        for case in 0..300 {
            let shape = [
                1 + rng.below(2),
                1 + rng.below(3),
                1 + rng.below(9),
                1 + rng.below(9),
            ];
            let out = [1 + rng.below(20), 1 + rng.below(20)];
            let dtype = FLOATS[case % 4];
            let x = input(&mut rng, shape, dtype, false)
                .affine(0.3, 0.01)
                .unwrap();
            let sources = |input: usize, output: usize| -> Tensor {
                let scale = input as f32 / output as f32;
                let rows = (0..output)
                    .map(|i| ((i as f32 * scale).floor() as u32).min(input as u32 - 1))
                    .collect();
                Tensor::from_vec(rows, [output], Device::Cpu).unwrap()
            };
            let old = |x: &Tensor| -> Result<Tensor> {
                x.index_select(2, &sources(shape[2], out[0]))?
                    .index_select(3, &sources(shape[3], out[1]))
            };
            let new = x.upsample_nearest2d(out[0], out[1]).unwrap();
            assert_eq!(bits(&new), bits(&old(&x).unwrap()), "{shape:?} -> {out:?}");
            let seed = rng.next();
            let new_grad = gradient(&x, |x| x.upsample_nearest2d(out[0], out[1]), seed);
            if matches!(dtype, DType::F32 | DType::F64) {
                let old_grad = gradient(&x, old, seed);
                assert_eq!(
                    bits(&new_grad),
                    bits(&old_grad),
                    "{shape:?} -> {out:?} {dtype}"
                );
            } else {
                // The halves round once: the f32 gradient (same sums, same order) rounded.
                let wide = x.to_dtype(DType::F32).unwrap();
                let f32_grad = gradient(&wide, |x| x.upsample_nearest2d(out[0], out[1]), seed);
                let expected = f32_grad.to_dtype(dtype).unwrap();
                assert_eq!(
                    bits(&new_grad),
                    bits(&expected),
                    "{shape:?} -> {out:?} {dtype}"
                );
            }
        }
    }
}
