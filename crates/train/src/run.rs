//! A training run as `kiln train` makes it: the loop of [`crate::fit`] observed by a run folder
//! — config.json, metrics.jsonl, progress, sample grids, the loss plot, checkpoints, the test
//! split's measure and the evaluation at epoch ends — and the rules that keep a run safe: a
//! NaN stops it without overwriting the last good checkpoint, Ctrl-C saves one and exits, and
//! `--resume` continues exactly where the checkpoint left off.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_data::{Dataset, DatasetKind, Scale, Shard, Split};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::limits::{at_most, MAX_IMAGES};
use kiln_nn::parallel::DataParallel;
use kiln_run::{plot, Interrupt, MetricsLog, Progress, RunDir, Throughput};
use kiln_tensor::{Device, Tensor};
use serde::Serialize;

use crate::config::{Overrides, Registry};
use crate::error::{Result, TrainError};
use crate::evaluate::{self, Evaluator, ModelScoring};
use crate::fit::{fit, loader_for, Ending, Flow, Observer};
use crate::trainer::{Importance, SamplerChoice, StepMetrics, Trainer};

/// What `kiln train` was asked to do.
pub struct TrainOptions {
    pub model: String,
    /// Settings over the model's defaults (checked against the checkpoint's when resuming).
    pub overrides: Overrides,
    /// A fresh run's default is MNIST, a resumed run's the checkpoint's.
    pub dataset: Option<DatasetKind>,
    pub data_dir: Option<PathBuf>,
    pub device: Device,
    pub epochs: Option<u64>,
    pub steps: Option<u64>,
    pub out: Option<PathBuf>,
    pub resume: Option<PathBuf>,
    pub quiet: bool,
    pub log_every: u64,
    /// Samples scored at the end of the run (0: no evaluation; default: the model's
    /// [`Trainer::default_eval_samples`], scaled to the run's length).
    pub eval_samples: Option<usize>,
    /// Also score every this many epochs (0: only at the end).
    pub eval_every: u64,
    /// How often a checkpoint is written between epoch ends.
    pub checkpoint_every: CheckpointEvery,
    /// The ranks of a data-parallel run (`mpirun -np N kiln train`), if any: each trains on
    /// its shard of every batch, and rank 0 alone writes the run folder.
    pub parallel: Option<DataParallel>,
}

/// How often `kiln train` writes a checkpoint besides each epoch's end, Ctrl-C and the last
/// step: what a kill (the OOM killer, a preempted job) can lose at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointEvery {
    /// Every this many steps.
    Steps(u64),
    /// Once this much time has passed since the last checkpoint.
    Interval(std::time::Duration),
    /// Only at epoch ends, Ctrl-C and the last step.
    EpochEnds,
}

impl CheckpointEvery {
    /// Ten minutes: a kill loses at most that much of a run.
    pub const DEFAULT: CheckpointEvery =
        CheckpointEvery::Interval(std::time::Duration::from_secs(600));
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;

    /// `500` (steps), `30s`, `10m`, `2h`, or `0` (epoch ends only).
    fn from_str(text: &str) -> std::result::Result<CheckpointEvery, String> {
        let bad =
            || format!("{text}: expected a number of steps (500), a time (30s, 10m, 2h) or 0");
        let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
            Some(at) => text.split_at(at),
            None => (text, ""),
        };
        let number: u64 = number.parse().map_err(|_| bad())?;
        let seconds = match unit {
            "" if number == 0 => return Ok(CheckpointEvery::EpochEnds),
            "" => return Ok(CheckpointEvery::Steps(number)),
            "s" => number,
            "m" => number.saturating_mul(60),
            "h" => number.saturating_mul(3600),
            _ => return Err(bad()),
        };
        match seconds {
            0 => Ok(CheckpointEvery::EpochEnds),
            seconds => Ok(CheckpointEvery::Interval(std::time::Duration::from_secs(
                seconds,
            ))),
        }
    }
}

/// How a training run ended when it did not fail.
pub enum Finish {
    Completed(String),
    /// Ctrl-C: a checkpoint was written; the message says where and how to resume.
    Interrupted(String),
}

