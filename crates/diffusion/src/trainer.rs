//! The DDPM's training step, its test loss, its samplers, and checkpoints that resume bit for
//! bit.
//!
//! One call to [`DdpmTrainer::step`] consumes one batch of images in [-1, 1]: draw a step t
//! uniformly from 0 .. T - 1 and ε ~ N(0, I) for each image, form x_t from q(x_t | x_0), and
//! take an Adam step on the mean squared error between ε and the U-Net's ε̂(x_t, t) (Ho et
//! al.'s "simple" loss), then move the weights' exponential moving average towards the new
//! weights. Samples and the test loss use the average.

use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::loss::{mse_loss, Reduction};
use kiln_nn::metrics::DeviceScalars;
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::parallel::{self, DataParallel, Rows};
use kiln_nn::{image_count, NnError};
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor, Var};
use serde::Serialize;

use crate::sampling::{ancestral, ddim};
use crate::{DdpmConfig, NoiseSchedule, Result, Sampler, UNet, IMAGE_SHAPE, MODEL_NAME};

/// What one step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMetrics {
    /// The mean squared error of the predicted noise, per pixel.
    pub loss: f64,
}

impl StepMetrics {
    /// The loss, by name, if it is NaN or infinite.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        (!self.loss.is_finite()).then_some(("loss", self.loss))
    }
}

/// A step's loss still on the device: a training loop reads it ([`PendingMetrics::read`])
/// only when it logs.
#[derive(Debug, Clone)]
pub struct PendingMetrics {
    /// `[loss]`.
    values: DeviceScalars,
}

impl PendingMetrics {
    /// The loss, read back from the device.
    pub fn read(&self) -> Result<StepMetrics> {
        let values = self.values.read()?;
        Ok(StepMetrics { loss: values[0] })
    }
}

/// The training loss of a set of images under the averaged weights: the mean squared error
/// of ε̂ per pixel, one random step and noise per image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LossReport {
    pub images: usize,
    pub loss: f64,
}

/// The checkpoint name of the training noise generator (steps and ε).
const NOISE: &str = "noise";
/// Images per forward pass when measuring a set or sampling.
const EVAL_BATCH: usize = 500;

/// The U-Net, its moving average, its optimizer and the noise of one DDPM run.
pub struct DdpmTrainer {
    config: DdpmConfig,
    device: Device,
    schedule: NoiseSchedule,
    model: UNet,
    /// The exponential moving average of `model`'s parameters, in the same layout.
    ema: UNet,
    optimizer: Adam,
    noise: Generator,
    step: u64,
    /// The other ranks of a data-parallel run, if any.
    parallel: Option<DataParallel>,
}

impl DdpmTrainer {
    /// A fresh run of `config` on `device`: weights drawn from the config's seed, the average
    /// equal to them.
    pub fn new(config: DdpmConfig, device: Device) -> Result<DdpmTrainer> {
        config
            .validate()
            .map_err(|message| NnError::invalid("DDPM config", message))?;
        let seed = stream_seed(config.seed, 1);
        let model = UNet::new(&config, device, DType::F32, seed)?;
        let ema = UNet::new(&config, device, DType::F32, seed)?;
        let adam = AdamConfig {
            lr: config.lr,
            ..Default::default()
        };
        Ok(DdpmTrainer {
            schedule: NoiseSchedule::linear(config.timesteps, config.beta_start, config.beta_end),
            optimizer: Adam::new(model.store().parameters(), adam)?,
            noise: Generator::new(stream_seed(config.seed, 3)),
            model,
            ema,
            config,
            device,
            step: 0,
            parallel: None,
        })
    }

    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The network being trained.
    pub fn model(&self) -> &UNet {
        &self.model
    }

