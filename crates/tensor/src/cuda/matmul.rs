//! PLACEHOLDER (being written): the batched matrix product, kernels/matmul.cu.
use super::CudaStorage;
use crate::{Layout, Result};

pub(super) fn matmul(lhs: &CudaStorage, layout: &Layout, rhs: &CudaStorage, rhs_layout: &Layout) -> Result<CudaStorage> { todo!() }
