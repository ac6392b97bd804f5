// Concatenation and indexing: a strided copy (cat), index_select / gather, and
// index_add / scatter_add. CPU references: src/cpu/index.rs (`cat`, `index_select`, `gather`,
// `index_add`, `scatter_add`) and the index check `CpuStorage::indices` in src/cpu/mod.rs;
// host side: src/cuda/index.rs.
//
// Every kernel is a grid-stride loop over n elements (256-thread blocks, grid from
// `launch_config_for(n)`, no shared memory).
//
// copy_T              out[dst(i)] = input[src(i)]: one part of a cat into its slab.
// select_T            out[i] = input[positions(i) + index[which(i)] * dim_stride], with
//                     which(i) = (i / inner) % index_len: index_select (inner = the size of
//                     the dims after `dim`, index_len = the index's length) and gather
//                     (inner = 1, index_len = n, so which(i) = i).
// check_indices       records the first index >= size (for launches with no output to make).
//
// Indices are checked where they are read, without a host synchronisation: an index >= size
// reads as zero (select) or adds nowhere (add_at), and the launch records the first one in the
// device's fault record (src/cuda/faults.rs), which the host reads at its next readback and
// turns into the CPU's IndexOutOfRange error.
// to_accumulator_T    acc[i] = input[layout(i)] in the math type (the copy of self that
//                     index_add and scatter_add add into).
// add_at_T            acc[targets(i) + index[which(i)] * dim_stride] += source[i], by atomicAdd
//                     on the f32 / f64 accumulator: index_add and scatter_add. The order of
//                     the additions into one slot is whatever the atomics make it (the CPU
//                     adds in index order), so repeated indices can round differently from run
//                     to run.
// from_accumulator_T  out[i] = acc[i] rounded to T (f16, bf16; f32 and f64 accumulate in
//                     place): one rounding at the end, as on the CPU.

// fault[0] is the sequence number of the first launch that found a bad index (0: none yet);
// within that launch fault[1] becomes the smallest position << 32 | index, so the host names
// the same offending index as the CPU's left-to-right check. Later launches leave it alone.
__device__ __forceinline__ void record_index_fault(u64* fault, u64 sequence, u64 position,
                                                   u32 index) {
    const u64 owner = atomicCAS(&fault[0], 0ull, sequence);
    if (owner == 0 || owner == sequence) atomicMin(&fault[1], (position << 32) | index);
}

template <typename T>
__device__ void copy_elements(T* out, const T* input, const Strided& src, const Strided& dst,
                              u64 n) {
    KILN_GRID_STRIDE(i, n) { out[strided_offset(dst, i)] = input[strided_offset(src, i)]; }
}

template <typename T>
__device__ void select_elements(T* out, const T* input, const Strided& positions,
                                u64 dim_stride, const u32* index, const Strided& index_layout,
                                u64 inner, u64 index_len, u64 size, u64 sequence, u64* fault,
                                u64 n) {
    KILN_GRID_STRIDE(i, n) {
        const u64 which = (i / inner) % index_len;
        const u32 at = index[strided_offset(index_layout, which)];
        if (at < size) {
            out[i] = input[strided_offset(positions, i) + (u64)at * dim_stride];
        } else {
            out[i] = T();
            record_index_fault(fault, sequence, which, at);
        }
    }
}

#define ANY_DTYPE_KERNELS(T, SUFFIX)                                                           \
    extern "C" __global__ void copy_##SUFFIX(T* out, const T* input, Strided src,              \
                                             Strided dst, u64 n) {                             \
        copy_elements<T>(out, input, src, dst, n);                                             \
    }                                                                                          \
    extern "C" __global__ void select_##SUFFIX(T* out, const T* input, Strided positions,      \
                                               u64 dim_stride, const u32* index,               \
                                               Strided index_layout, u64 inner,                \
                                               u64 index_len, u64 size, u64 sequence,          \
                                               u64* fault, u64 n) {                            \
        select_elements<T>(out, input, positions, dim_stride, index, index_layout, inner,      \
                           index_len, size, sequence, fault, n);                               \
    }

ANY_DTYPE_KERNELS(u8, u8)
ANY_DTYPE_KERNELS(u32, u32)
ANY_DTYPE_KERNELS(f16, f16)
ANY_DTYPE_KERNELS(bf16, bf16)
ANY_DTYPE_KERNELS(float, f32)
ANY_DTYPE_KERNELS(double, f64)

extern "C" __global__ void check_indices(const u32* index, Strided layout, u64 n, u64 size,
                                         u64 sequence, u64* fault) {
    KILN_GRID_STRIDE(i, n) {
        const u32 at = index[strided_offset(layout, i)];
        if (at >= size) record_index_fault(fault, sequence, i, at);
    }
}

template <typename T>
__device__ void add_at(typename MathOf<T>::type* acc, const T* source,
                       const Strided& source_layout, const Strided& targets, u64 dim_stride,
                       const u32* index, const Strided& index_layout, u64 inner,
                       u64 index_len, u64 size, u64 sequence, u64* fault, u64 n) {
    KILN_GRID_STRIDE(i, n) {
        const u64 which = (i / inner) % index_len;
        const u32 at = index[strided_offset(index_layout, which)];
        if (at < size) {
            atomicAdd(&acc[strided_offset(targets, i) + (u64)at * dim_stride],
                      to_math(source[strided_offset(source_layout, i)]));
        } else {
            record_index_fault(fault, sequence, which, at);
        }
    }
}

#define FLOAT_KERNELS(T, SUFFIX)                                                               \
    extern "C" __global__ void to_accumulator_##SUFFIX(MathOf<T>::type* acc, const T* input,   \
                                                       Strided layout, u64 n) {                \
        KILN_GRID_STRIDE(i, n) { acc[i] = to_math(input[strided_offset(layout, i)]); }         \
    }                                                                                          \
    extern "C" __global__ void add_at_##SUFFIX(MathOf<T>::type* acc, const T* source,          \
                                               Strided source_layout, Strided targets,         \
                                               u64 dim_stride, const u32* index,               \
                                               Strided index_layout, u64 inner,                \
                                               u64 index_len, u64 size, u64 sequence,          \
                                               u64* fault, u64 n) {                            \
        add_at<T>(acc, source, source_layout, targets, dim_stride, index, index_layout, inner, \
                  index_len, size, sequence, fault, n);                                        \
    }

FLOAT_KERNELS(f16, f16)
FLOAT_KERNELS(bf16, bf16)
FLOAT_KERNELS(float, f32)
FLOAT_KERNELS(double, f64)

#define FROM_ACCUMULATOR_KERNEL(T, SUFFIX)                                                    \
    extern "C" __global__ void from_accumulator_##SUFFIX(T* out, const float* acc, u64 n) {   \
        KILN_GRID_STRIDE(i, n) { out[i] = from_math<T>(acc[i]); }                             \
    }

FROM_ACCUMULATOR_KERNEL(f16, f16)
FROM_ACCUMULATOR_KERNEL(bf16, bf16)
