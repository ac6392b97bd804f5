//! The four GANs trained on CUDA track the same runs on the CPU: same seed, same Philox
//! streams (weights, latents, labels, ε), same MNIST batches (gathered on the device there),
//! so the only differences are the GPU's summation orders. For the first 50 steps every
//! logged value of the CUDA run must stay within 2% (relative to max(1, |CPU value|)) of the
//! CPU's, and the first step's within 1e-4: a wrong kernel shows up as a jump at once, where
//! rounding differences grow slowly. FP32 matrix products on both (the default precision).
//! Also: a training step of any model (its batch included) never makes the host wait for the
//! GPU.
//! Skipped without a GPU; with `KILN_REQUIRE_CUDA=1`, fails instead.

use std::path::Path;

use kiln_autoregressive::{PixelCnnConfig, PixelCnnTrainer};
use kiln_data::{Batch, Dataset, DatasetKind, Loader, LoaderOptions, Scale, Split};
use kiln_diffusion::{DdpmConfig, DdpmTrainer};
use kiln_gan::{Architecture, GanConfig, GanTrainer, StepMetrics};
use kiln_tensor::Device;
use kiln_vae::{VaeArchitecture, VaeConfig, VaeTrainer};

/// The committed MNIST: beside the sources this was built from, else (a binary carried to a GPU
/// machine) where `kiln` looks, `$KILN_DATA_DIR` or data/mnist under the working directory.
fn mnist() -> Dataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let dir = dir.exists().then_some(dir);
    Dataset::load(DatasetKind::Mnist, Split::Train, dir.as_deref()).expect("the committed MNIST")
}

/// The metrics of the first `steps` steps of `architecture` on `device`, through kiln-train's
/// loop (every step's metrics read).
fn run(
    dataset: &Dataset,
    architecture: Architecture,
    device: Device,
    steps: usize,
) -> Vec<StepMetrics> {
    let mut trainer = GanTrainer::new(GanConfig::new(architecture), device).unwrap();
    let mut metrics = Vec::new();
    kiln_train::train_steps(&mut trainer, dataset, steps as u64, |_, step| {
        metrics.push(*step.as_any().downcast_ref::<StepMetrics>().unwrap());
    })
    .unwrap();
    metrics
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

/// Two warm-up steps (kernels compile and load, the allocator's pool fills), then ten steps on
/// batches gathered on the device: the host must not wait for the GPU (no readback, no
/// synchronisation) until the metrics are read; each step's deferred metrics must then read
/// back finite. `step` takes a batch and returns a closure that reads its metrics and names
/// the first non-finite one.
fn never_waits<R: Fn() -> Option<String>>(
    what: &str,
    loader: &Loader,
    mut step: impl FnMut(&Batch) -> R,
) {
    let mut batches = loader.epoch(0);
    for batch in batches.by_ref().take(2) {
        step(&batch.unwrap());
    }
    let before = kiln_tensor::cuda::host_waits();
    let pending: Vec<R> = batches
        .by_ref()
        .take(10)
        .map(|batch| step(&batch.unwrap()))
        .collect();
    assert_eq!(
        kiln_tensor::cuda::host_waits(),
        before,
        "{what}: a step waited for the GPU"
    );
    for read in &pending {
        if let Some(problem) = read() {
            panic!("{what}: {problem}");
        }
    }
    assert!(kiln_tensor::cuda::host_waits() > before, "reads are waits");
}

fn loader(dataset: &Dataset, batch_size: usize, scale: Scale, device: Device) -> Loader {
    let options = LoaderOptions {
        batch_size,
        drop_last: true,
        scale,
        device,
        ..Default::default()
    };
    Loader::new(dataset, options).unwrap()
}

/// The first non-finite value of a step's metrics, or a failed read, as a message.
fn problem<M: std::fmt::Debug>(
    metrics: Result<M, kiln_nn::NnError>,
    non_finite: impl Fn(&M) -> Option<(&'static str, f64)>,
) -> Option<String> {
    match metrics {
        Ok(m) => non_finite(&m).map(|(name, value)| format!("{name} is {value} in {m:?}")),
        Err(e) => Some(e.to_string()),
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
        let batches = loader(&dataset, config.batch_size, Scale::MinusOneToOne, gpu);
        let mut trainer = GanTrainer::new(config, gpu).unwrap();
        never_waits(&architecture.to_string(), &batches, |batch| {
            let pending = trainer.step_deferred(&batch.images, &batch.labels).unwrap();
            move || problem(pending.read(), |m| m.non_finite())
        });
    }
    for architecture in VaeArchitecture::ALL {
        let config = VaeConfig::new(architecture);
        let batches = loader(&dataset, config.batch_size, Scale::ZeroToOne, gpu);
        let mut trainer = VaeTrainer::new(config, gpu).unwrap();
        never_waits(architecture.name(), &batches, |batch| {
            let pending = trainer.step_deferred(&batch.images).unwrap();
            move || problem(pending.read(), |m| m.non_finite())
        });
    }
    let config = DdpmConfig::default();
    let batches = loader(&dataset, config.batch_size, Scale::MinusOneToOne, gpu);
    let mut trainer = DdpmTrainer::new(config, gpu).unwrap();
    never_waits("DDPM", &batches, |batch| {
        let pending = trainer.step_deferred(&batch.images).unwrap();
        move || problem(pending.read(), |m| m.non_finite())
    });
    let config = PixelCnnConfig::new();
    let batches = loader(&dataset, config.batch_size, Scale::ZeroToOne, gpu);
    let mut trainer = PixelCnnTrainer::new(config, gpu).unwrap();
    never_waits("PixelCNN", &batches, |batch| {
        let pending = trainer.step_deferred(&batch.images).unwrap();
        move || problem(pending.read(), |m| m.non_finite())
    });
}
