// kiln's CUDA prelude: prepended by the kernel registry (src/cuda/registry.rs) to every
// kernels/*.cu source before NVRTC compiles it, so no file needs an #include. It holds the
// element types, their conversions to the math type (f32 for the half types, as on the CPU:
// src/dtype.rs FloatDType) and to f64 (src/dtype.rs WithDType), the strided-layout argument
// every kernel takes, and the launch-shape conventions.
//
// Nothing here uses cuda_fp16.h or cuda_bf16.h: the half types are 16-bit structs converted
// with PTX `cvt` (f16) or bit arithmetic (bf16), so the sources compile with a bare NVRTC.

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// IEEE half and bfloat16 storage; arithmetic is done in f32 and rounded on store.
struct f16 { unsigned short bits; };
struct bf16 { unsigned short bits; };

// The type an element's arithmetic is done in.
template <typename T> struct MathOf { typedef T type; };
template <> struct MathOf<f16> { typedef float type; };
template <> struct MathOf<bf16> { typedef float type; };

__device__ __forceinline__ float to_math(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ float to_math(bf16 x) { return __uint_as_float(((u32)x.bits) << 16); }
__device__ __forceinline__ float to_math(float x) { return x; }
__device__ __forceinline__ double to_math(double x) { return x; }

// Round-to-nearest-even from the math type, as the `half` crate's from_f32.
template <typename T> __device__ T from_math(typename MathOf<T>::type m);
template <> __device__ __forceinline__ f16 from_math<f16>(float m) {
    f16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(m));
    return h;
}
template <> __device__ __forceinline__ bf16 from_math<bf16>(float m) {
    u32 u = __float_as_uint(m);
    bf16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (unsigned short)((u >> 16) | 0x0040u);  // NaN stays NaN, made quiet
    } else {
        b.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return b;
}
template <> __device__ __forceinline__ float from_math<float>(float m) { return m; }
template <> __device__ __forceinline__ double from_math<double>(double m) { return m; }

// The tensor layout a kernel reads: `rank` dims (at most KILN_MAX_RANK, after the host merged
// dims that are contiguous with each other and dropped dims of size 1), element strides, and
// the element offset of the first element. `contiguous` is 1 when element i is at offset + i.
// Mirrors `StridedArg` in src/cuda/mod.rs field for field.
#define KILN_MAX_RANK 8
struct Strided {
    u32 rank;
    u32 contiguous;
    u64 offset;
    u64 dims[KILN_MAX_RANK];
    u64 strides[KILN_MAX_RANK];
};

// The storage offset of row-major element `i` of the layout.
__device__ __forceinline__ u64 strided_offset(const Strided& s, u64 i) {
    if (s.contiguous) return s.offset + i;
    u64 offset = s.offset;
    for (int d = (int)s.rank - 1; d >= 0; --d) {
        u64 dim = s.dims[d];
        offset += (i % dim) * s.strides[d];
        i /= dim;
    }
    return offset;
}

// The activation of a fused matrix product (codes: 0 identity, 1 relu, 2 leaky relu, 3 tanh,
// 4 sigmoid; `Activation` in src/op.rs), in f32 with kiln's unary semantics (cpu::elementwise::unary): relu passes
// NaN, leaky relu multiplies by the slope rounded to f32, sigmoid splits on the sign so that
// neither branch overflows.
// Not inlined: called once per output after the k loop, and inlining the transcendental
// functions at every one of a thread's 64 outputs costs registers and minutes of compile time.
__device__ __noinline__ float kiln_activate(float x, u32 activation, float slope) {
    switch (activation) {
        case 1: return x < 0.0f ? 0.0f : x;
        case 2: return x > 0.0f ? x : __fmul_rn(x, slope);
        case 3: return tanhf(x);
        case 4:
            if (x >= 0.0f) return __fdiv_rn(1.0f, __fadd_rn(1.0f, expf(-x)));
            else {
                const float e = expf(x);
                return __fdiv_rn(e, __fadd_rn(1.0f, e));
            }
        default: return x;
    }
}

// Grid-stride loop over n elements: kernels are launched with 256-thread blocks and at most a
// few waves of blocks (src/cuda/mod.rs `launch_config_for`), each thread taking every
// (gridDim.x * blockDim.x)-th element.
#define KILN_GRID_STRIDE(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

// Conv2dGeometry field for field, as u64 (mirrors `GeometryArg` in src/cuda/conv.rs), the window
// geometry of conv.cu and pool.cu.
struct Geometry {
    u64 batch, channels, height, width;
    u64 kernel_h, kernel_w;
    u64 stride_h, stride_w;
    u64 padding_h, padding_w;
    u64 dilation_h, dilation_w;
    u64 out_height, out_width;
};

// The input coordinate tap `k` of output position `o` reads along one axis, or false when it
// lands in the padding. Unsigned arithmetic: `o*stride + k*dilation` is never negative, and
// the padding is subtracted only once it is known to fit.
__device__ __forceinline__ bool input_coordinate(u64 o, u64 k, u64 stride, u64 dilation,
                                                 u64 padding, u64 size, u64* coordinate) {
    u64 shifted = o * stride + k * dilation;
    if (shifted < padding || shifted - padding >= size) return false;
    *coordinate = shifted - padding;
    return true;
}

// Arithmetic rounded once per operation in the math type (f32 or f64), as the CPU does it:
// the _rn intrinsics keep NVRTC from contracting a multiply and an add into an FMA.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub_rn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub_rn(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }
