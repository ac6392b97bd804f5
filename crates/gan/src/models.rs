//! The generators and discriminators. Each registers its tensors under PyTorch's names for the
//! equivalent `nn.Module` (a `main` `nn.Sequential`, plus `label_embedding` for the conditional
//! GAN), so a checkpoint's weights load into PyTorch one to one.

use kiln_nn::layers::{
    BatchNorm1d, BatchNorm2d, BatchNormConfig, Conv2d, Conv2dConfig, ConvTranspose2d,
    ConvTranspose2dConfig, Embedding, Flatten, LeakyReLU, Linear, LinearConfig, ReLU, Sequential,
    Tanh, Unflatten,
};
use kiln_nn::{Init, Module, ModuleT, NnError, ParamStore, Path};
use kiln_tensor::{DType, Device, Tensor};

use crate::{Architecture, GanConfig, Result};

/// `[channels, height, width]` of the images: MNIST's.
pub const IMAGE_SHAPE: [usize; 3] = [1, 28, 28];
/// Classes the conditional GAN is conditioned on (MNIST's digits).
pub const NUM_CLASSES: usize = 10;
const PIXELS: usize = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * IMAGE_SHAPE[2];
const SLOPE: f64 = 0.2;

/// DCGAN's initialisation: weights N(0, 0.02²), zero biases, batch-norm scales N(1, 0.02²).
fn dcgan_batch_norm() -> BatchNormConfig {
    BatchNormConfig {
        weight_init: Init::Normal {
            mean: 1.0,
            std: 0.02,
        },
        ..Default::default()
    }
}

/// An MLP `widths[0] → .. → widths[last]`: Linear layers with LeakyReLU(0.2) between them,
/// numbered as in `nn.Sequential` (`main.0`, `main.2`, ...).
fn mlp(main: &Path, widths: &[usize]) -> Result<Sequential> {
    let mut body = Sequential::new();
    let layers = widths.len() - 1;
    for (i, pair) in widths.windows(2).enumerate() {
        body = body.add(Linear::new(&main.sub(2 * i), pair[0], pair[1])?);
        if i + 1 < layers {
            body = body.add(LeakyReLU::new(SLOPE));
        }
    }
    Ok(body)
}

/// The label embedding of the conditional GAN, joined to `x [B, F]` → `[B, F + E]`.
fn join_labels(x: &Tensor, embedding: &Embedding, labels: Option<&Tensor>) -> Result<Tensor> {
    let labels = labels
        .ok_or_else(|| NnError::invalid("conditional GAN", "needs a label for every sample"))?;
    if labels.dims() != [x.dims()[0]] {
        return Err(NnError::invalid(
            "conditional GAN",
            format!(
                "expected {} labels, got shape {}",
                x.dims()[0],
                labels.shape()
            ),
        ));
    }
    let embedded = embedding.forward(labels)?; // [B, E]
    Ok(Tensor::cat(&[x, &embedded], 1)?) // [B, F + E]
}

/// A generator: latents `[B, latent_dim]` (and labels `[B]` u32 for the conditional GAN) →
/// images `[B, 1, 28, 28]` in [-1, 1].
pub struct GeneratorModel {
    store: ParamStore,
    body: Sequential,
    label_embedding: Option<Embedding>,
    latent_dim: usize,
}

