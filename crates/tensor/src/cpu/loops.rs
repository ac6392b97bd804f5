//! The one loop under every elementwise CPU kernel (`fill`, and `map1`/`map2`/`map3` on it):
//! strided layouts walked in row-major order, split over rayon's threads above measured sizes
//! (`Work`), slices compiled again for AVX-512 or AVX2+FMA where the CPU has them.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::layout::Runs;
use crate::Layout;

/// How much an elementwise kernel computes per element, which decides when it pays to split
/// it over threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// Arithmetic, comparisons, copies: memory-bound, a second core barely helps.
    Light,
    /// Transcendental functions (exp, log, tanh, ...): compute-bound.
    Heavy,
}

impl Work {
    /// Outputs at least this long are split over rayon's threads. Measured with the
    /// threshold at 1, best of 3 or 7, µs for 1 thread vs 2: on one 2-core machine add at
    /// 2^16 elements 7.9 vs 12.6, at 2^18 38.5 vs 41.4, at 2^20 148 vs 143 (~85 GB/s from one
    /// core); on a 2-core AMD EPYC (AVX-512) 8.6 vs 4.9, 34.4 vs 20.6 and 170 vs 75, where one
    /// core moves far less than the memory does and 2^18 (from 1 << 20) took the PixelCNN's
    /// 2-thread step from 588-643 to 731 images/s. 2^18 is about even on the first and well
    /// ahead on the second. exp at 2^13 11.7 vs 11.6, at 2^14 23.0 vs 14.5, at 2^20 1566 vs
    /// 932.
    pub(crate) const fn parallel_min(self) -> usize {
        match self {
            Work::Light => 1 << 18,
            Work::Heavy => 1 << 14,
        }
    }
}

/// Elements per parallel task for `len` elements: four tasks a thread (to balance), and at
/// least 16K elements so a task's hand-off (~1 µs) stays small beside its work.
pub(crate) fn parallel_chunk_len(len: usize) -> usize {
    (len / (4 * rayon::current_num_threads())).max(16 * 1024)
}

/// The one loop under every map-style kernel: walks `runs` in row-major order and calls
/// `body(out_span, start_offsets)` for consecutive spans of `out`, in parallel chunks when
/// `out` is large. Element `i` of a span reads layout `k` at
/// `start_offsets[k] + i * runs.run_strides()[k]`.
pub(crate) fn fill<U: Send, const N: usize>(
    out: &mut [MaybeUninit<U>],
    runs: &Runs<N>,
    work: Work,
    body: impl Fn(&mut [MaybeUninit<U>], [usize; N]) + Sync,
) {
    let fill_chunk = |chunk: &mut [MaybeUninit<U>], start: usize| {
        let mut position = 0;
        runs.for_each_span(start..start + chunk.len(), |offsets, len| {
            body(&mut chunk[position..position + len], offsets);
            position += len;
        });
    };
    if out.len() < work.parallel_min() {
        fill_chunk(out, 0);
    } else {
        let chunk_len = parallel_chunk_len(out.len());
        out.par_chunks_mut(chunk_len)
            .enumerate()
            .for_each(|(i, chunk)| fill_chunk(chunk, i * chunk_len));
    }
}

/// A vector of `len` elements that `write` initializes, allocated without zeroing it first
/// (`vec![0; n]` would write every byte twice).
///
/// `write` must initialize every element of the slice it is given; the shared loops below do
/// (`fill` covers every position of its runs, `apply1`/`apply2` every element of equal-length
/// slices), as does `conv_direct::padded` (every value of every padded plane).
pub(crate) fn filled<U>(len: usize, write: impl FnOnce(&mut [MaybeUninit<U>])) -> Vec<U> {
    let mut out = Vec::with_capacity(len);
    write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `write` initialized all `len` elements (the contract above).
    unsafe { out.set_len(len) };
    out
}

/// What `map1_work` applies to each element: any `Fn(T) -> U`, or a type whose `apply` is
/// `#[inline(always)]`, which the loop's SIMD copies then inline whatever its size. The
/// compiler inlines a closure only when it judges it small: softplus's, not inlined, ran as a
/// call per element from a loop compiled for AVX-512, 60 ns each.
pub(crate) trait Elementwise<T, U>: Sync {
    fn apply(&self, x: T) -> U;
}

impl<T, U, F: Fn(T) -> U + Sync> Elementwise<T, U> for F {
    #[inline(always)]
    fn apply(&self, x: T) -> U {
        self(x)
    }
}

/// [`Elementwise`] of two inputs, for `map2_work`.
pub(crate) trait Elementwise2<A, B, U>: Sync {
    fn apply(&self, a: A, b: B) -> U;
}

