//! The host side of kernels/rng.cu: uniform and normal draws from the Philox 4x32-10 stream of
//! `crate::rng`, made on the device (the same words and conversions as the CPU fills). Not a
//! generator: `Tensor::rand`/`randn` advance the `Generator` and pass the offset here.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};

use super::{driver_error, float_only, registry, CudaDevice, CudaStorage};
use crate::{DType, Result};

/// Elements one thread produces per grid-stride step: those that take 4 stream words (one
/// Philox block), as in kernels/rng.cu.
fn elements_per_thread(dtype: DType) -> usize {
    match dtype {
        DType::F64 => 2,
        _ => 4,
    }
}

/// The output of a draw of `len` elements and, unless it is empty, the kernel
/// `{kernel}_{dtype}` and its launch shape. Integer dtypes are an `UnsupportedDType` error for
/// `op`, as on the CPU.
fn prepare(
    op: &'static str,
    kernel: &str,
    device: &Arc<CudaDevice>,
    dtype: DType,
    len: usize,
) -> Result<(CudaStorage, Option<(CudaFunction, LaunchConfig)>)> {
    float_only(op, dtype)?;
    let out = device.alloc(dtype, len)?;
    if len == 0 {
        return Ok((out, None));
    }
    let function = device.function(&registry::RNG, &format!("{kernel}_{}", dtype.as_str()))?;
    let config = device.launch_config_for(len.div_ceil(elements_per_thread(dtype)));
    Ok((out, Some((function, config))))
}

/// `len` uniforms in [0, 1) of `dtype` from stream words starting at `offset` (see `Tensor::rand`).
pub(crate) fn uniform(
    device: &Arc<CudaDevice>,
    dtype: DType,
    len: usize,
    seed: u64,
    offset: u64,
) -> Result<CudaStorage> {
    let (mut out, launch) = prepare("rand", "uniform", device, dtype, len)?;
    if let Some((function, config)) = launch {
        let n = len as u64;
        let mut builder = device.stream().launch_builder(&function);
        builder.arg(&mut out.buffer).arg(&n).arg(&seed).arg(&offset);
        // Safety: the arguments match `uniform_{dtype}(T* out, u64 n, u64 seed, u64 offset)`
        // in kernels/rng.cu, and `out` holds n elements of the dtype.
        unsafe { builder.launch(config) }.map_err(driver_error("rand"))?;
    }
    Ok(out)
}

/// `len` normals of `dtype` (see `Tensor::randn`).
pub(crate) fn normal(
    device: &Arc<CudaDevice>,
    dtype: DType,
    len: usize,
    mean: f64,
    std: f64,
    seed: u64,
    offset: u64,
) -> Result<CudaStorage> {
    // The CPU draws f16/bf16 as f32 normals with the mean and std rounded to f32.
    let (mean, std) = match dtype {
        DType::F64 => (mean, std),
        _ => (f64::from(mean as f32), f64::from(std as f32)),
    };
    let (mut out, launch) = prepare("randn", "normal", device, dtype, len)?;
    if let Some((function, config)) = launch {
        let n = len as u64;
        let mut builder = device.stream().launch_builder(&function);
        builder
            .arg(&mut out.buffer)
            .arg(&n)
            .arg(&mean)
            .arg(&std)
            .arg(&seed)
            .arg(&offset);
        // Safety: the arguments match `normal_{dtype}(T* out, u64 n, double mean,
        // double standard_deviation, u64 seed, u64 offset)` in kernels/rng.cu, and `out`
        // holds n elements of the dtype.
        unsafe { builder.launch(config) }.map_err(driver_error("randn"))?;
    }
    Ok(out)
}
