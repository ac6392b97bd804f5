//! The PixelCNN as kiln-train sees it: [`PixelCnnTrainer`] is a [`Trainer`] that draws samples
//! pixel by pixel and measures its exact test likelihood, at each epoch's end and in `kiln
//! eval`; [`FAMILY`] makes one.

use std::any::Any;

use kiln_data::{Batch, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::parallel::DataParallel;
use kiln_tensor::rng::stream_seed;
use kiln_tensor::{Device, Tensor};
use kiln_train::config::{from_config, to_config};
use kiln_train::{
    Batching, Family, Importance, OwnScores, PendingMetrics as Pending, PlotPanel, PlotSpec,
    SamplerChoice, TestMeasure, TrainError, Trainer,
};
use serde::Serialize;
use serde_json::Value;

use crate::{NllReport, PendingMetrics, PixelCnnConfig, PixelCnnTrainer, StepMetrics, MODEL_NAME};

/// The seed of the test split's binarization for the Bernoulli PixelCNN: one fixed draw, as
/// binarized MNIST is one fixed set.
pub const TEST_BINARIZE_SEED: u64 = 0xB1A;
/// Samples scored at the end of a full run: 784 network passes a sample.
const EVAL_SAMPLES: usize = 1_000;

impl kiln_train::StepMetrics for StepMetrics {
    fn non_finite(&self) -> Option<(&'static str, f64)> {
        StepMetrics::non_finite(self)
    }

    fn summary(&self) -> String {
        format!(
            "NLL {:.2} nats · {:.3} bits/dim",
            self.nll, self.bits_per_dim
        )
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

/// The metrics.jsonl fields of the test split's likelihood.
#[derive(Serialize)]
struct TestNll {
    test_nll: f64,
    test_bits_per_dim: f64,
}

/// "test NLL 92.31 nats (0.1699 bits/dim) over 10000 images"
pub fn test_line(report: &NllReport) -> String {
    format!(
        "test NLL {:.2} nats ({:.4} bits/dim) over {} images",
        report.nll, report.bits_per_dim, report.images
    )
}

impl Trainer for PixelCnnTrainer {
    fn name(&self) -> &'static str {
        MODEL_NAME
    }

    fn config_json(&self) -> kiln_train::Result<Value> {
        to_config(self.config())
    }

    /// Every image of an epoch, as grey levels in [0, 1].
    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config().batch_size,
            drop_last: false,
            scale: Scale::ZeroToOne,
            seed: self.config().seed,
        }
    }

    fn device(&self) -> Device {
        PixelCnnTrainer::device(self)
    }

    fn steps_done(&self) -> u64 {
        PixelCnnTrainer::steps_done(self)
    }

    fn step(&mut self, batch: &Batch) -> kiln_train::Result<Box<dyn Pending>> {
        Ok(Box::new(self.step_rows(
            &batch.images,
            batch.global,
            batch.offset,
        )?))
    }

    fn set_parallel(&mut self, parallel: DataParallel) -> kiln_train::Result<()> {
        PixelCnnTrainer::set_parallel(self, parallel);
        Ok(())
    }

    fn checkpoint(&self) -> kiln_train::Result<Checkpoint> {
        Ok(PixelCnnTrainer::checkpoint(self)?)
    }

    /// The same uniforms every epoch.
    fn grid_images(&self, n: usize) -> kiln_train::Result<Tensor> {
        let seed = stream_seed(self.config().seed, 4);
        Ok(PixelCnnTrainer::sample(self, n, seed, &mut |_, _| {})?.affine(2.0, -1.0)?)
    }

    fn plot(&self) -> PlotSpec {
        PlotSpec {
            title: format!("kiln {MODEL_NAME}: negative log-likelihood per image"),
            panels: vec![PlotPanel {
                y_label: "nats",
                fields: &["nll", "test_nll"],
            }],
        }
    }

    fn default_eval_samples(&self) -> usize {
        EVAL_SAMPLES
    }

    fn generate(
        &self,
        n: usize,
        seed: u64,
        choice: &SamplerChoice,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> kiln_train::Result<Tensor> {
        self.sampler(choice)?;
        Ok(PixelCnnTrainer::sample(self, n, seed, on_step)?.affine(2.0, -1.0)?)
    }

    fn has_test_measure(&self) -> bool {
        true
    }

    fn test_measure(&self, test: &Tensor) -> kiln_train::Result<Option<TestMeasure>> {
        let report = self.evaluate(test, TEST_BINARIZE_SEED)?;
        Ok(Some(TestMeasure {
            record: Box::new(TestNll {
                test_nll: report.nll,
                test_bits_per_dim: report.bits_per_dim,
            }),
            line: test_line(&report),
        }))
    }

    fn own_scores(
        &self,
        test: &Tensor,
        _importance: Importance,
    ) -> kiln_train::Result<Option<OwnScores>> {
        let report = self.evaluate(test, TEST_BINARIZE_SEED)?;
        Ok(Some(OwnScores {
            key: "pixelcnn",
            rows: vec![(
                "test NLL",
                format!(
                    "{:.2} nats ({:.4} bits/dim; {} images)",
                    report.nll, report.bits_per_dim, report.images
                ),
            )],
            line: test_line(&report),
            value: Box::new(report),
        }))
    }

    fn importance_unsupported(&self) -> Option<&'static str> {
        Some("whose likelihood is exact: kiln eval reports its test NLL without --iw-samples")
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The PixelCNN: `pixelcnn`.
pub struct PixelCnns;

/// What kiln-train's registry holds for the PixelCNN.
pub static FAMILY: PixelCnns = PixelCnns;

impl Family for PixelCnns {
    fn models(&self) -> &'static [&'static str] {
        &[MODEL_NAME]
    }

    fn default_epochs(&self, _model: &str) -> u64 {
        PixelCnnConfig::default_epochs()
    }

    fn default_config(&self, _model: &str) -> kiln_train::Result<Value> {
        to_config(&PixelCnnConfig::new())
    }

    /// `--channels N` sets the hidden channels.
    fn setting(
        &self,
        _model: &str,
        key: &str,
        value: &Value,
    ) -> kiln_train::Result<(String, Value)> {
        if key != "channels" {
            return Ok((key.to_string(), value.clone()));
        }
        match value.as_array().map(Vec::as_slice) {
            Some([hidden]) => Ok(("hidden_channels".to_string(), hidden.clone())),
            _ => Err(TrainError::refused(
                "--channels takes one number for the PixelCNN, e.g. 32",
            )),
        }
    }

    fn build(&self, config: Value, device: Device) -> kiln_train::Result<Box<dyn Trainer>> {
        let config: PixelCnnConfig = from_config(MODEL_NAME, config)?;
        Ok(Box::new(PixelCnnTrainer::new(config, device)?))
    }

    fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> kiln_train::Result<Box<dyn Trainer>> {
        Ok(Box::new(PixelCnnTrainer::from_checkpoint(
            checkpoint, device, context,
        )?))
    }
}
