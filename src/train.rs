//! `kiln train <gan|dcgan|cgan|wgan-gp|vae|conv-vae>`: the loop around a [`Model`] that a
//! user sees — the run folder, progress, metrics, sample grids, loss plot and checkpoints —
//! and the rules that keep a run safe: a NaN stops it without overwriting the last good
//! checkpoint, Ctrl-C saves one and exits, and `--resume` continues exactly where the
//! checkpoint left off. One loop for every model; a VAE run also logs its test negative
//! ELBO at each epoch's end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_autoregressive::{PixelCnnConfig, PixelCnnTrainer, PixelLikelihood};
use kiln_data::{Dataset, DatasetKind, Loader, LoaderOptions, Scale, Split};
use kiln_diffusion::{DdpmConfig, DdpmTrainer};
use kiln_gan::{GanConfig, GanTrainer};
use kiln_nn::checkpoint::Checkpoint;
use kiln_run::{plot, Interrupt, MetricsLog, Progress, RunDir, Throughput};
use kiln_tensor::{Device, Tensor};
use kiln_vae::{ElboReport, Likelihood, VaeConfig, VaeTrainer};
use serde::Serialize;

use crate::eval::Evaluator;
use crate::models::{Model, ModelKind, StepMetrics};

/// What `kiln train` was asked to do (the parsed command line).
pub struct TrainOptions {
    pub model: ModelKind,
    /// `--dataset`, if given: a fresh run's default is MNIST, a resumed run's the checkpoint's.
    pub dataset: Option<DatasetKind>,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub quiet: bool,
    pub log_every: u64,
    /// Samples scored by kiln-eval at the end of the run (0: no evaluation; default: the
    /// model's [`ModelKind::default_eval_samples`]).
    pub eval_samples: Option<usize>,
    /// Also score every this many epochs (0: only at the end).
    pub eval_every: u64,
    /// Settings only the VAEs have.
    pub vae: VaeOptions,
    /// The PixelCNN's pixel distribution (`--likelihood bernoulli|categorical`).
    pub pixel_likelihood: Option<PixelLikelihood>,
    /// The DDPM's U-Net widths (3) or the PixelCNN's hidden channels (1).
    pub channels: Option<Vec<usize>>,
}

impl TrainOptions {
    /// The dataset the run trains on (after [`train`] has settled a resumed run's).
    fn dataset(&self) -> DatasetKind {
        self.dataset.unwrap_or(DatasetKind::Mnist)
    }
}

/// `kiln train vae|conv-vae`'s own settings (`None`: the model's default).
#[derive(Default)]
pub struct VaeOptions {
    pub latent_dim: Option<usize>,
    pub likelihood: Option<Likelihood>,
    pub beta: Option<f64>,
    pub kl_warmup_steps: Option<u64>,
}

impl VaeOptions {
    /// Whether any was given.
    pub fn any(&self) -> bool {
        self.latent_dim.is_some()
            || self.likelihood.is_some()
            || self.beta.is_some()
            || self.kl_warmup_steps.is_some()
    }
}

/// How a training command ended when it did not fail.
pub enum Finish {
    Completed(String),
    /// Ctrl-C: a checkpoint was written; the message says where and how to resume.
    Interrupted(String),
}

/// The checkpoint metadata key naming the dataset a run trained on.
pub(crate) const DATASET_KEY: &str = "kiln.dataset";
/// Images in each epoch's sample grid (8 x 8).
const GRID_IMAGES: usize = 64;
/// The seed of the reparameterisation noise a VAE's test ELBO is measured with: fixed, so the
/// figures of two epochs or two runs compare.
pub(crate) const TEST_ELBO_SEED: u64 = 0x7E57;

/// config.json: everything that defines the run.
#[derive(Serialize)]
struct RunRecord {
    kiln_version: &'static str,
    model: serde_json::Value,
    dataset: &'static str,
    data_dir: String,
    device: String,
    steps_per_epoch: u64,
    total_steps: u64,
    epochs: f64,
    resumed_from: Option<String>,
}

