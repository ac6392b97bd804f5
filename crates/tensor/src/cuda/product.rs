//! The vocabulary of the GEMM kernels (kernels/gemm.cu, kernels/gemm_tc.cu): an operand as a
//! strided matrix per batch entry, the problem's sizes, the fused epilogue, and the
//! tensor-core input precision. Shared by `matmul` (which picks a kernel) and the kernels'
//! host sides `gemm` and `gemm_tc`.

use cudarc::driver::DevicePtr;

use super::{CudaStorage, StridedArg};
use crate::Activation;

/// One operand of a batched product: element (i, j) of batch entry b's matrix is at
/// `strided_offset(batch, b) + i * row_stride + j * col_stride` of `storage`. At least one of
/// the two strides is 1 (row-major, or transposed: the matmul dispatch copies other views to
/// contiguous first); `batch` carries the layout's offset.
pub(crate) struct GemmOperand<'a> {
    pub storage: &'a CudaStorage,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch: StridedArg,
}

impl GemmOperand<'_> {
    /// Whether the operand's buffer starts on a 16-byte boundary, as the kernels' 16-byte
    /// loads (float4, `cp.async` of 16 bytes) need. The stream-ordered pool hands out buffers
    /// aligned far more than that, but the kernels must not rest on it: a buffer that is not
    /// aligned goes the scalar way (the element offsets are checked beside this).
    pub fn buffer_is_16_byte_aligned(&self) -> bool {
        let (pointer, _record) = self.storage.buffer.device_ptr(self.storage.device.stream());
        pointer.is_multiple_of(16)
    }
}

/// `[batches] x [m, k] · [k, n]`; all four nonzero (the dispatch handles empty products).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmProblem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batches: usize,
}

/// What is applied to each output element before it is stored: `+ bias[j]` (a contiguous `[n]`
/// of the output's dtype, offset 0) if any, then the activation, in f32.
pub(crate) struct Epilogue<'a> {
    pub bias: Option<&'a CudaStorage>,
    pub activation: Activation,
}

/// The tensor cores' input type: TF32 (f32 operands rounded to 10-bit mantissas on load) or
/// BF16 (bf16 operands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TensorCoreMode {
    Tf32,
    Bf16,
}

/// An activation as the kernels take it (`kiln_activate` in kernels/common.cuh): its code and
/// its slope, rounded to f32 once, as the CPU's leaky_relu rounds its slope to the dtype.
pub(crate) fn activation_code(activation: Activation) -> (u32, f32) {
    match activation {
        Activation::Identity => (0, 0.0),
        Activation::Relu => (1, 0.0),
        Activation::LeakyRelu(slope) => (2, slope as f32),
        Activation::Tanh => (3, 0.0),
        Activation::Sigmoid => (4, 0.0),
    }
}
