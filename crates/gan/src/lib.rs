//! kiln-gan: the GAN family on 28×28 images — the MLP GAN, DCGAN, the conditional GAN and
//! WGAN-GP — as models built from kiln-nn layers and a [`GanTrainer`] that runs their training
//! steps, samples from fixed latents, and saves and restores everything a bit-exact resume
//! needs. The run folder, progress bar and command line live elsewhere (kiln-run, the `kiln`
//! binary).

mod config;
mod family;
mod models;
mod trainer;

pub use config::{Architecture, GanConfig};
pub use family::{Gans, FAMILY};
pub use models::{DiscriminatorModel, GeneratorModel, IMAGE_SHAPE, NUM_CLASSES};
pub use trainer::{GanTrainer, PendingMetrics, StepMetrics};

pub type Result<T> = std::result::Result<T, kiln_nn::NnError>;
