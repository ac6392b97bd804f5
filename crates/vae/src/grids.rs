//! What a VAE shows beyond its samples, as PNG grids: `kiln reconstruct` (test images above
//! their reconstructions), `kiln interpolate` (straight walks in latent space between two test
//! digits' posterior means) and `kiln manifold` (for a 2-D latent, the decoder over the latent
//! plane). Each takes the trainer, the test split where it needs one, and the PNG to write, and
//! returns the line to print.

use std::path::Path;

use kiln_data::{Dataset, Scale};
use kiln_nn::limits::at_most;
use kiln_tensor::{no_grad, Device, Tensor};
use kiln_train::{Result, TrainError};

use crate::{latent, Reconstruction, VaeTrainer};

/// Tiles per row of the reconstruction grid.
const COLUMNS: usize = 8;
/// The most tiles along a side of a manifold grid or a walk: a 256 x 256 grid of 28-pixel
/// tiles is already a 7,680-pixel-wide PNG of 65,536 decoded images.
const MAX_GRID_SIDE: usize = 256;

/// Writes `images [N, 1, 28, 28]` in [0, 1] as a grid of [`COLUMNS`] per row.
fn save(images: &Tensor, out: &Path) -> Result<()> {
    Ok(kiln_data::save_grid(
        images,
        out,
        Scale::ZeroToOne,
        COLUMNS,
        2,
    )?)
}

/// Test images `[indices.len(), 1, 28, 28]` in [0, 1].
fn test_images(test: &Dataset, indices: &[usize], device: Device) -> Result<Tensor> {
    let picked: Vec<Tensor> = indices
        .iter()
        .map(|&i| test.images_tensor(i, 1, device)) // [1, 1, 28, 28] u8
        .collect::<std::result::Result<_, _>>()?;
    let pixels = Tensor::cat(&picked.iter().collect::<Vec<_>>(), 0)?;
    Ok(Scale::ZeroToOne.to_float(&pixels)?)
}

/// `kiln reconstruct`: the first `n` test images, each row of 8 above the row of their
/// reconstructions (the decoder's mean at the posterior mean).
pub fn reconstruct(trainer: &VaeTrainer, test: &Dataset, out: &Path, n: usize) -> Result<String> {
    if n == 0 || n > test.len() {
        return Err(TrainError::refused(format!(
            "--n {n}: the test split has {} images; ask for 1 to {}",
            test.len(),
            test.len()
        )));
    }
    let indices: Vec<usize> = (0..n).collect();
    let images = test_images(test, &indices, trainer.device())?; // [n, 1, 28, 28]
    let reconstructions = trainer.reconstruct(&images)?;
    // Rows alternate: 8 originals, their 8 reconstructions, the next 8 originals, ...
    let mut rows = Vec::new();
    for start in (0..n).step_by(COLUMNS) {
        let size = COLUMNS.min(n - start);
        for source in [&images, &reconstructions] {
            rows.push(source.narrow(0, start, size)?);
        }
    }
    let grid = Tensor::cat(&rows.iter().collect::<Vec<_>>(), 0)?;
    save(&grid, out)?;
    let scores = Reconstruction::measure(&images, &reconstructions)?;
    Ok(format!(
        "wrote {n} test images above their reconstructions to {}: MSE {:.5}, PSNR {:.2} dB, SSIM {:.4}\n",
        out.display(),
        scores.mse,
        scores.psnr,
        scores.ssim
    ))
}

/// `kiln interpolate`: rows of `steps` images walking in a straight line between the
/// posterior means of two test images — `from` to `to` if given, else 8 rows from the first
/// test image of digit d to the first of digit d + 1, for d = 0..7.
pub fn interpolate(
    trainer: &VaeTrainer,
    test: &Dataset,
    out: &Path,
    pair: Option<(usize, usize)>,
    steps: usize,
) -> Result<String> {
    if steps < 2 {
        return Err(TrainError::refused(format!(
            "--steps {steps}: a walk needs at least 2 images (its ends)"
        )));
    }
    at_most("number of images per walk (--steps)", steps, MAX_GRID_SIDE)
        .map_err(TrainError::Refused)?;
    let pairs = match pair {
        Some((from, to)) => {
            if let Some(bad) = [from, to].into_iter().find(|&i| i >= test.len()) {
                return Err(TrainError::refused(format!(
                    "test image {bad} does not exist: the test split has {} (0 to {})",
                    test.len(),
                    test.len() - 1
                )));
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
    let images = test_images(test, &ends, trainer.device())?; // [2·rows, 1, 28, 28]
    let means = trainer.encode_mean(&images)?; // [2·rows, L]
    let mut walks = Vec::new();
    for row in 0..pairs.len() {
        let ends = no_grad(|| {
            let from = means.narrow(0, 2 * row, 1)?.squeeze(0)?; // [L]
            let to = means.narrow(0, 2 * row + 1, 1)?.squeeze(0)?; // [L]
            Ok::<_, kiln_tensor::Error>((from, to))
        });
        let (from, to) = ends?;
        let walk = latent::interpolate(&from, &to, steps)?; // [steps, L]
        walks.push(walk);
    }
    let latents = Tensor::cat(&walks.iter().collect::<Vec<_>>(), 0)?;
    let grid = trainer.sample(&latents)?; // [rows·steps, 1, 28, 28]
    kiln_data::save_grid(&grid, out, Scale::ZeroToOne, steps, 2)?;
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
        out.display()
    ))
}

/// `kiln manifold`: for a VAE with a 2-D latent, the decoder's mean images over a
/// `size` x `size` grid of the latent plane spaced by prior probability.
pub fn manifold(trainer: &VaeTrainer, out: &Path, size: usize) -> Result<String> {
    let latent_dim = trainer.config().latent_dim;
    if latent_dim != 2 {
        return Err(TrainError::refused(format!(
            "kiln manifold needs a 2-D latent; this VAE has {latent_dim} (train one with --latent-dim 2)"
        )));
    }
    if size < 2 {
        return Err(TrainError::refused(format!(
            "--size {size}: the grid needs at least 2 x 2 images"
        )));
    }
    at_most("grid's side (--size)", size, MAX_GRID_SIDE).map_err(TrainError::Refused)?;
    let latents = latent::manifold_latents(size, trainer.device())?;
    let images = trainer.sample(&latents)?; // [size², 1, 28, 28]
    kiln_data::save_grid(&images, out, Scale::ZeroToOne, size, 0)?;
    Ok(format!(
        "wrote the decoder over a {size} x {size} grid of the latent plane (z from {:.2} to {:.2} on each axis) to {}\n",
        latent::normal_quantile(0.5 / size as f64),
        latent::normal_quantile(1.0 - 0.5 / size as f64),
        out.display()
    ))
}
