//! PLACEHOLDER (being written): reductions and softmax, kernels/reduce.cu.
use super::CudaStorage;
use crate::{Layout, ReduceOp, Result};

pub(super) fn reduce(s: &CudaStorage, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<CudaStorage> { todo!() }
pub(super) fn softmax(s: &CudaStorage, layout: &Layout, dim: usize, log: bool) -> Result<CudaStorage> { todo!() }
