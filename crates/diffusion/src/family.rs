//! The DDPM as kiln-train sees it: [`DdpmTrainer`] is a [`Trainer`] that samples through the
//! DDPM or DDIM sampler a [`SamplerChoice`] picks and measures its noise-prediction error on
//! the test split at each epoch's end; [`FAMILY`] makes one.

use std::any::Any;

use kiln_data::{Batch, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::parallel::DataParallel;
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{Device, Generator, Tensor};
use kiln_train::config::{from_config, to_config};
use kiln_train::{
    Batching, Family, PendingMetrics as Pending, PlotPanel, PlotSpec, SamplerChoice, TestMeasure,
    TrainError, Trainer,
};
use serde::Serialize;
use serde_json::Value;

use crate::{DdpmConfig, DdpmTrainer, PendingMetrics, Sampler, StepMetrics, MODEL_NAME};

/// The seed of the test loss's draws (steps and noise).
pub const TEST_LOSS_SEED: u64 = 0x7E58;
/// Samples scored at the end of a full run: 50 U-Net passes a sample make 10,000 too slow.
const EVAL_SAMPLES: usize = 2_000;

impl kiln_train::StepMetrics for StepMetrics {
    fn non_finite(&self) -> Option<(&'static str, f64)> {
        StepMetrics::non_finite(self)
    }

    fn summary(&self) -> String {
        format!("ε MSE {:.4}", self.loss)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Pending for PendingMetrics {
    fn read(&self) -> kiln_train::Result<Box<dyn kiln_train::StepMetrics>> {
        Ok(Box::new(PendingMetrics::read(self)?))
    }
}

/// The metrics.jsonl field of the test split's loss.
#[derive(Serialize)]
struct TestLoss {
    test_loss: f64,
}

impl DdpmTrainer {
    /// The sampler `choice` asks for, checked against the model's T: by default DDIM with 50
    /// steps and η = 0.
    pub fn resolve_sampler(&self, choice: &SamplerChoice) -> kiln_train::Result<Sampler> {
        let timesteps = self.config().timesteps;
        let sampler = match (choice.ancestral, Sampler::DEFAULT) {
            (Some(true), _) if choice.steps.is_some_and(|s| s != timesteps) || choice.eta.is_some() => {
                return Err(TrainError::refused(format!(
                    "--sampler ddpm runs all {timesteps} steps with the posterior's noise: --steps and --eta are DDIM's"
                )))
            }
            (Some(true), _) => Sampler::Ddpm,
            (_, Sampler::Ddim { steps, eta }) => Sampler::Ddim {
                steps: choice.steps.unwrap_or(steps),
                eta: choice.eta.unwrap_or(eta),
            },
            (_, Sampler::Ddpm) => Sampler::Ddpm,
        };
        sampler
            .validate(timesteps)
            .map_err(|message| TrainError::refused(format!("--steps/--eta: {message}")))?;
        Ok(sampler)
    }
}

impl Trainer for DdpmTrainer {
    fn name(&self) -> &'static str {
        MODEL_NAME
    }

    fn config_json(&self) -> kiln_train::Result<Value> {
        to_config(self.config())
    }

    /// Every image of an epoch, scaled to [-1, 1] (Ho et al.).
    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config().batch_size,
            drop_last: false,
            scale: Scale::MinusOneToOne,
            seed: self.config().seed,
        }
    }

    fn device(&self) -> Device {
        DdpmTrainer::device(self)
    }

    fn steps_done(&self) -> u64 {
        DdpmTrainer::steps_done(self)
    }

    fn step(&mut self, batch: &Batch) -> kiln_train::Result<Box<dyn Pending>> {
        Ok(Box::new(self.step_rows(
            &batch.images,
            batch.global,
            batch.offset,
        )?))
    }

    fn set_parallel(&mut self, parallel: DataParallel) -> kiln_train::Result<()> {
        DdpmTrainer::set_parallel(self, parallel);
        Ok(())
    }

    fn checkpoint(&self) -> kiln_train::Result<Checkpoint> {
        Ok(DdpmTrainer::checkpoint(self)?)
    }

    /// The same x_T through the default deterministic DDIM, every epoch.
    fn grid_images(&self, n: usize) -> kiln_train::Result<Tensor> {
        let x_t = self.fixed_latents(n)?;
        let mut generator = Generator::new(stream_seed(self.config().seed, 5));
        Ok(DdpmTrainer::sample(
            self,
            &x_t,
            Sampler::DEFAULT,
            &mut generator,
            &mut |_, _| {},
        )?)
    }

    fn plot(&self) -> PlotSpec {
        PlotSpec {
            title: format!("kiln {MODEL_NAME}: noise-prediction error"),
            panels: vec![PlotPanel {
                y_label: "MSE",
                fields: &["loss", "test_loss"],
            }],
        }
    }

    fn default_eval_samples(&self) -> usize {
        EVAL_SAMPLES
    }

    fn sampler(&self, choice: &SamplerChoice) -> kiln_train::Result<Option<String>> {
        Ok(Some(self.resolve_sampler(choice)?.to_string()))
    }

    fn generate(
        &self,
        n: usize,
        seed: u64,
        choice: &SamplerChoice,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> kiln_train::Result<Tensor> {
        let sampler = self.resolve_sampler(choice)?;
        Ok(DdpmTrainer::generate(self, n, sampler, seed, on_step)?)
    }

    fn has_test_measure(&self) -> bool {
        true
    }

    fn test_measure(&self, test: &Tensor) -> kiln_train::Result<Option<TestMeasure>> {
        let report = self.evaluate(test, TEST_LOSS_SEED)?;
        Ok(Some(TestMeasure {
            record: Box::new(TestLoss {
                test_loss: report.loss,
            }),
            line: format!(
                "test noise-prediction MSE {:.4} (averaged weights) over {} images",
                report.loss, report.images
            ),
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The DDPM: `ddpm`.
pub struct Ddpm;

/// What kiln-train's registry holds for the DDPM.
pub static FAMILY: Ddpm = Ddpm;

impl Family for Ddpm {
    fn models(&self) -> &'static [&'static str] {
        &[MODEL_NAME]
    }

    fn default_epochs(&self, _model: &str) -> u64 {
        DdpmConfig::DEFAULT_EPOCHS
    }

    fn default_config(&self, _model: &str) -> kiln_train::Result<Value> {
        to_config(&DdpmConfig::default())
    }

    /// `--channels` takes the U-Net's three widths.
    fn setting(
        &self,
        _model: &str,
        key: &str,
        value: &Value,
    ) -> kiln_train::Result<(String, Value)> {
        if key == "channels" && value.as_array().is_none_or(|widths| widths.len() != 3) {
            return Err(TrainError::refused(
                "--channels takes three numbers for the DDPM, e.g. 16,32,64",
            ));
        }
        Ok((key.to_string(), value.clone()))
    }

    fn build(&self, config: Value, device: Device) -> kiln_train::Result<Box<dyn Trainer>> {
        let config: DdpmConfig = from_config(MODEL_NAME, config)?;
        Ok(Box::new(DdpmTrainer::new(config, device)?))
    }

    fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> kiln_train::Result<Box<dyn Trainer>> {
        Ok(Box::new(DdpmTrainer::from_checkpoint(
            checkpoint, device, context,
        )?))
    }
}
