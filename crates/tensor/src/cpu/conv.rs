//! Convolutions on the CPU. `im2col` unfolds an image batch into the columns a GEMM
//! multiplies, `col2im` folds columns back (summing overlaps: the adjoint of `im2col`); the
//! backend's default convolutions are built from them and a matrix product, and they stay the
//! reference the other kernels are tested against. The GEMM-based kernels here ([`conv2d`],
//! [`conv2d_input_grad`], [`conv2d_weight_grad`], f32 and f64) run the same GEMM with the
//! columns packed straight from the image into its panels ([`PanelSource`]), so no
//! `[C·kh·kw, N·OH·OW]` buffer is ever formed: they run f64, and f32 where the register-tiled
//! kernels of `cpu/conv_direct.rs` do not apply. Pooling has kernels of its own
//! (`cpu/pool.rs`).
//!
//! Column layout: row `(c, ki, kj)` (channel-major, then kernel row, kernel column), column
//! `(n, oh, ow)` (image-major, then output row and column): `[C·kh·kw, N·OH·OW]`.

use rayon::prelude::*;

use super::gemm::{
    gemm_with, pack_b, GemmElem, Kernel, Operand, PanelSource, Scratch, PARALLEL_MIN_FLOPS,
};
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
    let plane_len = g.height * g.width;
    let zero = T::math_from_f64(0.0);
    let mut image = vec![T::from_math(zero); g.batch * g.channels * plane_len];
    if image.is_empty() {
        return image;
    }
    let fill_plane = |index: usize, plane: &mut [T]| {
        let (n, c) = (index / g.channels, index % g.channels);
        fold_plane(cols, g, (n, c), plane);
    };
    for_each_chunk(
        &mut image,
        plane_len,
        cols.len() >= PARALLEL_MIN,
        fill_plane,
    );
    image
}

/// Plane `(n, c)` of `col2im(cols)`: the taps of channel `c` in image `n`'s columns, summed
/// onto `plane` (`H·W`) in `T`'s math type.
fn fold_plane<T: FloatDType>(
    cols: &[T],
    g: &Conv2dGeometry,
    (n, c): (usize, usize),
    plane: &mut [T],
) {
    let [kh, kw] = g.kernel;
    let positions = g.out_height * g.out_width;
    let row_len = g.batch * positions;
    let plane_len = g.height * g.width;
    let zero = T::math_from_f64(0.0);
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
}

/// Where one tap `(c, ki, kj)` of the kernel reads: its channel, the output rows and columns
/// whose window puts it inside the image, and its offsets into the padded image.
struct Tap {
    channel: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    row_offset: usize,
    col_offset: usize,
}

/// The columns `[C·kh·kw, N·OH·OW]` of an image batch, read from the image where they are
/// packed instead of unfolded into a buffer first: the B operand of the direct convolutions.
struct Columns<'a, T> {
    image: &'a [T],
    g: &'a Conv2dGeometry,
}

