// FP32 SIMT GEMM: out[b][i][j] = act(sum_k A_b[i][k] * B_b[k][j] + bias[j]), f32 operands read
// through their strides, f32 accumulation with FMA, out contiguous [batches, m, n]. Host side
// and the choice of configuration: src/cuda/gemm.rs. CPU reference: src/cpu/gemm.rs (the
// product), then cpu::elementwise's add and unary op (the epilogue).
//
// Design (after Simon Boehm's "How to optimize a CUDA matmul kernel" and CUTLASS's SIMT GEMM):
// - A block computes a BM x BN output tile, stepping through k BK at a time. Both operand tiles
//   are staged in shared memory k-major (a_tile[kk][row], b_tile[kk][col]), so the inner loop
//   reads float4s along m and along n. A row-major A (contiguous along k) is transposed on its
//   way in; a transposed A goes straight in. B likewise the other way round.
// - Double buffering: while a block computes from one shared buffer, its threads hold the next
//   k tile's global loads in registers and store them into the other buffer afterwards, so one
//   __syncthreads per k step and global latency hides behind the FMAs.
// - Warp tiling: the block's warps each own a WM x WN part of the tile; a warp's 32 lanes are a
//   (WM / TM) x (WN / TN) grid, and lane (r, c) owns TM x TN outputs as (TM / 4) x (TN / 4)
//   blocks of 4 x 4, the 4 x 4 blocks of neighbouring lanes adjacent. A warp's reads of one kk
//   row of a tile are then a few distinct float4s (broadcast to the lanes sharing them): no
//   bank conflicts; the tiles' rows are padded by 4 floats, which keeps float4 alignment and
//   spreads the transposing stores over more banks.
// - Global loads are float4 (16 bytes) where the operand allows it (flag per operand, decided
//   on the host: unit stride along the vector, 16-byte aligned start of every row and batch
//   entry), otherwise four predicated scalar loads; every element outside the matrix reads 0,
//   so no load leaves the operand for any m, n, k.
// - Split-K: blockIdx.z also counts k slices; each slice's raw partial tile goes to a f32
//   workspace [splits, batches, m, n] and gemm_split_k_reduce sums the slices in a fixed order
//   (deterministic, no atomics) and applies the epilogue once.
//
// Launch shape (kernels gemm_f32_<config>_a<k|m>_b<n|k>): block THREADS (1-D); grid
// (ceil(n / BN), min(ceil(m / BM), 65535), min(batches * splits, 65535)), the y and z loops
// covering any rest; static shared memory 2 * BK * (BM + 4 + BN + 4) floats. `_ak`: A is
// contiguous along k (row-major), `_am`: along m (transposed); `_bn`: B contiguous along n
// (row-major), `_bk`: along k (transposed). Configurations:
//   large   128 x 128 x 16, 256 threads (8 warps of 32 x 64, 8 x 8 per thread)
//   medium   64 x  64 x 16, 128 threads (4 warps of 32 x 32, 8 x 4 per thread)
//   small    32 x  64 x 16, 128 threads (4 warps of 16 x 32, 4 x 4 per thread)
// gemm_split_k_reduce: 1-D grid-stride over batches * m * n (src/cuda/mod.rs launch_config_for).

// The sizes, strides and options of one launch (mirrors `GemmArg` in src/cuda/gemm.rs).
struct GemmArg {
    u64 m, n, k;
    u64 batches;
    u64 a_row_stride, a_col_stride;
    u64 b_row_stride, b_col_stride;
    // Each k slice's length (a multiple of the tile's BK), and how many slices: 1 unless split.
    u64 k_per_split;
    u64 splits;
    // 1: load this operand with float4s (see the header).
    u32 a_vector, b_vector;
    // 1: apply the epilogue and store to out; 0: store the raw partial sums (split-K).
    u32 epilogue;
    // 0 identity, 1 relu, 2 leaky relu (by `slope`), 3 tanh, 4 sigmoid (kiln's Activation).
    u32 activation;
    float slope;
};

struct alignas(16) Float4 { float x, y, z, w; };


