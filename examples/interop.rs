//! The interop check's kiln half (`just interop`): builds the DCGAN generator and
//! discriminator with kiln-nn, runs a training-mode forward pass so the batch-norm running
//! statistics are not their initial values, and saves each model's state dict as safetensors
//! with PyTorch's keys. Then it records inputs and outputs for scripts/interop.py, which loads
//! the checkpoints into the equivalent PyTorch modules with `safetensors.torch.load_file` and
//! `load_state_dict(strict=True)` and compares.
//!
//! Usage: cargo run --release --example interop -- OUT_DIR

use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::layers::{
    BatchNorm1d, BatchNorm2d, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
    Flatten, LeakyReLU, Linear, LinearConfig, ReLU, Sequential, Tanh, Unflatten,
};
use kiln_nn::{Init, ModuleT, ParamStore};
use kiln_tensor::{DType, Device, Generator, Tensor};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const LATENT: usize = 100;
const BATCH: usize = 16;

/// z [N, 100] → fc 128·7·7 → BN → ReLU → [N, 128, 7, 7] → ConvT(128→64, 4, 2, 1) → BN → ReLU
/// → ConvT(64→1, 4, 2, 1) → tanh → [N, 1, 28, 28], weights N(0, 0.02²).
fn generator(store: &ParamStore) -> Result<Sequential> {
    let main = store.root().sub("main");
    let up = ConvTranspose2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        weight_init: Init::DCGAN,
        ..Default::default()
    };
    Ok(Sequential::new()
        .add(Linear::with_config(
            &main.sub(0),
            LATENT,
            128 * 7 * 7,
            LinearConfig::dcgan(),
        )?)
        .add(BatchNorm1d::new(&main.sub(1), 128 * 7 * 7)?)
        .add(ReLU)
        .add(Unflatten::new(1, vec![128, 7, 7]))
        .add(ConvTranspose2d::new(&main.sub(4), 128, 64, [4, 4], up)?)
        .add(BatchNorm2d::new(&main.sub(5), 64)?)
        .add(ReLU)
        .add(ConvTranspose2d::new(&main.sub(7), 64, 1, [4, 4], up)?)
        .add(Tanh))
}

/// x [N, 1, 28, 28] → Conv(1→64, 4, 2, 1) → LReLU → Conv(64→128, 4, 2, 1) → BN → LReLU →
/// flatten → Linear(128·7·7 → 1) → [N, 1], weights N(0, 0.02²).
fn discriminator(store: &ParamStore) -> Result<Sequential> {
    let main = store.root().sub("main");
    let down = Conv2dConfig {
        stride: [2, 2],
        padding: [1, 1],
        weight_init: Init::DCGAN,
        ..Default::default()
    };
    Ok(Sequential::new()
        .add(Conv2d::new(&main.sub(0), 1, 64, [4, 4], down)?)
        .add(LeakyReLU::new(0.2))
        .add(Conv2d::new(&main.sub(2), 64, 128, [4, 4], down)?)
        .add(BatchNorm2d::new(&main.sub(3), 128)?)
        .add(LeakyReLU::new(0.2))
        .add(Flatten::default())
        .add(Linear::with_config(
            &main.sub(6),
            128 * 7 * 7,
            1,
            LinearConfig::dcgan(),
        )?))
}

fn main() -> Result<()> {
    let out = std::path::PathBuf::from(std::env::args().nth(1).ok_or("usage: interop OUT_DIR")?);
    std::fs::create_dir_all(&out)?;
    let generator_store = ParamStore::new(Device::Cpu, DType::F32, 1);
    let g = generator(&generator_store)?;
    let discriminator_store = ParamStore::new(Device::Cpu, DType::F32, 2);
    let d = discriminator(&discriminator_store)?;
    let mut noise = Generator::new(3);
    let latents = |noise: &mut Generator| {
        Tensor::randn([BATCH, LATENT], 0.0, 1.0, DType::F32, Device::Cpu, noise)
    };

    // A warm-up training pass moves the running statistics off zeros and ones.
    let warm_up = latents(&mut noise)?;
    let fake = g.forward_t(&warm_up, true)?;
    d.forward_t(&fake, true)?;

    for (store, name) in [
        (&generator_store, "generator"),
        (&discriminator_store, "discriminator"),
    ] {
        let mut checkpoint = Checkpoint::new();
        checkpoint.insert_store("", store)?;
        checkpoint.save(out.join(format!("{name}.safetensors")))?;
    }

    // What PyTorch must reproduce: evaluation outputs, then training outputs and the running
    // statistics the training pass leaves.
    let z = latents(&mut noise)?; // [16, 100]
    let images =
        Tensor::rand([BATCH, 1, 28, 28], DType::F32, Device::Cpu, &mut noise)?.affine(2.0, -1.0)?;
    let mut io = Checkpoint::new();
    io.insert("z", &z)?;
    io.insert("images", &images)?;
    io.insert("generator.eval", &g.forward_t(&z, false)?)?; // [16, 1, 28, 28]
    io.insert("discriminator.eval", &d.forward_t(&images, false)?)?; // [16, 1]
    io.insert("generator.train", &g.forward_t(&z, true)?)?;
    io.insert("discriminator.train", &d.forward_t(&images, true)?)?;
    for (store, name) in [
        (&generator_store, "generator"),
        (&discriminator_store, "discriminator"),
    ] {
        for (key, buffer) in store.buffers() {
            io.insert(format!("{name}.after.{key}"), &buffer)?;
        }
    }
    io.save(out.join("io.safetensors"))?;
    println!(
        "wrote {}/{{generator,discriminator,io}}.safetensors ({} + {} parameters)",
        out.display(),
        generator_store.num_parameters(),
        discriminator_store.num_parameters()
    );
    Ok(())
}
