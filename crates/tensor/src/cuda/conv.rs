//! PLACEHOLDER (being written): im2col/col2im/max-pool kernels, kernels/conv.cu.
use super::CudaStorage;
use crate::{Conv2dGeometry, Layout, Result};

pub(super) fn im2col(s: &CudaStorage, layout: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> { todo!() }
pub(super) fn col2im(s: &CudaStorage, layout: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> { todo!() }
pub(super) fn max_pool2d_indices(s: &CudaStorage, layout: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> { todo!() }
