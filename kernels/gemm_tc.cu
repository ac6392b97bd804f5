// Tensor-core GEMM: out[b][i][j] = act(sum_k A_b[i][k] * B_b[k][j] + bias[j]) with f32
// accumulation, out contiguous [batches, m, n]. Host side: src/cuda/gemm_tc.rs. CPU reference:
// cpu::matmul of the operands rounded to the tensor cores' input type (TF32: f32 rounded to a
// 10-bit mantissa, nearest with ties away from zero, as cvt.rna.tf32.f32; BF16: exact), then
// bias add and activation in f32 (cpu::elementwise); results differ from it only by the order
// of the f32 additions.
//
// Version 1: warp-level mma.sync (Ampere's instruction, also run by Hopper), no wgmma/TMA.
//   gemm_tc_tf32_f32_<a><b>   f32 operands, rounded to TF32 as they leave shared memory
//   gemm_tc_bf16_f32_<a><b>   bf16 operands, f32 out
//   gemm_tc_bf16_bf16_<a><b>  bf16 operands, bf16 out (rounded once, on store)
// <a>, <b> are n for a row-major operand and t for a transposed one (A: n = k contiguous,
// t = m contiguous; B: n = n contiguous, t = k contiguous).
//
// Launch shape: block 256 threads (8 warps); grid (ceil(n / 128), min(ceil(m / 128), 65535),
// min(batches, 65535)), the y and z loops covering any rest. Each block computes a 128 x 128
// output tile, each warp a 64 x 32 part of it (2 x 4 warps) as 4 x 4 MMA tiles of 16 x 8 whose
// f32 accumulators stay in registers (64 per thread). k is walked 64 bytes at a time (16 f32 or
// 32 bf16) through a 3-stage cp.async pipeline: static shared memory of 3 stages x 2 operands
// x 8 KiB = 48 KiB. Each operand tile is staged with its contiguous dim contiguous in shared
// memory (so every global load is a 16-byte copy along it), in 16-byte chunks whose position in
// a row is XOR-swizzled with the row so that the fragment loads (ldmatrix for BF16, 32-bit
// loads in the documented m16n8k8 fragment layout for TF32) hit 32 distinct banks.
// Chunks reaching past a matrix's edge are staged with element loads that read only the
// elements inside and write zeros for the rest, so nothing outside the matrices is read and
// the padding adds 0 * 0; operands whose address or leading stride does not allow 16-byte
// copies are staged that way throughout (same tile layout, no overlap of load and compute).

#define KILN_GEMM_TC_TILE 128
#define KILN_GEMM_TC_THREADS 256
#define KILN_GEMM_TC_STAGES 3
// Bytes of k per stage tile row, and bytes of one operand's stage tile.
#define KILN_GEMM_TC_K_BYTES 64
#define KILN_GEMM_TC_TILE_BYTES (KILN_GEMM_TC_TILE * KILN_GEMM_TC_K_BYTES)

// The sizes, the operands' leading strides (the stride of the non-contiguous dim) and the
// epilogue (mirrors `GemmTcArg` in src/cuda/gemm_tc.rs field for field).
struct GemmTcShape {
    u64 m, n, k;
    u64 batches;
    u64 a_stride, b_stride;
    u32 a_vector, b_vector;  // 1: 16-byte cp.async is legal for every chunk of the operand
    u32 activation;          // 0 identity, 1 relu, 2 leaky relu, 3 tanh, 4 sigmoid
    float slope;             // leaky relu's slope, already rounded to f32
    u32 has_bias;
    u32 padding;
};

// ---- The PTX instructions, one wrapper each ----
// The host emulation (see the report of the tensor-core GEMM) defines
// KILN_GEMM_TC_EMULATED_PTX and supplies software versions of exactly these wrappers.
#ifndef KILN_GEMM_TC_EMULATED_PTX
__device__ __forceinline__ u32 shared_address(const void* pointer) {
    u32 address;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }"
        : "=r"(address)
        : "l"(pointer));
    return address;
}

// Copies src_bytes (0..16) from global to shared memory and zero-fills the rest of the 16.
__device__ __forceinline__ void cp_async_16(void* shared, const void* global, u32 src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(shared)),
                 "l"(global), "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
// Waits until at most N of this thread's committed groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Four 8 x 8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i of
// lane l gets row l / 4, columns 2 (l % 4) and + 1 of it (transposed: column l / 4, rows
// 2 (l % 4) and + 1).
__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row)));
}

// f32 to TF32, nearest with ties away from zero.
__device__ __forceinline__ u32 to_tf32(float x) {
    u32 t;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(t) : "f"(x));
    return t;
}

