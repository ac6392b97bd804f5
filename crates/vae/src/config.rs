//! What defines a VAE run: the architecture, the likelihood, the objective's weighting and the
//! optimiser's settings, with the published defaults. Saved as the run's config.json and
//! inside every checkpoint.

use kiln_nn::limits::{all_at_most, MAX_BATCH, MAX_CHANNELS, MAX_WIDTH};
use serde::{Deserialize, Serialize};

/// The two VAEs kiln trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VaeArchitecture {
    /// PyTorch's example VAE: encoder 784 → 400 (ReLU) → μ, log σ²; decoder latent → 400
    /// (ReLU) → 784.
    Vae,
    /// Strided convolutions down (28 → 14 → 7), transposed convolutions back up.
    ConvVae,
}

impl VaeArchitecture {
    pub const ALL: [VaeArchitecture; 2] = [VaeArchitecture::Vae, VaeArchitecture::ConvVae];

    /// The name the command line and checkpoints use: `vae`, `conv-vae`.
    pub fn name(self) -> &'static str {
        match self {
            VaeArchitecture::Vae => "vae",
            VaeArchitecture::ConvVae => "conv-vae",
        }
    }

    pub fn from_name(name: &str) -> Option<VaeArchitecture> {
        VaeArchitecture::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Epochs `kiln train` runs when not told: 10, PyTorch's example's default.
    pub fn default_epochs(self) -> u64 {
        10
    }
}

impl std::fmt::Display for VaeArchitecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// p(x|z), the decoder's distribution over pixels in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Likelihood {
    /// Each pixel Bernoulli with p = sigmoid(decoder output); grey levels are used as soft
    /// targets, as in PyTorch's example (binary cross-entropy summed over pixels), so the
    /// negative ELBO compares with its published figures.
    Bernoulli,
    /// Each pixel Normal(sigmoid(decoder output), σ²) with one learned σ for the whole image
    /// (`log_scale`; a calibrated decoder, Rybkin et al. 2021). A density of continuous
    /// pixels: its nats are not comparable with the Bernoulli ones and may be negative.
    Gaussian,
}

impl Likelihood {
    pub fn name(self) -> &'static str {
        match self {
            Likelihood::Bernoulli => "bernoulli",
            Likelihood::Gaussian => "gaussian",
        }
    }
}

/// A VAE's architecture, objective and training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub architecture: VaeArchitecture,
    /// Size of the latent z.
    pub latent_dim: usize,
    /// The MLP's hidden width (unused by the convolutional VAE).
    pub hidden_dim: usize,
    /// The convolutional VAE's channels after its first and second convolution.
    pub channels: [usize; 2],
    pub likelihood: Likelihood,
    /// β of the β-VAE objective, reconstruction + β·KL (1: the ELBO).
    pub beta: f64,
    /// Steps over which the KL weight rises linearly from 1/N·β to β (0: β from the start).
    pub kl_warmup_steps: u64,
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seeds the weights, the reparameterisation noise and the data order.
    pub seed: u64,
}

impl VaeConfig {
    /// The standard configuration of `architecture`: PyTorch's example for the MLP VAE (latent
    /// 20, hidden 400, Bernoulli, batch 128, Adam 1e-3, β = 1, no warm-up); the same objective
    /// and optimiser for the convolutional VAE, with 32 and 64 channels.
    pub fn new(architecture: VaeArchitecture) -> VaeConfig {
        VaeConfig {
            architecture,
            latent_dim: 20,
            hidden_dim: 400,
            channels: [32, 64],
            likelihood: Likelihood::Bernoulli,
            beta: 1.0,
            kl_warmup_steps: 0,
            batch_size: 128,
            lr: 1e-3,
            seed: 0,
        }
    }

    /// The weight of the KL term at (0-based) step `step`: β·min(1, (step + 1) / warm-up).
    pub fn kl_weight(&self, step: u64) -> f64 {
        if self.kl_warmup_steps == 0 {
            return self.beta;
        }
        let ramp = (step + 1) as f64 / self.kl_warmup_steps as f64;
        self.beta * ramp.min(1.0)
    }

    /// Errors for settings no run could use.
    pub fn validate(&self) -> Result<(), String> {
        let problems = [
            (self.latent_dim == 0, "the latent size must be at least 1"),
            (self.hidden_dim == 0, "the hidden width must be at least 1"),
            (self.channels.contains(&0), "channels must be at least 1"),
            (self.batch_size == 0, "the batch size must be at least 1"),
            (
                !(self.lr.is_finite() && self.lr > 0.0),
                "the learning rate must be a positive number",
            ),
            (
                !(self.beta.is_finite() && self.beta >= 0.0),
                "beta must be a number >= 0",
            ),
        ];
        if let Some((_, message)) = problems.iter().find(|(bad, _)| *bad) {
            return Err(message.to_string());
        }
        all_at_most(&[
            ("latent size", self.latent_dim, MAX_WIDTH),
            ("hidden width", self.hidden_dim, MAX_WIDTH),
            ("first channels", self.channels[0], MAX_CHANNELS),
            ("second channels", self.channels[1], MAX_CHANNELS),
            ("batch size", self.batch_size, MAX_BATCH),
        ])
    }
}
