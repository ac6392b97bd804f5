//! The host side of kernels/gemm_tc.cu: `act(A·B + bias)` on tensor cores (TF32 or BF16 inputs,
//! f32 accumulation), one launch for all batch entries. Not for choosing between this and the
//! SIMT kernels: `matmul` does that.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::product::{activation_code, Epilogue, GemmOperand, GemmProblem, TensorCoreMode};
use super::{driver_error, registry, CudaStorage};
use crate::{DType, Error, Result};

const OP: &str = "gemm_tensor_core";
/// Output rows and columns per block, and threads per block: `KILN_GEMM_TC_TILE` and
/// `KILN_GEMM_TC_THREADS` in kernels/gemm_tc.cu.
const TILE: usize = 128;
const THREADS: u32 = 256;
/// The most blocks a grid may have along y and z.
const MAX_GRID_YZ: usize = 65535;

/// `struct GemmTcShape` in kernels/gemm_tc.cu, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct GemmTcArg {
    m: u64,
    n: u64,
    k: u64,
    batches: u64,
    a_stride: u64,
    b_stride: u64,
    a_vector: u32,
    b_vector: u32,
    activation: u32,
    slope: f32,
    has_bias: u32,
    padding: u32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for GemmTcArg {}

/// How the kernel reads one operand of `rows x cols`: its layout letter (`n` when `cols` is
/// the contiguous dim, `t` when `rows` is), the other dim's stride, and whether every 16-byte
/// chunk along the contiguous dim starts 16-byte aligned (the buffer's start, the batch
/// entries' offsets and the other dim's stride).
fn operand_layout(
    name: &str,
    operand: &GemmOperand,
    rows: usize,
    cols: usize,
) -> Result<(char, usize, bool)> {
    let (letter, stride, strided_extent) = if operand.col_stride == 1 || cols == 1 {
        ('n', operand.row_stride, rows)
    } else if operand.row_stride == 1 || rows == 1 {
        ('t', operand.col_stride, cols)
    } else {
        return Err(Error::invalid(
            OP,
            format!(
                "{name} needs a unit row or column stride, got strides [{}, {}]",
                operand.row_stride, operand.col_stride
            ),
        ));
    };
    let per_chunk = 16 / operand.storage.dtype.size_in_bytes();
    let batch = &operand.batch;
    let aligned = |offset: u64| offset.is_multiple_of(per_chunk as u64);
    let vector = (strided_extent == 1 || stride.is_multiple_of(per_chunk))
        && operand.buffer_is_16_byte_aligned()
        && aligned(batch.offset)
        && batch.strides[..batch.rank as usize]
            .iter()
            .all(|&stride| aligned(stride));
    Ok((letter, stride, vector))
}

/// `act(A·B + bias)` on tensor cores, f32 accumulation, out contiguous `[batches, m, n]` of
/// `out_dtype`: TF32 takes f32 operands and gives f32, BF16 takes bf16 operands and gives f32
/// or bf16 (rounded once, on store). The bias, if any, is a contiguous `[n]` of `out_dtype`.
pub(crate) fn gemm_tensor_core(
    a: &GemmOperand,
    b: &GemmOperand,
    problem: GemmProblem,
    epilogue: &Epilogue,
    mode: TensorCoreMode,
    out_dtype: DType,
) -> Result<CudaStorage> {
    let (input, mode_name) = match mode {
        TensorCoreMode::Tf32 => (DType::F32, "tf32"),
        TensorCoreMode::Bf16 => (DType::BF16, "bf16"),
    };
    for dtype in [a.storage.dtype, b.storage.dtype] {
        if dtype != input {
            return Err(Error::invalid(
                OP,
                format!("{mode:?} tensor cores take {input} operands, got {dtype}"),
            ));
        }
    }
    let out_valid = match mode {
        TensorCoreMode::Tf32 => out_dtype == DType::F32,
        TensorCoreMode::Bf16 => matches!(out_dtype, DType::F32 | DType::BF16),
    };
    if !out_valid {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: out_dtype,
        });
    }
    let GemmProblem { m, n, k, batches } = problem;
    if let Some(bias) = epilogue.bias {
        if bias.dtype != out_dtype || bias.len < n {
            return Err(Error::invalid(
                OP,
                format!(
                    "bias must be a [{n}] of {out_dtype}, got {} {} elements",
                    bias.len, bias.dtype
                ),
            ));
        }
    }
    let (a_letter, a_stride, a_vector) = operand_layout("A", a, m, k)?;
    let (b_letter, b_stride, b_vector) = operand_layout("B", b, k, n)?;
    let (activation, slope) = activation_code(epilogue.activation);
    let shape = GemmTcArg {
        m: m as u64,
        n: n as u64,
        k: k as u64,
        batches: batches as u64,
        a_stride: a_stride as u64,
        b_stride: b_stride as u64,
        a_vector: a_vector as u32,
        b_vector: b_vector as u32,
        activation,
        slope,
        has_bias: epilogue.bias.is_some() as u32,
        padding: 0,
    };

    let device = a.storage.device.clone();
    let mut out = device.alloc(out_dtype, batches * m * n)?;
    // Column tiles along x (up to 2^31 - 1 blocks), row tiles and batch entries along y and z,
    // whose 65535-block limits the kernel's loops go past.
    let config = LaunchConfig {
        grid_dim: (
            n.div_ceil(TILE) as u32,
            m.div_ceil(TILE).min(MAX_GRID_YZ) as u32,
            batches.min(MAX_GRID_YZ) as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let name = format!(
        "gemm_tc_{mode_name}_{}_{a_letter}{b_letter}",
        out_dtype.as_str()
    );
    let function = device.function(&registry::GEMM_TC, &name)?;
    // No bias: a null pointer the kernel never reads (has_bias is 0).
    let no_bias = 0u64;
    let mut builder = device.stream().launch_builder(&function);
    builder
        .arg(&mut out.buffer)
        .arg(&a.storage.buffer)
        .arg(&b.storage.buffer);
    match epilogue.bias {
        Some(bias) => builder.arg(&bias.buffer),
        None => builder.arg(&no_bias),
    };
    builder.arg(&shape).arg(&a.batch).arg(&b.batch);
    // Safety: the arguments match `gemm_tc_<mode>_<out>_<a><b>(Out* out, const T* a, const T*
    // b, const Out* bias, GemmTcShape shape, Strided a_batch, Strided b_batch)` in
    // kernels/gemm_tc.cu; `out` holds batches * m * n elements, the bias at least n, and the
    // caller's operands stay inside their buffers.
    unsafe { builder.launch(config) }.map_err(driver_error(OP))?;
    Ok(out)
}
