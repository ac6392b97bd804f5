//! `kiln sample`: images from a trained model's checkpoint — a GAN's generator or a VAE's
//! decoder from latents drawn from the prior N(0, I) (seeded) or read from a file (so another
//! tool can be fed the same latents); the DDPM's reverse process through the DDPM or DDIM
//! sampler; the PixelCNN pixel by pixel — written as a PNG grid, an IDX file of u8 images
//! (what `kiln eval --samples` and MNIST tools read) or safetensors.

use std::path::{Path, PathBuf};

use kiln_data::{IdxArray, IdxData, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_nn::limits::{at_most, MAX_IMAGES};
use kiln_run::Progress;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};

use crate::config::Registry;
use crate::error::{Result, TrainError};
use crate::run::check_device;
use crate::trainer::{SamplerChoice, Trainer};

pub struct SampleOptions {
    pub checkpoint: PathBuf,
    pub n: Option<usize>,
    pub digit: Option<u32>,
    pub latents: Option<PathBuf>,
    pub seed: u64,
    pub out: PathBuf,
    pub device: Device,
    pub sampler: SamplerChoice,
    pub quiet: bool,
}

/// Default number of samples: an 8 x 8 grid.
const DEFAULT_SAMPLES: usize = 64;

/// A progress bar for a sampler's network passes, started on the first report.
pub fn sampling_progress(quiet: bool, what: String) -> impl FnMut(usize, usize) {
    let mut bar: Option<Progress> = None;
    move |done, total| {
        let bar = bar.get_or_insert_with(|| {
            let mut bar = Progress::new(total as u64, 0, quiet);
            bar.set_message(what.clone());
            bar
        });
        bar.inc(1);
        if done == total {
            bar.finish();
        }
    }
}

/// Draws the samples `options` asks for and writes them; returns the line to print.
pub fn sample(registry: &Registry, options: SampleOptions) -> Result<String> {
    let format = OutputFormat::of(&options.out)?;
    check_device(options.device)?;
    if let Some(n) = options.n {
        at_most("number of samples (--n)", n, MAX_IMAGES).map_err(TrainError::Refused)?;
    }
    let (trainer, _) = registry.load(&options.checkpoint, options.device)?;
    let trainer = trainer.as_ref();
    let context = options.checkpoint.display().to_string();
    let sampler = trainer.sampler(&options.sampler)?;
    let Some(latent_dim) = trainer.latent_dim() else {
        return sample_without_latents(trainer, &options, format, sampler);
    };
    let z = match &options.latents {
        Some(path) => {
            // Read on the host; the model may be on a GPU.
            let z = read_latents(path, latent_dim)?.to_device(options.device)?;
            if let Some(n) = options.n.filter(|&n| n != z.dims()[0]) {
                return Err(TrainError::refused(format!(
                    "--n {n} disagrees with the {} latents in {}",
                    z.dims()[0],
                    path.display()
                )));
            }
            z
        }
        None => {
            let n = options.n.unwrap_or(DEFAULT_SAMPLES);
            if n == 0 {
                return Err(TrainError::refused("--n must be at least 1"));
            }
            let mut generator = Generator::new(options.seed);
            let shape = [n, latent_dim];
            Tensor::randn(shape, 0.0, 1.0, DType::F32, options.device, &mut generator)?
        }
    };
    let n = z.dims()[0];
    let labels = match (trainer.is_conditional(), options.digit) {
        (false, Some(_)) => {
            return Err(TrainError::refused(format!(
                "--digit needs the conditional GAN (cgan); {context} holds a {}",
                trainer.name()
            )))
        }
        (false, None) => None,
        (true, digit) => {
            // One digit for all, or 0, 1, .., 9, 0, .. in grid order.
            let labels = (0..n as u32).map(|i| digit.unwrap_or(i % 10)).collect();
            Some(Tensor::from_vec(labels, [n], options.device)?)
        }
    };
    let images = trainer.sample(&z, labels.as_ref())?; // [n, 1, 28, 28] in [-1, 1]
    write(
        &images,
        &options.out,
        format,
        &[("latents", Some(&z)), ("labels", labels.as_ref())],
    )?;
    let what = match (options.digit, labels.is_some()) {
        (Some(digit), _) => format!("{n} samples of digit {digit}"),
        (None, true) => format!("{n} samples of digits 0-9"),
        (None, false) => format!("{n} samples"),
    };
    Ok(wrote(&what, trainer, &options))
}

