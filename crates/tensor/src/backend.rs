//! The contract a device backend fulfils: the primitive kernels the tensor layer is built on.
//! The CPU (`cpu::CpuStorage`) and CUDA (`cuda::CudaStorage`) backends implement it, so every
//! op and every backward rule (written with tensor ops) works on both.
//!
//! Layout rules: inputs come with their layouts and may be any strided view — the storage a
//! primitive is called on with its `layout`, every other input as an [`Operand`] (storage and
//! layout together); outputs are contiguous, row-major, offset 0. Shapes are validated by the tensor layer before a call;
//! a backend checks only what depends on data (index values).

use crate::{
    Activation, AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Error, Layout, ReduceOp,
    Result, Shape, UnaryOp,
};

/// An input of a backend primitive beside the storage it is called on: the storage and the
/// layout (shape, strides, offset) to read it through. Any strided view of any storage.
#[derive(Debug)]
pub struct Operand<'a, S> {
    pub storage: &'a S,
    pub layout: &'a Layout,
}

impl<'a, S> Operand<'a, S> {
    pub fn new(storage: &'a S, layout: &'a Layout) -> Operand<'a, S> {
        Operand { storage, layout }
    }
}

// Not derived: that would ask S: Clone, and an Operand copies two references whatever S is.
impl<S> Clone for Operand<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Operand<'_, S> {}

pub trait BackendStorage: Sized + Send + Sync {
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;

