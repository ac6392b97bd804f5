//! Fused losses: binary cross-entropy with logits per element (`Tensor::bce_with_logits`), one
//! kernel forward and one backward where the composite took three and five. Not for the
//! reduction that follows (kiln-nn's `Reduction`).

use crate::backend::Operand;
use crate::op::Op;
use crate::{is_grad_enabled, Error, Result, Tensor};

impl Tensor {
    /// Per-element `softplus(x) - x·y` for logits `self` and targets `y` of the same shape
    /// (PyTorch's `binary_cross_entropy_with_logits(..., reduction="none")`, no weights), equal
    /// bit for bit to `self.softplus()?.sub(&self.mul(targets)?)`. Gradients: `(sigmoid(x) -
    /// y)·g` for the logits, `-x·g` for the targets.
    pub fn bce_with_logits(&self, targets: &Tensor) -> Result<Tensor> {
        const OP: &str = "bce_with_logits";
        self.float_only(OP)?;
        self.same_dtype(OP, targets)?;
        self.same_device(OP, targets)?;
        if self.shape() != targets.shape() {
            return Err(Error::invalid(
                OP,
                format!(
                    "logits {} and targets {} differ in shape",
                    self.shape(),
                    targets.shape()
                ),
            ));
        }
        let storage = self.storage().bce_with_logits(
            self.layout(),
            Operand::new(&targets.storage(), targets.layout()),
        )?;
        let record = Tensor::record(&[self, targets], || {
            Op::BceWithLogits(self.clone(), targets.clone())
        });
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }
}

/// Gradients of `bce_with_logits(logits, targets)`: the fused kernel for the logits in a plain
/// backward, the tracked composite `(sigmoid(x) - y)·g` when the backward is being recorded
/// (so second derivatives are exact); the targets' `-x·g` only when they are tracked.
pub(crate) fn bce_with_logits_backward(
    logits: &Tensor,
    targets: &Tensor,
    grad: &Tensor,
) -> Result<Vec<(Tensor, Tensor)>> {
    let logits_grad = if is_grad_enabled() {
        logits.sigmoid()?.sub(targets)?.mul(grad)?
    } else {
        let storage = logits.storage().bce_with_logits_backward(
            logits.layout(),
            Operand::new(&targets.storage(), targets.layout()),
            Operand::new(&grad.storage(), grad.layout()),
        )?;
        Tensor::from_storage(storage, logits.shape().clone(), None)
    };
    let mut grads = vec![(logits.clone(), logits_grad)];
    if targets.is_tracked() {
        grads.push((targets.clone(), logits.mul(grad)?.neg()?));
    }
    Ok(grads)
}
