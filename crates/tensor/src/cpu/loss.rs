//! Fused loss kernels on the CPU: binary cross-entropy with logits and its logits gradient,
//! the references of kernels/loss.cu. Not for the reductions of a loss (kiln-nn's
//! `Reduction`), which are ordinary reduce ops.

use super::map2;
use super::vmath::VectorMath;
use crate::{FloatDType, Layout};

/// `softplus(x) - x·y` per element, exactly as the unfused ops computed it: softplus as
/// `UnaryOp::Softplus` (`VectorMath::vsoftplus`), the product and the difference each
/// rounded to T where the unfused op stored its output, so the two agree bit for bit.
pub(crate) fn bce_with_logits<T: FloatDType>(
    logits: (&[T], &Layout),
    targets: (&[T], &Layout),
) -> Vec<T> {
    let r = |v: T::Math| T::from_math(v).to_math();
    map2(logits.0, logits.1, targets.0, targets.1, |x: T, y: T| {
        let (x, y) = (x.to_math(), y.to_math());
        T::from_math(r(x.vsoftplus()) - r(x * y))
    })
}

/// `(sigmoid(x) - y)·grad` per element in the math type, sigmoid as `UnaryOp::Sigmoid`
/// (`VectorMath::vsigmoid`).
pub(crate) fn bce_with_logits_backward<T: FloatDType>(
    logits: (&[T], &Layout),
    targets: (&[T], &Layout),
    grad: (&[T], &Layout),
) -> Vec<T> {
    super::map3(logits, targets, grad, |x: T, y: T, g: T| {
        let (x, y, g) = (x.to_math(), y.to_math(), g.to_math());
        T::from_math((x.vsigmoid() - y) * g)
    })
}
