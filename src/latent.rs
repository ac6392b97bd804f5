//! What a VAE's checkpoint shows beyond its samples, as PNG grids: `kiln reconstruct` (test
//! images above their reconstructions), `kiln interpolate` (straight walks in latent space
//! between two test digits' posterior means) and `kiln manifold` (for a 2-D latent, the
//! decoder over the latent plane). GAN checkpoints are refused: they have no encoder.

use std::path::{Path, PathBuf};

use kiln_data::{Dataset, DatasetKind, Scale, Split};
use kiln_tensor::{no_grad, Device, Tensor};
use kiln_vae::{latent, VaeTrainer};

use crate::eval::{load_model, Reconstruction};
use crate::models::Model;

/// Where the images come from and the grid goes, for all three commands.
pub struct LatentOptions {
    pub checkpoint: PathBuf,
    /// The test split to take images from (default: what the checkpoint trained on).
    pub dataset: Option<DatasetKind>,
    pub data_dir: Option<PathBuf>,
    pub out: PathBuf,
    pub device: Device,
}

/// Tiles per row of every grid here.
const COLUMNS: usize = 8;

/// The VAE of `options.checkpoint` (or the one-line reason it is none) and the dataset it
/// trained on, if the checkpoint says.
fn load_vae(
    options: &LatentOptions,
    command: &str,
) -> Result<(VaeTrainer, Option<DatasetKind>), String> {
    crate::train::check_device(options.device)?;
    if options.out.extension().is_none_or(|e| e != "png") {
        return Err(format!(
            "--out {}: kiln {command} writes a PNG grid; name it FILE.png",
            options.out.display()
        ));
    }
    let (model, trained_on) = load_model(&options.checkpoint, options.device)?;
    let trainer = match model {
        Model::Vae(trainer) => trainer,
        other => {
            return Err(format!(
                "kiln {command} needs a VAE checkpoint (vae or conv-vae); {} holds a {} model",
                options.checkpoint.display(),
                other.kind()
            ))
        }
    };
    Ok((trainer, trained_on))
}

/// The VAE of `options.checkpoint` and the test split of `--dataset` (default: the one it
/// trained on).
fn vae_and_test(options: &LatentOptions, command: &str) -> Result<(VaeTrainer, Dataset), String> {
    let (trainer, trained_on) = load_vae(options, command)?;
    let kind = options.dataset.or(trained_on).unwrap_or(DatasetKind::Mnist);
    let test =
        Dataset::load(kind, Split::Test, options.data_dir.as_deref()).map_err(|e| e.to_string())?;
    Ok((trainer, test))
}

/// Writes `images [N, 1, 28, 28]` in [0, 1] as a grid of [`COLUMNS`] per row.
fn save(images: &Tensor, out: &Path) -> Result<(), String> {
    kiln_data::save_grid(images, out, Scale::ZeroToOne, COLUMNS, 2).map_err(|e| e.to_string())
}

/// Test images `[indices.len(), 1, 28, 28]` in [0, 1].
fn test_images(test: &Dataset, indices: &[usize], device: Device) -> Result<Tensor, String> {
    let picked: Vec<Tensor> = indices
        .iter()
        .map(|&i| test.images_tensor(i, 1, device)) // [1, 1, 28, 28] u8
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let pixels = Tensor::cat(&picked.iter().collect::<Vec<_>>(), 0).map_err(|e| e.to_string())?;
    Scale::ZeroToOne
        .to_float(&pixels)
        .map_err(|e| e.to_string())
}

/// `kiln reconstruct`: the first `n` test images, each row of 8 above the row of their
/// reconstructions (the decoder's mean at the posterior mean).
pub fn reconstruct(options: LatentOptions, n: usize) -> Result<String, String> {
    let (trainer, test) = vae_and_test(&options, "reconstruct")?;
    if n == 0 || n > test.len() {
        return Err(format!(
            "--n {n}: the test split has {} images; ask for 1 to {}",
            test.len(),
            test.len()
        ));
    }
    let indices: Vec<usize> = (0..n).collect();
    let images = test_images(&test, &indices, options.device)?; // [n, 1, 28, 28]
    let reconstructions = trainer.reconstruct(&images).map_err(|e| e.to_string())?;
    // Rows alternate: 8 originals, their 8 reconstructions, the next 8 originals, ...
    let mut rows = Vec::new();
    for start in (0..n).step_by(COLUMNS) {
        let size = COLUMNS.min(n - start);
        for source in [&images, &reconstructions] {
            rows.push(source.narrow(0, start, size).map_err(|e| e.to_string())?);
        }
    }
    let grid = Tensor::cat(&rows.iter().collect::<Vec<_>>(), 0).map_err(|e| e.to_string())?;
    save(&grid, &options.out)?;
    let scores = Reconstruction::measure(&images, &reconstructions)?;
    Ok(format!(
        "wrote {n} test images above their reconstructions to {}: MSE {:.5}, PSNR {:.2} dB, SSIM {:.4}\n",
        options.out.display(),
        scores.mse,
        scores.psnr,
        scores.ssim
    ))
}

