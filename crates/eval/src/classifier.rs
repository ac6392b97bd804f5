//! kiln's MNIST / Fashion-MNIST classifier: a small LeNet-style CNN trained by kiln. Its 128-d
//! penultimate activations are the feature space the Fréchet distance and precision/recall are
//! measured in, and its class probabilities give the classifier score and class coverage.
//! Trained weights for both datasets are committed under data/classifiers/; [`train`] (what
//! `kiln train classifier` runs) reproduces them. Not a general image classifier: 28×28 grey
//! images, 10 classes.
//!
//! Images are taken as `[N, 1, 28, 28]` in [-1, 1], the range kiln's generators produce and
//! its loader's default scale.

use std::path::Path;
use std::time::Instant;

use kiln_data::{Dataset, DatasetKind, Loader, LoaderOptions, Scale};
use kiln_nn::checkpoint::{Checkpoint, MODEL_KEY};
use kiln_nn::layers::{
    Conv2d, Conv2dConfig, Dropout, Flatten, Linear, MaxPool2d, ReLU, Sequential,
};
use kiln_nn::loss::{cross_entropy, Reduction};
use kiln_nn::optim::{Adam, AdamConfig, Optimizer};
use kiln_nn::{Module, ModuleT, NnError, ParamStore, Result};
use kiln_tensor::{no_grad, DType, Device, Tensor};

/// Width of the feature layer.
pub const FEATURES: usize = 128;
/// Classes (digits, or Fashion-MNIST's ten kinds of clothing).
pub const CLASSES: usize = 10;
/// The drop probability in front of the last layer while training.
const DROPOUT: f64 = 0.3;
/// Images per forward pass when scoring many (keeps memory flat for 10,000 images).
const EVAL_BATCH: usize = 1000;

const MODEL_NAME: &str = "classifier";
const DATASET_KEY: &str = "kiln.dataset";
const ACCURACY_KEY: &str = "kiln.test_accuracy";

/// `[N, 1, 28, 28]` → Conv(1→32, 3, pad 1) → ReLU → MaxPool 2 → Conv(32→64, 3, pad 1) → ReLU
/// → MaxPool 2 → Flatten → Linear(3136→128) → ReLU = features `[N, 128]` → Dropout(0.3) (in
/// training) → Linear(128→10) = logits. PyTorch names: `features.0.weight`,
/// `features.3.weight`, `features.7.weight`, `classifier.weight` (and biases).
pub struct Classifier {
    store: ParamStore,
    features: Sequential,
    dropout: Dropout,
    classifier: Linear,
    dataset: DatasetKind,
    test_accuracy: Option<f64>,
}

impl Classifier {
    /// A fresh classifier for `dataset` with PyTorch's default initialisation from `seed`.
    pub fn new(dataset: DatasetKind, device: Device, seed: u64) -> Result<Classifier> {
        let store = ParamStore::new(device, DType::F32, seed);
        let root = store.root();
        let features = root.sub("features");
        let same = Conv2dConfig {
            padding: [1, 1],
            ..Default::default()
        };
        let body = Sequential::new()
            .add(Conv2d::new(&features.sub(0), 1, 32, [3, 3], same)?) // [N, 32, 28, 28]
            .add(ReLU)
            .add(MaxPool2d::new([2, 2])) // [N, 32, 14, 14]
            .add(Conv2d::new(&features.sub(3), 32, 64, [3, 3], same)?) // [N, 64, 14, 14]
            .add(ReLU)
            .add(MaxPool2d::new([2, 2])) // [N, 64, 7, 7]
            .add(Flatten::default()) // [N, 3136]
            .add(Linear::new(&features.sub(7), 64 * 7 * 7, FEATURES)?) // [N, 128]
            .add(ReLU);
        let classifier = Linear::new(&root.sub("classifier"), FEATURES, CLASSES)?;
        Ok(Classifier {
            store,
            features: body,
            dropout: Dropout::new(DROPOUT, seed)?,
            classifier,
            dataset,
            test_accuracy: None,
        })
    }

    /// The classifier saved at `path` by [`Classifier::save`], on the CPU.
    pub fn load(path: impl AsRef<Path>) -> Result<Classifier> {
        Classifier::load_on(path, Device::Cpu)
    }

