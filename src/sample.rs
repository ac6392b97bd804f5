//! `kiln sample`: images from a trained model's checkpoint — a GAN's generator or a VAE's
//! decoder from latents drawn from the prior N(0, I) (seeded) or from a latents file (so
//! another tool can be fed the same latents); the DDPM's reverse process through the DDPM or
//! DDIM sampler; the PixelCNN pixel by pixel — written as a PNG grid, an IDX file of u8 images
//! (what `kiln eval --samples` and MNIST tools read) or safetensors.

use std::path::PathBuf;

use kiln_data::{IdxArray, IdxData, Scale};
use kiln_diffusion::Sampler;
use kiln_nn::checkpoint::Checkpoint;
use kiln_run::Progress;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};

use crate::models::{Model, ModelKind};

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

/// The DDPM's sampler as the command line gives it: `--sampler ddpm|ddim`, `--steps N` and
/// `--eta E` (DDIM only), each optional.
#[derive(Debug, Clone, Copy, Default)]
pub struct SamplerChoice {
    /// `Some(true)`: DDPM (ancestral); `Some(false)`: DDIM.
    pub ancestral: Option<bool>,
    pub steps: Option<usize>,
    pub eta: Option<f64>,
}

impl SamplerChoice {
    fn given(&self) -> bool {
        self.ancestral.is_some() || self.steps.is_some() || self.eta.is_some()
    }

    /// The sampler for `model`: what was asked (checked against the model's T), or DDIM with
    /// 50 steps and η = 0. Asking for one for a model other than the DDPM is an error.
    pub fn resolve(&self, model: &Model) -> Result<Sampler, String> {
        let timesteps = match model {
            Model::Ddpm(trainer) => trainer.config().timesteps,
            _ if self.given() => {
                return Err(format!(
                    "--sampler, --steps and --eta choose how the DDPM samples; this checkpoint holds a {}",
                    model.kind()
                ))
            }
            _ => return Ok(Sampler::DEFAULT),
        };
        let sampler = match (self.ancestral, Sampler::DEFAULT) {
            (Some(true), _) if self.steps.is_some_and(|s| s != timesteps) || self.eta.is_some() => {
                return Err(format!(
                    "--sampler ddpm runs all {timesteps} steps with the posterior's noise: --steps and --eta are DDIM's"
                ))
            }
            (Some(true), _) => Sampler::Ddpm,
            (_, Sampler::Ddim { steps, eta }) => Sampler::Ddim {
                steps: self.steps.unwrap_or(steps),
                eta: self.eta.unwrap_or(eta),
            },
            (_, Sampler::Ddpm) => Sampler::Ddpm,
        };
        sampler
            .validate(timesteps)
            .map_err(|message| format!("--steps/--eta: {message}"))?;
        Ok(sampler)
    }
}

