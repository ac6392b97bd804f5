//! Fused loss kernels on the CPU: binary cross-entropy with logits and its logits gradient,
//! the references of kernels/loss.cu. Not for the reductions of a loss (kiln-nn's
//! `Reduction`), which are ordinary reduce ops.

use super::vmath::VectorMath;
use super::{map2_work, map3_work, Elementwise2, Elementwise3, Work};
use crate::{FloatDType, Layout};

/// `softplus(x) - x·y` per element, exactly as the unfused ops computed it: softplus as
/// `UnaryOp::Softplus` (`VectorMath::vsoftplus`), the product and the difference each
/// rounded to T where the unfused op stored its output, so the two agree bit for bit.
pub(crate) fn bce_with_logits<T: FloatDType>(
    logits: (&[T], &Layout),
    targets: (&[T], &Layout),
) -> Vec<T> {
    map2_work(Work::Heavy, logits, targets, BceWithLogits)
}

/// `(sigmoid(x) - y)·grad` per element in the math type, sigmoid as `UnaryOp::Sigmoid`
/// (`VectorMath::vsigmoid`).
pub(crate) fn bce_with_logits_backward<T: FloatDType>(
    logits: (&[T], &Layout),
    targets: (&[T], &Layout),
    grad: (&[T], &Layout),
) -> Vec<T> {
    map3_work(Work::Heavy, logits, targets, grad, BceWithLogitsBackward)
}

/// The loss per element as a type, so that vmath's polynomials are inlined into the loops'
/// SIMD copies (as a closure, too large to inline, it ran as a baseline-x86 call per element:
/// a fifth of an MLP VAE step).
struct BceWithLogits;

impl<T: FloatDType> Elementwise2<T, T, T> for BceWithLogits {
    #[inline(always)]
    fn apply(&self, x: T, y: T) -> T {
        let r = |v: T::Math| T::from_math(v).to_math();
        let (x, y) = (x.to_math(), y.to_math());
        T::from_math(r(x.vsoftplus()) - r(x * y))
    }
}

/// The logits' gradient per element as a type (see [`BceWithLogits`]).
struct BceWithLogitsBackward;

impl<T: FloatDType> Elementwise3<T, T, T, T> for BceWithLogitsBackward {
    #[inline(always)]
    fn apply(&self, x: T, y: T, g: T) -> T {
        let (x, y, g) = (x.to_math(), y.to_math(), g.to_math());
        T::from_math((x.vsigmoid() - y) * g)
    }
}
