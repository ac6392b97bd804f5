//! Training-step throughput: `cargo bench --bench train_step`. One `GanTrainer::step` (G makes
//! a batch, D steps on real and fake, G steps through D, both Adams) on random images, for the
//! MLP GAN at batch 64 and 256 and DCGAN at batch 64; and one `VaeTrainer::step` (encode,
//! reparameterise, decode, ELBO, Adam) of the MLP VAE and the convolutional VAE at batch 128;
//! one `DdpmTrainer::step` (noise, U-Net, ε MSE, Adam, EMA) and one `PixelCnnTrainer::step`
//! (binarize, masked convolutions, NLL, Adam) at their default sizes and batch 128; on all
//! threads. With a GPU (`cuda:0`), the `train_step_cuda` group times the four GANs' steps there
//! (the MLP GAN at batch 64 and 256, DCGAN, the conditional GAN and WGAN-GP at 64): each
//! sample queues its steps and reads the last step's metrics once at the end, as a training
//! run that logs every few steps does, so it measures the GPU's throughput rather than the
//! host's queueing. The `train_loop_cpu` group runs kiln-train's loop itself (`train_steps`:
//! the committed MNIST through the loader, each step's metrics read and checked for NaN) for
//! the MLP GAN, so the loop's cost beside the bare step shows. Criterion reports images per
//! second; benches/reference/torch_gan.py,
//! torch_vae.py and torch_ddpm_pixelcnn.py measure PyTorch eager on the same steps.

use criterion::{criterion_group, Criterion, Throughput};
use kiln_autoregressive::{PixelCnnConfig, PixelCnnTrainer};
use kiln_diffusion::{DdpmConfig, DdpmTrainer};
use kiln_gan::{Architecture, GanConfig, GanTrainer};
use kiln_tensor::{DType, Device, Generator, Tensor};
use kiln_vae::{VaeArchitecture, VaeConfig, VaeTrainer};

mod common;

fn train_step(c: &mut Criterion) {
    let mut group = common::group(c, "train_step_cpu");
    let mut rng = Generator::new(0);
    for (architecture, batch) in [
        (Architecture::Gan, 64),
        (Architecture::Gan, 256),
        (Architecture::Dcgan, 64),
    ] {
        let mut config = GanConfig::new(architecture);
        config.batch_size = batch;
        let mut trainer = GanTrainer::new(config, Device::Cpu).unwrap();
        let images = Tensor::rand([batch, 1, 28, 28], DType::F32, Device::Cpu, &mut rng)
            .unwrap()
            .affine(2.0, -1.0)
            .unwrap(); // [B, 1, 28, 28] in [-1, 1)
        let labels = Tensor::zeros([batch], DType::U32, Device::Cpu).unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{architecture}_b{batch}"), |b| {
            b.iter(|| trainer.step(&images, &labels).unwrap())
        });
    }
    for architecture in VaeArchitecture::ALL {
        let config = VaeConfig::new(architecture);
        let batch = config.batch_size;
        let mut trainer = VaeTrainer::new(config, Device::Cpu).unwrap();
        let images = Tensor::rand([batch, 1, 28, 28], DType::F32, Device::Cpu, &mut rng).unwrap(); // [B, 1, 28, 28] in [0, 1)
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{architecture}_b{batch}"), |b| {
            b.iter(|| trainer.step(&images).unwrap())
        });
    }
    let images = Tensor::rand([128, 1, 28, 28], DType::F32, Device::Cpu, &mut rng).unwrap(); // [B, 1, 28, 28] in [0, 1)
    let mut ddpm = DdpmTrainer::new(DdpmConfig::default(), Device::Cpu).unwrap();
    let batch = ddpm.config().batch_size;
    let signed = images
        .narrow(0, 0, batch)
        .unwrap()
        .affine(2.0, -1.0)
        .unwrap(); // in [-1, 1)
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("ddpm_b{batch}"), |b| {
        b.iter(|| ddpm.step(&signed).unwrap())
    });
    let mut pixelcnn = PixelCnnTrainer::new(PixelCnnConfig::new(), Device::Cpu).unwrap();
    let batch = pixelcnn.config().batch_size;
    let grey = images.narrow(0, 0, batch).unwrap();
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("pixelcnn_b{batch}"), |b| {
        b.iter(|| pixelcnn.step(&grey).unwrap())
    });
    group.finish();
}

fn train_step_cuda(c: &mut Criterion) {
    if let Err(reason) = kiln_tensor::cuda::availability() {
        eprintln!("train_step_cuda: skipped: {reason}");
        return;
    }
    let device = Device::Cuda(0);
    let mut group = common::group(c, "train_step_cuda");
    let mut rng = Generator::new(0);
    for (architecture, batch) in [
        (Architecture::Gan, 64),
        (Architecture::Gan, 256),
        (Architecture::Dcgan, 64),
        (Architecture::Cgan, 64),
        (Architecture::WganGp, 64),
    ] {
        let mut config = GanConfig::new(architecture);
        config.batch_size = batch;
        let mut trainer = GanTrainer::new(config, device).unwrap();
        let images = Tensor::rand([batch, 1, 28, 28], DType::F32, device, &mut rng)
            .unwrap()
            .affine(2.0, -1.0)
            .unwrap(); // [B, 1, 28, 28] in [-1, 1)
        let labels = Tensor::zeros([batch], DType::U32, device).unwrap();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("{architecture}_b{batch}"), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                let mut last = None;
                for _ in 0..iters {
                    last = Some(trainer.step_deferred(&images, &labels).unwrap());
                }
                if let Some(last) = last {
                    last.read().unwrap(); // waits for every queued step
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Ten steps of the MLP GAN through kiln-train's loop on the committed MNIST, continuing from
/// wherever the last sample stopped (the loader's batches, shuffled per epoch).
fn train_loop(c: &mut Criterion) {
    let mut group = common::group(c, "train_loop_cpu");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist");
    let mnist = kiln_data::Dataset::load(
        kiln_data::DatasetKind::Mnist,
        kiln_data::Split::Train,
        Some(&dir),
    )
    .unwrap();
    let mut trainer = GanTrainer::new(GanConfig::new(Architecture::Gan), Device::Cpu).unwrap();
    const STEPS: u64 = 10;
    group.throughput(Throughput::Elements(STEPS * 64));
    group.bench_function("gan_b64_10_steps", |b| {
        b.iter(|| kiln_train::train_steps(&mut trainer, &mnist, STEPS, |_, _| {}).unwrap())
    });
    group.finish();
}

criterion_group!(benches, train_step, train_loop, train_step_cuda);

/// criterion's main, with the steps on a rayon worker as the `kiln` binary runs them
/// (`kiln_tensor::cpu::on_worker`).
fn main() {
    kiln_tensor::cpu::on_worker(|| {
        benches();
        Criterion::default().configure_from_args().final_summary();
    });
}
