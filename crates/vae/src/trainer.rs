//! The VAE's training step and its measurements, with what a run needs around them: fixed
//! latents for sample grids, sampling from the prior, reconstruction, and checkpoints that
//! resume bit for bit.
//!
//! One call to [`VaeTrainer::step`] consumes one batch of images in [0, 1]: encode to
//! q(z|x) = N(μ, diag σ²), draw z = μ + σ·ε, decode, and take an Adam step on the batch mean
//! of -log p(x|z) + w·KL(q(z|x) ‖ N(0, I)), where w is β (1 for the ELBO) ramped up over the
//! warm-up steps. Losses are in nats per image, as PyTorch's example reports them.

use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::metrics::DeviceScalars;
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::parallel::{self, DataParallel, Rows};
use kiln_nn::{image_count, NnError};
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};
use serde::Serialize;

use crate::elbo::{log_prior_over_posterior, reparameterize};
use crate::{log_mean_exp, Result, VaeArchitecture, VaeConfig, VaeModel, IMAGE_SHAPE};

/// What one step measured, per image (means over the batch), in nats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMetrics {
    /// The objective minimised: reconstruction + kl_weight·kl.
    pub loss: f64,
    /// The negative ELBO, reconstruction + kl (whatever the weight).
    pub neg_elbo: f64,
    pub reconstruction: f64,
    pub kl: f64,
    pub kl_weight: f64,
}

impl StepMetrics {
    /// The first value that is NaN or infinite, by name.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        [
            ("loss", self.loss),
            ("reconstruction", self.reconstruction),
            ("kl", self.kl),
        ]
        .into_iter()
        .find(|(_, value)| !value.is_finite())
    }
}

/// A step's measurements still on the device, as [`StepMetrics`] will hold them: a training
/// loop reads them ([`PendingMetrics::read`], one readback for all) only when it logs.
#[derive(Debug, Clone)]
pub struct PendingMetrics {
    /// `[loss, reconstruction, kl]`.
    values: DeviceScalars,
    kl_weight: f64,
}

impl PendingMetrics {
    /// The values, read back from the device in one transfer.
    pub fn read(&self) -> Result<StepMetrics> {
        let values = self.values.read()?;
        let [loss, reconstruction, kl] = values[..] else {
            unreachable!("three scalars were gathered")
        };
        Ok(StepMetrics {
            loss,
            neg_elbo: reconstruction + kl,
            reconstruction,
            kl,
            kl_weight: self.kl_weight,
        })
    }
}

/// The negative ELBO of a set of images, per image (means over the set), in nats.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ElboReport {
    pub images: usize,
    pub neg_elbo: f64,
    pub reconstruction: f64,
    pub kl: f64,
}

/// The checkpoint name of the reparameterisation noise generator.
const NOISE: &str = "noise";
/// Images per forward pass when measuring a set.
const EVAL_BATCH: usize = 500;
/// Decoder rows per forward pass in the importance-weighted estimate.
const IMPORTANCE_ROWS: usize = 8192;

/// The model, its optimizer and the reparameterisation noise of one VAE run.
pub struct VaeTrainer {
    config: VaeConfig,
    device: Device,
    model: VaeModel,
    optimizer: Adam,
    /// ε of the reparameterisation.
    noise: Generator,
    /// Steps (batches) taken.
    step: u64,
    /// The other ranks of a data-parallel run, if any.
    parallel: Option<DataParallel>,
}

impl VaeTrainer {
    /// A fresh run of `config` on `device`: weights drawn from the config's seed.
    pub fn new(config: VaeConfig, device: Device) -> Result<VaeTrainer> {
        config
            .validate()
            .map_err(|message| NnError::invalid("VAE config", message))?;
        let model = VaeModel::new(&config, device, DType::F32, stream_seed(config.seed, 1))?;
        let adam = AdamConfig {
            lr: config.lr,
            ..Default::default()
        };
        Ok(VaeTrainer {
            optimizer: Adam::new(model.store().parameters(), adam)?,
            noise: Generator::new(stream_seed(config.seed, 3)),
            model,
            config,
            device,
            step: 0,
            parallel: None,
        })
    }

