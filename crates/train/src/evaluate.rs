//! Scoring generated images — a model's samples or any file of 28x28 images — in the feature
//! space of kiln's committed MNIST (or Fashion-MNIST) classifier, against the dataset's test
//! split: Fréchet distance, classifier score, class coverage, precision and recall; plus what
//! a model measures of itself ([`Trainer::own_scores`]). `kiln eval` and the end of `kiln
//! train` use the same [`Evaluator`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_data::{Dataset, DatasetKind, Scale, Split};
use kiln_eval::classifier::{dataset_images, Classifier};
use kiln_eval::frechet::{frechet_distance_of_features, Features};
use kiln_eval::scores::{
    class_coverage_of_probabilities, classifier_score, precision_recall, Coverage, PrecisionRecall,
    DEFAULT_NEIGHBOURS,
};
use kiln_nn::limits::{at_most, MAX_IMAGES};
use kiln_tensor::{no_grad, DType, Device, Tensor};
use serde::Serialize;

use crate::config::Registry;
use crate::error::{Result, TrainError};
use crate::run::{check_device, trained_on};
use crate::sample::{entry_or_only, sampling_progress};
use crate::trainer::{check_importance, Importance, OwnScores, SamplerChoice, Trainer};

/// How [`Evaluator::score_model`] draws and scores a model's samples.
pub struct ModelScoring<'a> {
    pub samples: usize,
    /// The Philox stream of the samples' randomness.
    pub seed: u64,
    pub sampler: SamplerChoice,
    pub importance: Importance,
    /// Follows the sampler's network passes (`done`, `total`).
    pub on_step: &'a mut dyn FnMut(usize, usize),
}

/// The scores of one set of images, as written to JSON.
#[derive(Serialize)]
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
    /// How the samples were drawn, for models with a choice of sampler (the DDPM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The model's own measures on the test split (a VAE's under `vae`, a PixelCNN's under
    /// `pixelcnn`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub own: Option<OwnScores>,
    pub seconds: f64,
}

/// The real side of a comparison, prepared once and reused for every set scored against it (a
/// run scoring itself every few epochs loads the classifier and featurises the test split
/// once): `dataset`'s classifier and its features of the test split.
pub struct Evaluator {
    dataset: DatasetKind,
    /// The test split, for a model's own scores.
    test: Dataset,
    device: Device,
    classifier: Classifier,
    classifier_path: PathBuf,
    real_features: Features,
    reference: String,
}

