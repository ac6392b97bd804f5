//! The fused optimizer kernels: the Adam/AdamW step of many parameters at once (one pass over
//! each, one launch for up to 32 on a GPU, instead of eleven ops per parameter), fresh
//! (`Tensor::adam_step_many`) or in place (`Var::adam_step_many`, what optimizers run), and the
//! sums of squares gradient-norm clipping takes. Not differentiable: optimizers run them outside
//! the graph, on detached values.

use crate::backend::Operand;
use crate::{DType, Device, Error, Result, Tensor, Var};

/// The hyperparameters of one Adam (or AdamW) step, as `torch.optim.Adam` / `AdamW` take
/// them, and the step's number `t` (from 1). The update, in PyTorch's order, each line one of
/// kiln's elementwise ops (the fused kernel rounds where they would store):
///
/// ```text
/// p = p · (1 - lr·λ)                 (AdamW, λ = weight_decay ≠ 0)
/// g = g + λ·p                        (Adam, λ ≠ 0)
/// m = lerp(m, g, 1 - β1)             (m + (g - m)·w if |w| < ½, else g - (g - m)·(1 - w))
/// v = v·β2 + ((1 - β2)·g)·g
/// denom = √v / √(1 - β2^t) + eps
/// p = p + (-(lr / (1 - β1^t))·m) / denom
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decay of the parameter instead of Adam's L2 term in the gradient.
    pub decoupled: bool,
    /// `t`, the parameter's step count including this step.
    pub step: f64,
}

/// The operands of an Adam step, each entry `[parameter, gradient, exp_avg, exp_avg_sq]`: all of
/// one float dtype and one device, each entry's four of one shape.
fn check_adam_entries(entries: &[[&Tensor; 4]]) -> Result<()> {
    const OP: &str = "adam_step";
    let Some([first, ..]) = entries.first() else {
        return Ok(());
    };
    first.float_only(OP)?;
    for &[param, ref others @ ..] in entries {
        first.same_dtype(OP, param)?;
        first.same_device(OP, param)?;
        for other in others {
            param.same_dtype(OP, other)?;
            param.same_device(OP, other)?;
            if other.shape() != param.shape() {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    expected: param.shape().clone(),
                    got: other.shape().clone(),
                });
            }
        }
    }
    Ok(())
}

/// One parameter's part in [`Var::adam_step_many`]: the variable and its gradient, and its two
/// moments, which take their new values.
pub struct AdamUpdate<'a> {
    pub param: &'a Var,
    pub grad: &'a Tensor,
    pub exp_avg: &'a mut Tensor,
    pub exp_avg_sq: &'a mut Tensor,
}

impl AdamUpdate<'_> {
    fn operands(&self) -> [&Tensor; 4] {
        [
            self.param.as_tensor(),
            self.grad,
            self.exp_avg,
            self.exp_avg_sq,
        ]
    }

    /// Whether the step can write where the values lie: on the CPU, the variable its whole
    /// storage and not its gradient's, each moment the only handle on a storage it covers.
    fn in_place(&self) -> bool {
        let param = self.param.as_tensor();
        param.device() == Device::Cpu
            && param.covers_storage()
            && !param.shares_storage(self.grad)
            && self.exp_avg.is_sole_owner()
            && self.exp_avg_sq.is_sole_owner()
    }
}

