//! `kiln eval`: scores a set of generated images — from a GAN checkpoint or from any file of
//! 28x28 images — in the feature space of kiln's committed MNIST (or Fashion-MNIST)
//! classifier, against the dataset's test split. Prints a table and writes JSON. `kiln train`
//! scores its runs with the same [`Evaluator`].

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_data::{Dataset, DatasetKind, Split};
use kiln_eval::classifier::{dataset_images, Classifier};
use kiln_eval::frechet::{frechet_distance_of_features, Features};
use kiln_eval::scores::{
    class_coverage_of_probabilities, classifier_score, precision_recall, Coverage, PrecisionRecall,
    DEFAULT_NEIGHBOURS,
};
use kiln_gan::GanTrainer;
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};
use serde::Serialize;

use crate::train::DATASET_KEY;

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
}

/// Samples drawn from a checkpoint when --n is not given.
pub const DEFAULT_SAMPLES: usize = 10_000;
/// Latents per generator call while sampling.
const SAMPLE_BATCH: usize = 500;

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
    pub seconds: f64,
}

pub fn eval(options: EvalOptions) -> Result<String, String> {
    crate::train::check_device(options.device)?;
    let started = Instant::now();
    let (images, source, dataset, json) = match (&options.checkpoint, &options.samples) {
        (Some(checkpoint), None) => {
            let (images, dataset) = sample_checkpoint(checkpoint, &options)?;
            // A run's checkpoint (runs/x/checkpoints/latest.safetensors) → runs/x/eval.json.
            let run = checkpoint
                .parent()
                .filter(|p| p.ends_with("checkpoints"))
                .and_then(Path::parent);
            let json = match run {
                Some(run) => run.join("eval.json"),
                None => checkpoint.with_extension("eval.json"),
            };
            (images, checkpoint.display().to_string(), dataset, json)
        }
        (None, Some(file)) => {
            let images = read_images(file, options.n)?;
            let dataset = options.dataset.unwrap_or(DatasetKind::Mnist);
            (
                images,
                file.display().to_string(),
                dataset,
                file.with_extension("eval.json"),
            )
        }
        _ => return Err("give one of --checkpoint or --samples".to_string()),
    };
    let json = options.json.clone().unwrap_or(json);
    let evaluator = Evaluator::new(
        dataset,
        options.data_dir.as_deref(),
        options.classifier.as_deref(),
        images.device(),
    )?;
    let mut report = evaluator.score(&images)?;
    report.source = source;
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
            seconds: started.elapsed().as_secs_f64(),
        })
    }
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

/// `n` samples from a GAN checkpoint (seeded latents; the conditional GAN cycles through the
/// digits) and the dataset its run trained on.
fn sample_checkpoint(path: &Path, options: &EvalOptions) -> Result<(Tensor, DatasetKind), String> {
    let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
    let context = path.display().to_string();
    let trainer = GanTrainer::from_checkpoint(&checkpoint, options.device, &context)
        .map_err(|e| e.to_string())?;
    let trained_on = match checkpoint.meta(DATASET_KEY) {
        Some(name) => Some(
            DatasetKind::from_name(name)
                .ok_or_else(|| format!("{context}: trained on an unknown dataset `{name}`"))?,
        ),
        None => None,
    };
    let dataset = options.dataset.or(trained_on).unwrap_or(DatasetKind::Mnist);
    let n = options.n.unwrap_or(DEFAULT_SAMPLES);
    let images = generate(&trainer, n, options.seed, options.device)?;
    Ok((images, dataset))
}

/// `n` images `[n, 1, 28, 28]` from a trainer's generator: latents from the Philox stream
/// `seed`, and for the conditional GAN the digits 0, 1, .., 9, 0, .. in turn.
pub fn generate(
    trainer: &GanTrainer,
    n: usize,
    seed: u64,
    device: Device,
) -> Result<Tensor, String> {
    if n < 2 * DEFAULT_NEIGHBOURS {
        return Err(format!(
            "--n {n}: score at least {} samples",
            2 * DEFAULT_NEIGHBOURS
        ));
    }
    let mut generator = Generator::new(seed);
    let latent_dim = trainer.config().latent_dim;
    let mut batches = Vec::new();
    for start in (0..n).step_by(SAMPLE_BATCH) {
        let size = SAMPLE_BATCH.min(n - start);
        let z = Tensor::randn(
            [size, latent_dim],
            0.0,
            1.0,
            DType::F32,
            device,
            &mut generator,
        )
        .map_err(|e| e.to_string())?;
        let labels = trainer
            .config()
            .architecture
            .is_conditional()
            .then(|| {
                let digits = (start..start + size).map(|i| (i % 10) as u32).collect();
                Tensor::from_vec(digits, [size], device)
            })
            .transpose()
            .map_err(|e| e.to_string())?;
        batches.push(
            trainer
                .sample(&z, labels.as_ref())
                .map_err(|e| e.to_string())?,
        );
    }
    Tensor::cat(&batches.iter().collect::<Vec<_>>(), 0).map_err(|e| e.to_string())
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
    kiln_data::write_file_atomically(path, |out| {
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
    let rows = [
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
        ("time", format!("{:.1} s", report.seconds)),
    ];
    rows.iter()
        .map(|(label, value)| format!("{label:<20}{value}\n"))
        .collect()
}
