//! Optimizers with PyTorch's update rules (`torch.optim`'s single-tensor path, default flags:
//! no foreach, no amsgrad, no maximize), applied in place to named parameters, and PyTorch's
//! gradient-norm clipping. Learning-rate schedules are in [`crate::schedule`]; writing the
//! optimizer state to disk is [`crate::checkpoint`]'s job.
//!
//! An optimizer's state dict names each tensor `<kind>.<parameter name>`: `momentum_buffer.w`
//! (SGD), `step.w`, `exp_avg.w` and `exp_avg_sq.w` (Adam, AdamW). Like PyTorch, a parameter
//! has state only once it has had a gradient, so a fresh optimizer's state dict is empty.
//! Hyperparameters (learning rate, betas, ...) are not part of it: they come from the config
//! and the schedule.

mod adam;
mod sgd;

use kiln_tensor::{no_grad, DType, Gradients, Tensor, Var};

pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use crate::{NnError, Result};

/// What the training loop drives: one update per step from the gradients of the loss.
pub trait Optimizer {
    /// Updates every parameter that has a gradient in `grads`; parameters without one are
    /// skipped (PyTorch's `p.grad is None`) and their state stays as it was.
    fn step(&mut self, grads: &Gradients) -> Result<()>;

    /// The learning rate the next step uses.
    fn learning_rate(&self) -> f64;

    /// Sets the learning rate for the following steps (what a schedule drives).
    fn set_learning_rate(&mut self, lr: f64);

    /// The per-parameter state, named `<kind>.<parameter name>`, in parameter order.
    fn state_dict(&self) -> Vec<(String, Tensor)>;

    /// Replaces the state with `state` (as [`Optimizer::state_dict`] gives it). Every name must
    /// be a state kind of this optimizer and one of its parameters, with the parameter's shape
    /// and dtype; the first entry that is not is the error (named after `context`, e.g. the
    /// checkpoint's path), and on an error nothing is changed. Parameters with no entries get
    /// no state, as in a fresh optimizer.
    fn load_state_dict(&mut self, state: &[(String, Tensor)], context: &str) -> Result<()>;
}

/// PyTorch's `clip_grad_norm_` (2-norm): the L2 norm of all the parameters' gradients
/// together; each gradient is multiplied by `min(max_norm / (total + 1e-6), 1)`, so a total
/// above `max_norm` is brought down to it. Returns the total norm before clipping.
/// Parameters without a gradient are skipped; the new gradients replace the old in `grads`.
/// Like PyTorch, each gradient's norm is taken in its own dtype (f16 and bf16 in f32), the
/// total from those norms in f64, and the coefficient is rounded to each gradient's dtype
/// before the multiplication; a non-finite total is returned as it is, and clipping by it
/// makes the gradients NaN (or zero), as PyTorch's does. Reading the total back waits for a
/// GPU: [`clip_grad_norm_on_device`] does not.
pub fn clip_grad_norm(
    grads: &mut Gradients,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<f64> {
    let total = clip_grad_norm_on_device(grads, params, max_norm)?;
    Ok(total.to_scalar::<f64>()?)
}

/// [`clip_grad_norm`] without a host synchronisation: the norms (one multi-tensor kernel per
/// dtype, see `Tensor::sum_of_squares_many`), the coefficient and the scaling all stay on the
/// gradients' device, and the total comes back as a rank-0 f64 tensor there (on the CPU when
/// no parameter has a gradient: 0).
pub fn clip_grad_norm_on_device(
    grads: &mut Gradients,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<Tensor> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(NnError::invalid(
            "clip_grad_norm",
            format!("max_norm must be at least 0, got {max_norm}"),
        ));
    }
    let present: Vec<(&Var, Tensor)> = params
        .iter()
        .filter_map(|(_, var)| grads.get(var).map(|grad| (var, grad.clone())))
        .collect();
    if present.is_empty() {
        return Ok(Tensor::scalar(0.0f64, kiln_tensor::Device::Cpu)?);
    }
    no_grad(|| {
        // Each dtype's norms from one kernel: f64 gradients' in f64, the others' in f32.
        let gradients: Vec<&Tensor> = present.iter().map(|(_, grad)| grad).collect();
        let mut norms = Vec::new();
        for group in split_by_dtype(&gradients) {
            let squares = Tensor::sum_of_squares_many(&group)?; // [k] f32 or f64
            norms.push(squares.sqrt()?.to_dtype(DType::F64)?); // [k] f64
        }
        let norms: Vec<&Tensor> = norms.iter().collect();
        let total = Tensor::cat(&norms, 0)?.square()?.sum_all()?.sqrt()?; // [] f64
        let coefficient = total.scalar_like(max_norm)?.div(&total.add_scalar(1e-6)?)?;
        // min(coefficient, 1), but a NaN coefficient stays NaN, as torch.clamp keeps it
        // (NaN is not > 1). Multiplying by exactly 1 changes no gradient.
        let one = coefficient.scalar_like(1.0)?;
        let coefficient = Tensor::where_cond(&coefficient.gt(&one)?, &one, &coefficient)?;
        // The coefficient in each gradients' dtype, cast once per dtype.
        let mut cast: Vec<Tensor> = Vec::new();
        for (var, grad) in present {
            let in_dtype = match cast.iter().find(|c| c.dtype() == grad.dtype()) {
                Some(c) => c.clone(),
                None => {
                    cast.push(coefficient.to_dtype(grad.dtype())?);
                    cast[cast.len() - 1].clone()
                }
            };
            grads.insert(var, grad.mul(&in_dtype)?);
        }
        Ok(total)
    })
}

