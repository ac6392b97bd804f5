// Batched matrix product `[batch.., m, k] x [batch.., k, n] -> [batch.., m, n]`, operands read
// through their strides (transposed and broadcast views in place), the output contiguous.
// CPU reference: src/cpu/matmul.rs (one GEMM per batch entry, src/cpu/gemm.rs); the half types
// as the CPU's `widened`: each element converted to f32 exactly, f32 accumulation, one rounding
// on store.
//
// Version 1, the plain shared-memory tiled kernel: clear rather than fast (a later version
// adds tuned SIMT and tensor-core kernels).
//
// Launch shape: block (16, 16) = 256 threads; grid (ceil(n / 64), min(ceil(m / 64), 65535),
// min(batches, 65535)), the y and z loops covering any rest. Each block computes a 64 x 64
// tile of one batch entry's output, stepping through k 16 at a time: it stages a 64 x 16 tile
// of A and a 16 x 64 tile of B in shared memory (2 * 16 * 64 math-type elements: 8 KiB for
// f32, 16 KiB for f64), and each thread accumulates a 4 x 4 register block with FMA. Thread
// (tx, ty) owns rows ty + 16i and columns tx + 16j, so a warp's shared-memory reads of B and
// its stores of C touch consecutive addresses. Every load outside the matrix reads zero.

#define KILN_MATMUL_TILE 64
#define KILN_MATMUL_K_STEP 16
#define KILN_MATMUL_THREADS 256
#define KILN_MATMUL_PER_THREAD 4

// The sizes and in-matrix strides of one product (mirrors `MatmulArg` in src/cuda/matmul.rs);
// the batch entries' offsets come from the two Strided batch layouts.
struct MatmulShape {
    u64 m, n, k;
    u64 batches;
    u64 lhs_row_stride, lhs_col_stride;
    u64 rhs_row_stride, rhs_col_stride;
};

template <typename T>
__device__ void matmul(T* out, const T* lhs, const T* rhs, MatmulShape s, Strided lhs_batch,
                       Strided rhs_batch) {
    typedef typename MathOf<T>::type M;
    // a_tile[kk][row]: A transposed, so a thread reads its 4 rows' values for one kk from
    // one row of shared memory.
    __shared__ M a_tile[KILN_MATMUL_K_STEP][KILN_MATMUL_TILE];
    __shared__ M b_tile[KILN_MATMUL_K_STEP][KILN_MATMUL_TILE];
    const u32 tx = threadIdx.x, ty = threadIdx.y;
    const u32 thread = ty * 16 + tx;
    const u64 tiles_m = (s.m + KILN_MATMUL_TILE - 1) / KILN_MATMUL_TILE;
    const u64 col_base = (u64)blockIdx.x * KILN_MATMUL_TILE;

    for (u64 batch = blockIdx.z; batch < s.batches; batch += gridDim.z) {
        const T* a = lhs + strided_offset(lhs_batch, batch);
        const T* b = rhs + strided_offset(rhs_batch, batch);
        T* c = out + batch * s.m * s.n;
        for (u64 tile_m = blockIdx.y; tile_m < tiles_m; tile_m += gridDim.y) {
            const u64 row_base = tile_m * KILN_MATMUL_TILE;
            M acc[KILN_MATMUL_PER_THREAD][KILN_MATMUL_PER_THREAD];
            for (int i = 0; i < KILN_MATMUL_PER_THREAD; ++i)
                for (int j = 0; j < KILN_MATMUL_PER_THREAD; ++j) acc[i][j] = (M)0;

            for (u64 k_base = 0; k_base < s.k; k_base += KILN_MATMUL_K_STEP) {
                // Stage both tiles: 1024 elements each, 4 per thread. A's consecutive threads
                // step along k and B's along n, which is coalesced for row-major operands.
                for (u32 load = thread; load < KILN_MATMUL_TILE * KILN_MATMUL_K_STEP;
                     load += KILN_MATMUL_THREADS) {
                    u32 a_row = load / KILN_MATMUL_K_STEP, a_kk = load % KILN_MATMUL_K_STEP;
                    u64 row = row_base + a_row, kk = k_base + a_kk;
                    a_tile[a_kk][a_row] =
                        (row < s.m && kk < s.k)
                            ? to_math(a[row * s.lhs_row_stride + kk * s.lhs_col_stride])
                            : (M)0;
                    u32 b_kk = load / KILN_MATMUL_TILE, b_col = load % KILN_MATMUL_TILE;
                    u64 col = col_base + b_col, kb = k_base + b_kk;
                    b_tile[b_kk][b_col] =
                        (kb < s.k && col < s.n)
                            ? to_math(b[kb * s.rhs_row_stride + col * s.rhs_col_stride])
                            : (M)0;
                }
                __syncthreads();
                // Past k both tiles hold zeros, so the last step's padding adds 0 * 0 (never
                // 0 * inf); rows past m and columns past n are computed but not stored.
                for (int kk = 0; kk < KILN_MATMUL_K_STEP; ++kk) {
                    M a_values[KILN_MATMUL_PER_THREAD], b_values[KILN_MATMUL_PER_THREAD];
                    for (int i = 0; i < KILN_MATMUL_PER_THREAD; ++i)
                        a_values[i] = a_tile[kk][ty + 16 * i];
                    for (int j = 0; j < KILN_MATMUL_PER_THREAD; ++j)
                        b_values[j] = b_tile[kk][tx + 16 * j];
                    for (int i = 0; i < KILN_MATMUL_PER_THREAD; ++i)
                        for (int j = 0; j < KILN_MATMUL_PER_THREAD; ++j)
                            acc[i][j] = fma(a_values[i], b_values[j], acc[i][j]);
                }
                // The next step overwrites the tiles: everyone must be done reading them.
                __syncthreads();
            }

            for (int i = 0; i < KILN_MATMUL_PER_THREAD; ++i) {
                u64 row = row_base + ty + 16 * i;
                if (row >= s.m) continue;
                for (int j = 0; j < KILN_MATMUL_PER_THREAD; ++j) {
                    u64 col = col_base + tx + 16 * j;
                    if (col < s.n) c[row * s.n + col] = from_math<T>(acc[i][j]);
                }
            }
        }
    }
}

#define KILN_MATMUL(T, SUFFIX)                                                             \
    extern "C" __global__ void __launch_bounds__(KILN_MATMUL_THREADS)                     \
        matmul_##SUFFIX(T* out, const T* lhs, const T* rhs, MatmulShape shape,            \
                        Strided lhs_batch, Strided rhs_batch) {                           \
        matmul<T>(out, lhs, rhs, shape, lhs_batch, rhs_batch);                            \
    }

KILN_MATMUL(f16, f16)
KILN_MATMUL(bf16, bf16)
KILN_MATMUL(float, f32)
KILN_MATMUL(double, f64)
