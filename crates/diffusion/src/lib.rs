//! kiln-diffusion: a denoising diffusion probabilistic model on 28×28 images (Ho et al., 2020).
//! Training adds Gaussian noise to an image in one jump to a random step t of the forward
//! process, q(x_t | x_0) = N(√ᾱ_t·x_0, (1 - ᾱ_t)·I), and teaches a U-Net to predict that
//! noise (mean squared error); sampling runs the learned reverse process from pure noise,
//! every step (the ancestral DDPM sampler) or a few (DDIM, Song et al., 2021). Samples come
//! from an exponential moving average of the weights. The run folder, progress bar and command
//! line live elsewhere (kiln-run, the `kiln` binary).

mod config;
mod family;
pub mod sampling;
mod schedule;
mod trainer;
mod unet;

pub use config::{DdpmConfig, Sampler, MODEL_NAME};
pub use family::{Ddpm, FAMILY, TEST_LOSS_SEED};
pub use schedule::NoiseSchedule;
pub use trainer::{DdpmTrainer, LossReport, PendingMetrics, StepMetrics};
pub use unet::{timestep_embedding, UNet, IMAGE_SHAPE};

pub type Result<T> = std::result::Result<T, kiln_nn::NnError>;