    /// The moving average of the network's weights, which samples come from.
    pub fn ema(&self) -> &UNet {
        &self.ema
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Steps (batches) taken so far, including those before a resume.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Random steps and noise for `n` images from `generator`: t uniform on 0 .. T - 1, ε
    /// standard normal `[n, 1, 28, 28]`.
    fn draw(&self, n: usize, generator: &mut Generator) -> Result<(Vec<usize>, Tensor)> {
        let last = self.config.timesteps - 1;
        let steps = generator
            .uniform_f64(n)
            .into_iter()
            .map(|u| ((u * self.config.timesteps as f64) as usize).min(last))
            .collect();
        let noise = self.standard_normal(n, generator)?;
        Ok((steps, noise))
    }

    fn standard_normal(&self, n: usize, generator: &mut Generator) -> Result<Tensor> {
        let [c, h, w] = IMAGE_SHAPE;
        Ok(Tensor::randn(
            [n, c, h, w],
            0.0,
            1.0,
            DType::F32,
            self.device,
            generator,
        )?)
    }

    /// The mean squared error of `network`'s ε̂ on `images` at steps `t` with noise `noise`.
    fn loss(
        network: &UNet,
        schedule: &NoiseSchedule,
        images: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Tensor> {
        let noisy = schedule.q_sample(images, noise, t)?;
        mse_loss(&network.forward(&noisy, t)?, noise, Reduction::Mean)
    }

    /// One training step on a batch of `images [B, 1, 28, 28]` in [-1, 1], its loss read
    /// back at once.
    pub fn step(&mut self, images: &Tensor) -> Result<StepMetrics> {
        self.step_deferred(images)?.read()
    }

    /// One training step whose loss stays on the device until read: nothing in it makes the
    /// host wait for a GPU (the steps t are drawn on the host, ahead of the device's work).
    pub fn step_deferred(&mut self, images: &Tensor) -> Result<PendingMetrics> {
        let batch = image_count("step", images, IMAGE_SHAPE)?;
        self.step_rows(images, batch, 0)
    }

    /// [`DdpmTrainer::step_deferred`] on rows `offset..offset + B` of a batch of `global`
    /// images (this rank's shard in a data-parallel run): the steps and noise of those rows,
    /// and the whole batch's gradients and loss.
    pub fn step_rows(
        &mut self,
        images: &Tensor,
        global: usize,
        offset: usize,
    ) -> Result<PendingMetrics> {
        let rows = Rows::new(global, offset, image_count("step", images, IMAGE_SHAPE)?)?;
        let _batch_norm = self.parallel.as_ref().map(DataParallel::batch_norm_scope);
        let mut generator = self.noise.clone();
        let (t, noise) = self.draw(global, &mut generator)?;
        let t = &t[rows.start..rows.start + rows.len];
        let noise = rows.take(noise)?; // [B, 1, 28, 28]
        let loss = Self::loss(&self.model, &self.schedule, images, t, &noise)?;
        let params = self.model.store().parameters();
        let grads = parallel::gradients(self.parallel.as_ref(), &loss, &params, rows)?;
        self.optimizer.step(&grads)?;
        parallel::settle_buffers(self.parallel.as_ref(), &[self.model.store()])?;
        self.update_average()?;
        self.noise = generator;
        self.step += 1;
        Ok(PendingMetrics {
            values: DeviceScalars::new(&[&loss])?.over_ranks(self.parallel.as_ref(), rows),
        })
    }

    /// Trains data-parallel with `parallel`'s ranks from now on: every rank must hold the
    /// same run and be given its shard of each batch ([`DdpmTrainer::step_rows`]).
    pub fn set_parallel(&mut self, parallel: DataParallel) {
        self.parallel = Some(parallel);
    }

    /// ema ← d·ema + (1 - d)·θ, with d = min(decay, (1 + s) / (10 + s)) at step s (so the
    /// average forgets its random start quickly, then settles to the configured decay).
    fn update_average(&self) -> Result<()> {
        let s = self.step as f64;
        let decay = self.config.ema_decay.min((1.0 + s) / (10.0 + s));
        no_grad(|| {
            for ((_, average), (_, weight)) in self
                .ema
                .store()
                .parameters()
                .into_iter()
                .zip(self.model.store().parameters())
            {
                let moved = lerp(&average, &weight, decay)?;
                average.set(&moved)?;
            }
            Ok(())
        })
    }

    /// The training loss of `images [N, 1, 28, 28]` in [-1, 1] under the averaged weights,
    /// with steps and noise from the Philox stream `seed` so the figure is repeatable.
    pub fn evaluate(&self, images: &Tensor, seed: u64) -> Result<LossReport> {
        let n = image_count("evaluate", images, IMAGE_SHAPE)?;
        let mut generator = Generator::new(seed);
        let mut total = 0.0;
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(EVAL_BATCH) {
                let size = EVAL_BATCH.min(n - start);
                let (t, noise) = self.draw(size, &mut generator)?;
                let batch = images.narrow(0, start, size)?;
                let loss = Self::loss(&self.ema, &self.schedule, &batch, &t, &noise)?;
                total += loss.to_f64()? * size as f64;
            }
            Ok(())
        })?;
        Ok(LossReport {
            images: n,
            loss: total / n as f64,
        })
    }

