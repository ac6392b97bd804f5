// Reductions (sum, max over any set of dims) and softmax / log-softmax along one dim.
// CPU references: src/cpu/reduce.rs `reduce` and `softmax`; host side: src/cuda/reduce.rs.
//
// Both work on "groups": `lanes` threads (1, 32 = a warp, or 256 = the whole block) own one
// output (or one softmax row) at a time, stride through its elements, and combine their
// partial results with warp shuffles (plus shared memory across the warps of a block).
// Launch: 256-thread blocks, grid.x from `launch_config_for(outputs * lanes)`, each group
// looping over outputs grid-stride; no dynamic shared memory.
//
// sum_T / max_T           one pass: out[o] (T) = the reduction of output o's elements.
// sum_split_T / max_split_T, then sum_join_T / max_join_T
//                         two passes for few, long reductions: grid.y = splits blocks share
//                         each output, writing partial[o * splits + s] in the accumulator
//                         type; the join reduces each output's `splits` partials to T.
// softmax_T / log_softmax_T
//                         one row a group: max, then sum of exp(x - max), then the outputs.
//
// Numerics. Sums accumulate in f64 for every dtype (each thread's run, the shuffles, the
// partials), then round to f32 and, for the half types, to T, as the CPU does
// (`T::from_math(T::math_from_f64(s))`). The CPU's cascade adds blocks of 1024 in the math type
// first, so this is at least as accurate, and the two differ by the CPU's rounding error.
// Max is exact; NaN wins as on the CPU (`max_or_nan`), and an empty reduction gives -inf
// (sum: 0). Ties of -0 and +0 may pick either zero (the CPU keeps the first it sees).
// Softmax works in the math type (f32 for the half types) like the CPU, but sums the
// exponentials as a tree rather than left to right.

// ---- combining operators: Acc the accumulator type, identity, combine ----

template <typename A> __device__ __forceinline__ A negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() {
    return __int_as_float(0xff800000);
}
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000LL);
}

// Sum in f64 whatever the element type.
struct SumOp {
    typedef double Acc;
    static __device__ __forceinline__ Acc identity() { return 0.0; }
    static __device__ __forceinline__ Acc combine(Acc a, Acc b) { return a + b; }
};

// The larger value, NaN if either is NaN: the CPU's `max_or_nan` (a NaN accumulator is kept,
// a NaN element replaces the accumulator).
template <typename A> struct MaxOp {
    typedef A Acc;
    static __device__ __forceinline__ Acc identity() { return negative_infinity<A>(); }
    static __device__ __forceinline__ Acc combine(Acc a, Acc b) {
        if (a != a) return a;
        return (b > a || b != b) ? b : a;
    }
};

// The larger value ignoring NaN, as Rust's `f32::max` in the CPU softmax's row max.
template <typename A> struct MaxIgnoringNanOp {
    typedef A Acc;
    static __device__ __forceinline__ Acc identity() { return negative_infinity<A>(); }
    static __device__ __forceinline__ Acc combine(Acc a, Acc b) { return fmax(a, b); }
};

// Sum in the math type (the softmax denominator).
template <typename A> struct AddOp {
    typedef A Acc;
    static __device__ __forceinline__ Acc identity() { return (A)0; }
    static __device__ __forceinline__ Acc combine(Acc a, Acc b) { return a + b; }
};

// `value` combined over the group of `lanes` threads (1, 32, or blockDim.x) it belongs to; every
// thread of the group returns the same bits. A butterfly (xor) shuffle gives each lane the
// full result, and since each step combines the same two values in both lanes of a pair
// (combine is commutative), all lanes agree exactly. Every thread of the group must call it.
template <typename Op>
__device__ typename Op::Acc group_combine(typename Op::Acc value, u32 lanes) {
    typedef typename Op::Acc Acc;
    if (lanes == 1) return value;
    for (int offset = 16; offset > 0; offset /= 2) {
        value = Op::combine(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
    if (lanes == 32) return value;
    __shared__ Acc warp_results[32];
    u32 warps = blockDim.x / 32;
    __syncthreads();  // the previous call's readers are done with warp_results
    if (threadIdx.x % 32 == 0) warp_results[threadIdx.x / 32] = value;
    __syncthreads();
    value = warp_results[0];
    for (u32 w = 1; w < warps; ++w) value = Op::combine(value, warp_results[w]);
    return value;
}

// out[o * gridDim.y + blockIdx.y] = the reduction of this block's share (blockIdx.y of
// gridDim.y equal chunks) of output o's `count` elements, which sit at
// strided_offset(kept, o) + strided_offset(reduced, j) for j < count (`reduced` has offset 0).
template <typename In, typename Out, typename Op>
__device__ void reduce_groups(Out* out, const In* input, const Strided& kept,
                              const Strided& reduced, u64 outputs, u64 count, u32 lanes) {
    typedef typename Op::Acc Acc;
    const u32 lane = threadIdx.x % lanes;
    const u64 groups_per_block = blockDim.x / lanes;
    const u64 group_stride = (u64)gridDim.x * groups_per_block;
    const u64 chunk = (count + gridDim.y - 1) / gridDim.y;
    const u64 begin = min(count, (u64)blockIdx.y * chunk);
    const u64 end = min(count, begin + chunk);
    // `o` is the same for all threads of a group, so whole groups enter group_combine.
    for (u64 o = blockIdx.x * groups_per_block + threadIdx.x / lanes; o < outputs;
         o += group_stride) {
        const u64 base = strided_offset(kept, o);
        Acc acc = Op::identity();
        for (u64 j = begin + lane; j < end; j += lanes) {
            acc = Op::combine(acc, (Acc)to_math(input[base + strided_offset(reduced, j)]));
        }
        acc = group_combine<Op>(acc, lanes);
        if (lane == 0) {
            out[o * gridDim.y + blockIdx.y] = from_math<Out>((typename MathOf<Out>::type)acc);
        }
    }
}

#define REDUCE_KERNELS(NAME, OP, T, SUFFIX)                                                    \
    extern "C" __global__ void NAME##_##SUFFIX(T* out, const T* input, Strided kept,           \
                                               Strided reduced, u64 outputs, u64 count,        \
                                               u32 lanes) {                                    \
        reduce_groups<T, T, OP>(out, input, kept, reduced, outputs, count, lanes);             \
    }                                                                                          \
    extern "C" __global__ void NAME##_split_##SUFFIX(OP::Acc* partial, const T* input,         \
                                                     Strided kept, Strided reduced,            \
                                                     u64 outputs, u64 count, u32 lanes) {      \
        reduce_groups<T, OP::Acc, OP>(partial, input, kept, reduced, outputs, count, lanes);   \
    }                                                                                          \
    extern "C" __global__ void NAME##_join_##SUFFIX(T* out, const OP::Acc* partial,            \
                                                    Strided kept, Strided reduced,             \
                                                    u64 outputs, u64 count, u32 lanes) {       \
        reduce_groups<OP::Acc, T, OP>(out, partial, kept, reduced, outputs, count, lanes);     \
    }