/// A progress bar for a sampler's network passes, started on the first report.
pub(crate) fn sampling_progress(quiet: bool, what: String) -> impl FnMut(usize, usize) {
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

/// Default number of samples: an 8 x 8 grid.
const DEFAULT_SAMPLES: usize = 64;

pub fn sample(options: SampleOptions) -> Result<String, String> {
    let format = OutputFormat::of(&options.out)?;
    crate::train::check_device(options.device)?;
    let (model, _) = Model::load(&options.checkpoint, options.device)?;
    let context = options.checkpoint.display().to_string();
    let sampler = options.sampler.resolve(&model)?;
    let Some(latent_dim) = model.latent_dim() else {
        return sample_without_latents(&model, &options, format, sampler);
    };

    let z = match &options.latents {
        Some(path) => {
            // Read on the host; the model may be on a GPU.
            let z = read_latents(path, latent_dim)?
                .to_device(options.device)
                .map_err(|e| e.to_string())?;
            if let Some(n) = options.n.filter(|&n| n != z.dims()[0]) {
                return Err(format!(
                    "--n {n} disagrees with the {} latents in {}",
                    z.dims()[0],
                    path.display()
                ));
            }
            z
        }
        None => {
            let n = options.n.unwrap_or(DEFAULT_SAMPLES);
            if n == 0 {
                return Err("--n must be at least 1".to_string());
            }
            let mut generator = Generator::new(options.seed);
            Tensor::randn(
                [n, latent_dim],
                0.0,
                1.0,
                DType::F32,
                options.device,
                &mut generator,
            )
            .map_err(|e| e.to_string())?
        }
    };
    let n = z.dims()[0];
    let labels = match (model.is_conditional(), options.digit) {
        (false, Some(_)) => {
            return Err(format!(
                "--digit needs the conditional GAN (cgan); {context} holds a {}",
                model.kind()
            ))
        }
        (false, None) => None,
        (true, digit) => {
            // One digit for all, or 0, 1, .., 9, 0, .. in grid order.
            let labels = (0..n as u32).map(|i| digit.unwrap_or(i % 10)).collect();
            Some(Tensor::from_vec(labels, [n], options.device).map_err(|e| e.to_string())?)
        }
    };
    let images = model.sample(&z, labels.as_ref())?; // [n, 1, 28, 28] in [-1, 1]
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
    Ok(wrote(&what, &model, &options))
}

/// `kiln sample` for the DDPM and the PixelCNN, which draw without latents.
fn sample_without_latents(
    model: &Model,
    options: &SampleOptions,
    format: OutputFormat,
    sampler: Sampler,
) -> Result<String, String> {
    let kind = model.kind();
    if options.latents.is_some() {
        return Err(format!(
            "--latents: the {kind} draws samples without latents; give --seed instead"
        ));
    }
    if options.digit.is_some() {
        return Err(format!(
            "--digit needs the conditional GAN (cgan); {} holds a {kind}",
            options.checkpoint.display()
        ));
    }
    let n = options.n.unwrap_or(DEFAULT_SAMPLES);
    if n == 0 {
        return Err("--n must be at least 1".to_string());
    }
    let how = match kind {
        ModelKind::Ddpm => format!(" ({sampler})"),
        _ => " (pixel by pixel)".to_string(),
    };
    let mut progress = sampling_progress(options.quiet, format!("drawing {n} samples{how}"));
    let images = model.generate(n, options.seed, options.device, sampler, &mut progress)?;
    write(&images, &options.out, format, &[])?;
    Ok(wrote(&format!("{n} samples{how}"), model, options))
}

fn wrote(what: &str, model: &Model, options: &SampleOptions) -> String {
    format!(
        "wrote {what} from the {} at step {} ({}) to {}\n",
        model.kind(),
        model.steps_done(),
        options.checkpoint.display(),
        options.out.display()
    )
}

/// Writes `images [n, 1, 28, 28]` in [-1, 1] to `out`; a safetensors file also holds `extra`.
fn write(
    images: &Tensor,
    out: &std::path::Path,
    format: OutputFormat,
    extra: &[(&str, Option<&Tensor>)],
) -> Result<(), String> {
    let n = images.dims()[0];
    match format {
        OutputFormat::Png => kiln_data::save_grid(images, out, Scale::MinusOneToOne, 8, 2)
            .map_err(|e| e.to_string())?,
        OutputFormat::Idx => {
            let pixels = no_grad(|| images.affine(127.5, 127.5)?.clamp(0.0, 255.0))
                .and_then(|p| p.to_dtype(DType::F32)?.to_vec::<f32>())
                .map_err(|e| e.to_string())?;
            let bytes = pixels.iter().map(|p| p.round() as u8).collect();
            let array =
                IdxArray::new(vec![n, 28, 28], IdxData::U8(bytes)).map_err(|e| e.to_string())?;
            kiln_data::write_idx(out, &array, kiln_data::Encoding::Raw)
                .map_err(|e| e.to_string())?;
        }
        OutputFormat::Safetensors => {
            let mut file = Checkpoint::new();
            let entries = std::iter::once(("images", Some(images))).chain(extra.iter().copied());
            for (name, tensor) in entries {
                if let Some(tensor) = tensor {
                    file.insert(name, tensor).map_err(|e| e.to_string())?;
                }
            }
            file.save(out).map_err(|e| e.to_string())?;
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
    fn of(path: &std::path::Path) -> Result<OutputFormat, String> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("png") => Ok(OutputFormat::Png),
            Some("idx") | Some("ubyte") => Ok(OutputFormat::Idx),
            Some("safetensors") => Ok(OutputFormat::Safetensors),
            _ => Err(format!(
                "--out {}: the name must end in .png, .idx or .safetensors",
                path.display()
            )),
        }
    }
}

/// The tensor `name` of the safetensors file at `path`, or its only tensor if it has no entry
/// of that name (so files written by other tools, with other names, still work).
pub(crate) fn entry_or_only(path: &std::path::Path, name: &str) -> Result<Tensor, String> {
    let file = Checkpoint::load(path).map_err(|e| e.to_string())?;
    match (file.get(name), file.tensors()) {
        (Some(tensor), _) => Ok(tensor.clone()),
        (None, [(_, only)]) => Ok(only.clone()),
        (None, entries) => Err(format!(
            "{}: expected a `{name}` entry (or a single tensor), found {} entries",
            path.display(),
            entries.len()
        )),
    }
}

/// Latents `[N, latent_dim]` from a safetensors file: its `latents` entry, or its only entry.
fn read_latents(path: &std::path::Path, latent_dim: usize) -> Result<Tensor, String> {
    let tensor = entry_or_only(path, "latents")?;
    let fits = tensor.rank() == 2 && tensor.dims()[1] == latent_dim && tensor.dims()[0] > 0;
    if !fits || !tensor.dtype().is_float() {
        return Err(format!(
            "{}: latents must be a float tensor [N, {latent_dim}], got {} {}",
            path.display(),
            tensor.shape(),
            tensor.dtype()
        ));
    }
    tensor.to_dtype(DType::F32).map_err(|e| e.to_string())
}
