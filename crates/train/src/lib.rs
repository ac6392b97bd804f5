//! kiln's training loop, written once for every model family.
//!
//! - [`Trainer`]: one run of a model — a step with deferred metrics, checkpoints, sample
//!   grids, sampling, its own measures — implemented by kiln-gan, kiln-vae, kiln-diffusion and
//!   kiln-autoregressive; a [`Family`] makes trainers fresh or from a checkpoint, and a
//!   [`Registry`] holds the families a program knows.
//! - [`fit`]: the loop (resume mid-epoch, deferred metric reads, NaN stop) around an
//!   [`Observer`]; [`train_steps`] for tests, benches and examples.
//! - [`run::train`]: the loop as `kiln train` runs it, with a run folder, progress, metrics,
//!   sample grids, the loss plot, checkpoints, Ctrl-C and evaluation.
//! - [`config`]: command-line settings as one override merged into the model's serde config.
//! - [`evaluate`]: the [`Evaluator`] that scores a model's samples against the test split.
//!
//! Training a GAN for 100 steps from a library (see `examples/train_gan.rs` for a whole run):
//!
//! ```no_run
//! # fn families() -> kiln_train::Registry { unimplemented!() }
//! use kiln_data::{Dataset, DatasetKind, Split};
//! use kiln_train::{train_steps, Overrides};
//!
//! let registry = families(); // e.g. Registry::new(&[&kiln_gan::FAMILY, ..])
//! let mut trainer = registry.new_trainer("gan", &Overrides::new(), kiln_tensor::Device::Cpu)?;
//! let mnist = Dataset::load(DatasetKind::Mnist, Split::Train, None)?;
//! train_steps(trainer.as_mut(), &mnist, 100, |step, metrics| {
//!     println!("step {step}: {}", metrics.summary());
//! })?;
//! # Ok::<(), kiln_train::TrainError>(())
//! ```

pub mod classifier;
pub mod config;
mod error;
pub mod evaluate;
mod fit;
pub mod run;
pub mod sample;
mod trainer;

pub use config::{Overrides, Registry};
pub use error::{Result, TrainError};
pub use evaluate::{EvalReport, Evaluator, ModelScoring};
pub use fit::{fit, loader_for, train_steps, Ending, Flow, Observer};
pub use trainer::{
    check_importance, Batching, Family, Importance, OwnScores, PendingMetrics, PlotPanel, PlotSpec,
    SamplerChoice, StepMetrics, TestMeasure, Trainer,
};