/// The checkpoint metadata key naming the dataset a run trained on.
pub const DATASET_KEY: &str = "kiln.dataset";
/// Images in each epoch's sample grid (8 x 8).
const GRID_IMAGES: usize = 64;
/// The latents' seed for evaluation samples: fixed, so scores of two runs compare.
const EVAL_SEED: u64 = 0x5EED;
/// The fewest samples a shortened end-of-run evaluation scores.
const MIN_SCALED_EVAL_SAMPLES: usize = 100;
/// The fewest test images a shortened run's per-epoch test measure averages over.
const MIN_SCALED_TEST_IMAGES: usize = 1_000;

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

/// One line of metrics.jsonl.
#[derive(Serialize)]
struct MetricsRecord<'a> {
    step: u64,
    epoch: f64,
    #[serde(flatten)]
    metrics: &'a dyn StepMetrics,
    images_per_s: f64,
    elapsed_s: f64,
}

/// The line metrics.jsonl gets at an epoch's end from a model with a test-split measure.
#[derive(Serialize)]
struct TestRecord<'a> {
    step: u64,
    epoch: f64,
    #[serde(flatten)]
    metrics: &'a dyn erased_serde::Serialize,
}

/// Trains the run `options` asks for: a fresh one of `options.model`, or the checkpoint's.
pub fn train(registry: &Registry, options: TrainOptions) -> Result<Finish> {
    let started = Instant::now();
    check_device(options.device)?;
    // The checkpoint first: a wrong path or another model's checkpoint fails before any work.
    let (mut trainer, dataset_kind) = match &options.resume {
        Some(path) => resume(registry, &options, path)?,
        None => {
            let trainer =
                registry.new_trainer(&options.model, &options.overrides, options.device)?;
            (trainer, options.dataset.unwrap_or(DatasetKind::Mnist))
        }
    };
    let dataset = Dataset::load(dataset_kind, Split::Train, options.data_dir.as_deref())?;
    let shard = match &options.parallel {
        Some(parallel) => join_parallel(trainer.as_mut(), parallel, dataset.len())?,
        None => Shard::WHOLE,
    };
    let loader = loader_for(trainer.as_ref(), &dataset, options.device, shard)?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let family = registry.family(&options.model)?;
    let total = match (options.steps, options.epochs) {
        (Some(steps), _) => steps,
        (None, epochs) => {
            let epochs = epochs.unwrap_or(family.default_epochs(&options.model));
            epochs.checked_mul(per_epoch).ok_or_else(|| {
                TrainError::refused(format!(
                    "--epochs {epochs}: {per_epoch} steps each make more than 2^64 steps"
                ))
            })?
        }
    };
    if let Some(samples) = options.eval_samples {
        at_most(
            "number of evaluation samples (--eval-samples)",
            samples,
            MAX_IMAGES,
        )
        .map_err(TrainError::Refused)?;
    }
    let start = trainer.steps_done();
    if start >= total {
        return Err(TrainError::refused(format!(
            "the checkpoint is at step {start}, and this run ends at step {total}: ask for more \
             --epochs or --steps to continue it"
        )));
    }
    if let Some(parallel) = options.parallel.as_ref().filter(|p| p.rank() > 0) {
        return follow(
            trainer.as_mut(),
            &loader,
            total,
            &options,
            parallel,
            per_epoch,
        );
    }
    let full_run = family.default_epochs(&options.model) * per_epoch;
    let eval_samples = options.eval_samples.unwrap_or_else(|| {
        let default = trainer.default_eval_samples();
        scaled_to_run(default, (total, full_run), MIN_SCALED_EVAL_SAMPLES)
    });

    let out = run_folder(&options)?;
    let run = RunDir::create(&out)?;
    remove_leftovers(&run);
    run.write_config(&RunRecord {
        kiln_version: env!("CARGO_PKG_VERSION"),
        model: trainer.config_json()?,
        dataset: dataset_kind.name(),
        data_dir: dataset.dir().display().to_string(),
        device: options.device.to_string(),
        steps_per_epoch: per_epoch,
        total_steps: total,
        epochs: total as f64 / per_epoch as f64,
        resumed_from: options.resume.as_ref().map(|p| p.display().to_string()),
    })?;
    let mut metrics_log = MetricsLog::open(run.metrics_path())?;
    // Lines logged after the checkpoint by the interrupted run are logged again now.
    metrics_log.truncate_after(start)?;
    let batch_size = trainer.batching().batch_size;
    let mut progress = Progress::new(total, start, options.quiet);
    if let Some(parallel) = &options.parallel {
        progress.println(format!(
            "data-parallel over {} ranks: each takes {} images of every batch of {batch_size}; batch norm {}",
            parallel.world_size(),
            shard.rows(batch_size).len(),
            match parallel.syncs_batch_norm() {
                true => "over the whole batch (--sync-batch-norm)",
                false => "per rank",
            }
        ));
    }
    progress.println(format!(
        "training {} on {} ({} images, {per_epoch} steps of {batch_size} per epoch) on {}; run folder {}{}",
        options.model,
        dataset_kind.name(),
        dataset.len(),
        options.device,
        out.display(),
        if start > 0 {
            format!(", resuming at step {start}")
        } else {
            String::new()
        }
    ));
    if eval_samples > 0 {
        let scaled =
            options.eval_samples.is_none() && eval_samples < trainer.default_eval_samples();
        progress.println(format!(
            "the run ends with an evaluation of {eval_samples} samples{} (--eval-samples 0 skips it)",
            if scaled { ", scaled down to the run's length" } else { "" }
        ));
    }
    // A model with a test-split measure takes it at every epoch's end: on the whole split, or
    // on its first images in the share a shorter run has of the model's default length.
    let test_images = match trainer.has_test_measure() {
        true => {
            let test = Dataset::load(dataset_kind, Split::Test, options.data_dir.as_deref())?;
            let images = scaled_to_run(test.len(), (total, full_run), MIN_SCALED_TEST_IMAGES);
            if images < test.len() {
                progress.println(format!(
                    "the test measure at each epoch's end uses the first {images} of the {} test images, scaled down to the run's length",
                    test.len()
                ));
            }
            let test = evaluate::split_images(&test, trainer.batching().scale, options.device)?;
            Some(test.narrow(0, 0, images)?)
        }
        false => None,
    };
    let checkpoint_path = run.latest_checkpoint_path();
    let mut observer = RunObserver {
        options: &options,
        run: &run,
        dataset: dataset_kind,
        metrics_log,
        progress,
        interrupt: Interrupt::install()?,
        throughput: Throughput::new(),
        started,
        per_epoch,
        total,
        batch_size,
        last_saved: (start > 0).then_some(start),
        last_save_time: Instant::now(),
        last_summary: None,
        test_images,
        eval_samples,
        evaluator: None,
        parallel: options.parallel.clone(),
    };
    let ending = fit(trainer.as_mut(), &loader, total, &mut observer);
    observer.progress.finish();
    if let (Some(parallel), Ok(Ending::Completed)) = (&options.parallel, &ending) {
        check_replicas(
            trainer.as_ref(),
            parallel,
            "parameters at the end of the run",
        )?;
    }
    match ending {
        Err(TrainError::Diverged { step, name, value }) => Err(TrainError::refused(format!(
            "step {step} (epoch {}): {name} is {value}; training stopped and {}",
            (step - 1) / per_epoch + 1,
            observer.kept()
        ))),
        Err(error) => Err(error),
        Ok(Ending::Stopped { step }) => Ok(Finish::Interrupted(format!(
            "interrupted at step {step}; checkpoint saved to {}\nresume with: kiln train {} --resume {}",
            checkpoint_path.display(),
            options.model,
            checkpoint_path.display()
        ))),
        Ok(Ending::Completed) => {
            let elapsed = started.elapsed().as_secs_f64();
            let trained = total - start;
            Ok(Finish::Completed(format!(
                "done: {} steps ({:.2} epochs) in {} ({:.0} images/s); final {}\nrun folder {}: config.json, metrics.jsonl, {}, samples/, {}",
                trained,
                trained as f64 / per_epoch as f64,
                kiln_run::format_duration(started.elapsed()),
                (trained * batch_size as u64) as f64 / elapsed,
                observer.last_summary.unwrap_or_default(),
                out.display(),
                file_name(&run.plot_path()),
                checkpoint_path
                    .strip_prefix(&out)
                    .unwrap_or(&checkpoint_path)
                    .display()
            )))
        }
    }
}

