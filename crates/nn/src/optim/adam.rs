//! Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay):
//! `torch.optim.Adam`'s and `torch.optim.AdamW`'s single-tensor updates, which differ only in
//! where the weight decay goes, so one implementation serves both.

use kiln_tensor::{no_grad, AdamStep, AdamUpdate, Gradients, Tensor, Var};

use super::{
    check_distinct_names, check_hyperparameter, gradients_of, sort_state, step_tensor, Optimizer,
    StateKind,
};
use crate::Result;

/// `torch.optim.Adam`'s arguments, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// L2 penalty: `weight_decay * p` is added to the gradient.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// `torch.optim.AdamW`'s arguments, with its defaults (note the weight decay of 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled decay: `p *= 1 - lr * weight_decay` before each update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Adam. For each parameter `p` with gradient `g`, at its `t`-th step (t from 1), as PyTorch:
///
/// ```text
/// g = g + weight_decay * p                              (if weight_decay != 0)
/// m = lerp(m, g, 1 - beta1)        v = beta2 * v + (1 - beta2) * g * g
/// step_size = lr / (1 - beta1^t)
/// denom = sqrt(v) / sqrt(1 - beta2^t) + eps
/// p = p - step_size * m / denom
/// ```
///
/// `m` and `v` start at zero, in the parameter's dtype. State: `step.<name>` (rank-0 f64),
/// `exp_avg.<name>` (m), `exp_avg_sq.<name>` (v).
pub struct Adam(Core);

/// AdamW: [`Adam`]'s update, but the weight decay is decoupled from the gradient: before the
/// update, `p = p * (1 - lr * weight_decay)`, and `g` is left alone. Same state as Adam.
pub struct AdamW(Core);

impl Adam {
    /// An optimizer for `params` (distinct names, e.g. [`crate::ParamStore::parameters`]).
    /// Refuses what PyTorch refuses: a negative learning rate, eps or weight decay, and betas
    /// outside [0, 1).
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Adam> {
        let AdamConfig {
            lr,
            betas,
            eps,
            weight_decay,
        } = config;
        Core::new("Adam", params, lr, betas, eps, weight_decay, false).map(Adam)
    }

    /// The configuration, with the current learning rate.
    pub fn config(&self) -> AdamConfig {
        let Core {
            lr,
            betas,
            eps,
            weight_decay,
            ..
        } = self.0;
        AdamConfig {
            lr,
            betas,
            eps,
            weight_decay,
        }
    }
}

impl AdamW {
    /// An optimizer for `params`; refuses what [`Adam::new`] refuses.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> Result<AdamW> {
        let AdamWConfig {
            lr,
            betas,
            eps,
            weight_decay,
        } = config;
        Core::new("AdamW", params, lr, betas, eps, weight_decay, true).map(AdamW)
    }

    /// The configuration, with the current learning rate.
    pub fn config(&self) -> AdamWConfig {
        let Core {
            lr,
            betas,
            eps,
            weight_decay,
            ..
        } = self.0;
        AdamWConfig {
            lr,
            betas,
            eps,
            weight_decay,
        }
    }
}

/// A parameter's part in a step: its index, gradient, step count after the step (as a number
/// and as its state's tensor), and its moments while the update holds them.
struct Pending {
    index: usize,
    grad: Tensor,
    step: f64,
    step_tensor: Tensor,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
    /// Whether the update has run (its group's `adam_step_many` succeeded).
    done: bool,
}

