//! Reductions over chosen dims, and softmax along one dim, on the CPU.

use num_traits::{Float, Zero};
use rayon::prelude::*;

use super::vmath::VectorMath;
use super::{map1, Work};
use crate::layout::Runs;
use crate::{FloatDType, Layout, ReduceOp, Shape};

/// Reduces `dims` of `layout` (keepdim). The input is walked in its own order and each element
/// is folded into its output slot (the output's strides are 0 along reduced dims), which reads
/// memory in order whichever dims are reduced: a bias gradient (sum over the batch dim)
/// streams through rows instead of striding down columns. Sums accumulate in f64.
pub(crate) fn reduce<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    op: ReduceOp,
    dims: &[usize],
) -> Vec<T> {
    if let Some(out) = reduce_rows(data, layout, op, dims) {
        return out;
    }
    if let Some(out) = reduce_columns(data, layout, op, dims) {
        return out;
    }
    let mut out_dims = layout.dims().to_vec();
    for &d in dims {
        out_dims[d] = 1;
    }
    let out_shape = Shape::from(out_dims);
    let mut out_strides = out_shape.contiguous_strides();
    for &d in dims {
        out_strides[d] = 0;
    }
    let runs = Runs::new(
        layout.shape(),
        [(layout.strides(), layout.offset()), (&out_strides, 0)],
    );
    let [in_stride, out_stride] = runs.run_strides();
    let elems = 0..layout.elem_count();
    match op {
        ReduceOp::Sum => {
            let mut sums = vec![0f64; out_shape.elem_count()];
            runs.for_each_span(elems, |[i, o], len| {
                if out_stride == 0 && in_stride == 1 {
                    // A contiguous run into one output (a bias gradient's sum over H·W):
                    // the vectorized cascade, not a serial chain of f64 adds.
                    sums[o] += sum_f64(&data[i..i + len]);
                    return;
                }
                for k in 0..len {
                    sums[o + k * out_stride] += T::math_to_f64(data[i + k * in_stride].to_math());
                }
            });
            sums.into_iter()
                .map(|s| T::from_math(T::math_from_f64(s)))
                .collect()
        }
        ReduceOp::Max => {
            let mut maxima = vec![T::Math::neg_infinity(); out_shape.elem_count()];
            runs.for_each_span(elems, |[i, o], len| {
                for k in 0..len {
                    let x = data[i + k * in_stride].to_math();
                    let m = &mut maxima[o + k * out_stride];
                    // NaN wins, as in PyTorch: once m is NaN no comparison replaces it.
                    if x > *m || x.is_nan() {
                        *m = x;
                    }
                }
            });
            maxima.into_iter().map(T::from_math).collect()
        }
    }
}

/// The fast path of `reduce`, when each output folds one contiguous run of the input: the
/// input is contiguous and the reduced dims are its innermost ones (`sum_all`, a mean over
/// features). Rows go to rayon's threads when there are many, a long row's chunks when there
/// are few.
fn reduce_rows<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    op: ReduceOp,
    dims: &[usize],
) -> Option<Vec<T>> {
    let range = layout.contiguous_range()?;
    let rank = layout.dims().len();
    let innermost = dims
        .iter()
        .enumerate()
        .all(|(i, &d)| d + dims.len() == rank + i);
    let row_len: usize = dims.iter().map(|&d| layout.dims()[d]).product();
    if !innermost || row_len == 0 {
        return None;
    }
    let data = &data[range];
    let fold_row = |row: &[T]| match op {
        ReduceOp::Sum => T::from_math(T::math_from_f64(sum_f64(row))),
        ReduceOp::Max => T::from_math(max_of(row)),
    };
    if data.len() < Work::Light.parallel_min() {
        return Some(data.chunks(row_len).map(fold_row).collect());
    }
    if data.len() / row_len >= 4 * rayon::current_num_threads() {
        return Some(data.par_chunks(row_len).map(fold_row).collect());
    }
    // Few long rows: split each row over the threads, then combine the partial results.
    let out = data
        .chunks(row_len)
        .map(|row| match op {
            ReduceOp::Sum => {
                // The blocks `sum_f64` takes, summed on the threads and added in order: the
                // same result as one thread's, bit for bit, whatever the thread count.
                let blocks: Vec<f64> = row
                    .par_chunks(SUM_BLOCK)
                    .with_min_len(Work::Light.parallel_min() / 4 / SUM_BLOCK)
                    .map(block_sum)
                    .collect();
                T::from_math(T::math_from_f64(blocks.into_iter().sum()))
            }
            ReduceOp::Max => {
                let partial: Vec<T::Math> = row
                    .par_chunks(Work::Light.parallel_min() / 4)
                    .map(max_of)
                    .collect();
                T::from_math(
                    partial
                        .into_iter()
                        .fold(T::Math::neg_infinity(), max_or_nan),
                )
            }
        })
        .collect();
    Some(out)
}

