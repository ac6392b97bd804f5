//! Counter-based random numbers (Philox 4x32-10) for initialising and sampling tensors, reproducible bit for bit
//! from (seed, offset) on the CPU and by a CUDA twin. Not a cryptographic generator: never use it for secrets.

use rayon::prelude::*;

/// Philox 4x32 round multipliers, as in Random123.
const MULTIPLIER_0: u32 = 0xD251_1F53;
const MULTIPLIER_1: u32 = 0xCD9E_8D57;
/// Weyl-sequence key increments (golden ratio and sqrt(3) - 1), as in Random123.
const KEY_INCREMENT_0: u32 = 0x9E37_79B9;
const KEY_INCREMENT_1: u32 = 0xBB67_AE85;
const ROUNDS: usize = 10;

/// Elements per rayon task. Outputs no longer than this are filled on the calling thread, where spawning
/// would cost more than generating.
const CHUNK_LEN: usize = 1 << 16;

const TWO_POW_MINUS_24: f64 = 1.0 / (1u64 << 24) as f64;
const TWO_POW_MINUS_53: f64 = 1.0 / (1u64 << 53) as f64;

/// One Philox 4x32-10 block: 10 rounds, multipliers 0xD2511F53 / 0xCD9E8D57, Weyl key increments
/// 0x9E3779B9 / 0xBB67AE85 (as in Random123).
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut state = counter;
    let mut key = key;
    for round in 0..ROUNDS {
        // Random123 bumps the key between rounds, so the first round uses the key as given.
        if round > 0 {
            key = [
                key[0].wrapping_add(KEY_INCREMENT_0),
                key[1].wrapping_add(KEY_INCREMENT_1),
            ];
        }
        let (high_0, low_0) = multiply_high_low(MULTIPLIER_0, state[0]);
        let (high_1, low_1) = multiply_high_low(MULTIPLIER_1, state[2]);
        state = [
            high_1 ^ state[1] ^ key[0],
            low_1,
            high_0 ^ state[3] ^ key[1],
            low_0,
        ];
    }
    state
}

/// The high and low halves of the full 64-bit product (CUDA: `__umulhi` and a plain multiply).
#[inline]
fn multiply_high_low(a: u32, b: u32) -> (u32, u32) {
    let product = u64::from(a) * u64::from(b);
    ((product >> 32) as u32, product as u32)
}

fn seed_key(seed: u64) -> [u32; 2] {
    [seed as u32, (seed >> 32) as u32]
}

fn block_counter(block_index: u64) -> [u32; 4] {
    [block_index as u32, (block_index >> 32) as u32, 0, 0]
}

/// The stream: word `w` (u64 index) of the stream for `seed` is
/// `philox4x32_10([b as u32, (b >> 32) as u32, 0, 0], [seed as u32, (seed >> 32) as u32])[(w % 4) as usize]`
/// where `b = w / 4`.
pub fn stream_word(seed: u64, w: u64) -> u32 {
    philox4x32_10(block_counter(w / 4), seed_key(seed))[(w % 4) as usize]
}

/// Reads consecutive stream words from any start, computing each Philox block once for its four words.
struct StreamCursor {
    key: [u32; 2],
    block_index: u64,
    block: [u32; 4],
    lane: usize,
}

impl StreamCursor {
    fn new(seed: u64, first_word: u64) -> Self {
        let key = seed_key(seed);
        let block_index = first_word / 4;
        Self {
            key,
            block_index,
            block: philox4x32_10(block_counter(block_index), key),
            lane: (first_word % 4) as usize,
        }
    }

    #[inline]
    fn next_word(&mut self) -> u32 {
        if self.lane == 4 {
            // Word indices wrap modulo 2^64 (offsets are advanced with wrapping adds), so block indices wrap
            // modulo 2^62 and the cursor stays equal to `stream_word` even across that wrap.
            self.block_index = (self.block_index + 1) & (u64::MAX >> 2);
            self.block = philox4x32_10(block_counter(self.block_index), self.key);
            self.lane = 0;
        }
        let word = self.block[self.lane];
        self.lane += 1;
        word
    }

