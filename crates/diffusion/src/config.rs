//! What defines a DDPM run: the U-Net's widths, the noise schedule, the optimiser and the EMA,
//! with Ho et al.'s (2020) published settings where they apply to MNIST. Saved as the run's
//! config.json and inside every checkpoint.

use kiln_nn::limits::{all_at_most, MAX_BATCH, MAX_CHANNELS, MAX_TIMESTEPS};
use serde::{Deserialize, Serialize};

/// The name the command line and checkpoints use for the model.
pub const MODEL_NAME: &str = "ddpm";

/// A DDPM's network, schedule and training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpmConfig {
    /// The U-Net's channels at 28×28, 14×14 and 7×7.
    pub channels: [usize; 3],
    /// Groups of every group norm; each level's channels must divide into them.
    pub groups: usize,
    /// Diffusion steps T.
    pub timesteps: usize,
    /// β_1 and β_T of the linear schedule.
    pub beta_start: f64,
    pub beta_end: f64,
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// The decay of the weights' exponential moving average (samples come from the average),
    /// reached after a warm-up: step s uses min(decay, (1 + s) / (10 + s)).
    pub ema_decay: f64,
    /// Seeds the weights, the noise and timesteps of training, and the data order.
    pub seed: u64,
}

impl Default for DdpmConfig {
    /// Ho et al.'s schedule (T = 1000, β linear from 1e-4 to 0.02), loss and optimiser (Adam
    /// 2e-4); a U-Net of 16, 32 and 64 channels (400k parameters) and batch 64, so that the
    /// default run (2 epochs, 1876 steps) trains on a 2-core CPU in about 20 minutes; and
    /// an EMA decay of 0.999 for runs of thousands rather than hundreds of thousands of steps.
    fn default() -> Self {
        DdpmConfig {
            channels: [16, 32, 64],
            groups: 8,
            timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            batch_size: 64,
            lr: 2e-4,
            ema_decay: 0.999,
            seed: 0,
        }
    }
}

impl DdpmConfig {
    /// Epochs `kiln train ddpm` runs when not told.
    pub const DEFAULT_EPOCHS: u64 = 2;

    /// Errors for settings no run could use.
    pub fn validate(&self) -> Result<(), String> {
        let problems = [
            (self.channels.contains(&0), "channels must be at least 1"),
            (
                self.timesteps == 0,
                "there must be at least 1 diffusion step",
            ),
            (
                !(self.beta_start > 0.0 && self.beta_start <= self.beta_end && self.beta_end < 1.0),
                "the betas must satisfy 0 < beta_start <= beta_end < 1",
            ),
            (self.batch_size == 0, "the batch size must be at least 1"),
            (
                !(self.lr.is_finite() && self.lr > 0.0),
                "the learning rate must be a positive number",
            ),
            (
                !(0.0..1.0).contains(&self.ema_decay),
                "the EMA decay must be in [0, 1)",
            ),
        ];
        if let Some((_, message)) = problems.iter().find(|(bad, _)| *bad) {
            return Err(message.to_string());
        }
        let [c0, c1, c2] = self.channels;
        if self.groups == 0 || self.channels.iter().any(|c| c % self.groups != 0) {
            return Err(format!(
                "every level's channels ({c0}, {c1}, {c2}) must divide into the group norm's {} groups",
                self.groups
            ));
        }
        all_at_most(&[
            ("U-Net's widest level", c0.max(c1).max(c2), MAX_CHANNELS),
            ("number of diffusion steps", self.timesteps, MAX_TIMESTEPS),
            ("batch size", self.batch_size, MAX_BATCH),
        ])
    }
}

/// How samples are drawn from the trained model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "sampler", rename_all = "kebab-case")]
pub enum Sampler {
    /// Ho et al.'s ancestral sampler: every one of the T steps, with fresh noise each step
    /// (the posterior variance β̃_t).
    Ddpm,
    /// Song et al.'s DDIM over `steps` evenly spaced timesteps; η = 0 is deterministic given
    /// x_T, η = 1 has the ancestral sampler's variance.
    Ddim { steps: usize, eta: f64 },
}

impl Sampler {
    /// The sampler `kiln sample` and `kiln eval` use when not told: DDIM, 50 steps, η = 0.
    pub const DEFAULT: Sampler = Sampler::Ddim {
        steps: 50,
        eta: 0.0,
    };

    pub fn name(self) -> &'static str {
        match self {
            Sampler::Ddpm => "ddpm",
            Sampler::Ddim { .. } => "ddim",
        }
    }

    /// Errors for a sampler that cannot run on a schedule of `timesteps` steps.
    pub fn validate(self, timesteps: usize) -> Result<(), String> {
        match self {
            Sampler::Ddpm => Ok(()),
            Sampler::Ddim { steps, .. } if steps == 0 || steps > timesteps => Err(format!(
                "DDIM takes 1 to {timesteps} steps (the model's T), not {steps}"
            )),
            Sampler::Ddim { eta, .. } if !(eta.is_finite() && eta >= 0.0) => {
                Err("DDIM's eta must be a number >= 0".to_string())
            }
            Sampler::Ddim { .. } => Ok(()),
        }
    }

    /// Network evaluations per sample, for a schedule of `timesteps` steps.
    pub fn evaluations(self, timesteps: usize) -> usize {
        match self {
            Sampler::Ddpm => timesteps,
            Sampler::Ddim { steps, .. } => steps,
        }
    }
}

impl std::fmt::Display for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sampler::Ddpm => f.write_str("DDPM (ancestral)"),
            Sampler::Ddim { steps, eta } => write!(f, "DDIM, {steps} steps, eta {eta}"),
        }
    }
}
