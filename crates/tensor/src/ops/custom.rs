//! Functions kiln-tensor does not know, made differentiable by their callers: the value is
//! computed outside autograd and recorded as a function of its input with a backward rule the
//! caller supplies (candle's `CustomOp1`, PyTorch's `autograd.Function`). A sum over the
//! processes of a data-parallel run (kiln-nn's `parallel`) is one: its backward is the same sum
//! of the gradients.

use std::sync::Arc;

use crate::op::Op;
use crate::{Error, Result, Tensor};

/// The backward rule of a custom function of one tensor.
pub trait CustomBackward: Send + Sync {
    /// The function's name, for errors.
    fn name(&self) -> &'static str;
    /// The gradient reaching the input, given the gradient of the output (same shape).
    fn backward(&self, grad: &Tensor) -> Result<Tensor>;
}

impl Tensor {
    /// `output`, computed from this tensor outside autograd, recorded as a function of it
    /// whose gradient `rule` gives. The two must have the same shape, dtype and device;
    /// `output`'s own history, if any, is dropped.
    pub fn custom_unary(&self, output: &Tensor, rule: Arc<dyn CustomBackward>) -> Result<Tensor> {
        let same = self.shape() == output.shape()
            && self.dtype() == output.dtype()
            && self.device() == output.device();
        if !same {
            return Err(Error::invalid(
                rule.name(),
                format!(
                    "a custom function's output must match its input: {} {:?} on {} against {} {:?} on {}",
                    self.shape(),
                    self.dtype(),
                    self.device(),
                    output.shape(),
                    output.dtype(),
                    output.device()
                ),
            ));
        }
        let record = Tensor::record(&[self], || Op::Custom(self.clone(), rule));
        Ok(output.view(output.layout().clone(), record))
    }
}
