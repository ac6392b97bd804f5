//! PixelCNN's training step and its measurements, with what a run needs around them: exact
//! test likelihoods, pixel-by-pixel sampling, and checkpoints that resume bit for bit.
//!
//! One call to [`PixelCnnTrainer::step`] consumes one batch of grey images in [0, 1]:
//! binarize it (Bernoulli pixels: x ~ Bernoulli(grey), drawn afresh every batch from the
//! trainer's own stream), compute the exact -log p(x) of each image, and take an Adam step on
//! their batch mean. Losses are in nats per image (summed over the 784 pixels), the unit of the
//! binarized-MNIST literature, and in bits per dimension.

use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::metrics::DeviceScalars;
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::parallel::{self, DataParallel, Rows};
use kiln_nn::{image_count, NnError};
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};
use serde::Serialize;

use crate::{PixelCnn, PixelCnnConfig, PixelLikelihood, Result, GREY_LEVELS, IMAGE_SHAPE, PIXELS};

/// The `kiln.model` of a PixelCNN checkpoint.
pub const MODEL_NAME: &str = "pixelcnn";

/// What one step measured: means over the batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepMetrics {
    /// -log p(x), nats per image: the loss minimised.
    pub nll: f64,
    /// The same in bits per pixel, nll / (784·ln 2).
    pub bits_per_dim: f64,
}

impl StepMetrics {
    /// The first value that is NaN or infinite, by name.
    pub fn non_finite(&self) -> Option<(&'static str, f64)> {
        [("nll", self.nll), ("bits_per_dim", self.bits_per_dim)]
            .into_iter()
            .find(|(_, value)| !value.is_finite())
    }
}

/// A step's loss still on the device: a training loop reads it ([`PendingMetrics::read`])
/// only when it logs.
#[derive(Debug, Clone)]
pub struct PendingMetrics {
    /// `[nll]`.
    values: DeviceScalars,
}

impl PendingMetrics {
    /// The loss, read back from the device.
    pub fn read(&self) -> Result<StepMetrics> {
        let nll = self.values.read()?[0];
        Ok(StepMetrics {
            nll,
            bits_per_dim: bits_per_dim(nll),
        })
    }
}

/// The exact negative log-likelihood of a set of images, means over the set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NllReport {
    pub images: usize,
    /// Nats per image.
    pub nll: f64,
    /// Bits per pixel, nll / (784·ln 2).
    pub bits_per_dim: f64,
}

/// The checkpoint name of the training batches' binarization stream.
const BINARIZATION: &str = "binarization";
/// Images per forward pass when measuring a set.
const EVAL_BATCH: usize = 250;
/// Images sampled together, one forward pass per pixel.
const SAMPLE_BATCH: usize = 256;

/// nats / (784·ln 2): bits per pixel.
fn bits_per_dim(nll: f64) -> f64 {
    nll / (PIXELS as f64 * std::f64::consts::LN_2)
}

/// The model, its optimizer and the binarization stream of one PixelCNN run.
pub struct PixelCnnTrainer {
    config: PixelCnnConfig,
    device: Device,
    model: PixelCnn,
    optimizer: Adam,
    /// Draws the binary training images from the grey ones.
    binarization: Generator,
    /// Steps (batches) taken.
    step: u64,
    /// The other ranks of a data-parallel run, if any.
    parallel: Option<DataParallel>,
}

impl PixelCnnTrainer {
    /// A fresh run of `config` on `device`: weights drawn from the config's seed.
    pub fn new(config: PixelCnnConfig, device: Device) -> Result<PixelCnnTrainer> {
        config
            .validate()
            .map_err(|message| NnError::invalid("PixelCNN config", message))?;
        let model = PixelCnn::new(&config, device, DType::F32, stream_seed(config.seed, 1))?;
        let adam = AdamConfig {
            lr: config.lr,
            ..Default::default()
        };
        Ok(PixelCnnTrainer {
            optimizer: Adam::new(model.store().parameters(), adam)?,
            binarization: Generator::new(stream_seed(config.seed, 3)),
            model,
            config,
            device,
            step: 0,
            parallel: None,
        })
    }

    pub fn config(&self) -> &PixelCnnConfig {
        &self.config
    }

