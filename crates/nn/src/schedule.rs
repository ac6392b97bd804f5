//! Learning-rate schedules in closed form: the rate at step (or epoch) `t` is a function of
//! `t` alone, so resuming from a checkpoint needs only the step count. The caller applies
//! them: `optimizer.set_learning_rate(schedule.learning_rate(t))`. The formulas are PyTorch's
//! `_get_closed_form_lr`s; not for schedules that react to metrics (ReduceLROnPlateau).

use crate::{NnError, Result};

/// A learning rate for every step count.
pub trait Schedule {
    /// The learning rate at step (or epoch) `t`, counting from 0.
    fn learning_rate(&self, t: u64) -> f64;
}

/// `torch.optim.lr_scheduler.StepLR`: `base_lr * gamma^floor(t / step_size)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLr {
    base_lr: f64,
    step_size: u64,
    gamma: f64,
}

impl StepLr {
    /// Fails on a `step_size` of 0.
    pub fn new(base_lr: f64, step_size: u64, gamma: f64) -> Result<StepLr> {
        if step_size == 0 {
            return Err(NnError::invalid("StepLr", "step_size must be at least 1"));
        }
        Ok(StepLr {
            base_lr,
            step_size,
            gamma,
        })
    }
}

impl Schedule for StepLr {
    fn learning_rate(&self, t: u64) -> f64 {
        // powf, not powi: Python's `**` is C's pow, and so is powf.
        self.base_lr * self.gamma.powf((t / self.step_size) as f64)
    }
}

/// `torch.optim.lr_scheduler.CosineAnnealingLR`'s closed form:
/// `eta_min + (base_lr - eta_min) * (1 + cos(pi * t / t_max)) / 2`. It reaches `eta_min` at
/// `t_max` and, past it, rises again along the same cosine, as PyTorch's closed form does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CosineAnnealingLr {
    base_lr: f64,
    t_max: u64,
    eta_min: f64,
}

impl CosineAnnealingLr {
    /// Fails on a `t_max` of 0.
    pub fn new(base_lr: f64, t_max: u64, eta_min: f64) -> Result<CosineAnnealingLr> {
        if t_max == 0 {
            return Err(NnError::invalid(
                "CosineAnnealingLr",
                "t_max must be at least 1",
            ));
        }
        Ok(CosineAnnealingLr {
            base_lr,
            t_max,
            eta_min,
        })
    }
}

impl Schedule for CosineAnnealingLr {
    fn learning_rate(&self, t: u64) -> f64 {
        let phase = std::f64::consts::PI * t as f64 / self.t_max as f64;
        self.eta_min + (self.base_lr - self.eta_min) * (1.0 + phase.cos()) / 2.0
    }
}

/// A linear warmup in front of another schedule: for `t < warmup_steps` the rate is
/// `inner(0) * (start_factor + (1 - start_factor) * t / warmup_steps)` (`LinearLR`'s closed
/// form with `end_factor` 1), and from then on `inner(t - warmup_steps)`, as
/// `SequentialLR([LinearLR(...), inner], milestones=[warmup_steps])` would give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmup<S> {
    start_factor: f64,
    warmup_steps: u64,
    inner: S,
}

impl<S: Schedule> LinearWarmup<S> {
    /// Fails unless `0 < start_factor <= 1` (what `LinearLR` accepts).
    pub fn new(start_factor: f64, warmup_steps: u64, inner: S) -> Result<LinearWarmup<S>> {
        if !(start_factor > 0.0 && start_factor <= 1.0) {
            return Err(NnError::invalid(
                "LinearWarmup",
                format!("start_factor must be in (0, 1], got {start_factor}"),
            ));
        }
        Ok(LinearWarmup {
            start_factor,
            warmup_steps,
            inner,
        })
    }
}

impl<S: Schedule> Schedule for LinearWarmup<S> {
    fn learning_rate(&self, t: u64) -> f64 {
        if t < self.warmup_steps {
            // PyTorch's order of operations: ((end - start) * t) / total.
            let ramp = (1.0 - self.start_factor) * t as f64 / self.warmup_steps as f64;
            self.inner.learning_rate(0) * (self.start_factor + ramp)
        } else {
            self.inner.learning_rate(t - self.warmup_steps)
        }
    }
}