/// The other fast path of `reduce`, when the input is contiguous and the reduced dims are its
/// outermost ones (a bias gradient: the sum over a batch of rows): output `j` folds column `j`
/// of the `[rows, cols]` input, row after row, in the order (and so to the bits) of the
/// general walk. Each row is added across the columns in SIMD (`fold_row_into`), and wide
/// outputs are cut into column ranges for rayon's threads, each summing its columns over all
/// the rows: the same additions whatever the thread count. The general walk ran this as
/// baseline-x86 f64 adds, a tenth of an MLP VAE step.
fn reduce_columns<T: FloatDType>(
    data: &[T],
    layout: &Layout,
    op: ReduceOp,
    dims: &[usize],
) -> Option<Vec<T>> {
    let range = layout.contiguous_range()?;
    let outermost = dims.iter().enumerate().all(|(i, &d)| d == i);
    let rows: usize = dims.iter().map(|&d| layout.dims()[d]).product();
    if dims.is_empty() || !outermost || rows == 0 || range.is_empty() {
        return None;
    }
    let data = &data[range];
    let cols = data.len() / rows;
    let fold = |first: usize, out: &mut [T]| {
        let width = out.len();
        let row = |r: usize| &data[r * cols + first..r * cols + first + width];
        match op {
            ReduceOp::Sum => {
                let mut sums = vec![0f64; width];
                for r in 0..rows {
                    fold_row_into(&mut sums, row(r), &AddF64);
                }
                for (o, s) in out.iter_mut().zip(sums) {
                    *o = T::from_math(T::math_from_f64(s));
                }
            }
            ReduceOp::Max => {
                let mut maxima = vec![T::Math::neg_infinity(); width];
                for r in 0..rows {
                    fold_row_into(&mut maxima, row(r), &MaxOrNan);
                }
                for (o, m) in out.iter_mut().zip(maxima) {
                    *o = T::from_math(m);
                }
            }
        }
    };
    let mut out = vec![T::from_math(T::Math::zero()); cols];
    let chunk = (cols / (4 * rayon::current_num_threads())).max(256);
    if data.len() < Work::Light.parallel_min() / 4 || cols <= chunk {
        fold(0, &mut out);
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, out)| fold(i * chunk, out));
    }
    Some(out)
}

/// How `reduce_columns` folds one input value into its column's accumulator.
trait ColumnFold<T, A>: Sync {
    fn fold(&self, accumulator: A, x: T) -> A;
}

/// Sums in f64, as the general walk.
struct AddF64;

impl<T: FloatDType> ColumnFold<T, f64> for AddF64 {
    #[inline(always)]
    fn fold(&self, sum: f64, x: T) -> f64 {
        sum + T::math_to_f64(x.to_math())
    }
}

/// The maximum, NaN winning, as the general walk.
struct MaxOrNan;

impl<T: FloatDType> ColumnFold<T, T::Math> for MaxOrNan {
    #[inline(always)]
    fn fold(&self, m: T::Math, x: T) -> T::Math {
        let x = x.to_math();
        if x > m || x.is_nan() {
            x
        } else {
            m
        }
    }
}

super::loops::simd_versions! {
    /// `accumulators[j] = fold(accumulators[j], row[j])`, compiled for AVX-512 or AVX2 where
    /// the CPU has them (as the elementwise loops).
    fn fold_row_into<T: Copy, A: Copy>(
        accumulators: &mut [A],
        row: &[T],
        f: &impl ColumnFold<T, A>,
    ) {
        for (a, &x) in accumulators.iter_mut().zip(row) {
            *a = f.fold(*a, x);
        }
    }
}