impl Evaluator {
    /// `classifier`: a classifier file, or `None` for the one committed for `dataset`.
    pub fn new(
        dataset: DatasetKind,
        data_dir: Option<&Path>,
        classifier: Option<&Path>,
        device: Device,
    ) -> Result<Evaluator> {
        let classifier_path = match classifier {
            Some(path) => path.to_path_buf(),
            None => committed_classifier(dataset)?,
        };
        let classifier = Classifier::load_on(&classifier_path, device)?;
        let test = Dataset::load(dataset, Split::Test, data_dir)?;
        let real = dataset_images(&test, device)?; // [10000, 1, 28, 28]
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
    pub fn score(&self, images: &Tensor) -> Result<EvalReport> {
        let started = Instant::now();
        let fake_features = features(&self.classifier, images)?;
        let probabilities = self.classifier.probabilities(images)?;
        let probabilities = probabilities.to_dtype(DType::F64)?.to_vec::<f64>()?;
        let classes = 10;
        let real = &self.real_features;
        Ok(EvalReport {
            source: String::new(),
            samples: images.dims()[0],
            dataset: self.dataset.name(),
            reference: self.reference.clone(),
            classifier: self.classifier_path.display().to_string(),
            frechet_distance: frechet_distance_of_features(real, &fake_features)?,
            classifier_score: classifier_score(&probabilities, classes)?,
            coverage: class_coverage_of_probabilities(&probabilities, classes)?,
            precision_recall: precision_recall(real, &fake_features, DEFAULT_NEIGHBOURS)?,
            sampler: None,
            own: None,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Scores `settings.samples` images drawn from `trainer`, and the model's own measures of
    /// the test split.
    pub fn score_model(&self, trainer: &dyn Trainer, settings: ModelScoring) -> Result<EvalReport> {
        let samples = settings.samples;
        if samples < MIN_SAMPLES {
            return Err(TrainError::refused(format!(
                "--n {samples}: score at least {MIN_SAMPLES} samples"
            )));
        }
        at_most("number of samples (--n)", samples, MAX_IMAGES).map_err(TrainError::Refused)?;
        let sampler = trainer.sampler(&settings.sampler)?;
        check_importance(trainer, settings.importance, "the checkpoint")?;
        let images =
            trainer.generate(samples, settings.seed, &settings.sampler, settings.on_step)?;
        let mut report = self.score(&images)?;
        report.sampler = sampler;
        let test = self.test_split(trainer.batching().scale)?;
        report.own = trainer.own_scores(&test, settings.importance)?;
        Ok(report)
    }

    /// The test split as one tensor `[N, 1, 28, 28]` in `scale` (as the loader makes images).
    pub fn test_split(&self, scale: Scale) -> Result<Tensor> {
        split_images(&self.test, scale, self.device)
    }
}

/// The fewest samples a set may have: precision and recall need k neighbours on each side.
pub const MIN_SAMPLES: usize = 2 * DEFAULT_NEIGHBOURS;

/// All of `dataset`'s images, `[N, 1, 28, 28]` f32 in `scale` (as the loader makes them).
pub fn split_images(dataset: &Dataset, scale: Scale, device: Device) -> Result<Tensor> {
    let pixels = dataset.images_tensor(0, dataset.len(), device)?;
    Ok(scale.to_float(&pixels)?)
}

/// The classifier committed for `dataset`: data/classifiers/<name>.safetensors, looked up from
/// the working directory and from the source tree kiln was built from.
fn committed_classifier(dataset: DatasetKind) -> Result<PathBuf> {
    let name = format!("{}.safetensors", dataset.name());
    let candidates = [
        PathBuf::from("data/classifiers").join(&name),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/classifiers")
            .join(&name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            TrainError::refused(format!(
                "no classifier for {}: looked for {} (train one with `kiln train classifier --dataset {}` or pass --classifier)",
                dataset.name(),
                candidates[0].display(),
                dataset.name()
            ))
        })
}

fn features(classifier: &Classifier, images: &Tensor) -> Result<Features> {
    let features = classifier.features(images)?; // [N, 128]
    let (rows, dim) = (features.dims()[0], features.dims()[1]);
    let values = features.to_vec::<f32>()?;
    Ok(Features::from_f32(rows, dim, &values)?)
}

/// Writes `report` to `path` as pretty JSON; the file appears whole or not at all.
pub fn write_json(report: &EvalReport, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| TrainError::refused(format!("{}: cannot write: {e}", path.display())))?;
    kiln_fs::write_file_atomically(path, |out| {
        use std::io::Write;
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")
    })
    .map_err(|e| TrainError::refused(format!("{}: cannot write: {e}", path.display())))
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
    if let Some(own) = &report.own {
        rows.extend(own.rows.iter().cloned());
    }
    if let Some(sampler) = &report.sampler {
        rows.insert(1, ("drawn by", sampler.clone()));
    }
    rows.push(("time", format!("{:.1} s", report.seconds)));
    rows.iter()
        .map(|(label, value)| format!("{label:<20}{value}\n"))
        .collect()
}

/// The line `kiln train` logs for an evaluation at `epoch`.
pub fn summary_line(report: &EvalReport, epoch: f64) -> String {
    let mut line = format!(
        "eval at epoch {epoch:.2}: Fréchet distance {:.3}, classifier score {:.3}, {} of 10 classes >= 5%, precision {:.3}, recall {:.3}",
        report.frechet_distance,
        report.classifier_score,
        report.coverage.classes_at_least_5_percent,
        report.precision_recall.precision,
        report.precision_recall.recall,
    );
    if let Some(own) = &report.own {
        line += &format!("; {}", own.line);
    }
    let how = report
        .sampler
        .as_ref()
        .map_or(String::new(), |sampler| format!(", {sampler}"));
    line + &format!(" ({} samples{how}; eval.json)", report.samples)
}

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
    pub importance: Importance,
    pub sampler: SamplerChoice,
    /// No progress bar while sampling.
    pub quiet: bool,
}

/// `kiln eval`: scores a checkpoint's samples (and its own measures) or a file's images,
/// writes the JSON report, and returns the table and where the report went.
pub fn eval(registry: &Registry, options: EvalOptions) -> Result<String> {
    check_device(options.device)?;
    let started = Instant::now();
    let (mut report, json) = match (&options.checkpoint, &options.samples) {
        (Some(checkpoint), None) => {
            let (trainer, file) = registry.load(checkpoint, options.device)?;
            let context = checkpoint.display().to_string();
            check_importance(trainer.as_ref(), options.importance, &context)?;
            let trained_on = trained_on(&file, &context)?;
            let dataset = options.dataset.or(trained_on).unwrap_or(DatasetKind::Mnist);
            let data_dir = options.data_dir.as_deref();
            let evaluator = Evaluator::new(
                dataset,
                data_dir,
                options.classifier.as_deref(),
                options.device,
            )?;
            let samples = options.n.unwrap_or(trainer.default_eval_samples());
            let how = match trainer.sampler(&options.sampler)? {
                Some(sampler) => format!(" ({sampler})"),
                None => String::new(),
            };
            let mut on_step =
                sampling_progress(options.quiet, format!("drawing {samples} samples{how}"));
            let settings = ModelScoring {
                samples,
                seed: options.seed,
                sampler: options.sampler,
                importance: options.importance,
                on_step: &mut on_step,
            };
            let mut report = evaluator.score_model(trainer.as_ref(), settings)?;
            report.source = context;
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
            if options.importance.samples > 0 {
                return Err(TrainError::refused(
                    "--iw-samples needs a VAE --checkpoint, not --samples",
                ));
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
        _ => return Err(TrainError::refused("give one of --checkpoint or --samples")),
    };
    let json = options.json.clone().unwrap_or(json);
    report.seconds = started.elapsed().as_secs_f64();
    write_json(&report, &json)?;
    Ok(format!("{}wrote {}\n", table(&report), json.display()))
}

/// Images from a file: IDX of u8 `[N, 28, 28]` (raw or gzip), or safetensors holding an
/// `images` tensor `[N, 1, 28, 28]` or `[N, 28, 28]` — floats in [-1, 1] (as `kiln sample`
/// writes) or u8. The first `n` if given. Returned as `[N, 1, 28, 28]` f32 in [-1, 1].
fn read_images(path: &Path, n: Option<usize>) -> Result<Tensor> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    let images = if is_safetensors {
        let images = entry_or_only(path, "images")?;
        match images.dtype() {
            DType::U8 => images.to_dtype(DType::F32)?.affine(1.0 / 127.5, -1.0)?,
            _ => images.to_dtype(DType::F32)?,
        }
    } else {
        let array = kiln_data::read_idx(path)?;
        let kiln_data::IdxData::U8(pixels) = array.data() else {
            return Err(TrainError::refused(format!(
                "{}: expected u8 images, got {:?} elements",
                path.display(),
                array.element_type()
            )));
        };
        Tensor::from_vec(pixels.clone(), array.dims().to_vec(), Device::Cpu)?
            .to_dtype(DType::F32)?
            .affine(1.0 / 127.5, -1.0)?
    };
    let count = match images.dims() {
        &[count, 28, 28] | &[count, 1, 28, 28] => count,
        _ => {
            return Err(TrainError::refused(format!(
                "{}: expected images [N, 28, 28] or [N, 1, 28, 28], got {}",
                path.display(),
                images.shape()
            )))
        }
    };
    let take = n.unwrap_or(count);
    if take > count || take < MIN_SAMPLES {
        return Err(TrainError::refused(format!(
            "{}: holds {count} images; score between {MIN_SAMPLES} and {count}",
            path.display(),
        )));
    }
    Ok(no_grad(|| {
        images
            .reshape([count, 1, 28, 28])?
            .narrow(0, 0, take)?
            .contiguous()
    })?)
}