// bias add with its own rounding (no FMA contraction with the product's last step), so the
// result is the CPU's matmul -> add -> activation on the same sum.
__device__ __forceinline__ float gemm_finish(float sum, const float* bias, u64 col, const GemmArg& s) {
    if (bias) sum = __fadd_rn(sum, bias[col]);
    return s.activation ? kiln_activate(sum, s.activation, s.slope) : sum;
}

// One operand's k tile: a ROWS x BK (A) or BK x COLS (B) piece of a matrix, read as groups of 4
// consecutive elements along the operand's contiguous dimension. `outer` is the dimension the
// tile spans (m for A, n for B), `outer_stride` / `k_stride` the element strides along it and
// along k. ALONG_K: the groups run along k (A row-major, B transposed); otherwise along outer.
template <int OUTER, int BK, int THREADS, bool ALONG_K>
struct TileLoader {
    static constexpr int GROUPS = OUTER * BK / 4;
    static_assert(GROUPS % THREADS == 0, "every thread loads the same number of float4 groups");
    static constexpr int PER_THREAD = GROUPS / THREADS;
    static constexpr int PAD = OUTER + 4;

    Float4 staged[PER_THREAD];

    // Consecutive threads take consecutive groups along the contiguous dimension, so a warp's
    // loads are coalesced.
    __device__ __forceinline__ void group_position(int g, int& outer_index, int& k_index) const {
        if (ALONG_K) {
            outer_index = g / (BK / 4);
            k_index = (g % (BK / 4)) * 4;
        } else {
            k_index = g / (OUTER / 4);
            outer_index = (g % (OUTER / 4)) * 4;
        }
    }

    // Per tile: where each of this thread's groups starts at k = 0, and whether it lies inside
    // the matrix across the vector direction (ALONG_K: its row of A / column of B).
    const float* start[PER_THREAD];
    u64 outer_first[PER_THREAD];

    __device__ __forceinline__ void begin(const float* base, u64 outer_base, u64 outer_stride) {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            int outer_index, k_index;
            group_position((int)threadIdx.x + p * THREADS, outer_index, k_index);
            outer_first[p] = outer_base + outer_index;
            start[p] = base + outer_first[p] * outer_stride;
        }
    }

    __device__ __forceinline__ void load(u64 outer_size, u64 k_base, u64 k_end, u64 outer_stride,
                                         u64 k_stride, bool vector) {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            int outer_index, k_index;
            group_position((int)threadIdx.x + p * THREADS, outer_index, k_index);
            const u64 outer = outer_first[p], kk = k_base + k_index;
            const float* at = start[p] + kk * k_stride;
            float v[4];
            const u64 along_end = ALONG_K ? k_end : outer_size;
            const u64 along = ALONG_K ? kk : outer;
            const bool across_inside = ALONG_K ? outer < outer_size : kk < k_end;
            if (vector && across_inside && along + 3 < along_end) {
                const Float4 q = *reinterpret_cast<const Float4*>(at);
                v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const bool inside = ALONG_K ? outer < outer_size && kk + e < k_end
                                                : outer + e < outer_size && kk < k_end;
                    v[e] = inside ? at[ALONG_K ? e * k_stride : e * outer_stride] : 0.0f;
                }
            }
            staged[p].x = v[0]; staged[p].y = v[1]; staged[p].z = v[2]; staged[p].w = v[3];
        }
    }

    // Into tile[kk][outer]: transposed (four scalar stores) when the groups run along k.
    __device__ __forceinline__ void store(float (*tile)[PAD]) const {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            int outer_index, k_index;
            group_position((int)threadIdx.x + p * THREADS, outer_index, k_index);
            if (ALONG_K) {
                tile[k_index + 0][outer_index] = staged[p].x;
                tile[k_index + 1][outer_index] = staged[p].y;
                tile[k_index + 2][outer_index] = staged[p].z;
                tile[k_index + 3][outer_index] = staged[p].w;
            } else {
                *reinterpret_cast<Float4*>(&tile[k_index][outer_index]) = staged[p];
            }
        }
    }
};

template <int BM, int BN, int BK, int WM, int WN, int TM, int TN, int THREADS, bool A_ALONG_K,
          bool B_ALONG_K>
