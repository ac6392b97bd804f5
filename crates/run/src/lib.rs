//! kiln-run: what every kiln trainer (the GAN now; VAE and diffusion later) shares for a
//! training run, so each one does not write its own. The run folder and its file names
//! ([`RunDir`]), the metrics log ([`MetricsLog`]), the loss plot ([`plot::draw`]), the
//! progress bar or log lines ([`Progress`], [`Throughput`]) and Ctrl-C ([`Interrupt`]). Not for
//! training itself: models, losses, optimizers and checkpoints' contents live in kiln-nn and
//! the trainers.
//!
//! Every fault is a [`RunError`] naming the file and what was wrong; nothing here panics on a
//! bad path, a bad metrics file or degenerate plot data.
//!
//! ```no_run
//! use kiln_run::{plot, Interrupt, MetricsLog, Progress, RunDir, Throughput};
//! # #[derive(serde::Serialize)] struct Config { epochs: u64 }
//! # #[derive(serde::Serialize)] struct Record { step: u64, loss_d: f32, loss_g: f32 }
//! # fn main() -> kiln_run::Result<()> {
//! let run = RunDir::create("runs/gan-mnist")?;
//! run.write_config(&Config { epochs: 10 })?;
//! let mut metrics = MetricsLog::open(run.metrics_path())?;
//! let resumed_at = 0; // the checkpoint's step when resuming
//! metrics.truncate_after(resumed_at)?;
//! let interrupt = Interrupt::install()?;
//! let mut progress = Progress::new(9380, resumed_at, false);
//! let mut speed = Throughput::new();
//! for step in resumed_at + 1..=9380 {
//!     // ... one training step on 64 images ...
//!     speed.record(64);
//!     metrics.append(&Record { step, loss_d: 0.61, loss_g: 1.92 })?;
//!     progress.set_message(format!("loss_d 0.61 · {:.0} img/s", speed.per_second().unwrap_or(0.0)));
//!     progress.inc(1);
//!     if interrupt.requested() {
//!         break; // save a checkpoint first
//!     }
//! }
//! progress.finish();
//! let losses = MetricsLog::read_series(run.metrics_path(), &["loss_d", "loss_g"])?;
//! let scores = MetricsLog::read_series(run.metrics_path(), &["d_real", "d_fake"])?;
//! let chart = plot::Chart {
//!     title: "GAN losses",
//!     x_label: "step",
//!     panels: &[
//!         plot::Panel { y_label: "loss", series: &losses },
//!         plot::Panel { y_label: "D(x), D(G(z))", series: &scores },
//!     ],
//!     steps_per_epoch: Some(938),
//! };
//! plot::draw(run.plot_path(), &chart)?; // loss.png and loss.svg
//! # Ok(())
//! # }
//! ```

mod error;
mod interrupt;
mod metrics;
pub mod plot;
mod progress;
mod run_dir;

pub use error::{Result, RunError};
pub use interrupt::{Interrupt, FORCED_EXIT_STATUS};
pub use metrics::{MetricsLog, Series};
pub use progress::{format_duration, Progress, Throughput, DEFAULT_LOG_INTERVAL};
pub use run_dir::RunDir;