    pub fn model(&self) -> &PixelCnn {
        &self.model
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Steps (batches) taken so far, including those before a resume.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// What the model is trained and measured on: for Bernoulli pixels, binary images
    /// x ~ Bernoulli(grey) drawn from `generator` (1 where a uniform is below the grey level);
    /// for categorical ones, the grey images themselves. `[B, 1, 28, 28]`.
    fn targets(&self, images: &Tensor, generator: &mut Generator) -> Result<Tensor> {
        let n = images.dims().first().copied().unwrap_or(0);
        self.shard_targets(images, Rows::whole(n), generator)
    }

    /// One training step on a batch of grey `images [B, 1, 28, 28]` in [0, 1], its loss read
    /// back at once.
    pub fn step(&mut self, images: &Tensor) -> Result<StepMetrics> {
        self.step_deferred(images)?.read()
    }

    /// One training step whose loss stays on the device until read: nothing in it makes the
    /// host wait for a GPU.
    pub fn step_deferred(&mut self, images: &Tensor) -> Result<PendingMetrics> {
        let batch = image_count("step", images, IMAGE_SHAPE)?;
        self.step_rows(images, batch, 0)
    }

    /// [`PixelCnnTrainer::step_deferred`] on rows `offset..offset + B` of a batch of `global`
    /// images (this rank's shard in a data-parallel run): the binarization of those rows, and
    /// the whole batch's gradients and loss.
    pub fn step_rows(
        &mut self,
        images: &Tensor,
        global: usize,
        offset: usize,
    ) -> Result<PendingMetrics> {
        let rows = Rows::new(global, offset, image_count("step", images, IMAGE_SHAPE)?)?;
        let _batch_norm = self.parallel.as_ref().map(DataParallel::batch_norm_scope);
        let mut binarization = self.binarization.clone();
        let targets = self.shard_targets(images, rows, &mut binarization)?;
        let loss = self.model.nll_per_image(&targets)?.mean_all()?;
        let params = self.model.store().parameters();
        let grads = parallel::gradients(self.parallel.as_ref(), &loss, &params, rows)?;
        self.optimizer.step(&grads)?;
        parallel::settle_buffers(self.parallel.as_ref(), &[self.model.store()])?;
        self.binarization = binarization;
        self.step += 1;
        Ok(PendingMetrics {
            values: DeviceScalars::new(&[&loss])?.over_ranks(self.parallel.as_ref(), rows),
        })
    }

    /// [`PixelCnnTrainer::targets`] of this shard's `images`, with the uniforms drawn for
    /// the whole batch.
    fn shard_targets(
        &self,
        images: &Tensor,
        rows: Rows,
        generator: &mut Generator,
    ) -> Result<Tensor> {
        let images = images.to_dtype(self.model.store().dtype())?;
        match self.config.likelihood {
            PixelLikelihood::Categorical => Ok(images),
            PixelLikelihood::Bernoulli => {
                let mut whole = images.dims().to_vec();
                whole[0] = rows.global;
                let uniforms = Tensor::rand(whole, images.dtype(), self.device, generator)?;
                let uniforms = rows.take(uniforms)?;
                Ok(uniforms.lt(&images)?.to_dtype(images.dtype())?)
            }
        }
    }

    /// Trains data-parallel with `parallel`'s ranks from now on: every rank must hold the
    /// same run and be given its shard of each batch ([`PixelCnnTrainer::step_rows`]).
    pub fn set_parallel(&mut self, parallel: DataParallel) {
        self.parallel = Some(parallel);
    }

    /// The exact -log p(x) of grey `images [N, 1, 28, 28]` in [0, 1]. Bernoulli pixels: of the
    /// images binarized once from the Philox stream `seed`, so the figure is repeatable.
    pub fn evaluate(&self, images: &Tensor, seed: u64) -> Result<NllReport> {
        let n = image_count("evaluate", images, IMAGE_SHAPE)?;
        let mut generator = Generator::new(seed);
        let mut total = 0.0;
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(EVAL_BATCH) {
                let size = EVAL_BATCH.min(n - start);
                let targets = self.targets(&images.narrow(0, start, size)?, &mut generator)?;
                total += self.model.nll_per_image(&targets)?.sum_all()?.to_f64()?;
            }
            Ok(())
        })?;
        let nll = total / n as f64;
        Ok(NllReport {
            images: n,
            nll,
            bits_per_dim: bits_per_dim(nll),
        })
    }

    /// `n` images `[n, 1, 28, 28]` in [0, 1] drawn from the model, pixel by pixel in raster
    /// order, each from its conditional given the pixels drawn before it: Bernoulli pixels are
    /// 1 where a uniform is below sigmoid(logit); categorical ones take the level at which the
    /// softmax's cumulative sum passes a uniform (inverse CDF), as level/255. The uniforms come
    /// from the Philox stream `seed`. The images are drawn `SAMPLE_BATCH` at a time, one forward
    /// pass per pixel; `on_pixel(done, total)` is called after each pixel of each batch, with
    /// total = 784 × batches.
    pub fn sample(
        &self,
        n: usize,
        seed: u64,
        on_pixel: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let [_, height, width] = IMAGE_SHAPE;
        let dtype = self.model.store().dtype();
        let mut generator = Generator::new(seed);
        let total = PIXELS * n.div_ceil(SAMPLE_BATCH);
        let mut done = 0;
        let mut images = Vec::with_capacity(n * PIXELS);
        no_grad(|| -> Result<()> {
            for start in (0..n).step_by(SAMPLE_BATCH) {
                let size = SAMPLE_BATCH.min(n - start);
                let mut canvas = vec![0.0f32; size * PIXELS]; // [size, 1, 28, 28]
                for row in 0..height {
                    // Row `row`'s logits see only rows top..=row: run the network on that
                    // strip alone (the rows below are masked away, those above out of reach).
                    let top = row.saturating_sub(self.model.rows_seen());
                    let strip_rows = row + 1 - top;
                    for column in 0..width {
                        let strip =
                            Tensor::from_slice(&canvas, [size, 1, height, width], self.device)?
                                .narrow(2, top, strip_rows)?
                                .to_dtype(dtype)?; // [size, 1, rows, 28]
                        let logits = self
                            .model
                            .logits(&strip)? // [size, C, rows, 28]
                            .narrow(2, strip_rows - 1, 1)?
                            .narrow(3, column, 1)? // [size, C, 1, 1]
                            .to_dtype(DType::F64)?
                            .to_vec::<f64>()?; // size × C
                        let uniforms = generator.uniform_f64(size);
                        let classes = logits.len() / size;
                        for (image, (pixel_logits, u)) in
                            logits.chunks(classes).zip(uniforms).enumerate()
                        {
                            canvas[image * PIXELS + row * width + column] =
                                draw(self.config.likelihood, pixel_logits, u);
                        }
                        done += 1;
                        on_pixel(done, total);
                    }
                }
                images.extend_from_slice(&canvas);
            }
            Ok(())
        })?;
        Ok(Tensor::from_vec(
            images,
            [n, IMAGE_SHAPE[0], height, width],
            self.device,
        )?)
    }

    /// Everything a resume needs: the model under `model.`, the optimizer's state, the
    /// binarization stream, the step, and the configuration.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("model", self.model.store())?;
        checkpoint.insert_optimizer("optimizer", &self.optimizer)?;
        checkpoint.insert_generator(BINARIZATION, &self.binarization);
        checkpoint.set_step(self.step);
        checkpoint.set_model(MODEL_NAME, &self.config)?;
        Ok(checkpoint)
    }

    /// The run a checkpoint holds, on `device`, exactly as it was when saved.
    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<PixelCnnTrainer> {
        let name = checkpoint.model_name(context, "PixelCNN")?;
        if name != MODEL_NAME {
            return Err(NnError::mismatch(
                context,
                format!("holds a `{name}` model, not a PixelCNN"),
            ));
        }
        let config: PixelCnnConfig = checkpoint.model_config(context)?;
        let mut trainer = PixelCnnTrainer::new(config, device)?;
        checkpoint.load_store("model", trainer.model.store())?;
        checkpoint.load_optimizer("optimizer", &mut trainer.optimizer)?;
        trainer.binarization = checkpoint.generator(BINARIZATION)?;
        trainer.step = checkpoint.step()?;
        Ok(trainer)
    }
}

/// One pixel's value drawn from its conditional with the uniform `u` in [0, 1): a Bernoulli
/// pixel is 1 where u < sigmoid(logit); a categorical one is level/255 of its inverse CDF.
fn draw(likelihood: PixelLikelihood, logits: &[f64], u: f64) -> f32 {
    match likelihood {
        PixelLikelihood::Bernoulli => {
            let p = 1.0 / (1.0 + (-logits[0]).exp());
            (u < p) as u8 as f32
        }
        PixelLikelihood::Categorical => inverse_cdf(logits, u) as f32 / (GREY_LEVELS - 1) as f32,
    }
}

/// The class at which the softmax of `logits` accumulates past `u` in [0, 1): the smallest k
/// with Σ_{c ≤ k} p_c > u (the last class if rounding leaves the total short of u).
fn inverse_cdf(logits: &[f64], u: f64) -> usize {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
    let threshold = u * weights.iter().sum::<f64>();
    let mut cumulative = 0.0;
    for (class, w) in weights.iter().enumerate() {
        cumulative += w;
        if cumulative > threshold {
            return class;
        }
    }
    logits.len() - 1
}
