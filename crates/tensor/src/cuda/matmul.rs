//! The batched matrix product on CUDA: which kernel runs it, and the host side of
//! kernels/matmul.cu, the plain tiled kernel (CPU reference: `cpu::matmul`).
//!
//! f32 products run on the GEMMs of kernels/gemm.cu (SIMT, the default) or kernels/gemm_tc.cu
//! (tensor cores, when `set_matmul_precision` asks for TF32 or BF16), with the bias and the
//! activation fused into the store; bf16 products run on the BF16 tensor-core GEMM; f16 and
//! f64 on the plain kernel, with the bias and activation applied by the elementwise kernels.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::conv::checked_input;
use super::product::{Epilogue, GemmOperand, GemmProblem, TensorCoreMode};
use super::{
    driver_error, elementwise, float_only, gemm, gemm_tc, registry, same_dtype_and_device,
    CudaStorage, StridedArg,
};
use crate::{Activation, BinaryOp, DType, Error, Layout, MatmulPrecision, Result};

/// Output rows and columns per block, and threads per block (16 x 16, each computing a 4 x 4
/// register block): `KILN_MATMUL_TILE` and the block shape in kernels/matmul.cu.
const TILE: usize = 64;
const BLOCK_SIDE: u32 = 16;
/// The most blocks a grid may have along y and z.
const MAX_GRID_YZ: usize = 65535;

/// The sizes and in-matrix strides of one product (`struct MatmulShape` in
/// kernels/matmul.cu, field for field).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct MatmulArg {
    m: u64,
    n: u64,
    k: u64,
    batches: u64,
    lhs_row_stride: u64,
    lhs_col_stride: u64,
    rhs_row_stride: u64,
    rhs_col_stride: u64,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for MatmulArg {}

/// Where each batch entry's matrix starts: the layout's batch dims (with their strides and the
/// layout's offset), the matrix dims narrowed to one element each so that `StridedArg` drops
/// them. `strided_offset(arg, b)` is then the offset of batch entry `b`'s element (0, 0).
/// Needs nonempty matrix dims.
fn batch_arg(layout: &Layout) -> Result<StridedArg> {
    let rank = layout.dims().len();
    let corner = layout.narrow(rank - 2, 0, 1)?.narrow(rank - 1, 0, 1)?;
    StridedArg::new("matmul", &corner)
}

/// `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`, contiguous.
pub(super) fn matmul(
    lhs: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
) -> Result<CudaStorage> {
    matmul_bias_act(lhs, layout, rhs, rhs_layout, None, Activation::Identity)
}

/// `activation(lhs @ rhs + bias)`, contiguous, on the kernel the dtype and the precision
/// setting choose (see the module docs).
pub(super) fn matmul_bias_act(
    lhs: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
    bias: Option<(&CudaStorage, &Layout)>,
    activation: Activation,
) -> Result<CudaStorage> {
    let (m, k, n, batches) = check_product(lhs, layout, rhs, rhs_layout)?;
    // The bias as the kernels take it: a contiguous [n] of the output's dtype from offset 0. A
    // Linear layer's bias already is one, so it is read in place; other views are copied.
    let bias_copy;
    let bias = match bias {
        Some((bias, bias_layout)) => {
            if bias.dtype != lhs.dtype {
                return Err(Error::DTypeMismatch {
                    op: "matmul_bias_act",
                    lhs: lhs.dtype,
                    rhs: bias.dtype,
                });
            }
            if bias_layout.is_contiguous() && bias_layout.offset() == 0 {
                Some(bias)
            } else {
                bias_copy = elementwise::copy_strided(bias, bias_layout)?;
                Some(&bias_copy)
            }
        }
        None => None,
    };
    let problem = GemmProblem { m, n, k, batches };
    if m * n * batches == 0 || k == 0 {
        let product = plain(lhs, layout, rhs, rhs_layout)?;
        return unfused_epilogue(product, problem, bias, activation);
    }
    let epilogue = Epilogue { bias, activation };
    match (lhs.dtype, crate::matmul_precision()) {
        (DType::F32, MatmulPrecision::Fp32) => {
            let (a, b) = (operand(lhs, layout)?, operand(rhs, rhs_layout)?);
            gemm::gemm_f32(&a.as_operand()?, &b.as_operand()?, problem, &epilogue)
        }
        (DType::F32, MatmulPrecision::Tf32) => {
            let (a, b) = (operand(lhs, layout)?, operand(rhs, rhs_layout)?);
            gemm_tc::gemm_tensor_core(
                &a.as_operand()?,
                &b.as_operand()?,
                problem,
                &epilogue,
                TensorCoreMode::Tf32,
                DType::F32,
            )
        }
        (DType::F32, MatmulPrecision::Bf16) | (DType::BF16, _) => {
            // f32 operands are rounded to bf16 once, in their own memory order.
            let (a, b) = (to_bf16(lhs, layout)?, to_bf16(rhs, rhs_layout)?);
            // The output (and so the bias) keeps the operands' dtype: f32, or bf16.
            gemm_tc::gemm_tensor_core(
                &a.as_operand()?,
                &b.as_operand()?,
                problem,
                &epilogue,
                TensorCoreMode::Bf16,
                lhs.dtype,
            )
        }
        _ => {
            let product = plain(lhs, layout, rhs, rhs_layout)?;
            unfused_epilogue(product, problem, bias, activation)
        }
    }
}

