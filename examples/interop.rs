//! The interop check's kiln half (`just interop`): for each of kiln-gan's four GANs, builds the
//! generator and discriminator, runs one training step on random images (so weights, Adam and
//! the batch-norm running statistics have all moved), and saves each network's state dict as
//! safetensors under PyTorch's keys; likewise for kiln-vae's two VAEs (the convolutional one
//! with the Gaussian likelihood, so its `log_scale` travels too). Then it records inputs and
//! outputs for scripts/interop.py, which loads the checkpoints into the equivalent PyTorch
//! modules with `safetensors.torch.load_file` and `load_state_dict(strict=True)` and compares.
//!
//! Usage: cargo run --release --example interop -- OUT_DIR

use kiln_gan::{Architecture, GanConfig, GanTrainer};
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{DType, Device, Generator, Tensor};
use kiln_vae::{Likelihood, VaeArchitecture, VaeConfig, VaeTrainer};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BATCH: usize = 16;

fn main() -> Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: interop OUT_DIR")?);
    std::fs::create_dir_all(&out)?;
    let mut noise = Generator::new(3);
    for architecture in Architecture::ALL {
        let mut config = GanConfig::new(architecture);
        config.batch_size = BATCH;
        let mut trainer = GanTrainer::new(config, Device::Cpu)?;
        let random_images = |noise: &mut Generator| -> Result<Tensor> {
            let unit = Tensor::rand([BATCH, 1, 28, 28], DType::F32, Device::Cpu, noise)?;
            Ok(unit.affine(2.0, -1.0)?) // [16, 1, 28, 28] in [-1, 1)
        };
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| (i * 7) % 10).collect();
        let labels = Tensor::from_vec(labels, [BATCH], Device::Cpu)?; // [16]
        trainer.step(&random_images(&mut noise)?, &labels)?;

        let name = architecture.name();
        let networks = [
            ("generator", trainer.generator().store()),
            ("discriminator", trainer.discriminator().store()),
        ];
        for (network, store) in networks {
            let mut checkpoint = Checkpoint::new();
            checkpoint.insert_store("", store)?;
            checkpoint.save(out.join(format!("{name}.{network}.safetensors")))?;
        }

        // What PyTorch must reproduce: evaluation outputs, then training outputs and the
        // running statistics the training pass leaves.
        let z = trainer.fixed_latents(BATCH)?.0; // [16, z]
        let images = random_images(&mut noise)?;
        let conditional = architecture.is_conditional().then_some(&labels);
        let (g, d) = (trainer.generator(), trainer.discriminator());
        let mut io = Checkpoint::new();
        io.insert("z", &z)?;
        io.insert("images", &images)?;
        io.insert("labels", &labels)?;
        io.insert("generator.eval", &g.forward_t(&z, conditional, false)?)?; // [16, 1, 28, 28]
        io.insert(
            "discriminator.eval",
            &d.forward_t(&images, conditional, false)?,
        )?; // [16, 1]
        io.insert("generator.train", &g.forward_t(&z, conditional, true)?)?;
        io.insert(
            "discriminator.train",
            &d.forward_t(&images, conditional, true)?,
        )?;
        for (network, store) in networks {
            for (key, buffer) in store.buffers() {
                io.insert(format!("{network}.after.{key}"), &buffer)?;
            }
        }
        io.save(out.join(format!("{name}.io.safetensors")))?;
        println!(
            "{name}: wrote {}/{name}.{{generator,discriminator,io}}.safetensors ({} + {} parameters)",
            out.display(),
            g.store().num_parameters(),
            d.store().num_parameters()
        );
    }
    for architecture in VaeArchitecture::ALL {
        vae(architecture, &out, &mut noise)?;
    }
    Ok(())
}

/// One VAE: a training step on random images in [0, 1], its state dict, and what PyTorch must
/// reproduce: the posterior's μ and log σ², the decoder's logits at μ, and the two terms of the
/// negative ELBO per image for given reparameterisation noise.
fn vae(architecture: VaeArchitecture, out: &std::path::Path, noise: &mut Generator) -> Result<()> {
    let mut config = VaeConfig::new(architecture);
    config.batch_size = BATCH;
    if architecture == VaeArchitecture::ConvVae {
        config.likelihood = Likelihood::Gaussian;
    }
    let mut trainer = VaeTrainer::new(config, Device::Cpu)?;
    let random_images = |noise: &mut Generator| -> Result<Tensor> {
        Ok(Tensor::rand(
            [BATCH, 1, 28, 28],
            DType::F32,
            Device::Cpu,
            noise,
        )?) // [16, 1, 28, 28]
    };
    trainer.step(&random_images(noise)?)?;
    let name = architecture.name();
    let model = trainer.model();
    let mut checkpoint = Checkpoint::new();
    checkpoint.insert_store("", model.store())?;
    checkpoint.save(out.join(format!("{name}.model.safetensors")))?;

    let images = random_images(noise)?;
    let epsilon = Tensor::randn([BATCH, 20], 0.0, 1.0, DType::F32, Device::Cpu, noise)?; // [16, 20]
    let (mu, logvar) = model.encode(&images)?; // [16, 20] each
    let terms = model.elbo_terms(&images, &epsilon)?; // [16] each
    let mut io = Checkpoint::new();
    io.insert("images", &images)?;
    io.insert("epsilon", &epsilon)?;
    io.insert("mu", &mu)?;
    io.insert("logvar", &logvar)?;
    io.insert("logits", &model.decode(&mu)?)?; // [16, 1, 28, 28]
    io.insert("reconstruction", &terms.reconstruction)?;
    io.insert("kl", &terms.kl)?;
    io.save(out.join(format!("{name}.io.safetensors")))?;
    println!(
        "{name}: wrote {}/{name}.{{model,io}}.safetensors ({} parameters)",
        out.display(),
        model.store().num_parameters()
    );
    Ok(())
}
