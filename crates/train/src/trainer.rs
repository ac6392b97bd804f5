//! The face every model family shows the training loop, `kiln sample` and `kiln eval`: a
//! [`Trainer`] is one run of a model (its networks, optimizers, noise streams and step count),
//! and a [`Family`] makes them, fresh from a configuration or restored from a checkpoint. What
//! is particular to a family (its losses, its samplers, its measures on the test split) stays
//! in its crate, behind these traits.

use std::any::Any;

use kiln_data::{Batch, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::parallel::DataParallel;
use kiln_tensor::{DType, Device, Generator, Tensor};
use serde_json::Value;

use crate::error::{Result, TrainError};

/// What one training step measured: the family's own record, as metrics.jsonl writes it.
pub trait StepMetrics: erased_serde::Serialize + std::fmt::Debug {
    /// The first loss that is NaN or infinite, by name.
    fn non_finite(&self) -> Option<(&'static str, f64)>;
    /// The losses for a progress message or a summary, e.g.
    /// "loss_d 0.612 · loss_g 1.920 · D(x) 0.71 · D(G(z)) 0.30" or "ε MSE 0.0412".
    fn summary(&self) -> String;
    /// The record itself, for callers that know the family (tests read its fields).
    fn as_any(&self) -> &dyn Any;
}
erased_serde::serialize_trait_object!(StepMetrics);

/// A step's metrics still on the device: a loop reads them (one transfer) only when it logs or
/// checks them, so the steps in between never make the host wait for a GPU.
pub trait PendingMetrics {
    fn read(&self) -> Result<Box<dyn StepMetrics>>;
}

/// How the loop batches the training set for a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    pub batch_size: usize,
    /// Whether an epoch leaves out its last, smaller batch.
    pub drop_last: bool,
    /// The pixel range the model trains on (and is measured on).
    pub scale: Scale,
    /// The seed of the data order.
    pub seed: u64,
}

/// What a model measures on the test split at each epoch's end: the metrics.jsonl fields
/// (e.g. `test_neg_elbo`) and a line for the terminal.
pub struct TestMeasure {
    pub record: Box<dyn erased_serde::Serialize>,
    pub line: String,
}

/// A model's own scores in `kiln eval`, beside those of its samples (a VAE's test ELBO and
/// reconstructions, a PixelCNN's test likelihood): written into the report under `key`, shown
/// as table `rows`, and summed up in `line` for the training log.
pub struct OwnScores {
    pub key: &'static str,
    pub value: Box<dyn erased_serde::Serialize>,
    pub rows: Vec<(&'static str, String)>,
    pub line: String,
}

impl serde::Serialize for OwnScores {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.key, &self.value)?;
        map.end()
    }
}

/// The importance-weighted likelihood estimate `kiln eval --iw-samples` asks of a VAE: `k`
/// samples per image (0: none) over the first `images` test images (default: all).
#[derive(Debug, Clone, Copy, Default)]
pub struct Importance {
    pub samples: usize,
    pub images: Option<usize>,
}

/// The sampler asked for on the command line (`--sampler ddpm|ddim`, `--steps`, `--eta`), each
/// optional: the DDPM's; other models refuse it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SamplerChoice {
    /// `Some(true)`: ancestral; `Some(false)`: DDIM.
    pub ancestral: Option<bool>,
    pub steps: Option<usize>,
    pub eta: Option<f64>,
}

impl SamplerChoice {
    pub fn given(&self) -> bool {
        self.ancestral.is_some() || self.steps.is_some() || self.eta.is_some()
    }
}

/// One panel of the loss plot: the metrics.jsonl fields drawn and the y axis's label.
#[derive(Debug, Clone)]
pub struct PlotPanel {
    pub y_label: &'static str,
    pub fields: &'static [&'static str],
}

/// The loss plot of a run: its title and one or two panels.
#[derive(Debug, Clone)]
pub struct PlotSpec {
    pub title: String,
    pub panels: Vec<PlotPanel>,
}