/// How much of `default` (end-of-run samples, test images) a run of `total` steps gets when
/// the model's default run is `full_run` steps: all of it for a run that long or longer, the
/// same share of it (at least `floor`) for a shorter one — a user who asks for 20 steps
/// expects seconds, not the minutes 2,000 DDIM samples take.
fn scaled_to_run(default: usize, (total, full_run): (u64, u64), floor: usize) -> usize {
    if total >= full_run || full_run == 0 {
        return default;
    }
    let share = (default as f64 * total as f64 / full_run as f64).ceil() as usize;
    share.clamp(floor.min(default), default)
}

/// `kiln train`'s side of the loop: the run folder, the terminal, Ctrl-C.
struct RunObserver<'a> {
    options: &'a TrainOptions,
    run: &'a RunDir,
    dataset: DatasetKind,
    metrics_log: MetricsLog,
    progress: Progress,
    interrupt: Interrupt,
    throughput: Throughput,
    started: Instant,
    per_epoch: u64,
    total: u64,
    batch_size: usize,
    last_saved: Option<u64>,
    last_save_time: Instant,
    /// The losses of the last step read, for the closing summary.
    last_summary: Option<String>,
    test_images: Option<Tensor>,
    eval_samples: usize,
    /// Made on the first evaluation and kept for later ones.
    evaluator: Option<Evaluator>,
    /// The other ranks, which stop when this one does.
    parallel: Option<DataParallel>,
}

