//! Pooling and nearest upsampling on the CPU, forward and backward: the references of
//! kernels/pool.cu. Not for convolutions (`cpu/conv.rs`).
//!
//! Every backward here sums, for each input pixel, the gradients that reach it in one fixed
//! order, so the CUDA kernels (gathers, one thread per input pixel) reproduce them bit for bit:
//! max pooling in increasing output position `(oh, ow)`, average pooling in the `(ki, kj)` tap
//! order of `col2im`, upsampling row by row. Inputs are contiguous `[N, C, H, W]` (the caller
//! makes them so); planes go to rayon's threads when the data is large.

use num_traits::Float;

use super::conv::{for_each_chunk, PARALLEL_MIN};
use crate::ops::conv::Conv2dGeometry;
use crate::FloatDType;

/// The input coordinate tap `k` of output position `o` reads along `axis` (0: rows, 1:
/// columns), or `None` in the padding (`o·stride + k·dilation - padding` outside the image).
fn input_coordinate(o: usize, k: usize, g: &Conv2dGeometry, axis: usize) -> Option<usize> {
    let at = (o * g.stride[axis] + k * g.dilation[axis]).checked_sub(g.padding[axis])?;
    (at < [g.height, g.width][axis]).then_some(at)
}

/// Whether input coordinate `at` is a tap of output position `o` along `axis`.
fn in_window(at: usize, o: usize, g: &Conv2dGeometry, axis: usize) -> bool {
    match (at + g.padding[axis]).checked_sub(o * g.stride[axis]) {
        Some(reach) => reach % g.dilation[axis] == 0 && reach / g.dilation[axis] < g.kernel[axis],
        None => false,
    }
}

/// Max pooling of a contiguous `[N, C, H, W]` batch: each window's maximum, and the index
/// `ih·W + iw` within the plane it came from, both `[N, C, OH, OW]`. Padding never wins (it
/// is -∞, as in PyTorch); NaN does (the first NaN, which nothing replaces); ties go to the
/// first in row-major window order. The value is the input element itself (a NaN keeps its
/// payload). A window without a pixel (only an empty plane has one; the op layer rejects it)
/// gives -∞ and index 0.
pub(crate) fn max_pool2d<T: FloatDType>(image: &[T], g: &Conv2dGeometry) -> (Vec<T>, Vec<u32>) {
    let plane_len = g.height * g.width;
    let positions = g.out_height * g.out_width;
    let len = g.batch * g.channels * positions;
    let mut packed = vec![(T::default(), 0u32); len];
    if len == 0 {
        return (Vec::new(), Vec::new());
    }
    let fill_plane = |index: usize, out: &mut [(T, u32)]| {
        let plane = &image[index * plane_len..][..plane_len];
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                let mut best: Option<(usize, T::Math)> = None;
                for ki in 0..g.kernel[0] {
                    let Some(ih) = input_coordinate(oh, ki, g, 0) else {
                        continue;
                    };
                    for kj in 0..g.kernel[1] {
                        let Some(iw) = input_coordinate(ow, kj, g, 1) else {
                            continue;
                        };
                        let at = ih * g.width + iw;
                        let value = plane[at].to_math();
                        let wins = match best {
                            None => true,
                            Some((_, max)) => !max.is_nan() && (value > max || value.is_nan()),
                        };
                        if wins {
                            best = Some((at, value));
                        }
                    }
                }
                out[oh * g.out_width + ow] = match best {
                    Some((at, _)) => (plane[at], at as u32),
                    None => (T::from_math(T::Math::neg_infinity()), 0),
                };
            }
        }
    };
    for_each_chunk(
        &mut packed,
        positions,
        image.len() >= PARALLEL_MIN,
        fill_plane,
    );
    packed.into_iter().unzip()
}