__device__ void gemm_f32(float* out, const float* lhs, const float* rhs, const float* bias,
                         GemmArg s, Strided a_batch, Strided b_batch) {
    constexpr int LANE_ROWS = WM / TM, LANE_COLS = WN / TN;
    constexpr int WARPS_N = BN / WN;
    static_assert(LANE_ROWS * LANE_COLS == 32, "a warp's lanes tile its WM x WN part");
    static_assert((BM / WM) * (BN / WN) * 32 == THREADS, "the warps tile the block");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "per-thread blocks are made of 4 x 4 blocks");
    // Distance between a lane's 4 x 4 blocks: the lanes' blocks interleave.
    constexpr int STEP_M = LANE_ROWS * 4, STEP_N = LANE_COLS * 4;

    // 16-byte aligned for the float4 accesses (a float array alone only promises 4).
    __shared__ __align__(16) float a_tiles[2][BK][BM + 4];
    __shared__ __align__(16) float b_tiles[2][BK][BN + 4];
    TileLoader<BM, BK, THREADS, A_ALONG_K> a_loader;
    TileLoader<BN, BK, THREADS, B_ALONG_K> b_loader;

    const int warp = (int)threadIdx.x / 32, lane = (int)threadIdx.x % 32;
    const int warp_m = (warp / WARPS_N) * WM, warp_n = (warp % WARPS_N) * WN;
    const int lane_m = (lane / LANE_COLS) * 4, lane_n = (lane % LANE_COLS) * 4;
    const u64 tiles_m = (s.m + BM - 1) / BM;
    const u64 col_base = (u64)blockIdx.x * BN;
    const bool vector_store = s.n % 4 == 0;

    for (u64 z = blockIdx.z; z < s.batches * s.splits; z += gridDim.z) {
        const u64 batch = z % s.batches, split = z / s.batches;
        const float* a = lhs + strided_offset(a_batch, batch);
        const float* b = rhs + strided_offset(b_batch, batch);
        const u64 k_begin = split * s.k_per_split;
        const u64 k_end = k_begin + s.k_per_split < s.k ? k_begin + s.k_per_split : s.k;
        const u64 steps = (k_end - k_begin + BK - 1) / BK;
        float* c = out + (split * s.batches + batch) * s.m * s.n;
        for (u64 tile_m = blockIdx.y; tile_m < tiles_m; tile_m += gridDim.y) {
            const u64 row_base = tile_m * BM;
            float acc[TM][TN];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

            // Past k both tiles hold zeros, so padding adds 0 * 0 (never 0 * inf); rows past m
            // and columns past n are computed but not stored.
            a_loader.begin(a, row_base, s.a_row_stride);
            b_loader.begin(b, col_base, s.b_col_stride);
            a_loader.load(s.m, k_begin, k_end, s.a_row_stride, s.a_col_stride, s.a_vector);
            b_loader.load(s.n, k_begin, k_end, s.b_col_stride, s.b_row_stride, s.b_vector);
            a_loader.store(a_tiles[0]);
            b_loader.store(b_tiles[0]);
            __syncthreads();
            for (u64 step = 0; step < steps; ++step) {
                const int buffer = (int)(step & 1);
                const bool more = step + 1 < steps;
                if (more) {
                    const u64 k_next = k_begin + (step + 1) * BK;
                    a_loader.load(s.m, k_next, k_end, s.a_row_stride, s.a_col_stride,
                                  s.a_vector);
                    b_loader.load(s.n, k_next, k_end, s.b_col_stride, s.b_row_stride,
                                  s.b_vector);
                }
#pragma unroll
                for (int kk = 0; kk < BK; ++kk) {
                    float a_values[TM], b_values[TN];
#pragma unroll
                    for (int i = 0; i < TM / 4; ++i) {
                        const Float4 q = *reinterpret_cast<const Float4*>(
                            &a_tiles[buffer][kk][warp_m + i * STEP_M + lane_m]);
                        a_values[4 * i] = q.x; a_values[4 * i + 1] = q.y;
                        a_values[4 * i + 2] = q.z; a_values[4 * i + 3] = q.w;
                    }
#pragma unroll
                    for (int j = 0; j < TN / 4; ++j) {
                        const Float4 q = *reinterpret_cast<const Float4*>(
                            &b_tiles[buffer][kk][warp_n + j * STEP_N + lane_n]);
                        b_values[4 * j] = q.x; b_values[4 * j + 1] = q.y;
                        b_values[4 * j + 2] = q.z; b_values[4 * j + 3] = q.w;
                    }
#pragma unroll
                    for (int i = 0; i < TM; ++i)
#pragma unroll
                        for (int j = 0; j < TN; ++j)
                            acc[i][j] = fmaf(a_values[i], b_values[j], acc[i][j]);
                }
                // The other buffer was last read in the previous step, which everyone finished
                // before the barrier that ended it; this step's barrier then publishes it.
                if (more) {
                    a_loader.store(a_tiles[buffer ^ 1]);
                    b_loader.store(b_tiles[buffer ^ 1]);
                }
                __syncthreads();
            }

#pragma unroll
            for (int i = 0; i < TM; ++i) {
                const u64 row = row_base + warp_m + (i / 4) * STEP_M + lane_m + i % 4;
                if (row >= s.m) continue;
#pragma unroll
                for (int j = 0; j < TN / 4; ++j) {
                    const u64 col = col_base + warp_n + j * STEP_N + lane_n;
                    float v[4];
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        v[e] = (s.epilogue && col + e < s.n)
                                   ? gemm_finish(acc[i][4 * j + e], bias, col + e, s)
                                   : acc[i][4 * j + e];
                    if (vector_store && col + 3 < s.n) {
                        Float4 q;
                        q.x = v[0]; q.y = v[1]; q.z = v[2]; q.w = v[3];
                        *reinterpret_cast<Float4*>(&c[row * s.n + col]) = q;
                    } else {
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            if (col + e < s.n) c[row * s.n + col + e] = v[e];
                    }
                }
            }
        }
    }
}