    /// The starting noise x_T `[n, 1, 28, 28]` every epoch's sample grid is drawn from: the
    /// same for the whole run, resumed or not.
    pub fn fixed_latents(&self, n: usize) -> Result<Tensor> {
        self.standard_normal(n, &mut Generator::new(stream_seed(self.config.seed, 4)))
    }

    /// Images `[N, 1, 28, 28]` in [-1, 1] drawn by `sampler` from the starting noise
    /// `x_t [N, 1, 28, 28]` (x_T), with the averaged weights. The noise added along the way
    /// (the DDPM sampler, DDIM with η > 0) comes from `generator`. `on_step(done, total)` is
    /// called after each network evaluation of each batch of images.
    pub fn sample(
        &self,
        x_t: &Tensor,
        sampler: Sampler,
        generator: &mut Generator,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let n = image_count("sample", x_t, IMAGE_SHAPE)?;
        let timesteps = self.config.timesteps;
        sampler
            .validate(timesteps)
            .map_err(|message| NnError::invalid("sample", message))?;
        let batches = n.div_ceil(EVAL_BATCH);
        let total = sampler.evaluations(timesteps) * batches;
        let mut done = 0;
        let mut images = Vec::with_capacity(batches);
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(EVAL_BATCH) {
                let x = x_t.narrow(0, start, EVAL_BATCH.min(n - start))?;
                let size = x.dims()[0];
                let mut denoise = |x: &Tensor, t: usize| {
                    let epsilon = self.ema.forward(x, &vec![t; size]);
                    done += 1;
                    on_step(done, total);
                    epsilon
                };
                let x = match sampler {
                    Sampler::Ddpm => ancestral(&self.schedule, x, &mut denoise, generator)?,
                    Sampler::Ddim { steps, eta } => {
                        ddim(&self.schedule, x, (steps, eta), &mut denoise, generator)?
                    }
                };
                images.push(x);
            }
            Ok(())
        })?;
        Ok(Tensor::cat(&images.iter().collect::<Vec<_>>(), 0)?)
    }

    /// `n` samples `[n, 1, 28, 28]` in [-1, 1]: x_T, then any noise along the way, from the
    /// Philox stream `seed`.
    pub fn generate(
        &self,
        n: usize,
        sampler: Sampler,
        seed: u64,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let mut generator = Generator::new(seed);
        let x_t = self.standard_normal(n, &mut generator)?;
        self.sample(&x_t, sampler, &mut generator, on_step)
    }

    /// Everything a resume needs: the network under `model.`, its average under `ema.`, the
    /// optimizer's state, the noise stream, the step, and the configuration.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("model", self.model.store())?;
        checkpoint.insert_store("ema", self.ema.store())?;
        checkpoint.insert_optimizer("optimizer", &self.optimizer)?;
        checkpoint.insert_generator(NOISE, &self.noise);
        checkpoint.set_step(self.step);
        checkpoint.set_model(MODEL_NAME, &self.config)?;
        Ok(checkpoint)
    }

    /// The run a checkpoint holds, on `device`, exactly as it was when saved.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<DdpmTrainer> {
        let name = checkpoint.model_name(context, "DDPM")?;
        if name != MODEL_NAME {
            return Err(NnError::mismatch(
                context,
                format!("holds a `{name}` model, not a DDPM"),
            ));
        }
        let config: DdpmConfig = checkpoint.model_config(context)?;
        let mut trainer = DdpmTrainer::new(config, device)?;
        checkpoint.load_store("model", trainer.model.store())?;
        checkpoint.load_store("ema", trainer.ema.store())?;
        checkpoint.load_optimizer("optimizer", &mut trainer.optimizer)?;
        trainer.noise = checkpoint.generator(NOISE)?;
        trainer.step = checkpoint.step()?;
        Ok(trainer)
    }
}

/// d·a + (1 - d)·b.
fn lerp(a: &Var, b: &Var, d: f64) -> Result<Tensor> {
    Ok(a.mul_scalar(d)?.add(&b.mul_scalar(1.0 - d)?)?)
}
