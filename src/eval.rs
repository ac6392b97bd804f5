//! `kiln eval`: scores a set of generated images — from any model's checkpoint or from any
//! file of 28x28 images — in the feature space of kiln's committed MNIST (or Fashion-MNIST)
//! classifier, against the dataset's test split; a VAE also by its test negative ELBO, its
//! reconstructions (MSE, PSNR, SSIM) and, if asked, an importance-weighted estimate of its
//! test log-likelihood; a PixelCNN by its exact test negative log-likelihood. Prints a table
//! and writes JSON. `kiln train` scores its runs with the same [`Evaluator`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_autoregressive::NllReport;
use kiln_data::{Dataset, DatasetKind, Scale, Split};
use kiln_diffusion::Sampler;
use kiln_eval::classifier::{dataset_images, Classifier};
use kiln_eval::frechet::{frechet_distance_of_features, Features};
use kiln_eval::scores::{
    class_coverage_of_probabilities, classifier_score, precision_recall, Coverage, PrecisionRecall,
    DEFAULT_NEIGHBOURS,
};
use kiln_eval::similarity::{mse, psnr, ssim_batch};
use kiln_tensor::{no_grad, DType, Device, Tensor};
use kiln_vae::{ElboReport, VaeTrainer};
use serde::Serialize;

use crate::models::Model;
use crate::train::{TEST_BINARIZE_SEED, TEST_ELBO_SEED};

/// What `kiln eval` was asked to do.
pub struct EvalOptions {
    pub checkpoint: Option<PathBuf>,
    pub samples: Option<PathBuf>,
    pub n: Option<usize>,
    pub dataset: Option<DatasetKind>,
    pub data_dir: Option<PathBuf>,
    pub classifier: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub seed: u64,
    pub device: Device,
    /// k of the importance-weighted log-likelihood of a VAE (0: not computed).
    pub importance_samples: usize,
    /// Test images the importance-weighted estimate averages over (default: all).
    pub importance_images: Option<usize>,
    /// How a DDPM draws its samples.
    pub sampler: crate::sample::SamplerChoice,
    /// No progress bar while sampling.
    pub quiet: bool,
}

/// How [`Evaluator::score_model`] draws and scores a model's samples.
pub struct ModelScoring {
    pub samples: usize,
    /// The Philox stream of the samples' randomness.
    pub seed: u64,
    /// How a DDPM draws them.
    pub sampler: Sampler,
    /// k of a VAE's importance-weighted estimate (0: none) and the test images it covers.
    pub importance: (usize, Option<usize>),
    /// No progress bar while sampling.
    pub quiet: bool,
}
/// The seed of the importance-weighted estimate's draws.
const IMPORTANCE_SEED: u64 = 0x1AE;