/// The line metrics.jsonl gets at a VAE epoch's end: the negative ELBO of the test split.
#[derive(Serialize)]
struct TestRecord {
    step: u64,
    epoch: f64,
    #[serde(flatten)]
    metrics: TestMetrics,
}

/// What a model measures on the test split at each epoch's end (a GAN: nothing).
#[derive(Serialize)]
#[serde(untagged)]
enum TestMetrics {
    Vae {
        test_neg_elbo: f64,
        test_reconstruction: f64,
        test_kl: f64,
    },
    Ddpm {
        test_loss: f64,
    },
    PixelCnn {
        test_nll: f64,
        test_bits_per_dim: f64,
    },
}

/// The test split's measure of `model` at an epoch's end, and its line for the terminal.
fn test_metrics(model: &Model, test: &Tensor) -> Result<(TestMetrics, String), String> {
    let error = |e: kiln_nn::NnError| e.to_string();
    Ok(match model {
        Model::Gan(_) => unreachable!("GANs have no test split measure"),
        Model::Vae(trainer) => {
            let report = trainer.evaluate(test, TEST_ELBO_SEED).map_err(error)?;
            let metrics = TestMetrics::Vae {
                test_neg_elbo: report.neg_elbo,
                test_reconstruction: report.reconstruction,
                test_kl: report.kl,
            };
            (metrics, test_line(&report))
        }
        Model::Ddpm(trainer) => {
            let report = trainer.evaluate(test, TEST_LOSS_SEED).map_err(error)?;
            let line = format!(
                "test noise-prediction MSE {:.4} (averaged weights) over {} images",
                report.loss, report.images
            );
            (
                TestMetrics::Ddpm {
                    test_loss: report.loss,
                },
                line,
            )
        }
        Model::PixelCnn(trainer) => {
            let report = trainer.evaluate(test, TEST_BINARIZE_SEED).map_err(error)?;
            let metrics = TestMetrics::PixelCnn {
                test_nll: report.nll,
                test_bits_per_dim: report.bits_per_dim,
            };
            (metrics, pixelcnn_test_line(&report))
        }
    })
}

pub(crate) fn pixelcnn_test_line(report: &kiln_autoregressive::NllReport) -> String {
    format!(
        "test NLL {:.2} nats ({:.4} bits/dim) over {} images",
        report.nll, report.bits_per_dim, report.images
    )
}

/// The seed of the DDPM's test loss draws (steps and noise).
pub(crate) const TEST_LOSS_SEED: u64 = 0x7E58;
/// The seed of the test split's binarization for the Bernoulli PixelCNN: one fixed draw,
/// as binarized MNIST is one fixed set.
pub(crate) const TEST_BINARIZE_SEED: u64 = 0xB1A;

/// One line of metrics.jsonl.
#[derive(Serialize)]
struct MetricsRecord {
    step: u64,
    epoch: f64,
    #[serde(flatten)]
    metrics: StepMetrics,
    images_per_s: f64,
    elapsed_s: f64,
}

