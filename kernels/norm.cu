// Batch norm over x [N, C, *]: per-channel batch statistics, the normalising forward and the
// two passes of the training-mode backward. Host side: src/cuda/norm.rs; CPU references:
// src/cpu/norm.rs (named per kernel below).
//
// Channel c's `count` elements sit at x[base + c * channel_stride + strided_offset(reduced, j)]
// for j < count, `reduced` being x's layout without dim 1 (offset 0), as in reduce.cu. The
// per-channel kernels give each channel a group of `lanes` threads (1: a thread per channel,
// for many channels with few values each whose neighbours are neighbours in memory, as in
// BatchNorm1d's [64, 6272]; 32: a warp; 256: the whole block), and grid.y = `splits` blocks
// share a channel's elements when there are too few channels to fill the GPU (partials, then
// a join). Launch: 256-thread blocks, grid.x from launch_config_for(channels * lanes), each
// group looping over channels grid-stride; static shared memory only.
//
// batch_norm_stats_T       Welford's one-pass update per thread, merged over the group with
//                          Chan et al.'s pairwise formula (warp shuffles, then shared memory):
//                          mean and biased variance (M2 / count) in T, or with splits > 1
//                          partial (count, mean, M2) triples. Accumulates in f64 for every
//                          dtype: in host emulation of x = 1e4 + 1e-2·noise in f32, f32
//                          accumulators put the mean 0.14 standard deviations off and the
//                          variance up to 100% off (the running mean's rounding, 5e-4, is
//                          comparable to the spread), f64 ones agree with the CPU's exact two
//                          passes to the rounding of T. The kernel is memory-bound, so the f64
//                          arithmetic costs little on data-centre GPUs.
//                          Reference: cpu::norm::batch_norm_stats (two passes in f64).
// batch_norm_stats_join_T  a thread per channel merges its `splits` partials.
// batch_norm_forward_T     y = ((x - mean[c]) * invstd[c]) * weight[c] + bias[c] in the math
//                          type, one thread per element (grid-stride), each operation rounded
//                          once (_rn: no contraction), so it is the CPU's bit for bit.
//                          Reference: cpu::norm::batch_norm_forward.
// batch_norm_backward_reduce_T / batch_norm_backward_join_T
//                          per channel sum(dy) and sum(dy * xhat) in f64, to `sums[2c..2c+2]`
//                          and rounded to T as grad bias and grad weight (partials and a join
//                          when split). Reference: cpu::norm::batch_norm_backward's sums.
// batch_norm_backward_dx_T dx = (invstd * weight) * ((dy - mean(dy)) - xhat * mean(dy * xhat)),
//                          one thread per element, in the CPU's order (the CPU's sums are
//                          added in another order, so dx agrees to rounding, not bit for bit).

// A group of values' count, mean and sum of squared deviations from the mean.
template <typename A> struct Moments {
    A count;
    A mean;
    A m2;
};

// Welford's update with one more value.
template <typename A> __device__ __forceinline__ void welford_add(Moments<A>& m, A x) {
    m.count += (A)1;
    const A delta = x - m.mean;
    m.mean += delta / m.count;
    m.m2 += delta * (x - m.mean);
}

// Chan et al.'s merge of two groups' moments (either may be empty).
template <typename A> __device__ __forceinline__ Moments<A> welford_merge(Moments<A> a, Moments<A> b) {
    const A count = a.count + b.count;
    if (count == (A)0) return a;
    if (b.count == (A)0) return a;
    if (a.count == (A)0) return b;
    const A delta = b.mean - a.mean;
    const A b_share = b.count / count;
    Moments<A> r;
    r.count = count;
    r.mean = a.mean + delta * b_share;
    r.m2 = a.m2 + b.m2 + delta * delta * a.count * b_share;
    return r;
}

