// Pooling and nearest upsampling over [N, C, H, W] batches, forward and backward.
// CPU reference: src/cpu/pool.rs (same names). Window geometry: `Geometry` in common.cuh
// (src/ops/conv.rs Conv2dGeometry): output position (oh, ow), tap (ki, kj) reads pixel
// (oh*stride_h + ki*dilation_h - padding_h, ow*stride_w + kj*dilation_w - padding_w).
//
// Launch shape (all): 1-D grid-stride, 256-thread blocks (launch_config_for), no shared memory;
// one thread per output element for the forwards, one per input pixel for the backwards, which
// are gathers: each thread sums the gradients reaching its pixel in the CPU's order, so they
// need no atomics, are deterministic and equal the CPU bit for bit. Every input is read
// through its Strided layout; every output is contiguous.

// The sizes of a nearest resize from [batch, channels, height, width] to out_height x
// out_width (mirrors `ResizeArg` in src/cuda/pool.rs).
struct Resize {
    u64 batch, channels, height, width;
    u64 out_height, out_width;
};

// -inf in the math type (as reduce.cu's; each .cu is compiled on its own).
template <typename M> __device__ __forceinline__ M negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
    return __int_as_float(0xff800000);
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}

// values[n, c, oh, ow] = the window's maximum (the input element itself, so a NaN keeps its
// payload), indices[n, c, oh, ow] = ih*W + iw of it within its plane. Padding never wins; NaN
// does (the first NaN, and nothing beats it after); ties go to the first in row-major window
// order (strict >). A window with no pixel (an empty plane, which the op layer rejects) gives
// -inf and index 0, as on the CPU.
// Output: contiguous [N, C, OH, OW] twice. Reference: cpu::pool::max_pool2d.
template <typename T>
__device__ void max_pool2d(T* values, u32* indices, const T* image, Strided image_layout,
                           Geometry g) {
    typedef typename MathOf<T>::type M;
    u64 positions = g.out_height * g.out_width;
    u64 plane_len = g.height * g.width;
    u64 n_out = g.batch * g.channels * positions;
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / positions, position = i % positions;
        u64 oh = position / g.out_width, ow = position % g.out_width;
        bool found = false;
        u64 best_at = 0;
        T best_value = from_math<T>(negative_infinity<M>());
        M best = (M)0;
        for (u64 ki = 0; ki < g.kernel_h; ++ki) {
            u64 ih;
            if (!input_coordinate(oh, ki, g.stride_h, g.dilation_h, g.padding_h, g.height, &ih))
                continue;
            for (u64 kj = 0; kj < g.kernel_w; ++kj) {
                u64 iw;
                if (!input_coordinate(ow, kj, g.stride_w, g.dilation_w, g.padding_w, g.width, &iw))
                    continue;
                u64 at = ih * g.width + iw;
                T element = image[strided_offset(image_layout, plane * plane_len + at)];
                M value = to_math(element);
                bool wins = !found || (!isnan(best) && (value > best || isnan(value)));
                if (wins) {
                    found = true;
                    best_at = at;
                    best = value;
                    best_value = element;
                }
            }
        }
        values[i] = best_value;
        indices[i] = (u32)best_at;
    }
}

// The output position along one axis whose tap `k` reads input coordinate `at`, or false:
// o = (at + padding - k*dilation) / stride when that divides and is below `out`.
__device__ __forceinline__ bool window_of(u64 at, u64 k, u64 stride, u64 dilation, u64 padding,
                                          u64 out, u64* o) {
    u64 reach = at + padding, offset = k * dilation;
    if (reach < offset || (reach - offset) % stride != 0) return false;
    *o = (reach - offset) / stride;
    return *o < out;
}

// grad_input[n, c, ih, iw] = the sum of grad[n, c, oh, ow] over the windows whose index names
// this pixel, added in increasing (oh, ow) from +0 in the math type and rounded once. Taps are
// walked from the last (ki, kj) to the first, which visits the covering windows in increasing
// (oh, ow); an index that is not a pixel of its own window is never matched.
// Output: contiguous [N, C, H, W]. Reference: cpu::pool::max_pool2d_backward.
template <typename T>
__device__ void max_pool2d_backward(T* grad_input, const T* grad, Strided grad_layout,
                                    const u32* indices, Strided indices_layout, Geometry g) {
    typedef typename MathOf<T>::type M;
    u64 positions = g.out_height * g.out_width;
    u64 plane_len = g.height * g.width;
    u64 n_out = g.batch * g.channels * plane_len;
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / plane_len, pixel = i % plane_len;
        u64 ih = pixel / g.width, iw = pixel % g.width;
        M sum = (M)0;
        for (u64 ki = g.kernel_h; ki-- > 0;) {
            u64 oh;
            if (!window_of(ih, ki, g.stride_h, g.dilation_h, g.padding_h, g.out_height, &oh))
                continue;
            for (u64 kj = g.kernel_w; kj-- > 0;) {
                u64 ow;
                if (!window_of(iw, kj, g.stride_w, g.dilation_w, g.padding_w, g.out_width, &ow))
                    continue;
                u64 o = plane * positions + oh * g.out_width + ow;
                if ((u64)indices[strided_offset(indices_layout, o)] == pixel)
                    sum = sum + to_math(grad[strided_offset(grad_layout, o)]);
            }
        }
        grad_input[i] = from_math<T>(sum);
    }
}

