//! `kiln sample`: images from a trained generator's (GAN's or VAE decoder's) checkpoint, from
//! latents drawn from the prior N(0, I) (seeded) or
//! from a latents file (so another tool can be fed the same latents), written as a PNG grid, an
//! IDX file of u8 images (what `kiln eval --samples` and MNIST tools read) or safetensors.

use std::path::PathBuf;

use kiln_data::{IdxArray, IdxData, Scale};
use kiln_nn::checkpoint::Checkpoint;
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor};

use crate::models::Model;

pub struct SampleOptions {
    pub checkpoint: PathBuf,
    pub n: Option<usize>,
    pub digit: Option<u32>,
    pub latents: Option<PathBuf>,
    pub seed: u64,
    pub out: PathBuf,
    pub device: Device,
}

/// Default number of samples: an 8 x 8 grid.
const DEFAULT_SAMPLES: usize = 64;

pub fn sample(options: SampleOptions) -> Result<String, String> {
    let format = OutputFormat::of(&options.out)?;
    crate::train::check_device(options.device)?;
    let (model, _) = Model::load(&options.checkpoint, options.device)?;
    let context = options.checkpoint.display().to_string();
    let latent_dim = model.latent_dim();

    let z = match &options.latents {
        Some(path) => {
            let z = read_latents(path, latent_dim)?;
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
    match format {
        OutputFormat::Png => {
            kiln_data::save_grid(&images, &options.out, Scale::MinusOneToOne, 8, 2)
                .map_err(|e| e.to_string())?
        }
        OutputFormat::Idx => {
            let pixels = no_grad(|| images.affine(127.5, 127.5)?.clamp(0.0, 255.0))
                .and_then(|p| p.to_dtype(DType::F32)?.to_vec::<f32>())
                .map_err(|e| e.to_string())?;
            let bytes = pixels.iter().map(|p| p.round() as u8).collect();
            let array =
                IdxArray::new(vec![n, 28, 28], IdxData::U8(bytes)).map_err(|e| e.to_string())?;
            kiln_data::write_idx(&options.out, &array, kiln_data::Encoding::Raw)
                .map_err(|e| e.to_string())?;
        }
        OutputFormat::Safetensors => {
            let mut file = Checkpoint::new();
            let entries = [
                ("images", Some(&images)),
                ("latents", Some(&z)),
                ("labels", labels.as_ref()),
            ];
            for (name, tensor) in entries {
                if let Some(tensor) = tensor {
                    file.insert(name, tensor).map_err(|e| e.to_string())?;
                }
            }
            file.save(&options.out).map_err(|e| e.to_string())?;
        }
    }
    let what = match (options.digit, labels.is_some()) {
        (Some(digit), _) => format!("{n} samples of digit {digit}"),
        (None, true) => format!("{n} samples of digits 0-9"),
        (None, false) => format!("{n} samples"),
    };
    Ok(format!(
        "wrote {what} from the {} at step {} ({}) to {}\n",
        model.kind(),
        model.steps_done(),
        options.checkpoint.display(),
        options.out.display()
    ))
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
