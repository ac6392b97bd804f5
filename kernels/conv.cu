// Convolution lowering: im2col unfolds an image batch into GEMM columns, col2im folds columns
// back (summing overlapping taps). Pooling is in pool.cu.
// CPU reference: src/cpu/conv.rs (same names), geometry as src/ops/conv.rs Conv2dGeometry
// (`Geometry` in common.cuh): output position (oh, ow), tap (ki, kj) reads pixel
// (oh*stride_h + ki*dilation_h - padding_h, ow*stride_w + kj*dilation_w - padding_w); outside
// the image it reads padding.
// Column layout: row (c, ki, kj), column (n, oh, ow): [C*kh*kw, N*OH*OW].
//
// Launch shape (both): 1-D grid-stride, 256-thread blocks (launch_config_for), one thread
// per output element, no shared memory. Every input is read through its Strided layout.

// cols[row, column] = image[n, c, ih, iw] for row (c, ki, kj), column (n, oh, ow), or zero
// (the all-zero bit pattern, which is +0 for every float type) in the padding.
// Output: contiguous [C*kh*kw, N*OH*OW]. Reference: cpu::conv::im2col.
template <typename T>
__device__ void im2col(T* cols, const T* image, Strided image_layout, Geometry g) {
    u64 positions = g.out_height * g.out_width;
    u64 row_len = g.batch * positions;
    u64 taps = g.kernel_h * g.kernel_w;
    u64 n_out = g.channels * taps * row_len;
    KILN_GRID_STRIDE(i, n_out) {
        u64 row = i / row_len, column = i % row_len;
        u64 c = row / taps, tap = row % taps;
        u64 ki = tap / g.kernel_w, kj = tap % g.kernel_w;
        u64 n = column / positions, position = column % positions;
        u64 oh = position / g.out_width, ow = position % g.out_width;
        u64 ih, iw;
        T value = T{};
        if (input_coordinate(oh, ki, g.stride_h, g.dilation_h, g.padding_h, g.height, &ih) &&
            input_coordinate(ow, kj, g.stride_w, g.dilation_w, g.padding_w, g.width, &iw)) {
            u64 pixel = ((n * g.channels + c) * g.height + ih) * g.width + iw;
            value = image[strided_offset(image_layout, pixel)];
        }
        cols[i] = value;
    }
}

// image[n, c, ih, iw] = the sum of every column entry whose tap lands on the pixel, as a
// gather (each thread owns one pixel), so it needs no atomics and is deterministic. Taps are
// added in (ki, kj) order from +0 in the math type, the order the CPU adds them in for one
// pixel, so the result is the CPU's bit for bit.
// Output: contiguous [N, C, H, W]. Reference: cpu::conv::col2im.
template <typename T>
__device__ void col2im(T* image, const T* cols, Strided cols_layout, Geometry g) {
    typedef typename MathOf<T>::type M;
    u64 positions = g.out_height * g.out_width;
    u64 row_len = g.batch * positions;
    u64 plane_len = g.height * g.width;
    u64 n_out = g.batch * g.channels * plane_len;
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / plane_len, pixel = i % plane_len;
        u64 n = plane / g.channels, c = plane % g.channels;
        u64 ih = pixel / g.width, iw = pixel % g.width;
        M sum = (M)0;
        for (u64 ki = 0; ki < g.kernel_h; ++ki) {
            // oh*stride_h = ih + padding_h - ki*dilation_h must be a non-negative multiple of
            // the stride below out_height.
            u64 reach_h = ih + g.padding_h, offset_h = ki * g.dilation_h;
            if (reach_h < offset_h || (reach_h - offset_h) % g.stride_h != 0) continue;
            u64 oh = (reach_h - offset_h) / g.stride_h;
            if (oh >= g.out_height) continue;
            for (u64 kj = 0; kj < g.kernel_w; ++kj) {
                u64 reach_w = iw + g.padding_w, offset_w = kj * g.dilation_w;
                if (reach_w < offset_w || (reach_w - offset_w) % g.stride_w != 0) continue;
                u64 ow = (reach_w - offset_w) / g.stride_w;
                if (ow >= g.out_width) continue;
                u64 row = (c * g.kernel_h + ki) * g.kernel_w + kj;
                u64 column = n * positions + oh * g.out_width + ow;
                sum = sum + to_math(cols[strided_offset(cols_layout, row * row_len + column)]);
            }
        }
        image[i] = from_math<T>(sum);
    }
}

#define KILN_IM2COL(T, SUFFIX)                                                               \
    extern "C" __global__ void im2col_##SUFFIX(T* cols, const T* image, Strided image_layout, \
                                               Geometry g) {                                 \
        im2col<T>(cols, image, image_layout, g);                                             \
    }

#define KILN_FLOAT_CONV(T, SUFFIX)                                                            \
    extern "C" __global__ void col2im_##SUFFIX(T* image, const T* cols, Strided cols_layout,  \
                                               Geometry g) {                                  \
        col2im<T>(image, cols, cols_layout, g);                                               \
    }

KILN_IM2COL(u8, u8)
KILN_IM2COL(u32, u32)
KILN_IM2COL(f16, f16)
KILN_IM2COL(bf16, bf16)
KILN_IM2COL(float, f32)
KILN_IM2COL(double, f64)

KILN_FLOAT_CONV(f16, f16)
KILN_FLOAT_CONV(bf16, bf16)
KILN_FLOAT_CONV(float, f32)
KILN_FLOAT_CONV(double, f64)