// c += a * b for one 16 x 8 x 8 TF32 tile (fragment layouts: PTX ISA, "Matrix Fragments for
// mma.m16n8k8", .tf32).
__device__ __forceinline__ void mma_tf32_16x8x8(float c[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
// c += a * b for one 16 x 8 x 16 BF16 tile ("Matrix Fragments for mma.m16n8k16", .bf16).
__device__ __forceinline__ void mma_bf16_16x8x16(float c[4], const u32 a[4], const u32 b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// ---- Shared-memory tile layout ----

// Byte offset of element (mn, kk) in one operand's stage tile of E-byte elements. K-major
// tiles (k contiguous) are 128 rows of 64 bytes (4 chunks of 16), chunk c of row mn stored at
// c ^ ((mn / 2) % 4): the 8 rows an ldmatrix or a fragment load reads at one chunk then cover
// all 8 16-byte bank groups. MN-major tiles are 64 / E rows (one per k) of 512 bytes, chunk c
// of row kk at c ^ f(kk % 8), f = 0 2 4 6 1 3 5 7: distinct for 8 consecutive rows
// (ldmatrix.trans) and, for 4 consecutive rows, apart by 2 (the TF32 fragments read 2 chunks
// of each of 4 rows).
template <int E, bool K_MAJOR> __device__ __forceinline__ u32 tile_offset(u32 mn, u32 kk) {
    if (K_MAJOR) {
        const u32 byte = kk * E;
        return mn * KILN_GEMM_TC_K_BYTES + (((byte >> 4) ^ ((mn >> 1) & 3)) << 4) + (byte & 15);
    } else {
        const u32 byte = mn * E;
        const u32 swizzle = ((kk & 3) << 1) | ((kk >> 2) & 1);
        return kk * (KILN_GEMM_TC_TILE * E) + (((byte >> 4) ^ swizzle) << 4) + (byte & 15);
    }
}

// Stages the 128 x (64 / E) tile of one operand starting at (mn0, k0): element (mn, kk) of the
// operand's matrix is at matrix[mn * stride + kk] (K_MAJOR) or matrix[kk * stride + mn]. Each
// thread copies 2 of the tile's 512 chunks; a chunk reaching past the matrix copies only its
// elements inside and reads zeros for the rest.
template <typename T, bool K_MAJOR>
__device__ __forceinline__ void load_operand_tile(u8* tile, const T* matrix, u64 stride,
                                                  u64 extent_mn, u64 extent_k, u64 mn0, u64 k0,
                                                  bool vector) {
    constexpr u32 E = sizeof(T), PER_CHUNK = 16 / E;
    constexpr u32 CHUNKS_PER_ROW = K_MAJOR ? KILN_GEMM_TC_K_BYTES / 16 : KILN_GEMM_TC_TILE * E / 16;
#pragma unroll
    for (u32 i = 0; i < 2; ++i) {
        const u32 chunk = threadIdx.x + i * KILN_GEMM_TC_THREADS;
        const u32 row = chunk / CHUNKS_PER_ROW, first = (chunk % CHUNKS_PER_ROW) * PER_CHUNK;
        // (outer, inner): the element's index along the strided dim and the contiguous dim.
        const u64 outer = (K_MAJOR ? mn0 : k0) + row, inner = (K_MAJOR ? k0 : mn0) + first;
        const u64 outer_extent = K_MAJOR ? extent_mn : extent_k;
        const u64 inner_extent = K_MAJOR ? extent_k : extent_mn;
        u32 valid = 0;
        if (outer < outer_extent && inner < inner_extent)
            valid = inner_extent - inner < PER_CHUNK ? (u32)(inner_extent - inner) : PER_CHUNK;
        u8* destination = tile + (K_MAJOR ? tile_offset<E, true>(row, first)
                                          : tile_offset<E, false>(first, row));
        const T* source = matrix + outer * stride + inner;
        if (vector && valid == PER_CHUNK) {
            cp_async_16(destination, source, 16);
        } else {
            // A chunk reaching past the matrix (or an operand that allows no 16-byte copies):
            // element loads, so that no read starts outside the matrix (a 16-byte cp.async
            // with a shorter src-size still counts as a 16-byte read to compute-sanitizer,
            // and past the end of the allocation).
            T* elements = (T*)destination;
#pragma unroll
            for (u32 j = 0; j < PER_CHUNK; ++j) {
                elements[j] = j < valid ? source[j] : T{};  // T{}: 0.0f, or bf16 bits 0
            }
        }
    }
}

// ---- Epilogue ----


// ---- The kernel ----

template <typename T, typename Out, bool A_K_MAJOR, bool B_K_MAJOR>
__device__ void gemm_tc(Out* out, const T* a_storage, const T* b_storage, const Out* bias,
                        GemmTcShape s, Strided a_batch, Strided b_batch) {
    constexpr bool TF32 = sizeof(T) == 4;
    constexpr u32 E = sizeof(T);
    constexpr u32 K_TILE = KILN_GEMM_TC_K_BYTES / E;  // k per stage: 16 (TF32) or 32 (BF16)
    constexpr u32 K_STEP = TF32 ? 8 : 16;              // k per MMA
    __shared__ __align__(128) u8 smem[KILN_GEMM_TC_STAGES][2][KILN_GEMM_TC_TILE_BYTES];

    const u32 lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const u32 group = lane / 4, in_group = lane % 4;  // the fragment layouts' groupID, threadID
    const u32 warp_m = (warp / 4) * 64, warp_n = (warp % 4) * 32;
    const u64 tiles_m = (s.m + KILN_GEMM_TC_TILE - 1) / KILN_GEMM_TC_TILE;
    const u64 k_tiles = (s.k + K_TILE - 1) / K_TILE;
    const u64 n0 = (u64)blockIdx.x * KILN_GEMM_TC_TILE;

    for (u64 batch = blockIdx.z; batch < s.batches; batch += gridDim.z) {
        const T* a = a_storage + strided_offset(a_batch, batch);
        const T* b = b_storage + strided_offset(b_batch, batch);
        Out* c = out + batch * s.m * s.n;
        for (u64 tile_m = blockIdx.y; tile_m < tiles_m; tile_m += gridDim.y) {
            const u64 m0 = tile_m * KILN_GEMM_TC_TILE;
            // Stage `stage` gets k tile `k_tile`, or nothing past the last (its group stays
            // empty, so the wait counts below hold to the end).
            auto load_stage = [&](u32 stage, u64 k_tile) {
                if (k_tile < k_tiles) {
                    load_operand_tile<T, A_K_MAJOR>(smem[stage][0], a, s.a_stride, s.m, s.k, m0,
                                                    k_tile * K_TILE, s.a_vector);
                    load_operand_tile<T, B_K_MAJOR>(smem[stage][1], b, s.b_stride, s.n, s.k, n0,
                                                    k_tile * K_TILE, s.b_vector);
                }
                cp_async_commit();
            };

            float acc[4][4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

#pragma unroll
            for (u32 stage = 0; stage < KILN_GEMM_TC_STAGES - 1; ++stage) load_stage(stage, stage);

            for (u64 k_tile = 0; k_tile < k_tiles; ++k_tile) {
                // This thread's copies of tile k_tile have landed; the barrier makes everyone's
                // visible, and says everyone is done with the stage read last iteration, which
                // the next load refills.
                cp_async_wait<KILN_GEMM_TC_STAGES - 2>();
                __syncthreads();
                load_stage((u32)((k_tile + KILN_GEMM_TC_STAGES - 1) % KILN_GEMM_TC_STAGES),
                           k_tile + KILN_GEMM_TC_STAGES - 1);
                const u8* a_tile = smem[k_tile % KILN_GEMM_TC_STAGES][0];
                const u8* b_tile = smem[k_tile % KILN_GEMM_TC_STAGES][1];

#pragma unroll
                for (u32 k_step = 0; k_step < K_TILE; k_step += K_STEP) {
                    u32 a_fragment[4][4], b_fragment[4][2];
                    if constexpr (TF32) {
                        // m16n8k8 .tf32: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8,
                        // t + 4) as (row, k); b0 (k t, col g), b1 (k t + 4, col g).
#pragma unroll
                        for (u32 i = 0; i < 4; ++i)
#pragma unroll
                            for (u32 r = 0; r < 4; ++r) {
                                const u32 row = warp_m + i * 16 + group + (r & 1) * 8;
                                const u32 kk = k_step + in_group + (r >> 1) * 4;
                                a_fragment[i][r] = to_tf32(
                                    *(const float*)(a_tile + tile_offset<4, A_K_MAJOR>(row, kk)));
                            }
#pragma unroll
                        for (u32 j = 0; j < 4; ++j)
#pragma unroll
                            for (u32 r = 0; r < 2; ++r) {
                                const u32 col = warp_n + j * 8 + group;
                                const u32 kk = k_step + in_group + r * 4;
                                b_fragment[j][r] = to_tf32(
                                    *(const float*)(b_tile + tile_offset<4, B_K_MAJOR>(col, kk)));
                            }
                    } else {
                        // m16n8k16 .bf16 A: registers 0..3 are the 8 x 8 blocks (rows 0-7,
                        // k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
                        // Lane l addresses row l % 8 of block l / 8.
                        const u32 block = lane / 8, in_block = lane % 8;
#pragma unroll
                        for (u32 i = 0; i < 4; ++i) {
                            const u32 row = warp_m + i * 16 + (block & 1) * 8;
                            const u32 kk = k_step + (block >> 1) * 8;
                            if (A_K_MAJOR)
                                ldmatrix_x4(a_fragment[i],
                                            a_tile + tile_offset<2, true>(row + in_block, kk));
                            else  // stored rows are k: transpose each block on the way
                                ldmatrix_x4_trans(a_fragment[i],
                                                  a_tile + tile_offset<2, false>(row, kk + in_block));
                        }
                        // B (k x 8, "col"): registers 0, 1 of n tile j are (k 0-7), (k 8-15)
                        // of its 8 columns; one x4 covers n tiles j and j + 1.
#pragma unroll
                        for (u32 pair = 0; pair < 2; ++pair) {
                            const u32 col = warp_n + pair * 16 + (block >> 1) * 8;
                            const u32 kk = k_step + (block & 1) * 8;
                            u32 r[4];
                            if (B_K_MAJOR)
                                ldmatrix_x4(r, b_tile + tile_offset<2, true>(col + in_block, kk));
                            else
                                ldmatrix_x4_trans(r, b_tile + tile_offset<2, false>(col, kk + in_block));
                            b_fragment[2 * pair][0] = r[0];
                            b_fragment[2 * pair][1] = r[1];
                            b_fragment[2 * pair + 1][0] = r[2];
                            b_fragment[2 * pair + 1][1] = r[3];
                        }
                    }
#pragma unroll
                    for (u32 i = 0; i < 4; ++i)
#pragma unroll
                        for (u32 j = 0; j < 4; ++j) {
                            if constexpr (TF32)
                                mma_tf32_16x8x8(acc[i][j], a_fragment[i], b_fragment[j]);
                            else
                                mma_bf16_16x8x16(acc[i][j], a_fragment[i], b_fragment[j]);
                        }
                }
            }
            // The next tile's first loads overwrite stages others may still be reading.
            cp_async_wait<0>();
            __syncthreads();

            // Accumulator r of MMA tile (i, j) is (row g + 8 (r / 2), col 2 t + r % 2).
#pragma unroll
            for (u32 i = 0; i < 4; ++i)
#pragma unroll
                for (u32 j = 0; j < 4; ++j)
#pragma unroll
                    for (u32 r = 0; r < 4; ++r) {
                        const u64 row = m0 + warp_m + i * 16 + group + (r >> 1) * 8;
                        const u64 col = n0 + warp_n + j * 8 + in_group * 2 + (r & 1);
                        if (row >= s.m || col >= s.n) continue;
                        float value = acc[i][j][r];
                        // Rounded add, never fused with the products: as matmul then add.
                        if (s.has_bias) value = __fadd_rn(value, to_math(bias[col]));
                        value = kiln_activate(value, s.activation, s.slope);
                        c[row * s.n + col] = from_math<Out>(value);
                    }
        }
    }
}

#define KILN_GEMM_TC(T, OUT, MODE, OUT_NAME, A_K_MAJOR, B_K_MAJOR, LAYOUT)                    \
    extern "C" __global__ void __launch_bounds__(KILN_GEMM_TC_THREADS)                       \
        gemm_tc_##MODE##_##OUT_NAME##_##LAYOUT(OUT* out, const T* a, const T* b,             \
                                               const OUT* bias, GemmTcShape shape,           \
                                               Strided a_batch, Strided b_batch) {           \
        gemm_tc<T, OUT, A_K_MAJOR, B_K_MAJOR>(out, a, b, bias, shape, a_batch, b_batch);     \
    }
// A row-major (n) is K-major; B row-major (n) is N-major, B transposed (t) K-major.
#define KILN_GEMM_TC_LAYOUTS(T, OUT, MODE, OUT_NAME)        \
    KILN_GEMM_TC(T, OUT, MODE, OUT_NAME, true, false, nn)   \
    KILN_GEMM_TC(T, OUT, MODE, OUT_NAME, true, true, nt)    \
    KILN_GEMM_TC(T, OUT, MODE, OUT_NAME, false, false, tn)  \
    KILN_GEMM_TC(T, OUT, MODE, OUT_NAME, false, true, tt)

KILN_GEMM_TC_LAYOUTS(float, float, tf32, f32)
KILN_GEMM_TC_LAYOUTS(bf16, float, bf16, f32)
KILN_GEMM_TC_LAYOUTS(bf16, bf16, bf16, bf16)
