//! The GANs as kiln-train sees them: [`GanTrainer`] is a [`Trainer`], and [`FAMILY`] makes one
//! of any of the four architectures from a configuration or a checkpoint.

use std::any::Any;

use kiln_data::{Batch, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::parallel::DataParallel;
use kiln_tensor::{Device, Tensor};
use kiln_train::config::{from_config, to_config};
use kiln_train::{Batching, Family, PendingMetrics as Pending, PlotPanel, PlotSpec, Trainer};
use serde_json::Value;

use crate::{Architecture, GanConfig, GanTrainer, PendingMetrics, StepMetrics};

impl kiln_train::StepMetrics for StepMetrics {
    fn non_finite(&self) -> Option<(&'static str, f64)> {
        StepMetrics::non_finite(self)
    }

    /// "loss_d 0.612 · loss_g 1.920 · D(x) 0.71 · D(G(z)) 0.30" (WGAN-GP: "W" and "gp").
    fn summary(&self) -> String {
        let mut parts = vec![format!("loss_d {:.3}", self.loss_d)];
        if let Some(loss_g) = self.loss_g {
            parts.push(format!("loss_g {loss_g:.3}"));
        }
        match self.gradient_penalty {
            Some(penalty) => {
                parts.push(format!("W {:.3}", self.d_real - self.d_fake));
                parts.push(format!("gp {penalty:.3}"));
            }
            None => {
                parts.push(format!("D(x) {:.2}", self.d_real));
                parts.push(format!("D(G(z)) {:.2}", self.d_fake));
            }
        }
        parts.join(" · ")
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

impl Trainer for GanTrainer {
    fn name(&self) -> &'static str {
        self.config().architecture.name()
    }

    fn config_json(&self) -> kiln_train::Result<Value> {
        to_config(self.config())
    }

    /// The GANs leave out an epoch's last, smaller batch (batch norm, and their published
    /// loops) and train on tanh's range.
    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config().batch_size,
            drop_last: true,
            scale: Scale::MinusOneToOne,
            seed: self.config().seed,
        }
    }

    fn device(&self) -> Device {
        GanTrainer::device(self)
    }

    fn steps_done(&self) -> u64 {
        GanTrainer::steps_done(self)
    }

    fn step(&mut self, batch: &Batch) -> kiln_train::Result<Box<dyn Pending>> {
        Ok(Box::new(self.step_rows(
            &batch.images,
            &batch.labels,
            batch.global,
            batch.offset,
        )?))
    }

    fn set_parallel(&mut self, parallel: DataParallel) -> kiln_train::Result<()> {
        GanTrainer::set_parallel(self, parallel);
        Ok(())
    }

    fn checkpoint(&self) -> kiln_train::Result<Checkpoint> {
        Ok(GanTrainer::checkpoint(self)?)
    }

    fn grid_images(&self, n: usize) -> kiln_train::Result<Tensor> {
        let (z, labels) = self.fixed_latents(n)?;
        Ok(GanTrainer::sample(self, &z, labels.as_ref())?)
    }

    fn plot(&self) -> PlotSpec {
        let wgan = self.config().architecture == Architecture::WganGp;
        PlotSpec {
            title: format!("kiln {}: losses", self.name()),
            panels: vec![
                PlotPanel {
                    y_label: "loss",
                    fields: &["loss_d", "loss_g"],
                },
                PlotPanel {
                    y_label: if wgan { "critic score" } else { "D's output" },
                    fields: &["d_real", "d_fake"],
                },
            ],
        }
    }

    fn latent_dim(&self) -> Option<usize> {
        Some(self.config().latent_dim)
    }

    fn is_conditional(&self) -> bool {
        self.config().architecture.is_conditional()
    }

    fn sample(&self, latents: &Tensor, labels: Option<&Tensor>) -> kiln_train::Result<Tensor> {
        Ok(GanTrainer::sample(self, latents, labels)?)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The four GANs: `gan`, `dcgan`, `cgan`, `wgan-gp`.
pub struct Gans;

/// What kiln-train's registry holds for the GANs.
pub static FAMILY: Gans = Gans;

impl Family for Gans {
    fn models(&self) -> &'static [&'static str] {
        &["gan", "dcgan", "cgan", "wgan-gp"]
    }

    fn default_epochs(&self, model: &str) -> u64 {
        Architecture::from_name(model).map_or(0, Architecture::default_epochs)
    }

    fn default_config(&self, model: &str) -> kiln_train::Result<Value> {
        let architecture = Architecture::from_name(model)
            .ok_or_else(|| kiln_train::TrainError::refused(format!("`{model}` is not a GAN")))?;
        to_config(&GanConfig::new(architecture))
    }

    fn build(&self, config: Value, device: Device) -> kiln_train::Result<Box<dyn Trainer>> {
        let config: GanConfig = from_config("gan", config)?;
        Ok(Box::new(GanTrainer::new(config, device)?))
    }

    fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> kiln_train::Result<Box<dyn Trainer>> {
        Ok(Box::new(GanTrainer::from_checkpoint(
            checkpoint, device, context,
        )?))
    }
}
