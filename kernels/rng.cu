// Philox 4x32-10 uniforms and normals, the device twin of src/rng.rs: the same stream (word w of
// seed s is lane w % 4 of philox4x32_10([b as u32, b >> 32, 0, 0], [s as u32, s >> 32]) with
// b = w / 4; word indices wrap modulo 2^64), the same words per element and the same
// conversions, so f32 uniforms, f64 uniforms and the halves (rounded from the f32 draw) equal
// the CPU's bit for bit, f32 normals almost always (Box-Muller in double, rounded to f32 once,
// where only CUDA's and libm's double log/sin/cos can round differently), f64 normals to
// within an ulp or so.
// CPU references: rng.rs fill_uniform_f32, fill_uniform_f64, fill_normal_f32, fill_normal_f64.
//
// Launch shape: 1-D grid-stride, 256-thread blocks (launch_config_for), one thread per group
// of elements that use 4 consecutive stream words (4 f32 uniforms, 2 f64 uniforms, 2 f32
// normal pairs, 1 f64 normal pair), so a thread computes one or two Philox blocks per group
// (two when the offset is not a multiple of 4); no shared memory.

#define KILN_PHILOX_MULTIPLIER_0 0xD2511F53u
#define KILN_PHILOX_MULTIPLIER_1 0xCD9E8D57u
#define KILN_PHILOX_KEY_INCREMENT_0 0x9E3779B9u
#define KILN_PHILOX_KEY_INCREMENT_1 0xBB67AE85u
#define KILN_TWO_POW_MINUS_24 5.9604644775390625e-08         // 2^-24, exact
#define KILN_TWO_POW_MINUS_53 1.1102230246251565404236316680908203125e-16  // 2^-53, exact
// 2 * M_PI, i.e. the double nearest 2 pi: doubling is exact, so this is rng.rs's TAU.
#define KILN_TAU 6.283185307179586476925286766559

// One Philox 4x32-10 block, as rng.rs philox4x32_10 (the key is bumped between rounds).
__device__ __forceinline__ void philox4x32_10(u32 counter[4], u32 key_0, u32 key_1) {
    for (int round = 0; round < 10; ++round) {
        if (round > 0) {
            key_0 += KILN_PHILOX_KEY_INCREMENT_0;
            key_1 += KILN_PHILOX_KEY_INCREMENT_1;
        }
        u32 high_0 = __umulhi(KILN_PHILOX_MULTIPLIER_0, counter[0]);
        u32 low_0 = KILN_PHILOX_MULTIPLIER_0 * counter[0];
        u32 high_1 = __umulhi(KILN_PHILOX_MULTIPLIER_1, counter[2]);
        u32 low_1 = KILN_PHILOX_MULTIPLIER_1 * counter[2];
        u32 next_0 = high_1 ^ counter[1] ^ key_0;
        u32 next_2 = high_0 ^ counter[3] ^ key_1;
        counter[0] = next_0;
        counter[1] = low_1;
        counter[2] = next_2;
        counter[3] = low_0;
    }
}

// Reads stream words of one seed, keeping the last Philox block so that consecutive words cost
// one block per four.
struct StreamWords {
    u32 key_0, key_1;
    u64 block_index;
    bool cached;
    u32 block[4];

    __device__ explicit StreamWords(u64 seed)
        : key_0((u32)seed), key_1((u32)(seed >> 32)), block_index(0), cached(false) {}

    // Word `w` of the stream (callers pass offset + i with u64 wrap-around, as rng.rs does).
    __device__ u32 word(u64 w) {
        u64 index = w >> 2;  // below 2^62, so the wrap of w is the wrap of the block index
        if (!cached || index != block_index) {
            block[0] = (u32)index;
            block[1] = (u32)(index >> 32);
            block[2] = 0;
            block[3] = 0;
            philox4x32_10(block, key_0, key_1);
            block_index = index;
            cached = true;
        }
        u32 lane = (u32)(w & 3);
        return lane == 0 ? block[0] : lane == 1 ? block[1] : lane == 2 ? block[2] : block[3];
    }

    // 53 random bits from words w (the low half) and w + 1.
    __device__ u64 bits53(u64 w) {
        u64 low = word(w);
        u64 high = word(w + 1);
        return ((high << 32) | low) >> 11;
    }
};

// Box-Muller in double, as rng.rs box_muller: u1 in (0, 1], u2 in [0, 1). The _rn intrinsics
// keep nvcc from fusing the products into the following additions.
__device__ __forceinline__ void box_muller(double u1, double u2, double* z0, double* z1) {
    double radius = __dsqrt_rn(__dmul_rn(-2.0, log(u1)));
    double sin_theta, cos_theta;
    sincos(__dmul_rn(KILN_TAU, u2), &sin_theta, &cos_theta);
    *z0 = __dmul_rn(radius, cos_theta);
    *z1 = __dmul_rn(radius, sin_theta);
}

