// Elementwise kernels: fill, strided copy, dtype conversion, unary functions, binary arithmetic,
// comparisons and where_cond. Each op is one line in a table below; macros make a kernel of it
// for every dtype it takes. Host side: src/cuda/elementwise.rs.
//
// Launch shape (all kernels): 1-D grid-stride over the n output elements, 256-thread blocks, at
// most a few waves of blocks (src/cuda/mod.rs `launch_config_for`), no shared memory. Outputs
// are contiguous from offset 0; inputs are read through their `Strided` layouts, so permuted,
// narrowed and broadcast (stride 0) views need no copy first.
//
// CPU references, which the results match bit for bit where IEEE arithmetic allows it
// (everything but the transcendental functions exp, log, tanh, log1p, pow, which CUDA's math
// library computes to within a few ulp of glibc's):
//   fill_*                  CpuStorage::full (the host rounds the value; see elementwise.rs)
//   copy_*                  CpuStorage::copy_strided
//   convert_<from>_<to>     CpuStorage::to_dtype: to.from_f64(from.to_f64())
//   unary_<op>_*            cpu::elementwise::unary
//   binary_<op>_*           cpu::elementwise::binary
//   compare_<op>_*          cpu::elementwise::compare
//   where_<cond>_<value>    CpuStorage::where_cond

typedef float f32;
typedef double f64;

// ---- Math in the math type (f32 for the half types, as on the CPU) ----

// One name for the float and double versions of each function, so an op is written once.
#define KILN_MATH1(name, float_function, double_function)                                     \
    __device__ __forceinline__ float name(float x) { return float_function(x); }            \
    __device__ __forceinline__ double name(double x) { return double_function(x); }
#define KILN_MATH2(name, float_function, double_function)                                     \
    __device__ __forceinline__ float name(float x, float y) { return float_function(x, y); } \
    __device__ __forceinline__ double name(double x, double y) { return double_function(x, y); }

KILN_MATH1(math_exp, expf, exp)
KILN_MATH1(math_log, logf, log)
KILN_MATH1(math_log1p, log1pf, log1p)
KILN_MATH1(math_sqrt, sqrtf, sqrt)
KILN_MATH1(math_abs, fabsf, fabs)
KILN_MATH1(math_tanh, tanhf, tanh)
KILN_MATH2(math_pow, powf, pow)
KILN_MATH2(math_copysign, copysignf, copysign)
// fmax/fmin return the other operand when one is NaN, as Rust's f32::max/min do.
KILN_MATH2(math_max, fmaxf, fmax)
KILN_MATH2(math_min, fminf, fmin)
// Explicitly rounded arithmetic: nvcc would otherwise fuse a multiply and an add into one FMA
// (one rounding), while the CPU rounds after each.
KILN_MATH2(math_add, __fadd_rn, __dadd_rn)
KILN_MATH2(math_sub, __fsub_rn, __dsub_rn)
KILN_MATH2(math_mul, __fmul_rn, __dmul_rn)
KILN_MATH2(math_div, __fdiv_rn, __ddiv_rn)

// 1 / (1 + e^-x), written so that neither branch overflows (cpu::elementwise::sigmoid).
template <typename M> __device__ __forceinline__ M math_sigmoid(M x) {
    if (x >= (M)0) return math_div((M)1, math_add((M)1, math_exp(-x)));
    const M e = math_exp(x);
    return math_div(e, math_add((M)1, e));
}

// SiLU's derivative s·(1 + x·(1 - s)), s = sigmoid(x), each operation rounded to M in that
// order (cpu::elementwise's SILU_DERIVATIVE).
template <typename M> __device__ __forceinline__ M math_silu_derivative(M x) {
    const M s = math_sigmoid(x);
    return math_mul(s, math_add((M)1, math_mul(x, math_sub((M)1, s))));
}

// ---- Conversions through f64, as the CPU's WithDType::to_f64 / from_f64 ----

__device__ __forceinline__ double to_f64(u8 x) { return (double)x; }
__device__ __forceinline__ double to_f64(u32 x) { return (double)x; }
__device__ __forceinline__ double to_f64(f16 x) { return (double)to_math(x); }
__device__ __forceinline__ double to_f64(bf16 x) { return (double)to_math(x); }
__device__ __forceinline__ double to_f64(float x) { return (double)x; }
__device__ __forceinline__ double to_f64(double x) { return x; }