#define REDUCE_KERNELS_FOR(T, SUFFIX)                                 \
    REDUCE_KERNELS(sum, SumOp, T, SUFFIX)                             \
    REDUCE_KERNELS(max, MaxOp<MathOf<T>::type>, T, SUFFIX)

REDUCE_KERNELS_FOR(f16, f16)
REDUCE_KERNELS_FOR(bf16, bf16)
REDUCE_KERNELS_FOR(float, f32)
REDUCE_KERNELS_FOR(double, f64)

// ---- softmax ----

__device__ __forceinline__ float math_exp(float x) { return expf(x); }
__device__ __forceinline__ double math_exp(double x) { return exp(x); }
__device__ __forceinline__ float math_log(float x) { return logf(x); }
__device__ __forceinline__ double math_log(double x) { return log(x); }

// Softmax (or log-softmax) of each of `rows` rows of `row_len` elements: row r's element k is
// input[strided_offset(in_rows, r) + k * in_stride] and goes to
// out[strided_offset(out_rows, r) + k * out_stride]. The formula is the CPU's: shift by the
// row max (0 if the max is not finite, so a row of -inf gives NaN-free output as there),
// sum exp(x - shift), then exp(x - shift) / sum or (x - shift) - ln(sum).
template <typename T>
__device__ void softmax_rows(T* out, const T* input, const Strided& in_rows, u64 in_stride,
                             const Strided& out_rows, u64 out_stride, u64 rows, u64 row_len,
                             u32 lanes, bool log) {
    typedef typename MathOf<T>::type M;
    const u32 lane = threadIdx.x % lanes;
    const u64 groups_per_block = blockDim.x / lanes;
    const u64 group_stride = (u64)gridDim.x * groups_per_block;
    for (u64 r = blockIdx.x * groups_per_block + threadIdx.x / lanes; r < rows;
         r += group_stride) {
        const T* row = input + strided_offset(in_rows, r);
        T* out_row = out + strided_offset(out_rows, r);
        M max = negative_infinity<M>();
        for (u64 k = lane; k < row_len; k += lanes) max = fmax(max, to_math(row[k * in_stride]));
        max = group_combine<MaxIgnoringNanOp<M> >(max, lanes);
        const M shift = (max - max == (M)0) ? max : (M)0;  // finite max, else 0
        M sum = 0;
        for (u64 k = lane; k < row_len; k += lanes) {
            sum += math_exp(to_math(row[k * in_stride]) - shift);
        }
        sum = group_combine<AddOp<M> >(sum, lanes);
        if (log) {
            // (x - shift) - ln(sum), not x - (ln(sum) + shift): see the CPU reference.
            const M log_sum = math_log(sum);
            for (u64 k = lane; k < row_len; k += lanes) {
                out_row[k * out_stride] = from_math<T>((to_math(row[k * in_stride]) - shift) - log_sum);
            }
        } else {
            for (u64 k = lane; k < row_len; k += lanes) {
                out_row[k * out_stride] = from_math<T>(math_exp(to_math(row[k * in_stride]) - shift) / sum);
            }
        }
    }
}

#define SOFTMAX_KERNELS(T, SUFFIX)                                                             \
    extern "C" __global__ void softmax_##SUFFIX(T* out, const T* input, Strided in_rows,       \
                                                u64 in_stride, Strided out_rows,               \
                                                u64 out_stride, u64 rows, u64 row_len,         \
                                                u32 lanes) {                                   \
        softmax_rows<T>(out, input, in_rows, in_stride, out_rows, out_stride, rows, row_len,   \
                        lanes, false);                                                         \
    }                                                                                          \
    extern "C" __global__ void log_softmax_##SUFFIX(T* out, const T* input, Strided in_rows,   \
                                                    u64 in_stride, Strided out_rows,           \
                                                    u64 out_stride, u64 rows, u64 row_len,     \
                                                    u32 lanes) {                               \
        softmax_rows<T>(out, input, in_rows, in_stride, out_rows, out_stride, rows, row_len,   \
                        lanes, true);                                                          \
    }

SOFTMAX_KERNELS(f16, f16)
SOFTMAX_KERNELS(bf16, bf16)
SOFTMAX_KERNELS(float, f32)
SOFTMAX_KERNELS(double, f64)
