//! PLACEHOLDER (being written): elementwise kernels, kernels/elementwise.cu.
use std::sync::Arc;
use super::{CudaDevice, CudaStorage};
use crate::{BinaryOp, CmpOp, DType, Layout, Result, UnaryOp};

pub(super) fn fill(device: &Arc<CudaDevice>, value: f64, len: usize, dtype: DType) -> Result<CudaStorage> { todo!() }
pub(super) fn copy_strided(s: &CudaStorage, layout: &Layout) -> Result<CudaStorage> { todo!() }
pub(super) fn to_dtype(s: &CudaStorage, layout: &Layout, dtype: DType) -> Result<CudaStorage> { todo!() }
pub(super) fn unary(s: &CudaStorage, layout: &Layout, op: UnaryOp) -> Result<CudaStorage> { todo!() }
pub(super) fn binary(s: &CudaStorage, layout: &Layout, rhs: &CudaStorage, rhs_layout: &Layout, op: BinaryOp) -> Result<CudaStorage> { todo!() }
pub(super) fn compare(s: &CudaStorage, layout: &Layout, rhs: &CudaStorage, rhs_layout: &Layout, op: CmpOp) -> Result<CudaStorage> { todo!() }
pub(super) fn where_cond(condition: &CudaStorage, layout: &Layout, on_true: &CudaStorage, true_layout: &Layout, on_false: &CudaStorage, false_layout: &Layout) -> Result<CudaStorage> { todo!() }