template <typename T> __device__ T from_f64(double value);
// Rust's `as`: truncate toward zero and saturate, NaN to 0. Spelled out rather than left to a
// C cast, for which out-of-range values are undefined.
template <> __device__ __forceinline__ u8 from_f64<u8>(double value) {
    if (!(value > 0.0)) return 0;
    if (value >= 255.0) return 255;
    return (u8)(u32)value;
}
template <> __device__ __forceinline__ u32 from_f64<u32>(double value) {
    if (!(value > 0.0)) return 0;
    if (value >= 4294967295.0) return 4294967295u;
    return (u32)value;
}
// The halves round to f32 first, then to the half, as the CPU's `from_f64` (src/dtype.rs) and
// PyTorch's casts: exact for every f32 source.
template <> __device__ __forceinline__ f16 from_f64<f16>(double value) {
    return from_math<f16>((float)value);
}
template <> __device__ __forceinline__ bf16 from_f64<bf16>(double value) {
    return from_math<bf16>((float)value);
}
template <> __device__ __forceinline__ float from_f64<float>(double value) { return (float)value; }
template <> __device__ __forceinline__ double from_f64<double>(double value) { return value; }

// An element as a number to compare: halves by value (so -0 == 0 and NaN is unordered, as half's
// PartialOrd), not by bits.
__device__ __forceinline__ u8 numeric(u8 x) { return x; }
__device__ __forceinline__ u32 numeric(u32 x) { return x; }
__device__ __forceinline__ float numeric(f16 x) { return to_math(x); }
__device__ __forceinline__ float numeric(bf16 x) { return to_math(x); }
__device__ __forceinline__ float numeric(float x) { return x; }
__device__ __forceinline__ double numeric(double x) { return x; }

// ---- Dtype lists the kernels are generated over ----

#define KILN_ALL_DTYPES(X, ...) \
    X(u8, __VA_ARGS__) X(u32, __VA_ARGS__) X(f16, __VA_ARGS__) X(bf16, __VA_ARGS__) \
    X(f32, __VA_ARGS__) X(f64, __VA_ARGS__)
// The same list again, for a kernel generated over pairs of dtypes: a macro cannot expand
// inside its own expansion.
#define KILN_ALL_DTYPES_INNER(X, ...) \
    X(u8, __VA_ARGS__) X(u32, __VA_ARGS__) X(f16, __VA_ARGS__) X(bf16, __VA_ARGS__) \
    X(f32, __VA_ARGS__) X(f64, __VA_ARGS__)
#define KILN_FLOAT_DTYPES(X, ...) X(f16, __VA_ARGS__) X(bf16, __VA_ARGS__) X(f32, __VA_ARGS__) X(f64, __VA_ARGS__)

// ---- fill: out[i] = value, the value already rounded to T by the host and passed as its bits
// (the low sizeof(T) bytes of `bits`) ----

#define FILL_KERNEL(T, unused)                                                    \
    extern "C" __global__ void fill_##T(T* out, u64 bits, u64 n) {                \
        T value;                                                                  \
        memcpy(&value, &bits, sizeof(T));                                         \
        KILN_GRID_STRIDE(i, n) out[i] = value;                                    \
    }
KILN_ALL_DTYPES(FILL_KERNEL, _)

// ---- copy: out[i] = input[layout(i)] ----

#define COPY_KERNEL(T, unused)                                                                \
    extern "C" __global__ void copy_##T(T* out, const T* input, Strided layout, u64 n) {      \
        KILN_GRID_STRIDE(i, n) out[i] = input[strided_offset(layout, i)];                     \
    }
KILN_ALL_DTYPES(COPY_KERNEL, _)

// ---- convert: out[i] = To::from_f64(From::to_f64(input[layout(i)])), every pair ----

#define CONVERT_KERNEL(To, From)                                                                \
    extern "C" __global__ void convert_##From##_##To(To* out, const From* input, Strided layout, \
                                                     u64 n) {                                   \
        KILN_GRID_STRIDE(i, n) out[i] = from_f64<To>(to_f64(input[strided_offset(layout, i)])); \
    }
#define CONVERT_FROM(From, unused) KILN_ALL_DTYPES_INNER(CONVERT_KERNEL, From)
KILN_ALL_DTYPES(CONVERT_FROM, _)

// ---- unary: out[i] = f(x) in the math type M, x = input[layout(i)]; p0 and p1 are the op's
// parameters (slope, exponent, min/max, mul/add) rounded to M as T::math_from_f64 does ----

#define UNARY_OPS(X)                                                        \
    X(neg, -x)                                                              \
    X(exp, math_exp(x))                                                     \
    X(log, math_log(x))                                                     \
    X(sqrt, math_sqrt(x))                                                   \
    X(abs, math_abs(x))                                                     \
    /* 0 for ±0, NaN for NaN (Rust's signum), else ±1 */                    \
    X(sign, x == zero ? zero : (x != x ? x : math_copysign((M)1, x)))       \
    /* NaN passes through relu and clamp, as on the CPU */                  \
    X(relu, x < zero ? zero : x)                                            \
    X(leaky_relu, x > zero ? x : math_mul(x, p0))                           \
    /* p0 = 1 - slope, p1 = slope: [x > 0]·p0 + p1, as the CPU rounds it */  \
    X(leaky_relu_derivative,                                                \
      math_add(math_mul(x > zero ? (M)1 : zero, p0), p1))                   \
    X(sigmoid, math_sigmoid(x))                                             \
    X(tanh, math_tanh(x))                                                   \
    X(softplus, math_add(math_max(x, zero), math_log1p(math_exp(-math_abs(x))))) \
    X(silu, math_mul(x, math_sigmoid(x)))                                   \
    X(silu_derivative, math_silu_derivative(x))                             \
    X(powf, math_pow(x, p0))                                                \
    X(clamp, x != x ? x : math_min(math_max(x, p0), p1))                    \
    X(affine, math_add(math_mul(x, p0), p1))