/// An operand in place, or a copy of it when its view has neither a unit row nor a unit
/// column stride (which the GEMMs need), with the layout to read it through.
enum Prepared<'a> {
    InPlace(&'a CudaStorage, Layout),
    Owned(CudaStorage, Layout),
}

impl Prepared<'_> {
    fn as_operand(&self) -> Result<GemmOperand<'_>> {
        let (storage, layout) = match self {
            Prepared::InPlace(storage, layout) => (*storage, layout),
            Prepared::Owned(storage, layout) => (storage, layout),
        };
        let rank = layout.dims().len();
        let (rows, cols) = (layout.dims()[rank - 2], layout.dims()[rank - 1]);
        let (mut row_stride, mut col_stride) =
            (layout.strides()[rank - 2], layout.strides()[rank - 1]);
        // A single row or column is read the same whatever its stride across: call it 1, so
        // that the operand counts as row-major or transposed.
        if rows == 1 && col_stride != 1 {
            row_stride = 1;
        }
        if cols == 1 && row_stride != 1 {
            col_stride = 1;
        }
        Ok(GemmOperand {
            storage,
            row_stride,
            col_stride,
            batch: batch_arg(layout)?,
        })
    }
}

/// `storage` through `layout` as a GEMM operand: in place when a matrix dim has unit stride
/// (or is a single row or column), else a contiguous copy.
fn operand<'a>(storage: &'a CudaStorage, layout: &Layout) -> Result<Prepared<'a>> {
    let rank = layout.dims().len();
    let dims = &layout.dims()[rank - 2..];
    let strides = &layout.strides()[rank - 2..];
    let usable = strides.contains(&1) || dims.contains(&1);
    if usable {
        Ok(Prepared::InPlace(storage, layout.clone()))
    } else {
        let copy = elementwise::copy_strided(storage, layout)?;
        Ok(Prepared::Owned(
            copy,
            Layout::contiguous(layout.shape().clone()),
        ))
    }
}

/// An operand as bf16, rounded once from f32 in its own memory order (so a transposed matrix
/// stays transposed), or in place when it is bf16 already.
fn to_bf16<'a>(storage: &'a CudaStorage, layout: &Layout) -> Result<Prepared<'a>> {
    if storage.dtype == DType::BF16 {
        return operand(storage, layout);
    }
    // Broadcast dims (stride 0: a right operand shared by every batch entry) are converted
    // once and broadcast again; copied out, they would land innermost and leave the matrix
    // with no unit stride.
    let mut compact = layout.clone();
    for (d, (&size, &stride)) in layout.dims().iter().zip(layout.strides()).enumerate() {
        if stride == 0 && size > 1 {
            compact = compact.narrow(d, 0, 1)?;
        }
    }
    let order = memory_order(&compact);
    let permuted = compact.permute(&order)?;
    let converted = elementwise::to_dtype(storage, &permuted, DType::BF16)?;
    let converted_layout = Layout::contiguous(permuted.shape().clone())
        .permute(&inverse(&order))?
        .broadcast_as(layout.shape())?;
    Ok(Prepared::Owned(converted, converted_layout))
}

/// The dims of `layout` from the largest stride to the smallest (ties in dim order), so that
/// a copy in this order is the layout's own memory order: a transposed matrix stays
/// transposed.
fn memory_order(layout: &Layout) -> Vec<usize> {
    let mut order: Vec<usize> = (0..layout.dims().len()).collect();
    order.sort_by_key(|&d| std::cmp::Reverse(layout.strides()[d]));
    order
}

fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    inverse
}

