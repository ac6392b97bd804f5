//! The DDPM trained on the real MNIST (data/mnist), with its outcomes asserted: a small U-Net's
//! noise-prediction error falls from 1 (the zero-initialised output predicts ε̂ = 0) to below
//! a stated bound within a few hundred steps, on training batches and on held-out test images
//! under the averaged weights; its samples are images in [-1, 1]; and a resumed run
//! reproduces an uninterrupted one bit for bit.

use std::path::Path;

use kiln_data::{Dataset, DatasetKind, Scale, Split};
use kiln_diffusion::{DdpmConfig, DdpmTrainer, Sampler, StepMetrics};
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{Device, Tensor};
use kiln_train::evaluate::split_images;
use kiln_train::train_steps;

fn mnist(split: Split) -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    Dataset::load(DatasetKind::Mnist, split, Some(&dir)).expect("the committed MNIST")
}

/// A U-Net small enough for tests: 8, 16 and 16 channels.
fn small(seed: u64) -> DdpmConfig {
    DdpmConfig {
        channels: [8, 16, 16],
        groups: 4,
        batch_size: 32,
        lr: 1e-3,
        seed,
        ..Default::default()
    }
}

/// `steps` more steps with `kiln train`'s batches (kiln-train's loop), from the trainer's
/// step on; the metrics of each.
fn train(trainer: &mut DdpmTrainer, data: &Dataset, steps: usize) -> Vec<StepMetrics> {
    let mut metrics = Vec::new();
    train_steps(trainer, data, steps as u64, |_, step| {
        metrics.push(*step.as_any().downcast_ref::<StepMetrics>().unwrap());
    })
    .unwrap();
    metrics
}

/// The first `n` test images, `[n, 1, 28, 28]` in [-1, 1].
fn test_images(n: usize) -> Tensor {
    let test = split_images(&mnist(Split::Test), Scale::MinusOneToOne, Device::Cpu).unwrap();
    test.narrow(0, 0, n).unwrap()
}

fn mean(values: &[StepMetrics]) -> f64 {
    values.iter().map(|m| m.loss).sum::<f64>() / values.len() as f64
}

#[test]
fn a_short_training_learns_to_predict_the_noise() {
    let mut trainer = DdpmTrainer::new(small(0), Device::Cpu).unwrap();
    let test = test_images(500);
    let before = trainer.evaluate(&test, 7).unwrap();
    let metrics = train(&mut trainer, &mnist(Split::Train), STEPS);
    let after = trainer.evaluate(&test, 7).unwrap();
    let (first, last) = (mean(&metrics[..10]), mean(&metrics[metrics.len() - 50..]));
    eprintln!(
        "test loss before {:.4}, after {:.4}; training loss first 10 steps {first:.4}, last 50 {last:.4}",
        before.loss, after.loss
    );
    // ε̂ = 0 at the start: the error is E[ε²] = 1 (500·784 draws: ±0.01).
    assert!((before.loss - 1.0).abs() < 0.02, "{before:?}");
    assert_eq!(after.images, 500);
    assert!(after.loss < TEST_BOUND, "{after:?}");
    assert!(last < TRAIN_BOUND, "{last}");

    // Samples: images in [-1, 1], the same for the same seed, different for another.
    let sampler = Sampler::Ddim {
        steps: 10,
        eta: 0.0,
    };
    let mut calls = 0;
    let a = trainer
        .generate(3, sampler, 5, &mut |_, _| calls += 1)
        .unwrap();
    assert_eq!(calls, 10);
    assert_eq!(a.dims(), [3, 1, 28, 28]);
    let values = a.to_vec::<f32>().unwrap();
    assert!(values.iter().all(|v| (-1.0..=1.0).contains(v)));
    let again = trainer.generate(3, sampler, 5, &mut |_, _| {}).unwrap();
    assert_eq!(values, again.to_vec::<f32>().unwrap());
    let other = trainer.generate(3, sampler, 6, &mut |_, _| {}).unwrap();
    assert_ne!(values, other.to_vec::<f32>().unwrap());
}

/// Steps of the short training, and bounds on what they reach (measured: test loss 0.0608,
/// mean of the last 50 training steps 0.0647).
const STEPS: usize = 200;
const TEST_BOUND: f64 = 0.08;
const TRAIN_BOUND: f64 = 0.085;

#[test]
fn a_resumed_run_continues_exactly_as_an_uninterrupted_one() {
    let data = mnist(Split::Train);
    let config = DdpmConfig {
        batch_size: 16,
        ..small(3)
    };
    let mut whole = DdpmTrainer::new(config.clone(), Device::Cpu).unwrap();
    let expected = train(&mut whole, &data, 6);

    let mut first = DdpmTrainer::new(config, Device::Cpu).unwrap();
    let mut seen = train(&mut first, &data, 3);
    let bytes = first.checkpoint().unwrap().to_bytes().unwrap();
    drop(first);
    let checkpoint = Checkpoint::from_bytes(&bytes, "resume").unwrap();
    let mut resumed = DdpmTrainer::from_checkpoint(&checkpoint, Device::Cpu, "resume").unwrap();
    assert_eq!(resumed.steps_done(), 3);
    seen.extend(train(&mut resumed, &data, 3));
    assert_eq!(seen, expected);
    for (store_a, store_b) in [
        (whole.model().store(), resumed.model().store()),
        (whole.ema().store(), resumed.ema().store()),
    ] {
        for ((name, a), (_, b)) in store_a.state_dict().iter().zip(store_b.state_dict()) {
            assert_eq!(
                a.to_vec::<f32>().unwrap(),
                b.to_vec::<f32>().unwrap(),
                "{name}"
            );
        }
    }
}
