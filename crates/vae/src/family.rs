//! The VAEs as kiln-train sees them: [`VaeTrainer`] is a [`Trainer`] that also measures its
//! test negative ELBO at each epoch's end and, in `kiln eval`, its reconstructions and (when
//! asked) an importance-weighted likelihood; [`FAMILY`] makes one of either architecture.

use std::any::Any;
use std::time::Instant;

use kiln_data::{Batch, Scale};
use kiln_eval::similarity::{mse, psnr, ssim_batch};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::parallel::DataParallel;
use kiln_tensor::{Device, Tensor};
use kiln_train::config::{from_config, to_config};
use kiln_train::{
    Batching, Family, Importance, OwnScores, PendingMetrics as Pending, PlotPanel, PlotSpec,
    TestMeasure, TrainError, Trainer,
};
use serde::Serialize;
use serde_json::Value;

use crate::{ElboReport, PendingMetrics, StepMetrics, VaeArchitecture, VaeConfig, VaeTrainer};

/// The seed of the reparameterisation noise the test ELBO is measured with: fixed, so the
/// figures of two epochs or two runs compare.
pub const TEST_ELBO_SEED: u64 = 0x7E57;
/// The seed of the importance-weighted estimate's draws.
const IMPORTANCE_SEED: u64 = 0x1AE;

impl kiln_train::StepMetrics for StepMetrics {
    fn non_finite(&self) -> Option<(&'static str, f64)> {
        StepMetrics::non_finite(self)
    }