/// `activation(product + bias)` by the elementwise kernels, for the products the GEMMs do not
/// run (f16, f64, empty ones).
fn unfused_epilogue(
    product: CudaStorage,
    problem: GemmProblem,
    bias: Option<&CudaStorage>,
    activation: Activation,
) -> Result<CudaStorage> {
    let out_layout = Layout::contiguous([problem.batches * problem.m, problem.n]);
    let mut out = product;
    if let Some(bias) = bias {
        let rows = Layout::contiguous([problem.n]).broadcast_as(out_layout.shape())?;
        out = elementwise::binary(&out, &out_layout, bias, &rows, BinaryOp::Add)?;
    }
    if let Some(unary) = activation.unary() {
        out = elementwise::unary(&out, &out_layout, unary)?;
    }
    Ok(out)
}

/// Checks a product's operands as the CPU does and returns (m, k, n, batch entries).
fn check_product(
    lhs: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
) -> Result<(usize, usize, usize, usize)> {
    const OP: &str = "matmul";
    float_only(OP, lhs.dtype)?;
    same_dtype_and_device(OP, lhs, rhs)?;
    let (lhs_dims, rhs_dims) = (layout.dims(), rhs_layout.dims());
    let rank = lhs_dims.len();
    if rank < 2
        || rhs_dims.len() != rank
        || lhs_dims[..rank - 2] != rhs_dims[..rank - 2]
        || lhs_dims[rank - 1] != rhs_dims[rank - 2]
    {
        return Err(Error::invalid(
            OP,
            format!(
                "cannot multiply {:?} by {:?}: expected [batch.., m, k] x [batch.., k, n]",
                lhs_dims, rhs_dims
            ),
        ));
    }
    let (m, k, n) = (lhs_dims[rank - 2], lhs_dims[rank - 1], rhs_dims[rank - 1]);
    let batches: usize = lhs_dims[..rank - 2].iter().product();
    checked_input(OP, lhs, layout, layout.shape())?;
    checked_input(OP, rhs, rhs_layout, rhs_layout.shape())?;
    Ok((m, k, n, batches))
}

/// The product on the plain tiled kernel of kernels/matmul.cu. The half types load as f32,
/// accumulate in f32 and round once on store, as the CPU's `widened`.
fn plain(
    lhs: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
) -> Result<CudaStorage> {
    const OP: &str = "matmul";
    let (m, k, n, batches) = check_product(lhs, layout, rhs, rhs_layout)?;
    let rank = layout.dims().len();
    let device = lhs.device.clone();
    let mut out = device.alloc(lhs.dtype, batches * m * n)?;
    if batches * m * n == 0 {
        return Ok(out);
    }
    if k == 0 {
        // A sum of no products: zeros, which are all-zero bits in every float dtype.
        device
            .stream()
            .memset_zeros(&mut out.buffer)
            .map_err(driver_error(OP))?;
        return Ok(out);
    }
    let (lhs_batch, rhs_batch) = (batch_arg(layout)?, batch_arg(rhs_layout)?);
    let shape = MatmulArg {
        m: m as u64,
        n: n as u64,
        k: k as u64,
        batches: batches as u64,
        lhs_row_stride: layout.strides()[rank - 2] as u64,
        lhs_col_stride: layout.strides()[rank - 1] as u64,
        rhs_row_stride: rhs_layout.strides()[rank - 2] as u64,
        rhs_col_stride: rhs_layout.strides()[rank - 1] as u64,
    };
    // Column tiles along x (up to 2^31 - 1 blocks), row tiles and batch entries along y and z,
    // whose 65535-block limits the kernel's loops go past.
    let config = LaunchConfig {
        grid_dim: (
            n.div_ceil(TILE) as u32,
            m.div_ceil(TILE).min(MAX_GRID_YZ) as u32,
            batches.min(MAX_GRID_YZ) as u32,
        ),
        block_dim: (BLOCK_SIDE, BLOCK_SIDE, 1),
        shared_mem_bytes: 0,
    };
    let function = device.function(&registry::MATMUL, &format!("matmul_{}", lhs.dtype.as_str()))?;
    let mut builder = device.stream().launch_builder(&function);
    builder
        .arg(&mut out.buffer)
        .arg(&lhs.buffer)
        .arg(&rhs.buffer)
        .arg(&shape)
        .arg(&lhs_batch)
        .arg(&rhs_batch);
    // Safety: the arguments match `matmul_{dtype}(T* out, const T* lhs, const T* rhs,
    // MatmulShape shape, Strided lhs_batch, Strided rhs_batch)` in kernels/matmul.cu; `out`
    // holds batches * m * n elements and both layouts stay inside their buffers (checked).
    unsafe { builder.launch(config) }.map_err(driver_error(OP))?;
    Ok(out)
}