pub fn train(mut options: TrainOptions) -> Result<Finish, String> {
    let started = Instant::now();
    check_device(options.device)?;
    if options.vae.any() && !matches!(options.model, ModelKind::Vae(_)) {
        return Err(format!(
            "--latent-dim, --likelihood {{bernoulli|gaussian}}, --beta and --kl-warmup-steps are settings of the VAEs, not of {}",
            options.model
        ));
    }
    let channels_problem = match (&options.channels, options.model) {
        (None, _) => None,
        (Some(c), ModelKind::Ddpm) => (c.len() != 3)
            .then(|| "--channels takes three numbers for the DDPM, e.g. 16,32,64".to_string()),
        (Some(c), ModelKind::PixelCnn) => (c.len() != 1)
            .then(|| "--channels takes one number for the PixelCNN, e.g. 32".to_string()),
        (Some(_), other) => Some(format!(
            "--channels is a setting of the DDPM and the PixelCNN, not of {other}"
        )),
    };
    if let Some(problem) = channels_problem {
        return Err(problem);
    }
    if options.pixel_likelihood.is_some() && options.model != ModelKind::PixelCnn {
        return Err(format!(
            "--likelihood categorical is a setting of the PixelCNN, not of {}",
            options.model
        ));
    }
    // The checkpoint first: a wrong path or another model's checkpoint fails before any work.
    let mut model = match &options.resume {
        Some(path) => {
            let (model, trained_on) = resume(&options, path)?;
            options.dataset = Some(trained_on);
            model
        }
        None => new_model(&options)?,
    };
    let dataset = Dataset::load(options.dataset(), Split::Train, options.data_dir.as_deref())
        .map_err(|e| e.to_string())?;
    // A VAE measures its test negative ELBO at every epoch's end.
    let test_images = match model {
        Model::Gan(_) => None,
        _ => Some(test_split(&options, model.scale())?),
    };
    let batch_size = model.batch_size();
    let loader = Loader::new(
        &dataset,
        LoaderOptions {
            batch_size,
            drop_last: model.drop_last(),
            scale: model.scale(),
            seed: model.seed(),
            device: options.device,
        },
    )
    .map_err(|e| e.to_string())?;
    let per_epoch = loader.batches_per_epoch() as u64;
    if per_epoch == 0 {
        return Err(format!(
            "--batch-size {batch_size} is larger than the {} training images",
            dataset.len()
        ));
    }
    let total = match (options.steps, options.epochs) {
        (Some(steps), _) => steps,
        (None, epochs) => epochs.unwrap_or(options.model.default_epochs()) * per_epoch,
    };
    let start = model.steps_done();
    if start >= total {
        return Err(format!(
            "the checkpoint is at step {start}, and this run ends at step {total}: ask for more \
             --epochs or --steps to continue it"
        ));
    }

    let out = run_folder(&options)?;
    let run = RunDir::create(&out).map_err(|e| e.to_string())?;
    run.write_config(&RunRecord {
        kiln_version: env!("CARGO_PKG_VERSION"),
        model: model.config_json()?,
        dataset: options.dataset().name(),
        data_dir: dataset.dir().display().to_string(),
        device: options.device.to_string(),
        steps_per_epoch: per_epoch,
        total_steps: total,
        epochs: total as f64 / per_epoch as f64,
        resumed_from: options.resume.as_ref().map(|p| p.display().to_string()),
    })
    .map_err(|e| e.to_string())?;
    let mut metrics_log = MetricsLog::open(run.metrics_path()).map_err(|e| e.to_string())?;
    // Lines logged after the checkpoint by the interrupted run are logged again now.
    metrics_log
        .truncate_after(start)
        .map_err(|e| e.to_string())?;
    let checkpoint_path = run.latest_checkpoint_path();
    let interrupt = Interrupt::install().map_err(|e| e.to_string())?;
    let mut progress = Progress::new(total, start, options.quiet);
    progress.println(format!(
        "training {} on {} ({} images, {per_epoch} steps of {batch_size} per epoch) on {}; run folder {}{}",
        options.model,
        options.dataset().name(),
        dataset.len(),
        options.device,
        out.display(),
        if start > 0 {
            format!(", resuming at step {start}")
        } else {
            String::new()
        }
    ));

    let eval_samples = options
        .eval_samples
        .unwrap_or(options.model.default_eval_samples());
    let mut throughput = Throughput::new();
    let mut evaluator = None;
    let mut last_saved = (start > 0).then_some(start);
    let mut last = None;
    let dataset_name = options.dataset().name();
    let save = |model: &Model| -> Result<(), String> {
        let mut checkpoint = model.checkpoint()?;
        // Which data the run learned, so `kiln eval` compares with the right dataset.
        checkpoint.set_meta(DATASET_KEY, dataset_name);
        checkpoint.save(&checkpoint_path).map_err(|e| e.to_string())
    };
    while model.steps_done() < total {
        let epoch = model.steps_done() / per_epoch;
        let skip = (model.steps_done() % per_epoch) as usize;
        for batch in loader.epoch(epoch).skip(skip) {
            let batch = batch.map_err(|e| e.to_string())?;
            let pending = model.step(&batch)?;
            let step = model.steps_done();
            throughput.record(batch_size as u64);
            let scheduled = step % options.log_every == 0 || step % per_epoch == 0 || step == total;
            // On a GPU the metrics are read back (a synchronisation) only when they are logged
            // or the run is about to save; on the CPU reading them costs nothing, so every
            // step is checked for divergence.
            let on_gpu = matches!(options.device, Device::Cuda(_));
            let read = scheduled || !on_gpu || interrupt.requested();
            if !read {
                progress.inc(1);
                continue;
            }
            let metrics = pending.read()?;
            if let Some((name, value)) = metrics.non_finite() {
                progress.finish();
                let kept = match last_saved {
                    Some(saved) => format!(
                        "the last good checkpoint is {} (step {saved})",
                        checkpoint_path.display()
                    ),
                    None => "no checkpoint had been saved yet".to_string(),
                };
                return Err(format!(
                    "step {step} (epoch {}): {name} is {value}; training stopped and {kept}",
                    epoch + 1
                ));
            }
            let record = MetricsRecord {
                step,
                epoch: step as f64 / per_epoch as f64,
                metrics,
                images_per_s: throughput.per_second().unwrap_or(0.0),
                elapsed_s: started.elapsed().as_secs_f64(),
            };
            if scheduled {
                metrics_log.append(&record).map_err(|e| e.to_string())?;
            }
            progress.set_message(status(&record, epoch, total.div_ceil(per_epoch)));
            progress.inc(1);
            last = Some(record);
            if interrupt.requested() {
                save(&model)?;
                progress.finish();
                return Ok(Finish::Interrupted(format!(
                    "interrupted at step {step}; checkpoint saved to {}\nresume with: kiln train {} --resume {}",
                    checkpoint_path.display(),
                    options.model,
                    checkpoint_path.display()
                )));
            }
            if step == total {
                break;
            }
        }
        // End of an epoch (or of the run): the test ELBO, a sample grid, a checkpoint, the plot.
        let step = model.steps_done();
        let epochs_done = step as f64 / per_epoch as f64;
        if let Some(test) = &test_images {
            let (metrics, line) = test_metrics(&model, test)?;
            metrics_log
                .append(&TestRecord {
                    step,
                    epoch: epochs_done,
                    metrics,
                })
                .map_err(|e| e.to_string())?;
            progress.println(format!("epoch {epochs_done:.2}: {line}"));
        }
        let grid = if step % per_epoch == 0 {
            run.sample_path((step / per_epoch) as usize)
        } else {
            run.samples_dir().join(format!("step_{step:07}.png"))
        };
        let images = model.grid_images(GRID_IMAGES)?;
        kiln_data::save_grid(&images, &grid, Scale::MinusOneToOne, 8, 2)
            .map_err(|e| e.to_string())?;
        save(&model)?;
        last_saved = Some(step);
        draw_plot(&run, &model)?;
        progress.println(format!(
            "epoch {epochs_done:.2}: samples {}, checkpoint {}",
            grid.display(),
            checkpoint_path.display()
        ));
        let epoch_done = step % per_epoch == 0;
        let scheduled = options.eval_every > 0
            && epoch_done
            && (step / per_epoch).is_multiple_of(options.eval_every);
        if eval_samples > 0 && (scheduled || step == total) {
            let line = score(
                &model,
                &options,
                &run,
                (step, per_epoch, eval_samples),
                &mut evaluator,
            );
            progress.println(line);
        }
    }
    progress.finish();
    let last = last.expect("at least one step ran");
    let elapsed = started.elapsed().as_secs_f64();
    let trained = total - start;
    Ok(Finish::Completed(format!(
        "done: {} steps ({:.2} epochs) in {} ({:.0} images/s); final {}\nrun folder {}: config.json, metrics.jsonl, {}, samples/, {}",
        trained,
        trained as f64 / per_epoch as f64,
        kiln_run::format_duration(started.elapsed()),
        (trained * batch_size as u64) as f64 / elapsed,
        last.metrics.losses(),
        out.display(),
        file_name(&run.plot_path()),
        checkpoint_path
            .strip_prefix(&out)
            .unwrap_or(&checkpoint_path)
            .display()
    )))
}

