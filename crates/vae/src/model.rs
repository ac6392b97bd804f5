//! The encoders and decoders. Each registers its tensors under PyTorch's names for the
//! equivalent `nn.Module` — the MLP VAE as PyTorch's example (`fc1`, `fc21`, `fc22`, `fc3`,
//! `fc4`), the convolutional one as `encoder.N`, `fc_mu`, `fc_logvar`, `decoder.N` — so a
//! checkpoint's weights load into PyTorch one to one.

use kiln_nn::layers::{
    Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Flatten, Linear, ReLU,
    Sequential, Unflatten,
};
use kiln_nn::loss::{binary_cross_entropy_with_logits, Reduction};
use kiln_nn::{Init, Module, ModuleT, NnError, ParamStore};
use kiln_tensor::{DType, Device, Tensor, Var};

use crate::elbo::reparameterize;
use crate::{gaussian_kl_per_image, ElboTerms, Likelihood, Result, VaeArchitecture, VaeConfig};

/// `[channels, height, width]` of the images: MNIST's.
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];
pub const PIXELS: usize = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2];
/// ½·ln(2π), the Normal density's constant per dimension.
pub(crate) const HALF_LN_TWO_PI: f64 = 0.918_938_533_204_672_8;
/// The Gaussian likelihood's σ before training.
const INITIAL_SCALE: f64 = 0.1;

/// A VAE's networks: images `[B, 1, 28, 28]` in [0, 1] → q(z|x) = N(μ, diag e^logvar) with
/// μ, logvar `[B, latent]`; latents `[B, latent]` → decoder outputs `[B, 1, 28, 28]` (logits:
/// the pixel probabilities or means are their sigmoid).
pub struct VaeModel {
    store: ParamStore,
    /// images → features `[B, F]`.
    encoder: Sequential,
    fc_mu: Linear,
    fc_logvar: Linear,
    /// latents → logits `[B, 1, 28, 28]`.
    decoder: Sequential,
    /// The Gaussian likelihood's log σ, `[1]`; `None` for the Bernoulli one.
    log_scale: Option<Var>,
    latent_dim: usize,
}

