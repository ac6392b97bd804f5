//! The CPU backend: storage as typed `Vec`s and kernels over strided layouts. Elementwise
//! kernels share one loop (`fill`/`map1`/`map2`/`map3`), split over rayon's threads above
//! measured sizes (`Work`); the matrix product is the packed SIMD GEMM in `gemm.rs`.

mod allocator;
mod conv;
mod elementwise;
pub(crate) mod gemm;
mod index;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;

pub use allocator::tune_allocator;
mod reduce;

use half::{bf16, f16};
use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::backend::BackendStorage;
use crate::layout::Runs;
use crate::ops::conv::check_resize;
use crate::{
    Activation, AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Error, FloatDType,
    Layout, ReduceOp, Result, UnaryOp, WithDType,
};

/// A tensor's elements in host memory.
#[derive(Debug, Clone, PartialEq)]
pub enum CpuStorage {
    U8(Vec<u8>),
    U32(Vec<u32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Runs `$body` with `$data` bound to the typed `Vec` of any dtype; the body's result is
/// rewrapped in the same variant.
macro_rules! map_any {
    ($storage:expr, $data:ident => $body:expr) => {
        match $storage {
            CpuStorage::U8($data) => CpuStorage::U8($body),
            CpuStorage::U32($data) => CpuStorage::U32($body),
            CpuStorage::F16($data) => CpuStorage::F16($body),
            CpuStorage::BF16($data) => CpuStorage::BF16($body),
            CpuStorage::F32($data) => CpuStorage::F32($body),
            CpuStorage::F64($data) => CpuStorage::F64($body),
        }
    };
}

/// Like `map_any!` for float dtypes; integer dtypes are an `UnsupportedDType` error for `$op`.
macro_rules! map_float {
    ($op:expr, $storage:expr, $data:ident => $body:expr) => {
        match $storage {
            CpuStorage::F16($data) => CpuStorage::F16($body),
            CpuStorage::BF16($data) => CpuStorage::BF16($body),
            CpuStorage::F32($data) => CpuStorage::F32($body),
            CpuStorage::F64($data) => CpuStorage::F64($body),
            other => {
                return Err(Error::UnsupportedDType {
                    op: $op,
                    dtype: other.dtype(),
                })
            }
        }
    };
}

/// Runs `$body` with `$a` and `$b` bound to two `Vec`s of the same dtype, or returns a
/// `DTypeMismatch` for `$op`. `$wrap` picks how the body's result is wrapped.
macro_rules! zip_same {
    ($op:expr, $lhs:expr, $rhs:expr, ($a:ident, $b:ident) => $body:expr) => {
        match ($lhs, $rhs) {
            (CpuStorage::U8($a), CpuStorage::U8($b)) => $body,
            (CpuStorage::U32($a), CpuStorage::U32($b)) => $body,
            (CpuStorage::F16($a), CpuStorage::F16($b)) => $body,
            (CpuStorage::BF16($a), CpuStorage::BF16($b)) => $body,
            (CpuStorage::F32($a), CpuStorage::F32($b)) => $body,
            (CpuStorage::F64($a), CpuStorage::F64($b)) => $body,
            (lhs, rhs) => {
                return Err(Error::DTypeMismatch {
                    op: $op,
                    lhs: lhs.dtype(),
                    rhs: rhs.dtype(),
                })
            }
        }
    };
}

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
    /// Outputs at least this long are split over rayon's threads. Measured on the 2-core
    /// machine with the threshold at 1, best of 3, µs for 1 thread vs 2: add at 2^16 elements
    /// 7.9 vs 12.6, at 2^18 38.5 vs 41.4, at 2^20 148 vs 143 (memory-bound, ~85 GB/s from one
    /// core); exp at 2^13 11.7 vs 11.6, at 2^14 23.0 vs 14.5, at 2^20 1566 vs 932.
    pub(crate) const fn parallel_min(self) -> usize {
        match self {
            Work::Light => 1 << 20,
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
/// slices).
fn filled<U>(len: usize, write: impl FnOnce(&mut [MaybeUninit<U>])) -> Vec<U> {
    let mut out = Vec::with_capacity(len);
    write(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `write` initialized all `len` elements (the contract above).
    unsafe { out.set_len(len) };
    out
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
    f: impl Fn(T) -> U + Sync,
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
                o.write(f(src[start + i * stride]));
            }
        })
    })
}

