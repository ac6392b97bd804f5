//! Batched matrix product on the CPU: one packed GEMM (`gemm.rs`) per batch entry, batch
//! entries spread over rayon's threads. Operands are read through their strides, so
//! transposed views (the backward products Aᵀ·B and A·Bᵀ) cost no copy.

use rayon::prelude::*;

use super::gemm::{self, GemmElem, Kernel, Operand};
use crate::Layout;

/// The storage offset of matrix `batch` (row-major over the batch dims) and its strides.
fn operand<'a, T>(data: &'a [T], layout: &Layout, mut batch: usize) -> Operand<'a, T> {
    let rank = layout.dims().len();
    let mut offset = layout.offset();
    for d in (0..rank - 2).rev() {
        let size = layout.dims()[d];
        offset += (batch % size) * layout.strides()[d];
        batch /= size;
    }
    Operand {
        data,
        offset,
        row_stride: layout.strides()[rank - 2],
        col_stride: layout.strides()[rank - 1],
    }
}

/// `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]` (same batch dims on both sides).
pub(crate) fn matmul<T: GemmElem>(
    kernel: Kernel<T>,
    lhs: &[T],
    lhs_layout: &Layout,
    rhs: &[T],
    rhs_layout: &Layout,
) -> Vec<T> {
    let rank = lhs_layout.dims().len();
    let (m, k) = (lhs_layout.dims()[rank - 2], lhs_layout.dims()[rank - 1]);
    let n = rhs_layout.dims()[rank - 1];
    let batches: usize = lhs_layout.dims()[..rank - 2].iter().product();
    let len = batches * m * n;
    let mut out = Vec::with_capacity(len);
    if m * n > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(batch, c)| {
                let a = operand(lhs, lhs_layout, batch);
                let b = operand(rhs, rhs_layout, batch);
                gemm::gemm(kernel, (m, n, k), a, b, c);
            });
    }
    // SAFETY: `gemm` wrote every element of each batch entry's m x n block (none when empty).
    unsafe { out.set_len(len) };
    out
}