impl RunObserver<'_> {
    fn logged(&self, step: u64) -> bool {
        logged(self.options.log_every, self.per_epoch, self.total, step)
    }

    /// Whether Ctrl-C has asked the run to stop: on any rank, in a data-parallel run (all
    /// of them ask each other at every step, so they stop at the same one).
    fn interrupted(&self) -> Result<bool> {
        let here = self.interrupt.requested();
        match &self.parallel {
            Some(parallel) => Ok(parallel.any(here)?),
            None => Ok(here),
        }
    }

    /// What is left of the run after a failure: "the last good checkpoint is PATH (step N)".
    fn kept(&self) -> String {
        match self.last_saved {
            Some(saved) => format!(
                "the last good checkpoint is {} (step {saved})",
                self.run.latest_checkpoint_path().display()
            ),
            None => "no checkpoint had been saved yet".to_string(),
        }
    }

    /// Whether a checkpoint is due at `step` (besides epoch ends).
    fn checkpoint_due(&self, step: u64) -> bool {
        match self.options.checkpoint_every {
            CheckpointEvery::Steps(every) => step.is_multiple_of(every),
            CheckpointEvery::Interval(interval) => self.last_save_time.elapsed() >= interval,
            CheckpointEvery::EpochEnds => false,
        }
    }

    /// Writes the run's checkpoint, unless the update left a weight (or an optimizer moment)
    /// NaN or infinite: then the run stops and the last good checkpoint stays. The checkpoint
    /// it replaces becomes `previous.safetensors` (a hard link made before the new one is
    /// renamed into place, so a crash at any moment leaves `latest` or `previous` whole).
    fn save(&mut self, trainer: &dyn Trainer) -> Result<()> {
        let mut checkpoint = trainer.checkpoint()?;
        if let Some(name) = checkpoint.first_non_finite()? {
            return Err(TrainError::refused(format!(
                "step {}: `{name}` holds NaN or infinite values after the update; training stopped and {}",
                trainer.steps_done(),
                self.kept()
            )));
        }
        // Which data the run learned, so `kiln eval` compares with the right dataset.
        checkpoint.set_meta(DATASET_KEY, self.dataset.name());
        let latest = self.run.latest_checkpoint_path();
        if latest.exists() {
            keep_as_previous(&latest, &self.run.previous_checkpoint_path())?;
        }
        checkpoint.save(&latest)?;
        self.last_saved = Some(trainer.steps_done());
        self.last_save_time = Instant::now();
        Ok(())
    }

    /// Scores the model (see [`evaluate`]), writes eval.json and eval/step_NNNNNNN.json, and
    /// returns a line for the log. A failure to evaluate (no classifier for the dataset, say) is
    /// reported in that line, not as an error: the training itself succeeded.
    fn score(&mut self, trainer: &dyn Trainer, step: u64) -> String {
        let mut score = || -> Result<String> {
            if self.evaluator.is_none() {
                self.evaluator = Some(Evaluator::new(
                    self.dataset,
                    self.options.data_dir.as_deref(),
                    None,
                    self.options.device,
                )?);
            }
            let evaluator = self.evaluator.as_ref().expect("made above");
            let settings = ModelScoring {
                samples: self.eval_samples,
                seed: EVAL_SEED,
                sampler: SamplerChoice::default(),
                importance: Importance::default(),
                on_step: &mut |_, _| {},
            };
            let mut report = evaluator.score_model(trainer, settings)?;
            report.source = format!("the {} at step {step}", trainer.name());
            evaluate::write_json(&report, &self.run.path().join("eval.json"))?;
            let history = self.run.path().join("eval");
            std::fs::create_dir_all(&history).map_err(|e| {
                TrainError::refused(format!("{}: cannot create: {e}", history.display()))
            })?;
            evaluate::write_json(&report, &history.join(format!("step_{step:07}.json")))?;
            Ok(evaluate::summary_line(
                &report,
                step as f64 / self.per_epoch as f64,
            ))
        };
        score().unwrap_or_else(|error| format!("eval skipped: {error}"))
    }
}

