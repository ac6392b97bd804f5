// The fused Adam/AdamW step of up to 32 parameters in one launch, as PyTorch's
// multi_tensor_apply does: one pass over each parameter, its gradient and its two moments,
// writing the new parameter, exp_avg and exp_avg_sq.
// CPU reference: src/cpu/optim.rs `update`, followed operation for operation in the same order
// and in the math type (f32 for the half types), with the _rn intrinsics so that nvcc never
// contracts a multiply and an add into an FMA: every + - * / sqrt rounds once, as on the CPU,
// and the result is the CPU's bit for bit. `round_to<T>` stores into T and reads back where
// the CPU's `r` does (the identity for f32 and f64).
//
// Launch shape: one 256-thread block per chunk of KILN_ADAM_CHUNK elements of one parameter
// (the table says which block starts which parameter), no shared memory; the operands are
// contiguous (src/cuda/optim.rs copies strided views first).

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

// The CPU's `r`: rounded to T, as an unfused op's stored output was.
template <typename T>
__device__ __forceinline__ typename MathOf<T>::type round_to(typename MathOf<T>::type x) {
    return to_math(from_math<T>(x));
}

// The update of one element, in the math type: p, m and v in and out, g in.
template <typename T>
__device__ __forceinline__ void adam_update(typename MathOf<T>::type& p,
                                            typename MathOf<T>::type g,
                                            typename MathOf<T>::type& m,
                                            typename MathOf<T>::type& v, const AdamConstants& k) {
    typedef typename MathOf<T>::type M;
    const M decay_param = (M)k.decay_param, decay_grad = (M)k.decay_grad;
    const M lerp_weight = (M)k.lerp_weight, lerp_complement = (M)k.lerp_complement;
    const M beta2 = (M)k.beta2, one_minus_beta2 = (M)k.one_minus_beta2;
    const M negative_step_size = (M)k.negative_step_size;
    const M bias_correction2_sqrt = (M)k.bias_correction2_sqrt, eps = (M)k.eps;
    // `+ zero` is mul_scalar's affine form (x * a + 0), kept because it turns -0 into +0.
    const M zero = (M)0, one = (M)1;
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
    p = round_to<T>(add_rn(p, update));
}

// The multi-tensor table, passed by value as a __grid_constant__ kernel parameter (2.2 KiB,
// under the 4 KiB every driver takes): src/cuda/optim.rs `AdamTable`, field for field.
#define KILN_ADAM_TENSORS 32
#define KILN_ADAM_CHUNK 4096
struct AdamTensor {
    u64 param_out, exp_avg_out, exp_avg_sq_out;  // device addresses of T
    u64 param, grad, exp_avg, exp_avg_sq;
    u64 n;
};
struct AdamTable {
    AdamTensor tensors[KILN_ADAM_TENSORS];
    // Block first_block[t] is the first of tensor t's ceil(n / KILN_ADAM_CHUNK) blocks;
    // first_block[count] is the grid's size.
    u32 first_block[KILN_ADAM_TENSORS + 1];
    u32 count;
};

template <typename T>
__device__ void adam_step_many(const AdamTable& table, const AdamConstants& k) {
    typedef typename MathOf<T>::type M;
    const u32 block = blockIdx.x;
    u32 t = 0;
    while (t + 1 < table.count && table.first_block[t + 1] <= block) ++t;
    const AdamTensor& x = table.tensors[t];
    const u64 start = (u64)(block - table.first_block[t]) * KILN_ADAM_CHUNK;
    const u64 end = start + KILN_ADAM_CHUNK < x.n ? start + KILN_ADAM_CHUNK : x.n;
    T* param_out = reinterpret_cast<T*>(x.param_out);
    T* exp_avg_out = reinterpret_cast<T*>(x.exp_avg_out);
    T* exp_avg_sq_out = reinterpret_cast<T*>(x.exp_avg_sq_out);
    const T* param = reinterpret_cast<const T*>(x.param);
    const T* grad = reinterpret_cast<const T*>(x.grad);
    const T* exp_avg = reinterpret_cast<const T*>(x.exp_avg);
    const T* exp_avg_sq = reinterpret_cast<const T*>(x.exp_avg_sq);
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        M p = to_math(param[i]), m = to_math(exp_avg[i]), v = to_math(exp_avg_sq[i]);
        adam_update<T>(p, to_math(grad[i]), m, v, k);
        param_out[i] = from_math<T>(p);
        exp_avg_out[i] = from_math<T>(m);
        exp_avg_sq_out[i] = from_math<T>(v);
    }
}