impl<T: GemmElem> Columns<'_, T> {
    fn tap(&self, row: usize) -> Tap {
        let g = self.g;
        let [kh, kw] = g.kernel;
        let (ki, kj) = (row / kw % kh, row % kw);
        let (row_offset, col_offset) = (ki * g.dilation[0], kj * g.dilation[1]);
        Tap {
            channel: row / (kh * kw),
            rows: valid_range(
                g.out_height,
                g.height,
                g.stride[0],
                row_offset,
                g.padding[0],
            ),
            cols: valid_range(g.out_width, g.width, g.stride[1], col_offset, g.padding[1]),
            row_offset,
            col_offset,
        }
    }

    /// Fills `dest` with the values of `tap`'s row at columns `start..start + dest.len()`
    /// (positions `(n, oh, ow)`; zeros where the window lies in the padding). One output row
    /// at a time, the position advanced by counters: the rows are short (7 to 28), so no
    /// division or call may sit in the per-row path.
    fn unfold(&self, tap: &Tap, start: usize, dest: &mut [T]) {
        let g = self.g;
        let (out_width, stride) = (g.out_width, g.stride[1]);
        let plane_len = g.height * g.width;
        let positions = g.out_height * out_width;
        let (n, within) = (start / positions, start % positions);
        let (mut oh, mut ow) = (within / out_width, within % out_width);
        let mut plane = (n * g.channels + tap.channel) * plane_len;
        let (low, high) = tap.cols;
        // Column `o`'s pixel within its image row, for `o` in `low..high`.
        let col_base = tap.col_offset.wrapping_sub(g.padding[1]);
        let mut rest = dest;
        while !rest.is_empty() {
            let len = (out_width - ow).min(rest.len());
            let (out, tail) = rest.split_at_mut(len);
            rest = tail;
            if oh < tap.rows.0 || oh >= tap.rows.1 || low == high {
                out.fill(T::default());
            } else {
                let ih = oh * g.stride[0] + tap.row_offset - g.padding[0];
                let row = &self.image[plane + ih * g.width..][..g.width];
                // Zeros, the live columns `lo..hi`, zeros.
                let lo = low.clamp(ow, ow + len);
                let hi = high.clamp(lo, ow + len);
                let (left, live) = out.split_at_mut(lo - ow);
                let (live, right) = live.split_at_mut(hi - lo);
                left.fill(T::default());
                right.fill(T::default());
                let first = col_base.wrapping_add(lo * stride);
                if live.is_empty() {
                } else if stride == 1 {
                    live.copy_from_slice(&row[first..first + live.len()]);
                } else {
                    for (value, &pixel) in live.iter_mut().zip(row[first..].iter().step_by(stride))
                    {
                        *value = pixel;
                    }
                }
            }
            ow += len;
            if ow == out_width {
                ow = 0;
                oh += 1;
                if oh == g.out_height {
                    oh = 0;
                    plane += g.channels * plane_len;
                }
            }
        }
    }
}

impl<T: GemmElem> PanelSource<T> for Columns<'_, T> {
    /// Rows are taps, columns positions: each tap's run of positions is unfolded into the
    /// thread's staging block `[kc, nc]`, whose rows the GEMM's pack then cuts into panels.
    fn pack(
        &self,
        (p0, kc): (usize, usize),
        (j0, nc): (usize, usize),
        nr: usize,
        out: &mut [T],
        scratch: &mut Scratch,
    ) {
        let staging = scratch.get::<T>(kc * nc);
        for (step, row) in staging.chunks_exact_mut(nc).enumerate() {
            self.unfold(&self.tap(p0 + step), j0, row);
        }
        let block = Operand {
            data: staging,
            offset: 0,
            row_stride: nc,
            col_stride: 1,
        };
        pack_b(block, (0, kc), (0, nc), nr, out);
    }
}

/// The transposed columns `[N·OH·OW, C·kh·kw]`: the B operand of the weight gradient.
struct ColumnsT<'a, T>(Columns<'a, T>);

impl<T: GemmElem> PanelSource<T> for ColumnsT<'_, T> {
    /// Rows are positions, columns taps: each tap's run of positions is unfolded into the
    /// thread's staging block `[nc, kc]`, which the GEMM's transposing pack then packs.
    fn pack(
        &self,
        (p0, kc): (usize, usize),
        (j0, nc): (usize, usize),
        nr: usize,
        out: &mut [T],
        scratch: &mut Scratch,
    ) {
        let staging = scratch.get::<T>(nc * kc);
        for (t, row) in staging.chunks_exact_mut(kc).enumerate() {
            self.0.unfold(&self.0.tap(j0 + t), p0, row);
        }
        let block = Operand {
            data: staging,
            offset: 0,
            row_stride: 1,
            col_stride: kc,
        };
        pack_b(block, (0, kc), (0, nc), nr, out);
    }
}

/// Whether a product of `m·n·k` multiply-adds is worth rayon's threads.
pub(super) fn parallel_product(m: usize, n: usize, k: usize) -> bool {
    rayon::current_num_threads() > 1 && m * n * k > PARALLEL_MIN_FLOPS
}