impl VaeModel {
    /// The model of `config`, its tensors of `dtype` (f32 to train; f64 for gradient checks)
    /// drawn from the Philox stream `seed` with PyTorch's default initialisation.
    pub fn new(config: &VaeConfig, device: Device, dtype: DType, seed: u64) -> Result<VaeModel> {
        let store = ParamStore::new(device, dtype, seed);
        let root = store.root();
        let latent = config.latent_dim;
        let (encoder, fc_mu, fc_logvar, decoder) = match config.architecture {
            VaeArchitecture::Vae => {
                let hidden = config.hidden_dim;
                // [B, 1, 28, 28] → [B, 784] → [B, hidden]
                let encoder = Sequential::new()
                    .add(Flatten::default())
                    .add(Linear::new(&root.sub("fc1"), PIXELS, hidden)?)
                    .add(ReLU);
                let fc_mu = Linear::new(&root.sub("fc21"), hidden, latent)?;
                let fc_logvar = Linear::new(&root.sub("fc22"), hidden, latent)?;
                // [B, latent] → [B, hidden] → [B, 784] → [B, 1, 28, 28]
                let decoder = Sequential::new()
                    .add(Linear::new(&root.sub("fc3"), latent, hidden)?)
                    .add(ReLU)
                    .add(Linear::new(&root.sub("fc4"), hidden, PIXELS)?)
                    .add(Unflatten::new(1, IMAGE_SHAPE.to_vec()));
                (encoder, fc_mu, fc_logvar, decoder)
            }
            VaeArchitecture::ConvVae => {
                let [c1, c2] = config.channels;
                let features = c2 * 7 * 7;
                let down = Conv2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    ..Default::default()
                };
                let up = ConvTranspose2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    ..Default::default()
                };
                let encoder_path = root.sub("encoder");
                // [B, 1, 28, 28] → [B, c1, 14, 14] → [B, c2, 7, 7] → [B, c2·49]
                let encoder = Sequential::new()
                    .add(Conv2d::new(&encoder_path.sub(0), 1, c1, [4, 4], down)?)
                    .add(ReLU)
                    .add(Conv2d::new(&encoder_path.sub(2), c1, c2, [4, 4], down)?)
                    .add(ReLU)
                    .add(Flatten::default());
                let fc_mu = Linear::new(&root.sub("fc_mu"), features, latent)?;
                let fc_logvar = Linear::new(&root.sub("fc_logvar"), features, latent)?;
                let decoder_path = root.sub("decoder");
                // [B, latent] → [B, c2·49] → [B, c2, 7, 7] → [B, c1, 14, 14] → [B, 1, 28, 28]
                let decoder = Sequential::new()
                    .add(Linear::new(&decoder_path.sub(0), latent, features)?)
                    .add(ReLU)
                    .add(Unflatten::new(1, vec![c2, 7, 7]))
                    .add(ConvTranspose2d::new(
                        &decoder_path.sub(3),
                        c2,
                        c1,
                        [4, 4],
                        up,
                    )?)
                    .add(ReLU)
                    .add(ConvTranspose2d::new(
                        &decoder_path.sub(5),
                        c1,
                        1,
                        [4, 4],
                        up,
                    )?);
                (encoder, fc_mu, fc_logvar, decoder)
            }
        };
        let log_scale = match config.likelihood {
            Likelihood::Bernoulli => None,
            // σ = 0.1 to start, near a trained decoder's error (Adam moves log σ by about
            // the learning rate a step, so a start at σ = 1 would take thousands of steps to
            // come down, with the KL term dominating meanwhile).
            Likelihood::Gaussian => {
                Some(root.parameter("log_scale", [1], Init::Constant(INITIAL_SCALE.ln()))?)
            }
        };
        Ok(VaeModel {
            store,
            encoder,
            fc_mu,
            fc_logvar,
            decoder,
            log_scale,
            latent_dim: latent,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// The Gaussian likelihood's σ (`None` for the Bernoulli one).
    pub fn scale(&self) -> Result<Option<f64>> {
        match &self.log_scale {
            Some(log_scale) => Ok(Some(
                log_scale.to_dtype(DType::F64)?.to_vec::<f64>()?[0].exp(),
            )),
            None => Ok(None),
        }
    }

    /// `images [B, 1, 28, 28]` → `(μ [B, latent], logvar [B, latent])` of q(z|x).
    pub fn encode(&self, images: &Tensor) -> Result<(Tensor, Tensor)> {
        if images.rank() != 4 || images.dims()[1..] != IMAGE_SHAPE {
            return Err(NnError::invalid(
                "VAE encoder",
                format!("expected images [B, 1, 28, 28], got {}", images.shape()),
            ));
        }
        let features = self.encoder.forward_t(images, true)?; // [B, F]
        Ok((
            self.fc_mu.forward(&features)?,
            self.fc_logvar.forward(&features)?,
        ))
    }

    /// `z [B, latent]` → decoder logits `[B, 1, 28, 28]`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        if z.rank() != 2 || z.dims()[1] != self.latent_dim {
            return Err(NnError::invalid(
                "VAE decoder",
                format!(
                    "expected latents [B, {}], got {}",
                    self.latent_dim,
                    z.shape()
                ),
            ));
        }
        self.decoder.forward_t(z, true)
    }

    /// The mean image of p(x|z) for decoder `logits`: their sigmoid, in [0, 1].
    pub fn mean_image(&self, logits: &Tensor) -> Result<Tensor> {
        Ok(logits.sigmoid()?)
    }

    /// -log p(x|z) of `images [B, 1, 28, 28]` in [0, 1] under the decoder's distribution with
    /// `logits [B, 1, 28, 28]`, summed over pixels: `[B]` nats.
    /// - Bernoulli: Σ softplus(l) - l·x, binary cross-entropy of sigmoid(l) against x.
    /// - Gaussian: Σ ½((x - sigmoid(l))/σ)² + log σ + ½ln 2π.
    pub fn reconstruction_nll(&self, logits: &Tensor, images: &Tensor) -> Result<Tensor> {
        let per_pixel = match &self.log_scale {
            None => binary_cross_entropy_with_logits(logits, images, Reduction::None)?,
            Some(log_scale) => {
                let inverse_variance = log_scale.mul_scalar(-2.0)?.exp()?; // [1]: 1/σ²
                images
                    .sub(&logits.sigmoid()?)?
                    .square()?
                    .mul(&inverse_variance.mul_scalar(0.5)?)?
                    .add(&log_scale.add_scalar(HALF_LN_TWO_PI)?)? // [B, 1, 28, 28]
            }
        };
        Ok(per_pixel.sum(&[1, 2, 3], false)?) // [B]
    }

    /// The two terms of the negative ELBO of `images [B, 1, 28, 28]` in [0, 1] with the
    /// reparameterisation noise `epsilon [B, latent]`, tracked for autograd: the gradient
    /// reaches the encoder through z = μ + σ·ε.
    pub fn elbo_terms(&self, images: &Tensor, epsilon: &Tensor) -> Result<ElboTerms> {
        let (mu, logvar) = self.encode(images)?; // [B, L] each
        let z = reparameterize(&mu, &logvar, epsilon)?; // [B, L]
        let logits = self.decode(&z)?; // [B, 1, 28, 28]
        Ok(ElboTerms {
            reconstruction: self.reconstruction_nll(&logits, images)?, // [B]
            kl: gaussian_kl_per_image(&mu, &logvar)?,                  // [B]
        })
    }
}