// One kernel per configuration and operand layout.
#define KILN_GEMM(NAME, BM, BN, BK, WM, WN, TM, TN, THREADS, A_ALONG_K, B_ALONG_K)           \
    extern "C" __global__ void __launch_bounds__(THREADS)                                   \
        gemm_f32_##NAME(float* out, const float* lhs, const float* rhs, const float* bias,  \
                        GemmArg arg, Strided a_batch, Strided b_batch) {                    \
        gemm_f32<BM, BN, BK, WM, WN, TM, TN, THREADS, A_ALONG_K, B_ALONG_K>(               \
            out, lhs, rhs, bias, arg, a_batch, b_batch);                                    \
    }
#define KILN_GEMM_LAYOUTS(CONFIG, BM, BN, BK, WM, WN, TM, TN, THREADS)                     \
    KILN_GEMM(CONFIG##_ak_bn, BM, BN, BK, WM, WN, TM, TN, THREADS, true, false)            \
    KILN_GEMM(CONFIG##_ak_bk, BM, BN, BK, WM, WN, TM, TN, THREADS, true, true)             \
    KILN_GEMM(CONFIG##_am_bn, BM, BN, BK, WM, WN, TM, TN, THREADS, false, false)           \
    KILN_GEMM(CONFIG##_am_bk, BM, BN, BK, WM, WN, TM, TN, THREADS, false, true)

KILN_GEMM_LAYOUTS(large, 128, 128, 16, 32, 64, 8, 8, 256)
KILN_GEMM_LAYOUTS(medium, 64, 64, 16, 32, 32, 8, 4, 128)
KILN_GEMM_LAYOUTS(small, 32, 64, 16, 16, 32, 4, 4, 128)

// Split-K's second pass: out[i] = act(sum over slices of partial[slice][i] + bias[i % n]) for
// the batches * m * n outputs, slices summed in order 0, 1, .. so the result does not depend
// on scheduling.
extern "C" __global__ void gemm_split_k_reduce(float* out, const float* partial,
                                               const float* bias, GemmArg s) {
    const u64 total = s.batches * s.m * s.n;
    KILN_GRID_STRIDE(i, total) {
        float sum = partial[i];
        for (u64 slice = 1; slice < s.splits; ++slice) sum = __fadd_rn(sum, partial[slice * total + i]);
        out[i] = gemm_finish(sum, bias, i % s.n, s);
    }
}
