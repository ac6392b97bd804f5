//! The contract a device backend fulfils: the primitive kernels the tensor layer is built on.
//! The CPU implements it today (`cpu::CpuStorage`); the CUDA backend will implement the same
//! trait, so every op and every backward rule (written with tensor ops) works on both.
//!
//! Layout rules: inputs come with their layouts and may be any strided view; outputs are
//! contiguous, row-major, offset 0. Shapes are validated by the tensor layer before a call;
//! a backend checks only what depends on data (index values).

use crate::{
    Activation, AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Layout, ReduceOp, Result,
    UnaryOp,
};

pub trait BackendStorage: Sized + Send + Sync {
    fn dtype(&self) -> DType;
    fn device(&self) -> Device;

    /// A contiguous copy of the elements `layout` selects.
    fn copy_strided(&self, layout: &Layout) -> Result<Self>;
    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self>;

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self>;
    /// Both layouts have the same shape (broadcasting is done by the views).
    fn binary(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        op: BinaryOp,
    ) -> Result<Self>;
    /// A `u8` mask, 1 where `self op rhs`.
    fn compare(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self>;
    /// `self` is the condition (nonzero is true); all three layouts have one shape.
    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        true_layout: &Layout,
        on_false: &Self,
        false_layout: &Layout,
    ) -> Result<Self>;

    /// Reduces over `dims` (sorted, distinct), keeping them as dims of size 1.
    fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Self>;
    /// Softmax (or log-softmax when `log`) along `dim`, max-subtracted for stability.
    fn softmax(&self, layout: &Layout, dim: usize, log: bool) -> Result<Self>;

    /// `[batch.., m, k] x [batch.., k, n] -> [batch.., n]`, any strides (transposed views are
    /// read in place). Both operands have the same batch dims.
    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self>;
    /// `activation(self @ rhs + bias)` with `bias` a `[n]` added to every row, as `matmul`
    /// otherwise; the CUDA GEMMs apply the bias and activation as they store the product.
    fn matmul_bias_act(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
        activation: Activation,
    ) -> Result<Self>;

    /// An image batch `g.image_shape()` unfolded into convolution columns
    /// `g.columns_shape()`: row `(c, ki, kj)`, column `(n, oh, ow)`, zeros for padding.
    fn im2col(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;
    /// The adjoint of `im2col`: columns folded into an image batch, overlapping taps summed.
    fn col2im(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;
    /// For each window of an image batch, the `u32` index `ih·W + iw` of its maximum within
    /// its plane, `[N·C, OH·OW]`; padding never wins, NaN does.
    fn max_pool2d_indices(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self>;

    /// Concatenation along `dim` of parts whose other dims agree.
    fn cat(parts: &[(&Self, &Layout)], dim: usize) -> Result<Self>;
    /// Entries `index[j]` (a 1-D `u32` tensor) of `dim`.
    fn index_select(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// `self` with `source[.., j, ..]` added at `self[.., index[j], ..]` along `dim`.
    fn index_add(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        source: &Self,
        source_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// `out[i][j][k] = self[i][index[i][j][k]][k]` for `dim == 1`, and so on for any dim.
    fn gather(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
    /// `self` with `source[i][j][k]` added at `[i][index[i][j][k]][k]` (for `dim == 1`).
    fn scatter_add(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        source: &Self,
        source_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;

    /// One fused Adam/AdamW step of a parameter (`self`) with its gradient and its moments,
    /// all four of one shape and dtype: the new `(parameter, exp_avg, exp_avg_sq)`, each equal
    /// bit for bit to the unfused composition of kiln's ops (see [`AdamStep`]).
    #[allow(clippy::too_many_arguments)]
    fn adam_step(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        exp_avg: &Self,
        exp_avg_layout: &Layout,
        exp_avg_sq: &Self,
        exp_avg_sq_layout: &Layout,
        step: &AdamStep,
    ) -> Result<(Self, Self, Self)>;

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
        x: &Self,
        x_layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)>;

    /// Per-element binary cross-entropy of logits `self` against `targets` (one shape):
    /// `softplus(x) - x·y`, each of softplus, the product and the difference rounded to the
    /// element type as the unfused ops would.
    fn bce_with_logits(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
    ) -> Result<Self>;
    /// The logits' gradient of [`BackendStorage::bce_with_logits`]: `(sigmoid(x) - y)·grad`.
    fn bce_with_logits_backward(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
    ) -> Result<Self>;
}