/// "test -ELBO 127.05 nats (reconstruction 107.97, KL 19.08) over 10000 images"
pub(crate) fn test_line(report: &ElboReport) -> String {
    format!(
        "test -ELBO {:.2} nats (reconstruction {:.2}, KL {:.2}) over {} images",
        report.neg_elbo, report.reconstruction, report.kl, report.images
    )
}

/// The test split of the run's dataset as one tensor `[N, 1, 28, 28]` in `scale`.
fn test_split(options: &TrainOptions, scale: Scale) -> Result<Tensor, String> {
    let test = Dataset::load(options.dataset(), Split::Test, options.data_dir.as_deref())
        .map_err(|e| e.to_string())?;
    crate::eval::split_images(&test, scale, options.device)
}

/// A fresh run of the model asked for, with the command line's settings over its defaults.
fn new_model(options: &TrainOptions) -> Result<Model, String> {
    let model = match options.model {
        ModelKind::Gan(architecture) => {
            let mut config = GanConfig::new(architecture);
            if let Some(batch_size) = options.batch_size {
                config.batch_size = batch_size;
            }
            if let Some(lr) = options.lr {
                config.lr = lr;
            }
            if let Some(seed) = options.seed {
                config.seed = seed;
            }
            GanTrainer::new(config, options.device).map(Model::Gan)
        }
        ModelKind::Vae(architecture) => {
            let mut config = VaeConfig::new(architecture);
            let vae = &options.vae;
            config.batch_size = options.batch_size.unwrap_or(config.batch_size);
            config.lr = options.lr.unwrap_or(config.lr);
            config.seed = options.seed.unwrap_or(config.seed);
            config.latent_dim = vae.latent_dim.unwrap_or(config.latent_dim);
            config.likelihood = vae.likelihood.unwrap_or(config.likelihood);
            config.beta = vae.beta.unwrap_or(config.beta);
            config.kl_warmup_steps = vae.kl_warmup_steps.unwrap_or(config.kl_warmup_steps);
            VaeTrainer::new(config, options.device).map(Model::Vae)
        }
        ModelKind::Ddpm => {
            let mut config = DdpmConfig::default();
            config.batch_size = options.batch_size.unwrap_or(config.batch_size);
            config.lr = options.lr.unwrap_or(config.lr);
            config.seed = options.seed.unwrap_or(config.seed);
            if let Some([c0, c1, c2]) = options.channels.as_deref() {
                config.channels = [*c0, *c1, *c2];
            }
            DdpmTrainer::new(config, options.device).map(|t| Model::Ddpm(Box::new(t)))
        }
        ModelKind::PixelCnn => {
            let mut config = PixelCnnConfig::new();
            config.batch_size = options.batch_size.unwrap_or(config.batch_size);
            config.lr = options.lr.unwrap_or(config.lr);
            config.seed = options.seed.unwrap_or(config.seed);
            config.likelihood = options.pixel_likelihood.unwrap_or(config.likelihood);
            if let Some([hidden]) = options.channels.as_deref() {
                config.hidden_channels = *hidden;
            }
            PixelCnnTrainer::new(config, options.device).map(Model::PixelCnn)
        }
    };
    model.map_err(|e| e.to_string())
}

