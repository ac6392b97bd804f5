//! Batched matrix product on the CPU, reading both operands through their strides so that
//! transposed views (the backward products Aᵀ·B and A·Bᵀ) cost no copy. Rows of the output are
//! shared out over rayon's threads. This is the plain reference product; the packed,
//! register-tiled SIMD GEMM replaces its inner loops in the CPU-speed work.

use num_traits::Zero;
use rayon::prelude::*;

use crate::{FloatDType, Layout};

/// One operand: the offset of batch `b` and its row and column strides.
struct Operand<'a> {
    layout: &'a Layout,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Operand<'a> {
    fn new(layout: &'a Layout) -> Self {
        let rank = layout.dims().len();
        Operand {
            layout,
            row_stride: layout.strides()[rank - 2],
            col_stride: layout.strides()[rank - 1],
        }
    }

    /// Storage offset of matrix `batch` (row-major over the batch dims).
    fn batch_offset(&self, mut batch: usize) -> usize {
        let rank = self.layout.dims().len();
        let mut offset = self.layout.offset();
        for d in (0..rank - 2).rev() {
            let size = self.layout.dims()[d];
            offset += (batch % size) * self.layout.strides()[d];
            batch /= size;
        }
        offset
    }
}

/// `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]` (same batch dims on both sides).
pub(crate) fn matmul<T: FloatDType>(
    lhs: &[T],
    lhs_layout: &Layout,
    rhs: &[T],
    rhs_layout: &Layout,
) -> Vec<T> {
    let rank = lhs_layout.dims().len();
    let (m, k) = (lhs_layout.dims()[rank - 2], lhs_layout.dims()[rank - 1]);
    let n = rhs_layout.dims()[rank - 1];
    let batches: usize = lhs_layout.dims()[..rank - 2].iter().product();
    let (a, b) = (Operand::new(lhs_layout), Operand::new(rhs_layout));
    let mut out = vec![T::default(); batches * m * n];
    if n == 0 {
        return out;
    }
    // Each task is one output row: c[i, :] = sum_p a[i, p] * b[p, :].
    let row = |(r, c): (usize, &mut [T])| {
        let (batch, i) = (r / m, r % m);
        let a_row = a.batch_offset(batch) + i * a.row_stride;
        let b_start = b.batch_offset(batch);
        let mut acc = vec![T::Math::zero(); n];
        if b.col_stride == 1 || n == 1 {
            // Rows of b are contiguous: axpy over them, vectorized.
            for p in 0..k {
                let x = lhs[a_row + p * a.col_stride].to_math();
                let b_row = &rhs[b_start + p * b.row_stride..][..n];
                for (acc, y) in acc.iter_mut().zip(b_row) {
                    *acc = *acc + x * y.to_math();
                }
            }
        } else {
            // Columns of b are contiguous (b is a transposed view): dot products down them.
            for (j, acc) in acc.iter_mut().enumerate() {
                let b_col = b_start + j * b.col_stride;
                for p in 0..k {
                    *acc = *acc
                        + lhs[a_row + p * a.col_stride].to_math()
                            * rhs[b_col + p * b.row_stride].to_math();
                }
            }
        }
        for (c, acc) in c.iter_mut().zip(acc) {
            *c = T::from_math(acc);
        }
    };
    // Keep at least ~32K multiply-adds per task so small products stay on few threads.
    let rows_per_task = (32 * 1024 / (n * k).max(1)).max(1);
    out.par_chunks_mut(n)
        .enumerate()
        .with_min_len(rows_per_task)
        .for_each(row);
    out
}