/// `[A, B, P] → [B, A, P]`: the two leading dims of a contiguous array swapped.
fn swap_leading<T: GemmElem>(data: &[T], (a, b, p): (usize, usize, usize)) -> Vec<T> {
    let mut out = vec![T::default(); data.len()];
    if out.is_empty() {
        return out;
    }
    for_each_chunk(&mut out, a * p, data.len() >= PARALLEL_MIN, |j, chunk| {
        for (i, dest) in chunk.chunks_exact_mut(p).enumerate() {
            dest.copy_from_slice(&data[(i * b + j) * p..][..p]);
        }
    });
    out
}

/// Whether the f32 conv2d runs along the output rows, as x86-64's `conv_direct` does for a
/// few output channels on AVX-512 and AVX2: never with these kernels.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn along_rows(_: &Kernel<f32>, _: &Conv2dGeometry, _: usize) -> bool {
    false
}

/// A convolution `[N, C, H, W] ⋆ [OC, C, kh, kw] → [N, OC, OH, OW]` as one GEMM
/// `weight[OC, C·kh·kw] · columns[C·kh·kw, N·OH·OW]` whose columns are packed straight from
/// the image (no im2col buffer), then the `[OC, N, ·]` product reordered to `[N, OC, ·]`. The
/// same products in the same order as `im2col` and a matrix product.
pub(crate) fn conv2d<T: GemmElem>(
    kernel: Kernel<T>,
    image: &[T],
    weight: &[T],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<T> {
    let depth = g.channels * g.kernel[0] * g.kernel[1];
    let positions = g.out_height * g.out_width;
    let columns = g.batch * positions;
    let mut product = vec![T::default(); out_channels * columns];
    let weight = Operand {
        data: weight,
        offset: 0,
        row_stride: depth,
        col_stride: 1,
    };
    gemm_with(
        kernel,
        (out_channels, columns, depth),
        weight,
        &Columns { image, g },
        &mut product,
        parallel_product(out_channels, columns, depth),
    );
    swap_leading(&product, (out_channels, g.batch, positions))
}

/// A convolution's weight gradient `[OC, C·kh·kw] = grad[OC, N·OH·OW] · columnsᵀ` with the
/// transposed columns packed from the image: one GEMM whose threads split the output, so the
/// sum over images and positions runs in one order whatever the thread count.
pub(crate) fn conv2d_weight_grad<T: GemmElem>(
    kernel: Kernel<T>,
    image: &[T],
    grad: &[T],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<T> {
    let depth = g.channels * g.kernel[0] * g.kernel[1];
    let positions = g.out_height * g.out_width;
    let columns = g.batch * positions;
    let grad = swap_leading(grad, (g.batch, out_channels, positions)); // [OC, N·P]
    let mut out = vec![T::default(); out_channels * depth];
    let grad = Operand {
        data: &grad,
        offset: 0,
        row_stride: columns,
        col_stride: 1,
    };
    gemm_with(
        kernel,
        (out_channels, depth, columns),
        grad,
        &ColumnsT(Columns { image, g }),
        &mut out,
        parallel_product(out_channels, depth, columns),
    );
    out
}

/// Values in the columns block of one group of images in [`conv2d_input_grad`]: a bound
/// that keeps the block in L2 (1 MiB of f32).
const FOLD_BLOCK: usize = 1 << 18;

/// Input channels from which a stride-1 input gradient runs as the flipped convolution: the
/// rows of the widest micro-kernel tile (8).
const FLIP_MIN_CHANNELS: usize = 8;

/// A convolution's input gradient `[N, C, H, W]` from the gradient of its output
/// `[N, OC, OH, OW]` (and `conv_transpose2d`'s forward). With stride 1, no dilation and
/// padding below the kernel (and at least [`FLIP_MIN_CHANNELS`] input channels), it is
/// itself a convolution: of the gradient with the weight flipped and its channel dims
/// swapped, padded by `k - 1 - p` ([`conv2d`]). Otherwise the images go in groups whose
/// columns `weightᵀ · grad` fit in L2, each folded onto its images as `col2im` does; the
/// groups share out over the threads when there are enough of them. Each image's values come
/// from the same products in the same order whatever the grouping.
pub(crate) fn conv2d_input_grad<T: GemmElem + FloatDType>(
    kernel: Kernel<T>,
    grad: &[T],
    weight: &[T],
    out_channels: usize,
    g: &Conv2dGeometry,
) -> Vec<T> {
    let [kh, kw] = g.kernel;
    // The flipped convolution has the input's channels as its rows: with fewer than a
    // micro-kernel's rows (an image's first layer) most of each tile would be wasted.
    let flippable = g.stride == [1, 1] && g.dilation == [1, 1];
    if flippable && g.padding[0] < kh && g.padding[1] < kw && g.channels >= FLIP_MIN_CHANNELS {
        let taps = kh * kw;
        // flipped[c, oc, a, b] = weight[oc, c, kh-1-a, kw-1-b]
        let mut flipped = vec![T::default(); weight.len()];
        for (i, value) in flipped.iter_mut().enumerate() {
            let (c, oc, tap) = (i / (out_channels * taps), i / taps % out_channels, i % taps);
            *value = weight[(oc * g.channels + c) * taps + taps - 1 - tap];
        }
        let adjoint = Conv2dGeometry {
            batch: g.batch,
            channels: out_channels,
            height: g.out_height,
            width: g.out_width,
            kernel: g.kernel,
            stride: [1, 1],
            padding: [kh - 1 - g.padding[0], kw - 1 - g.padding[1]],
            dilation: [1, 1],
            out_height: g.height,
            out_width: g.width,
        };
        return conv2d(kernel, grad, &flipped, g.channels, &adjoint);
    }
    let depth = g.channels * kh * kw;
    let positions = g.out_height * g.out_width;
    let plane_len = g.height * g.width;
    let image_len = g.channels * plane_len;
    let mut image = vec![T::default(); g.batch * image_len];
    if image.is_empty() {
        return image;
    }
    let grad = swap_leading(grad, (g.batch, out_channels, positions)); // [OC, N·P]
    let weight_t = Operand {
        data: weight,
        offset: 0,
        row_stride: 1,
        col_stride: depth,
    };
    let threads = rayon::current_num_threads();
    let parallel = parallel_product(depth, g.batch * positions, out_channels);
    // Groups of images, each one product and one fold on one thread when there are enough
    // of them to share out; else one group at a time over all threads.
    let by_groups = parallel && g.batch >= threads;
    let mut group = (FOLD_BLOCK / (depth * positions).max(1)).clamp(1, g.batch);
    if by_groups {
        group = group.min(g.batch.div_ceil(threads));
    }
    let fold_group = |index: usize, images: &mut [T], inner: bool| {
        let n0 = index * group;
        let batch = images.len() / image_len;
        let columns = batch * positions;
        let mut block = vec![T::default(); depth * columns];
        let grad = Operand {
            data: &grad,
            offset: n0 * positions,
            row_stride: g.batch * positions,
            col_stride: 1,
        };
        gemm_with(
            kernel,
            (depth, columns, out_channels),
            weight_t,
            &grad,
            &mut block,
            inner,
        );
        let g = Conv2dGeometry { batch, ..*g };
        for_each_chunk(images, plane_len, inner, |i, plane| {
            fold_plane(&block, &g, (i / g.channels, i % g.channels), plane);
        });
    };
    if by_groups {
        image
            .par_chunks_mut(group * image_len)
            .enumerate()
            .for_each(|(index, images)| fold_group(index, images, false));
    } else {
        for (index, images) in image.chunks_mut(group * image_len).enumerate() {
            fold_group(index, images, parallel);
        }
    }
    image
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::gemm::{f32_kernel, f64_kernel};
    use super::super::CpuStorage;
    use super::*;
    use crate::backend::{
        conv2d_by_im2col, conv2d_input_grad_by_col2im, conv2d_weight_grad_by_im2col, Operand as Arg,
    };
    use crate::Layout;
    use proptest::prelude::*;

    /// A geometry, or `None` when the window does not fit the padded image.
    pub(crate) fn geometry(
        (batch, channels, height, width): (usize, usize, usize, usize),
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        dilation: [usize; 2],
    ) -> Option<Conv2dGeometry> {
        crate::ops::conv::window_geometry(
            "conv test",
            [batch, channels, height, width],
            kernel,
            stride,
            padding,
            dilation,
        )
        .ok()
    }

    /// Values that are multiples of 1/4 in -2.75..=2.75: every product and every sum the
    /// tests form is exact, in any order, so the direct kernels must equal the reference.
    fn values(len: usize, seed: usize) -> Vec<f64> {
        (0..len)
            .map(|i| ((i * 31 + seed * 17) % 23) as f64 / 4.0 - 2.75)
            .collect()
    }

    /// A convolution kernel's signature (kernel, input, other operand, out channels, geometry).
    pub(crate) type ConvFn<T> = fn(Kernel<T>, &[T], &[T], usize, &Conv2dGeometry) -> Vec<T>;

    /// The three kernels of this module against the im2col/col2im compositions, in `T`.
    fn check<T: GemmElem + FloatDType>(
        kernel: Kernel<T>,
        wrap: fn(Vec<T>) -> CpuStorage,
        g: &Conv2dGeometry,
        out_channels: usize,
    ) {
        let kernels = (
            conv2d as ConvFn<T>,
            conv2d_input_grad as ConvFn<T>,
            conv2d_weight_grad as ConvFn<T>,
        );
        check_kernels(kernel, wrap, g, out_channels, kernels);
    }

    /// `kernels` (conv2d, its input gradient, its weight gradient) against the im2col/col2im
    /// compositions, in `T`: equal, since every value the tests form is exact.
    pub(crate) fn check_kernels<T: GemmElem + FloatDType>(
        kernel: Kernel<T>,
        wrap: fn(Vec<T>) -> CpuStorage,
        g: &Conv2dGeometry,
        out_channels: usize,
        (forward, input_grad, weight_grad): (ConvFn<T>, ConvFn<T>, ConvFn<T>),
    ) {
        let cast = |v: Vec<f64>| -> Vec<T> { v.into_iter().map(T::from_f64).collect() };
        let x = cast(values(g.batch * g.channels * g.height * g.width, 1));
        let taps = g.kernel[0] * g.kernel[1];
        let w = cast(values(out_channels * g.channels * taps, 2));
        let positions = g.out_height * g.out_width;
        let gy = cast(values(g.batch * out_channels * positions, 3));
        let x_layout = Layout::contiguous(g.image_shape());
        let w_layout = Layout::contiguous([out_channels, g.channels, g.kernel[0], g.kernel[1]]);
        let gy_layout = Layout::contiguous([g.batch, out_channels, g.out_height, g.out_width]);
        let (xs, ws, gys) = (wrap(x.clone()), wrap(w.clone()), wrap(gy.clone()));
        let reference = [
            conv2d_by_im2col(&xs, &x_layout, Arg::new(&ws, &w_layout), g),
            conv2d_input_grad_by_col2im(&gys, &gy_layout, Arg::new(&ws, &w_layout), g),
            conv2d_weight_grad_by_im2col(&xs, &x_layout, Arg::new(&gys, &gy_layout), g),
        ]
        .map(|r| r.unwrap().as_slice::<T>().unwrap().to_vec());
        let direct = [
            forward(kernel, &x, &w, out_channels, g),
            input_grad(kernel, &gy, &w, out_channels, g),
            weight_grad(kernel, &x, &gy, out_channels, g),
        ];
        for (name, (got, want)) in ["conv2d", "input grad", "weight grad"]
            .iter()
            .zip(direct.iter().zip(&reference))
        {
            assert!(got == want, "{name} of {g:?} with {out_channels} outputs");
        }
    }

    pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn the_models_convolutions_equal_the_reference() {
        // (image, out channels, kernel, stride, padding): DCGAN, the conv VAE, the U-Net's
        // and the PixelCNN's shapes at batch 2, with channel counts cut for test time.
        let cases = [
            ((2, 1, 28, 28), 16, 4, 2, 1),
            ((2, 16, 14, 14), 32, 4, 2, 1),
            ((2, 8, 7, 7), 4, 3, 1, 1),
            ((2, 3, 28, 28), 8, 7, 1, 3),
            ((2, 8, 14, 14), 8, 3, 1, 1),
            ((2, 32, 7, 7), 1, 7, 1, 0),
            ((2, 4, 28, 28), 4, 1, 1, 0),
            ((3, 300, 5, 5), 9, 1, 1, 0), // depth past KC
        ];
        for (image, out_channels, k, s, p) in cases {
            let g = geometry(image, [k, k], [s, s], [p, p], [1, 1]).unwrap();
            check(f32_kernel(), CpuStorage::F32, &g, out_channels);
            check(f64_kernel(), CpuStorage::F64, &g, out_channels);
        }
    }

    #[test]
    fn empty_images_and_channels_equal_the_reference() {
        // Rows or columns of zero pixels, which padding alone makes room for the kernel in.
        for (height, width) in [(0, 5), (5, 0), (0, 0)] {
            let g = geometry((2, 3, height, width), [3, 3], [2, 1], [2, 2], [1, 1]).unwrap();
            check(f32_kernel(), CpuStorage::F32, &g, 4);
            check(f64_kernel(), CpuStorage::F64, &g, 4);
        }
        // No input channels: every output is an empty sum.
        let g = geometry((2, 0, 6, 6), [3, 3], [2, 2], [1, 1], [1, 1]).unwrap();
        check(f32_kernel(), CpuStorage::F32, &g, 4);
        check(f64_kernel(), CpuStorage::F64, &g, 4);
    }

    #[test]
    fn one_thread_and_two_give_the_same_bits() {
        let g = geometry((8, 24, 14, 14), [3, 3], [2, 2], [1, 1], [1, 1]).unwrap();
        let kernels = (
            conv2d as ConvFn<f32>,
            conv2d_input_grad as ConvFn<f32>,
            conv2d_weight_grad as ConvFn<f32>,
        );
        assert_same_bits_on_one_and_two_threads(&g, 40, kernels);
    }

    /// `kernels` (conv2d, its input gradient, its weight gradient) on random f32 values give
    /// the same bits on 1 thread as on 2.
    pub(crate) fn assert_same_bits_on_one_and_two_threads(
        g: &Conv2dGeometry,
        out_channels: usize,
        (forward, input_grad, weight_grad): (ConvFn<f32>, ConvFn<f32>, ConvFn<f32>),
    ) {
        let mut state = 0x2545_f491_u32;
        let mut random = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as f32 / u32::MAX as f32 - 0.5
                })
                .collect()
        };
        let x = random(g.batch * g.channels * g.height * g.width);
        let w = random(out_channels * g.channels * g.kernel[0] * g.kernel[1]);
        let gy = random(g.batch * out_channels * g.out_height * g.out_width);
        let run = || {
            let k = f32_kernel();
            [
                forward(k, &x, &w, out_channels, g),
                input_grad(k, &gy, &w, out_channels, g),
                weight_grad(k, &x, &gy, out_channels, g),
            ]
        };
        assert!(on_threads(1, run) == on_threads(2, run));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn random_geometries_equal_the_reference(
            batch in 1usize..4, channels in 1usize..6, out_channels in 1usize..7,
            height in 1usize..12, width in 1usize..12, kh in 1usize..6, kw in 1usize..6,
            stride in (1usize..4, 1usize..4), padding in (0usize..4, 0usize..4),
            dilation in (1usize..3, 1usize..3), threads in 1usize..=2,
        ) {
            let image = (batch, channels, height, width);
            let stride = [stride.0, stride.1];
            let padding = [padding.0, padding.1];
            let dilation = [dilation.0, dilation.1];
            if let Some(g) = geometry(image, [kh, kw], stride, padding, dilation) {
                on_threads(threads, || {
                    check(f32_kernel(), CpuStorage::F32, &g, out_channels);
                    check(f64_kernel(), CpuStorage::F64, &g, out_channels);
                });
            }
        }
    }
}
