//! The training loop, written once: batches from a [`Loader`] in the order the model's seed
//! gives, resumed mid-epoch where the trainer's step count says, each step's metrics read only
//! when an [`Observer`] wants them, a NaN or infinite loss stopping the run, and the observer
//! told of every step and every epoch's end. `kiln train` observes with its run folder
//! ([`crate::run`]); tests and examples with a closure ([`train_steps`]).

use kiln_data::{Dataset, Loader, LoaderOptions, Shard};
use kiln_tensor::Device;

use crate::error::{Result, TrainError};
use crate::trainer::{StepMetrics, Trainer};

/// Whether the loop goes on after an observer's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the loop now (after this step or epoch end); [`fit`] returns [`Ending::Stopped`].
    Stop,
}

/// How [`fit`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The trainer reached the step asked for.
    Completed,
    /// The observer asked to stop at this step.
    Stopped { step: u64 },
}

/// What the loop reports to, and asks of, its user.
pub trait Observer {
    /// Whether step `step`'s metrics are read (a GPU synchronisation). A step whose metrics are
    /// not read is not checked for NaN.
    fn wants_metrics(&mut self, _step: u64) -> bool {
        true
    }
    /// Step `step` (counted from 1 over the whole run) is done; `metrics` when they were read.
    fn after_step(
        &mut self,
        trainer: &dyn Trainer,
        step: u64,
        metrics: Option<&dyn StepMetrics>,
    ) -> Result<Flow>;
    /// An epoch ended at `step`, or the run did (`step` = the last step, maybe mid-epoch).
    fn after_epoch(&mut self, _trainer: &dyn Trainer, _step: u64) -> Result<Flow> {
        Ok(Flow::Continue)
    }
}

/// Trains `trainer` on `loader`'s batches until it has done `total` steps, from wherever its
/// step count stands (a resumed run continues mid-epoch with the very batches it would have
/// had). A non-finite loss in metrics that were read ends the loop with
/// [`TrainError::Diverged`].
pub fn fit(
    trainer: &mut dyn Trainer,
    loader: &Loader,
    total: u64,
    observer: &mut dyn Observer,
) -> Result<Ending> {
    let per_epoch = loader.batches_per_epoch() as u64;
    if per_epoch == 0 {
        return Err(TrainError::refused(
            "the batch size is larger than the training set",
        ));
    }
    while trainer.steps_done() < total {
        let epoch = trainer.steps_done() / per_epoch;
        let skip = (trainer.steps_done() % per_epoch) as usize;
        for batch in loader.epoch(epoch).skip(skip) {
            let pending = trainer.step(&batch?)?;
            let step = trainer.steps_done();
            let metrics = match observer.wants_metrics(step) {
                true => Some(pending.read()?),
                false => None,
            };
            if let Some((name, value)) = metrics.as_ref().and_then(|m| m.non_finite()) {
                return Err(TrainError::Diverged { step, name, value });
            }
            if observer.after_step(trainer, step, metrics.as_deref())? == Flow::Stop {
                return Ok(Ending::Stopped { step });
            }
            if step == total {
                break;
            }
        }
        let step = trainer.steps_done();
        if observer.after_epoch(trainer, step)? == Flow::Stop {
            return Ok(Ending::Stopped { step });
        }
    }
    Ok(Ending::Completed)
}

/// The loader `kiln train` makes for `trainer` over `dataset` on `device`, giving this process
/// `shard` of each batch ([`Shard::WHOLE`] but in a data-parallel run).
pub fn loader_for(
    trainer: &dyn Trainer,
    dataset: &Dataset,
    device: Device,
    shard: Shard,
) -> Result<Loader> {
    let batching = trainer.batching();
    let loader = Loader::new(
        dataset,
        LoaderOptions {
            batch_size: batching.batch_size,
            drop_last: batching.drop_last,
            scale: batching.scale,
            seed: batching.seed,
            device,
            shard,
        },
    )?;
    if loader.batches_per_epoch() == 0 {
        return Err(TrainError::refused(format!(
            "--batch-size {} is larger than the {} training images",
            batching.batch_size,
            dataset.len()
        )));
    }
    Ok(loader)
}

/// Trains `trainer` for `steps` more steps on `dataset` with `kiln train`'s batches, calling
/// `each` with every step's metrics (all read) — the loop for tests, benches and examples. A
/// NaN or infinite loss ends it with [`TrainError::Diverged`].
pub fn train_steps(
    trainer: &mut dyn Trainer,
    dataset: &Dataset,
    steps: u64,
    mut each: impl FnMut(u64, &dyn StepMetrics),
) -> Result<()> {
    struct Each<F>(F);
    impl<F: FnMut(u64, &dyn StepMetrics)> Observer for Each<F> {
        fn after_step(
            &mut self,
            _: &dyn Trainer,
            step: u64,
            metrics: Option<&dyn StepMetrics>,
        ) -> Result<Flow> {
            (self.0)(step, metrics.expect("every step's metrics are read"));
            Ok(Flow::Continue)
        }
    }
    let loader = loader_for(trainer, dataset, trainer.device(), Shard::WHOLE)?;
    let total = trainer.steps_done() + steps;
    fit(trainer, &loader, total, &mut Each(&mut each)).map(|_| ())
}