    /// Trains data-parallel with `parallel`'s ranks from now on: every rank must hold the
    /// same run and be given its shard of each batch ([`VaeTrainer::step_rows`]).
    pub fn set_parallel(&mut self, parallel: DataParallel) {
        self.parallel = Some(parallel);
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn model(&self) -> &VaeModel {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Steps (batches) taken so far, including those before a resume.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    fn standard_normal(&self, shape: [usize; 2], generator: &mut Generator) -> Result<Tensor> {
        let dtype = self.model.store().dtype();
        Ok(Tensor::randn(
            shape,
            0.0,
            1.0,
            dtype,
            self.device,
            generator,
        )?)
    }

    /// One training step on a batch of `images [B, 1, 28, 28]` in [0, 1], its metrics read
    /// back at once.
    pub fn step(&mut self, images: &Tensor) -> Result<StepMetrics> {
        self.step_deferred(images)?.read()
    }

    /// One training step whose metrics stay on the device until read: nothing in it makes the
    /// host wait for a GPU.
    pub fn step_deferred(&mut self, images: &Tensor) -> Result<PendingMetrics> {
        let batch = images.dims().first().copied().unwrap_or(0);
        self.step_rows(images, batch, 0)
    }

    /// [`VaeTrainer::step_deferred`] on rows `offset..offset + B` of a batch of `global`
    /// images (this rank's shard in a data-parallel run): ε of those rows, and the whole
    /// batch's gradients and metrics.
    pub fn step_rows(
        &mut self,
        images: &Tensor,
        global: usize,
        offset: usize,
    ) -> Result<PendingMetrics> {
        let rows = Rows::new(global, offset, images.dims().first().copied().unwrap_or(0))?;
        let _batch_norm = self.parallel.as_ref().map(DataParallel::batch_norm_scope);
        let mut noise = self.noise.clone();
        let epsilon = self.standard_normal([global, self.config.latent_dim], &mut noise)?;
        let epsilon = rows.take(epsilon)?; // [B, latent]
        let terms = self.model.elbo_terms(images, &epsilon)?;
        let kl_weight = self.config.kl_weight(self.step);
        let reconstruction = terms.reconstruction.mean_all()?;
        let kl = terms.kl.mean_all()?;
        let loss = reconstruction.add(&kl.mul_scalar(kl_weight)?)?;
        let params = self.model.store().parameters();
        let grads = parallel::gradients(self.parallel.as_ref(), &loss, &params, rows)?;
        self.optimizer.step(&grads)?;
        parallel::settle_buffers(self.parallel.as_ref(), &[self.model.store()])?;
        self.noise = noise;
        self.step += 1;
        Ok(PendingMetrics {
            values: DeviceScalars::new(&[&loss, &reconstruction, &kl])?
                .over_ranks(self.parallel.as_ref(), rows),
            kl_weight,
        })
    }

    /// The latents every epoch's sample grid is drawn from: the same for the whole run,
    /// resumed or not.
    pub fn fixed_latents(&self, n: usize) -> Result<Tensor> {
        let mut stream = Generator::new(stream_seed(self.config.seed, 4));
        self.standard_normal([n, self.config.latent_dim], &mut stream)
    }

    /// The decoder's mean images `[N, 1, 28, 28]` in [0, 1] for `latents [N, latent]`: samples
    /// of the model when the latents come from the prior N(0, I).
    pub fn sample(&self, latents: &Tensor) -> Result<Tensor> {
        no_grad(|| self.model.mean_image(&self.model.decode(latents)?))
    }

    /// The posterior means μ `[N, latent]` of `images [N, 1, 28, 28]` in [0, 1].
    pub fn encode_mean(&self, images: &Tensor) -> Result<Tensor> {
        no_grad(|| Ok(self.model.encode(images)?.0))
    }

    /// Reconstructions of `images [N, 1, 28, 28]` in [0, 1]: the decoder's mean image at the
    /// posterior mean, `[N, 1, 28, 28]` in [0, 1].
    pub fn reconstruct(&self, images: &Tensor) -> Result<Tensor> {
        self.sample(&self.encode_mean(images)?)
    }

    /// The negative ELBO of `images [N, 1, 28, 28]` in [0, 1], one reparameterised sample per
    /// image (as PyTorch's example measures its test loss), from the Philox stream `seed` so
    /// the figure is repeatable; KL weight 1 whatever β.
    pub fn evaluate(&self, images: &Tensor, seed: u64) -> Result<ElboReport> {
        let n = image_count("evaluate", images, IMAGE_SHAPE)?;
        let mut generator = Generator::new(seed);
        let (mut reconstruction, mut kl) = (0.0, 0.0);
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(EVAL_BATCH) {
                let size = EVAL_BATCH.min(n - start);
                let batch = images.narrow(0, start, size)?;
                let epsilon =
                    self.standard_normal([size, self.config.latent_dim], &mut generator)?;
                let terms = self.model.elbo_terms(&batch, &epsilon)?;
                reconstruction += terms.reconstruction.sum_all()?.to_f64()?;
                kl += terms.kl.sum_all()?.to_f64()?;
            }
            Ok(())
        })?;
        let (reconstruction, kl) = (reconstruction / n as f64, kl / n as f64);
        Ok(ElboReport {
            images: n,
            neg_elbo: reconstruction + kl,
            reconstruction,
            kl,
        })
    }

