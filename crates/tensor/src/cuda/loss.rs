//! The host side of kernels/loss.cu: binary cross-entropy with logits and its logits
//! gradient, one launch each (CPU reference: `cpu::loss`).

use cudarc::driver::PushKernelArg;

use super::conv::checked_input;
use super::{driver_error, float_only, registry, same_dtype_and_device, CudaStorage};
use crate::{Layout, Result};

/// The layout arguments of same-shaped float operands of one dtype and device, each checked
/// to stay inside its buffer.
fn operands(op: &'static str, parts: &[(&CudaStorage, &Layout)]) -> Result<Vec<super::StridedArg>> {
    let (first, first_layout) = parts[0];
    float_only(op, first.dtype)?;
    parts
        .iter()
        .map(|&(storage, layout)| {
            same_dtype_and_device(op, first, storage)?;
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
