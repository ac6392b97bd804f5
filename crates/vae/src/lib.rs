//! kiln-vae: variational autoencoders on 28×28 images (Kingma & Welling, 2014). An encoder
//! maps an image to a diagonal Gaussian q(z|x) over the latent space, a decoder maps a latent
//! back to a distribution over images, and training maximises the evidence lower bound
//! (reconstruction log-likelihood minus KL(q(z|x) ‖ N(0, I))) through the reparameterisation
//! z = μ + σ·ε. Two models: the MLP VAE of PyTorch's example, and a convolutional one; a
//! Bernoulli or Gaussian likelihood; β weighting and KL warm-up. [`VaeTrainer`] also measures
//! a model: the test negative ELBO and an importance-weighted estimate of the test
//! log-likelihood. The run folder, progress bar and command line live elsewhere (kiln-run,
//! the `kiln` binary).

mod config;
mod elbo;
mod family;
pub mod grids;
pub mod latent;
mod model;
mod trainer;

pub use config::{Likelihood, VaeArchitecture, VaeConfig};
pub use elbo::{gaussian_kl_per_image, log_mean_exp, ElboTerms};
pub use family::{
    test_line, ImportanceWeighted, Reconstruction, VaeScores, Vaes, FAMILY, TEST_ELBO_SEED,
};
pub use model::{VaeModel, IMAGE_SHAPE, PIXELS};
pub use trainer::{ElboReport, PendingMetrics, StepMetrics, VaeTrainer};

pub type Result<T> = std::result::Result<T, kiln_nn::NnError>;