impl Var {
    /// One fused Adam/AdamW step of many variables, in place: each variable takes the values
    /// [`Tensor::adam_step_many`] gives its entry (as `set_owned` of them would) and each
    /// moment its own, bit for bit. On the CPU a moment that is the only handle on its storage
    /// (an optimizer's state is, unless a clone of it is held elsewhere) is written where it
    /// lies, as is the variable: the step reads and writes each value once, where a fresh
    /// output is also read for ownership before it is written (a third of a memory-bound
    /// update's traffic). Any other moment is replaced by a new tensor, so a clone held
    /// elsewhere keeps the values it had. Every entry is checked before anything changes: an
    /// error leaves each variable and moment as it was.
    pub fn adam_step_many(updates: &mut [AdamUpdate<'_>], step: &AdamStep) -> Result<()> {
        let entries: Vec<[&Tensor; 4]> = updates.iter().map(AdamUpdate::operands).collect();
        check_adam_entries(&entries)?;
        let (in_place, fresh): (Vec<usize>, Vec<usize>) =
            (0..updates.len()).partition(|&i| updates[i].in_place());
        // The fresh values first, as they can fail: nothing has changed yet if they do.
        let fresh_entries: Vec<[&Tensor; 4]> = fresh.iter().map(|&i| entries[i]).collect();
        let values = Tensor::adam_step_many(&fresh_entries, step)?;
        drop(entries);
        for &i in &in_place {
            let AdamUpdate {
                param,
                grad,
                exp_avg,
                exp_avg_sq,
            } = &updates[i];
            let gradient = grad.storage();
            let mut m = exp_avg.storage_mut();
            let mut v = exp_avg_sq.storage_mut();
            param.as_tensor().storage_mut().adam_step_in_place(
                Operand::new(&gradient, grad.layout()),
                &mut m,
                &mut v,
                step,
            )?;
        }
        for (&i, (p, m, v)) in fresh.iter().zip(values) {
            let update = &mut updates[i];
            update.param.set_owned(p)?;
            *update.exp_avg = m;
            *update.exp_avg_sq = v;
        }
        Ok(())
    }
}

impl Tensor {
    /// One fused Adam/AdamW step of the parameter values `self` with `grad` and the moments
    /// `exp_avg` (m) and `exp_avg_sq` (v), all of one shape, float dtype and device: the new
    /// `(parameter, exp_avg, exp_avg_sq)`, untracked. See [`AdamStep`].
    pub fn adam_step(
        &self,
        grad: &Tensor,
        exp_avg: &Tensor,
        exp_avg_sq: &Tensor,
        step: &AdamStep,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let mut updated = Tensor::adam_step_many(&[[self, grad, exp_avg, exp_avg_sq]], step)?;
        Ok(updated.remove(0))
    }

    /// [`Tensor::adam_step`] of many parameters at once, each entry `[parameter, gradient,
    /// exp_avg, exp_avg_sq]`, all with one float dtype on one device: on CUDA, one launch
    /// updates up to 32 parameters (a training step's Adam is one or two launches, not one per
    /// parameter). Each result is bit for bit what `adam_step` gives that entry alone.
    pub fn adam_step_many(
        entries: &[[&Tensor; 4]],
        step: &AdamStep,
    ) -> Result<Vec<(Tensor, Tensor, Tensor)>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        check_adam_entries(entries)?;
        let guards: Vec<_> = entries
            .iter()
            .map(|entry| entry.map(Tensor::storage))
            .collect();
        let operands: Vec<_> = guards
            .iter()
            .zip(entries)
            .map(|(storages, tensors)| {
                [0, 1, 2, 3].map(|i| Operand::new(&*storages[i], tensors[i].layout()))
            })
            .collect();
        let updated = crate::Storage::adam_step_many(&operands, step)?;
        Ok(updated
            .into_iter()
            .zip(entries)
            .map(|((p, m, v), [param, ..])| {
                let shape = param.shape().clone();
                (
                    Tensor::from_storage(p, shape.clone(), None),
                    Tensor::from_storage(m, shape.clone(), None),
                    Tensor::from_storage(v, shape, None),
                )
            })
            .collect())
    }

    /// For each of `tensors` (one float dtype, one device), the sum of the squares of its
    /// elements: a `[tensors.len()]` tensor, f64 for f64 tensors and f32 for the others
    /// (halves squared in f32), untracked. On CUDA up to 32 tensors take two launches and no
    /// host synchronisation; what gradient-norm clipping builds on.
    pub fn sum_of_squares_many(tensors: &[&Tensor]) -> Result<Tensor> {
        const OP: &str = "sum_of_squares";
        let Some(first) = tensors.first() else {
            return Tensor::zeros([0], DType::F32, Device::Cpu);
        };
        first.float_only(OP)?;
        for tensor in tensors {
            first.same_dtype(OP, tensor)?;
            first.same_device(OP, tensor)?;
        }
        let guards: Vec<_> = tensors.iter().map(|t| t.storage()).collect();
        let operands: Vec<_> = guards
            .iter()
            .zip(tensors)
            .map(|(storage, tensor)| Operand::new(&**storage, tensor.layout()))
            .collect();
        let storage = crate::Storage::sum_of_squares_many(&operands)?;
        Ok(Tensor::from_storage(storage, [tensors.len()].into(), None))
    }
}
