//! What defines a PixelCNN run: the pixels' distribution, the network's size and the
//! optimiser's settings. Saved as the run's config.json and inside every checkpoint.

use kiln_nn::limits::{all_at_most, MAX_BATCH, MAX_CHANNELS, MAX_LAYERS};
use serde::{Deserialize, Serialize};

/// p(x_i | x_<i), the distribution of one pixel given the pixels before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelLikelihood {
    /// Binary pixels, each Bernoulli with p = sigmoid(logit). Trained on MNIST binarized
    /// afresh every batch (x ~ Bernoulli(grey level)) and measured on a test set binarized
    /// once: the "stochastically binarized MNIST" of the literature (PixelCNN: 81.3 nats).
    Bernoulli,
    /// The 256 grey levels, each pixel a categorical over them (a softmax of 256 logits).
    Categorical,
}

impl PixelLikelihood {
    pub const ALL: [PixelLikelihood; 2] =
        [PixelLikelihood::Bernoulli, PixelLikelihood::Categorical];

    /// The name the command line and config files use: `bernoulli`, `categorical`.
    pub fn name(self) -> &'static str {
        match self {
            PixelLikelihood::Bernoulli => "bernoulli",
            PixelLikelihood::Categorical => "categorical",
        }
    }

    pub fn from_name(name: &str) -> Option<PixelLikelihood> {
        PixelLikelihood::ALL.into_iter().find(|l| l.name() == name)
    }

    /// The logits the network outputs per pixel: 1 (Bernoulli) or 256 (categorical).
    pub fn output_channels(self) -> usize {
        match self {
            PixelLikelihood::Bernoulli => 1,
            PixelLikelihood::Categorical => crate::GREY_LEVELS,
        }
    }
}

impl std::fmt::Display for PixelLikelihood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A PixelCNN's likelihood, size and training hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PixelCnnConfig {
    pub likelihood: PixelLikelihood,
    /// Channels between the residual blocks (h of the paper's Fig. 5; the blocks' inner
    /// convolutions have h/2).
    pub hidden_channels: usize,
    pub residual_blocks: usize,
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Seeds the weights, the binarization of the training batches and the data order.
    pub seed: u64,
}

impl PixelCnnConfig {
    /// The default run: Bernoulli pixels, h = 32 channels, 5 residual blocks (logits see 8
    /// rows up), batch 64, Adam 1e-3. Sized for a 2-core CPU, where kiln trains it at ~115
    /// images/s (h = 64 runs at ~65) and one epoch takes it to ~97 test nats.
    pub fn new() -> PixelCnnConfig {
        PixelCnnConfig {
            likelihood: PixelLikelihood::Bernoulli,
            hidden_channels: 32,
            residual_blocks: 5,
            batch_size: 64,
            lr: 1e-3,
            seed: 0,
        }
    }

    /// Epochs `kiln train pixelcnn` runs when not told: 1, about 10 minutes on a 2-core CPU
    /// at the default size (9 minutes of training, then the test NLL and a sample grid).
    pub fn default_epochs() -> u64 {
        1
    }

    /// Errors for settings no run could use.
    pub fn validate(&self) -> Result<(), String> {
        let h = self.hidden_channels;
        if h < 2 || !h.is_multiple_of(2) {
            return Err(format!(
                "the hidden channels must be an even number of at least 2 (the residual blocks halve them), got {h}"
            ));
        }
        if self.batch_size == 0 {
            return Err("the batch size must be at least 1".to_string());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!(
                "the learning rate must be a positive number, got {}",
                self.lr
            ));
        }
        all_at_most(&[
            (
                "number of hidden channels",
                self.hidden_channels,
                MAX_CHANNELS,
            ),
            (
                "number of residual blocks",
                self.residual_blocks,
                MAX_LAYERS,
            ),
            ("batch size", self.batch_size, MAX_BATCH),
        ])
    }
}

impl Default for PixelCnnConfig {
    fn default() -> Self {
        PixelCnnConfig::new()
    }
}
