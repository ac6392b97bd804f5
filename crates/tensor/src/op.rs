//! The vocabulary shared by the backends and autograd: which primitive an op is, and the
//! record (`Op`) a tracked tensor keeps of the op and inputs that made it.

use crate::{Conv2dGeometry, Tensor};

/// Elementwise functions of one float tensor. Each is one line in the CPU table
/// (`cpu::elementwise::unary`) and, later, in the CUDA one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    /// -1, 0 or 1; has no gradient (used by backward rules).
    Sign,
    Relu,
    LeakyRelu(f64),
    /// 1 where x > 0, else the slope (0 for ReLU; NaN takes the slope): the factor the
    /// backward of leaky_relu (and of relu, slope 0) multiplies the gradient by, rounded as
    /// the mask-and-affine composition `[x > 0]·(1 - slope) + slope` rounds.
    LeakyReluDerivative(f64),
    Sigmoid,
    Tanh,
    /// log(1 + e^x), computed as max(x, 0) + log1p(e^-|x|) so it neither overflows nor
    /// loses small values.
    Softplus,
    /// x·sigmoid(x) (SiLU, swish), with the sigmoid rounded to the math type before the
    /// product, as `x.mul(&x.sigmoid())` rounds in f32.
    Silu,
    /// SiLU's derivative, `s·(1 + x·(1 - s))` with `s` = sigmoid(x): its backward's factor.
    SiluDerivative,
    Powf(f64),
    Clamp(f64, f64),
    /// x * mul + add.
    Affine(f64, f64),
}

impl UnaryOp {
    /// The op whose value times the output's gradient is the input's, for the activations
    /// whose backward is that one factor (ReLU, leaky ReLU, SiLU).
    pub(crate) fn derivative(self) -> Option<UnaryOp> {
        match self {
            UnaryOp::Relu => Some(UnaryOp::LeakyReluDerivative(0.0)),
            UnaryOp::LeakyRelu(slope) => Some(UnaryOp::LeakyReluDerivative(slope)),
            UnaryOp::Silu => Some(UnaryOp::SiluDerivative),
            _ => None,
        }
    }
}

/// The activation a fused matrix product or convolution applies to each output element after
/// the bias (`Tensor::matmul_bias_act`, `Tensor::conv2d_bias_act`,
/// `Tensor::conv_transpose2d_bias_act`), with the semantics of the unary op of the same name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Identity,
    Relu,
    LeakyRelu(f64),
    Tanh,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// Comparisons; they return `u8` masks (1 where true) and carry no gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// How a tracked tensor was made: the op and the inputs its backward rule needs. Inputs of