// `m` merged over the group of `lanes` threads (1, 32 or blockDim.x); the group's lane 0 gets
// the whole group's moments (other lanes hold partial merges). Every thread of the group must
// call it.
template <typename A> __device__ Moments<A> group_merge(Moments<A> m, u32 lanes) {
    if (lanes == 1) return m;
    for (int offset = 16; offset > 0; offset /= 2) {
        Moments<A> other;
        other.count = __shfl_xor_sync(0xffffffffu, m.count, offset);
        other.mean = __shfl_xor_sync(0xffffffffu, m.mean, offset);
        other.m2 = __shfl_xor_sync(0xffffffffu, m.m2, offset);
        m = welford_merge(m, other);
    }
    if (lanes == 32) return m;
    __shared__ A warp_moments[3][32];
    const u32 warps = blockDim.x / 32;
    __syncthreads();  // the previous channel's readers are done with warp_moments
    if (threadIdx.x % 32 == 0) {
        warp_moments[0][threadIdx.x / 32] = m.count;
        warp_moments[1][threadIdx.x / 32] = m.mean;
        warp_moments[2][threadIdx.x / 32] = m.m2;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < warps; ++w) {
            Moments<A> other;
            other.count = warp_moments[0][w];
            other.mean = warp_moments[1][w];
            other.m2 = warp_moments[2][w];
            m = welford_merge(m, other);
        }
    }
    return m;
}

// A sum of two f64 values over the group; lane 0 of the group gets the totals.
__device__ void group_sum2(double& a, double& b, u32 lanes) {
    if (lanes == 1) return;
    for (int offset = 16; offset > 0; offset /= 2) {
        a += __shfl_xor_sync(0xffffffffu, a, offset);
        b += __shfl_xor_sync(0xffffffffu, b, offset);
    }
    if (lanes == 32) return;
    __shared__ double warp_sums[2][32];
    const u32 warps = blockDim.x / 32;
    __syncthreads();
    if (threadIdx.x % 32 == 0) {
        warp_sums[0][threadIdx.x / 32] = a;
        warp_sums[1][threadIdx.x / 32] = b;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (u32 w = 1; w < warps; ++w) {
            a += warp_sums[0][w];
            b += warp_sums[1][w];
        }
    }
}

// The range [begin, end) of a channel's `count` elements that block row blockIdx.y of
// gridDim.y handles.
__device__ __forceinline__ void split_range(u64 count, u64& begin, u64& end) {
    const u64 chunk = (count + gridDim.y - 1) / gridDim.y;
    begin = min(count, (u64)blockIdx.y * chunk);
    end = min(count, begin + chunk);
}

template <typename T, typename A>
__device__ void batch_norm_stats(T* mean_out, T* var_out, A* partial, const T* x, u64 base,
                                 u64 channel_stride, const Strided& reduced, u64 channels,
                                 u64 count, u32 lanes) {
    const u32 lane = threadIdx.x % lanes;
    const u64 groups_per_block = blockDim.x / lanes;
    u64 begin, end;
    split_range(count, begin, end);
    // `c` is the same for all threads of a group, so whole groups enter group_merge.
    for (u64 c = blockIdx.x * groups_per_block + threadIdx.x / lanes; c < channels;
         c += (u64)gridDim.x * groups_per_block) {
        const T* channel = x + base + c * channel_stride;
        Moments<A> m = {(A)0, (A)0, (A)0};
        for (u64 j = begin + lane; j < end; j += lanes) {
            welford_add(m, (A)to_math(channel[strided_offset(reduced, j)]));
        }
        m = group_merge(m, lanes);
        if (lane != 0) continue;
        if (gridDim.y == 1) {
            mean_out[c] = from_math<T>(m.mean);
            var_out[c] = from_math<T>(m.m2 / m.count);
        } else {
            A* p = partial + (c * gridDim.y + blockIdx.y) * 3;
            p[0] = m.count;
            p[1] = m.mean;
            p[2] = m.m2;
        }
    }
}

template <typename T, typename A>
__device__ void batch_norm_stats_join(T* mean_out, T* var_out, const A* partial, u64 channels,
                                      u32 splits) {
    KILN_GRID_STRIDE(c, channels) {
        const A* p = partial + c * splits * 3;
        Moments<A> m = {p[0], p[1], p[2]};
        for (u32 s = 1; s < splits; ++s) {
            Moments<A> other = {p[3 * s], p[3 * s + 1], p[3 * s + 2]};
            m = welford_merge(m, other);
        }
        mean_out[c] = from_math<T>(m.mean);
        var_out[c] = from_math<T>(m.m2 / m.count);
    }
}

