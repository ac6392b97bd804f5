//! Convolution lowering on the CPU: `im2col` unfolds an image batch into the columns a GEMM
//! multiplies, `col2im` folds columns back (summing overlaps: the adjoint of `im2col`).
//! Convolutions and transposed convolutions are built from these and the matrix product in
//! `ops/conv.rs`; pooling has kernels of its own (`cpu/pool.rs`).
//!
//! Column layout: row `(c, ki, kj)` (channel-major, then kernel row, kernel column), column
//! `(n, oh, ow)` (image-major, then output row and column): `[C·kh·kw, N·OH·OW]`.

use rayon::prelude::*;

use crate::ops::conv::Conv2dGeometry;
use crate::FloatDType;

/// Elements below which the kernels stay on one thread: they copy, so they are memory-bound
/// like the light elementwise kernels (`Work::Light`).
pub(super) const PARALLEL_MIN: usize = super::Work::Light.parallel_min();

/// Calls `fill(i, chunk)` for each `chunk_len` chunk `i` of `out`, on rayon's threads when
/// `parallel`.
pub(super) fn for_each_chunk<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    parallel: bool,
    fill: impl Fn(usize, &mut [T]) + Sync,
) {
    if parallel {
        out.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, chunk)| fill(i, chunk));
    } else {
        out.chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, chunk)| fill(i, chunk));
    }
}

/// The output positions `o` in `0..out` whose input coordinate `o·stride + offset - padding`
/// falls inside `0..size`, for a kernel tap at `offset` (= k·dilation).
fn valid_range(
    out: usize,
    size: usize,
    stride: usize,
    offset: usize,
    padding: usize,
) -> (usize, usize) {
    // o·stride + offset >= padding  ⇔  o >= ceil((padding - offset) / stride)
    let low = padding.saturating_sub(offset).div_ceil(stride);
    // o·stride + offset < size + padding  ⇔  o < ceil((size + padding - offset) / stride)
    let high = (size + padding)
        .saturating_sub(offset)
        .div_ceil(stride)
        .min(out);
    (low.min(high), high)
}

/// Unfolds a contiguous `[N, C, H, W]` image batch into columns `[C·kh·kw, N·OH·OW]`
/// (zeros where a tap lands in the padding).
pub(crate) fn im2col<T: Copy + Default + Send + Sync>(image: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let [kh, kw] = g.kernel;
    let positions = g.out_height * g.out_width;
    let row_len = g.batch * positions;
    let mut cols = vec![T::default(); g.channels * kh * kw * row_len];
    if cols.is_empty() {
        return cols;
    }
    let fill_row = |row: usize, out: &mut [T]| {
        let (c, tap) = (row / (kh * kw), row % (kh * kw));
        let (ki, kj) = (tap / kw, tap % kw);
        let (oh_low, oh_high) = valid_range(
            g.out_height,
            g.height,
            g.stride[0],
            ki * g.dilation[0],
            g.padding[0],
        );
        let (ow_low, ow_high) = valid_range(
            g.out_width,
            g.width,
            g.stride[1],
            kj * g.dilation[1],
            g.padding[1],
        );
        if ow_low == ow_high {
            return; // this tap lands in the padding for every output column
        }
        for n in 0..g.batch {
            let plane = &image[(n * g.channels + c) * g.height * g.width..][..g.height * g.width];
            for oh in oh_low..oh_high {
                let ih = oh * g.stride[0] + ki * g.dilation[0] - g.padding[0];
                let source = &plane[ih * g.width..][..g.width];
                let dest = &mut out[n * positions + oh * g.out_width..][..g.out_width];
                let first = ow_low * g.stride[1] + kj * g.dilation[1] - g.padding[1];
                if g.stride[1] == 1 {
                    dest[ow_low..ow_high].copy_from_slice(&source[first..first + ow_high - ow_low]);
                } else {
                    for (i, value) in dest[ow_low..ow_high].iter_mut().enumerate() {
                        *value = source[first + i * g.stride[1]];
                    }
                }
            }
        }
    };
    let parallel = cols.len() >= PARALLEL_MIN;
    for_each_chunk(&mut cols, row_len, parallel, fill_row);
    cols
}

/// Folds contiguous columns `[C·kh·kw, N·OH·OW]` into a `[N, C, H, W]` image batch, adding
/// every tap that lands on a pixel (taps in the padding are dropped). Accumulates in `T`'s
/// math type.
pub(crate) fn col2im<T: FloatDType>(cols: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let [kh, kw] = g.kernel;
    let positions = g.out_height * g.out_width;
    let row_len = g.batch * positions;
    let plane_len = g.height * g.width;
    let zero = T::math_from_f64(0.0);
    let mut image = vec![T::from_math(zero); g.batch * g.channels * plane_len];
    if image.is_empty() {
        return image;
    }
    let fill_plane = |index: usize, plane: &mut [T]| {
        let (n, c) = (index / g.channels, index % g.channels);
        let mut sums = vec![zero; plane_len];
        for ki in 0..kh {
            let (oh_low, oh_high) = valid_range(
                g.out_height,
                g.height,
                g.stride[0],
                ki * g.dilation[0],
                g.padding[0],
            );
            for kj in 0..kw {
                let (ow_low, ow_high) = valid_range(
                    g.out_width,
                    g.width,
                    g.stride[1],
                    kj * g.dilation[1],
                    g.padding[1],
                );
                if ow_low == ow_high {
                    continue;
                }
                let row = &cols[((c * kh + ki) * kw + kj) * row_len + n * positions..][..positions];
                for oh in oh_low..oh_high {
                    let ih = oh * g.stride[0] + ki * g.dilation[0] - g.padding[0];
                    let source = &row[oh * g.out_width..][..g.out_width];
                    let first = ow_low * g.stride[1] + kj * g.dilation[1] - g.padding[1];
                    let dest = &mut sums[ih * g.width..][..g.width];
                    for (i, &value) in source[ow_low..ow_high].iter().enumerate() {
                        let target = &mut dest[first + i * g.stride[1]];
                        *target = *target + value.to_math();
                    }
                }
            }
        }
        for (out, sum) in plane.iter_mut().zip(sums) {
            *out = T::from_math(sum);
        }
    };
    for_each_chunk(
        &mut image,
        plane_len,
        cols.len() >= PARALLEL_MIN,
        fill_plane,
    );
    image
}
