//! `CpuStorage`: a tensor's elements in host memory, one typed `Vec` per dtype, with the macros
//! that run a body over whichever `Vec` it holds, and its constructors and accessors. The
//! backend trait's implementation is in backend.rs.

use half::{bf16, f16};

use super::map1;
use crate::backend::BackendStorage;
use crate::{DType, Error, Layout, Result, WithDType};

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

pub(super) use {map_any, map_float, zip_same};

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

    /// The elements as `&mut [T]`, if `T` is this storage's element type.
    pub(crate) fn as_mut_slice<T: WithDType>(&mut self) -> Option<&mut [T]> {
        let any: &mut dyn std::any::Any = match self {
            CpuStorage::U8(v) => v,
            CpuStorage::U32(v) => v,
            CpuStorage::F16(v) => v,
            CpuStorage::BF16(v) => v,
            CpuStorage::F32(v) => v,
            CpuStorage::F64(v) => v,
        };
        any.downcast_mut::<Vec<T>>().map(|v| v.as_mut_slice())
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
    pub(super) fn same_typed<'a, T: WithDType>(
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
    pub(super) fn indices(
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