// out[i] = (word(offset + i) >> 8) * 2^-24 as f32 (exact), then rounded to T.
template <typename T>
__device__ void uniform_32(T* out, u64 n, u64 seed, u64 offset) {
    u64 groups = (n + 3) / 4;
    KILN_GRID_STRIDE(group, groups) {
        StreamWords words(seed);
        for (u64 i = group * 4; i < group * 4 + 4 && i < n; ++i) {
            u32 word = words.word(offset + i);
            out[i] = from_math<T>((float)(word >> 8) * (float)KILN_TWO_POW_MINUS_24);
        }
    }
}

// out[i] = bits53(offset + 2i) * 2^-53 (exact).
__device__ void uniform_64(double* out, u64 n, u64 seed, u64 offset) {
    u64 groups = (n + 1) / 2;
    KILN_GRID_STRIDE(group, groups) {
        StreamWords words(seed);
        for (u64 i = group * 2; i < group * 2 + 2 && i < n; ++i) {
            out[i] = (double)words.bits53(offset + 2 * i) * KILN_TWO_POW_MINUS_53;
        }
    }
}

// Pair k (elements 2k, 2k + 1) from words offset + 2k and offset + 2k + 1; z * std + mean in
// double, rounded to f32 once, then to T. `mean` and `standard_deviation` are the f32 values the CPU takes,
// widened. An odd last element drops z1.
template <typename T>
__device__ void normal_32(T* out, u64 n, double mean, double standard_deviation, u64 seed, u64 offset) {
    u64 pairs = (n + 1) / 2;
    u64 groups = (pairs + 1) / 2;
    KILN_GRID_STRIDE(group, groups) {
        StreamWords words(seed);
        for (u64 pair = group * 2; pair < group * 2 + 2 && pair < pairs; ++pair) {
            u64 first = offset + 2 * pair;
            double u1 = (double)((words.word(first) >> 8) + 1) * KILN_TWO_POW_MINUS_24;
            double u2 = (double)(words.word(first + 1) >> 8) * KILN_TWO_POW_MINUS_24;
            double z0, z1;
            box_muller(u1, u2, &z0, &z1);
            out[2 * pair] = from_math<T>((float)__dadd_rn(__dmul_rn(z0, standard_deviation), mean));
            if (2 * pair + 1 < n) {
                out[2 * pair + 1] = from_math<T>((float)__dadd_rn(__dmul_rn(z1, standard_deviation), mean));
            }
        }
    }
}

// Pair k from words offset + 4k .. offset + 4k + 3: u1 = (bits53 + 1) * 2^-53,
// u2 = bits53 * 2^-53.
__device__ void normal_64(double* out, u64 n, double mean, double standard_deviation, u64 seed, u64 offset) {
    u64 pairs = (n + 1) / 2;
    KILN_GRID_STRIDE(pair, pairs) {
        StreamWords words(seed);
        u64 first = offset + 4 * pair;
        double u1 = (double)(words.bits53(first) + 1) * KILN_TWO_POW_MINUS_53;
        double u2 = (double)words.bits53(first + 2) * KILN_TWO_POW_MINUS_53;
        double z0, z1;
        box_muller(u1, u2, &z0, &z1);
        out[2 * pair] = __dadd_rn(__dmul_rn(z0, standard_deviation), mean);
        if (2 * pair + 1 < n) out[2 * pair + 1] = __dadd_rn(__dmul_rn(z1, standard_deviation), mean);
    }
}

#define KILN_RNG_32(T, SUFFIX)                                                                \
    extern "C" __global__ void uniform_##SUFFIX(T* out, u64 n, u64 seed, u64 offset) {      \
        uniform_32<T>(out, n, seed, offset);                                                 \
    }                                                                                        \
    extern "C" __global__ void normal_##SUFFIX(T* out, u64 n, double mean, double standard_deviation,      \
                                               u64 seed, u64 offset) {                      \
        normal_32<T>(out, n, mean, standard_deviation, seed, offset);                                       \
    }

KILN_RNG_32(f16, f16)
KILN_RNG_32(bf16, bf16)
KILN_RNG_32(float, f32)

extern "C" __global__ void uniform_f64(double* out, u64 n, u64 seed, u64 offset) {
    uniform_64(out, n, seed, offset);
}
extern "C" __global__ void normal_f64(double* out, u64 n, double mean, double standard_deviation, u64 seed,
                                      u64 offset) {
    normal_64(out, n, mean, standard_deviation, seed, offset);
}