/// `out[i] = f(src[i])` over slices. A function of its own so that `out` arrives as a `&mut`
/// argument, which the compiler knows aliases nothing else: in a closure it cannot tell `out`
/// from the values `f` captured, reloads them every element and gives up on vectorizing.
/// On CPUs with AVX2 the same loop runs compiled for AVX2 (the crate itself targets baseline
/// x86-64, SSE2).
#[inline]
fn apply1<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Fn(T) -> U) {
    #[inline(always)]
    fn body<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Fn(T) -> U) {
        debug_assert_eq!(out.len(), src.len());
        for (o, &x) in out.iter_mut().zip(src) {
            o.write(f(x));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Fn(T) -> U) {
            body(out, src, f)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2(out, src, f) };
    }
    body(out, src, f)
}

/// `out[i] = f(lhs[i], rhs[i])` over slices (see `apply1`).
#[inline]
fn apply2<A: Copy, B: Copy, U>(
    out: &mut [MaybeUninit<U>],
    lhs: &[A],
    rhs: &[B],
    f: &impl Fn(A, B) -> U,
) {
    #[inline(always)]
    fn body<A: Copy, B: Copy, U>(
        out: &mut [MaybeUninit<U>],
        lhs: &[A],
        rhs: &[B],
        f: &impl Fn(A, B) -> U,
    ) {
        debug_assert!(out.len() == lhs.len() && out.len() == rhs.len());
        for ((o, &x), &y) in out.iter_mut().zip(lhs).zip(rhs) {
            o.write(f(x, y));
        }
    }
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<A: Copy, B: Copy, U>(
            out: &mut [MaybeUninit<U>],
            lhs: &[A],
            rhs: &[B],
            f: &impl Fn(A, B) -> U,
        ) {
            body(out, lhs, rhs, f)
        }
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2(out, lhs, rhs, f) };
    }
    body(out, lhs, rhs, f)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::sync::OnceLock;

    /// Whether this CPU has AVX2 and FMA (checked once).
    pub(crate) fn has_avx2() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
}

/// `out[i] = f(lhs[i], rhs[i])` for two same-shaped layouts.
pub(crate) fn map2<A: Copy + Sync, B: Copy + Sync, U: Copy + Send>(
    lhs: &[A],
    lhs_layout: &Layout,
    rhs: &[B],
    rhs_layout: &Layout,
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    let runs = Runs::for_layouts([lhs_layout, rhs_layout]);
    filled(lhs_layout.elem_count(), |out| match runs.run_strides() {
        // Both contiguous along the run: slices, which the compiler vectorizes.
        [1, 1] => fill(out, &runs, Work::Light, |span, [a, b]| {
            let len = span.len();
            apply2(span, &lhs[a..a + len], &rhs[b..b + len], &f)
        }),
        // A row against a broadcast scalar (bias-like).
        [1, 0] => fill(out, &runs, Work::Light, |span, [a, b]| {
            let (y, len) = (rhs[b], span.len());
            apply1(span, &lhs[a..a + len], &|x| f(x, y))
        }),
        [lhs_stride, rhs_stride] => fill(out, &runs, Work::Light, |span, [a, b]| {
            for (i, o) in span.iter_mut().enumerate() {
                o.write(f(lhs[a + i * lhs_stride], rhs[b + i * rhs_stride]));
            }
        }),
    })
}

