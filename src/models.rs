//! The models `kiln` trains, samples and scores, behind one face: [`Model`] is a run of either
//! family — kiln-gan's [`GanTrainer`] or kiln-vae's [`VaeTrainer`] — fresh or loaded from a
//! checkpoint, so the training loop, `kiln sample` and `kiln eval` are written once. What is
//! particular to a family stays in its crate; this only dispatches.

use std::path::Path;

use kiln_data::{Batch, Scale};
use kiln_gan::{Architecture, GanTrainer};
use kiln_nn::checkpoint::{Checkpoint, MODEL_KEY};
use kiln_tensor::{DType, Device, Generator, Tensor};
use kiln_vae::{VaeArchitecture, VaeTrainer};
use serde::Serialize;

/// Which model: the name `kiln train` takes and checkpoints record (`kiln.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Gan(Architecture),
    Vae(VaeArchitecture),
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Gan(architecture) => architecture.name(),
            ModelKind::Vae(architecture) => architecture.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<ModelKind> {
        Architecture::from_name(name)
            .map(ModelKind::Gan)
            .or_else(|| VaeArchitecture::from_name(name).map(ModelKind::Vae))
    }

    /// Epochs `kiln train` runs when not told.
    pub fn default_epochs(self) -> u64 {
        match self {
            ModelKind::Gan(architecture) => architecture.default_epochs(),
            ModelKind::Vae(architecture) => architecture.default_epochs(),
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

/// One run of a model: its networks, optimizers, noise streams and step count.
pub enum Model {
    Gan(GanTrainer),
    Vae(VaeTrainer),
}

/// What one training step measured, as metrics.jsonl records it (the family's own fields).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub enum StepMetrics {
    Gan(kiln_gan::StepMetrics),
    Vae(kiln_vae::StepMetrics),
}

impl StepMetrics {
    /// The first loss that is NaN or infinite, by name.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        match self {
            StepMetrics::Gan(metrics) => metrics.non_finite(),
            StepMetrics::Vae(metrics) => metrics.non_finite(),
        }
    }

    /// The losses for a progress message or summary:
    /// "loss_d 0.612 · loss_g 1.920 · D(x) 0.71 · D(G(z)) 0.30", "-ELBO 127.1 · rec 108.0 · KL 19.1".
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
        }
    }

    /// The configuration, for config.json.
    pub fn config_json(&self) -> Result<serde_json::Value, String> {
        match self {
            Model::Gan(trainer) => serde_json::to_value(trainer.config()),
            Model::Vae(trainer) => serde_json::to_value(trainer.config()),
        }
        .map_err(|e| e.to_string())
    }

    pub fn batch_size(&self) -> usize {
        match self {
            Model::Gan(trainer) => trainer.config().batch_size,
            Model::Vae(trainer) => trainer.config().batch_size,
        }
    }

    /// The seed of the run (weights, noise and data order).
    pub fn seed(&self) -> u64 {
        match self {
            Model::Gan(trainer) => trainer.config().seed,
            Model::Vae(trainer) => trainer.config().seed,
        }
    }

    /// Whether an epoch leaves out its last, smaller batch: the GANs do (batch norm, and
    /// their published loops); the VAEs use every image, as PyTorch's example does.
    pub fn drop_last(&self) -> bool {
        matches!(self, Model::Gan(_))
    }

    /// The pixel range the model trains on: a GAN's tanh range, a VAE's probabilities.
    pub fn scale(&self) -> Scale {
        match self {
            Model::Gan(_) => Scale::MinusOneToOne,
            Model::Vae(_) => Scale::ZeroToOne,
        }
    }

    pub fn steps_done(&self) -> u64 {
        match self {
            Model::Gan(trainer) => trainer.steps_done(),
            Model::Vae(trainer) => trainer.steps_done(),
        }
    }

    pub fn latent_dim(&self) -> usize {
        match self {
            Model::Gan(trainer) => trainer.config().latent_dim,
            Model::Vae(trainer) => trainer.config().latent_dim,
        }
    }

    /// Whether samples are drawn for chosen digits (the conditional GAN).
    pub fn is_conditional(&self) -> bool {
        matches!(self.kind(), ModelKind::Gan(a) if a.is_conditional())
    }

    /// One training step on a batch in [`Model::scale`].
    pub fn step(&mut self, batch: &Batch) -> Result<StepMetrics, String> {
        match self {
            Model::Gan(trainer) => trainer
                .step(&batch.images, &batch.labels)
                .map(StepMetrics::Gan),
            Model::Vae(trainer) => trainer.step(&batch.images).map(StepMetrics::Vae),
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
        }
    }

    pub fn checkpoint(&self) -> Result<Checkpoint, String> {
        match self {
            Model::Gan(trainer) => trainer.checkpoint(),
            Model::Vae(trainer) => trainer.checkpoint(),
        }
        .map_err(|e| e.to_string())
    }

    /// The latents (and for the conditional GAN, digits 0, 1, .., 9, 0, ..) every epoch's
    /// sample grid is drawn from: the same for the whole run, resumed or not.
    pub fn fixed_latents(&self, n: usize) -> Result<(Tensor, Option<Tensor>), String> {
        match self {
            Model::Gan(trainer) => trainer.fixed_latents(n),
            Model::Vae(trainer) => trainer.fixed_latents(n).map(|z| (z, None)),
        }
        .map_err(|e| e.to_string())
    }

    /// Images `[N, 1, 28, 28]` in [-1, 1] from `latents [N, latent_dim]` (and digits for the
    /// conditional GAN): the generator's output, or the VAE decoder's mean image.
    pub fn sample(&self, latents: &Tensor, labels: Option<&Tensor>) -> Result<Tensor, String> {
        match self {
            Model::Gan(trainer) => trainer.sample(latents, labels),
            Model::Vae(trainer) => trainer.sample(latents).and_then(|images| {
                Ok(images.affine(2.0, -1.0)?) // [0, 1] → [-1, 1]
            }),
        }
        .map_err(|e| e.to_string())
    }

    /// `n` images `[n, 1, 28, 28]` in [-1, 1] drawn from the model: latents from N(0, I) in
    /// the Philox stream `seed`, and for the conditional GAN the digits 0, 1, .., 9, 0, ..
    pub fn generate(&self, n: usize, seed: u64, device: Device) -> Result<Tensor, String> {
        /// Latents per call while sampling.
        const BATCH: usize = 500;
        let mut generator = Generator::new(seed);
        let latent_dim = self.latent_dim();
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