template <typename T>
__device__ void batch_norm_forward(T* y, const T* x, const Strided& layout, const T* mean,
                                   const T* invstd, const T* weight, const T* bias, u32 has_weight,
                                   u32 has_bias, u64 channels, u64 inner, u64 n) {
    typedef typename MathOf<T>::type M;
    KILN_GRID_STRIDE(i, n) {
        const u64 c = (i / inner) % channels;
        M v = mul_rn(sub_rn(to_math(x[strided_offset(layout, i)]), to_math(mean[c])),
                     to_math(invstd[c]));
        if (has_weight) v = mul_rn(v, to_math(weight[c]));
        if (has_bias) v = add_rn(v, to_math(bias[c]));
        y[i] = from_math<T>(v);
    }
}

template <typename T>
__device__ void batch_norm_backward_reduce(T* grad_weight, T* grad_bias, double* sums,
                                           const T* dy, u64 dy_base, u64 dy_channel_stride,
                                           const Strided& dy_reduced, const T* x, u64 x_base,
                                           u64 x_channel_stride, const Strided& x_reduced,
                                           const T* mean, const T* invstd, u64 channels,
                                           u64 count, u32 lanes) {
    typedef typename MathOf<T>::type M;
    const u32 lane = threadIdx.x % lanes;
    const u64 groups_per_block = blockDim.x / lanes;
    u64 begin, end;
    split_range(count, begin, end);
    for (u64 c = blockIdx.x * groups_per_block + threadIdx.x / lanes; c < channels;
         c += (u64)gridDim.x * groups_per_block) {
        const T* dy_channel = dy + dy_base + c * dy_channel_stride;
        const T* x_channel = x + x_base + c * x_channel_stride;
        const M m = to_math(mean[c]), s = to_math(invstd[c]);
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (u64 j = begin + lane; j < end; j += lanes) {
            const double g = (double)to_math(dy_channel[strided_offset(dy_reduced, j)]);
            const M xhat = mul_rn(sub_rn(to_math(x_channel[strided_offset(x_reduced, j)]), m), s);
            sum_dy += g;
            sum_dy_xhat += g * (double)xhat;
        }
        group_sum2(sum_dy, sum_dy_xhat, lanes);
        if (lane != 0) continue;
        if (gridDim.y == 1) {
            sums[2 * c] = sum_dy;
            sums[2 * c + 1] = sum_dy_xhat;
            grad_bias[c] = from_math<T>((M)sum_dy);
            grad_weight[c] = from_math<T>((M)sum_dy_xhat);
        } else {
            double* p = sums + (c * gridDim.y + blockIdx.y) * 2;
            p[0] = sum_dy;
            p[1] = sum_dy_xhat;
        }
    }
}

template <typename T>
__device__ void batch_norm_backward_join(T* grad_weight, T* grad_bias, double* sums,
                                         const double* partial, u64 channels, u32 splits) {
    typedef typename MathOf<T>::type M;
    KILN_GRID_STRIDE(c, channels) {
        double sum_dy = 0.0, sum_dy_xhat = 0.0;
        for (u32 s = 0; s < splits; ++s) {
            sum_dy += partial[(c * splits + s) * 2];
            sum_dy_xhat += partial[(c * splits + s) * 2 + 1];
        }
        sums[2 * c] = sum_dy;
        sums[2 * c + 1] = sum_dy_xhat;
        grad_bias[c] = from_math<T>((M)sum_dy);
        grad_weight[c] = from_math<T>((M)sum_dy_xhat);
    }
}