/// One parameter's moments, made on its first step with a gradient.
struct State {
    /// Steps taken, a rank-0 f64 tensor (PyTorch keeps a float tensor too).
    step: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

const STEP: StateKind = StateKind {
    name: "step",
    step_count: true,
};
const EXP_AVG: StateKind = StateKind {
    name: "exp_avg",
    step_count: false,
};
const EXP_AVG_SQ: StateKind = StateKind {
    name: "exp_avg_sq",
    step_count: false,
};

struct Core {
    op: &'static str,
    params: Vec<(String, Var)>,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    /// AdamW's decay of the parameter rather than Adam's L2 term in the gradient.
    decoupled: bool,
    states: Vec<Option<State>>,
}

impl Core {
    fn new(
        op: &'static str,
        params: Vec<(String, Var)>,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Result<Core> {
        check_hyperparameter(op, "learning rate", lr, lr >= 0.0)?;
        check_hyperparameter(op, "epsilon value", eps, eps >= 0.0)?;
        check_hyperparameter(
            op,
            "beta parameter at index 0",
            betas.0,
            (0.0..1.0).contains(&betas.0),
        )?;
        check_hyperparameter(
            op,
            "beta parameter at index 1",
            betas.1,
            (0.0..1.0).contains(&betas.1),
        )?;
        check_hyperparameter(op, "weight_decay value", weight_decay, weight_decay >= 0.0)?;
        check_distinct_names(op, &params)?;
        let states = params.iter().map(|_| None).collect();
        Ok(Core {
            op,
            params,
            lr,
            betas,
            eps,
            weight_decay,
            decoupled,
            states,
        })
    }

    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let gradients = gradients_of(self.op, &self.params, grads)?;
        let Core {
            lr,
            betas: (beta1, beta2),
            eps,
            weight_decay,
            decoupled,
            ..
        } = *self;
        let step = AdamStep {
            lr,
            betas: (beta1, beta2),
            eps,
            weight_decay,
            decoupled,
            step: 0.0,
        };
        no_grad(|| {
            // Each parameter with a gradient, with its moments (zeros on its first step) and
            // its step counts before and after; everything that can fail before the update.
            let mut pending = Vec::new();
            let parameters = self.params.iter().zip(gradients).zip(&self.states);
            for (index, (((_, param), grad), slot)) in parameters.enumerate() {
                let Some(grad) = grad else { continue };
                let before = match slot {
                    Some(state) => state.step.to_scalar::<f64>()?,
                    None => 0.0,
                };
                let (exp_avg, exp_avg_sq) = match slot {
                    Some(_) => (None, None),
                    None => (Some(param.zeros_like()?), Some(param.zeros_like()?)),
                };
                pending.push(Pending {
                    index,
                    grad: grad.clone(),
                    step: before + 1.0,
                    step_tensor: step_tensor(before + 1.0)?,
                    exp_avg,
                    exp_avg_sq,
                    done: false,
                });
            }
            // The moments move out of the states, so the update is their only handle and
            // writes them in place; they go back whatever happens.
            let mut previous_steps = Vec::with_capacity(pending.len());
            for entry in &mut pending {
                let state = self.states[entry.index].take();
                previous_steps.push(state.map(|state| {
                    entry.exp_avg = Some(state.exp_avg);
                    entry.exp_avg_sq = Some(state.exp_avg_sq);
                    state.step
                }));
            }
            let params = &self.params;
            let result = (|| -> kiln_tensor::Result<()> {
                // One fused multi-tensor update per (step count, dtype, device): usually all
                // of them, so one launch on a GPU. Bit for bit the op-by-op update
                // (crates/nn/tests/optim.rs).
                let key = |entry: &Pending| {
                    let param = params[entry.index].1.as_tensor();
                    (entry.step, param.dtype(), param.device())
                };
                while let Some(first) = pending.iter().position(|entry| !entry.done) {
                    let group = key(&pending[first]);
                    let in_group = |entry: &Pending| !entry.done && key(entry) == group;
                    let mut updates: Vec<AdamUpdate> = pending
                        .iter_mut()
                        .filter(|entry| in_group(entry))
                        .map(|entry| AdamUpdate {
                            param: &params[entry.index].1,
                            grad: &entry.grad,
                            exp_avg: entry.exp_avg.as_mut().expect("moments are in place"),
                            exp_avg_sq: entry.exp_avg_sq.as_mut().expect("moments are in place"),
                        })
                        .collect();
                    let step = AdamStep {
                        step: group.0,
                        ..step
                    };
                    Var::adam_step_many(&mut updates, &step)?;
                    for entry in pending.iter_mut().filter(|entry| in_group(entry)) {
                        entry.done = true;
                    }
                }
                Ok(())
            })();
            for (entry, previous) in pending.into_iter().zip(previous_steps) {
                let step = if entry.done {
                    Some(entry.step_tensor)
                } else {
                    previous
                };
                if let (Some(step), Some(exp_avg), Some(exp_avg_sq)) =
                    (step, entry.exp_avg, entry.exp_avg_sq)
                {
                    self.states[entry.index] = Some(State {
                        step,
                        exp_avg,
                        exp_avg_sq,
                    });
                }
            }
            Ok(result?)
        })
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut state = Vec::new();
        for ((name, _), slot) in self.params.iter().zip(&self.states) {
            let Some(slot) = slot else { continue };
            state.push((format!("{}.{name}", STEP.name), slot.step.clone()));
            state.push((format!("{}.{name}", EXP_AVG.name), slot.exp_avg.clone()));
            state.push((
                format!("{}.{name}", EXP_AVG_SQ.name),
                slot.exp_avg_sq.clone(),
            ));
        }
        state
    }

    fn load_state_dict(&mut self, state: &[(String, Tensor)], context: &str) -> Result<()> {
        let kinds = [STEP, EXP_AVG, EXP_AVG_SQ];
        let slots = sort_state(&self.params, &kinds, state, context)?;
        let mut states = Vec::with_capacity(slots.len());
        for ((name, _), slot) in self.params.iter().zip(slots) {
            let mut slot = slot.into_iter();
            let mut next = || slot.next().flatten();
            states.push(match (next(), next(), next()) {
                (None, None, None) => None,
                (Some(step), Some(exp_avg), Some(exp_avg_sq)) => Some(State {
                    step,
                    exp_avg,
                    exp_avg_sq,
                }),
                (step, exp_avg, exp_avg_sq) => {
                    let missing: Vec<String> = kinds
                        .iter()
                        .zip([step, exp_avg, exp_avg_sq])
                        .filter(|(_, tensor)| tensor.is_none())
                        .map(|(kind, _)| format!("`{}.{name}`", kind.name))
                        .collect();
                    return Err(crate::NnError::mismatch(
                        context,
                        format!(
                            "the state of `{name}` is incomplete: {} missing",
                            missing.join(" and ")
                        ),
                    ));
                }
            });
        }
        self.states = states;
        Ok(())
    }
}

/// Adam and AdamW are the same optimizer to the training loop.
macro_rules! optimizer_via_core {
    ($type:ty) => {
        impl Optimizer for $type {
            fn step(&mut self, grads: &Gradients) -> Result<()> {
                self.0.step(grads)
            }

            fn learning_rate(&self) -> f64 {
                self.0.lr
            }

            fn set_learning_rate(&mut self, lr: f64) {
                self.0.lr = lr;
            }

            fn state_dict(&self) -> Vec<(String, Tensor)> {
                self.0.state_dict()
            }

            fn load_state_dict(&mut self, state: &[(String, Tensor)], context: &str) -> Result<()> {
                self.0.load_state_dict(state, context)
            }
        }
    };
}

optimizer_via_core!(Adam);
optimizer_via_core!(AdamW);