/// One run of a model, as the training loop, `kiln sample` and `kiln eval` use it. Images go in
/// as `[N, 1, 28, 28]` in [`Batching::scale`] and come out in [-1, 1].
pub trait Trainer {
    /// The name `kiln train` takes and checkpoints record (`kiln.model`).
    fn name(&self) -> &'static str;
    /// The configuration, as config.json and the checkpoint hold it.
    fn config_json(&self) -> Result<Value>;
    fn batching(&self) -> Batching;
    fn device(&self) -> Device;
    fn steps_done(&self) -> u64;
    /// One training step on a batch in [`Batching::scale`]; its metrics stay on the device.
    fn step(&mut self, batch: &Batch) -> Result<Box<dyn PendingMetrics>>;
    /// Everything a resume needs, bit for bit.
    fn checkpoint(&self) -> Result<Checkpoint>;
    /// The `n` images of every epoch's sample grid: drawn from the same randomness for the
    /// whole run, resumed or not, so the grids show the model changing.
    fn grid_images(&self, n: usize) -> Result<Tensor>;
    fn plot(&self) -> PlotSpec;
    /// Samples scored at the end of a full-length run when not told.
    fn default_eval_samples(&self) -> usize {
        10_000
    }
    /// The size of the latent a sample is drawn from, for the models that have one.
    fn latent_dim(&self) -> Option<usize> {
        None
    }
    /// Whether samples are drawn for chosen digits.
    fn is_conditional(&self) -> bool {
        false
    }
    /// Images from `latents [N, latent_dim]` (and digits, for a conditional model).
    fn sample(&self, _latents: &Tensor, _labels: Option<&Tensor>) -> Result<Tensor> {
        Err(TrainError::refused(format!(
            "the {} draws samples without latents",
            self.name()
        )))
    }
    /// The sampler `choice` resolves to, in words for a report (`None`: the model has one way
    /// to sample). Refuses a choice the model has no use for.
    fn sampler(&self, choice: &SamplerChoice) -> Result<Option<String>> {
        if choice.given() {
            return Err(TrainError::refused(format!(
                "--sampler, --steps and --eta choose how the DDPM samples; this checkpoint holds a {}",
                self.name()
            )));
        }
        Ok(None)
    }
    /// `n` images drawn with randomness from the Philox stream `seed`: by default latents from
    /// N(0, I) (and the digits 0, 1, .., 9, 0, .. for a conditional model) through
    /// [`Trainer::sample`]. `on_step(done, total)` follows models that sample step by step.
    fn generate(
        &self,
        n: usize,
        seed: u64,
        choice: &SamplerChoice,
        _on_step: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        self.sampler(choice)?;
        let Some(latent_dim) = self.latent_dim() else {
            return Err(TrainError::refused(format!(
                "the {} has no latents and no sampler of its own",
                self.name()
            )));
        };
        /// Latents per call.
        const BATCH: usize = 500;
        let device = self.device();
        let mut generator = Generator::new(seed);
        let mut batches = Vec::new();
        for start in (0..n).step_by(BATCH) {
            let size = BATCH.min(n - start);
            let z = Tensor::randn(
                [size, latent_dim],
                0.0,
                1.0,
                DType::F32,
                device,
                &mut generator,
            )?;
            let labels = self
                .is_conditional()
                .then(|| {
                    let digits = (start..start + size).map(|i| (i % 10) as u32).collect();
                    Tensor::from_vec(digits, [size], device)
                })
                .transpose()?;
            batches.push(self.sample(&z, labels.as_ref())?);
        }
        Ok(Tensor::cat(&batches.iter().collect::<Vec<_>>(), 0)?)
    }
    /// Whether the model measures itself on the test split at each epoch's end.
    fn has_test_measure(&self) -> bool {
        false
    }
    /// The test split's measure at an epoch's end (`test` in [`Batching::scale`]); `None` for
    /// models that have none (the GANs).
    fn test_measure(&self, _test: &Tensor) -> Result<Option<TestMeasure>> {
        Ok(None)
    }
    /// The model's own scores on the test split (`test` in [`Batching::scale`]), beside those
    /// of its samples.
    fn own_scores(&self, _test: &Tensor, _importance: Importance) -> Result<Option<OwnScores>> {
        Ok(None)
    }
    /// Why the model cannot make an importance-weighted likelihood estimate, or `None` when
    /// it can (the VAEs).
    fn importance_unsupported(&self) -> Option<&'static str> {
        Some("which has no likelihood to estimate (the VAEs do)")
    }
    /// Trains data-parallel over `parallel`'s ranks from now on: every rank holds the same
    /// run, [`Trainer::step`] gets this rank's shard of each batch and takes the whole batch's
    /// step, and its metrics are the whole batch's. Families that cannot refuse.
    fn set_parallel(&mut self, _parallel: DataParallel) -> Result<()> {
        Err(TrainError::refused(format!(
            "the {} does not train data-parallel",
            self.name()
        )))
    }
    /// The run itself, for callers that need the family's own type (`kiln reconstruct`).
    fn as_any(&self) -> &dyn Any;
}

/// Refuses, before any work, an importance-weighted estimate that `trainer` (read from
/// `source`, e.g. a checkpoint's path) cannot make, or one of more samples than the limit.
pub fn check_importance(trainer: &dyn Trainer, importance: Importance, source: &str) -> Result<()> {
    if importance.samples == 0 {
        return Ok(());
    }
    if let Some(why) = trainer.importance_unsupported() {
        return Err(TrainError::refused(format!(
            "--iw-samples: {source} holds a {} model, {why}",
            trainer.name()
        )));
    }
    let what = "number of importance samples (--iw-samples)";
    kiln_nn::limits::at_most(
        what,
        importance.samples,
        kiln_nn::limits::MAX_IMPORTANCE_SAMPLES,
    )
    .map_err(TrainError::Refused)
}

/// A family of models (the GANs, the VAEs, ..): the names it answers to and how it makes a
/// [`Trainer`], fresh from a configuration or restored from a checkpoint. The configuration is
/// the family's serde config as JSON, so command-line settings are one override merged into it
/// ([`crate::config`]) and each default is written once, in the config.
pub trait Family: Sync {
    /// The model names `kiln train` takes, e.g. `["gan", "dcgan", "cgan", "wgan-gp"]`.
    fn models(&self) -> &'static [&'static str];
    /// Epochs `kiln train` runs when not told.
    fn default_epochs(&self, model: &str) -> u64;
    /// The default configuration of `model`, as JSON.
    fn default_config(&self, model: &str) -> Result<Value>;
    /// A command-line setting as a (configuration key, value): by default the flag's name and
    /// value as they are; a family whose config spells one differently translates it.
    fn setting(&self, _model: &str, key: &str, value: &Value) -> Result<(String, Value)> {
        Ok((key.to_string(), value.clone()))
    }
    /// A fresh run of `config` (a whole configuration, as [`Family::default_config`] gives).
    fn build(&self, config: Value, device: Device) -> Result<Box<dyn Trainer>>;
    /// The run `checkpoint` holds, on `device`, exactly as it was when saved.
    fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<Box<dyn Trainer>>;
}
