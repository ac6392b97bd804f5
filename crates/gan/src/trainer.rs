//! The training steps of the four GANs and everything a run needs around them: fixed latents
//! for sample grids, sampling, and checkpoints that resume bit for bit.
//!
//! One call to [`GanTrainer::step`] consumes one batch of real images:
//! - GAN, DCGAN, conditional GAN (Goodfellow et al., with the non-saturating generator loss, as
//!   in PyTorch's DCGAN example): G makes a batch of fakes once; D takes a step on
//!   BCE(D(real), 1) + BCE(D(fake.detach()), 0); then G takes a step on BCE(D(fake), 1)
//!   through the updated D. Batch norm sees real and fake batches separately.
//! - WGAN-GP (Gulrajani et al.): the critic takes a step on
//!   mean C(fake) - mean C(real) + λ·mean((‖∇C(x̂)‖₂ - 1)²) with x̂ = ε·real + (1 - ε)·fake,
//!   ε ~ U(0, 1) per image; every `critic_steps`-th call G also takes a step on -mean C(G(z)).
//!   The penalty's gradient runs through `backward_with_graph` (second derivatives).

use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::loss::{binary_cross_entropy_with_logits, Reduction};
use kiln_nn::metrics::DeviceScalars;
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::parallel::{self, DataParallel, Rows};
use kiln_nn::NnError;
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{no_grad, DType, Device, Generator, Gradients, Tensor, Var};
use serde::Serialize;

use crate::models::{DiscriminatorModel, GeneratorModel, NUM_CLASSES};
use crate::{Architecture, GanConfig, Result};

/// What one step measured. For WGAN-GP, `d_real` and `d_fake` are mean critic scores (their
/// difference estimates the Wasserstein distance); for the others, mean probabilities D gives
/// real and fake images (before D's update).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMetrics {
    pub loss_d: f64,
    /// `None` on WGAN-GP's critic-only steps.
    pub loss_g: Option<f64>,
    pub d_real: f64,
    pub d_fake: f64,
    /// WGAN-GP's penalty term (before λ).
    pub gradient_penalty: Option<f64>,
}

impl StepMetrics {
    /// The first loss that is NaN or infinite, by name.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        let losses = [
            ("loss_d", Some(self.loss_d)),
            ("loss_g", self.loss_g),
            ("gradient_penalty", self.gradient_penalty),
        ];
        losses
            .into_iter()
            .find_map(|(name, value)| value.filter(|v| !v.is_finite()).map(|v| (name, v)))
    }
}

/// A step's measurements still on the device, as [`StepMetrics`] will hold them: a training
/// loop reads them ([`PendingMetrics::read`], one readback for all) only when it logs, so the
/// steps in between never wait for the GPU.
#[derive(Debug, Clone)]
pub struct PendingMetrics {
    /// `[loss_d, loss_g?, d_real, d_fake, gradient_penalty?]`.
    values: DeviceScalars,
    has_loss_g: bool,
    has_gradient_penalty: bool,
}

impl PendingMetrics {
    fn new(
        loss_d: &Tensor,
        loss_g: Option<&Tensor>,
        d_real: &Tensor,
        d_fake: &Tensor,
        gradient_penalty: Option<&Tensor>,
    ) -> Result<PendingMetrics> {
        let scalars: Vec<&Tensor> = [Some(loss_d), loss_g, Some(d_real), Some(d_fake)]
            .into_iter()
            .chain([gradient_penalty])
            .flatten()
            .collect();
        Ok(PendingMetrics {
            values: DeviceScalars::new(&scalars)?,
            has_loss_g: loss_g.is_some(),
            has_gradient_penalty: gradient_penalty.is_some(),
        })
    }

    /// The values, read back from the device in one transfer; in a data-parallel run, the
    /// whole batch's (every rank must read the same steps' metrics).
    pub fn read(&self) -> Result<StepMetrics> {
        let mut values = self.values.read()?.into_iter();
        let mut next = || values.next().unwrap_or(f64::NAN);
        Ok(StepMetrics {
            loss_d: next(),
            loss_g: self.has_loss_g.then(&mut next),
            d_real: next(),
            d_fake: next(),
            gradient_penalty: self.has_gradient_penalty.then(&mut next),
        })
    }
}

/// The checkpoint name of the noise generator.
const NOISE: &str = "noise";

