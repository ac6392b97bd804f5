//! The four GANs trained on CUDA track the same runs on the CPU: same seed, same Philox
//! streams (weights, latents, labels, ε), same MNIST batches (gathered on the device there),
//! so the only differences are the GPU's summation orders. For the first 50 steps every
//! logged value of the CUDA run must stay within 2% (relative to max(1, |CPU value|)) of the
//! CPU's, and the first step's within 1e-4: a wrong kernel shows up as a jump at once, where
//! rounding differences grow slowly. FP32 matrix products on both (the default precision).
//! Also: a training step (its batch included) never makes the host wait for the GPU.
//! Skipped without a GPU; with `KILN_REQUIRE_CUDA=1`, fails instead.

use std::path::Path;

use kiln_data::{Dataset, DatasetKind, Loader, LoaderOptions, Split};
use kiln_gan::{Architecture, GanConfig, GanTrainer, StepMetrics};
use kiln_tensor::Device;

/// The committed MNIST: beside the sources this was built from, else (a binary carried to a GPU
/// machine) where `kiln` looks, `$KILN_DATA_DIR` or data/mnist under the working directory.
fn mnist() -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let dir = dir.exists().then_some(dir);
    Dataset::load(DatasetKind::Mnist, Split::Train, dir.as_deref()).expect("the committed MNIST")
}

/// The metrics of the first `steps` steps of `architecture` on `device`.
fn run(
    dataset: &Dataset,
    architecture: Architecture,
    device: Device,
    steps: usize,
) -> Vec<StepMetrics> {
    let config = GanConfig::new(architecture);
    let options = LoaderOptions {
        batch_size: config.batch_size,
        drop_last: true,
        seed: config.seed,
        device,
        ..Default::default()
    };
    let loader = Loader::new(dataset, options).unwrap();
    let mut trainer = GanTrainer::new(config, device).unwrap();
    loader
        .epoch(0)
        .take(steps)
        .map(|batch| {
            let batch = batch.unwrap();
            trainer.step(&batch.images, &batch.labels).unwrap()
        })
        .collect()
}

fn values(metrics: &StepMetrics) -> Vec<(&'static str, f64)> {
    let mut values = vec![
        ("loss_d", metrics.loss_d),
        ("d_real", metrics.d_real),
        ("d_fake", metrics.d_fake),
    ];
    values.extend(metrics.loss_g.map(|v| ("loss_g", v)));
    values.extend(metrics.gradient_penalty.map(|v| ("gradient_penalty", v)));
    values
}

#[test]
fn the_first_fifty_steps_on_cuda_track_the_cpu() {
    let Some(gpu) = kiln_tensor::cuda::test_device("the_first_fifty_steps_on_cuda_track_the_cpu")
    else {
        return;
    };
    const STEPS: usize = 50;
    let dataset = mnist();
    for architecture in Architecture::ALL {
        let cpu = run(&dataset, architecture, Device::Cpu, STEPS);
        let cuda = run(&dataset, architecture, gpu, STEPS);
        assert_eq!(cpu.len(), STEPS);
        for (step, (a, b)) in cpu.iter().zip(&cuda).enumerate() {
            let tolerance = if step == 0 { 1e-4 } else { 2e-2 };
            for ((name, expected), (_, got)) in values(a).into_iter().zip(values(b)) {
                assert!(
                    (got - expected).abs() <= tolerance * expected.abs().max(1.0),
                    "{architecture} step {}: {name} is {got} on CUDA, {expected} on the CPU",
                    step + 1
                );
            }
        }
        let last = (values(&cpu[STEPS - 1]), values(&cuda[STEPS - 1]));
        eprintln!(
            "{architecture}: step {STEPS} CPU {:?} / CUDA {:?}",
            last.0, last.1
        );
    }
}

#[test]
fn a_training_step_never_waits_for_the_gpu() {
    let Some(gpu) = kiln_tensor::cuda::test_device("a_training_step_never_waits_for_the_gpu")
    else {
        return;
    };
    let dataset = mnist();
    for architecture in Architecture::ALL {
        let config = GanConfig::new(architecture);
        let options = LoaderOptions {
            batch_size: config.batch_size,
            drop_last: true,
            device: gpu,
            ..Default::default()
        };
        let loader = Loader::new(&dataset, options).unwrap();
        let mut trainer = GanTrainer::new(config, gpu).unwrap();
        let mut batches = loader.epoch(0);
        // Warm up: kernels compile and load, the allocator's pool fills.
        for batch in batches.by_ref().take(2) {
            let batch = batch.unwrap();
            trainer.step(&batch.images, &batch.labels).unwrap();
        }
        // Ten steps, batches gathered on the device included: no wait of the host for the GPU
        // (no readback, no synchronisation) until the metrics are read.
        let before = kiln_tensor::cuda::host_waits();
        let pending: Vec<_> = batches
            .by_ref()
            .take(10)
            .map(|batch| {
                let batch = batch.unwrap();
                trainer.step_deferred(&batch.images, &batch.labels).unwrap()
            })
            .collect();
        assert_eq!(
            kiln_tensor::cuda::host_waits(),
            before,
            "{architecture}: a step waited for the GPU"
        );
        for metrics in &pending {
            let metrics = metrics.read().unwrap();
            assert!(
                metrics.non_finite().is_none(),
                "{architecture}: {metrics:?}"
            );
        }
        assert!(kiln_tensor::cuda::host_waits() > before, "reads are waits");
    }
}
