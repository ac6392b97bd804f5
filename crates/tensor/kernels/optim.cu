// The fused Adam/AdamW step: one pass over a parameter, its gradient and its two moments,
// writing the new parameter, exp_avg and exp_avg_sq (each contiguous).
// CPU reference: src/cpu/optim.rs `update`, followed operation for operation in the same order
// and in the math type (f32 for the half types), with the _rn intrinsics so that nvcc never
// contracts a multiply and an add into an FMA: every + - * / sqrt rounds once, as on the CPU,
// and the result is the CPU's bit for bit. `round_to<T>` stores into T and reads back where
// the CPU's `r` does (the identity for f32 and f64).
//
// Launch shape: 1-D grid-stride, 256-thread blocks (launch_config_for), one thread per
// element, no shared memory.

// The step's scalars as src/cuda/optim.rs `AdamConstants` computes them (each exactly the
// CPU's `Constants` field, held as f64, which every f32 value fits in exactly).
struct AdamConstants {
    double decay_param;
    double decay_grad;
    double lerp_weight;
    double lerp_complement;
    double beta2;
    double one_minus_beta2;
    double negative_step_size;
    double bias_correction2_sqrt;
    double eps;
    u32 decay;
    u32 decoupled;
    u32 lerp_from_start;
    u32 padding;
};

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

// The CPU's `r`: rounded to T, as an unfused op's stored output was.
template <typename T>
__device__ __forceinline__ typename MathOf<T>::type round_to(typename MathOf<T>::type x) {
    return to_math(from_math<T>(x));
}

template <typename T>
__device__ void adam_step(T* param_out, T* exp_avg_out, T* exp_avg_sq_out, const T* param,
                          Strided param_layout, const T* grad, Strided grad_layout,
                          const T* exp_avg, Strided exp_avg_layout, const T* exp_avg_sq,
                          Strided exp_avg_sq_layout, AdamConstants k, u64 n) {
    typedef typename MathOf<T>::type M;
    const M decay_param = (M)k.decay_param, decay_grad = (M)k.decay_grad;
    const M lerp_weight = (M)k.lerp_weight, lerp_complement = (M)k.lerp_complement;
    const M beta2 = (M)k.beta2, one_minus_beta2 = (M)k.one_minus_beta2;
    const M negative_step_size = (M)k.negative_step_size;
    const M bias_correction2_sqrt = (M)k.bias_correction2_sqrt, eps = (M)k.eps;
    // `+ zero` is mul_scalar's affine form (x * a + 0), kept because it turns -0 into +0.
    const M zero = (M)0, one = (M)1;
    KILN_GRID_STRIDE(i, n) {
        M p = to_math(param[strided_offset(param_layout, i)]);
        M g = to_math(grad[strided_offset(grad_layout, i)]);
        M m = to_math(exp_avg[strided_offset(exp_avg_layout, i)]);
        M v = to_math(exp_avg_sq[strided_offset(exp_avg_sq_layout, i)]);
        if (k.decay) {
            if (k.decoupled) {
                p = round_to<T>(add_rn(mul_rn(p, decay_param), zero));
            } else {
                g = round_to<T>(add_rn(g, round_to<T>(add_rn(mul_rn(p, decay_grad), zero))));
            }
        }
        M difference = round_to<T>(sub_rn(g, m));
        if (k.lerp_from_start) {
            m = round_to<T>(add_rn(m, round_to<T>(add_rn(mul_rn(difference, lerp_weight), zero))));
        } else {
            m = round_to<T>(
                sub_rn(g, round_to<T>(add_rn(mul_rn(difference, lerp_complement), zero))));
        }
        M decayed = round_to<T>(add_rn(mul_rn(v, beta2), zero));
        M scaled_grad = round_to<T>(add_rn(mul_rn(g, one_minus_beta2), zero));
        v = round_to<T>(add_rn(decayed, round_to<T>(mul_rn(scaled_grad, g))));
        M root = round_to<T>(sqrt_rn(v));
        M corrected = round_to<T>(div_rn(root, bias_correction2_sqrt));
        M denom = round_to<T>(add_rn(mul_rn(corrected, one), eps));
        M numerator = round_to<T>(add_rn(mul_rn(m, negative_step_size), zero));
        M update = round_to<T>(div_rn(numerator, denom));
        param_out[i] = from_math<T>(round_to<T>(add_rn(p, update)));
        exp_avg_out[i] = from_math<T>(m);
        exp_avg_sq_out[i] = from_math<T>(v);
    }
}

#define KILN_ADAM_STEP(T, SUFFIX)                                                            \
    extern "C" __global__ void adam_step_##SUFFIX(                                          \
        T* param_out, T* exp_avg_out, T* exp_avg_sq_out, const T* param, Strided param_layout, \
        const T* grad, Strided grad_layout, const T* exp_avg, Strided exp_avg_layout,         \
        const T* exp_avg_sq, Strided exp_avg_sq_layout, AdamConstants constants, u64 n) {    \
        adam_step<T>(param_out, exp_avg_out, exp_avg_sq_out, param, param_layout, grad,      \
                     grad_layout, exp_avg, exp_avg_layout, exp_avg_sq, exp_avg_sq_layout,    \
                     constants, n);                                                          \
    }

KILN_ADAM_STEP(f16, f16)
KILN_ADAM_STEP(bf16, bf16)
KILN_ADAM_STEP(float, f32)
KILN_ADAM_STEP(double, f64)