    /// 53 random bits from two words, the first being the low half.
    #[inline]
    fn next_bits53(&mut self) -> u64 {
        let low = self.next_word();
        let high = self.next_word();
        ((u64::from(high) << 32) | u64::from(low)) >> 11
    }
}

/// Box-Muller in f64: `u1` in (0, 1] so the logarithm stays finite, `u2` in [0, 1).
#[inline]
fn box_muller(u1: f64, u2: f64) -> (f64, f64) {
    let radius = (-2.0 * u1.ln()).sqrt();
    // TAU == 2 * pi exactly, so this is the same product a twin writes as 2.0 * M_PI * u2.
    let (sin_theta, cos_theta) = (std::f64::consts::TAU * u2).sin_cos();
    (radius * cos_theta, radius * sin_theta)
}

/// Fills `out` in chunks of `chunk_len` elements on rayon, each chunk opening the stream at its own first word,
/// so the result does not depend on the chunking. `fill_run(first_word, run)` fills one contiguous run.
fn fill_in_chunks<T: Send>(
    out: &mut [T],
    offset: u64,
    words_per_element: u64,
    chunk_len: usize,
    fill_run: impl Fn(u64, &mut [T]) + Sync,
) {
    if out.len() <= chunk_len {
        fill_run(offset, out);
        return;
    }
    out.par_chunks_mut(chunk_len)
        .enumerate()
        .for_each(|(chunk_index, chunk)| {
            let first_element = (chunk_index * chunk_len) as u64;
            fill_run(
                offset.wrapping_add(first_element.wrapping_mul(words_per_element)),
                chunk,
            );
        });
}

/// Normal draws work on pairs of elements, so their chunks must not split a pair.
fn round_up_to_even(n: usize) -> usize {
    n + n % 2
}

/// Fill `out` with uniforms in [0, 1): element i uses word `offset + i`; value = `(word >> 8) as f32 * 2^-24`.
pub fn fill_uniform_f32(seed: u64, offset: u64, out: &mut [f32]) {
    uniform_f32_chunked(seed, offset, out, CHUNK_LEN);
}

fn uniform_f32_chunked(seed: u64, offset: u64, out: &mut [f32], chunk_len: usize) {
    fill_in_chunks(out, offset, 1, chunk_len, |first_word, run| {
        let mut cursor = StreamCursor::new(seed, first_word);
        for value in run {
            // 24 bits fit the f32 mantissa, so the conversion and scaling are exact and never reach 1.0.
            *value = (cursor.next_word() >> 8) as f32 * TWO_POW_MINUS_24 as f32;
        }
    });
}

/// f64 uniforms in [0, 1): element i uses words `offset + 2i` (low) and `offset + 2i + 1` (high);
/// value = `(((hi as u64) << 32 | lo as u64) >> 11) as f64 * 2^-53`.
pub fn fill_uniform_f64(seed: u64, offset: u64, out: &mut [f64]) {
    uniform_f64_chunked(seed, offset, out, CHUNK_LEN);
}

fn uniform_f64_chunked(seed: u64, offset: u64, out: &mut [f64], chunk_len: usize) {
    fill_in_chunks(out, offset, 2, chunk_len, |first_word, run| {
        let mut cursor = StreamCursor::new(seed, first_word);
        for value in run {
            *value = cursor.next_bits53() as f64 * TWO_POW_MINUS_53;
        }
    });
}

/// Normals `z * std + mean` by Box-Muller on element pairs (2k, 2k+1), which use words `offset + 2k` and
/// `offset + 2k + 1`: `u1 = ((word0 >> 8) + 1) as f64 * 2^-24` (in (0, 1], so ln never sees 0),
/// `u2 = (word1 >> 8) as f64 * 2^-24`, `r = sqrt(-2 ln u1)`, `theta = 2 pi u2`, `z0 = r cos theta`,
/// `z1 = r sin theta`. Everything, the scaling included, is computed in f64 and rounded to f32 once, so a CUDA
/// twin doing the same in double agrees to the last bit in all but vanishingly rare cases. An odd last element
/// still consumes its whole pair's words and drops z1.
pub fn fill_normal_f32(seed: u64, offset: u64, mean: f32, std: f32, out: &mut [f32]) {
    normal_f32_chunked(seed, offset, mean, std, out, CHUNK_LEN);
}

