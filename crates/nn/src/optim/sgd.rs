//! Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight
//! decay: `torch.optim.SGD`'s single-tensor update.

use kiln_tensor::{no_grad, Gradients, Tensor, Var};

use super::{
    check_distinct_names, check_hyperparameter, gradients_of, sort_state, Optimizer, StateKind,
};
use crate::Result;

/// `torch.optim.SGD`'s arguments, with its defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// L2 penalty: `weight_decay * p` is added to the gradient.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 1e-3,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

const MOMENTUM_BUFFER: StateKind = StateKind {
    name: "momentum_buffer",
    step_count: false,
};

/// SGD. For each parameter `p` with gradient `g`, as PyTorch:
///
/// ```text
/// g = g + weight_decay * p                       (if weight_decay != 0)
/// b = g  on the parameter's first step,          (if momentum != 0)
///     momentum * b + (1 - dampening) * g  after
/// g = g + momentum * b  if nesterov, else  g = b
/// p = p - lr * g
/// ```
///
/// State: `momentum_buffer.<name>` (only with momentum).
pub struct Sgd {
    params: Vec<(String, Var)>,
    config: SgdConfig,
    momentum_buffers: Vec<Option<Tensor>>,
}

impl Sgd {
    /// An optimizer for `params` (distinct names, e.g. [`crate::ParamStore::parameters`]).
    /// Refuses what PyTorch refuses: a negative learning rate, momentum or weight decay, and
    /// Nesterov momentum without momentum or with dampening.
    pub fn new(params: Vec<(String, Var)>, config: SgdConfig) -> Result<Sgd> {
        let SgdConfig {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } = config;
        check_hyperparameter("Sgd", "learning rate", lr, lr >= 0.0)?;
        check_hyperparameter("Sgd", "momentum", momentum, momentum >= 0.0)?;
        check_hyperparameter("Sgd", "dampening", dampening, dampening.is_finite())?;
        check_hyperparameter("Sgd", "weight_decay", weight_decay, weight_decay >= 0.0)?;
        check_hyperparameter(
            "Sgd",
            "momentum for Nesterov momentum (it needs momentum > 0 and dampening 0)",
            momentum,
            !nesterov || (momentum > 0.0 && dampening == 0.0),
        )?;
        check_distinct_names("Sgd", &params)?;
        let momentum_buffers = vec![None; params.len()];
        Ok(Sgd {
            params,
            config,
            momentum_buffers,
        })
    }

    /// The configuration, with the current learning rate.
    pub fn config(&self) -> SgdConfig {
        self.config
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &Gradients) -> Result<()> {
        let gradients = gradients_of("Sgd", &self.params, grads)?;
        let SgdConfig {
            lr,
            momentum,
            dampening,
            nesterov,
            weight_decay,
        } = self.config;
        no_grad(|| {
            let updates = self
                .params
                .iter()
                .zip(gradients)
                .zip(&mut self.momentum_buffers);
            for (((_, param), grad), buffer) in updates {
                let Some(grad) = grad else { continue };
                let mut grad = grad.clone();
                if weight_decay != 0.0 {
                    grad = grad.add(&param.mul_scalar(weight_decay)?)?;
                }
                if momentum != 0.0 {
                    let next = match buffer.as_ref() {
                        None => grad.copy()?,
                        Some(previous) => previous
                            .mul_scalar(momentum)?
                            .add(&grad.mul_scalar(1.0 - dampening)?)?,
                    };
                    grad = if nesterov {
                        grad.add(&next.mul_scalar(momentum)?)?
                    } else {
                        next.clone()
                    };
                    *buffer = Some(next);
                }
                param.set_owned(param.add(&grad.mul_scalar(-lr)?)?)?;
            }
            Ok(())
        })
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.momentum_buffers)
            .filter_map(|((name, _), buffer)| {
                let buffer = buffer.as_ref()?;
                Some((format!("{}.{name}", MOMENTUM_BUFFER.name), buffer.clone()))
            })
            .collect()
    }

    fn load_state_dict(&mut self, state: &[(String, Tensor)], context: &str) -> Result<()> {
        let slots = sort_state(&self.params, &[MOMENTUM_BUFFER], state, context)?;
        self.momentum_buffers = slots.into_iter().map(|mut slot| slot[0].take()).collect();
        Ok(())
    }
}
