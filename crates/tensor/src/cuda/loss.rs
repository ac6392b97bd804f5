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

/// One launch of `{op}_{dtype}(T* out, then a (const T*, Strided) pair per input, u64 n)`
/// over the inputs' shape (logits first), writing a contiguous output of the logits' dtype.
fn launch(op: &'static str, inputs: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    let args = operands(op, inputs)?;
    let (x, layout) = inputs[0];
    let n = layout.elem_count();
    let device = x.device.clone();
    let mut out = device.alloc(x.dtype, n)?;
    if n == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::LOSS, &format!("{op}_{}", x.dtype.as_str()))?;
    let n64 = n as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&mut out.buffer);
    for ((storage, _), arg) in inputs.iter().zip(&args) {
        launch.arg(&storage.buffer).arg(arg);
    }
    launch.arg(&n64);
    // Safety: the callers name the kernels of kernels/loss.cu, `bce_with_logits_{dtype}(T* out,
    // const T* logits, Strided, const T* targets, Strided, u64 n)` and
    // `bce_with_logits_backward_{dtype}(..., const T* grad, Strided, u64 n)`, with the inputs
    // in that order; `out` holds n elements and every layout stays inside its buffer (checked
    // by `operands`).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// Per-element `softplus(x) - x·y`, contiguous. Reference: `cpu::loss::bce_with_logits`.
pub(super) fn bce_with_logits(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    launch("bce_with_logits", &[logits, targets])
}

/// `(sigmoid(x) - y)·grad`, contiguous. Reference: `cpu::loss::bce_with_logits_backward`.
pub(super) fn bce_with_logits_backward(
    logits: (&CudaStorage, &Layout),
    targets: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    launch("bce_with_logits_backward", &[logits, targets, grad])
}