impl Observer for RunObserver<'_> {
    fn wants_metrics(&mut self, step: u64) -> bool {
        // On a GPU the metrics are read back (a synchronisation) only when they are logged or
        // the run is about to save; on the CPU reading them costs nothing, so every step is
        // checked for divergence.
        let on_gpu = matches!(self.options.device, Device::Cuda(_));
        // Every rank must read the same steps' metrics (they are averaged over the ranks).
        let interrupted = self.parallel.is_none() && self.interrupt.requested();
        self.logged(step) || !on_gpu || interrupted
    }

    fn after_step(
        &mut self,
        trainer: &dyn Trainer,
        step: u64,
        metrics: Option<&dyn StepMetrics>,
    ) -> Result<Flow> {
        self.throughput.record(self.batch_size as u64);
        self.progress.inc(1);
        let interrupted = self.interrupted()?;
        let Some(metrics) = metrics else {
            if interrupted {
                self.save(trainer)?;
                return Ok(Flow::Stop);
            }
            return Ok(Flow::Continue);
        };
        let images_per_s = self.throughput.per_second().unwrap_or(0.0);
        if self.logged(step) {
            self.metrics_log.append(&MetricsRecord {
                step,
                epoch: step as f64 / self.per_epoch as f64,
                metrics,
                images_per_s,
                elapsed_s: self.started.elapsed().as_secs_f64(),
            })?;
        }
        let summary = metrics.summary();
        self.progress.set_message(format!(
            "epoch {}/{} · {summary} · {images_per_s:.0} img/s",
            (step - 1) / self.per_epoch + 1,
            self.total.div_ceil(self.per_epoch),
        ));
        self.last_summary = Some(summary);
        if interrupted {
            self.save(trainer)?;
            return Ok(Flow::Stop);
        }
        // Epoch ends save anyway.
        if self.checkpoint_due(step) && !step.is_multiple_of(self.per_epoch) && step != self.total {
            self.save(trainer)?;
        }
        Ok(Flow::Continue)
    }

    /// The test measure, a sample grid, a checkpoint, the plot, and the evaluation when due.
    fn after_epoch(&mut self, trainer: &dyn Trainer, step: u64) -> Result<Flow> {
        let epochs_done = step as f64 / self.per_epoch as f64;
        if let Some(test) = &self.test_images {
            if let Some(measure) = trainer.test_measure(test)? {
                self.metrics_log.append(&TestRecord {
                    step,
                    epoch: epochs_done,
                    metrics: measure.record.as_ref(),
                })?;
                self.progress
                    .println(format!("epoch {epochs_done:.2}: {}", measure.line));
            }
        }
        let epoch_done = step.is_multiple_of(self.per_epoch);
        let grid = if epoch_done {
            self.run.sample_path((step / self.per_epoch) as usize)
        } else {
            self.run.samples_dir().join(format!("step_{step:07}.png"))
        };
        let images = trainer.grid_images(GRID_IMAGES)?;
        kiln_data::save_grid(&images, &grid, Scale::MinusOneToOne, 8, 2)?;
        self.save(trainer)?;
        draw_plot(self.run, trainer, self.per_epoch)?;
        self.progress.println(format!(
            "epoch {epochs_done:.2}: samples {}, checkpoint {}",
            grid.display(),
            self.run.latest_checkpoint_path().display()
        ));
        let every = self.options.eval_every;
        let scheduled = every > 0 && epoch_done && (step / self.per_epoch).is_multiple_of(every);
        if self.eval_samples > 0 && (scheduled || step == self.total) {
            let line = self.score(trainer, step);
            self.progress.println(line);
        }
        Ok(Flow::Continue)
    }
}

