//! The host side of kernels/matmul.cu: the batched matrix product of f16/bf16/f32/f64 operands
//! in any layout, one launch of the tiled kernel (CPU reference: `cpu::matmul`). Not for
//! choosing among kernels yet: there is one, the plain shared-memory tiled version.

use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

use super::conv::checked_input;
use super::{driver_error, registry, CudaStorage, StridedArg};
use crate::{Device, Error, Layout, Result};

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

/// `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`, contiguous. The half types load as
/// f32, accumulate in f32 and round once on store, as the CPU's `widened`; other dtypes are an
/// `UnsupportedDType` error, as on the CPU.
pub(super) fn matmul(
    lhs: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
) -> Result<CudaStorage> {
    const OP: &str = "matmul";
    if !lhs.dtype.is_float() {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: lhs.dtype,
        });
    }
    if rhs.dtype != lhs.dtype {
        return Err(Error::DTypeMismatch {
            op: OP,
            lhs: lhs.dtype,
            rhs: rhs.dtype,
        });
    }
    if lhs.device.ordinal() != rhs.device.ordinal() {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: Device::Cuda(lhs.device.ordinal()),
            rhs: Device::Cuda(rhs.device.ordinal()),
        });
    }
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