fn normal_f32_chunked(
    seed: u64,
    offset: u64,
    mean: f32,
    std: f32,
    out: &mut [f32],
    chunk_len: usize,
) {
    let (mean, std) = (f64::from(mean), f64::from(std));
    fill_in_chunks(
        out,
        offset,
        1,
        round_up_to_even(chunk_len),
        |first_word, run| {
            let mut cursor = StreamCursor::new(seed, first_word);
            for pair in run.chunks_mut(2) {
                let u1 = f64::from((cursor.next_word() >> 8) + 1) * TWO_POW_MINUS_24;
                let u2 = f64::from(cursor.next_word() >> 8) * TWO_POW_MINUS_24;
                let (z0, z1) = box_muller(u1, u2);
                pair[0] = (z0 * std + mean) as f32;
                if let Some(second) = pair.get_mut(1) {
                    *second = (z1 * std + mean) as f32;
                }
            }
        },
    );
}

/// f64 normals, as [`fill_normal_f32`] but with 53-bit uniforms of two words each (low word first): pair k uses
/// words `offset + 4k .. offset + 4k + 3`, `u1 = (bits53 + 1) * 2^-53`, `u2 = bits53 * 2^-53`. A CUDA twin
/// matches these only to within an ulp or so, since its double-precision `log`/`sin`/`cos` round differently.
pub fn fill_normal_f64(seed: u64, offset: u64, mean: f64, std: f64, out: &mut [f64]) {
    normal_f64_chunked(seed, offset, mean, std, out, CHUNK_LEN);
}

fn normal_f64_chunked(
    seed: u64,
    offset: u64,
    mean: f64,
    std: f64,
    out: &mut [f64],
    chunk_len: usize,
) {
    fill_in_chunks(
        out,
        offset,
        2,
        round_up_to_even(chunk_len),
        |first_word, run| {
            let mut cursor = StreamCursor::new(seed, first_word);
            for pair in run.chunks_mut(2) {
                let u1 = (cursor.next_bits53() + 1) as f64 * TWO_POW_MINUS_53;
                let u2 = cursor.next_bits53() as f64 * TWO_POW_MINUS_53;
                let (z0, z1) = box_muller(u1, u2);
                pair[0] = z0 * std + mean;
                if let Some(second) = pair.get_mut(1) {
                    *second = z1 * std + mean;
                }
            }
        },
    );
}

/// Which distribution a draw samples, for [`words_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Distribution {
    Uniform,
    Normal,
}

/// The width of the drawn floats, for [`words_for`]: 32-bit draws use one word per element, 64-bit two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    B32,
    B64,
}

/// How many stream words a draw of `n` elements consumes (so a generator can advance its offset): uniform f32 n,
/// uniform f64 2n, normal f32 n rounded up to even, normal f64 2 * (n rounded up to even).
pub fn words_for(kind: Distribution, dtype_bits: Bits, n: usize) -> u64 {
    let elements = match kind {
        Distribution::Uniform => n as u64,
        Distribution::Normal => round_up_to_even(n) as u64,
    };
    match dtype_bits {
        Bits::B32 => elements,
        Bits::B64 => 2 * elements,
    }
}

/// The seed of independent stream number `stream` of a run seeded with `seed` (weights,
/// noise, fixed sample latents, ... each get their own): SplitMix64's finaliser over the two,
/// so nearby seeds and stream numbers give unrelated streams.
pub fn stream_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded generator: (seed, offset), advancing the offset by the words each draw uses, so successive draws
/// read disjoint, consecutive parts of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Generator {
    seed: u64,
    offset: u64,
}

