//! The models `kiln` trains, samples and scores, behind one face: [`Model`] is a run of any
//! family — kiln-gan's [`GanTrainer`], kiln-vae's [`VaeTrainer`], kiln-diffusion's
//! [`DdpmTrainer`] or kiln-autoregressive's [`PixelCnnTrainer`] — fresh or loaded from a
//! checkpoint, so the training loop, `kiln sample` and `kiln eval` are written once. What is
//! particular to a family stays in its crate; this only dispatches.

use std::path::Path;

use kiln_autoregressive::PixelCnnTrainer;
use kiln_data::{Batch, Scale};
use kiln_diffusion::{DdpmTrainer, Sampler};
use kiln_gan::{Architecture, GanTrainer};
use kiln_nn::checkpoint::{Checkpoint, MODEL_KEY};
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{DType, Device, Generator, Tensor};
use kiln_vae::{VaeArchitecture, VaeTrainer};
use serde::Serialize;

/// Which model: the name `kiln train` takes and checkpoints record (`kiln.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Gan(Architecture),
    Vae(VaeArchitecture),
    Ddpm,
    PixelCnn,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Gan(architecture) => architecture.name(),
            ModelKind::Vae(architecture) => architecture.name(),
            ModelKind::Ddpm => kiln_diffusion::MODEL_NAME,
            ModelKind::PixelCnn => kiln_autoregressive::MODEL_NAME,
        }
    }

    pub fn from_name(name: &str) -> Option<ModelKind> {
        Architecture::from_name(name)
            .map(ModelKind::Gan)
            .or_else(|| VaeArchitecture::from_name(name).map(ModelKind::Vae))
            .or_else(|| {
                [ModelKind::Ddpm, ModelKind::PixelCnn]
                    .into_iter()
                    .find(|k| k.name() == name)
            })
    }

    /// Epochs `kiln train` runs when not told.
    pub fn default_epochs(self) -> u64 {
        match self {
            ModelKind::Gan(architecture) => architecture.default_epochs(),
            ModelKind::Vae(architecture) => architecture.default_epochs(),
            ModelKind::Ddpm => kiln_diffusion::DdpmConfig::DEFAULT_EPOCHS,
            ModelKind::PixelCnn => kiln_autoregressive::PixelCnnConfig::default_epochs(),
        }
    }

    /// Samples `kiln train` scores at the end of a run when not told: 10,000 (the test
    /// split's size) where sampling is cheap; fewer for the DDPM (50 U-Net passes a sample)
    /// and the PixelCNN (784 passes a sample).
    pub fn default_eval_samples(self) -> usize {
        match self {
            ModelKind::Gan(_) | ModelKind::Vae(_) => 10_000,
            ModelKind::Ddpm => DDPM_EVAL_SAMPLES,
            ModelKind::PixelCnn => PIXELCNN_EVAL_SAMPLES,
        }
    }

    /// The model a checkpoint holds, or the one-line reason it holds none kiln knows.
    pub fn of_checkpoint(checkpoint: &Checkpoint, context: &str) -> Result<ModelKind, String> {
        let name = checkpoint.meta(MODEL_KEY).ok_or_else(|| {
            format!("{context}: not a kiln checkpoint (no `{MODEL_KEY}` metadata)")
        })?;
        ModelKind::from_name(name)
            .ok_or_else(|| format!("{context}: holds a `{name}` model, which kiln does not know"))
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// See [`ModelKind::default_eval_samples`].
pub const DDPM_EVAL_SAMPLES: usize = 2_000;
pub const PIXELCNN_EVAL_SAMPLES: usize = 1_000;

/// One run of a model: its networks, optimizers, noise streams and step count.
pub enum Model {
    Gan(GanTrainer),
    Vae(VaeTrainer),
    /// Boxed: two U-Nets held inline make it ten times the size of the others.
    Ddpm(Box<DdpmTrainer>),
    PixelCnn(PixelCnnTrainer),
}

/// What one training step measured, as metrics.jsonl records it (the family's own fields).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum StepMetrics {
    Gan(kiln_gan::StepMetrics),
    Vae(kiln_vae::StepMetrics),
    Ddpm(kiln_diffusion::StepMetrics),
    PixelCnn(kiln_autoregressive::StepMetrics),
}

/// A step's metrics still on the device (see [`Model::step`]).
pub enum PendingStep {
    Gan(kiln_gan::PendingMetrics),
    Vae(kiln_vae::PendingMetrics),
    Ddpm(kiln_diffusion::PendingMetrics),
    PixelCnn(kiln_autoregressive::PendingMetrics),
}

