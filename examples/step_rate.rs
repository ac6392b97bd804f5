//! kiln's half of `just bench-vs-torch` (benches/reference/vs_torch.py): times one model's
//! training step, the same step as the train_step bench (random images, the model's default
//! config at the given batch), in a process of its own, so its peak RSS is the model's alone.
//! Prints one JSON line: images/s, ms/step, minor page faults per step over the timed steps,
//! and the process's peak RSS. Threads: rayon's pool, sized by `RAYON_NUM_THREADS`.
//!
//! Usage: cargo run --release --example step_rate -- MODEL [--batch B] [--seconds S]
//! MODEL: gan, dcgan, cgan, wgan-gp, vae, conv-vae, ddpm, pixelcnn.

use std::time::{Duration, Instant};

use kiln_autoregressive::{PixelCnnConfig, PixelCnnTrainer};
use kiln_diffusion::{DdpmConfig, DdpmTrainer};
use kiln_gan::{Architecture, GanConfig, GanTrainer};
use kiln_tensor::{DType, Device, Generator, Tensor};
use kiln_vae::{VaeArchitecture, VaeConfig, VaeTrainer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One step of a model, boxed so every family times through the same loop.
type Step = Box<dyn FnMut() -> Result<()>>;

/// The model's step on random images `[batch, 1, 28, 28]` (in [-1, 1) for the GANs and the
/// DDPM, [0, 1) for the VAEs and the PixelCNN), and the batch it runs at.
fn model_step(model: &str, batch: Option<usize>) -> Result<(Step, usize)> {
    let mut rng = Generator::new(0);
    let mut images = |batch: usize, signed: bool| -> Result<Tensor> {
        let unit = Tensor::rand([batch, 1, 28, 28], DType::F32, Device::Cpu, &mut rng)?;
        Ok(if signed {
            unit.affine(2.0, -1.0)?
        } else {
            unit
        })
    };
    if let Some(architecture) = Architecture::from_name(model) {
        let mut config = GanConfig::new(architecture);
        config.batch_size = batch.unwrap_or(config.batch_size);
        let batch = config.batch_size;
        let mut trainer = GanTrainer::new(config, Device::Cpu)?;
        let real = images(batch, true)?;
        let digits: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        let labels = Tensor::from_vec(digits, [batch], Device::Cpu)?; // [B] u32
        let step = move || -> Result<()> {
            trainer.step(&real, &labels)?;
            Ok(())
        };
        return Ok((Box::new(step), batch));
    }
    if let Some(architecture) = VaeArchitecture::from_name(model) {
        let mut config = VaeConfig::new(architecture);
        config.batch_size = batch.unwrap_or(config.batch_size);
        let batch = config.batch_size;
        let mut trainer = VaeTrainer::new(config, Device::Cpu)?;
        let grey = images(batch, false)?;
        let step = move || -> Result<()> {
            trainer.step(&grey)?;
            Ok(())
        };
        return Ok((Box::new(step), batch));
    }
    match model {
        "ddpm" => {
            let mut config = DdpmConfig::default();
            config.batch_size = batch.unwrap_or(config.batch_size);
            let batch = config.batch_size;
            let mut trainer = DdpmTrainer::new(config, Device::Cpu)?;
            let signed = images(batch, true)?;
            let step = move || -> Result<()> {
                trainer.step(&signed)?;
                Ok(())
            };
            Ok((Box::new(step), batch))
        }
        "pixelcnn" => {
            let mut config = PixelCnnConfig::new();
            config.batch_size = batch.unwrap_or(config.batch_size);
            let batch = config.batch_size;
            let mut trainer = PixelCnnTrainer::new(config, Device::Cpu)?;
            let grey = images(batch, false)?;
            let step = move || -> Result<()> {
                trainer.step(&grey)?;
                Ok(())
            };
            Ok((Box::new(step), batch))
        }
        _ => Err(format!("unknown model {model:?}").into()),
    }
}

/// This process's minor page faults so far and its peak resident set in bytes.
fn usage() -> (u64, u64) {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    (usage.ru_minflt as u64, usage.ru_maxrss as u64 * 1024) // ru_maxrss is in KiB on Linux
}

fn main() -> Result<()> {
    let usage_line = "usage: step_rate MODEL [--batch B] [--seconds S]";
    let mut args = std::env::args().skip(1);
    let model = args.next().ok_or(usage_line)?;
    let (mut batch, mut seconds) = (None, 5.0f64);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(usage_line)?;
        match flag.as_str() {
            "--batch" => batch = Some(value.parse()?),
            "--seconds" => seconds = value.parse()?,
            _ => return Err(usage_line.into()),
        }
    }
    // As the kiln binary runs: the allocator tuned, the step on a rayon worker.
    kiln_tensor::cpu::tune_allocator();
    let timed = kiln_tensor::cpu::on_worker(|| {
        time_steps(&model, batch, seconds).map_err(|e| e.to_string())
    });
    Ok(timed?)
}

/// Times `model`'s step for `seconds` after a warm-up and prints the JSON line.
fn time_steps(model: &str, batch: Option<usize>, seconds: f64) -> Result<()> {
    let (mut step, batch) = model_step(model, batch)?;

    // Warm-up: at least 3 steps and half a second, so pools, caches and packed weights settle.
    let warm_up = Instant::now();
    let mut warm_steps = 0;
    while warm_steps < 3 || warm_up.elapsed() < Duration::from_millis(500) {
        step()?;
        warm_steps += 1;
    }
    let (faults_before, _) = usage();
    let started = Instant::now();
    let mut steps = 0u64;
    while steps < 5 || started.elapsed().as_secs_f64() < seconds {
        step()?;
        steps += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (faults_after, peak_rss) = usage();
    let threads = rayon::current_num_threads();
    let line = serde_json::json!({
        "side": "kiln",
        "model": model,
        "batch": batch,
        "threads": threads,
        "steps": steps,
        "images_per_s": steps as f64 * batch as f64 / elapsed,
        "ms_per_step": elapsed / steps as f64 * 1e3,
        "page_faults_per_step": (faults_after - faults_before) as f64 / steps as f64,
        "peak_rss_mib": peak_rss as f64 / (1024.0 * 1024.0),
        "cpu_kernel": std::env::var("KILN_CPU_KERNEL").unwrap_or_default(),
    });
    println!("{line}");
    Ok(())
}