impl Generator {
    /// A generator at the start (offset 0) of `seed`'s stream.
    pub fn new(seed: u64) -> Self {
        Self { seed, offset: 0 }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The index of the next stream word a draw will use.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Moves to any point of the stream, e.g. to replay a draw or to resume from a checkpoint.
    pub fn set_offset(&mut self, offset: u64) {
        self.offset = offset;
    }

    /// Returns the offset a draw starts at and moves past the words it uses.
    fn advance(&mut self, kind: Distribution, dtype_bits: Bits, n: usize) -> u64 {
        let start = self.offset;
        self.offset = start.wrapping_add(words_for(kind, dtype_bits, n));
        start
    }

    /// The offset a device draw of `n` elements of `dtype` starts at, advancing past it exactly
    /// as the host draw of the same tensor would (f16/bf16 draw f32 words).
    pub(crate) fn advance_for(&mut self, kind: Distribution, dtype: crate::DType, n: usize) -> u64 {
        let bits = if dtype == crate::DType::F64 {
            Bits::B64
        } else {
            Bits::B32
        };
        self.advance(kind, bits, n)
    }

    /// `n` uniforms in [0, 1), see [`fill_uniform_f32`].
    pub fn uniform_f32(&mut self, n: usize) -> Vec<f32> {
        let mut out = vec![0.0; n];
        fill_uniform_f32(
            self.seed,
            self.advance(Distribution::Uniform, Bits::B32, n),
            &mut out,
        );
        out
    }

    /// `n` uniforms in [0, 1), see [`fill_uniform_f64`].
    pub fn uniform_f64(&mut self, n: usize) -> Vec<f64> {
        let mut out = vec![0.0; n];
        fill_uniform_f64(
            self.seed,
            self.advance(Distribution::Uniform, Bits::B64, n),
            &mut out,
        );
        out
    }

    /// `n` normals with the given mean and standard deviation, see [`fill_normal_f32`].
    pub fn normal_f32(&mut self, n: usize, mean: f32, std: f32) -> Vec<f32> {
        let mut out = vec![0.0; n];
        let offset = self.advance(Distribution::Normal, Bits::B32, n);
        fill_normal_f32(self.seed, offset, mean, std, &mut out);
        out
    }

    /// `n` normals with the given mean and standard deviation, see [`fill_normal_f64`].
    pub fn normal_f64(&mut self, n: usize, mean: f64, std: f64) -> Vec<f64> {
        let mut out = vec![0.0; n];
        let offset = self.advance(Distribution::Normal, Bits::B64, n);
        fill_normal_f64(self.seed, offset, mean, std, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets chosen to start mid-block, at a block start, and near the 2^64 wrap.
    const OFFSETS: [u64; 5] = [0, 1, 3, 4 * 1000 + 2, u64::MAX - 6];
    const LENGTHS: [usize; 6] = [0, 1, 2, 7, 33, 101];
    const CHUNK_LENS: [usize; 6] = [1, 2, 3, 5, 8, 64];

    // Straight from the definitions, one `stream_word` call per word, as independent references for the fills.
    fn reference_uniform_f32(seed: u64, offset: u64, n: usize) -> Vec<f32> {
        (0..n as u64)
            .map(|i| (stream_word(seed, offset.wrapping_add(i)) >> 8) as f32 / (1u32 << 24) as f32)
            .collect()
    }

    fn reference_bits53(seed: u64, first_word: u64) -> u64 {
        let low = u64::from(stream_word(seed, first_word));
        let high = u64::from(stream_word(seed, first_word.wrapping_add(1)));
        (high << 32 | low) >> 11
    }

    fn reference_uniform_f64(seed: u64, offset: u64, n: usize) -> Vec<f64> {
        (0..n as u64)
            .map(|i| {
                reference_bits53(seed, offset.wrapping_add(2 * i)) as f64 / (1u64 << 53) as f64
            })
            .collect()
    }

    fn reference_normal_f32(seed: u64, offset: u64, mean: f32, std: f32, n: usize) -> Vec<f32> {
        (0..n as u64)
            .map(|i| {
                let pair_word = offset.wrapping_add(i - i % 2);
                let u1 = ((stream_word(seed, pair_word) >> 8) + 1) as f64 / (1u64 << 24) as f64;
                let u2 = (stream_word(seed, pair_word.wrapping_add(1)) >> 8) as f64
                    / (1u64 << 24) as f64;
                let radius = (-2.0 * u1.ln()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u2;
                let z = if i % 2 == 0 {
                    radius * theta.cos()
                } else {
                    radius * theta.sin()
                };
                (z * f64::from(std) + f64::from(mean)) as f32
            })
            .collect()
    }

    fn reference_normal_f64(seed: u64, offset: u64, mean: f64, std: f64, n: usize) -> Vec<f64> {
        (0..n as u64)
            .map(|i| {
                let pair_word = offset.wrapping_add(2 * (i - i % 2));
                let u1 = (reference_bits53(seed, pair_word) + 1) as f64 / (1u64 << 53) as f64;
                let u2 =
                    reference_bits53(seed, pair_word.wrapping_add(2)) as f64 / (1u64 << 53) as f64;
                let radius = (-2.0 * u1.ln()).sqrt();
                let theta = 2.0 * std::f64::consts::PI * u2;
                let z = if i % 2 == 0 {
                    radius * theta.cos()
                } else {
                    radius * theta.sin()
                };
                z * std + mean
            })
            .collect()
    }

    fn bits_f32(values: &[f32]) -> Vec<u32> {
        values.iter().map(|value| value.to_bits()).collect()
    }

    fn bits_f64(values: &[f64]) -> Vec<u64> {
        values.iter().map(|value| value.to_bits()).collect()
    }

    #[test]
    fn philox4x32_10_matches_random123_known_answers() {
        // Source: the "philox4x32 10" rows of Random123's tests/kat_vectors, as cut and pasted by D. E. Shaw
        // Research into DEShawResearch/Random123-Boost libs/random/test/test_philox.cpp (test_kat_philox4x32);
        // format: counter[4] key[2] -> expected[4].
        let known_answers: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [0xffffffff; 4],
                [0xffffffff; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
        ];
        for (counter, key, expected) in known_answers {
            assert_eq!(
                philox4x32_10(counter, key),
                expected,
                "counter {counter:x?} key {key:x?}"
            );
        }
        // Seed 0's first block is the all-zero case, which pins the stream's word order too.
        let first_words: Vec<u32> = (0..4).map(|w| stream_word(0, w)).collect();
        assert_eq!(
            first_words,
            [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]
        );
    }

    #[test]
    fn fills_match_the_per_word_definitions_for_any_chunking() {
        let seed = 0x0123_4567_89ab_cdef;
        for offset in OFFSETS {
            for n in LENGTHS {
                let expected_uniform_f32 = bits_f32(&reference_uniform_f32(seed, offset, n));
                let expected_uniform_f64 = bits_f64(&reference_uniform_f64(seed, offset, n));
                let expected_normal_f32 =
                    bits_f32(&reference_normal_f32(seed, offset, 0.5, 2.0, n));
                let expected_normal_f64 =
                    bits_f64(&reference_normal_f64(seed, offset, 0.5, 2.0, n));
                for chunk_len in CHUNK_LENS.into_iter().chain([CHUNK_LEN]) {
                    let context = format!("offset {offset} n {n} chunk_len {chunk_len}");
                    let mut out = vec![0.0f32; n];
                    uniform_f32_chunked(seed, offset, &mut out, chunk_len);
                    assert_eq!(
                        bits_f32(&out),
                        expected_uniform_f32,
                        "uniform f32, {context}"
                    );
                    normal_f32_chunked(seed, offset, 0.5, 2.0, &mut out, chunk_len);
                    assert_eq!(bits_f32(&out), expected_normal_f32, "normal f32, {context}");
                    let mut out = vec![0.0f64; n];
                    uniform_f64_chunked(seed, offset, &mut out, chunk_len);
                    assert_eq!(
                        bits_f64(&out),
                        expected_uniform_f64,
                        "uniform f64, {context}"
                    );
                    normal_f64_chunked(seed, offset, 0.5, 2.0, &mut out, chunk_len);
                    assert_eq!(bits_f64(&out), expected_normal_f64, "normal f64, {context}");
                }
            }
        }
    }

    #[test]
    fn large_parallel_fills_match_the_definitions() {
        // Longer than CHUNK_LEN and not a multiple of it or of 4, so rayon really splits the work and chunks
        // start mid-block.
        let (seed, offset, n) = (7, 3, 3 * CHUNK_LEN + 5);
        let mut out = vec![0.0f32; n];
        fill_uniform_f32(seed, offset, &mut out);
        assert_eq!(
            bits_f32(&out),
            bits_f32(&reference_uniform_f32(seed, offset, n))
        );
        fill_normal_f32(seed, offset, 0.0, 1.0, &mut out);
        assert_eq!(
            bits_f32(&out),
            bits_f32(&reference_normal_f32(seed, offset, 0.0, 1.0, n))
        );
        let mut out = vec![0.0f64; n];
        fill_uniform_f64(seed, offset, &mut out);
        assert_eq!(
            bits_f64(&out),
            bits_f64(&reference_uniform_f64(seed, offset, n))
        );
        fill_normal_f64(seed, offset, 0.0, 1.0, &mut out);
        assert_eq!(
            bits_f64(&out),
            bits_f64(&reference_normal_f64(seed, offset, 0.0, 1.0, n))
        );
    }

    fn mean_and_variance(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
        let count = values.clone().count() as f64;
        let mean = values.clone().sum::<f64>() / count;
        let variance = values.map(|value| (value - mean).powi(2)).sum::<f64>() / count;
        (mean, variance)
    }

    const SAMPLES: usize = 1 << 20;

    #[test]
    fn uniforms_lie_in_the_unit_interval_with_the_right_moments() {
        // Tolerances are about ten standard errors: wide enough for any fixed seed, narrow enough to catch a
        // biased or truncated conversion.
        let mut uniform_f32 = vec![0.0f32; SAMPLES];
        fill_uniform_f32(42, 0, &mut uniform_f32);
        assert!(uniform_f32.iter().all(|&value| (0.0..1.0).contains(&value)));
        let (mean, variance) = mean_and_variance(uniform_f32.iter().map(|&value| f64::from(value)));
        assert!((mean - 0.5).abs() < 3e-3, "f32 mean {mean}");
        assert!(
            (variance - 1.0 / 12.0).abs() < 1e-3,
            "f32 variance {variance}"
        );

        let mut uniform_f64 = vec![0.0f64; SAMPLES];
        fill_uniform_f64(43, 0, &mut uniform_f64);
        assert!(uniform_f64.iter().all(|&value| (0.0..1.0).contains(&value)));
        let (mean, variance) = mean_and_variance(uniform_f64.iter().copied());
        assert!((mean - 0.5).abs() < 3e-3, "f64 mean {mean}");
        assert!(
            (variance - 1.0 / 12.0).abs() < 1e-3,
            "f64 variance {variance}"
        );
    }

    fn check_standard_normal(values: impl Iterator<Item = f64> + Clone, label: &str) {
        assert!(
            values.clone().all(f64::is_finite),
            "{label}: non-finite value"
        );
        let (mean, variance) = mean_and_variance(values.clone());
        assert!(mean.abs() < 1e-2, "{label}: mean {mean}");
        assert!(
            (variance.sqrt() - 1.0).abs() < 1e-2,
            "{label}: std {}",
            variance.sqrt()
        );
        let within_one_sigma =
            values.filter(|value| value.abs() < 1.0).count() as f64 / SAMPLES as f64;
        assert!(
            (within_one_sigma - 0.6827).abs() < 5e-3,
            "{label}: within 1 sigma {within_one_sigma}"
        );
    }

    #[test]
    fn normals_have_the_right_moments() {
        let mut normal_f32 = vec![0.0f32; SAMPLES];
        fill_normal_f32(44, 5, 0.0, 1.0, &mut normal_f32);
        check_standard_normal(normal_f32.iter().map(|&value| f64::from(value)), "f32");

        let mut normal_f64 = vec![0.0f64; SAMPLES];
        fill_normal_f64(45, 5, 0.0, 1.0, &mut normal_f64);
        check_standard_normal(normal_f64.iter().copied(), "f64");

        // Mean and std are applied: the same words, shifted and scaled.
        let mut scaled = vec![0.0f64; 64];
        fill_normal_f64(45, 5, 3.0, 0.25, &mut scaled);
        for (scaled, standard) in scaled.iter().zip(&normal_f64) {
            assert!((scaled - (standard * 0.25 + 3.0)).abs() < 1e-12);
        }
    }

    #[test]
    fn box_muller_stays_finite_at_the_extreme_words() {
        // Word 0 gives the smallest u1 (2^-24), the all-ones word gives u1 == 1 and a zero radius.
        let smallest_u1 = TWO_POW_MINUS_24;
        let (z0, z1) = box_muller(smallest_u1, 0.0);
        assert!((z0 - (48.0 * std::f64::consts::LN_2).sqrt()).abs() < 1e-12 && z1 == 0.0);
        let largest_u1 = f64::from((u32::MAX >> 8) + 1) * TWO_POW_MINUS_24;
        assert_eq!(box_muller(largest_u1, 0.3), (0.0, 0.0));
    }

    #[test]
    fn streams_depend_only_on_seed_and_offset() {
        let draw = |seed, offset| {
            let mut out = vec![0.0f32; 1000];
            fill_uniform_f32(seed, offset, &mut out);
            bits_f32(&out)
        };
        assert_eq!(draw(1, 10), draw(1, 10));
        assert_ne!(draw(1, 10), draw(2, 10));
        // Seeds differing only in their high half must differ too: both key words are used.
        assert_ne!(draw(1, 10), draw(1 | 1 << 32, 10));
        assert_ne!(draw(1, 10), draw(1, 11));
        assert_eq!(draw(1, 10)[1..], draw(1, 11)[..999]);
    }

    #[test]
    fn words_for_counts_the_words_each_draw_uses() {
        assert_eq!(words_for(Distribution::Uniform, Bits::B32, 7), 7);
        assert_eq!(words_for(Distribution::Uniform, Bits::B64, 7), 14);
        assert_eq!(words_for(Distribution::Normal, Bits::B32, 7), 8);
        assert_eq!(words_for(Distribution::Normal, Bits::B64, 7), 16);
        assert_eq!(words_for(Distribution::Normal, Bits::B64, 0), 0);
    }

    #[test]
    fn generator_draws_continue_the_stream() {
        let mut split = Generator::new(9);
        let mut first = split.uniform_f32(13);
        first.extend(split.uniform_f32(30));
        let mut whole = Generator::new(9);
        assert_eq!(bits_f32(&first), bits_f32(&whole.uniform_f32(43)));
        assert_eq!(split, whole);
        assert_eq!(split.offset(), 43);

        // Each kind of draw advances by `words_for`, so the next draw starts where the last one stopped.
        let mut generator = Generator::new(9);
        generator.set_offset(5);
        let normals = generator.normal_f32(3, 0.0, 1.0);
        assert_eq!(generator.offset(), 5 + 4);
        let uniforms = generator.uniform_f64(2);
        assert_eq!(generator.offset(), 9 + 4);
        generator.normal_f64(1, 0.0, 1.0);
        assert_eq!(generator.offset(), 13 + 4);
        assert_eq!(generator.seed(), 9);
        assert_eq!(
            bits_f32(&normals),
            bits_f32(&reference_normal_f32(9, 5, 0.0, 1.0, 3))
        );
        assert_eq!(
            bits_f64(&uniforms),
            bits_f64(&reference_uniform_f64(9, 9, 2))
        );
    }
}