impl PendingStep {
    /// The metrics, read back from the device in one transfer.
    pub fn read(&self) -> Result<StepMetrics, String> {
        match self {
            PendingStep::Gan(pending) => pending.read().map(StepMetrics::Gan),
            PendingStep::Vae(pending) => pending.read().map(StepMetrics::Vae),
            PendingStep::Ddpm(pending) => pending.read().map(StepMetrics::Ddpm),
            PendingStep::PixelCnn(pending) => pending.read().map(StepMetrics::PixelCnn),
        }
        .map_err(|e| e.to_string())
    }
}

impl StepMetrics {
    /// The first loss that is NaN or infinite, by name.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        match self {
            StepMetrics::Gan(metrics) => metrics.non_finite(),
            StepMetrics::Vae(metrics) => metrics.non_finite(),
            StepMetrics::Ddpm(metrics) => metrics.non_finite(),
            StepMetrics::PixelCnn(metrics) => metrics.non_finite(),
        }
    }

    /// The losses for a progress message or summary:
    /// "loss_d 0.612 · loss_g 1.920 · D(x) 0.71 · D(G(z)) 0.30", "-ELBO 127.1 · rec 108.0 · KL 19.1",
    /// "ε MSE 0.0412", "NLL 92.31 nats · 0.170 bits/dim".
    pub fn losses(&self) -> String {
        let mut parts = Vec::new();
        match self {
            StepMetrics::Gan(m) => {
                parts.push(format!("loss_d {:.3}", m.loss_d));
                if let Some(loss_g) = m.loss_g {
                    parts.push(format!("loss_g {loss_g:.3}"));
                }
                match m.gradient_penalty {
                    Some(penalty) => {
                        parts.push(format!("W {:.3}", m.d_real - m.d_fake));
                        parts.push(format!("gp {penalty:.3}"));
                    }
                    None => {
                        parts.push(format!("D(x) {:.2}", m.d_real));
                        parts.push(format!("D(G(z)) {:.2}", m.d_fake));
                    }
                }
            }
            StepMetrics::Vae(m) => {
                parts.push(format!("-ELBO {:.2}", m.neg_elbo));
                parts.push(format!("rec {:.2}", m.reconstruction));
                parts.push(format!("KL {:.2}", m.kl));
                if m.kl_weight != 1.0 {
                    parts.push(format!("KL weight {:.3}", m.kl_weight));
                }
            }
            StepMetrics::Ddpm(m) => parts.push(format!("ε MSE {:.4}", m.loss)),
            StepMetrics::PixelCnn(m) => {
                parts.push(format!("NLL {:.2} nats", m.nll));
                parts.push(format!("{:.3} bits/dim", m.bits_per_dim));
            }
        }
        parts.join(" · ")
    }
}