/// `out[i] = f(a[i], b[i], c[i])` for three same-shaped layouts.
pub(crate) fn map3<A: Copy + Sync, B: Copy + Sync, C: Copy + Sync, U: Copy + Send>(
    (a, a_layout): (&[A], &Layout),
    (b, b_layout): (&[B], &Layout),
    (c, c_layout): (&[C], &Layout),
    f: impl Fn(A, B, C) -> U + Sync,
) -> Vec<U> {
    let runs = Runs::for_layouts([a_layout, b_layout, c_layout]);
    let [sa, sb, sc] = runs.run_strides();
    filled(a_layout.elem_count(), |out| {
        fill(out, &runs, Work::Light, |span, [oa, ob, oc]| {
            for (i, o) in span.iter_mut().enumerate() {
                o.write(f(a[oa + i * sa], b[ob + i * sb], c[oc + i * sc]));
            }
        })
    })
}

impl CpuStorage {
    pub fn from_vec<T: WithDType>(data: Vec<T>) -> Self {
        // Safe downcast through Any: T is exactly one of the six element types.
        let any: Box<dyn std::any::Any> = Box::new(data);
        let any = match any.downcast::<Vec<u8>>() {
            Ok(v) => return CpuStorage::U8(*v),
            Err(any) => any,
        };
        let any = match any.downcast::<Vec<u32>>() {
            Ok(v) => return CpuStorage::U32(*v),
            Err(any) => any,
        };
        let any = match any.downcast::<Vec<f16>>() {
            Ok(v) => return CpuStorage::F16(*v),
            Err(any) => any,
        };
        let any = match any.downcast::<Vec<bf16>>() {
            Ok(v) => return CpuStorage::BF16(*v),
            Err(any) => any,
        };
        let any = match any.downcast::<Vec<f32>>() {
            Ok(v) => return CpuStorage::F32(*v),
            Err(any) => any,
        };
        match any.downcast::<Vec<f64>>() {
            Ok(v) => CpuStorage::F64(*v),
            Err(_) => unreachable!("WithDType is implemented only for the six element types"),
        }
    }

    /// The elements as `&[T]`, if `T` is this storage's element type.
    pub fn as_slice<T: WithDType>(&self) -> Option<&[T]> {
        let any: &dyn std::any::Any = match self {
            CpuStorage::U8(v) => v,
            CpuStorage::U32(v) => v,
            CpuStorage::F16(v) => v,
            CpuStorage::BF16(v) => v,
            CpuStorage::F32(v) => v,
            CpuStorage::F64(v) => v,
        };
        any.downcast_ref::<Vec<T>>().map(|v| v.as_slice())
    }