#define UNARY_KERNEL(T, name, expression)                                                    \
    extern "C" __global__ void unary_##name##_##T(T* out, const T* input, Strided layout,    \
                                                  u64 n, double parameter0, double parameter1) { \
        typedef MathOf<T>::type M;                                                           \
        const M p0 = (M)parameter0, p1 = (M)parameter1, zero = (M)0;                         \
        (void)p0; (void)p1; (void)zero;                                                      \
        KILN_GRID_STRIDE(i, n) {                                                             \
            const M x = to_math(input[strided_offset(layout, i)]);                           \
            out[i] = from_math<T>(expression);                                               \
        }                                                                                    \
    }
#define UNARY_FOR_FLOATS(name, expression) KILN_FLOAT_DTYPES(UNARY_KERNEL, name, expression)
UNARY_OPS(UNARY_FOR_FLOATS)

// ---- binary: out[i] = a op b in the math type, a = lhs[lhs_layout(i)], b = rhs[rhs_layout(i)] ----

#define BINARY_OPS(X) X(add, math_add(a, b)) X(sub, math_sub(a, b)) X(mul, math_mul(a, b)) X(div, math_div(a, b))

#define BINARY_KERNEL(T, name, expression)                                                    \
    extern "C" __global__ void binary_##name##_##T(T* out, const T* lhs, Strided lhs_layout,  \
                                                   const T* rhs, Strided rhs_layout, u64 n) { \
        KILN_GRID_STRIDE(i, n) {                                                              \
            const auto a = to_math(lhs[strided_offset(lhs_layout, i)]);                       \
            const auto b = to_math(rhs[strided_offset(rhs_layout, i)]);                       \
            out[i] = from_math<T>(expression);                                                \
        }                                                                                     \
    }
#define BINARY_FOR_FLOATS(name, expression) KILN_FLOAT_DTYPES(BINARY_KERNEL, name, expression)
BINARY_OPS(BINARY_FOR_FLOATS)

// ---- compare: out[i] = 1 if a op b else 0; NaN is unordered (only ne holds), as Rust's
// PartialOrd ----

#define COMPARE_OPS(X) X(eq, a == b) X(ne, a != b) X(lt, a < b) X(le, a <= b) X(gt, a > b) X(ge, a >= b)

#define COMPARE_KERNEL(T, name, expression)                                                    \
    extern "C" __global__ void compare_##name##_##T(u8* out, const T* lhs, Strided lhs_layout, \
                                                    const T* rhs, Strided rhs_layout, u64 n) { \
        KILN_GRID_STRIDE(i, n) {                                                               \
            const auto a = numeric(lhs[strided_offset(lhs_layout, i)]);                        \
            const auto b = numeric(rhs[strided_offset(rhs_layout, i)]);                        \
            out[i] = (expression) ? 1 : 0;                                                     \
        }                                                                                      \
    }
#define COMPARE_FOR_ALL(name, expression) KILN_ALL_DTYPES(COMPARE_KERNEL, name, expression)
COMPARE_OPS(COMPARE_FOR_ALL)

// ---- where: out[i] = condition[i] != 0 ? on_true[i] : on_false[i], each read through its
// layout. A float condition compares by value (WithDType::is_nonzero: -0 is zero, NaN is not) ----

#define WHERE_KERNEL(T, C)                                                                    \
    extern "C" __global__ void where_##C##_##T(T* out, const C* condition,                    \
                                               Strided condition_layout, const T* on_true,    \
                                               Strided true_layout, const T* on_false,        \
                                               Strided false_layout, u64 n) {                 \
        KILN_GRID_STRIDE(i, n) {                                                              \
            const bool chosen = numeric(condition[strided_offset(condition_layout, i)]) != 0; \
            out[i] = chosen ? on_true[strided_offset(true_layout, i)]                         \
                            : on_false[strided_offset(false_layout, i)];                      \
        }                                                                                     \
    }
#define WHERE_FOR_CONDITION(C, unused) KILN_ALL_DTYPES_INNER(WHERE_KERNEL, C)
KILN_ALL_DTYPES(WHERE_FOR_CONDITION, _)