/// `kiln interpolate`: rows of `steps` images walking in a straight line between the
/// posterior means of two test images — `from` to `to` if given, else 8 rows from the first
/// test image of digit d to the first of digit d + 1, for d = 0..7.
pub fn interpolate(
    options: LatentOptions,
    pair: Option<(usize, usize)>,
    steps: usize,
) -> Result<String, String> {
    let (trainer, test) = vae_and_test(&options, "interpolate")?;
    if steps < 2 {
        return Err(format!(
            "--steps {steps}: a walk needs at least 2 images (its ends)"
        ));
    }
    let pairs = match pair {
        Some((from, to)) => {
            if let Some(bad) = [from, to].into_iter().find(|&i| i >= test.len()) {
                return Err(format!(
                    "test image {bad} does not exist: the test split has {} (0 to {})",
                    test.len(),
                    test.len() - 1
                ));
            }
            vec![(from, to)]
        }
        None => {
            let first = |digit: u8| test.labels().iter().position(|&l| l == digit);
            (0..8u8)
                .filter_map(|d| Some((first(d)?, first(d + 1)?)))
                .collect()
        }
    };
    let ends: Vec<usize> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
    let images = test_images(&test, &ends, options.device)?; // [2·rows, 1, 28, 28]
    let means = trainer.encode_mean(&images).map_err(|e| e.to_string())?; // [2·rows, L]
    let mut walks = Vec::new();
    for row in 0..pairs.len() {
        let ends = no_grad(|| {
            let from = means.narrow(0, 2 * row, 1)?.squeeze(0)?; // [L]
            let to = means.narrow(0, 2 * row + 1, 1)?.squeeze(0)?; // [L]
            Ok::<_, kiln_tensor::Error>((from, to))
        });
        let (from, to) = ends.map_err(|e| e.to_string())?;
        let walk = latent::interpolate(&from, &to, steps).map_err(|e| e.to_string())?; // [steps, L]
        walks.push(walk);
    }
    let latents = Tensor::cat(&walks.iter().collect::<Vec<_>>(), 0).map_err(|e| e.to_string())?;
    let grid = trainer.sample(&latents).map_err(|e| e.to_string())?; // [rows·steps, 1, 28, 28]
    kiln_data::save_grid(&grid, &options.out, Scale::ZeroToOne, steps, 2)
        .map_err(|e| e.to_string())?;
    let described: Vec<String> = pairs
        .iter()
        .map(|&(a, b)| format!("{a} ({}) → {b} ({})", test.labels()[a], test.labels()[b]))
        .collect();
    let walks = match pairs.len() {
        1 => "1 walk".to_string(),
        n => format!("{n} walks"),
    };
    Ok(format!(
        "wrote {walks} of {steps} steps between test images {} to {}\n",
        described.join(", "),
        options.out.display()
    ))
}

/// `kiln manifold`: for a VAE with a 2-D latent, the decoder's mean images over a
/// `size` x `size` grid of the latent plane spaced by prior probability.
pub fn manifold(options: LatentOptions, size: usize) -> Result<String, String> {
    let (trainer, _) = load_vae(&options, "manifold")?;
    let latent_dim = trainer.config().latent_dim;
    if latent_dim != 2 {
        return Err(format!(
            "kiln manifold needs a 2-D latent; {} has {latent_dim} (train one with --latent-dim 2)",
            options.checkpoint.display()
        ));
    }
    if size < 2 {
        return Err(format!(
            "--size {size}: the grid needs at least 2 x 2 images"
        ));
    }
    let latents = latent::manifold_latents(size, options.device).map_err(|e| e.to_string())?;
    let images = trainer.sample(&latents).map_err(|e| e.to_string())?; // [size², 1, 28, 28]
    kiln_data::save_grid(&images, &options.out, Scale::ZeroToOne, size, 0)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "wrote the decoder over a {size} x {size} grid of the latent plane (z from {:.2} to {:.2} on each axis) to {}\n",
        latent::normal_quantile(0.5 / size as f64),
        latent::normal_quantile(1.0 - 0.5 / size as f64),
        options.out.display()
    ))
}
