//! The host side of kernels/optim.cu: the fused Adam/AdamW step of one parameter, one launch
//! (CPU reference: `cpu::optim`, whose step constants are computed here the same way). Not yet
//! the multi-tensor launch that updates every parameter at once.

use cudarc::driver::{DeviceRepr, PushKernelArg};
use half::{bf16, f16};

use super::conv::checked_input;
use super::{driver_error, registry, CudaStorage};
use crate::{AdamStep, DType, Device, Error, FloatDType, Layout, Result};

/// The step's scalars, each exactly the value of the CPU's `Constants` field (cpu/optim.rs)
/// held as f64 (an f32 converts exactly), as `struct AdamConstants` in kernels/optim.cu takes
/// them, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamConstants {
    decay_param: f64,
    decay_grad: f64,
    lerp_weight: f64,
    lerp_complement: f64,
    beta2: f64,
    one_minus_beta2: f64,
    negative_step_size: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    decay: u32,
    decoupled: u32,
    lerp_from_start: u32,
    padding: u32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for AdamConstants {}

impl AdamConstants {
    /// The CPU's `Constants::new::<T>`, line for line: `c(x)` is an f64 argument rounded to the
    /// math type, as the unfused ops took it; the bias correction's root is rounded to T.
    fn new<T: FloatDType>(step: &AdamStep) -> AdamConstants {
        let c = |x: f64| T::math_to_f64(T::math_from_f64(x));
        let (beta1, beta2) = step.betas;
        let weight = 1.0 - beta1;
        let bias_correction1 = 1.0 - beta1.powf(step.step);
        let bias_correction2 = 1.0 - beta2.powf(step.step);
        AdamConstants {
            decay_param: c(1.0 - step.lr * step.weight_decay),
            decay_grad: c(step.weight_decay),
            lerp_weight: c(weight),
            lerp_complement: c(1.0 - weight),
            beta2: c(beta2),
            one_minus_beta2: c(1.0 - beta2),
            negative_step_size: c(-(step.lr / bias_correction1)),
            bias_correction2_sqrt: T::math_to_f64(T::from_f64(bias_correction2.sqrt()).to_math()),
            eps: c(step.eps),
            decay: (step.weight_decay != 0.0) as u32,
            decoupled: step.decoupled as u32,
            lerp_from_start: (weight.abs() < 0.5) as u32,
            padding: 0,
        }
    }

    fn for_dtype(dtype: DType, step: &AdamStep) -> Result<AdamConstants> {
        Ok(match dtype {
            DType::F16 => AdamConstants::new::<f16>(step),
            DType::BF16 => AdamConstants::new::<bf16>(step),
            DType::F32 => AdamConstants::new::<f32>(step),
            DType::F64 => AdamConstants::new::<f64>(step),
            dtype => {
                return Err(Error::UnsupportedDType {
                    op: "adam_step",
                    dtype,
                })
            }
        })
    }
}

/// The new `(parameter, exp_avg, exp_avg_sq)`, each contiguous, from a parameter, its gradient
/// and its moments in any layouts (one shape, one float dtype). Bit for bit the CPU's
/// `cpu::optim::adam_step`.
pub(super) fn adam_step(
    param: (&CudaStorage, &Layout),
    grad: (&CudaStorage, &Layout),
    exp_avg: (&CudaStorage, &Layout),
    exp_avg_sq: (&CudaStorage, &Layout),
    step: &AdamStep,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "adam_step";
    let (param_storage, param_layout) = param;
    let dtype = param_storage.dtype;
    let constants = AdamConstants::for_dtype(dtype, step)?;
    let shape = param_layout.shape();
    let param_arg = checked_input(OP, param_storage, param_layout, shape)?;
    let mut others = Vec::with_capacity(3);
    for (storage, layout) in [grad, exp_avg, exp_avg_sq] {
        if storage.dtype != dtype {
            return Err(Error::DTypeMismatch {
                op: OP,
                lhs: dtype,
                rhs: storage.dtype,
            });
        }
        if storage.device.ordinal() != param_storage.device.ordinal() {
            return Err(Error::DeviceMismatch {
                op: OP,
                lhs: Device::Cuda(param_storage.device.ordinal()),
                rhs: Device::Cuda(storage.device.ordinal()),
            });
        }
        others.push(checked_input(OP, storage, layout, shape)?);
    }
    let n = shape.elem_count();
    let device = param_storage.device.clone();
    let mut param_out = device.alloc(dtype, n)?;
    let mut exp_avg_out = device.alloc(dtype, n)?;
    let mut exp_avg_sq_out = device.alloc(dtype, n)?;
    if n == 0 {
        return Ok((param_out, exp_avg_out, exp_avg_sq_out));
    }
    let function = device.function(&registry::OPTIM, &format!("adam_step_{}", dtype.as_str()))?;
    let n64 = n as u64;
    let mut builder = device.stream().launch_builder(&function);
    builder
        .arg(&mut param_out.buffer)
        .arg(&mut exp_avg_out.buffer)
        .arg(&mut exp_avg_sq_out.buffer)
        .arg(&param_storage.buffer)
        .arg(&param_arg)
        .arg(&grad.0.buffer)
        .arg(&others[0])
        .arg(&exp_avg.0.buffer)
        .arg(&others[1])
        .arg(&exp_avg_sq.0.buffer)
        .arg(&others[2])
        .arg(&constants)
        .arg(&n64);
    // Safety: the arguments match `adam_step_{dtype}(T* param_out, T* exp_avg_out,
    // T* exp_avg_sq_out, const T* param, Strided, const T* grad, Strided, const T* exp_avg,
    // Strided, const T* exp_avg_sq, Strided, AdamConstants, u64 n)` in kernels/optim.cu; each
    // output holds n elements and every layout stays inside its buffer (checked above).
    unsafe { builder.launch(device.launch_config_for(n)) }.map_err(driver_error(OP))?;
    Ok((param_out, exp_avg_out, exp_avg_sq_out))
}