    /// `len` copies of `value`, rounded to `dtype`.
    pub fn full(value: f64, len: usize, dtype: DType) -> Self {
        fn fill_with<T: WithDType>(value: f64, len: usize) -> Vec<T> {
            vec![T::from_f64(value); len]
        }
        match dtype {
            DType::U8 => CpuStorage::U8(fill_with(value, len)),
            DType::U32 => CpuStorage::U32(fill_with(value, len)),
            DType::F16 => CpuStorage::F16(fill_with(value, len)),
            DType::BF16 => CpuStorage::BF16(fill_with(value, len)),
            DType::F32 => CpuStorage::F32(fill_with(value, len)),
            DType::F64 => CpuStorage::F64(fill_with(value, len)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::U8(v) => v.len(),
            CpuStorage::U32(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F32(v) => v.len(),
            CpuStorage::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `other`'s elements as `&[T]`, where `T` is this storage's element type, or a
    /// `DTypeMismatch` for `op` naming both dtypes.
    fn same_typed<'a, T: WithDType>(
        &self,
        op: &'static str,
        other: &'a CpuStorage,
    ) -> Result<&'a [T]> {
        other.as_slice().ok_or(Error::DTypeMismatch {
            op,
            lhs: self.dtype(),
            rhs: other.dtype(),
        })
    }

    /// Index values of a `u32` tensor, each checked against `size` (the extent of `dim`).
    fn indices(
        &self,
        layout: &Layout,
        op: &'static str,
        dim: usize,
        size: usize,
    ) -> Result<Vec<usize>> {
        let CpuStorage::U32(data) = self else {
            return Err(Error::invalid(
                op,
                format!("indices must be u32, got {}", self.dtype()),
            ));
        };
        let indices = map1(data, layout, |i| i as usize);
        match indices.iter().find(|&&i| i >= size) {
            Some(&index) => Err(Error::IndexOutOfRange {
                op,
                index,
                dim,
                size,
            }),
            None => Ok(indices),
        }
    }
}

/// The shape of `[.., m, k] x [.., k, n]`: `[.., m, n]`.
fn output_shape(layout: &Layout, rhs_layout: &Layout) -> crate::Shape {
    let mut dims = layout.dims().to_vec();
    let last = dims.len() - 1;
    dims[last] = rhs_layout.dims()[last];
    crate::Shape::from(dims)
}

impl BackendStorage for CpuStorage {
    fn dtype(&self) -> DType {
        match self {
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::U32(_) => DType::U32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        Ok(map_any!(self, data => map1(data, layout, |x| x)))
    }

    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        fn convert<T: WithDType>(storage: &CpuStorage, layout: &Layout) -> Vec<T> {
            match storage {
                CpuStorage::U8(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::U32(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F16(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::BF16(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F32(v) => map1(v, layout, |x| T::from_f64(x.to_f64())),
                CpuStorage::F64(v) => map1(v, layout, |x| T::from_f64(x)),
            }
        }
        Ok(match dtype {
            DType::U8 => CpuStorage::U8(convert(self, layout)),
            DType::U32 => CpuStorage::U32(convert(self, layout)),
            DType::F16 => CpuStorage::F16(convert(self, layout)),
            DType::BF16 => CpuStorage::BF16(convert(self, layout)),
            DType::F32 => CpuStorage::F32(convert(self, layout)),
            DType::F64 => CpuStorage::F64(convert(self, layout)),
        })
    }

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        Ok(map_float!("unary op", self, data => elementwise::unary(data, layout, op)))
    }

    fn binary(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        op: BinaryOp,
    ) -> Result<Self> {
        Ok(map_float!("binary op", self, data => {
            let rhs = self.same_typed("binary op", rhs)?;
            elementwise::binary(data, layout, rhs, rhs_layout, op)
        }))
    }

    fn compare(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout, op: CmpOp) -> Result<Self> {
        Ok(CpuStorage::U8(zip_same!("compare", self, rhs, (a, b) => {
            elementwise::compare(a, layout, b, rhs_layout, op)
        })))
    }

    fn where_cond(
        &self,
        layout: &Layout,
        on_true: &Self,
        true_layout: &Layout,
        on_false: &Self,
        false_layout: &Layout,
    ) -> Result<Self> {
        fn select<C: WithDType>(
            condition: (&[C], &Layout),
            on_true: &CpuStorage,
            true_layout: &Layout,
            on_false: &CpuStorage,
            false_layout: &Layout,
        ) -> Result<CpuStorage> {
            Ok(zip_same!("where_cond", on_true, on_false, (a, b) => {
                CpuStorage::from_vec(map3(condition, (a, true_layout), (b, false_layout),
                    |c, x, y| if c.is_nonzero() { x } else { y }))
            }))
        }
        match self {
            CpuStorage::U8(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::U32(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::F16(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::BF16(c) => {
                select((c, layout), on_true, true_layout, on_false, false_layout)
            }
            CpuStorage::F32(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
            CpuStorage::F64(c) => select((c, layout), on_true, true_layout, on_false, false_layout),
        }
    }

    fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Self> {
        Ok(map_float!("reduce", self, data => reduce::reduce(data, layout, op, dims)))
    }

    fn softmax(&self, layout: &Layout, dim: usize, log: bool) -> Result<Self> {
        Ok(map_float!("softmax", self, data => reduce::softmax(data, layout, dim, log)))
    }

    fn matmul(&self, layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self> {
        // Half types widen to f32 (exactly), multiply with f32 accumulation, and round once.
        fn widened<T: FloatDType<Math = f32>>(
            lhs: (&[T], &Layout),
            rhs: (&[T], &Layout),
        ) -> Vec<T> {
            let a = map1(lhs.0, lhs.1, |x| x.to_math());
            let b = map1(rhs.0, rhs.1, |x| x.to_math());
            let product = matmul::matmul(
                gemm::f32_kernel(),
                &a,
                &Layout::contiguous(lhs.1.shape().clone()),
                &b,
                &Layout::contiguous(rhs.1.shape().clone()),
            );
            product.into_iter().map(T::from_math).collect()
        }
        Ok(match self {
            CpuStorage::F32(a) => CpuStorage::F32(matmul::matmul(
                gemm::f32_kernel(),
                a,
                layout,
                self.same_typed("matmul", rhs)?,
                rhs_layout,
            )),
            CpuStorage::F64(a) => CpuStorage::F64(matmul::matmul(
                gemm::f64_kernel(),
                a,
                layout,
                self.same_typed("matmul", rhs)?,
                rhs_layout,
            )),
            CpuStorage::F16(a) => CpuStorage::F16(widened(
                (a, layout),
                (self.same_typed("matmul", rhs)?, rhs_layout),
            )),
            CpuStorage::BF16(a) => CpuStorage::BF16(widened(
                (a, layout),
                (self.same_typed("matmul", rhs)?, rhs_layout),
            )),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "matmul",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn matmul_bias_act(
        &self,
        layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
        activation: Activation,
    ) -> Result<Self> {
        // The composition, as the tensor ops would run it: the product, then the bias
        // broadcast along rows, then the activation.
        let mut out = self.matmul(layout, rhs, rhs_layout)?;
        let out_layout = Layout::contiguous(output_shape(layout, rhs_layout));
        if let Some((bias, bias_layout)) = bias {
            let rows = bias_layout.broadcast_as(out_layout.shape())?;
            out = out.binary(&out_layout, bias, &rows, BinaryOp::Add)?;
        }
        if let Some(unary) = activation.unary() {
            out = out.unary(&out_layout, unary)?;
        }
        Ok(out)
    }

    fn im2col(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_any!(self, data => conv::im2col(&index::row_major(data, layout), g)))
    }

    fn col2im(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("col2im", self, data => conv::col2im(&index::row_major(data, layout), g)))
    }

    fn cat(parts: &[(&Self, &Layout)], dim: usize) -> Result<Self> {
        let (first, _) = parts
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        Ok(map_any!(first, data => {
            let _ = data;
            let typed = parts
                .iter()
                .map(|(storage, layout)| {
                    storage
                        .as_slice()
                        .map(|slice| (slice, *layout))
                        .ok_or(Error::DTypeMismatch { op: "cat", lhs: first.dtype(), rhs: storage.dtype() })
                })
                .collect::<Result<Vec<_>>>()?;
            index::cat(&typed, dim)
        }))
    }

    fn index_select(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "index_select", dim, layout.dims()[dim])?;
        Ok(map_any!(self, data => index::index_select(data, layout, &indices, dim)))
    }

    fn index_add(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        source: &Self,
        source_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "index_add", dim, layout.dims()[dim])?;
        Ok(map_float!("index_add", self, data => {
            let source = self.same_typed("index_add", source)?;
            index::index_add(data, layout, &indices, source, source_layout, dim)
        }))
    }

    fn gather(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "gather", dim, layout.dims()[dim])?;
        Ok(map_any!(self, data => index::gather(data, layout, &indices, index_layout.shape(), dim)))
    }

    fn scatter_add(
        &self,
        layout: &Layout,
        index: &Self,
        index_layout: &Layout,
        source: &Self,
        source_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        let indices = index.indices(index_layout, "scatter_add", dim, layout.dims()[dim])?;
        Ok(map_float!("scatter_add", self, data => {
            let source = self.same_typed("scatter_add", source)?;
            index::scatter_add(data, layout, &indices, source, source_layout, dim)
        }))
    }

    fn adam_step(
        &self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        exp_avg: &Self,
        exp_avg_layout: &Layout,
        exp_avg_sq: &Self,
        exp_avg_sq_layout: &Layout,
        step: &AdamStep,
    ) -> Result<(Self, Self, Self)> {
        fn typed<T: FloatDType>(
            (param, layout): (&[T], &Layout),
            rest: [(&CpuStorage, &Layout); 3],
            step: &AdamStep,
        ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
            let [grad, exp_avg, exp_avg_sq] = rest.map(|(storage, layout)| {
                let data = storage.as_slice::<T>().ok_or(Error::DTypeMismatch {
                    op: "adam_step",
                    lhs: T::DTYPE,
                    rhs: storage.dtype(),
                })?;
                Ok(index::row_major(data, layout))
            });
            let (p, m, v) = optim::adam_step(
                &index::row_major(param, layout),
                &grad?,
                &exp_avg?,
                &exp_avg_sq?,
                step,
            );
            Ok((
                CpuStorage::from_vec(p),
                CpuStorage::from_vec(m),
                CpuStorage::from_vec(v),
            ))
        }
        let rest = [
            (grad, grad_layout),
            (exp_avg, exp_avg_layout),
            (exp_avg_sq, exp_avg_sq_layout),
        ];
        match self {
            CpuStorage::F16(p) => typed((p, layout), rest, step),
            CpuStorage::BF16(p) => typed((p, layout), rest, step),
            CpuStorage::F32(p) => typed((p, layout), rest, step),
            CpuStorage::F64(p) => typed((p, layout), rest, step),
            other => Err(Error::UnsupportedDType {
                op: "adam_step",
                dtype: other.dtype(),
            }),
        }
    }

    fn max_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<(Self, Self)> {
        fn typed<T: FloatDType>(
            data: &[T],
            layout: &Layout,
            g: &Conv2dGeometry,
        ) -> (CpuStorage, CpuStorage) {
            let (values, indices) = pool::max_pool2d(&index::row_major(data, layout), g);
            (CpuStorage::from_vec(values), CpuStorage::U32(indices))
        }
        Ok(match self {
            CpuStorage::F16(data) => typed(data, layout, g),
            CpuStorage::BF16(data) => typed(data, layout, g),
            CpuStorage::F32(data) => typed(data, layout, g),
            CpuStorage::F64(data) => typed(data, layout, g),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "max_pool2d",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        indices: &Self,
        indices_layout: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        let CpuStorage::U32(indices) = indices else {
            return Err(Error::invalid(
                "max_pool2d_backward",
                format!("indices must be u32, got {}", indices.dtype()),
            ));
        };
        let indices = index::row_major(indices, indices_layout);
        Ok(map_float!("max_pool2d_backward", self, data => {
            pool::max_pool2d_backward(&index::row_major(data, layout), &indices, g)
        }))
    }

    fn avg_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("avg_pool2d", self, data => {
            pool::avg_pool2d(&index::row_major(data, layout), g)
        }))
    }

    fn avg_pool2d_backward(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        Ok(map_float!("avg_pool2d_backward", self, data => {
            pool::avg_pool2d_backward(&index::row_major(data, layout), g)
        }))
    }

    fn upsample_nearest2d(
        &self,
        layout: &Layout,
        out_height: usize,
        out_width: usize,
    ) -> Result<Self> {
        let dims = layout.image_dims("upsample_nearest2d")?;
        check_resize("upsample_nearest2d", dims, [out_height, out_width])?;
        Ok(map_any!(self, data => {
            pool::upsample_nearest2d(&index::row_major(data, layout), dims, [out_height, out_width])
        }))
    }

    fn upsample_nearest2d_backward(
        &self,
        layout: &Layout,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        let [batch, channels, out_height, out_width] =
            layout.image_dims("upsample_nearest2d_backward")?;
        check_resize(
            "upsample_nearest2d_backward",
            [batch, channels, height, width],
            [out_height, out_width],
        )?;
        Ok(map_float!("upsample_nearest2d_backward", self, data => {
            pool::upsample_nearest2d_backward(
                &index::row_major(data, layout),
                [batch, channels, height, width],
                [out_height, out_width],
            )
        }))
    }

    fn batch_norm_stats(&self, layout: &Layout) -> Result<(Self, Self)> {
        fn typed<T: FloatDType>(data: &[T], layout: &Layout) -> (CpuStorage, CpuStorage) {
            let (mean, var) = norm::batch_norm_stats(data, layout);
            (CpuStorage::from_vec(mean), CpuStorage::from_vec(var))
        }
        Ok(match self {
            CpuStorage::F16(x) => typed(x, layout),
            CpuStorage::BF16(x) => typed(x, layout),
            CpuStorage::F32(x) => typed(x, layout),
            CpuStorage::F64(x) => typed(x, layout),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "batch_norm",
                    dtype: other.dtype(),
                })
            }
        })
    }

    fn batch_norm_forward(
        &self,
        layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self> {
        const OP: &str = "batch_norm";
        Ok(map_float!(OP, self, x => {
            let weight = weight.map(|w| self.same_typed(OP, w)).transpose()?;
            let bias = bias.map(|b| self.same_typed(OP, b)).transpose()?;
            norm::batch_norm_forward(
                x,
                layout,
                self.same_typed(OP, mean)?,
                self.same_typed(OP, invstd)?,
                weight,
                bias,
            )
        }))
    }

    fn batch_norm_backward(
        &self,
        layout: &Layout,
        x: &Self,
        x_layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)> {
        const OP: &str = "batch_norm_backward";
        fn typed<T: FloatDType>(
            grad: (&[T], &Layout),
            storages: [&CpuStorage; 3],
            x_layout: &Layout,
            weight: Option<&CpuStorage>,
        ) -> Result<(CpuStorage, CpuStorage, CpuStorage)> {
            fn typed<T: FloatDType>(s: &CpuStorage) -> Result<&[T]> {
                s.as_slice::<T>().ok_or(Error::DTypeMismatch {
                    op: OP,
                    lhs: T::DTYPE,
                    rhs: s.dtype(),
                })
            }
            let [x, mean, invstd] = storages;
            let weight = weight.map(typed::<T>).transpose()?;
            let (dx, dw, db) = norm::batch_norm_backward(
                grad,
                (typed(x)?, x_layout),
                typed(mean)?,
                typed(invstd)?,
                weight,
            );
            Ok((
                CpuStorage::from_vec(dx),
                CpuStorage::from_vec(dw),
                CpuStorage::from_vec(db),
            ))
        }
        let storages = [x, mean, invstd];
        match self {
            CpuStorage::F16(g) => typed((g, layout), storages, x_layout, weight),
            CpuStorage::BF16(g) => typed((g, layout), storages, x_layout, weight),
            CpuStorage::F32(g) => typed((g, layout), storages, x_layout, weight),
            CpuStorage::F64(g) => typed((g, layout), storages, x_layout, weight),
            other => Err(Error::UnsupportedDType {
                op: OP,
                dtype: other.dtype(),
            }),
        }
    }

    fn bce_with_logits(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
    ) -> Result<Self> {
        const OP: &str = "bce_with_logits";
        Ok(map_float!(OP, self, x => {
            loss::bce_with_logits((x, layout), (self.same_typed(OP, targets)?, targets_layout))
        }))
    }

    fn bce_with_logits_backward(
        &self,
        layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
    ) -> Result<Self> {
        const OP: &str = "bce_with_logits_backward";
        Ok(map_float!(OP, self, x => {
            loss::bce_with_logits_backward(
                (x, layout),
                (self.same_typed(OP, targets)?, targets_layout),
                (self.same_typed(OP, grad)?, grad_layout),
            )
        }))
    }
}