#define KILN_ADAM_STEP(T, SUFFIX)                                                            \
    extern "C" __global__ void adam_step_many_##SUFFIX(const __grid_constant__ AdamTable table, \
                                                       AdamConstants constants) {            \
        adam_step_many<T>(table, constants);                                                 \
    }

KILN_ADAM_STEP(f16, f16)
KILN_ADAM_STEP(bf16, bf16)
KILN_ADAM_STEP(float, f32)
KILN_ADAM_STEP(double, f64)

// ---- Sums of squares of up to 32 tensors (gradient-norm clipping) ----
//
// sum_squares_partial_T   one 256-thread block per chunk of KILN_ADAM_CHUNK elements of one
//                         tensor (the table's first_block says which): each element squared in
//                         the math type and rounded there (the CPU's `x.square()`, on f32 for
//                         the half types), summed in f64, the block's sum written to
//                         partials[block] (f64). Shared memory: 8 doubles.
// sum_squares_finish_O    one 256-thread block per tensor: its partials summed in f64 in a
//                         fixed tree and rounded once to O (f32, or f64 for f64 tensors) into
//                         out[tensor]; 0 for an empty tensor.
// Deterministic (no atomics): the same sums on every run. CPU reference: the composition
// `x.square().sum_all()` (src/backend.rs `sum_of_squares_many`), which sums in blocks of 1024
// in the math type: the two differ by that rounding.

struct SquaresTable {
    u64 data[KILN_ADAM_TENSORS];  // device addresses of contiguous T
    u64 n[KILN_ADAM_TENSORS];
    u32 first_block[KILN_ADAM_TENSORS + 1];
    u32 count;
};

// The sum of v over the block's threads (whole warps, at most 1024), in thread 0.
__device__ double block_sum(double v) {
    __shared__ double warp_sums[32];
    for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
    }
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (blockDim.x >> 5) ? warp_sums[lane] : 0.0;
        for (int lane_mask = 16; lane_mask > 0; lane_mask >>= 1) {
            v += __shfl_xor_sync(0xffffffffu, v, lane_mask);
        }
    }
    return v;
}

template <typename T>
__device__ void sum_squares_partial(const SquaresTable& table, double* partials) {
    typedef typename MathOf<T>::type M;
    const u32 block = blockIdx.x;
    u32 t = 0;
    while (t + 1 < table.count && table.first_block[t + 1] <= block) ++t;
    const T* data = reinterpret_cast<const T*>(table.data[t]);
    const u64 start = (u64)(block - table.first_block[t]) * KILN_ADAM_CHUNK;
    const u64 end = start + KILN_ADAM_CHUNK < table.n[t] ? start + KILN_ADAM_CHUNK : table.n[t];
    double sum = 0.0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) {
        const M x = to_math(data[i]);
        sum += (double)mul_rn(x, x);
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[block] = sum;
}

template <typename O>
__device__ void sum_squares_finish(const SquaresTable& table, const double* partials, O* out) {
    const u32 t = blockIdx.x;
    double sum = 0.0;
    for (u32 p = table.first_block[t] + threadIdx.x; p < table.first_block[t + 1];
         p += blockDim.x) {
        sum += partials[p];
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) out[t] = (O)sum;
}

#define KILN_SUM_SQUARES(T, SUFFIX)                                                          \
    extern "C" __global__ void sum_squares_partial_##SUFFIX(                                 \
        const __grid_constant__ SquaresTable table, double* partials) {                      \
        sum_squares_partial<T>(table, partials);                                             \
    }

KILN_SUM_SQUARES(f16, f16)
KILN_SUM_SQUARES(bf16, bf16)
KILN_SUM_SQUARES(float, f32)
KILN_SUM_SQUARES(double, f64)

extern "C" __global__ void sum_squares_finish_f32(const __grid_constant__ SquaresTable table,
                                                  const double* partials, float* out) {
    sum_squares_finish<float>(table, partials, out);
}
extern "C" __global__ void sum_squares_finish_f64(const __grid_constant__ SquaresTable table,
                                                  const double* partials, double* out) {
    sum_squares_finish<double>(table, partials, out);
}