template <typename T>
__device__ void batch_norm_backward_dx(T* dx, const T* dy, const Strided& dy_layout, const T* x,
                                       const Strided& x_layout, const T* mean, const T* invstd,
                                       const T* weight, u32 has_weight, const double* sums,
                                       u64 channels, u64 inner, double count, u64 n) {
    typedef typename MathOf<T>::type M;
    KILN_GRID_STRIDE(i, n) {
        const u64 c = (i / inner) % channels;
        const M m = to_math(mean[c]), s = to_math(invstd[c]);
        const M scale = has_weight ? mul_rn(s, to_math(weight[c])) : s;
        const M mean_dy = (M)(sums[2 * c] / count);
        const M mean_dy_xhat = (M)(sums[2 * c + 1] / count);
        const M xhat = mul_rn(sub_rn(to_math(x[strided_offset(x_layout, i)]), m), s);
        const M g = to_math(dy[strided_offset(dy_layout, i)]);
        dx[i] = from_math<T>(mul_rn(scale, sub_rn(sub_rn(g, mean_dy), mul_rn(xhat, mean_dy_xhat))));
    }
}

#define KILN_NORM_KERNELS(T, A, SUFFIX)                                                          \
    extern "C" __global__ void batch_norm_stats_##SUFFIX(                                       \
        T* mean_out, T* var_out, A* partial, const T* x, u64 base, u64 channel_stride,          \
        Strided reduced, u64 channels, u64 count, u32 lanes) {                                  \
        batch_norm_stats<T, A>(mean_out, var_out, partial, x, base, channel_stride, reduced,    \
                               channels, count, lanes);                                         \
    }                                                                                           \
    extern "C" __global__ void batch_norm_stats_join_##SUFFIX(                                  \
        T* mean_out, T* var_out, const A* partial, u64 channels, u32 splits) {                  \
        batch_norm_stats_join<T, A>(mean_out, var_out, partial, channels, splits);              \
    }                                                                                           \
    extern "C" __global__ void batch_norm_forward_##SUFFIX(                                     \
        T* y, const T* x, Strided layout, const T* mean, const T* invstd, const T* weight,      \
        const T* bias, u32 has_weight, u32 has_bias, u64 channels, u64 inner, u64 n) {          \
        batch_norm_forward<T>(y, x, layout, mean, invstd, weight, bias, has_weight, has_bias,   \
                              channels, inner, n);                                              \
    }                                                                                           \
    extern "C" __global__ void batch_norm_backward_reduce_##SUFFIX(                             \
        T* grad_weight, T* grad_bias, double* sums, const T* dy, u64 dy_base,                   \
        u64 dy_channel_stride, Strided dy_reduced, const T* x, u64 x_base,                      \
        u64 x_channel_stride, Strided x_reduced, const T* mean, const T* invstd, u64 channels,  \
        u64 count, u32 lanes) {                                                                 \
        batch_norm_backward_reduce<T>(grad_weight, grad_bias, sums, dy, dy_base,                \
                                      dy_channel_stride, dy_reduced, x, x_base,                 \
                                      x_channel_stride, x_reduced, mean, invstd, channels,      \
                                      count, lanes);                                            \
    }                                                                                           \
    extern "C" __global__ void batch_norm_backward_join_##SUFFIX(                               \
        T* grad_weight, T* grad_bias, double* sums, const double* partial, u64 channels,        \
        u32 splits) {                                                                           \
        batch_norm_backward_join<T>(grad_weight, grad_bias, sums, partial, channels, splits);   \
    }                                                                                           \
    extern "C" __global__ void batch_norm_backward_dx_##SUFFIX(                                 \
        T* dx, const T* dy, Strided dy_layout, const T* x, Strided x_layout, const T* mean,     \
        const T* invstd, const T* weight, u32 has_weight, const double* sums, u64 channels,     \
        u64 inner, double count, u64 n) {                                                       \
        batch_norm_backward_dx<T>(dx, dy, dy_layout, x, x_layout, mean, invstd, weight,         \
                                  has_weight, sums, channels, inner, count, n);                 \
    }

KILN_NORM_KERNELS(f16, double, f16)
KILN_NORM_KERNELS(bf16, double, bf16)
KILN_NORM_KERNELS(float, double, f32)
KILN_NORM_KERNELS(double, double, f64)