    /// The classifier saved at `path`, its weights on `device` (where the images it scores
    /// must be).
    pub fn load_on(path: impl AsRef<Path>, device: Device) -> Result<Classifier> {
        let path = path.as_ref();
        let context = path.display().to_string();
        let checkpoint = Checkpoint::load(path)?;
        if checkpoint.meta(MODEL_KEY) != Some(MODEL_NAME) {
            return Err(NnError::mismatch(
                &context,
                "not a kiln classifier (no `kiln.model: classifier` metadata)",
            ));
        }
        let dataset = match checkpoint.meta(DATASET_KEY) {
            Some(name) => DatasetKind::from_name(name).ok_or_else(|| {
                NnError::mismatch(&context, format!("trained on an unknown dataset `{name}`"))
            })?,
            None => return Err(NnError::mismatch(&context, "no `kiln.dataset` metadata")),
        };
        let mut classifier = Classifier::new(dataset, device, 0)?;
        checkpoint.load_store("", &classifier.store)?;
        classifier.test_accuracy = checkpoint.meta(ACCURACY_KEY).and_then(|a| a.parse().ok());
        Ok(classifier)
    }

    /// Writes the weights (bare PyTorch names), the dataset and the test accuracy, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("", &self.store)?;
        checkpoint.set_meta(MODEL_KEY, MODEL_NAME);
        checkpoint.set_meta(DATASET_KEY, self.dataset.name());
        if let Some(accuracy) = self.test_accuracy {
            checkpoint.set_meta(ACCURACY_KEY, format!("{accuracy:.6}"));
        }
        checkpoint.save(path)
    }

    /// Its parameters, by PyTorch name.
    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The dataset it was trained on.
    pub fn dataset(&self) -> DatasetKind {
        self.dataset
    }

    /// The test accuracy recorded when it was trained, if any.
    pub fn test_accuracy(&self) -> Option<f64> {
        self.test_accuracy
    }

    fn check_images(images: &Tensor) -> Result<()> {
        if images.rank() != 4 || images.dims()[1..] != [1, 28, 28] {
            return Err(NnError::invalid(
                "classifier",
                format!("expected images [N, 1, 28, 28], got {}", images.shape()),
            ));
        }
        Ok(())
    }

    /// `images [N, 1, 28, 28]` in [-1, 1] → logits `[N, 10]` (tracked, one pass).
    pub fn logits(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        Self::check_images(images)?;
        let features = self.features.forward_t(images, train)?; // [N, 128]
        self.classifier
            .forward(&self.dropout.forward_t(&features, train)?) // [N, 10]
    }

    /// The 128-d features of `images [N, 1, 28, 28]`: `[N, 128]`, evaluation mode, no graph,
    /// in batches.
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        Self::check_images(images)?;
        self.batched(images, |batch| self.features.forward_t(batch, false))
    }

    /// Class probabilities of `images`: `[N, 10]`, rows summing to 1.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        Self::check_images(images)?;
        self.batched(images, |batch| Ok(self.logits(batch, false)?.softmax(1)?))
    }

    /// `f` of consecutive batches of at most `EVAL_BATCH` images, joined along dim 0.
    fn batched(&self, images: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let n = images.dims()[0];
        let parts = no_grad(|| {
            (0..n)
                .step_by(EVAL_BATCH)
                .map(|start| f(&images.narrow(0, start, EVAL_BATCH.min(n - start))?))
                .collect::<Result<Vec<_>>>()
        })?;
        if parts.is_empty() {
            return Err(NnError::invalid("classifier", "no images"));
        }
        Ok(Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)?)
    }

    /// The fraction of `dataset`'s images whose most probable class is their label.
    pub fn accuracy(&self, dataset: &Dataset) -> Result<f64> {
        let images = dataset_images(dataset, self.store.device())?; // [N, 1, 28, 28]
        let probabilities = self.probabilities(&images)?.to_vec::<f32>()?;
        let correct = probabilities
            .chunks(CLASSES)
            .zip(dataset.labels())
            .filter(|(row, &label)| argmax(row) == label as usize)
            .count();
        Ok(correct as f64 / dataset.len() as f64)
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 {
                (i, p)
            } else {
                best
            }
        })
        .0
}

/// All of `dataset`'s images, `[N, 1, 28, 28]` f32 in [-1, 1].
pub fn dataset_images(dataset: &Dataset, device: Device) -> Result<Tensor> {
    let pixels = dataset
        .images_tensor(0, dataset.len(), device)
        .map_err(|e| NnError::invalid("classifier", e.to_string()))?; // u8
    Ok(pixels.to_dtype(DType::F32)?.affine(1.0 / 127.5, -1.0)?)
}