/// `tensors` in groups of one dtype, in order of first appearance.
fn split_by_dtype<'a>(tensors: &[&'a Tensor]) -> Vec<Vec<&'a Tensor>> {
    let mut groups: Vec<Vec<&Tensor>> = Vec::new();
    for &tensor in tensors {
        match groups.iter_mut().find(|g| g[0].dtype() == tensor.dtype()) {
            Some(group) => group.push(tensor),
            None => groups.push(vec![tensor]),
        }
    }
    groups
}

/// Fails unless the parameters' names are distinct (state is keyed by name).
fn check_distinct_names(op: &'static str, params: &[(String, Var)]) -> Result<()> {
    for (index, (name, _)) in params.iter().enumerate() {
        if params[..index].iter().any(|(earlier, _)| earlier == name) {
            return Err(NnError::invalid(
                op,
                format!("parameter name `{name}` appears twice"),
            ));
        }
    }
    Ok(())
}

/// Fails unless `ok`, naming the hyperparameter and its value, as PyTorch's constructors do.
fn check_hyperparameter(op: &'static str, name: &str, value: f64, ok: bool) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(NnError::invalid(op, format!("invalid {name}: {value}")))
    }
}

/// Each parameter's gradient, if it has one, checked against the parameter's shape and dtype
/// before anything is updated.
fn gradients_of<'a>(
    op: &'static str,
    params: &[(String, Var)],
    grads: &'a Gradients,
) -> Result<Vec<Option<&'a Tensor>>> {
    params
        .iter()
        .map(|(name, var)| {
            let Some(grad) = grads.get(var) else {
                return Ok(None);
            };
            if grad.shape() != var.shape() || grad.dtype() != var.dtype() {
                return Err(NnError::invalid(
                    op,
                    format!(
                        "the gradient of `{name}` is {} {} but the parameter is {} {}",
                        grad.shape(),
                        grad.dtype(),
                        var.shape(),
                        var.dtype()
                    ),
                ));
            }
            Ok(Some(grad))
        })
        .collect()
}

/// The state kinds an optimizer keeps per parameter, and whether each is a tensor like the
/// parameter (a moment) or a step count (a rank-0 tensor).
#[derive(Clone, Copy)]
struct StateKind {
    name: &'static str,
    step_count: bool,
}

/// The step count's tensor: rank 0, f64 (exact to 2^53; PyTorch keeps an f32 per parameter).
fn step_tensor(step: f64) -> Result<Tensor> {
    Ok(Tensor::scalar(step, kiln_tensor::Device::Cpu)?)
}

/// `state` sorted into slots: `slots[p][k]` is the tensor of kind `kinds[k]` for parameter
/// `p`, checked against the parameter (shape and dtype) or, for a step count, as a rank-0
/// whole number (f64, f32 or u32), which is returned converted to an f64 tensor.
fn sort_state(
    params: &[(String, Var)],
    kinds: &[StateKind],
    state: &[(String, Tensor)],
    context: &str,
) -> Result<Vec<Vec<Option<Tensor>>>> {
    let mut slots = vec![vec![None; kinds.len()]; params.len()];
    for (key, value) in state {
        let Some((kind_index, param_index)) = key.split_once('.').and_then(|(kind, name)| {
            let kind_index = kinds.iter().position(|k| k.name == kind)?;
            let param_index = params.iter().position(|(p, _)| p == name)?;
            Some((kind_index, param_index))
        }) else {
            let kinds: Vec<&str> = kinds.iter().map(|k| k.name).collect();
            return Err(NnError::mismatch(
                context,
                format!(
                    "unexpected optimizer state `{key}`: expected `<kind>.<parameter>` with a \
                     kind among {} and one of the optimizer's {} parameters",
                    kinds.join(", "),
                    params.len()
                ),
            ));
        };
        let (name, var) = &params[param_index];
        let slot = &mut slots[param_index][kind_index];
        if slot.is_some() {
            return Err(NnError::mismatch(context, format!("`{key}` appears twice")));
        }
        *slot = Some(if kinds[kind_index].step_count {
            check_step_count(key, value, context)?
        } else {
            if value.shape() != var.shape() || value.dtype() != var.dtype() {
                return Err(NnError::mismatch(
                    context,
                    format!(
                        "`{key}` is {} {} but parameter `{name}` is {} {}",
                        value.shape(),
                        value.dtype(),
                        var.shape(),
                        var.dtype()
                    ),
                ));
            }
            // On the parameter's device (a checkpoint is read to the host).
            no_grad(|| value.to_device(var.device())?.copy())?
        });
    }
    Ok(slots)
}

/// A step count from a state dict: a rank-0 whole number, as an f64 tensor.
fn check_step_count(key: &str, value: &Tensor, context: &str) -> Result<Tensor> {
    let readable = matches!(value.dtype(), DType::F64 | DType::F32 | DType::U32);
    let count = if value.rank() == 0 && readable {
        Some(value.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    } else {
        None
    };
    match count {
        Some(count) if count >= 0.0 && count.fract() == 0.0 && count < 2f64.powi(53) => {
            step_tensor(count)
        }
        _ => Err(NnError::mismatch(
            context,
            format!(
                "`{key}` is {} {} but a step count is a rank-0 whole number (f64, f32 or u32)",
                value.shape(),
                value.dtype()
            ),
        )),
    }
}
