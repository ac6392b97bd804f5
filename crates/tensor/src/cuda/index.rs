//! PLACEHOLDER (being written): cat and indexing kernels, kernels/index.cu.
use super::CudaStorage;
use crate::{Layout, Result};

pub(super) fn cat(parts: &[(&CudaStorage, &Layout)], dim: usize) -> Result<CudaStorage> { todo!() }
pub(super) fn index_select(s: &CudaStorage, layout: &Layout, index: &CudaStorage, index_layout: &Layout, dim: usize) -> Result<CudaStorage> { todo!() }
pub(super) fn index_add(s: &CudaStorage, layout: &Layout, index: &CudaStorage, index_layout: &Layout, source: &CudaStorage, source_layout: &Layout, dim: usize) -> Result<CudaStorage> { todo!() }
pub(super) fn gather(s: &CudaStorage, layout: &Layout, index: &CudaStorage, index_layout: &Layout, dim: usize) -> Result<CudaStorage> { todo!() }
pub(super) fn scatter_add(s: &CudaStorage, layout: &Layout, index: &CudaStorage, index_layout: &Layout, source: &CudaStorage, source_layout: &Layout, dim: usize) -> Result<CudaStorage> { todo!() }
