//! The host side of kernels/loss.cu: binary cross-entropy with logits and its logits
//! gradient, one launch each (CPU reference: `cpu::loss`).

use cudarc::driver::PushKernelArg;

use super::conv::checked_input;
use super::{driver_error, registry, CudaStorage};
use crate::{DType, Device, Error, Layout, Result};

/// The layout arguments of same-shaped float operands of one dtype and device, each checked
/// to stay inside its buffer.
fn operands(op: &'static str, parts: &[(&CudaStorage, &Layout)]) -> Result<Vec<super::StridedArg>> {
    let (first, first_layout) = parts[0];
    if !matches!(
        first.dtype,
        DType::F16 | DType::BF16 | DType::F32 | DType::F64
    ) {
        return Err(Error::UnsupportedDType {
            op,
            dtype: first.dtype,
        });
    }
    parts
        .iter()
        .map(|&(storage, layout)| {
            if storage.dtype != first.dtype {
                return Err(Error::DTypeMismatch {
                    op,
                    lhs: first.dtype,
                    rhs: storage.dtype,
                });
            }
            if storage.device.ordinal() != first.device.ordinal() {
                return Err(Error::DeviceMismatch {
                    op,
                    lhs: Device::Cuda(first.device.ordinal()),
                    rhs: Device::Cuda(storage.device.ordinal()),
                });
            }
            checked_input(op, storage, layout, first_layout.shape())
        })
        .collect()
}

/// Per-element `softplus(x) - x·y`, contiguous. Reference: `cpu::loss::bce_with_logits`.
pub(super) fn bce_with_logits(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    const OP: &str = "bce_with_logits";
    let args = operands(OP, &[logits, targets])?;
    let (x, layout) = logits;
    let n = layout.elem_count();
    let device = x.device.clone();
    let mut out = device.alloc(x.dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::LOSS, &format!("{OP}_{}", x.dtype.as_str()))?;
    let n64 = n as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&x.buffer)
        .arg(&args[0])
        .arg(&targets.0.buffer)
        .arg(&args[1])
        .arg(&n64);
    // Safety: the arguments match `bce_with_logits_{dtype}(T* out, const T* logits, Strided,
    // const T* targets, Strided, u64 n)` in kernels/loss.cu; `out` holds n elements and both
    // layouts stay inside their buffers (checked above).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(OP))?;
    Ok(out)
}

/// `(sigmoid(x) - y)·grad`, contiguous. Reference: `cpu::loss::bce_with_logits_backward`.
pub(super) fn bce_with_logits_backward(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    const OP: &str = "bce_with_logits_backward";
    let args = operands(OP, &[logits, targets, grad])?;
    let (x, layout) = logits;
    let n = layout.elem_count();
    let device = x.device.clone();
    let mut out = device.alloc(x.dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::LOSS, &format!("{OP}_{}", x.dtype.as_str()))?;
    let n64 = n as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&x.buffer)
        .arg(&args[0])
        .arg(&targets.0.buffer)
        .arg(&args[1])
        .arg(&grad.0.buffer)
        .arg(&args[2])
        .arg(&n64);
    // Safety: the arguments match `bce_with_logits_backward_{dtype}(T* out, const T* logits,
    // Strided, const T* targets, Strided, const T* grad, Strided, u64 n)` in kernels/loss.cu;
    // `out` holds n elements and every layout stays inside its buffer (checked above).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(OP))?;
    Ok(out)
}