    /// "-ELBO 127.10 · rec 108.00 · KL 19.10" (and the KL weight while it warms up).
    fn summary(&self) -> String {
        let mut parts = vec![
            format!("-ELBO {:.2}", self.neg_elbo),
            format!("rec {:.2}", self.reconstruction),
            format!("KL {:.2}", self.kl),
        ];
        if self.kl_weight != 1.0 {
            parts.push(format!("KL weight {:.3}", self.kl_weight));
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

/// The metrics.jsonl fields of the test split's ELBO.
#[derive(Serialize)]
struct TestElbo {
    test_neg_elbo: f64,
    test_reconstruction: f64,
    test_kl: f64,
}

/// "test -ELBO 127.05 nats (reconstruction 107.97, KL 19.08) over 10000 images"
pub fn test_line(report: &ElboReport) -> String {
    format!(
        "test -ELBO {:.2} nats (reconstruction {:.2}, KL {:.2}) over {} images",
        report.neg_elbo, report.reconstruction, report.kl, report.images
    )
}

/// What a VAE is measured by besides its samples, on the test split of its dataset.
#[derive(Debug, Serialize)]
pub struct VaeScores {
    /// The negative ELBO in nats per image, one reparameterised sample per image.
    pub test: ElboReport,
    /// Reconstructions (the decoder's mean at the posterior mean) against their inputs.
    pub reconstruction: Reconstruction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub importance_weighted: Option<ImportanceWeighted>,
}

/// Reconstruction error in [0, 1] pixels (data range 1); PSNR and SSIM are means over images.
#[derive(Debug, Serialize)]
pub struct Reconstruction {
    pub images: usize,
    pub mse: f64,
    pub psnr: f64,
    pub ssim: f64,
}

impl Reconstruction {
    /// How close `reconstructions` are to `images`, both `[N, 1, 28, 28]` in [0, 1].
    pub fn measure(
        images: &Tensor,
        reconstructions: &Tensor,
    ) -> kiln_train::Result<Reconstruction> {
        let n = images.dims()[0];
        let (x, y) = (images.to_vec::<f32>()?, reconstructions.to_vec::<f32>()?);
        let size = x.len() / n;
        let mut psnr_total = 0.0;
        for (a, b) in x.chunks(size).zip(y.chunks(size)) {
            psnr_total += psnr(a, b, 1.0)?;
        }
        Ok(Reconstruction {
            images: n,
            mse: mse(&x, &y)?,
            psnr: psnr_total / n as f64,
            ssim: ssim_batch(&x, &y, n, 28, 28, 1.0)?,
        })
    }
}

/// The importance-weighted estimate of the test negative log-likelihood (Burda et al.).
#[derive(Debug, Serialize)]
pub struct ImportanceWeighted {
    pub samples: usize,
    pub images: usize,
    /// -log p(x) in nats per image (an upper bound that tightens with more samples).
    pub nll: f64,
    pub seconds: f64,
}

impl VaeTrainer {
    /// The test ELBO, reconstructions and (for `importance.samples` > 0) the
    /// importance-weighted likelihood of `test [N, 1, 28, 28]` in [0, 1].
    pub fn scores(&self, test: &Tensor, importance: Importance) -> kiln_train::Result<VaeScores> {
        let n = test.dims()[0];
        let elbo = self.evaluate(test, TEST_ELBO_SEED)?;
        let reconstructions = self.reconstruct(test)?;
        let importance_weighted = match importance.samples {
            0 => None,
            samples => {
                let images = importance.images.unwrap_or(n);
                if images == 0 || images > n {
                    return Err(TrainError::refused(format!(
                        "--iw-images {images}: the test split has {n} images; ask for 1 to {n}"
                    )));
                }
                let started = Instant::now();
                let subset = test.narrow(0, 0, images)?;
                let nll = self.importance_weighted_nll(&subset, samples, IMPORTANCE_SEED)?;
                Some(ImportanceWeighted {
                    samples,
                    images,
                    nll: nll.iter().sum::<f64>() / images as f64,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
        };
        Ok(VaeScores {
            test: elbo,
            reconstruction: Reconstruction::measure(test, &reconstructions)?,
            importance_weighted,
        })
    }
}

impl Trainer for VaeTrainer {
    fn name(&self) -> &'static str {
        self.config().architecture.name()
    }

    fn config_json(&self) -> kiln_train::Result<Value> {
        to_config(self.config())
    }

    /// Every image of an epoch (as PyTorch's VAE example), as probabilities in [0, 1].
    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.config().batch_size,
            drop_last: false,
            scale: Scale::ZeroToOne,
            seed: self.config().seed,
        }
    }

    fn device(&self) -> Device {
        VaeTrainer::device(self)
    }

    fn steps_done(&self) -> u64 {
        VaeTrainer::steps_done(self)
    }

    fn step(&mut self, batch: &Batch) -> kiln_train::Result<Box<dyn Pending>> {
        Ok(Box::new(self.step_rows(
            &batch.images,
            batch.global,
            batch.offset,
        )?))
    }

    fn set_parallel(&mut self, parallel: DataParallel) -> kiln_train::Result<()> {
        VaeTrainer::set_parallel(self, parallel);
        Ok(())
    }

    fn checkpoint(&self) -> kiln_train::Result<Checkpoint> {
        Ok(VaeTrainer::checkpoint(self)?)
    }

    fn grid_images(&self, n: usize) -> kiln_train::Result<Tensor> {
        let z = self.fixed_latents(n)?;
        Trainer::sample(self, &z, None)
    }

    fn plot(&self) -> PlotSpec {
        PlotSpec {
            title: format!("kiln {}: negative ELBO per image", self.name()),
            panels: vec![
                PlotPanel {
                    y_label: "nats",
                    fields: &["neg_elbo", "test_neg_elbo"],
                },
                PlotPanel {
                    y_label: "nats",
                    fields: &["reconstruction", "kl"],
                },
            ],
        }
    }

    fn latent_dim(&self) -> Option<usize> {
        Some(self.config().latent_dim)
    }

    /// The decoder's mean image, in [-1, 1].
    fn sample(&self, latents: &Tensor, _labels: Option<&Tensor>) -> kiln_train::Result<Tensor> {
        Ok(VaeTrainer::sample(self, latents)?.affine(2.0, -1.0)?)
    }

    fn has_test_measure(&self) -> bool {
        true
    }

    fn test_measure(&self, test: &Tensor) -> kiln_train::Result<Option<TestMeasure>> {
        let report = self.evaluate(test, TEST_ELBO_SEED)?;
        Ok(Some(TestMeasure {
            record: Box::new(TestElbo {
                test_neg_elbo: report.neg_elbo,
                test_reconstruction: report.reconstruction,
                test_kl: report.kl,
            }),
            line: test_line(&report),
        }))
    }

    fn own_scores(
        &self,
        test: &Tensor,
        importance: Importance,
    ) -> kiln_train::Result<Option<OwnScores>> {
        let scores = self.scores(test, importance)?;
        let test = &scores.test;
        let mut rows = vec![(
            "test -ELBO",
            format!(
                "{:.2} nats (reconstruction {:.2}, KL {:.2}; {} images)",
                test.neg_elbo, test.reconstruction, test.kl, test.images
            ),
        )];
        if let Some(iw) = &scores.importance_weighted {
            rows.push((
                "test -log p(x)",
                format!(
                    "{:.2} nats (importance-weighted, k = {}; {} images)",
                    iw.nll, iw.samples, iw.images
                ),
            ));
        }
        let r = &scores.reconstruction;
        rows.push((
            "reconstructions",
            format!(
                "MSE {:.5}, PSNR {:.2} dB, SSIM {:.4} ({} images)",
                r.mse, r.psnr, r.ssim, r.images
            ),
        ));
        let line = format!(
            "reconstructions MSE {:.5}, PSNR {:.2} dB, SSIM {:.4}",
            r.mse, r.psnr, r.ssim
        );
        Ok(Some(OwnScores {
            key: "vae",
            value: Box::new(scores),
            rows,
            line,
        }))
    }

    fn importance_unsupported(&self) -> Option<&'static str> {
        None
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The two VAEs: `vae` (MLP) and `conv-vae`.
pub struct Vaes;

/// What kiln-train's registry holds for the VAEs.
pub static FAMILY: Vaes = Vaes;

impl Family for Vaes {
    fn models(&self) -> &'static [&'static str] {
        &["vae", "conv-vae"]
    }

    fn default_epochs(&self, model: &str) -> u64 {
        VaeArchitecture::from_name(model).map_or(0, VaeArchitecture::default_epochs)
    }

    fn default_config(&self, model: &str) -> kiln_train::Result<Value> {
        let architecture = VaeArchitecture::from_name(model)
            .ok_or_else(|| TrainError::refused(format!("`{model}` is not a VAE")))?;
        to_config(&VaeConfig::new(architecture))
    }

    fn build(&self, config: Value, device: Device) -> kiln_train::Result<Box<dyn Trainer>> {
        let config: VaeConfig = from_config("vae", config)?;
        Ok(Box::new(VaeTrainer::new(config, device)?))
    }

    fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> kiln_train::Result<Box<dyn Trainer>> {
        Ok(Box::new(VaeTrainer::from_checkpoint(
            checkpoint, device, context,
        )?))
    }
}