/// The two networks, their optimizers and the noise stream of one GAN run.
pub struct GanTrainer {
    config: GanConfig,
    device: Device,
    generator: GeneratorModel,
    discriminator: DiscriminatorModel,
    generator_optimizer: Adam,
    discriminator_optimizer: Adam,
    /// Latents, fake labels and WGAN-GP's ε.
    noise: Generator,
    /// Steps (batches) taken.
    step: u64,
    /// The other ranks of a data-parallel run, if any.
    parallel: Option<DataParallel>,
}

impl GanTrainer {
    /// A fresh run of `config` on `device`: weights drawn from the config's seed.
    pub fn new(config: GanConfig, device: Device) -> Result<GanTrainer> {
        config
            .validate()
            .map_err(|message| NnError::invalid("GAN config", message))?;
        let generator = GeneratorModel::new(&config, device, stream_seed(config.seed, 1))?;
        let discriminator = DiscriminatorModel::new(&config, device, stream_seed(config.seed, 2))?;
        let adam = AdamConfig {
            lr: config.lr,
            betas: config.betas,
            ..Default::default()
        };
        Ok(GanTrainer {
            generator_optimizer: Adam::new(generator.store().parameters(), adam)?,
            discriminator_optimizer: Adam::new(discriminator.store().parameters(), adam)?,
            noise: Generator::new(stream_seed(config.seed, 3)),
            generator,
            discriminator,
            config,
            device,
            step: 0,
            parallel: None,
        })
    }

    /// Trains data-parallel with `parallel`'s ranks from now on: every rank must hold the
    /// same run and be given its shard of each batch ([`GanTrainer::step_rows`]).
    pub fn set_parallel(&mut self, parallel: DataParallel) {
        self.parallel = Some(parallel);
    }

    /// The gradients of `loss` for `params`: over every rank's shard in a data-parallel run.
    fn gradients(&self, loss: &Tensor, params: &[(String, Var)], rows: Rows) -> Result<Gradients> {
        parallel::gradients(self.parallel.as_ref(), loss, params, rows)
    }

    pub fn config(&self) -> &GanConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn generator(&self) -> &GeneratorModel {
        &self.generator
    }

    pub fn discriminator(&self) -> &DiscriminatorModel {
        &self.discriminator
    }