/// Scores the model with kiln-eval (`options.eval_samples` samples against the test split;
/// for a VAE also its test ELBO and reconstructions), writes `eval.json` (and, between
/// epochs, `eval/step_NNNNNNN.json`) into the run folder, and returns a line for the log.
/// The evaluator (classifier and test-split features) is made on the first call and kept in
/// `evaluator` for later ones. A failure to evaluate (no classifier for the dataset, say) is
/// reported in that line, not as an error: the training itself succeeded.
fn score(
    model: &Model,
    options: &TrainOptions,
    run: &RunDir,
    (step, per_epoch, samples): (u64, u64, usize),
    evaluator: &mut Option<Evaluator>,
) -> String {
    let result = (|| {
        if evaluator.is_none() {
            let data_dir = options.data_dir.as_deref();
            *evaluator = Some(Evaluator::new(
                options.dataset(),
                data_dir,
                None,
                options.device,
            )?);
        }
        let evaluator = evaluator.as_ref().expect("made above");
        let settings = crate::eval::ModelScoring {
            samples,
            seed: EVAL_SEED,
            sampler: kiln_diffusion::Sampler::DEFAULT,
            importance: (0, None),
            quiet: true,
        };
        let mut report = evaluator.score_model(model, &settings)?;
        report.source = format!("the {} at step {step}", options.model);
        let path = run.path().join("eval.json");
        crate::eval::write_json(&report, &path)?;
        let history = run.path().join("eval").join(format!("step_{step:07}.json"));
        std::fs::create_dir_all(run.path().join("eval"))
            .map_err(|e| format!("{}: {e}", history.display()))?;
        crate::eval::write_json(&report, &history)?;
        Ok::<_, String>(report)
    })();
    match result {
        Ok(report) => {
            let mut line = format!(
                "eval at epoch {:.2}: Fréchet distance {:.3}, classifier score {:.3}, {} of 10 classes >= 5%, precision {:.3}, recall {:.3}",
                step as f64 / per_epoch as f64,
                report.frechet_distance,
                report.classifier_score,
                report.coverage.classes_at_least_5_percent,
                report.precision_recall.precision,
                report.precision_recall.recall,
            );
            if let Some(vae) = &report.vae {
                let r = &vae.reconstruction;
                line += &format!(
                    "; reconstructions MSE {:.5}, PSNR {:.2} dB, SSIM {:.4}",
                    r.mse, r.psnr, r.ssim
                );
            }
            if let Some(test) = &report.pixelcnn {
                line += &format!("; {}", pixelcnn_test_line(test));
            }
            let how = report
                .sampler
                .as_ref()
                .map_or(String::new(), |sampler| format!(", {sampler}"));
            line + &format!(" ({} samples{how}; eval.json)", report.samples)
        }
        Err(message) => format!("eval skipped: {message}"),
    }
}

