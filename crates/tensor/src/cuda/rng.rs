//! PLACEHOLDER (being written): Philox 4x32-10 on the device, kernels/rng.cu.
use std::sync::Arc;
use super::{CudaDevice, CudaStorage};
use crate::{DType, Result};

/// `len` uniforms in [0, 1) of `dtype` from stream words starting at `offset` (see `Tensor::rand`).
pub(crate) fn uniform(device: &Arc<CudaDevice>, dtype: DType, len: usize, seed: u64, offset: u64) -> Result<CudaStorage> { todo!() }
/// `len` normals of `dtype` (see `Tensor::randn`).
pub(crate) fn normal(device: &Arc<CudaDevice>, dtype: DType, len: usize, mean: f64, std: f64, seed: u64, offset: u64) -> Result<CudaStorage> { todo!() }