/// The gradient of max pooling: contiguous grads and indices `[N, C, OH, OW]` to `[N, C, H, W]`,
/// each pixel the sum of the grads of the windows whose maximum it is, added in increasing
/// `(oh, ow)` from +0 in the math type and rounded once. An index that does not name a pixel of
/// its own window (the forward never makes one) contributes nothing, as in the CUDA gather.
pub(crate) fn max_pool2d_backward<T: FloatDType>(
    grad: &[T],
    indices: &[u32],
    g: &Conv2dGeometry,
) -> Vec<T> {
    let plane_len = g.height * g.width;
    let positions = g.out_height * g.out_width;
    let zero = T::math_from_f64(0.0);
    let mut image = vec![T::from_math(zero); g.batch * g.channels * plane_len];
    if image.is_empty() {
        return image;
    }
    let fill_plane = |index: usize, plane: &mut [T]| {
        let grad = &grad[index * positions..][..positions];
        let indices = &indices[index * positions..][..positions];
        let mut sums = vec![zero; plane_len];
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                let o = oh * g.out_width + ow;
                let at = indices[o] as usize;
                let (ih, iw) = (at / g.width, at % g.width);
                let inside = at < plane_len && in_window(ih, oh, g, 0) && in_window(iw, ow, g, 1);
                if inside {
                    sums[at] = sums[at] + grad[o].to_math();
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
        grad.len() >= PARALLEL_MIN,
        fill_plane,
    );
    image
}

/// `1 / (kh·kw)` in the math type: average pooling counts the padding (`count_include_pad`).
fn window_scale<T: FloatDType>(g: &Conv2dGeometry) -> T::Math {
    T::math_from_f64(1.0 / (g.kernel[0] * g.kernel[1]) as f64)
}

/// `x / (kh·kw)` as kiln's `mul_scalar` rounds it: `x·scale + 0` in the math type, rounded to
/// `T` (the `+ 0` turns a -0 product into +0, as the affine op does).
fn scaled<T: FloatDType>(x: T, scale: T::Math) -> T {
    T::from_math(x.to_math() * scale + T::math_from_f64(0.0))
}

/// Average pooling of a contiguous `[N, C, H, W]` batch (padding counted as zeros):
/// `[N, C, OH, OW]`. Each window is summed in f64 in `(ki, kj)` order, rounded to `T` through
/// the math type, then scaled by `1 / (kh·kw)`: exactly what the composition it replaces
/// (`im2col`, then `mean` over the taps: an f64 `sum` and a `mul_scalar`) computed.
pub(crate) fn avg_pool2d<T: FloatDType>(image: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let plane_len = g.height * g.width;
    let positions = g.out_height * g.out_width;
    let scale = window_scale::<T>(g);
    let mut out = vec![T::default(); g.batch * g.channels * positions];
    if out.is_empty() {
        return out;
    }
    let fill_plane = |index: usize, out: &mut [T]| {
        let plane = &image[index * plane_len..][..plane_len];
        for oh in 0..g.out_height {
            for ow in 0..g.out_width {
                // Padding adds +0, which leaves an f64 sum started at +0 unchanged: skip it.
                let mut sum = 0f64;
                for ki in 0..g.kernel[0] {
                    let Some(ih) = input_coordinate(oh, ki, g, 0) else {
                        continue;
                    };
                    for kj in 0..g.kernel[1] {
                        if let Some(iw) = input_coordinate(ow, kj, g, 1) {
                            sum += T::math_to_f64(plane[ih * g.width + iw].to_math());
                        }
                    }
                }
                let sum = T::from_math(T::math_from_f64(sum));
                out[oh * g.out_width + ow] = scaled(sum, scale);
            }
        }
    };
    for_each_chunk(&mut out, positions, image.len() >= PARALLEL_MIN, fill_plane);
    out
}

/// The gradient of average pooling: contiguous grads `[N, C, OH, OW]` to `[N, C, H, W]`. Each
/// grad is scaled by `1 / (kh·kw)` and rounded to `T` first, then each pixel adds the scaled
/// grads of the windows it is a tap of in `(ki, kj)` order from +0 in the math type and rounds
/// once: what the composition it replaces (`mul_scalar`, broadcast, `col2im`) computed.
pub(crate) fn avg_pool2d_backward<T: FloatDType>(grad: &[T], g: &Conv2dGeometry) -> Vec<T> {
    let plane_len = g.height * g.width;
    let positions = g.out_height * g.out_width;
    let scale = window_scale::<T>(g);
    let zero = T::math_from_f64(0.0);
    let mut image = vec![T::from_math(zero); g.batch * g.channels * plane_len];
    if image.is_empty() {
        return image;
    }
    let fill_plane = |index: usize, plane: &mut [T]| {
        let grad = &grad[index * positions..][..positions];
        for ih in 0..g.height {
            for iw in 0..g.width {
                let mut sum = zero;
                for ki in 0..g.kernel[0] {
                    let Some(oh) = window_of(ih, ki, g, 0) else {
                        continue;
                    };
                    for kj in 0..g.kernel[1] {
                        if let Some(ow) = window_of(iw, kj, g, 1) {
                            sum = sum + scaled(grad[oh * g.out_width + ow], scale).to_math();
                        }
                    }
                }
                plane[ih * g.width + iw] = T::from_math(sum);
            }
        }
    };
    for_each_chunk(
        &mut image,
        plane_len,
        grad.len() >= PARALLEL_MIN,
        fill_plane,
    );
    image
}

/// The output position along `axis` whose tap `k` reads input coordinate `at`, if any:
/// `o = (at + padding - k·dilation) / stride` when that divides and is below the output size.
fn window_of(at: usize, k: usize, g: &Conv2dGeometry, axis: usize) -> Option<usize> {
    let reach = (at + g.padding[axis]).checked_sub(k * g.dilation[axis])?;
    let out = [g.out_height, g.out_width][axis];
    (reach % g.stride[axis] == 0 && reach / g.stride[axis] < out).then(|| reach / g.stride[axis])
}

/// The input row (or column) output row `o` of a nearest resize from `input` to `output` rows
/// copies: `min(⌊o·(input / output)⌋, input - 1)` in f32, as PyTorch's
/// `interpolate(size=..., mode="nearest")` computes it. Non-decreasing in `o`.
pub(crate) fn nearest_source(o: usize, input: usize, output: usize) -> usize {
    let scale = input as f32 / output as f32;
    ((o as f32 * scale).floor() as usize).min(input - 1)
}

/// For each input row `i`, the output rows `first[i]..first[i + 1]` that copy it (the sources
/// are non-decreasing, so they form one run).
fn nearest_runs(input: usize, output: usize) -> Vec<usize> {
    let mut first = vec![0; input + 1];
    for o in 0..output {
        first[nearest_source(o, input, output) + 1] = o + 1;
    }
    // Rows that no output copies start (and end) where the previous run ended.
    for i in 1..=input {
        first[i] = first[i].max(first[i - 1]);
    }
    first
}

/// Nearest-neighbour resize of a contiguous `[N, C, H, W]` batch to `[N, C, OH, OW]` (see
/// [`nearest_source`]); a copy, for every dtype.
pub(crate) fn upsample_nearest2d<T: Copy + Default + Send + Sync>(
    image: &[T],
    [batch, channels, height, width]: [usize; 4],
    [out_height, out_width]: [usize; 2],
) -> Vec<T> {
    let rows: Vec<usize> = (0..out_height)
        .map(|o| nearest_source(o, height, out_height))
        .collect();
    let columns: Vec<usize> = (0..out_width)
        .map(|o| nearest_source(o, width, out_width))
        .collect();
    let positions = out_height * out_width;
    let mut out = vec![T::default(); batch * channels * positions];
    if out.is_empty() {
        return out;
    }
    let fill_plane = |index: usize, out: &mut [T]| {
        let plane = &image[index * height * width..][..height * width];
        for (out_row, &row) in out.chunks_mut(out_width).zip(&rows) {
            let source = &plane[row * width..][..width];
            for (value, &column) in out_row.iter_mut().zip(&columns) {
                *value = source[column];
            }
        }
    };
    let parallel = out.len() >= PARALLEL_MIN;
    for_each_chunk(&mut out, positions, parallel, fill_plane);
    out
}

/// The gradient of nearest resizing: contiguous grads `[N, C, OH, OW]` to `[N, C, H, W]`, each
/// pixel the sum of the grads of the outputs that copy it. For each output row that copies
/// the pixel's row (in increasing order) the row's grads that copy its column are summed from
/// +0, and those row sums are added from +0, all in the math type, rounded once: for f32 and f64
/// the sums of the composition it replaces (two `index_add`s, columns first), bit for bit.
pub(crate) fn upsample_nearest2d_backward<T: FloatDType>(
    grad: &[T],
    [batch, channels, height, width]: [usize; 4],
    [out_height, out_width]: [usize; 2],
) -> Vec<T> {
    let row_runs = nearest_runs(height, out_height);
    let column_runs = nearest_runs(width, out_width);
    let positions = out_height * out_width;
    let zero = T::math_from_f64(0.0);
    let mut image = vec![T::from_math(zero); batch * channels * height * width];
    if image.is_empty() {
        return image;
    }
    let fill_plane = |index: usize, plane: &mut [T]| {
        let grad = &grad[index * positions..][..positions];
        for ih in 0..height {
            for iw in 0..width {
                let mut sum = zero;
                for oh in row_runs[ih]..row_runs[ih + 1] {
                    let row = &grad[oh * out_width..][..out_width];
                    let row_sum = row[column_runs[iw]..column_runs[iw + 1]]
                        .iter()
                        .fold(zero, |s, &x| s + x.to_math());
                    sum = sum + row_sum;
                }
                plane[ih * width + iw] = T::from_math(sum);
            }
        }
    };
    for_each_chunk(
        &mut image,
        height * width,
        grad.len() >= PARALLEL_MIN,
        fill_plane,
    );
    image
}
