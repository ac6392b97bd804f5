//! What defines a GAN run: the architecture and its hyperparameters, with each model's
//! published defaults. Saved as the run's config.json and inside every checkpoint.

use kiln_nn::limits::{all_at_most, MAX_BATCH, MAX_LAYERS, MAX_WIDTH};
use serde::{Deserialize, Serialize};

/// The four GANs kiln trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// The MLP GAN: G z → 256 → 512 → 1024 → 784 (LeakyReLU 0.2, tanh); D 784 → 512 → 256 → 1.
    Gan,
    /// DCGAN: transposed convolutions with batch norm up from 7×7, strided convolutions down.
    Dcgan,
    /// The conditional MLP GAN: a label embedding joined to G's latent and to D's input.
    Cgan,
    /// WGAN-GP: the MLP generator and an MLP critic without batch norm, trained with the
    /// Wasserstein loss and a gradient penalty.
    WganGp,
}

impl Architecture {
    pub const ALL: [Architecture; 4] = [
        Architecture::Gan,
        Architecture::Dcgan,
        Architecture::Cgan,
        Architecture::WganGp,
    ];

    /// The name the command line and checkpoints use: `gan`, `dcgan`, `cgan`, `wgan-gp`.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Gan => "gan",
            Architecture::Dcgan => "dcgan",
            Architecture::Cgan => "cgan",
            Architecture::WganGp => "wgan-gp",
        }
    }

    pub fn from_name(name: &str) -> Option<Architecture> {
        Architecture::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Epochs `kiln train` runs when not told: 20 for the MLP GANs (about 25 s an epoch on 2
    /// CPU cores), 5 for DCGAN (about 10x the arithmetic per image; 5 epochs are enough for
    /// clear digits on MNIST).
    pub fn default_epochs(self) -> u64 {
        match self {
            Architecture::Dcgan => 5,
            Architecture::Gan | Architecture::Cgan | Architecture::WganGp => 20,
        }
    }

    /// Whether samples are drawn for chosen classes.
    pub fn is_conditional(self) -> bool {
        self == Architecture::Cgan
    }
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A GAN's architecture and training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanConfig {
    pub architecture: Architecture,
    /// Size of the latent vector z.
    pub latent_dim: usize,
    /// Hidden widths of the MLP generator (unused by DCGAN).
    pub generator_widths: Vec<usize>,
    /// Hidden widths of the MLP discriminator or critic (unused by DCGAN).
    pub discriminator_widths: Vec<usize>,
    /// Size of the label embedding (conditional GAN only).
    pub embedding_dim: usize,
    pub batch_size: usize,
    /// Adam's learning rate, for both networks.
    pub lr: f64,
    /// Adam's (β1, β2), for both networks.
    pub betas: (f64, f64),
    /// Discriminator (critic) steps per generator step.
    pub critic_steps: usize,
    /// λ of WGAN-GP's gradient penalty (unused by the others).
    pub gradient_penalty: f64,
    /// Seeds the weights, the latents and the data order.
    pub seed: u64,
}

impl GanConfig {
    /// The published configuration of `architecture`: batch 64, Adam(2e-4, (0.5, 0.999)) for
    /// the GAN, DCGAN and conditional GAN (Radford et al.); Adam(1e-4, (0.0, 0.9)), 5 critic
    /// steps and λ = 10 for WGAN-GP (Gulrajani et al.).
    pub fn new(architecture: Architecture) -> GanConfig {
        let wgan = architecture == Architecture::WganGp;
        GanConfig {
            architecture,
            latent_dim: 100,
            generator_widths: vec![256, 512, 1024],
            discriminator_widths: vec![512, 256],
            embedding_dim: 10,
            batch_size: 64,
            lr: if wgan { 1e-4 } else { 2e-4 },
            betas: if wgan { (0.0, 0.9) } else { (0.5, 0.999) },
            critic_steps: if wgan { 5 } else { 1 },
            gradient_penalty: 10.0,
            seed: 0,
        }
    }

    /// Errors for settings no run could use.
    pub fn validate(&self) -> Result<(), String> {
        let problems = [
            (self.latent_dim == 0, "the latent size must be at least 1"),
            (self.batch_size == 0, "the batch size must be at least 1"),
            (self.critic_steps == 0, "critic steps must be at least 1"),
            (
                !(self.lr.is_finite() && self.lr > 0.0),
                "the learning rate must be a positive number",
            ),
            (
                self.generator_widths.contains(&0) || self.discriminator_widths.contains(&0),
                "layer widths must be at least 1",
            ),
            (
                self.architecture == Architecture::Dcgan && self.batch_size < 2,
                "DCGAN's batch norm needs batches of at least 2",
            ),
        ];
        if let Some((_, message)) = problems.iter().find(|(bad, _)| *bad) {
            return Err(message.to_string());
        }
        let widest = |widths: &[usize]| widths.iter().copied().max().unwrap_or(0);
        all_at_most(&[
            ("latent size", self.latent_dim, MAX_WIDTH),
            ("embedding size", self.embedding_dim, MAX_WIDTH),
            (
                "widest generator layer",
                widest(&self.generator_widths),
                MAX_WIDTH,
            ),
            (
                "widest discriminator layer",
                widest(&self.discriminator_widths),
                MAX_WIDTH,
            ),
            (
                "number of generator layers",
                self.generator_widths.len(),
                MAX_LAYERS,
            ),
            (
                "number of discriminator layers",
                self.discriminator_widths.len(),
                MAX_LAYERS,
            ),
            ("batch size", self.batch_size, MAX_BATCH),
            ("number of critic steps", self.critic_steps, MAX_LAYERS),
        ])
    }
}
