//! Element types. Floats do arithmetic; `u8` holds masks (what comparisons return) and `u32`
//! holds indices (`index_select`, `gather`, labels). `f16`/`bf16` are storage types: their
//! arithmetic runs in `f32` and rounds on store.

use half::{bf16, f16};

/// The element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    U8,
    U32,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::U32 | DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Rust type that can be the element of a tensor.
pub trait WithDType: Copy + Send + Sync + PartialOrd + std::fmt::Debug + Default + 'static {
    const DTYPE: DType;
    /// Exact for every type but f64 values outside f32's range stored as f32.
    fn to_f64(self) -> f64;
    /// Rounds (floats) or truncates and saturates (integers).
    fn from_f64(value: f64) -> Self;
    fn is_nonzero(self) -> bool;
}

/// A float element type, with the type its arithmetic is done in (`f32` for the half types).
pub trait FloatDType: WithDType {
    type Math: num_traits::Float
        + crate::cpu::vmath::VectorMath
        + Default
        + Send
        + Sync
        + std::fmt::Debug
        + 'static;
    fn to_math(self) -> Self::Math;
    fn from_math(value: Self::Math) -> Self;
    fn math_from_f64(value: f64) -> Self::Math;
    fn math_to_f64(value: Self::Math) -> f64;
}

macro_rules! with_dtype {
    ($ty:ty, $dtype:ident, $to_f64:expr, $from_f64:expr) => {
        impl WithDType for $ty {
            const DTYPE: DType = DType::$dtype;
            fn to_f64(self) -> f64 {
                $to_f64(self)
            }
            fn from_f64(value: f64) -> Self {
                $from_f64(value)
            }
            fn is_nonzero(self) -> bool {
                self != Self::default()
            }
        }
    };
}

with_dtype!(u8, U8, |v: u8| v as f64, |v: f64| v as u8);
with_dtype!(u32, U32, |v: u32| v as f64, |v: f64| v as u32);
// The halves from f64 round to f32 first, then to the half (as PyTorch's casts and half's f16
// conversion on x86's F16C do, and the CUDA kernels): exact for every f32 source. (`half`'s own
// bf16 conversion from f64 looks at the upper 32 bits only, so an f32 just above a halfway
// point rounded as a tie, and random bf16 draws, rounded from f32 on CUDA, differed by an ulp.)
with_dtype!(f16, F16, |v: f16| v.to_f64(), |v: f64| f16::from_f32(
    v as f32
));
with_dtype!(bf16, BF16, |v: bf16| v.to_f64(), |v: f64| bf16::from_f32(
    v as f32
));
with_dtype!(f32, F32, |v: f32| v as f64, |v: f64| v as f32);
with_dtype!(f64, F64, |v: f64| v, |v: f64| v);

macro_rules! float_dtype {
    ($ty:ty, $math:ty, $to_math:expr, $from_math:expr) => {
        impl FloatDType for $ty {
            type Math = $math;
            fn to_math(self) -> $math {
                $to_math(self)
            }
            fn from_math(value: $math) -> Self {
                $from_math(value)
            }
            fn math_from_f64(value: f64) -> $math {
                value as $math
            }
            fn math_to_f64(value: $math) -> f64 {
                value as f64
            }
        }
    };
}

float_dtype!(f16, f32, f16::to_f32, f16::from_f32);
float_dtype!(bf16, f32, bf16::to_f32, bf16::from_f32);
float_dtype!(f32, f32, |v| v, |v| v);
float_dtype!(f64, f64, |v| v, |v| v);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_from_f64_round_through_f32() {
        // An f32 just above a bf16 tie, broken only by the f32's last mantissa bits (which an
        // f64 keeps in its lower 32 bits): rounds up, as from the f32 itself.
        let above = 1.0 + 2f64.powi(-8) + 2f64.powi(-23);
        assert_eq!(
            <bf16 as WithDType>::from_f64(above).to_f64(),
            1.0 + 2f64.powi(-7)
        );
        assert_eq!(
            <bf16 as WithDType>::from_f64(1.0 + 2f64.powi(-8)),
            bf16::ONE
        );
        // An f64 tie-breaker too small for f32 is gone after the first rounding (PyTorch's
        // double-to-half casts do the same).
        let f16_tie = 1.0 + 2f64.powi(-11);
        assert_eq!(<f16 as WithDType>::from_f64(f16_tie + 1e-12), f16::ONE);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let value =
                f64::from_bits((state & 0x800f_ffff_ffff_ffff) | ((1013 + state % 20) << 52));
            let single = value as f32;
            assert_eq!(<bf16 as WithDType>::from_f64(value), bf16::from_f32(single));
            assert_eq!(<f16 as WithDType>::from_f64(value), f16::from_f32(single));
        }
        assert!(<bf16 as WithDType>::from_f64(f64::NAN).is_nan());
        assert_eq!(<bf16 as WithDType>::from_f64(1e300), bf16::INFINITY);
    }
}