impl<A, B, U, F: Fn(A, B) -> U + Sync> Elementwise2<A, B, U> for F {
    #[inline(always)]
    fn apply(&self, a: A, b: B) -> U {
        self(a, b)
    }
}

/// [`Elementwise`] of three inputs, for `map3_work`.
pub(crate) trait Elementwise3<A, B, C, U>: Sync {
    fn apply(&self, a: A, b: B, c: C) -> U;
}

impl<A, B, C, U, F: Fn(A, B, C) -> U + Sync> Elementwise3<A, B, C, U> for F {
    #[inline(always)]
    fn apply(&self, a: A, b: B, c: C) -> U {
        self(a, b, c)
    }
}

/// `out[i] = f(src[i])` in the row-major order of `layout`, for light work.
pub(crate) fn map1<T: Copy + Sync, U: Copy + Send>(
    src: &[T],
    layout: &Layout,
    f: impl Fn(T) -> U + Sync,
) -> Vec<U> {
    map1_work(Work::Light, src, layout, f)
}

/// `out[i] = f(src[i])` in the row-major order of `layout`.
pub(crate) fn map1_work<T: Copy + Sync, U: Copy + Send>(
    work: Work,
    src: &[T],
    layout: &Layout,
    f: impl Elementwise<T, U>,
) -> Vec<U> {
    if let Some(range) = layout.contiguous_range() {
        // Chunks of slices, not an iterator chain: the loop body vectorizes.
        let src = &src[range];
        return filled(src.len(), |out| {
            let chunk = |(out, src): (&mut [MaybeUninit<U>], &[T])| apply1(out, src, &f);
            if src.len() < work.parallel_min() {
                chunk((out, src));
            } else {
                let chunk_len = parallel_chunk_len(src.len());
                out.par_chunks_mut(chunk_len)
                    .zip(src.par_chunks(chunk_len))
                    .for_each(chunk);
            }
        });
    }
    let runs = Runs::for_layouts([layout]);
    let [stride] = runs.run_strides();
    filled(layout.elem_count(), |out| {
        fill(out, &runs, work, |span, [start]| {
            for (i, o) in span.iter_mut().enumerate() {
                o.write(f.apply(src[start + i * stride]));
            }
        })
    })
}