impl Model {
    /// The run a checkpoint holds, on `device`, exactly as it was when saved.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<Model, String> {
        let model = match ModelKind::of_checkpoint(checkpoint, context)? {
            ModelKind::Gan(_) => {
                GanTrainer::from_checkpoint(checkpoint, device, context).map(Model::Gan)
            }
            ModelKind::Vae(_) => {
                VaeTrainer::from_checkpoint(checkpoint, device, context).map(Model::Vae)
            }
            ModelKind::Ddpm => DdpmTrainer::from_checkpoint(checkpoint, device, context)
                .map(|t| Model::Ddpm(Box::new(t))),
            ModelKind::PixelCnn => {
                PixelCnnTrainer::from_checkpoint(checkpoint, device, context).map(Model::PixelCnn)
            }
        };
        model.map_err(|e| e.to_string())
    }

    /// The checkpoint file at `path` and the run it holds.
    pub fn load(path: &Path, device: Device) -> Result<(Model, Checkpoint), String> {
        let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
        let model = Model::from_checkpoint(&checkpoint, device, &path.display().to_string())?;
        Ok((model, checkpoint))
    }

    pub fn kind(&self) -> ModelKind {
        match self {
            Model::Gan(trainer) => ModelKind::Gan(trainer.config().architecture),
            Model::Vae(trainer) => ModelKind::Vae(trainer.config().architecture),
            Model::Ddpm(_) => ModelKind::Ddpm,
            Model::PixelCnn(_) => ModelKind::PixelCnn,
        }
    }

    /// The configuration, for config.json.
    pub fn config_json(&self) -> Result<serde_json::Value, String> {
        match self {
            Model::Gan(trainer) => serde_json::to_value(trainer.config()),
            Model::Vae(trainer) => serde_json::to_value(trainer.config()),
            Model::Ddpm(trainer) => serde_json::to_value(trainer.config()),
            Model::PixelCnn(trainer) => serde_json::to_value(trainer.config()),
        }
        .map_err(|e| e.to_string())
    }

    pub fn batch_size(&self) -> usize {
        match self {
            Model::Gan(trainer) => trainer.config().batch_size,
            Model::Vae(trainer) => trainer.config().batch_size,
            Model::Ddpm(trainer) => trainer.config().batch_size,
            Model::PixelCnn(trainer) => trainer.config().batch_size,
        }
    }

    /// The seed of the run (weights, noise and data order).
    pub fn seed(&self) -> u64 {
        match self {
            Model::Gan(trainer) => trainer.config().seed,
            Model::Vae(trainer) => trainer.config().seed,
            Model::Ddpm(trainer) => trainer.config().seed,
            Model::PixelCnn(trainer) => trainer.config().seed,
        }
    }

    /// Whether an epoch leaves out its last, smaller batch: the GANs do (batch norm, and
    /// their published loops); the others use every image, as PyTorch's VAE example does.
    pub fn drop_last(&self) -> bool {
        matches!(self, Model::Gan(_))
    }

    /// The pixel range the model trains on: a GAN's tanh range and the DDPM's (Ho et al.'s
    /// data scaling), the VAE's and PixelCNN's probabilities.
    pub fn scale(&self) -> Scale {
        match self {
            Model::Gan(_) | Model::Ddpm(_) => Scale::MinusOneToOne,
            Model::Vae(_) | Model::PixelCnn(_) => Scale::ZeroToOne,
        }
    }

    pub fn steps_done(&self) -> u64 {
        match self {
            Model::Gan(trainer) => trainer.steps_done(),
            Model::Vae(trainer) => trainer.steps_done(),
            Model::Ddpm(trainer) => trainer.steps_done(),
            Model::PixelCnn(trainer) => trainer.steps_done(),
        }
    }

    /// The size of the latent a sample is drawn from: the GANs' and VAEs'; `None` for the
    /// DDPM (its "latent" is a whole noise image, and more noise joins it on the way) and
    /// the PixelCNN (which draws pixel by pixel).
    pub fn latent_dim(&self) -> Option<usize> {
        match self {
            Model::Gan(trainer) => Some(trainer.config().latent_dim),
            Model::Vae(trainer) => Some(trainer.config().latent_dim),
            Model::Ddpm(_) | Model::PixelCnn(_) => None,
        }
    }

    /// Whether samples are drawn for chosen digits (the conditional GAN).
    pub fn is_conditional(&self) -> bool {
        matches!(self.kind(), ModelKind::Gan(a) if a.is_conditional())
    }

    /// One training step on a batch in [`Model::scale`]. Its metrics stay on the device until
    /// [`PendingStep::read`], so a step never makes the host wait for a GPU.
    pub fn step(&mut self, batch: &Batch) -> Result<PendingStep, String> {
        match self {
            Model::Gan(trainer) => trainer
                .step_deferred(&batch.images, &batch.labels)
                .map(PendingStep::Gan),
            Model::Vae(trainer) => trainer.step_deferred(&batch.images).map(PendingStep::Vae),
            Model::Ddpm(trainer) => trainer.step_deferred(&batch.images).map(PendingStep::Ddpm),
            Model::PixelCnn(trainer) => trainer
                .step_deferred(&batch.images)
                .map(PendingStep::PixelCnn),
        }
        .map_err(|e| e.to_string())
    }

    /// The metrics plotted in loss.png, and the plot's title and y label.
    pub fn plot(&self) -> (&'static [&'static str], String, &'static str) {
        let kind = self.kind();
        match self {
            Model::Gan(_) => (
                &["loss_d", "loss_g"],
                format!("kiln {kind}: losses"),
                "loss",
            ),
            Model::Vae(_) => (
                &["neg_elbo", "test_neg_elbo"],
                format!("kiln {kind}: negative ELBO per image"),
                "nats",
            ),
            Model::Ddpm(_) => (
                &["loss", "test_loss"],
                format!("kiln {kind}: noise-prediction error"),
                "MSE",
            ),
            Model::PixelCnn(_) => (
                &["nll", "test_nll"],
                format!("kiln {kind}: negative log-likelihood per image"),
                "nats",
            ),
        }
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, String> {
        match self {
            Model::Gan(trainer) => trainer.checkpoint(),
            Model::Vae(trainer) => trainer.checkpoint(),
            Model::Ddpm(trainer) => trainer.checkpoint(),
            Model::PixelCnn(trainer) => trainer.checkpoint(),
        }
        .map_err(|e| e.to_string())
    }

    /// The `n` images `[n, 1, 28, 28]` in [-1, 1] of every epoch's sample grid: drawn from
    /// the same latents (and for the conditional GAN, digits 0, 1, .., 9, 0, ..; for the DDPM
    /// the same x_T through the default deterministic DDIM; for the PixelCNN the same
    /// uniforms) for the whole run, resumed or not, so the grids show the model changing.
    pub fn grid_images(&self, n: usize) -> Result<Tensor, String> {
        let images = match self {
            Model::Gan(trainer) => {
                let (z, labels) = trainer.fixed_latents(n).map_err(|e| e.to_string())?;
                return self.sample(&z, labels.as_ref());
            }
            Model::Vae(trainer) => {
                let z = trainer.fixed_latents(n).map_err(|e| e.to_string())?;
                return self.sample(&z, None);
            }
            Model::Ddpm(trainer) => trainer.fixed_latents(n).and_then(|x_t| {
                let mut generator = Generator::new(stream_seed(trainer.config().seed, 5));
                trainer.sample(&x_t, Sampler::DEFAULT, &mut generator, &mut |_, _| {})
            }),
            Model::PixelCnn(trainer) => trainer
                .sample(n, stream_seed(trainer.config().seed, 4), &mut |_, _| {})
                .and_then(|images| Ok(images.affine(2.0, -1.0)?)),
        };
        images.map_err(|e| e.to_string())
    }

    /// Images `[N, 1, 28, 28]` in [-1, 1] from `latents [N, latent_dim]` (and digits for the
    /// conditional GAN): the generator's output, or the VAE decoder's mean image. Only for
    /// models with a [`Model::latent_dim`].
    pub fn sample(&self, latents: &Tensor, labels: Option<&Tensor>) -> Result<Tensor, String> {
        match self {
            Model::Gan(trainer) => trainer.sample(latents, labels),
            Model::Vae(trainer) => trainer.sample(latents).and_then(|images| {
                Ok(images.affine(2.0, -1.0)?) // [0, 1] → [-1, 1]
            }),
            Model::Ddpm(_) | Model::PixelCnn(_) => {
                return Err(format!("the {} draws samples without latents", self.kind()))
            }
        }
        .map_err(|e| e.to_string())
    }

    /// `n` images `[n, 1, 28, 28]` in [-1, 1] drawn from the model with randomness from the
    /// Philox stream `seed`: latents from N(0, I) (and for the conditional GAN the digits 0,
    /// 1, .., 9, 0, ..); the DDPM's x_T and noise, through `sampler`; the PixelCNN's
    /// uniforms. `on_step(done, total)` follows the DDPM's and PixelCNN's network passes.
    pub fn generate(
        &self,
        n: usize,
        seed: u64,
        device: Device,
        sampler: Sampler,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor, String> {
        match self {
            Model::Ddpm(trainer) => {
                return trainer
                    .generate(n, sampler, seed, on_step)
                    .map_err(|e| e.to_string())
            }
            Model::PixelCnn(trainer) => {
                return trainer
                    .sample(n, seed, on_step)
                    .and_then(|images| Ok(images.affine(2.0, -1.0)?))
                    .map_err(|e| e.to_string())
            }
            Model::Gan(_) | Model::Vae(_) => {}
        }
        /// Latents per call while sampling.
        const BATCH: usize = 500;
        let mut generator = Generator::new(seed);
        let latent_dim = self.latent_dim().expect("GANs and VAEs have latents");
        let mut batches = Vec::new();
        for start in (0..n).step_by(BATCH) {
            let size = BATCH.min(n - start);
            let shape = [size, latent_dim];
            let z = Tensor::randn(shape, 0.0, 1.0, DType::F32, device, &mut generator)
                .map_err(|e| e.to_string())?;
            let labels = self
                .is_conditional()
                .then(|| {
                    let digits = (start..start + size).map(|i| (i % 10) as u32).collect();
                    Tensor::from_vec(digits, [size], device)
                })
                .transpose()
                .map_err(|e| e.to_string())?;
            batches.push(self.sample(&z, labels.as_ref())?);
        }
        Tensor::cat(&batches.iter().collect::<Vec<_>>(), 0).map_err(|e| e.to_string())
    }
}