/// `kiln sample` for the models that draw without latents (the DDPM, the PixelCNN).
fn sample_without_latents(
    trainer: &dyn Trainer,
    options: &SampleOptions,
    format: OutputFormat,
    sampler: Option<String>,
) -> Result<String> {
    let model = trainer.name();
    if options.latents.is_some() {
        return Err(TrainError::refused(format!(
            "--latents: the {model} draws samples without latents; give --seed instead"
        )));
    }
    if options.digit.is_some() {
        return Err(TrainError::refused(format!(
            "--digit needs the conditional GAN (cgan); {} holds a {model}",
            options.checkpoint.display()
        )));
    }
    let n = options.n.unwrap_or(DEFAULT_SAMPLES);
    if n == 0 {
        return Err(TrainError::refused("--n must be at least 1"));
    }
    let how = match sampler {
        Some(sampler) => format!(" ({sampler})"),
        None => " (pixel by pixel)".to_string(),
    };
    let mut progress = sampling_progress(options.quiet, format!("drawing {n} samples{how}"));
    let images = trainer.generate(n, options.seed, &options.sampler, &mut progress)?;
    write(&images, &options.out, format, &[])?;
    Ok(wrote(&format!("{n} samples{how}"), trainer, options))
}

fn wrote(what: &str, trainer: &dyn Trainer, options: &SampleOptions) -> String {
    format!(
        "wrote {what} from the {} at step {} ({}) to {}\n",
        trainer.name(),
        trainer.steps_done(),
        options.checkpoint.display(),
        options.out.display()
    )
}

/// Writes `images [n, 1, 28, 28]` in [-1, 1] to `out`; a safetensors file also holds `extra`.
fn write(
    images: &Tensor,
    out: &Path,
    format: OutputFormat,
    extra: &[(&str, Option<&Tensor>)],
) -> Result<()> {
    let n = images.dims()[0];
    match format {
        OutputFormat::Png => kiln_data::save_grid(images, out, Scale::MinusOneToOne, 8, 2)?,
        OutputFormat::Idx => {
            let pixels = no_grad(|| images.affine(127.5, 127.5)?.clamp(0.0, 255.0))?;
            let pixels = pixels.to_dtype(DType::F32)?.to_vec::<f32>()?;
            let bytes = pixels.iter().map(|p| p.round() as u8).collect();
            let array = IdxArray::new(vec![n, 28, 28], IdxData::U8(bytes))?;
            kiln_data::write_idx(out, &array, kiln_data::Encoding::Raw)?;
        }
        OutputFormat::Safetensors => {
            let mut file = Checkpoint::new();
            let entries = std::iter::once(("images", Some(images))).chain(extra.iter().copied());
            for (name, tensor) in entries {
                if let Some(tensor) = tensor {
                    file.insert(name, tensor)?;
                }
            }
            file.save(out)?;
        }
    }
    Ok(())
}

enum OutputFormat {
    Png,
    Idx,
    Safetensors,
}

impl OutputFormat {
    fn of(path: &Path) -> Result<OutputFormat> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => Ok(OutputFormat::Png),
            Some("idx") | Some("ubyte") => Ok(OutputFormat::Idx),
            Some("safetensors") => Ok(OutputFormat::Safetensors),
            _ => Err(TrainError::refused(format!(
                "--out {}: the name must end in .png, .idx or .safetensors",
                path.display()
            ))),
        }
    }
}

/// The tensor `name` of the safetensors file at `path`, or its only tensor if it has no entry
/// of that name (so files written by other tools, with other names, still work).
pub fn entry_or_only(path: &Path, name: &str) -> Result<Tensor> {
    let file = Checkpoint::load(path)?;
    match (file.get(name), file.tensors()) {
        (Some(tensor), _) => Ok(tensor.clone()),
        (None, [(_, only)]) => Ok(only.clone()),
        (None, entries) => Err(TrainError::refused(format!(
            "{}: expected a `{name}` entry (or a single tensor), found {} entries",
            path.display(),
            entries.len()
        ))),
    }
}

/// Latents `[N, latent_dim]` from a safetensors file: its `latents` entry, or its only entry.
fn read_latents(path: &Path, latent_dim: usize) -> Result<Tensor> {
    let tensor = entry_or_only(path, "latents")?;
    let fits = tensor.rank() == 2 && tensor.dims()[1] == latent_dim && tensor.dims()[0] > 0;
    if !fits || !tensor.dtype().is_float() {
        return Err(TrainError::refused(format!(
            "{}: latents must be a float tensor [N, {latent_dim}], got {} {}",
            path.display(),
            tensor.shape(),
            tensor.dtype()
        )));
    }
    Ok(tensor.to_dtype(DType::F32)?)
}
