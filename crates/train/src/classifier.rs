//! `kiln train classifier`: trains kiln-eval's classifier (the feature space every score is
//! computed in) with a progress bar, and writes it — by default over the committed one.

use std::path::PathBuf;

use kiln_data::{Dataset, DatasetKind, Split};
use kiln_eval::classifier::{train, TrainConfig, TrainProgress};
use kiln_run::Progress;

use crate::error::{Result, TrainError};

/// What `kiln train classifier` was asked to do (`None`: the classifier's default).
pub struct ClassifierOptions {
    pub dataset: DatasetKind,
    pub data_dir: Option<PathBuf>,
    pub epochs: Option<u64>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub seed: Option<u64>,
    /// Default: data/classifiers/<dataset>.safetensors.
    pub out: Option<PathBuf>,
    pub quiet: bool,
}

/// Trains and writes the classifier; returns the closing line.
pub fn train_classifier(options: ClassifierOptions) -> Result<String> {
    let kind = options.dataset;
    let mut config = TrainConfig::default_for(kind);
    config.epochs = options.epochs.map_or(config.epochs, |e| e as usize);
    config.batch_size = options.batch_size.unwrap_or(config.batch_size);
    config.lr = options.lr.unwrap_or(config.lr);
    config.seed = options.seed.unwrap_or(config.seed);
    let out = options.out.unwrap_or_else(|| {
        PathBuf::from("data/classifiers").join(format!("{}.safetensors", kind.name()))
    });
    let load = |split| Dataset::load(kind, split, options.data_dir.as_deref());
    let (train_set, test_set) = (load(Split::Train)?, load(Split::Test)?);
    let mut progress: Option<Progress> = None;
    let mut on_progress = |event| match event {
        TrainProgress::Step {
            steps,
            epoch,
            epochs,
            loss,
            ..
        } => {
            let bar = progress.get_or_insert_with(|| Progress::new(steps, 0, options.quiet));
            bar.set_message(format!("epoch {}/{epochs} · loss {loss:.4}", epoch + 1));
            bar.inc(1);
        }
        TrainProgress::Epoch {
            epoch,
            train_loss,
            test_accuracy,
        } => {
            if let Some(bar) = &mut progress {
                bar.println(format!(
                    "epoch {}: train loss {train_loss:.4}, test accuracy {:.2}%",
                    epoch + 1,
                    test_accuracy * 100.0
                ));
            }
        }
    };
    let trained = train(&config, &train_set, &test_set, &mut on_progress);
    if let Some(bar) = &mut progress {
        bar.finish();
    }
    let (classifier, report) = trained?;
    // A diverged training is not written, least of all over the committed classifier.
    if let Some(loss) = report.train_loss.iter().find(|l| !l.is_finite()) {
        return Err(TrainError::refused(format!(
            "the classifier's training loss became {loss}; {} was not written",
            out.display()
        )));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| TrainError::refused(format!("{}: {e}", parent.display())))?;
    }
    classifier.save(&out)?;
    Ok(format!(
        "trained the {kind} classifier for {} epochs in {:.0} s: test accuracy {:.2}%; wrote {}",
        config.epochs,
        report.seconds,
        report.test_accuracy.last().copied().unwrap_or(0.0) * 100.0,
        out.display()
    ))
}