/// The latents' seed for evaluation samples: fixed, so scores of two runs compare.
const EVAL_SEED: u64 = 0x5EED;

/// "epoch 3/20 · loss_d 0.61 · loss_g 1.92 · D(x) 0.71 · D(G(z)) 0.30 · 2400 img/s"
fn status(record: &MetricsRecord, epoch: u64, epochs: u64) -> String {
    format!(
        "epoch {}/{epochs} · {} · {:.0} img/s",
        epoch + 1,
        record.metrics.losses(),
        record.images_per_s
    )
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The loss plot from the whole metrics file (steps before a resume included).
fn draw_plot(run: &RunDir, model: &Model) -> Result<(), String> {
    let (fields, title, y_label) = model.plot();
    let series = MetricsLog::read_series(run.metrics_path(), fields).map_err(|e| e.to_string())?;
    plot::line_plot(run.plot_path(), &title, &series, "step", y_label).map_err(|e| e.to_string())
}

/// A device the tensors can live on, or the one-line reason it cannot be used.
pub(crate) fn check_device(device: Device) -> Result<(), String> {
    match kiln_tensor::Tensor::zeros([1], kiln_tensor::DType::F32, device) {
        Ok(_) => Ok(()),
        Err(kiln_tensor::Error::DeviceUnavailable { reason, .. }) => {
            Err(format!("--device {device}: {reason}; use --device cpu"))
        }
        Err(other) => Err(format!("--device {device}: {other}")),
    }
}

/// The dataset a checkpoint records it trained on (`kiln.dataset`), if it records one.
pub(crate) fn trained_on(
    checkpoint: &Checkpoint,
    context: &str,
) -> Result<Option<DatasetKind>, String> {
    checkpoint
        .meta(DATASET_KEY)
        .map(|name| {
            DatasetKind::from_name(name)
                .ok_or_else(|| format!("{context}: trained on an unknown dataset `{name}`"))
        })
        .transpose()
}

/// The run of the checkpoint at `path`, which must hold the model asked for, and the dataset
/// it trained on, which `--dataset` may name but not change (a checkpoint without the record,
/// from before kiln kept it, trained on MNIST).
fn resume(options: &TrainOptions, path: &Path) -> Result<(Model, DatasetKind), String> {
    let checkpoint = Checkpoint::load(path).map_err(|e| e.to_string())?;
    let context = path.display().to_string();
    let kind = ModelKind::of_checkpoint(&checkpoint, &context)?;
    if kind != options.model {
        return Err(format!(
            "{context}: holds a {kind} model, not a {}",
            options.model
        ));
    }
    if options.batch_size.is_some()
        || options.lr.is_some()
        || options.seed.is_some()
        || options.vae.any()
        || options.pixel_likelihood.is_some()
        || options.channels.is_some()
    {
        return Err(
            "--batch-size, --lr, --seed and the model's settings come from the checkpoint when resuming; leave them out"
                .to_string(),
        );
    }
    let trained_on = trained_on(&checkpoint, &context)?.unwrap_or(DatasetKind::Mnist);
    if let Some(asked) = options.dataset.filter(|&asked| asked != trained_on) {
        return Err(format!(
            "--dataset {asked}: {context} trained on {trained_on}; leave --dataset out to continue on it"
        ));
    }
    let model = Model::from_checkpoint(&checkpoint, options.device, &context)?;
    Ok((model, trained_on))
}

/// The run folder: --out; or, resuming `runs/x/checkpoints/latest.safetensors`, `runs/x`; or
/// the first of `runs/<model>`, `runs/<model>-2`, ... that holds no run yet. An explicit --out
/// holding another run's checkpoint is refused rather than overwritten.
fn run_folder(options: &TrainOptions) -> Result<PathBuf, String> {
    let holds_run = |dir: &Path| dir.join("checkpoints").join("latest.safetensors").exists();
    if let Some(out) = &options.out {
        if options.resume.is_none() && holds_run(out) {
            return Err(format!(
                "{} already holds a run; continue it with --resume {} or pick another --out",
                out.display(),
                out.join("checkpoints").join("latest.safetensors").display()
            ));
        }
        return Ok(out.clone());
    }
    if let Some(checkpoint) = &options.resume {
        let folder = checkpoint.parent().filter(|p| p.ends_with("checkpoints"));
        return match folder.and_then(Path::parent) {
            Some(run) => Ok(run.to_path_buf()),
            None => Err(format!(
                "{} is not inside a run's checkpoints/ folder: say where the run goes with --out",
                checkpoint.display()
            )),
        };
    }
    let base = PathBuf::from("runs").join(options.model.name());
    let mut candidate = base.clone();
    let mut n = 2;
    while holds_run(&candidate) {
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    Ok(candidate)
}