/// Whether `kiln train` logs step `step`'s metrics.
fn logged(log_every: u64, per_epoch: u64, total: u64, step: u64) -> bool {
    step.is_multiple_of(log_every) || step.is_multiple_of(per_epoch) || step == total
}

/// Makes `trainer` one replica of `parallel`'s run and returns this rank's shard of each
/// batch, after checking that every rank starts from the same state (a checksum of the
/// checkpoint's tensors) and that every batch has a row for every rank.
fn join_parallel(
    trainer: &mut dyn Trainer,
    parallel: &DataParallel,
    images: usize,
) -> Result<Shard> {
    let world = parallel.world_size();
    let batching = trainer.batching();
    let last = match batching.drop_last {
        true => batching.batch_size,
        false => match images % batching.batch_size {
            0 => batching.batch_size,
            rest => rest,
        },
    };
    if batching.batch_size.min(last) < world {
        return Err(TrainError::refused(format!(
            "{world} ranks cannot share batches of {} images{}: each rank needs at least one",
            batching.batch_size.min(last),
            if last < batching.batch_size {
                " (the epoch's last)"
            } else {
                ""
            }
        )));
    }
    trainer.set_parallel(parallel.clone())?;
    check_replicas(trainer, parallel, "parameters and state at the start")?;
    Ok(Shard {
        rank: parallel.rank(),
        world,
    })
}

/// Refuses replicas that are not bit-identical to rank 0's.
fn check_replicas(trainer: &dyn Trainer, parallel: &DataParallel, what: &str) -> Result<()> {
    let checkpoint = trainer.checkpoint()?;
    Ok(parallel.check_replicas(checkpoint.tensors(), what)?)
}

