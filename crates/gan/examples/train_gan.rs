//! Trains the MLP GAN on the committed MNIST with kiln's library calls alone — no CLI — and
//! writes a sample grid and a checkpoint PyTorch can load:
//!
//! ```text
//! cargo run --release -p kiln-gan --example train_gan [STEPS]   # default: one epoch, 937 steps
//! ```

use kiln_data::{save_grid, Dataset, DatasetKind, Scale, Split};
use kiln_gan::{Architecture, GanConfig, GanTrainer};
use kiln_tensor::Device;
use kiln_train::{train_steps, Trainer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: u64 = std::env::args().nth(1).map_or(Ok(937), |s| s.parse())?;
    let mnist = Dataset::load(DatasetKind::Mnist, Split::Train, None)?;
    let mut gan = GanTrainer::new(GanConfig::new(Architecture::Gan), Device::Cpu)?;
    // kiln train's loop: its batches, its data order, a NaN check on every step.
    train_steps(&mut gan, &mnist, steps, |step, metrics| {
        if step % 100 == 0 || step == steps {
            println!("step {step}: {}", metrics.summary());
        }
    })?;
    // The 8 x 8 grid every epoch of `kiln train` draws, from the same fixed latents.
    let images = gan.grid_images(64)?;
    save_grid(&images, "gan_samples.png", Scale::MinusOneToOne, 8, 2)?;
    Trainer::checkpoint(&gan)?.save("gan.safetensors")?;
    println!("wrote gan_samples.png and gan.safetensors");
    Ok(())
}