// x * scale rounded, then + 0 (a -0 product becomes +0), as kiln's mul_scalar (the affine op)
// computes it; no contraction into an fma.
__device__ __forceinline__ float scale_rn(float x, float scale) {
    return __fadd_rn(__fmul_rn(x, scale), 0.0f);
}
__device__ __forceinline__ double scale_rn(double x, double scale) {
    return __dadd_rn(__dmul_rn(x, scale), 0.0);
}

// 1 / (kh*kw) rounded to the math type (IEEE division in f64, then one rounding).
template <typename M>
__device__ __forceinline__ M window_scale(Geometry g) {
    return (M)(1.0 / (double)(g.kernel_h * g.kernel_w));
}

// out[n, c, oh, ow] = the mean of the window, padding counted as zeros: the taps summed in f64
// in (ki, kj) order, rounded to T through the math type, then scaled by 1/(kh*kw) and rounded
// again, which is what the CPU (and the im2col + mean composition before it) computes.
// Output: contiguous [N, C, OH, OW]. Reference: cpu::pool::avg_pool2d.
template <typename T>
__device__ void avg_pool2d(T* out, const T* image, Strided image_layout, Geometry g) {
    typedef typename MathOf<T>::type M;
    u64 positions = g.out_height * g.out_width;
    u64 plane_len = g.height * g.width;
    u64 n_out = g.batch * g.channels * positions;
    M scale = window_scale<M>(g);
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / positions, position = i % positions;
        u64 oh = position / g.out_width, ow = position % g.out_width;
        double sum = 0.0;
        for (u64 ki = 0; ki < g.kernel_h; ++ki) {
            u64 ih;
            if (!input_coordinate(oh, ki, g.stride_h, g.dilation_h, g.padding_h, g.height, &ih))
                continue;
            for (u64 kj = 0; kj < g.kernel_w; ++kj) {
                u64 iw;
                if (!input_coordinate(ow, kj, g.stride_w, g.dilation_w, g.padding_w, g.width, &iw))
                    continue;
                u64 at = plane * plane_len + ih * g.width + iw;
                sum = __dadd_rn(sum, (double)to_math(image[strided_offset(image_layout, at)]));
            }
        }
        T rounded = from_math<T>((M)sum);
        out[i] = from_math<T>(scale_rn(to_math(rounded), scale));
    }
}

// grad_input[n, c, ih, iw] = the sum, over the windows this pixel is a tap of, in (ki, kj)
// order from +0 in the math type, of grad[n, c, oh, ow] scaled by 1/(kh*kw) and rounded to T;
// rounded once. Output: contiguous [N, C, H, W]. Reference: cpu::pool::avg_pool2d_backward.
template <typename T>
__device__ void avg_pool2d_backward(T* grad_input, const T* grad, Strided grad_layout,
                                    Geometry g) {
    typedef typename MathOf<T>::type M;
    u64 positions = g.out_height * g.out_width;
    u64 plane_len = g.height * g.width;
    u64 n_out = g.batch * g.channels * plane_len;
    M scale = window_scale<M>(g);
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / plane_len, pixel = i % plane_len;
        u64 ih = pixel / g.width, iw = pixel % g.width;
        M sum = (M)0;
        for (u64 ki = 0; ki < g.kernel_h; ++ki) {
            u64 oh;
            if (!window_of(ih, ki, g.stride_h, g.dilation_h, g.padding_h, g.out_height, &oh))
                continue;
            for (u64 kj = 0; kj < g.kernel_w; ++kj) {
                u64 ow;
                if (!window_of(iw, kj, g.stride_w, g.dilation_w, g.padding_w, g.out_width, &ow))
                    continue;
                u64 o = plane * positions + oh * g.out_width + ow;
                T scaled = from_math<T>(scale_rn(to_math(grad[strided_offset(grad_layout, o)]), scale));
                sum = sum + to_math(scaled);
            }
        }
        grad_input[i] = from_math<T>(sum);
    }
}

// The input row output row `o` of a resize from `input` to `output` rows copies:
// min(floor(o * (input / output)), input - 1), in f32 as PyTorch (and cpu::pool::nearest_source)
// computes it. Non-decreasing in o.
__device__ __forceinline__ u64 nearest_source(u64 o, u64 input, u64 output) {
    float scale = __fdiv_rn((float)input, (float)output);
    u64 source = (u64)floorf(__fmul_rn((float)o, scale));
    return source < input - 1 ? source : input - 1;
}