/// elementwise ops already have the output's shape (broadcasting is a `Broadcast` view op in
/// front), so backward rules never reduce over broadcast dims themselves.
#[derive(Clone)]
pub(crate) enum Op {
    Unary(Tensor, UnaryOp),
    Binary(Tensor, Tensor, BinaryOp),
    /// Reduced with keepdim; `dims` sorted.
    Reduce(Tensor, ReduceOp, Vec<usize>),
    Matmul(Tensor, Tensor),
    /// `activation(lhs @ rhs + bias)`, operands broadcast as for `Matmul`.
    MatmulBiasAct {
        lhs: Tensor,
        rhs: Tensor,
        bias: Option<Tensor>,
        activation: crate::Activation,
    },
    /// Same elements in the same order under another shape (reshape, squeeze, unsqueeze).
    Reshape(Tensor),
    Permute(Tensor, Vec<usize>),
    Broadcast(Tensor),
    Narrow(Tensor, usize, usize),
    Copy(Tensor),
    ToDType(Tensor),
    /// Moved to another device; the gradient moves back.
    ToDevice(Tensor),
    Cat(Vec<Tensor>, usize),
    IndexSelect(Tensor, Tensor, usize),
    IndexAdd(Tensor, Tensor, Tensor, usize),
    Gather(Tensor, Tensor, usize),
    ScatterAdd(Tensor, Tensor, Tensor, usize),
    WhereCond(Tensor, Tensor, Tensor),
    Softmax(Tensor, usize),
    LogSoftmax(Tensor, usize),
    /// 2-D convolution of `input` (`g.image_shape()`) with `weight` `[OC, C, kh, kw]`.
    Conv2d {
        input: Tensor,
        weight: Tensor,
        g: Conv2dGeometry,
    },
    /// `activation(conv + bias)`: `conv2d(input, weight)` or (`pass` transposed)
    /// `conv2d_input_grad(input, weight)` over `g`, plus `bias [C]` per output channel.
    ConvBiasAct {
        input: Tensor,
        weight: Tensor,
        bias: Option<Tensor>,
        g: Conv2dGeometry,
        pass: crate::ops::conv::ConvPass,
        activation: crate::Activation,
    },
    /// The input gradient of a convolution (also `conv_transpose2d`): `grad` `[N, OC, OH, OW]`
    /// through `weight` `[OC, C, kh, kw]` onto `g.image_shape()`.
    Conv2dInputGrad {
        grad: Tensor,
        weight: Tensor,
        g: Conv2dGeometry,
    },
    /// The weight gradient of a convolution: `input` (`g.image_shape()`) against `grad`
    /// `[N, OC, OH, OW]`.
    Conv2dWeightGrad {
        input: Tensor,
        grad: Tensor,
        g: Conv2dGeometry,
    },
    /// Image batch unfolded into convolution columns.
    Im2Col(Tensor, Conv2dGeometry),
    /// Convolution columns folded into an image batch.
    Col2Im(Tensor, Conv2dGeometry),
    /// Training-mode batch norm of `x [N, C, *]` with its batch statistics `mean` and
    /// `invstd = 1/√(var + eps)` (`[C]`, untracked: the backward rule treats them as the
    /// functions of x they are).
    BatchNorm {
        x: Tensor,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        mean: Tensor,
        invstd: Tensor,
        eps: f64,
        /// Applied to the normalised values in the same op (`batch_norm_train_act`).
        activation: crate::Activation,
    },
    /// Group norm of `x [N, C, *]` over `groups` groups of channels per sample, with each
    /// group's statistics `mean` and `invstd` (`[N·groups]`, untracked as batch norm's).
    GroupNorm {
        x: Tensor,
        weight: Option<Tensor>,
        bias: Option<Tensor>,
        mean: Tensor,
        invstd: Tensor,
        groups: usize,
        eps: f64,
    },
    /// Per-element binary cross-entropy of logits against targets.
    BceWithLogits(Tensor, Tensor),
    /// Max pooling; `indices` (`u32`, `[N, C, OH, OW]`, untracked) name each window's maximum.
    MaxPool2d {
        input: Tensor,
        indices: Tensor,
        g: Conv2dGeometry,
    },
    /// The gradient of max pooling: `grad` summed onto the pixels `indices` name.
    MaxPool2dBackward {
        grad: Tensor,
        indices: Tensor,
        g: Conv2dGeometry,
    },
    AvgPool2d(Tensor, Conv2dGeometry),
    /// The gradient of average pooling (its adjoint), from the grad `[N, C, OH, OW]`.
    AvgPool2dBackward(Tensor, Conv2dGeometry),
    /// Nearest resize; the sizes are those of the input and of the output.
    UpsampleNearest2d(Tensor),
    /// The gradient of a nearest resize (its adjoint), from the grad `[N, C, OH, OW]`.
    UpsampleNearest2dBackward(Tensor),
    /// A function kiln-tensor does not know, with its caller's backward rule
    /// (`Tensor::custom_unary`).
    Custom(Tensor, std::sync::Arc<dyn crate::CustomBackward>),
}

impl Op {
    /// The tensors this op read, for walking the graph.
    pub(crate) fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Unary(x, _)
            | Op::Reduce(x, _, _)
            | Op::Reshape(x)
            | Op::Permute(x, _)
            | Op::Broadcast(x)
            | Op::Narrow(x, _, _)
            | Op::Copy(x)
            | Op::ToDType(x)
            | Op::ToDevice(x)
            | Op::Softmax(x, _)
            | Op::LogSoftmax(x, _)
            | Op::Im2Col(x, _)
            | Op::Col2Im(x, _)
            | Op::AvgPool2d(x, _)
            | Op::AvgPool2dBackward(x, _)
            | Op::UpsampleNearest2d(x)
            | Op::UpsampleNearest2dBackward(x)
            | Op::Custom(x, _) => vec![x],
            // The indices are integers: no gradient reaches them.
            Op::MaxPool2d { input: x, .. } | Op::MaxPool2dBackward { grad: x, .. } => vec![x],
            Op::Binary(a, b, _) | Op::Matmul(a, b) | Op::BceWithLogits(a, b) => vec![a, b],
            Op::Conv2d {
                input: a,
                weight: b,
                ..
            }
            | Op::Conv2dInputGrad {
                grad: a, weight: b, ..
            }
            | Op::Conv2dWeightGrad {
                input: a, grad: b, ..
            } => vec![a, b],
            Op::BatchNorm {
                x, weight, bias, ..
            }
            | Op::GroupNorm {
                x, weight, bias, ..
            } => [x].into_iter().chain(weight).chain(bias).collect(),
            Op::MatmulBiasAct { lhs, rhs, bias, .. } => {
                [lhs, rhs].into_iter().chain(bias.as_ref()).collect()
            }
            Op::ConvBiasAct {
                input,
                weight,
                bias,
                ..
            } => [input, weight].into_iter().chain(bias.as_ref()).collect(),
            Op::IndexSelect(x, index, _) | Op::Gather(x, index, _) => vec![x, index],
            Op::IndexAdd(base, index, source, _) | Op::ScatterAdd(base, index, source, _) => {
                vec![base, index, source]
            }
            Op::WhereCond(condition, on_true, on_false) => vec![condition, on_true, on_false],
            Op::Cat(parts, _) => parts.iter().collect(),
        }
    }
}
