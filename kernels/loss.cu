// Fused losses: binary cross-entropy with logits per element and its logits gradient.
// Host side: src/cuda/loss.rs; CPU references: src/cpu/loss.rs.
//
// bce_with_logits_T           out[i] = softplus(x) - x * y, with softplus as elementwise.cu's
//                             unary softplus (max(x, 0) + log1p(exp(-|x|))) and the softplus
//                             and the product each rounded to T before the difference, as the
//                             unfused ops stored them: the same bits as the composite
//                             softplus / mul / sub on this GPU. Reference:
//                             cpu::loss::bce_with_logits.
// bce_with_logits_backward_T  out[i] = (sigmoid(x) - y) * grad in the math type, sigmoid as
//                             elementwise.cu's. Reference: cpu::loss::bce_with_logits_backward.
//
// Launch shape: 1-D grid-stride, 256-thread blocks (launch_config_for), one thread per
// element, no shared memory. Inputs in any layout; outputs contiguous.

#define KILN_LOSS_MATH1(name, float_function, double_function)                               \
    __device__ __forceinline__ float name(float x) { return float_function(x); }            \
    __device__ __forceinline__ double name(double x) { return double_function(x); }
#define KILN_LOSS_MATH2(name, float_function, double_function)                               \
    __device__ __forceinline__ float name(float x, float y) { return float_function(x, y); } \
    __device__ __forceinline__ double name(double x, double y) { return double_function(x, y); }

KILN_LOSS_MATH1(math_exp, expf, exp)
KILN_LOSS_MATH1(math_log1p, log1pf, log1p)
KILN_LOSS_MATH1(math_abs, fabsf, fabs)
// fmax returns the other operand when one is NaN, as Rust's f32::max does.
KILN_LOSS_MATH2(math_max, fmaxf, fmax)
// Explicitly rounded: no multiply-add contraction, as on the CPU.
KILN_LOSS_MATH2(math_add, __fadd_rn, __dadd_rn)
KILN_LOSS_MATH2(math_sub, __fsub_rn, __dsub_rn)
KILN_LOSS_MATH2(math_mul, __fmul_rn, __dmul_rn)
KILN_LOSS_MATH2(math_div, __fdiv_rn, __ddiv_rn)

// 1 / (1 + e^-x), written so that neither branch overflows (elementwise.cu's math_sigmoid).
template <typename M> __device__ __forceinline__ M loss_sigmoid(M x) {
    if (x >= (M)0) return math_div((M)1, math_add((M)1, math_exp(-x)));
    const M e = math_exp(x);
    return math_div(e, math_add((M)1, e));
}

// Rounded to T and back, as an unfused op's stored output was.
template <typename T>
__device__ __forceinline__ typename MathOf<T>::type round_to(typename MathOf<T>::type x) {
    return to_math(from_math<T>(x));
}

template <typename T>
__device__ void bce_with_logits(T* out, const T* logits, Strided logits_layout, const T* targets,
                                Strided targets_layout, u64 n) {
    typedef typename MathOf<T>::type M;
    const M zero = (M)0;
    KILN_GRID_STRIDE(i, n) {
        const M x = to_math(logits[strided_offset(logits_layout, i)]);
        const M y = to_math(targets[strided_offset(targets_layout, i)]);
        const M softplus =
            round_to<T>(math_add(math_max(x, zero), math_log1p(math_exp(-math_abs(x)))));
        out[i] = from_math<T>(math_sub(softplus, round_to<T>(math_mul(x, y))));
    }
}

template <typename T>
__device__ void bce_with_logits_backward(T* out, const T* logits, Strided logits_layout,
                                         const T* targets, Strided targets_layout, const T* grad,
                                         Strided grad_layout, u64 n) {
    typedef typename MathOf<T>::type M;
    KILN_GRID_STRIDE(i, n) {
        const M x = to_math(logits[strided_offset(logits_layout, i)]);
        const M y = to_math(targets[strided_offset(targets_layout, i)]);
        const M g = to_math(grad[strided_offset(grad_layout, i)]);
        out[i] = from_math<T>(math_mul(math_sub(loss_sigmoid(x), y), g));
    }
}

#define KILN_LOSS_KERNELS(T, SUFFIX)                                                           \
    extern "C" __global__ void bce_with_logits_##SUFFIX(T* out, const T* logits,              \
                                                        Strided logits_layout,                 \
                                                        const T* targets,                      \
                                                        Strided targets_layout, u64 n) {       \
        bce_with_logits<T>(out, logits, logits_layout, targets, targets_layout, n);            \
    }                                                                                          \
    extern "C" __global__ void bce_with_logits_backward_##SUFFIX(                             \
        T* out, const T* logits, Strided logits_layout, const T* targets,                     \
        Strided targets_layout, const T* grad, Strided grad_layout, u64 n) {                  \
        bce_with_logits_backward<T>(out, logits, logits_layout, targets, targets_layout, grad, \
                                    grad_layout, n);                                           \
    }

KILN_LOSS_KERNELS(f16, f16)
KILN_LOSS_KERNELS(bf16, bf16)
KILN_LOSS_KERNELS(float, f32)
KILN_LOSS_KERNELS(double, f64)
