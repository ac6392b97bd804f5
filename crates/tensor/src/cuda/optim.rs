//! PLACEHOLDER (being written): the fused Adam step, kernels/optim.cu.
use super::CudaStorage;
use crate::{AdamStep, Layout, Result};

pub(super) fn adam_step(param: (&CudaStorage, &Layout), grad: (&CudaStorage, &Layout), exp_avg: (&CudaStorage, &Layout), exp_avg_sq: (&CudaStorage, &Layout), step: &AdamStep) -> Result<(CudaStorage, CudaStorage, CudaStorage)> { todo!() }