/// The length of the blocks [`sum_f64`] sums in the element's math type.
const SUM_BLOCK: usize = 1024;

/// The sum of `values`: blocks of [`SUM_BLOCK`] summed in the element's math type over 16
/// lanes (which the compiler vectorizes), block sums added in f64, in order. A cascade like
/// PyTorch's: the rounding error grows with the block length, not with the whole length.
fn sum_f64<T: FloatDType>(values: &[T]) -> f64 {
    values.chunks(SUM_BLOCK).map(block_sum).sum()
}

/// One block of [`sum_f64`].
fn block_sum<T: FloatDType>(block: &[T]) -> f64 {
    let mut lanes = [T::Math::zero(); 16];
    let chunks = block.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(T::Math::zero(), |s, &v| s + v.to_math());
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = *lane + v.to_math();
        }
    }
    T::math_to_f64(lanes.iter().fold(tail, |s, &v| s + v))
}

/// The larger of two values, or NaN if either is NaN (as in PyTorch).
fn max_or_nan<F: Float>(a: F, b: F) -> F {
    if b > a || b.is_nan() || a.is_nan() {
        if a.is_nan() {
            a
        } else {
            b
        }
    } else {
        a
    }
}

/// The maximum of `values` (NaN if any is NaN), in 8 lanes.
fn max_of<T: FloatDType>(values: &[T]) -> T::Math {
    let mut lanes = [T::Math::neg_infinity(); 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(T::Math::neg_infinity(), |m, &v| max_or_nan(m, v.to_math()));
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = max_or_nan(*lane, v.to_math());
        }
    }
    lanes.into_iter().fold(tail, max_or_nan)
}

/// Softmax (or log-softmax) along `dim`, subtracting each row's max first so exp never
/// overflows. Rows are made contiguous (dim last), done in parallel, and put back in order.
pub(crate) fn softmax<T: FloatDType>(data: &[T], layout: &Layout, dim: usize, log: bool) -> Vec<T> {
    let rank = layout.shape().rank();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != dim).collect();
    perm.push(dim);
    let moved = layout
        .permute(&perm)
        .expect("dim was checked by the tensor layer");
    let rows = map1(data, &moved, |x| x.to_math());
    let row_len = layout.dims()[dim].max(1);
    let mut out = vec![T::default(); rows.len()];
    let per_row = |(row, out): (&[T::Math], &mut [T])| {
        let max = row.iter().fold(T::Math::neg_infinity(), |m, &x| m.max(x));
        // A row of -inf would give NaN from (-inf) - (-inf); shift by 0 instead.
        let shift = if max.is_finite() {
            max
        } else {
            T::Math::zero()
        };
        let sum = row
            .iter()
            .fold(T::Math::zero(), |s, &x| s + (x - shift).vexp());
        if log {
            // (x - shift) - ln(sum), not x - (ln(sum) + shift): for large logits the latter
            // rounds ln(sum) + shift to the logits' coarse spacing (6e-5 near 1000 in f32).
            let log_sum = sum.vln();
            for (o, &x) in out.iter_mut().zip(row) {
                *o = T::from_math((x - shift) - log_sum);
            }
        } else {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = T::from_math((x - shift).vexp() / sum);
            }
        }
    };
    if rows.len() < Work::Heavy.parallel_min() {
        rows.chunks(row_len)
            .zip(out.chunks_mut(row_len))
            .for_each(per_row);
    } else {
        rows.par_chunks(row_len)
            .zip(out.par_chunks_mut(row_len))
            .for_each(per_row);
    }
    if dim + 1 == rank {
        return out;
    }
    // Back to the original dim order: the inverse permutation of a contiguous result.
    let mut inverse = vec![0; rank];
    for (i, &d) in perm.iter().enumerate() {
        inverse[d] = i;
    }
    let back = Layout::contiguous(moved.shape().clone())
        .permute(&inverse)
        .expect("inverse of a permutation");
    map1(&out, &back, |x| x)
}