// The first output row whose source is at least `i`: the exact ceil(i * output / input),
// moved by the few steps f32 rounding can put between it and the f32 formula.
__device__ __forceinline__ u64 nearest_first(u64 i, u64 input, u64 output) {
    u64 o = (i * output + input - 1) / input;
    if (o > output) o = output;
    while (o > 0 && nearest_source(o - 1, input, output) >= i) --o;
    while (o < output && nearest_source(o, input, output) < i) ++o;
    return o;
}

// out[n, c, oh, ow] = image[n, c, nearest_source(oh), nearest_source(ow)]: a copy, any dtype.
// Output: contiguous [N, C, OH, OW]. Reference: cpu::pool::upsample_nearest2d.
template <typename T>
__device__ void upsample_nearest2d(T* out, const T* image, Strided image_layout, Resize r) {
    u64 positions = r.out_height * r.out_width;
    u64 n_out = r.batch * r.channels * positions;
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / positions, position = i % positions;
        u64 ih = nearest_source(position / r.out_width, r.height, r.out_height);
        u64 iw = nearest_source(position % r.out_width, r.width, r.out_width);
        out[i] = image[strided_offset(image_layout, (plane * r.height + ih) * r.width + iw)];
    }
}

// grad_input[n, c, ih, iw] = the sum of the grads of the outputs that copy this pixel: for each
// output row copying row ih (in increasing order) the sum from +0 of that row's grads at the
// columns copying iw, and those row sums added from +0, all in the math type, rounded once.
// Output: contiguous [N, C, H, W]. Reference: cpu::pool::upsample_nearest2d_backward.
template <typename T>
__device__ void upsample_nearest2d_backward(T* grad_input, const T* grad, Strided grad_layout,
                                            Resize r) {
    typedef typename MathOf<T>::type M;
    u64 plane_len = r.height * r.width;
    u64 n_out = r.batch * r.channels * plane_len;
    KILN_GRID_STRIDE(i, n_out) {
        u64 plane = i / plane_len, pixel = i % plane_len;
        u64 ih = pixel / r.width, iw = pixel % r.width;
        u64 first_w = nearest_first(iw, r.width, r.out_width);
        M sum = (M)0;
        for (u64 oh = nearest_first(ih, r.height, r.out_height);
             oh < r.out_height && nearest_source(oh, r.height, r.out_height) == ih; ++oh) {
            M row = (M)0;
            for (u64 ow = first_w;
                 ow < r.out_width && nearest_source(ow, r.width, r.out_width) == iw; ++ow) {
                u64 o = (plane * r.out_height + oh) * r.out_width + ow;
                row = row + to_math(grad[strided_offset(grad_layout, o)]);
            }
            sum = sum + row;
        }
        grad_input[i] = from_math<T>(sum);
    }
}

#define KILN_UPSAMPLE(T, SUFFIX)                                                             \
    extern "C" __global__ void upsample_nearest2d_##SUFFIX(T* out, const T* image,          \
                                                           Strided image_layout, Resize r) { \
        upsample_nearest2d<T>(out, image, image_layout, r);                                  \
    }

#define KILN_FLOAT_POOL(T, SUFFIX)                                                              \
    extern "C" __global__ void max_pool2d_##SUFFIX(T* values, u32* indices, const T* image,     \
                                                   Strided image_layout, Geometry g) {          \
        max_pool2d<T>(values, indices, image, image_layout, g);                                 \
    }                                                                                           \
    extern "C" __global__ void max_pool2d_backward_##SUFFIX(                                    \
        T* grad_input, const T* grad, Strided grad_layout, const u32* indices,                  \
        Strided indices_layout, Geometry g) {                                                   \
        max_pool2d_backward<T>(grad_input, grad, grad_layout, indices, indices_layout, g);      \
    }                                                                                           \
    extern "C" __global__ void avg_pool2d_##SUFFIX(T* out, const T* image, Strided image_layout, \
                                                   Geometry g) {                                \
        avg_pool2d<T>(out, image, image_layout, g);                                             \
    }                                                                                           \
    extern "C" __global__ void avg_pool2d_backward_##SUFFIX(T* grad_input, const T* grad,       \
                                                            Strided grad_layout, Geometry g) {  \
        avg_pool2d_backward<T>(grad_input, grad, grad_layout, g);                               \
    }                                                                                           \
    extern "C" __global__ void upsample_nearest2d_backward_##SUFFIX(                            \
        T* grad_input, const T* grad, Strided grad_layout, Resize r) {                          \
        upsample_nearest2d_backward<T>(grad_input, grad, grad_layout, r);                       \
    }

KILN_UPSAMPLE(u8, u8)
KILN_UPSAMPLE(u32, u32)
KILN_UPSAMPLE(f16, f16)
KILN_UPSAMPLE(bf16, bf16)
KILN_UPSAMPLE(float, f32)
KILN_UPSAMPLE(double, f64)

KILN_FLOAT_POOL(f16, f16)
KILN_FLOAT_POOL(bf16, bf16)
KILN_FLOAT_POOL(float, f32)
KILN_FLOAT_POOL(double, f64)