    /// Steps (batches) taken so far, including those before a resume.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    fn latents(&mut self, rows: Rows) -> Result<Tensor> {
        let shape = [rows.global, self.config.latent_dim];
        rows.take(Tensor::randn(
            shape,
            0.0,
            1.0,
            DType::F32,
            self.device,
            &mut self.noise,
        )?)
    }

    /// Uniform class labels for the conditional GAN's fakes, `[B]` u32; `None` otherwise.
    fn fake_labels(&mut self, rows: Rows) -> Result<Option<Tensor>> {
        if !self.config.architecture.is_conditional() {
            return Ok(None);
        }
        // Drawn on the step's device: u ~ U[0, 1) becomes min(⌊10·u⌋, 9).
        let uniform = Tensor::rand([rows.global], DType::F32, self.device, &mut self.noise)?;
        let uniform = rows.take(uniform)?; // [B]
        let labels = uniform
            .affine(NUM_CLASSES as f64, 0.0)?
            .clamp(0.0, (NUM_CLASSES - 1) as f64)?
            .to_dtype(DType::U32)?; // [B] u32
        Ok(Some(labels))
    }

    /// One training step on a batch of real `images [B, 1, 28, 28]` in [-1, 1] with their
    /// `labels [B]` (u32; used by the conditional GAN).
    pub fn step(&mut self, images: &Tensor, labels: &Tensor) -> Result<StepMetrics> {
        self.step_deferred(images, labels)?.read()
    }

    /// [`GanTrainer::step`] without reading its metrics back: on a GPU the step is queued and
    /// this returns before it has run.
    pub fn step_deferred(&mut self, images: &Tensor, labels: &Tensor) -> Result<PendingMetrics> {
        let batch = images.dims().first().copied().unwrap_or(0);
        self.step_rows(images, labels, batch, 0)
    }

    /// [`GanTrainer::step_deferred`] on rows `offset..offset + B` of a batch of `global`
    /// images (this rank's shard in a data-parallel run): the noise of those rows, and the
    /// whole batch's gradients and metrics.
    pub fn step_rows(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        global: usize,
        offset: usize,
    ) -> Result<PendingMetrics> {
        let len = images.dims().first().copied().unwrap_or(0);
        let rows = Rows::new(global, offset, len)?;
        let _batch_norm = self.parallel.as_ref().map(DataParallel::batch_norm_scope);
        let mut metrics = match self.config.architecture {
            Architecture::WganGp => self.wasserstein_step(images, rows)?,
            _ => self.minimax_step(images, labels, rows)?,
        };
        let stores = [self.generator.store(), self.discriminator.store()];
        parallel::settle_buffers(self.parallel.as_ref(), &stores)?;
        metrics.values = metrics.values.over_ranks(self.parallel.as_ref(), rows);
        self.step += 1;
        Ok(metrics)
    }

    fn minimax_step(
        &mut self,
        real: &Tensor,
        labels: &Tensor,
        rows: Rows,
    ) -> Result<PendingMetrics> {
        let conditional = self.config.architecture.is_conditional();
        let real_labels = conditional.then_some(labels);
        let z = self.latents(rows)?; // [B, z]
        let fake_labels = self.fake_labels(rows)?; // [B] or None
        let fake = self.generator.forward_t(&z, fake_labels.as_ref(), true)?; // [B, 1, 28, 28]

        // D: real → 1, fake → 0.
        let real_logits = self.discriminator.forward_t(real, real_labels, true)?; // [B, 1]
        let fake_logits =
            self.discriminator
                .forward_t(&fake.detach(), fake_labels.as_ref(), true)?; // [B, 1]
        let ones = real_logits.ones_like()?;
        let zeros = real_logits.zeros_like()?;
        let loss_d = binary_cross_entropy_with_logits(&real_logits, &ones, Reduction::Mean)?.add(
            &binary_cross_entropy_with_logits(&fake_logits, &zeros, Reduction::Mean)?,
        )?;
        let d_params = self.discriminator.store().parameters();
        let grads = self.gradients(&loss_d, &d_params, rows)?;
        self.discriminator_optimizer.step(&grads)?;

        // G: make the updated D call the fakes real (the non-saturating loss).
        let logits = self
            .discriminator
            .forward_t(&fake, fake_labels.as_ref(), true)?; // [B, 1]
        let loss_g = binary_cross_entropy_with_logits(&logits, &ones, Reduction::Mean)?;
        let g_params = self.generator.store().parameters();
        let grads = self.gradients(&loss_g, &g_params, rows)?;
        self.generator_optimizer.step(&grads)?;

        PendingMetrics::new(
            &loss_d,
            Some(&loss_g),
            &real_logits.sigmoid()?.mean_all()?,
            &fake_logits.sigmoid()?.mean_all()?,
            None,
        )
    }

    fn wasserstein_step(&mut self, real: &Tensor, rows: Rows) -> Result<PendingMetrics> {
        let z = self.latents(rows)?; // [B, z]
        let fake = no_grad(|| self.generator.forward_t(&z, None, true))?; // [B, 1, 28, 28]

        let real_scores = self.discriminator.forward_t(real, None, true)?; // [B, 1]
        let fake_scores = self.discriminator.forward_t(&fake, None, true)?; // [B, 1]

        // x̂ on the line between each real image and its fake, as a new leaf.
        let epsilon = Tensor::rand(
            [rows.global, 1, 1, 1],
            DType::F32,
            self.device,
            &mut self.noise,
        )?;
        let epsilon = rows.take(epsilon)?; // [B, 1, 1, 1]
        let between = no_grad(|| {
            real.mul(&epsilon)?
                .add(&fake.mul(&epsilon.affine(-1.0, 1.0)?)?)
        })?
        .track()?; // [B, 1, 28, 28]
        let between_scores = self.discriminator.forward_t(&between, None, true)?; // [B, 1]
        let input_grad = between_scores
            .sum_all()?
            .backward_with_graph_for(&[&between])?
            .remove(&between)
            .ok_or_else(|| NnError::invalid("WGAN-GP", "the critic ignores its input"))?; // [B, 1, 28, 28]
        let norms = input_grad.square()?.sum(&[1, 2, 3], false)?.sqrt()?; // [B]
        let penalty = norms.add_scalar(-1.0)?.square()?.mean_all()?;
        let loss_d = fake_scores
            .mean_all()?
            .sub(&real_scores.mean_all()?)?
            .add(&penalty.mul_scalar(self.config.gradient_penalty)?)?;
        let d_params = self.discriminator.store().parameters();
        let grads = self.gradients(&loss_d, &d_params, rows)?;
        self.discriminator_optimizer.step(&grads)?;

        let mut loss_g = None;
        if (self.step + 1).is_multiple_of(self.config.critic_steps as u64) {
            let z = self.latents(rows)?;
            let fake = self.generator.forward_t(&z, None, true)?;
            let loss = self
                .discriminator
                .forward_t(&fake, None, true)?
                .mean_all()?
                .neg()?;
            let g_params = self.generator.store().parameters();
            let grads = self.gradients(&loss, &g_params, rows)?;
            self.generator_optimizer.step(&grads)?;
            loss_g = Some(loss);
        }
        PendingMetrics::new(
            &loss_d,
            loss_g.as_ref(),
            &real_scores.mean_all()?,
            &fake_scores.mean_all()?,
            Some(&penalty),
        )
    }

    /// The latents (and, for the conditional GAN, labels 0, 1, .., 9, 0, ..) that every epoch's
    /// sample grid is drawn from: the same for the whole run, resumed or not.
    pub fn fixed_latents(&self, n: usize) -> Result<(Tensor, Option<Tensor>)> {
        let mut stream = Generator::new(stream_seed(self.config.seed, 4));
        let z = Tensor::randn(
            [n, self.config.latent_dim],
            0.0,
            1.0,
            DType::F32,
            self.device,
            &mut stream,
        )?;
        let labels = self.config.architecture.is_conditional().then(|| {
            let labels = (0..n).map(|i| (i % NUM_CLASSES) as u32).collect();
            Tensor::from_vec(labels, [n], self.device)
        });
        Ok((z, labels.transpose()?))
    }

    /// Images `[N, 1, 28, 28]` in [-1, 1] from `latents [N, latent_dim]` (and labels for the
    /// conditional GAN), with batch norm in evaluation mode and no graph.
    pub fn sample(&self, latents: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        if self.config.architecture.is_conditional() && labels.is_none() {
            return Err(NnError::invalid(
                "sample",
                "the conditional GAN needs a digit for each sample",
            ));
        }
        if let Some(labels) = labels {
            let values = labels.to_vec::<u32>()?;
            if let Some(bad) = values.iter().find(|&&l| l as usize >= NUM_CLASSES) {
                return Err(NnError::invalid(
                    "sample",
                    format!("digit {bad} is not one of 0..={}", NUM_CLASSES - 1),
                ));
            }
        }
        no_grad(|| self.generator.forward_t(latents, labels, false))
    }

    /// Everything a resume needs: both networks (parameters and batch-norm statistics) under
    /// `generator.` and `discriminator.`, both optimizers' state, the noise stream, the step,
    /// and the configuration.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("generator", self.generator.store())?;
        checkpoint.insert_store("discriminator", self.discriminator.store())?;
        checkpoint.insert_optimizer("generator_optimizer", &self.generator_optimizer)?;
        checkpoint.insert_optimizer("discriminator_optimizer", &self.discriminator_optimizer)?;
        checkpoint.insert_generator(NOISE, &self.noise);
        checkpoint.set_step(self.step);
        checkpoint.set_model(self.config.architecture.name(), &self.config)?;
        Ok(checkpoint)
    }

    /// The architecture a checkpoint holds, or an error if it is not a kiln GAN checkpoint.
    pub fn architecture_of(checkpoint: &Checkpoint, context: &str) -> Result<Architecture> {
        let name = checkpoint.model_name(context, "GAN")?;
        Architecture::from_name(name).ok_or_else(|| {
            NnError::mismatch(
                context,
                format!("holds a `{name}` model, which is not a GAN"),
            )
        })
    }

    /// The run a checkpoint holds, on `device`, exactly as it was when saved.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<GanTrainer> {
        Self::architecture_of(checkpoint, context)?;
        let config: GanConfig = checkpoint.model_config(context)?;
        let mut trainer = GanTrainer::new(config, device)?;
        trainer.restore(checkpoint, context)?;
        Ok(trainer)
    }

    /// Loads a checkpoint of this run's architecture and shapes into it.
    pub fn restore(&mut self, checkpoint: &Checkpoint, context: &str) -> Result<()> {
        let architecture = Self::architecture_of(checkpoint, context)?;
        if architecture != self.config.architecture {
            return Err(NnError::mismatch(
                context,
                format!(
                    "holds a {architecture} model, not a {}",
                    self.config.architecture
                ),
            ));
        }
        checkpoint.load_store("generator", self.generator.store())?;
        checkpoint.load_store("discriminator", self.discriminator.store())?;
        checkpoint.load_optimizer("generator_optimizer", &mut self.generator_optimizer)?;
        checkpoint.load_optimizer("discriminator_optimizer", &mut self.discriminator_optimizer)?;
        self.noise = checkpoint.generator(NOISE)?;
        self.step = checkpoint.step()?;
        Ok(())
    }
}