/// The scores of one set of images, as written to JSON.
#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// What was scored: a checkpoint or a file.
    pub source: String,
    pub samples: usize,
    pub dataset: &'static str,
    /// The real images the samples are compared with.
    pub reference: String,
    pub classifier: String,
    /// Fréchet distance between the two sets' classifier features (128-d penultimate layer).
    pub frechet_distance: f64,
    /// exp(E KL(p(y|x) || p(y))) on the classifier's probabilities: 1 to 10.
    pub classifier_score: f64,
    pub coverage: Coverage,
    /// Improved precision and recall (k = 3) in the classifier's feature space.
    pub precision_recall: PrecisionRecall,
    /// How a DDPM's samples were drawn (its sampler and steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// A VAE's own measures, on the test split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae: Option<VaeScores>,
    /// A PixelCNN's exact negative log-likelihood of the test split (binarized once, with a
    /// fixed seed, for the Bernoulli model), in nats per image and bits per dimension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pixelcnn: Option<NllReport>,
    pub seconds: f64,
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
    pub fn measure(images: &Tensor, reconstructions: &Tensor) -> Result<Reconstruction, String> {
        let n = images.dims()[0];
        let (x, y) = (pixels(images)?, pixels(reconstructions)?);
        let size = x.len() / n;
        let mut psnr_total = 0.0;
        for (a, b) in x.chunks(size).zip(y.chunks(size)) {
            psnr_total += psnr(a, b, 1.0).map_err(|e| e.to_string())?;
        }
        Ok(Reconstruction {
            images: n,
            mse: mse(&x, &y).map_err(|e| e.to_string())?,
            psnr: psnr_total / n as f64,
            ssim: ssim_batch(&x, &y, n, 28, 28, 1.0).map_err(|e| e.to_string())?,
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

pub fn eval(options: EvalOptions) -> Result<String, String> {
    crate::train::check_device(options.device)?;
    let started = Instant::now();
    let (mut report, json) = match (&options.checkpoint, &options.samples) {
        (Some(checkpoint), None) => {
            let (model, trained_on) = load_model(checkpoint, options.device)?;
            if options.importance_samples > 0 && !matches!(model, Model::Vae(_)) {
                let why = match model {
                    Model::PixelCnn(_) => "whose likelihood is exact: kiln eval reports its test NLL without --iw-samples",
                    _ => "which has no likelihood to estimate (the VAEs do)",
                };
                return Err(format!(
                    "--iw-samples: {} holds a {} model, {why}",
                    checkpoint.display(),
                    model.kind()
                ));
            }
            let dataset = options.dataset.or(trained_on).unwrap_or(DatasetKind::Mnist);
            let evaluator = Evaluator::new(
                dataset,
                options.data_dir.as_deref(),
                options.classifier.as_deref(),
                options.device,
            )?;
            let settings = ModelScoring {
                samples: options.n.unwrap_or(model.kind().default_eval_samples()),
                seed: options.seed,
                sampler: options.sampler.resolve(&model)?,
                importance: (options.importance_samples, options.importance_images),
                quiet: options.quiet,
            };
            let mut report = evaluator.score_model(&model, &settings)?;
            report.source = checkpoint.display().to_string();
            // A run's checkpoint (runs/x/checkpoints/latest.safetensors) → runs/x/eval.json.
            let run = checkpoint
                .parent()
                .filter(|p| p.ends_with("checkpoints"))
                .and_then(Path::parent);
            let json = match run {
                Some(run) => run.join("eval.json"),
                None => checkpoint.with_extension("eval.json"),
            };
            (report, json)
        }
        (None, Some(file)) => {
            if options.importance_samples > 0 {
                return Err("--iw-samples needs a VAE --checkpoint, not --samples".to_string());
            }
            let images = read_images(file, options.n)?;
            let evaluator = Evaluator::new(
                options.dataset.unwrap_or(DatasetKind::Mnist),
                options.data_dir.as_deref(),
                options.classifier.as_deref(),
                images.device(),
            )?;
            let mut report = evaluator.score(&images)?;
            report.source = file.display().to_string();
            (report, file.with_extension("eval.json"))
        }
        _ => return Err("give one of --checkpoint or --samples".to_string()),
    };
    let json = options.json.clone().unwrap_or(json);
    report.seconds = started.elapsed().as_secs_f64();
    write_json(&report, &json)?;
    Ok(format!("{}wrote {}\n", table(&report), json.display()))
}

/// The real side of a comparison, prepared once and reused for every set scored against it
/// (a run scoring itself every few epochs loads the classifier and featurises the test split
/// once): `dataset`'s classifier (`classifier`, or the committed one) and its features of the
/// test split.
pub struct Evaluator {
    dataset: DatasetKind,
    /// The test split, for a VAE's ELBO and reconstructions.
    test: Dataset,
    device: Device,
    classifier: Classifier,
    classifier_path: PathBuf,
    real_features: Features,
    reference: String,
}

impl Evaluator {
    pub fn new(
        dataset: DatasetKind,
        data_dir: Option<&Path>,
        classifier: Option<&Path>,
        device: Device,
    ) -> Result<Evaluator, String> {
        let classifier_path = match classifier {
            Some(path) => path.to_path_buf(),
            None => committed_classifier(dataset)?,
        };
        let classifier = Classifier::load(&classifier_path).map_err(|e| e.to_string())?;
        let test = Dataset::load(dataset, Split::Test, data_dir).map_err(|e| e.to_string())?;
        let real = dataset_images(&test, device).map_err(|e| e.to_string())?; // [10000, 1, 28, 28]
        Ok(Evaluator {
            real_features: features(&classifier, &real)?,
            reference: format!("{} test split ({} images)", dataset.name(), test.len()),
            test,
            device,
            dataset,
            classifier,
            classifier_path,
        })
    }

    /// Scores `images [N, 1, 28, 28]` in [-1, 1] against the test split.
    pub fn score(&self, images: &Tensor) -> Result<EvalReport, String> {
        let started = Instant::now();
        let fake_features = features(&self.classifier, images)?;
        let probabilities = self
            .classifier
            .probabilities(images)
            .and_then(|p| Ok(p.to_dtype(DType::F64)?.to_vec::<f64>()?))
            .map_err(|e| e.to_string())?;
        let classes = 10;
        let real = &self.real_features;
        Ok(EvalReport {
            source: String::new(),
            samples: images.dims()[0],
            dataset: self.dataset.name(),
            reference: self.reference.clone(),
            classifier: self.classifier_path.display().to_string(),
            frechet_distance: frechet_distance_of_features(real, &fake_features)
                .map_err(|e| e.to_string())?,
            classifier_score: classifier_score(&probabilities, classes)
                .map_err(|e| e.to_string())?,
            coverage: class_coverage_of_probabilities(&probabilities, classes)
                .map_err(|e| e.to_string())?,
            precision_recall: precision_recall(real, &fake_features, DEFAULT_NEIGHBOURS)
                .map_err(|e| e.to_string())?,
            sampler: None,
            vae: None,
            pixelcnn: None,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Scores `settings.samples` images drawn from `model` (randomness from the Philox stream
    /// `settings.seed`; a DDPM's through `settings.sampler`); for a VAE also its test ELBO,
    /// its reconstructions and, when `settings.importance.0` > 0, the importance-weighted
    /// log-likelihood with that many samples over the first `settings.importance.1` test
    /// images (default all); for a PixelCNN its test negative log-likelihood.
    pub fn score_model(
        &self,
        model: &Model,
        settings: &ModelScoring,
    ) -> Result<EvalReport, String> {
        let samples = settings.samples;
        if samples < 2 * DEFAULT_NEIGHBOURS {
            return Err(format!(
                "--n {samples}: score at least {} samples",
                2 * DEFAULT_NEIGHBOURS
            ));
        }
        let mut on_step =
            crate::sample::sampling_progress(settings.quiet, format!("drawing {samples} samples"));
        let images = model.generate(
            samples,
            settings.seed,
            self.device,
            settings.sampler,
            &mut on_step,
        )?;
        let mut report = self.score(&images)?;
        match model {
            Model::Vae(trainer) => {
                report.vae = Some(self.vae_scores(trainer, settings.importance)?)
            }
            Model::Ddpm(_) => report.sampler = Some(settings.sampler.to_string()),
            Model::PixelCnn(trainer) => {
                let test = split_images(&self.test, Scale::ZeroToOne, self.device)?;
                let nll = trainer
                    .evaluate(&test, TEST_BINARIZE_SEED)
                    .map_err(|e| e.to_string())?;
                report.pixelcnn = Some(nll);
            }
            Model::Gan(_) => {}
        }
        Ok(report)
    }

    fn vae_scores(
        &self,
        trainer: &VaeTrainer,
        (samples, images): (usize, Option<usize>),
    ) -> Result<VaeScores, String> {
        let test = split_images(&self.test, Scale::ZeroToOne, self.device)?; // [N, 1, 28, 28]
        let n = test.dims()[0];
        let elbo = trainer
            .evaluate(&test, TEST_ELBO_SEED)
            .map_err(|e| e.to_string())?;
        let reconstructions = trainer.reconstruct(&test).map_err(|e| e.to_string())?;
        let importance_weighted = match (samples, images) {
            (0, _) => None,
            (samples, images) => {
                let images = images.unwrap_or(n);
                if images == 0 || images > n {
                    return Err(format!(
                        "--iw-images {images}: the test split has {n} images; ask for 1 to {n}"
                    ));
                }
                let started = Instant::now();
                let subset = test.narrow(0, 0, images).map_err(|e| e.to_string())?;
                let nll = trainer
                    .importance_weighted_nll(&subset, samples, IMPORTANCE_SEED)
                    .map_err(|e| e.to_string())?;
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
            reconstruction: Reconstruction::measure(&test, &reconstructions)?,
            importance_weighted,
        })
    }
}

fn pixels(images: &Tensor) -> Result<Vec<f32>, String> {
    images.to_vec::<f32>().map_err(|e| e.to_string())
}

/// All of `dataset`'s images, `[N, 1, 28, 28]` f32 in `scale` (as the loader makes them).
pub fn split_images(dataset: &Dataset, scale: Scale, device: Device) -> Result<Tensor, String> {
    dataset
        .images_tensor(0, dataset.len(), device)
        .and_then(|pixels| scale.to_float(&pixels))
        .map_err(|e| e.to_string())
}

/// The classifier committed for `dataset`: data/classifiers/<name>.safetensors, looked up
/// from the working directory and from the source tree kiln was built from.
fn committed_classifier(dataset: DatasetKind) -> Result<PathBuf, String> {
    let name = format!("{}.safetensors", dataset.name());
    let candidates = [
        PathBuf::from("data/classifiers").join(&name),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/classifiers")
            .join(&name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no classifier for {}: looked for {} (train one with `kiln train classifier --dataset {}` or pass --classifier)",
                dataset.name(),
                candidates[0].display(),
                dataset.name()
            )
        })
}

fn features(classifier: &Classifier, images: &Tensor) -> Result<Features, String> {
    let features = classifier.features(images).map_err(|e| e.to_string())?; // [N, 128]
    let (rows, dim) = (features.dims()[0], features.dims()[1]);
    let values = features.to_vec::<f32>().map_err(|e| e.to_string())?;
    Features::from_f32(rows, dim, &values).map_err(|e| e.to_string())
}

/// The run a checkpoint holds and the dataset it trained on (if it says).
pub fn load_model(path: &Path, device: Device) -> Result<(Model, Option<DatasetKind>), String> {
    let (model, checkpoint) = Model::load(path, device)?;
    let trained_on = crate::train::trained_on(&checkpoint, &path.display().to_string())?;
    Ok((model, trained_on))
}

/// Images from a file: IDX of u8 `[N, 28, 28]` (raw or gzip), or safetensors holding an
/// `images` tensor `[N, 1, 28, 28]` or `[N, 28, 28]` — floats in [-1, 1] (as `kiln sample`
/// writes) or u8. The first `n` if given. Returned as `[N, 1, 28, 28]` f32 in [-1, 1].
fn read_images(path: &Path, n: Option<usize>) -> Result<Tensor, String> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let images = if is_safetensors {
        let images = crate::sample::entry_or_only(path, "images")?;
        let scaled = match images.dtype() {
            DType::U8 => images
                .to_dtype(DType::F32)
                .and_then(|t| t.affine(1.0 / 127.5, -1.0)),
            _ => images.to_dtype(DType::F32),
        };
        scaled.map_err(|e| e.to_string())?
    } else {
        let array = kiln_data::read_idx(path).map_err(|e| e.to_string())?;
        let kiln_data::IdxData::U8(pixels) = array.data() else {
            return Err(format!(
                "{}: expected u8 images, got {:?} elements",
                path.display(),
                array.element_type()
            ));
        };
        Tensor::from_vec(pixels.clone(), array.dims().to_vec(), Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32)?.affine(1.0 / 127.5, -1.0))
            .map_err(|e| e.to_string())?
    };
    let dims = images.dims().to_vec();
    let count = match dims[..] {
        [count, 28, 28] | [count, 1, 28, 28] => count,
        _ => {
            return Err(format!(
                "{}: expected images [N, 28, 28] or [N, 1, 28, 28], got {}",
                path.display(),
                images.shape()
            ))
        }
    };
    let take = n.unwrap_or(count);
    if take > count || take < 2 * DEFAULT_NEIGHBOURS {
        return Err(format!(
            "{}: holds {count} images; score between {} and {count}",
            path.display(),
            2 * DEFAULT_NEIGHBOURS
        ));
    }
    no_grad(|| {
        images
            .reshape([count, 1, 28, 28])?
            .narrow(0, 0, take)?
            .contiguous()
    })
    .map_err(|e| e.to_string())
}

pub fn write_json(report: &EvalReport, path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    kiln_fs::write_file_atomically(path, |out| {
        use std::io::Write;
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")
    })
    .map_err(|e| format!("{}: cannot write: {e}", path.display()))
}

/// The report as a table for the terminal.
pub fn table(report: &EvalReport) -> String {
    let histogram: Vec<String> = report
        .coverage
        .fractions
        .iter()
        .enumerate()
        .map(|(class, f)| format!("{class}:{:.0}%", f * 100.0))
        .collect();
    let mut rows = vec![
        (
            "samples",
            format!("{} from {}", report.samples, report.source),
        ),
        ("compared with", report.reference.clone()),
        ("classifier", report.classifier.clone()),
        (
            "Fréchet distance",
            format!("{:.3}", report.frechet_distance),
        ),
        (
            "classifier score",
            format!("{:.3} (of 10)", report.classifier_score),
        ),
        (
            "classes >= 5%",
            format!("{} of 10", report.coverage.classes_at_least_5_percent),
        ),
        (
            "KL to uniform",
            format!("{:.4}", report.coverage.kl_to_uniform),
        ),
        (
            "precision / recall",
            format!(
                "{:.3} / {:.3} (k = {DEFAULT_NEIGHBOURS})",
                report.precision_recall.precision, report.precision_recall.recall
            ),
        ),
        ("class histogram", histogram.join(" ")),
    ];
    if let Some(vae) = &report.vae {
        let test = &vae.test;
        rows.push((
            "test -ELBO",
            format!(
                "{:.2} nats (reconstruction {:.2}, KL {:.2}; {} images)",
                test.neg_elbo, test.reconstruction, test.kl, test.images
            ),
        ));
        if let Some(iw) = &vae.importance_weighted {
            rows.push((
                "test -log p(x)",
                format!(
                    "{:.2} nats (importance-weighted, k = {}; {} images)",
                    iw.nll, iw.samples, iw.images
                ),
            ));
        }
        let r = &vae.reconstruction;
        rows.push((
            "reconstructions",
            format!(
                "MSE {:.5}, PSNR {:.2} dB, SSIM {:.4} ({} images)",
                r.mse, r.psnr, r.ssim, r.images
            ),
        ));
    }
    if let Some(sampler) = &report.sampler {
        rows.insert(1, ("drawn by", sampler.clone()));
    }
    if let Some(test) = &report.pixelcnn {
        rows.push((
            "test NLL",
            format!(
                "{:.2} nats ({:.4} bits/dim; {} images)",
                test.nll, test.bits_per_dim, test.images
            ),
        ));
    }
    rows.push(("time", format!("{:.1} s", report.seconds)));
    rows.iter()
        .map(|(label, value)| format!("{label:<20}{value}\n"))
        .collect()
}