/// Defines a function whose body runs compiled for AVX-512 or AVX2+FMA when the CPU has them
/// (`simd::level`), else for baseline x86-64 (the crate's own target, SSE2): the body is
/// an `#[inline(always)]` function, copied into one `#[target_feature]` function per level.
/// Its arguments are plain names; what the body calls through them must be inlinable
/// (`Elementwise` and the like) for the copies to vectorize it.
macro_rules! simd_versions {
    (
        $(#[$attr:meta])*
        fn $name:ident<$($g:ident $(: $bound:path)?),*>($($arg:ident: $ty:ty),* $(,)?) $body:block
    ) => {
        $(#[$attr])*
        #[inline]
        fn $name<$($g $(: $bound)?),*>($($arg: $ty),*) {
            #[inline(always)]
            fn body<$($g $(: $bound)?),*>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            match $crate::cpu::simd::level() {
                $crate::cpu::simd::Level::Avx512 => {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    unsafe fn avx512<$($g $(: $bound)?),*>($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    // SAFETY: the CPU has AVX-512F, AVX2 and FMA.
                    return unsafe { avx512($($arg),*) };
                }
                $crate::cpu::simd::Level::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn avx2<$($g $(: $bound)?),*>($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
                $crate::cpu::simd::Level::Baseline => {}
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_versions;

simd_versions! {
    /// `out[i] = f(src[i])` over slices. A function of its own so that `out` arrives as a `&mut`
    /// argument, which the compiler knows aliases nothing else: in a closure it cannot tell `out`
    /// from the values `f` captured, reloads them every element and gives up on vectorizing.
    fn apply1<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Elementwise<T, U>) {
        debug_assert_eq!(out.len(), src.len());
        for (o, &x) in out.iter_mut().zip(src) {
            o.write(f.apply(x));
        }
    }
}

simd_versions! {
    /// `out[i] = f(lhs[i], rhs[i])` over slices (see `apply1`).
    fn apply2<A: Copy, B: Copy, U>(
        out: &mut [MaybeUninit<U>],
        lhs: &[A],
        rhs: &[B],
        f: &impl Elementwise2<A, B, U>,
    ) {
        debug_assert!(out.len() == lhs.len() && out.len() == rhs.len());
        for ((o, &x), &y) in out.iter_mut().zip(lhs).zip(rhs) {
            o.write(f.apply(x, y));
        }
    }
}

simd_versions! {
    /// `out[i] = f(a[i], b[i], c[i])` over slices (see `apply1`).
    fn apply3<A: Copy, B: Copy, C: Copy, U>(
        out: &mut [MaybeUninit<U>],
        inputs: (&[A], &[B], &[C]),
        f: &impl Elementwise3<A, B, C, U>,
    ) {
        let (a, b, c) = inputs;
        debug_assert!(out.len() == a.len() && out.len() == b.len() && out.len() == c.len());
        for (((o, &x), &y), &z) in out.iter_mut().zip(a).zip(b).zip(c) {
            o.write(f.apply(x, y, z));
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::sync::OnceLock;

    /// The widest vectors the elementwise loops are compiled for on this CPU.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) enum Level {
        Avx512,
        Avx2,
        Baseline,
    }

    /// This CPU's level (checked once): AVX-512F (with AVX2 and FMA), else AVX2 and FMA, else
    /// baseline x86-64; `KILN_CPU_KERNEL`, which picks the GEMM's micro-kernel, caps it
    /// (`avx2+fma`: an AVX2-only machine; `portable`: baseline).
    pub(crate) fn level() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            let avx512 = avx2 && std::arch::is_x86_feature_detected!("avx512f");
            match std::env::var("KILN_CPU_KERNEL").as_deref() {
                Ok("portable") => Level::Baseline,
                Ok("avx2+fma") if avx2 => Level::Avx2,
                _ if avx512 => Level::Avx512,
                _ if avx2 => Level::Avx2,
                _ => Level::Baseline,
            }
        })
    }

    /// Whether the loops may use AVX2 and FMA.
    pub(crate) fn has_avx2() -> bool {
        level() != Level::Baseline
    }
}

/// `out[i] = f(lhs[i], rhs[i])` for two same-shaped layouts, for light work.
pub(crate) fn map2<A: Copy + Sync, B: Copy + Sync, U: Copy + Send>(
    lhs: &[A],
    lhs_layout: &Layout,
    rhs: &[B],
    rhs_layout: &Layout,
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    map2_work(Work::Light, (lhs, lhs_layout), (rhs, rhs_layout), f)
}

/// `out[i] = f(lhs[i], rhs[i])` for two same-shaped layouts.
pub(crate) fn map2_work<A: Copy + Sync, B: Copy + Sync, U: Copy + Send>(
    work: Work,
    (lhs, lhs_layout): (&[A], &Layout),
    (rhs, rhs_layout): (&[B], &Layout),
    f: impl Elementwise2<A, B, U>,
) -> Vec<U> {
    let runs = Runs::for_layouts([lhs_layout, rhs_layout]);
    filled(lhs_layout.elem_count(), |out| match runs.run_strides() {
        // Both contiguous along the run: slices, which the compiler vectorizes.
        [1, 1] => fill(out, &runs, work, |span, [a, b]| {
            let len = span.len();
            apply2(span, &lhs[a..a + len], &rhs[b..b + len], &f)
        }),
        // A row against a broadcast scalar (bias-like).
        [1, 0] => fill(out, &runs, work, |span, [a, b]| {
            let (y, len) = (rhs[b], span.len());
            apply1(span, &lhs[a..a + len], &|x| f.apply(x, y))
        }),
        [lhs_stride, rhs_stride] => fill(out, &runs, work, |span, [a, b]| {
            for (i, o) in span.iter_mut().enumerate() {
                o.write(f.apply(lhs[a + i * lhs_stride], rhs[b + i * rhs_stride]));
            }
        }),
    })
}

/// `out[i] = f(a[i], b[i], c[i])` for three same-shaped layouts, for light work.
pub(crate) fn map3<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, U: Copy + Send>(
    a: (&[A], &Layout),
    b: (&[B], &Layout),
    c: (&[C], &Layout),
    f: impl Fn(A, B, C) -> U + Sync,
) -> Vec<U> {
    map3_work(Work::Light, a, b, c, f)
}

/// `out[i] = f(a[i], b[i], c[i])` for three same-shaped layouts.
pub(crate) fn map3_work<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, U: Copy + Send>(
    work: Work,
    (a, a_layout): (&[A], &Layout),
    (b, b_layout): (&[B], &Layout),
    (c, c_layout): (&[C], &Layout),
    f: impl Elementwise3<A, B, C, U>,
) -> Vec<U> {
    let runs = Runs::for_layouts([a_layout, b_layout, c_layout]);
    let [sa, sb, sc] = runs.run_strides();
    filled(a_layout.elem_count(), |out| {
        fill(out, &runs, work, |span, [oa, ob, oc]| {
            let len = span.len();
            if [sa, sb, sc] == [1, 1, 1] {
                let inputs = (&a[oa..oa + len], &b[ob..ob + len], &c[oc..oc + len]);
                return apply3(span, inputs, &f);
            }
            for (i, o) in span.iter_mut().enumerate() {
                o.write(f.apply(a[oa + i * sa], b[ob + i * sb], c[oc + i * sc]));
            }
        })
    })
}