/// A data-parallel run's rank other than 0: the same steps on its shard, no files and no
/// terminal output, stopping when rank 0 does (Ctrl-C) or on the same error (the metrics
/// that stop a run are the whole batch's, the same on every rank).
fn follow(
    trainer: &mut dyn Trainer,
    loader: &kiln_data::Loader,
    total: u64,
    options: &TrainOptions,
    parallel: &DataParallel,
    per_epoch: u64,
) -> Result<Finish> {
    struct Follower<'a> {
        parallel: &'a DataParallel,
        interrupt: Interrupt,
        log_every: u64,
        per_epoch: u64,
        total: u64,
        on_gpu: bool,
    }
    impl Observer for Follower<'_> {
        fn wants_metrics(&mut self, step: u64) -> bool {
            logged(self.log_every, self.per_epoch, self.total, step) || !self.on_gpu
        }
        fn after_step(
            &mut self,
            _: &dyn Trainer,
            _: u64,
            _: Option<&dyn StepMetrics>,
        ) -> Result<Flow> {
            match self.parallel.any(self.interrupt.requested())? {
                true => Ok(Flow::Stop),
                false => Ok(Flow::Continue),
            }
        }
    }
    let mut follower = Follower {
        parallel,
        interrupt: Interrupt::install()?,
        log_every: options.log_every,
        per_epoch,
        total,
        on_gpu: matches!(options.device, Device::Cuda(_)),
    };
    match fit(trainer, loader, total, &mut follower)? {
        Ending::Stopped { step } => Ok(Finish::Interrupted(format!(
            "rank {}: interrupted at step {step}",
            parallel.rank()
        ))),
        Ending::Completed => {
            check_replicas(trainer, parallel, "parameters at the end of the run")?;
            Ok(Finish::Completed(String::new()))
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The loss plot from the whole metrics file (steps before a resume included).
fn draw_plot(run: &RunDir, trainer: &dyn Trainer, per_epoch: u64) -> Result<()> {
    let spec = trainer.plot();
    let series: Vec<_> = spec
        .panels
        .iter()
        .map(|panel| MetricsLog::read_series(run.metrics_path(), panel.fields))
        .collect::<std::result::Result<_, _>>()?;
    let panels: Vec<plot::Panel> = spec
        .panels
        .iter()
        .zip(&series)
        .map(|(panel, series)| plot::Panel {
            y_label: panel.y_label,
            series,
        })
        .collect();
    let chart = plot::Chart {
        title: &spec.title,
        x_label: "step",
        panels: &panels,
        steps_per_epoch: Some(per_epoch),
    };
    Ok(plot::draw(run.plot_path(), &chart)?)
}

/// A device the tensors can live on, or the one-line reason it cannot be used.
pub fn check_device(device: Device) -> Result<()> {
    match Tensor::zeros([1], kiln_tensor::DType::F32, device) {
        Ok(_) => Ok(()),
        Err(kiln_tensor::Error::DeviceUnavailable { reason, .. }) => Err(TrainError::refused(
            format!("--device {device}: {reason}; use --device cpu"),
        )),
        Err(other) => Err(TrainError::refused(format!("--device {device}: {other}"))),
    }
}

/// The dataset a checkpoint records it trained on (`kiln.dataset`), if it records one.
pub fn trained_on(checkpoint: &Checkpoint, context: &str) -> Result<Option<DatasetKind>> {
    checkpoint
        .meta(DATASET_KEY)
        .map(|name| {
            DatasetKind::from_name(name).ok_or_else(|| {
                TrainError::refused(format!("{context}: trained on an unknown dataset `{name}`"))
            })
        })
        .transpose()
}

/// The run of the checkpoint at `path`, which must hold the model asked for, with any settings
/// given checked against it, and the dataset it trained on, which `--dataset` may name but not
/// change (a checkpoint without the record, from before kiln kept it, trained on MNIST).
fn resume(
    registry: &Registry,
    options: &TrainOptions,
    path: &Path,
) -> Result<(Box<dyn Trainer>, DatasetKind)> {
    let checkpoint = Checkpoint::load(path)?;
    let context = path.display().to_string();
    let model = registry.model_of(&checkpoint, &context)?;
    if let Some(name) = checkpoint.first_non_finite()? {
        return Err(TrainError::refused(format!(
            "{context}: `{name}` holds NaN or infinite values, so the run cannot continue from it; resume from a checkpoint saved before it diverged"
        )));
    }
    if model != options.model {
        return Err(TrainError::refused(format!(
            "{context}: holds a {model} model, not a {}",
            options.model
        )));
    }
    let trainer = registry.restore(&checkpoint, options.device, &context)?;
    registry.check_resume(trainer.as_ref(), &options.overrides, &context)?;
    let trained_on = trained_on(&checkpoint, &context)?.unwrap_or(DatasetKind::Mnist);
    if let Some(asked) = options.dataset.filter(|&asked| asked != trained_on) {
        return Err(TrainError::refused(format!(
            "--dataset {asked}: {context} trained on {trained_on}; leave --dataset out to continue on it"
        )));
    }
    Ok((trainer, trained_on))
}

/// The run folder: --out; or, resuming `runs/x/checkpoints/latest.safetensors`, `runs/x`; or
/// the first of `runs/<model>`, `runs/<model>-2`, ... that holds no run yet. An explicit --out
/// holding another run's checkpoint is refused rather than overwritten.
fn run_folder(options: &TrainOptions) -> Result<PathBuf> {
    let holds_run = |dir: &Path| dir.join("checkpoints").join("latest.safetensors").exists();
    if let Some(out) = &options.out {
        if options.resume.is_none() && holds_run(out) {
            return Err(TrainError::refused(format!(
                "{} already holds a run; continue it with --resume {} or pick another --out",
                out.display(),
                out.join("checkpoints").join("latest.safetensors").display()
            )));
        }
        return Ok(out.clone());
    }
    if let Some(checkpoint) = &options.resume {
        let folder = checkpoint.parent().filter(|p| p.ends_with("checkpoints"));
        return match folder.and_then(Path::parent) {
            Some(run) => Ok(run.to_path_buf()),
            None => Err(TrainError::refused(format!(
                "{} is not inside a run's checkpoints/ folder: say where the run goes with --out",
                checkpoint.display()
            ))),
        };
    }
    let base = PathBuf::from("runs").join(&options.model);
    let mut candidate = base.clone();
    let mut n = 2;
    while holds_run(&candidate) {
        candidate = PathBuf::from(format!("{}-{n}", base.display()));
        n += 1;
    }
    Ok(candidate)
}

/// Removes what a killed run leaves half-done in its folder: the temporary files of atomic
/// writes (`.name.<pid>.<n>.tmp`) and a `previous` link not yet renamed. Best effort: a file
/// that cannot be removed is left.
fn remove_leftovers(run: &RunDir) {
    for dir in [
        run.path().to_path_buf(),
        run.checkpoints_dir(),
        run.samples_dir(),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let temporary = name.starts_with('.') && name.ends_with(".tmp");
            if temporary || name.ends_with(".safetensors.linking") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Makes `previous` the file `latest` now is: a hard link under a temporary name renamed over
/// `previous`, so `previous` is at every moment a whole checkpoint (the old one or the new one).
fn keep_as_previous(latest: &Path, previous: &Path) -> Result<()> {
    let staging = previous.with_extension("safetensors.linking");
    let _ = std::fs::remove_file(&staging);
    std::fs::hard_link(latest, &staging)
        .and_then(|()| std::fs::rename(&staging, previous))
        .map_err(|e| {
            TrainError::refused(format!(
                "{}: cannot keep as previous: {e}",
                previous.display()
            ))
        })?;
    // When `previous` already was `latest` (a run killed between this and the write that
    // follows it), renaming one link over another to the same file does nothing (POSIX), and
    // the staging name would remain.
    let _ = std::fs::remove_file(&staging);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{scaled_to_run, CheckpointEvery};
    use std::time::Duration;

    #[test]
    fn checkpoint_cadences_parse() {
        let parse = |text: &str| text.parse::<CheckpointEvery>();
        assert_eq!(parse("500"), Ok(CheckpointEvery::Steps(500)));
        assert_eq!(parse("0"), Ok(CheckpointEvery::EpochEnds));
        assert_eq!(parse("0m"), Ok(CheckpointEvery::EpochEnds));
        let every = |seconds| Ok(CheckpointEvery::Interval(Duration::from_secs(seconds)));
        assert_eq!(parse("30s"), every(30));
        assert_eq!(parse("10m"), every(600));
        assert_eq!(parse("2h"), every(7200));
        assert_eq!(CheckpointEvery::DEFAULT, every(600).unwrap());
        for bad in ["", "m", "10x", "-5", "1.5m", "10 m"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_evaluation_shrinks_with_the_run() {
        // A full-length run (or longer) scores the model's default.
        assert_eq!(scaled_to_run(2_000, (938, 938), 100), 2_000);
        assert_eq!(scaled_to_run(2_000, (5_000, 938), 100), 2_000);
        // Half a run: half the samples; 20 steps: the floor.
        assert_eq!(scaled_to_run(2_000, (469, 938), 100), 1_000);
        assert_eq!(scaled_to_run(2_000, (20, 938), 100), 100);
        assert_eq!(scaled_to_run(10_000, (20, 18_740), 1_000), 1_000);
        // A default under the floor stays as it is (a 500-image test split).
        assert_eq!(scaled_to_run(50, (1, 1_000), 100), 50);
        assert_eq!(scaled_to_run(500, (20, 1_000), 1_000), 500);
    }
}