    /// The importance-weighted estimate of -log p(x) (Burda et al., 2016) of each image of
    /// `images [N, 1, 28, 28]` in [0, 1], with `samples` draws z_i ~ q(z|x):
    /// -log (1/k)·Σ_i p(x|z_i)·p(z_i) / q(z_i|x), a bound on -log p(x) that tightens as k grows
    /// (k = 1 is the one-sample negative ELBO). Returns the per-image values in nats; the
    /// draws come from the Philox stream `seed`.
    pub fn importance_weighted_nll(
        &self,
        images: &Tensor,
        samples: usize,
        seed: u64,
    ) -> Result<Vec<f64>> {
        let n = image_count("importance_weighted_nll", images, IMAGE_SHAPE)?;
        if samples == 0 {
            return Err(NnError::invalid(
                "importance_weighted_nll",
                "needs at least 1 sample",
            ));
        }
        let most = kiln_nn::limits::MAX_IMPORTANCE_SAMPLES;
        kiln_nn::limits::at_most("number of importance samples", samples, most)
            .map_err(|message| NnError::invalid("importance_weighted_nll", message))?;
        let latent = self.config.latent_dim;
        // G images at a time, C samples of each per pass: C·G decoder rows.
        let group = (IMPORTANCE_ROWS / samples).clamp(1, n);
        let chunk = samples.min(IMPORTANCE_ROWS);
        let mut generator = Generator::new(seed);
        let mut nll = Vec::with_capacity(n);
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(group) {
                let size = group.min(n - start);
                let x = images.narrow(0, start, size)?; // [G, 1, 28, 28]
                let (mu, logvar) = self.model.encode(&x)?; // [G, L] each
                let mut log_weights = vec![Vec::with_capacity(samples); size]; // [G][k]
                for first in (0..samples).step_by(chunk) {
                    let count = chunk.min(samples - first);
                    let epsilon = self
                        .standard_normal([count * size, latent], &mut generator)?
                        .reshape([count, size, latent])?; // [C, G, L]
                    let z = reparameterize(&mu, &logvar, &epsilon)?; // [C, G, L]
                    let logits = self.model.decode(&z.reshape([count * size, latent])?)?; // [C·G, 1, 28, 28]
                    let targets = x
                        .unsqueeze(0)?
                        .broadcast_as([
                            count,
                            size,
                            IMAGE_SHAPE[0],
                            IMAGE_SHAPE[1],
                            IMAGE_SHAPE[2],
                        ])?
                        .reshape([count * size, IMAGE_SHAPE[0], IMAGE_SHAPE[1], IMAGE_SHAPE[2]])?;
                    let log_likelihood = self
                        .model
                        .reconstruction_nll(&logits, &targets)?
                        .neg()?
                        .reshape([count, size])?; // [C, G]
                    let weights = log_likelihood
                        .add(&log_prior_over_posterior(&z, &epsilon, &logvar)?)? // [C, G]
                        .to_dtype(DType::F64)?
                        .to_vec::<f64>()?;
                    for row in weights.chunks(size) {
                        for (image, &w) in log_weights.iter_mut().zip(row) {
                            image.push(w);
                        }
                    }
                }
                nll.extend(log_weights.iter().map(|w| -log_mean_exp(w)));
            }
            Ok(())
        })?;
        Ok(nll)
    }

    /// Everything a resume needs: the model under `model.`, the optimizer's state, the noise
    /// stream, the step, and the configuration.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("model", self.model.store())?;
        checkpoint.insert_optimizer("optimizer", &self.optimizer)?;
        checkpoint.insert_generator(NOISE, &self.noise);
        checkpoint.set_step(self.step);
        checkpoint.set_model(self.config.architecture.name(), &self.config)?;
        Ok(checkpoint)
    }

    /// The architecture a checkpoint holds, or an error if it is not a kiln VAE checkpoint.
    pub fn architecture_of(checkpoint: &Checkpoint, context: &str) -> Result<VaeArchitecture> {
        let name = checkpoint.model_name(context, "VAE")?;
        VaeArchitecture::from_name(name).ok_or_else(|| {
            NnError::mismatch(
                context,
                format!("holds a `{name}` model, which is not a VAE"),
            )
        })
    }

    /// The run a checkpoint holds, on `device`, exactly as it was when saved.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<VaeTrainer> {
        Self::architecture_of(checkpoint, context)?;
        let config: VaeConfig = checkpoint.model_config(context)?;
        let mut trainer = VaeTrainer::new(config, device)?;
        checkpoint.load_store("model", trainer.model.store())?;
        checkpoint.load_optimizer("optimizer", &mut trainer.optimizer)?;
        trainer.noise = checkpoint.generator(NOISE)?;
        trainer.step = checkpoint.step()?;
        Ok(trainer)
    }
}