impl GeneratorModel {
    /// The generator of `config.architecture`, its weights drawn from the Philox stream `seed`.
    pub fn new(config: &GanConfig, device: Device, seed: u64) -> Result<GeneratorModel> {
        let store = ParamStore::new(device, DType::F32, seed);
        let root = store.root();
        let main = root.sub("main");
        let z = config.latent_dim;
        let (body, label_embedding) = match config.architecture {
            Architecture::Gan | Architecture::WganGp => {
                let widths = [&[z][..], &config.generator_widths, &[PIXELS]].concat();
                (mlp(&main, &widths)?.add(Tanh), None)
            }
            Architecture::Cgan => {
                let embedding = Embedding::new(
                    &root.sub("label_embedding"),
                    NUM_CLASSES,
                    config.embedding_dim,
                )?;
                let widths = [
                    &[z + config.embedding_dim][..],
                    &config.generator_widths,
                    &[PIXELS],
                ]
                .concat();
                (mlp(&main, &widths)?.add(Tanh), Some(embedding))
            }
            Architecture::Dcgan => {
                // z [B, z] → [B, 128·7·7] → [B, 128, 7, 7] → [B, 64, 14, 14] → [B, 1, 28, 28]
                let up = ConvTranspose2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    weight_init: Init::DCGAN,
                    bias_init: Some(Init::Constant(0.0)),
                    ..Default::default()
                };
                let body = Sequential::new()
                    .add(Linear::with_config(
                        &main.sub(0),
                        z,
                        128 * 7 * 7,
                        LinearConfig::dcgan(),
                    )?)
                    .add(BatchNorm1d::with_config(
                        &main.sub(1),
                        128 * 7 * 7,
                        dcgan_batch_norm(),
                    )?)
                    .add(ReLU)
                    .add(Unflatten::new(1, vec![128, 7, 7]))
                    .add(ConvTranspose2d::new(&main.sub(4), 128, 64, [4, 4], up)?)
                    .add(BatchNorm2d::with_config(
                        &main.sub(5),
                        64,
                        dcgan_batch_norm(),
                    )?)
                    .add(ReLU)
                    .add(ConvTranspose2d::new(&main.sub(7), 64, 1, [4, 4], up)?)
                    .add(Tanh);
                (body, None)
            }
        };
        Ok(GeneratorModel {
            store,
            body,
            label_embedding,
            latent_dim: z,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// `z [B, latent_dim]` → `[B, 1, 28, 28]`; `train` selects batch statistics in batch norm.
    pub fn forward_t(&self, z: &Tensor, labels: Option<&Tensor>, train: bool) -> Result<Tensor> {
        if z.rank() != 2 || z.dims()[1] != self.latent_dim {
            return Err(NnError::invalid(
                "generator",
                format!(
                    "expected latents [B, {}], got {}",
                    self.latent_dim,
                    z.shape()
                ),
            ));
        }
        let input = match &self.label_embedding {
            Some(embedding) => join_labels(z, embedding, labels)?, // [B, z + E]
            None => z.clone(),
        };
        let out = self.body.forward_t(&input, train)?;
        let batch = z.dims()[0];
        Ok(out.reshape([batch, IMAGE_SHAPE[0], IMAGE_SHAPE[1], IMAGE_SHAPE[2]])?)
    }
}

/// A discriminator (or WGAN-GP's critic): images `[B, 1, 28, 28]` (and labels for the
/// conditional GAN) → one logit (critic score) per image, `[B, 1]`.
pub struct DiscriminatorModel {
    store: ParamStore,
    body: Sequential,
    label_embedding: Option<Embedding>,
    /// MLPs take images flattened to `[B, 784]`; DCGAN's convolutions take them as they are.
    flatten: bool,
}

impl DiscriminatorModel {
    pub fn new(config: &GanConfig, device: Device, seed: u64) -> Result<DiscriminatorModel> {
        let store = ParamStore::new(device, DType::F32, seed);
        let root = store.root();
        let main = root.sub("main");
        let (body, label_embedding) = match config.architecture {
            Architecture::Gan | Architecture::WganGp => {
                let widths = [&[PIXELS][..], &config.discriminator_widths, &[1]].concat();
                (mlp(&main, &widths)?, None)
            }
            Architecture::Cgan => {
                let embedding = Embedding::new(
                    &root.sub("label_embedding"),
                    NUM_CLASSES,
                    config.embedding_dim,
                )?;
                let widths = [
                    &[PIXELS + config.embedding_dim][..],
                    &config.discriminator_widths,
                    &[1],
                ]
                .concat();
                (mlp(&main, &widths)?, Some(embedding))
            }
            Architecture::Dcgan => {
                // [B, 1, 28, 28] → [B, 64, 14, 14] → [B, 128, 7, 7] → [B, 6272] → [B, 1]
                let down = Conv2dConfig {
                    stride: [2, 2],
                    padding: [1, 1],
                    weight_init: Init::DCGAN,
                    bias_init: Some(Init::Constant(0.0)),
                    ..Default::default()
                };
                let body = Sequential::new()
                    .add(Conv2d::new(&main.sub(0), 1, 64, [4, 4], down)?)
                    .add(LeakyReLU::new(SLOPE))
                    .add(Conv2d::new(&main.sub(2), 64, 128, [4, 4], down)?)
                    .add(BatchNorm2d::with_config(
                        &main.sub(3),
                        128,
                        dcgan_batch_norm(),
                    )?)
                    .add(LeakyReLU::new(SLOPE))
                    .add(Flatten::default())
                    .add(Linear::with_config(
                        &main.sub(6),
                        128 * 7 * 7,
                        1,
                        LinearConfig::dcgan(),
                    )?);
                (body, None)
            }
        };
        Ok(DiscriminatorModel {
            store,
            body,
            label_embedding,
            flatten: config.architecture != Architecture::Dcgan,
        })
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// `images [B, 1, 28, 28]` → logits `[B, 1]`.
    pub fn forward_t(
        &self,
        images: &Tensor,
        labels: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        if images.rank() != 4 || images.dims()[1..] != IMAGE_SHAPE {
            return Err(NnError::invalid(
                "discriminator",
                format!("expected images [B, 1, 28, 28], got {}", images.shape()),
            ));
        }
        let batch = images.dims()[0];
        if !self.flatten {
            return self.body.forward_t(images, train);
        }
        let flat = images.reshape([batch, PIXELS])?; // [B, 784]
        let input = match &self.label_embedding {
            Some(embedding) => join_labels(&flat, embedding, labels)?, // [B, 784 + E]
            None => flat,
        };
        self.body.forward_t(&input, train)
    }
}