/// How [`train`] trains.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub dataset: DatasetKind,
    pub epochs: usize,
    pub batch_size: usize,
    /// Adam's learning rate at the start; it is multiplied by `lr_decay` after each epoch.
    pub lr: f64,
    pub lr_decay: f64,
    pub seed: u64,
}

impl TrainConfig {
    /// The settings the committed classifiers were trained with: Adam(1e-3) decaying by 0.7
    /// each epoch, batch 128, 6 epochs for MNIST and 8 for Fashion-MNIST.
    pub fn default_for(dataset: DatasetKind) -> TrainConfig {
        TrainConfig {
            dataset,
            epochs: match dataset {
                DatasetKind::Mnist => 6,
                DatasetKind::FashionMnist => 8,
            },
            batch_size: 128,
            lr: 1e-3,
            lr_decay: 0.7,
            seed: 0,
        }
    }
}

/// What training measured, epoch by epoch.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Mean cross-entropy over each epoch's batches.
    pub train_loss: Vec<f64>,
    /// Test accuracy after each epoch.
    pub test_accuracy: Vec<f64>,
    pub seconds: f64,
}

/// What [`train`] reports as it goes, for a progress bar or a log (kiln-eval draws none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainProgress {
    /// Batch `step` of `steps` in all (from 1) is done, in epoch `epoch` (from 0) of `epochs`.
    Step {
        step: u64,
        steps: u64,
        epoch: usize,
        epochs: usize,
        loss: f64,
    },
    /// Epoch `epoch` (from 0) is done.
    Epoch {
        epoch: usize,
        train_loss: f64,
        test_accuracy: f64,
    },
}

/// Trains a classifier on `train` (cross-entropy, Adam), measuring accuracy on `test` after
/// every epoch and telling `on_progress` after each batch and epoch; the returned classifier
/// records the last accuracy.
pub fn train(
    config: &TrainConfig,
    train: &Dataset,
    test: &Dataset,
    on_progress: &mut dyn FnMut(TrainProgress),
) -> Result<(Classifier, TrainReport)> {
    let started = Instant::now();
    let mut classifier = Classifier::new(config.dataset, Device::Cpu, config.seed)?;
    let loader = Loader::new(
        train,
        LoaderOptions {
            batch_size: config.batch_size,
            drop_last: true,
            scale: Scale::MinusOneToOne,
            seed: config.seed,
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .map_err(|e| NnError::invalid("classifier", e.to_string()))?;
    let mut adam = Adam::new(
        classifier.store.parameters(),
        AdamConfig {
            lr: config.lr,
            ..Default::default()
        },
    )?;
    let per_epoch = loader.batches_per_epoch() as u64;
    // No step at all would leave the initial weights, and a 0/0 loss, to be saved as trained.
    if per_epoch == 0 || config.epochs == 0 {
        return Err(NnError::invalid(
            "classifier",
            format!(
                "{} epochs of batches of {} from {} training images take no step: ask for at least one epoch and at most {} images per batch",
                config.epochs,
                config.batch_size,
                train.len(),
                train.len()
            ),
        ));
    }
    let steps = per_epoch * config.epochs as u64;
    let mut step = 0;
    let mut report = TrainReport {
        train_loss: Vec::new(),
        test_accuracy: Vec::new(),
        seconds: 0.0,
    };
    for epoch in 0..config.epochs {
        adam.set_learning_rate(config.lr * config.lr_decay.powi(epoch as i32));
        let mut total = 0.0;
        for batch in loader.epoch(epoch as u64) {
            let batch = batch.map_err(|e| NnError::invalid("classifier", e.to_string()))?;
            let logits = classifier.logits(&batch.images, true)?; // [B, 10]
            let loss = cross_entropy(&logits, &batch.labels, Reduction::Mean)?;
            adam.step(&loss.backward()?)?;
            let value = loss.to_scalar::<f32>()? as f64;
            total += value;
            step += 1;
            on_progress(TrainProgress::Step {
                step,
                steps,
                epoch,
                epochs: config.epochs,
                loss: value,
            });
        }
        let accuracy = classifier.accuracy(test)?;
        report.train_loss.push(total / per_epoch as f64);
        report.test_accuracy.push(accuracy);
        on_progress(TrainProgress::Epoch {
            epoch,
            train_loss: total / per_epoch as f64,
            test_accuracy: accuracy,
        });
    }
    classifier.test_accuracy = report.test_accuracy.last().copied();
    report.seconds = started.elapsed().as_secs_f64();
    Ok((classifier, report))
}
