//! The GANs trained for a few hundred steps on the real MNIST (data/mnist), with their outcomes
//! asserted: losses stay finite, the discriminator neither wins nor loses outright, and the
//! samples move from the initial generator's grey noise towards MNIST's black backgrounds.
//! Plus: a resumed run reproduces an uninterrupted one bit for bit.

use std::path::Path;

use kiln_data::{Dataset, DatasetKind, Split};
use kiln_gan::{Architecture, GanConfig, GanTrainer, StepMetrics};
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{DType, Device, Tensor};
use kiln_train::train_steps;

fn mnist() -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    Dataset::load(DatasetKind::Mnist, Split::Train, Some(&dir)).expect("the committed MNIST")
}

/// `steps` more steps with `kiln train`'s batches (kiln-train's loop), from the trainer's
/// step on; the metrics of each.
fn train(trainer: &mut GanTrainer, data: &Dataset, steps: usize) -> Vec<StepMetrics> {
    let mut metrics = Vec::new();
    train_steps(trainer, data, steps as u64, |_, step| {
        metrics.push(*step.as_any().downcast_ref::<StepMetrics>().unwrap());
    })
    .unwrap();
    metrics
}

/// How MNIST-like a generator's samples from the fixed latents are, in two numbers: their
/// mean pixel (MNIST's is about -0.74 in [-1, 1]: mostly black background; a freshly
/// initialised generator's tanh outputs average near 0), and the correlation of their average
/// image with MNIST's average image (bright in the middle where strokes are, dark at the
/// borders; noise has no such layout).
fn likeness(trainer: &GanTrainer, mnist_mean_image: &[f64]) -> (f64, f64) {
    let (z, labels) = trainer.fixed_latents(256).unwrap();
    let images = trainer.sample(&z, labels.as_ref()).unwrap();
    let pixels = images.to_vec::<f32>().unwrap();
    let mut average = vec![0.0; 784];
    for image in pixels.chunks(784) {
        for (sum, &p) in average.iter_mut().zip(image) {
            *sum += p as f64 / 256.0;
        }
    }
    let mean_pixel = mean(average.iter().copied());
    (mean_pixel, correlation(&average, mnist_mean_image))
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let (mean_a, mean_b) = (mean(a.iter().copied()), mean(b.iter().copied()));
    let covariance: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - mean_a) * (y - mean_b))
        .sum();
    let norm = |v: &[f64], m: f64| v.iter().map(|x| (x - m) * (x - m)).sum::<f64>().sqrt();
    covariance / (norm(a, mean_a) * norm(b, mean_b))
}