    /// A contiguous copy of the elements `layout` selects.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self>;

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self>;
    /// Both layouts have the same shape (broadcasting is done by the views).
    fn binary(&self, layout: &Layout, rhs: Operand<'_, Self>, op: BinaryOp) -> Result<Self>;
    /// `self · d(x)` for `d = op.derivative()` (ReLU, leaky ReLU, SiLU), one shape: the
    /// gradient reaching the input `x` of `op` from the gradient `self` of its output, each
    /// step rounded as the derivative op and a product round. The default runs those two
    /// ([`unary_gradient_composed`]); CPU fuses them into one pass.
    fn unary_gradient(&self, layout: &Layout, x: Operand<'_, Self>, op: UnaryOp) -> Result<Self> {
        unary_gradient_composed(self, layout, x, op)
    }
    /// A `u8` mask, 1 where `self op rhs`.
    fn compare(&self, layout: &Layout, rhs: Operand<'_, Self>, op: CmpOp) -> Result<Self>;
    /// `self` is the condition (nonzero is true); all three layouts have one shape.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: Operand<'_, Self>,
        on_false: Operand<'_, Self>,
    ) -> Result<Self>;

    /// Reduces over `dims` (sorted, distinct), keeping them as dims of size 1.
    fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Self>;
    /// Softmax (or log-softmax when `log`) along `dim`, max-subtracted for stability.
    fn softmax(&self, layout: &Layout, dim: usize, log: bool) -> Result<Self>;

    /// `[batch.., m, k] x [batch.., k, n] -> [batch.., n]`, any strides (transposed views are
    /// read in place). Both operands have the same batch dims.
    fn matmul(&self, layout: &Layout, rhs: Operand<'_, Self>) -> Result<Self>;
    /// `activation(self @ rhs + bias)` with `bias` a `[n]` added to every row, as `matmul`
    /// otherwise; the CUDA GEMMs apply the bias and activation as they store the product.
    fn matmul_bias_act(
        &self,
        layout: &Layout,
        rhs: Operand<'_, Self>,
        bias: Option<Operand<'_, Self>>,
        activation: Activation,
    ) -> Result<Self>;

    /// The convolution of an image batch `g.image_shape()` with a weight `[OC, C, kh, kw]`:
    /// `[N, OC, OH, OW]`. The default lowers it to `im2col` and a matrix product
    /// ([`conv2d_by_im2col`]); the CPU has direct kernels.
    fn conv2d(
        &self,
        layout: &Layout,
        weight: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        conv2d_by_im2col(self, layout, weight, g)
    }
    /// The gradient `[N, OC, OH, OW]` of a convolution's output carried back through its
    /// weight `[OC, C, kh, kw]` onto its input, `g.image_shape()` (and `conv_transpose2d`).
    /// The default is a matrix product and `col2im` ([`conv2d_input_grad_by_col2im`]).
    fn conv2d_input_grad(
        &self,
        layout: &Layout,
        weight: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        conv2d_input_grad_by_col2im(self, layout, weight, g)
    }
    /// A convolution's weight gradient `[OC, C, kh, kw]` from its input `g.image_shape()` and
    /// the gradient `[N, OC, OH, OW]` of its output. The default is `im2col` and a matrix
    /// product ([`conv2d_weight_grad_by_im2col`]).
    fn conv2d_weight_grad(
        &self,
        layout: &Layout,
        grad: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        conv2d_weight_grad_by_im2col(self, layout, grad, g)
    }

    /// An image batch `g.image_shape()` unfolded into convolution columns
    /// `g.columns_shape()`: row `(c, ki, kj)`, column `(n, oh, ow)`, zeros for padding.
    fn im2col(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;
    /// The adjoint of `im2col`: columns folded into an image batch, overlapping taps summed.
    fn col2im(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;

    /// [`BackendStorage::adam_step`] of many parameters with one `step`: for each entry
    /// `[parameter, gradient, exp_avg, exp_avg_sq]` (one shape and dtype within an entry, one
    /// dtype for all), its new `(parameter, exp_avg, exp_avg_sq)`, each equal bit for bit to
    /// what `adam_step` gives it. The CPU takes the parameters one after another; the CUDA
    /// backend updates them all in one launch (per 32 parameters).
    fn adam_step_many(
        entries: &[[Operand<'_, Self>; 4]],
        step: &AdamStep,
    ) -> Result<Vec<(Self, Self, Self)>> {
        entries
            .iter()
            .map(|&[param, grad, exp_avg, exp_avg_sq]| {
                param
                    .storage
                    .adam_step(param.layout, grad, exp_avg, exp_avg_sq, step)
            })
            .collect()
    }

    /// For each of `tensors` (at least one, all of one float dtype), the sum of the squares of
    /// its elements, as a `[tensors.len()]` tensor: f64 for f64 tensors, f32 for the others
    /// (the squares rounded in the math type, f32 for the half types, as `x.square()` rounds
    /// them). What gradient-norm clipping needs; the CUDA backend sums up to 32 tensors in one
    /// launch (and a second that adds the blocks' partial sums). The default is the CPU's: the
    /// composition `x.square().sum_all()` of each, then a `cat`.
    fn sum_of_squares_many(tensors: &[Operand<'_, Self>]) -> Result<Self> {
        let sums = tensors
            .iter()
            .map(|&x| {
                let (storage, layout) = (x.storage, x.layout);
                let squares = match storage.dtype() {
                    DType::F16 | DType::BF16 => {
                        let wide = storage.to_dtype(layout, DType::F32)?;
                        let contiguous = Layout::contiguous(layout.shape().clone());
                        let rhs = Operand::new(&wide, &contiguous);
                        wide.binary(&contiguous, rhs, BinaryOp::Mul)?
                    }
                    _ => storage.binary(layout, x, BinaryOp::Mul)?,
                };
                let contiguous = Layout::contiguous(layout.shape().clone());
                let dims: Vec<usize> = (0..layout.dims().len()).collect();
                squares.reduce(&contiguous, ReduceOp::Sum, &dims)
            })
            .collect::<Result<Vec<Self>>>()?;
        let one = Layout::contiguous([1]);
        let parts: Vec<Operand<Self>> = sums.iter().map(|sum| Operand::new(sum, &one)).collect();
        Self::cat(&parts, 0)
    }

    /// Concatenation along `dim` of parts whose other dims agree.
    fn cat(parts: &[Operand<'_, Self>], dim: usize) -> Result<Self>;
    /// Entries `index[j]` (a 1-D `u32` tensor) of `dim`.
    fn index_select(&self, layout: &Layout, index: Operand<'_, Self>, dim: usize) -> Result<Self>;
    /// `self` with `source[.., j, ..]` added at `self[.., index[j], ..]` along `dim`.
    fn index_add(
        &self,
        layout: &Layout,
        index: Operand<'_, Self>,
        source: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self>;
    /// `out[i][j][k] = self[i][index[i][j][k]][k]` for `dim == 1`, and so on for any dim.
    fn gather(&self, layout: &Layout, index: Operand<'_, Self>, dim: usize) -> Result<Self>;
    /// `self` with `source[i][j][k]` added at `[i][index[i][j][k]][k]` (for `dim == 1`).
    fn scatter_add(
        &self,
        layout: &Layout,
        index: Operand<'_, Self>,
        source: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self>;

    /// One fused Adam/AdamW step of a parameter (`self`) with its gradient and its moments,
    /// all four of one shape and dtype: the new `(parameter, exp_avg, exp_avg_sq)`, each equal
    /// bit for bit to the unfused composition of kiln's ops (see [`AdamStep`]).
    fn adam_step(
        &self,
        layout: &Layout,
        grad: Operand<'_, Self>,
        exp_avg: Operand<'_, Self>,
        exp_avg_sq: Operand<'_, Self>,
        step: &AdamStep,
    ) -> Result<(Self, Self, Self)>;

    /// Max pooling of an image batch `g.image_shape()` (float dtypes): the `[N, C, OH, OW]`
    /// maxima, and for each the `u32` index `ih·W + iw` of the pixel it came from within its
    /// plane, also `[N, C, OH, OW]`. Padding never wins; NaN does; ties go to the first pixel in
    /// row-major window order.
    fn max_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<(Self, Self)>;
    /// The gradient of `max_pool2d`: `self` is the grad `[N, C, OH, OW]`, `indices` the
    /// forward's; `[N, C, H, W]`, each pixel the sum of the grads of the windows whose maximum
    /// it is, in increasing `(oh, ow)` (deterministic). An index that is not a pixel of its own
    /// window adds nothing.
    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        indices: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self>;
    /// Average pooling, padding counted as zeros: `[N, C, OH, OW]` (float dtypes).
    fn avg_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;
    /// The gradient of `avg_pool2d` (its adjoint): grad `[N, C, OH, OW]` to `[N, C, H, W]`.
    fn avg_pool2d_backward(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;
    /// Nearest-neighbour resize of `[N, C, H, W]` (any dtype) to `[N, C, out_height,
    /// out_width]`: output row `o` copies row `min(⌊o·(H / out_height)⌋, H - 1)` in f32, and
    /// likewise for columns.
    fn upsample_nearest2d(
        &self,
        layout: &Layout,
        out_height: usize,
        out_width: usize,
    ) -> Result<Self>;
    /// The gradient of `upsample_nearest2d` (its adjoint, float dtypes): grad
    /// `[N, C, OH, OW]` to `[N, C, height, width]`, each pixel the sum of the grads of the
    /// outputs that copy it.
    fn upsample_nearest2d_backward(
        &self,
        layout: &Layout,
        height: usize,
        width: usize,
    ) -> Result<Self>;

    /// Per channel of `x [N, C, *]` (rank >= 2), the mean and the biased variance over every
    /// dim but 1, each a contiguous `[C]` of x's dtype, in one pass over x (Welford's update,
    /// partials merged as Chan et al.), so a large mean does not cancel the variance away.
    fn batch_norm_stats(&self, layout: &Layout) -> Result<(Self, Self)>;
    /// `(x - mean[c]) · invstd[c] · weight[c] + bias[c]` for `x [N, C, *]` (`self`), with
    /// `mean`, `invstd`, `weight` and `bias` contiguous `[C]` of x's dtype.
    fn batch_norm_forward(
        &self,
        layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self>;
    /// `(grad x [N, C, *], grad weight [C], grad bias [C])` of the training-mode batch norm
    /// (batch statistics `mean`, `invstd`), `self` being the gradient of its output: with
    /// `xhat = (x - mean)·invstd`, `dbias = Σ dy`, `dweight = Σ dy·xhat` and
    /// `dx = invstd·weight·(dy - mean(dy) - xhat·mean(dy·xhat))`, sums and means per channel.
    /// Without a weight it is 1 (the returned weight and bias gradients are still computed).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        layout: &Layout,
        x: Operand<'_, Self>,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)>;

    /// Group norm's normalisation of `x [N, C, *]` (`self`): `(x - mean[s])·invstd[s]·
    /// weight[c] + bias[c]` for channel `c` of sample `n`, `s = n·groups + c / (C / groups)`,
    /// with `mean` and `invstd` contiguous `[N·groups]` (batch norm's statistics of the view
    /// `[1, N·groups, C/groups·*]`) and `weight` and `bias` contiguous `[C]`; `C / groups ·
    /// *` is at least 1. The default composes batch norm's normalisation of that view with a
    /// broadcast product and sum ([`group_norm_forward_composed`]).
    fn group_norm_forward(
        &self,
        layout: &Layout,
        groups: usize,
        (mean, invstd): (&Self, &Self),
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self> {
        group_norm_forward_composed(self, layout, groups, (mean, invstd), weight, bias)
    }
    /// `(grad x [N, C, *], grad weight [C], grad bias [C])` of [`Self::group_norm_forward`]
    /// with those statistics, `self` being the gradient of its output: with `xhat = (x -
    /// mean)·invstd` and `g = dy·weight`, `dbias = Σ dy` and `dweight = Σ dy·xhat` per channel
    /// and `dx = invstd·(g - mean(g) - xhat·mean(g·xhat))`, means per (sample, group). Without
    /// a weight it is 1. The default composes batch norm's backward of the grouped view with
    /// broadcast ops and sums ([`group_norm_backward_composed`]).
    fn group_norm_backward(
        &self,
        layout: &Layout,
        x: Operand<'_, Self>,
        groups: usize,
        (mean, invstd): (&Self, &Self),
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)> {
        group_norm_backward_composed(self, layout, x, groups, (mean, invstd), weight)
    }

    /// Per-element binary cross-entropy of logits `self` against `targets` (one shape):
    /// `softplus(x) - x·y`, each of softplus, the product and the difference rounded to the
    /// element type as the unfused ops would.
    fn bce_with_logits(&self, layout: &Layout, targets: Operand<'_, Self>) -> Result<Self>;
    /// The logits' gradient of [`BackendStorage::bce_with_logits`]: `(sigmoid(x) - y)·grad`.
    fn bce_with_logits_backward(
        &self,
        layout: &Layout,
        targets: Operand<'_, Self>,
        grad: Operand<'_, Self>,
    ) -> Result<Self>;
}

/// A `[N, C, P]` tensor (`P` = the positions of an image) as the matrix `[C, N·P]`: a
/// contiguous copy through the permuted view.
fn channels_by_positions<S: BackendStorage>(x: &S, layout: &Layout) -> Result<S> {
    let [batch, channels, height, width] = layout.image_dims("conv2d")?;
    let x = x.copy_strided(layout)?;
    let view = Layout::contiguous([batch, channels, height * width]).permute(&[1, 0, 2])?;
    x.copy_strided(&view)
}

/// A weight `[OC, C, kh, kw]` as a contiguous matrix `[OC, C·kh·kw]`.
fn weight_matrix<S: BackendStorage>(weight: Operand<'_, S>) -> Result<(S, Layout)> {
    let [out_channels, channels, kh, kw] = weight.layout.image_dims("conv2d")?;
    let matrix = weight.storage.copy_strided(weight.layout)?;
    Ok((
        matrix,
        Layout::contiguous([out_channels, channels * kh * kw]),
    ))
}

/// `conv2d` as `weight · im2col(x)`, permuted from `[OC, N, P]` to `[N, OC, P]`: the lowering
/// every backend can run, and the reference the CPU's direct kernels are tested against.
pub(crate) fn conv2d_by_im2col<S: BackendStorage>(
    x: &S,
    layout: &Layout,
    weight: Operand<'_, S>,
    g: &Conv2dGeometry,
) -> Result<S> {
    let columns = x.im2col(layout, g)?; // [C·kh·kw, N·P]
    let (w, w_layout) = weight_matrix(weight)?; // [OC, C·kh·kw]
    let columns_layout = Layout::contiguous(g.columns_shape());
    let out = w.matmul(&w_layout, Operand::new(&columns, &columns_layout))?; // [OC, N·P]
    let out_channels = w_layout.dims()[0];
    let positions = g.out_height * g.out_width;
    let view = Layout::contiguous([out_channels, g.batch, positions]).permute(&[1, 0, 2])?;
    out.copy_strided(&view) // [N, OC, P]
}

/// `conv2d_input_grad` as `col2im(weightᵀ · grad)`.
pub(crate) fn conv2d_input_grad_by_col2im<S: BackendStorage>(
    grad: &S,
    layout: &Layout,
    weight: Operand<'_, S>,
    g: &Conv2dGeometry,
) -> Result<S> {
    let grad = channels_by_positions(grad, layout)?; // [OC, N·P]
    let (w, w_layout) = weight_matrix(weight)?;
    let out_channels = w_layout.dims()[0];
    let grad_layout = Layout::contiguous([out_channels, g.batch * g.out_height * g.out_width]);
    let wt = w_layout.permute(&[1, 0])?; // [C·kh·kw, OC]
    let columns = w.matmul(&wt, Operand::new(&grad, &grad_layout))?; // [C·kh·kw, N·P]
    columns.col2im(&Layout::contiguous(g.columns_shape()), g)
}

/// `conv2d_weight_grad` as `grad · im2col(x)ᵀ`.
pub(crate) fn conv2d_weight_grad_by_im2col<S: BackendStorage>(
    x: &S,
    layout: &Layout,
    grad: Operand<'_, S>,
    g: &Conv2dGeometry,
) -> Result<S> {
    let columns = x.im2col(layout, g)?; // [C·kh·kw, N·P]
    let out_channels = grad.layout.dims()[1];
    let grad = channels_by_positions(grad.storage, grad.layout)?; // [OC, N·P]
    let grad_layout = Layout::contiguous([out_channels, g.batch * g.out_height * g.out_width]);
    let columns_t = Layout::contiguous(g.columns_shape()).permute(&[1, 0])?; // [N·P, C·kh·kw]
    grad.matmul(&grad_layout, Operand::new(&columns, &columns_t)) // [OC, C·kh·kw]
}

/// A contiguous `[N, C, *]` (`layout`'s shape) as `[1, N·groups, C/groups·*]`: each (sample,
/// group) a channel of batch norm.
fn grouped(layout: &Layout, groups: usize) -> Layout {
    let samples = layout.dims()[0] * groups;
    Layout::contiguous([1, samples, layout.elem_count() / samples])
}

/// A contiguous `[C]` broadcast over `shape` `[N, C, *]`.
fn per_channel(shape: &Shape) -> Result<Layout> {
    let mut dims = vec![1; shape.rank()];
    dims[1] = shape.dims()[1];
    Layout::contiguous(dims).broadcast_as(shape)
}

/// `op.derivative()`, or the error [`BackendStorage::unary_gradient`] gives for an op that is
/// not an activation.
pub(crate) fn activation_derivative(op: UnaryOp) -> Result<UnaryOp> {
    op.derivative()
        .ok_or_else(|| Error::invalid("unary_gradient", format!("{op:?} is not an activation")))
}

/// [`BackendStorage::unary_gradient`] as the derivative op, then a product.
pub(crate) fn unary_gradient_composed<S: BackendStorage>(
    grad: &S,
    layout: &Layout,
    x: Operand<'_, S>,
    op: UnaryOp,
) -> Result<S> {
    let factor = x.storage.unary(x.layout, activation_derivative(op)?)?;
    let factor_layout = Layout::contiguous(x.layout.shape().clone());
    grad.binary(layout, Operand::new(&factor, &factor_layout), BinaryOp::Mul)
}

/// [`BackendStorage::group_norm_forward`] from batch norm's normalisation of the grouped view
/// and a broadcast product and sum: what CUDA runs, and what the CPU's one-pass kernel is
/// tested against.
pub(crate) fn group_norm_forward_composed<S: BackendStorage>(
    x: &S,
    layout: &Layout,
    groups: usize,
    (mean, invstd): (&S, &S),
    weight: Option<&S>,
    bias: Option<&S>,
) -> Result<S> {
    let x = x.copy_strided(layout)?;
    let mut y = x.batch_norm_forward(&grouped(layout, groups), mean, invstd, None, None)?;
    let contiguous = Layout::contiguous(layout.shape().clone());
    let channel = per_channel(layout.shape())?;
    for (vector, op) in [(weight, BinaryOp::Mul), (bias, BinaryOp::Add)] {
        if let Some(vector) = vector {
            y = y.binary(&contiguous, Operand::new(vector, &channel), op)?;
        }
    }
    Ok(y)
}

/// [`BackendStorage::group_norm_backward`] from batch norm's backward of the grouped view,
/// broadcast products and sums over every dim but 1.
pub(crate) fn group_norm_backward_composed<S: BackendStorage>(
    grad: &S,
    layout: &Layout,
    x: Operand<'_, S>,
    groups: usize,
    (mean, invstd): (&S, &S),
    weight: Option<&S>,
) -> Result<(S, S, S)> {
    let shape = layout.shape();
    let contiguous = Layout::contiguous(shape.clone());
    let grouped = grouped(layout, groups);
    let reduced: Vec<usize> = (0..shape.rank()).filter(|&d| d != 1).collect();
    let x = x.storage.copy_strided(x.layout)?;
    let xhat = x.batch_norm_forward(&grouped, mean, invstd, None, None)?;
    let dy = grad.copy_strided(layout)?;
    let dbias = dy.reduce(&contiguous, ReduceOp::Sum, &reduced)?; // [1, C, 1, ..]
    let dweight = dy
        .binary(&contiguous, Operand::new(&xhat, &contiguous), BinaryOp::Mul)?
        .reduce(&contiguous, ReduceOp::Sum, &reduced)?;
    let g = match weight {
        Some(w) => dy.binary(
            &contiguous,
            Operand::new(w, &per_channel(shape)?),
            BinaryOp::Mul,
        )?,
        None => dy,
    };
    let (dx, _, _) =
        g.batch_norm_backward(&grouped, Operand::new(&x, &grouped), mean, invstd, None)?;
    Ok((dx, dweight, dbias))
}