/// MNIST's average training image in [-1, 1].
fn mnist_mean_image(data: &Dataset) -> Vec<f64> {
    let mut average = vec![0.0; 784];
    for image in data.images().chunks(784) {
        for (sum, &p) in average.iter_mut().zip(image) {
            *sum += p as f64;
        }
    }
    average
        .iter()
        .map(|s| s / data.len() as f64 / 127.5 - 1.0)
        .collect()
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn mlp_gan_moves_towards_digits() {
    let data = mnist();
    let target = mnist_mean_image(&data);
    let mut trainer = GanTrainer::new(GanConfig::new(Architecture::Gan), Device::Cpu).unwrap();
    let (mean_before, layout_before) = likeness(&trainer, &target);
    let metrics = train(&mut trainer, &data, 300);
    let (mean_after, layout_after) = likeness(&trainer, &target);
    let tail = &metrics[200..];
    let d_real = mean(tail.iter().map(|m| m.d_real));
    let d_fake = mean(tail.iter().map(|m| m.d_fake));
    eprintln!(
        "mean pixel {mean_before:.3} -> {mean_after:.3}, correlation with MNIST's mean image \
         {layout_before:.3} -> {layout_after:.3}; D(x) {d_real:.3}, D(G(z)) {d_fake:.3}"
    );
    // Neither network wins outright over steps 200..300.
    assert!((0.05..0.95).contains(&d_real), "D(x) = {d_real}");
    assert!((0.05..0.95).contains(&d_fake), "D(G(z)) = {d_fake}");
    // From grey noise: mean near 0, no layout ...
    assert!(mean_before.abs() < 0.1 && layout_before.abs() < 0.5);
    // ... to dark backgrounds with strokes where MNIST has them.
    assert!(mean_after < -0.35, "mean pixel {mean_after}");
    assert!(layout_after > 0.5, "correlation {layout_after}");
}

/// Trains `architecture` for `steps` steps of `batch` images; its likeness before and after
/// and the mean metrics over the last third of the steps.
fn short_run(
    data: &Dataset,
    architecture: Architecture,
    steps: usize,
    batch: usize,
) -> ((f64, f64), (f64, f64), Vec<StepMetrics>) {
    let target = mnist_mean_image(data);
    let mut config = GanConfig::new(architecture);
    config.batch_size = batch;
    let mut trainer = GanTrainer::new(config, Device::Cpu).unwrap();
    let before = likeness(&trainer, &target);
    let metrics = train(&mut trainer, data, steps);
    let after = likeness(&trainer, &target);
    eprintln!("{architecture}: mean pixel and layout {before:.3?} -> {after:.3?}");
    (before, after, metrics[steps * 2 / 3..].to_vec())
}

#[test]
fn conditional_gan_moves_towards_digits() {
    let (_, (mean_after, layout_after), tail) = short_run(&mnist(), Architecture::Cgan, 300, 64);
    let d_real = mean(tail.iter().map(|m| m.d_real));
    let d_fake = mean(tail.iter().map(|m| m.d_fake));
    assert!((0.05..0.95).contains(&d_real), "D(x) = {d_real}");
    assert!((0.05..0.95).contains(&d_fake), "D(G(z)) = {d_fake}");
    assert!(mean_after < -0.35, "mean pixel {mean_after}");
    assert!(layout_after > 0.4, "correlation {layout_after}");
}

#[test]
fn wgan_gp_critic_separates_and_generator_follows() {
    // 300 critic steps, 60 generator steps.
    let (_, (mean_after, layout_after), tail) = short_run(&mnist(), Architecture::WganGp, 300, 64);
    // The critic scores real images above fakes (a positive Wasserstein estimate) while the
    // penalty keeps its gradient norm near 1.
    let estimate = mean(tail.iter().map(|m| m.d_real - m.d_fake));
    let penalty = mean(tail.iter().map(|m| m.gradient_penalty.unwrap()));
    assert!(estimate > 0.0, "Wasserstein estimate {estimate}");
    assert!(penalty < 1.0, "gradient penalty {penalty}");
    assert_eq!(
        tail.iter().filter(|m| m.loss_g.is_some()).count(),
        tail.len() / 5
    );
    assert!(mean_after < -0.35, "mean pixel {mean_after}");
    assert!(layout_after > 0.5, "correlation {layout_after}");
}

#[test]
fn dcgan_discriminator_learns_and_generator_darkens() {
    // DCGAN is ~10x the MLP GAN's arithmetic: 100 steps of 32.
    let (_, (mean_after, layout_after), tail) = short_run(&mnist(), Architecture::Dcgan, 100, 32);
    let d_real = mean(tail.iter().map(|m| m.d_real));
    let d_fake = mean(tail.iter().map(|m| m.d_fake));
    assert!(d_real > d_fake, "D(x) {d_real} vs D(G(z)) {d_fake}");
    assert!(mean_after < -0.1, "mean pixel {mean_after}");
    assert!(layout_after > 0.2, "correlation {layout_after}");
}

/// Every parameter and buffer of both networks, by name, as raw bits.
fn state_bits(trainer: &GanTrainer) -> Vec<(String, Vec<u32>)> {
    let stores = [trainer.generator().store(), trainer.discriminator().store()];
    stores
        .iter()
        .flat_map(|store| store.state_dict())
        .map(|(name, t)| {
            let bits = t
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            (name, bits)
        })
        .collect()
}

#[test]
fn resumed_runs_match_uninterrupted_runs_bit_for_bit() {
    let data = mnist();
    for architecture in Architecture::ALL {
        // WGAN-GP's 7 steps cross a generator step (after the 5th) on each side of the cut.
        let (total, cut) = (7, 3);
        let mut config = GanConfig::new(architecture);
        config.batch_size = 16;
        config.seed = 11;
        let mut uninterrupted = GanTrainer::new(config.clone(), Device::Cpu).unwrap();
        let expected = train(&mut uninterrupted, &data, total);

        let mut first = GanTrainer::new(config, Device::Cpu).unwrap();
        train(&mut first, &data, cut);
        let bytes = first.checkpoint().unwrap().to_bytes().unwrap();
        drop(first);
        let checkpoint = Checkpoint::from_bytes(&bytes, "resume.safetensors").unwrap();
        let mut resumed = GanTrainer::from_checkpoint(&checkpoint, Device::Cpu, "resume").unwrap();
        let rest = train(&mut resumed, &data, total - cut);

        assert_eq!(
            rest,
            expected[cut..],
            "{architecture}: metrics after the resume"
        );
        assert!(
            state_bits(&resumed) == state_bits(&uninterrupted),
            "{architecture}: weights after the resume"
        );
        let (z, labels) = resumed.fixed_latents(4).unwrap();
        let (z2, _) = uninterrupted.fixed_latents(4).unwrap();
        assert_eq!(z.to_vec::<f32>().unwrap(), z2.to_vec::<f32>().unwrap());
        let _ = labels;
    }
}

#[test]
fn checkpoints_of_another_model_are_refused() {
    let gan = GanTrainer::new(GanConfig::new(Architecture::Gan), Device::Cpu).unwrap();
    let mut dcgan = GanTrainer::new(GanConfig::new(Architecture::Dcgan), Device::Cpu).unwrap();
    let checkpoint = gan.checkpoint().unwrap();
    let error = dcgan
        .restore(&checkpoint, "runs/x/latest.safetensors")
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "runs/x/latest.safetensors: holds a gan model, not a dcgan"
    );
    let mut empty = Checkpoint::new();
    empty.set_step(3);
    let Err(error) = GanTrainer::from_checkpoint(&empty, Device::Cpu, "other.safetensors") else {
        panic!("an empty checkpoint must be refused");
    };
    assert!(
        error.to_string().contains("not a kiln GAN checkpoint"),
        "{error}"
    );
}

#[test]
fn sampling_checks_digits() {
    let cgan = GanTrainer::new(GanConfig::new(Architecture::Cgan), Device::Cpu).unwrap();
    let z = Tensor::zeros([2, 100], DType::F32, Device::Cpu).unwrap();
    let bad = Tensor::from_vec(vec![3u32, 12], [2], Device::Cpu).unwrap();
    assert!(cgan
        .sample(&z, Some(&bad))
        .unwrap_err()
        .to_string()
        .contains("digit 12"));
    assert!(cgan.sample(&z, None).is_err());
    let good = Tensor::from_vec(vec![3u32, 7], [2], Device::Cpu).unwrap();
    assert_eq!(
        cgan.sample(&z, Some(&good)).unwrap().dims(),
        &[2, 1, 28, 28]
    );
}
