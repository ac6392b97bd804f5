//! How close one image is to another, pixel for pixel: MSE, PSNR and SSIM, for judging
//! reconstructions (an autoencoder's output against its input). Grayscale images as `&[f32]`,
//! row-major, in a range the caller states (`data_range`: 1 for [0, 1], 2 for [-1, 1], 255 for
//! bytes); arithmetic in f64. Not for judging a generated set without pairs (see `frechet`,
//! `scores`).

use crate::frechet::{check_finite, MetricError};

/// Checks that `a` and `b` are non-empty, equally long and finite.
fn check_pair(what: &str, a: &[f32], b: &[f32]) -> Result<(), MetricError> {
    if a.len() != b.len() {
        return Err(MetricError::SizeMismatch {
            what: format!("{what}: lengths of the two images"),
            left: a.len(),
            right: b.len(),
        });
    }
    if a.is_empty() {
        return Err(MetricError::TooFewSamples {
            what: format!("{what}: pixels"),
            needed: 1,
            got: 0,
        });
    }
    check_finite(&format!("{what}: first image"), a)?;
    check_finite(&format!("{what}: second image"), b)
}

fn check_data_range(what: &str, data_range: f64) -> Result<(), MetricError> {
    if data_range.is_finite() && data_range > 0.0 {
        Ok(())
    } else {
        Err(MetricError::Invalid(format!(
            "{what}: data_range must be finite and > 0, got {data_range}"
        )))
    }
}

/// Mean squared difference of `a` and `b` (any equal, non-zero length; a batch is pooled).
pub fn mse(a: &[f32], b: &[f32]) -> Result<f64, MetricError> {
    check_pair("MSE", a, b)?;
    let sum: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let difference = x as f64 - y as f64;
            difference * difference
        })
        .sum();
    Ok(sum / a.len() as f64)
}

/// Peak signal-to-noise ratio in dB, `10·log10(data_range² / MSE)`, as skimage's
/// `peak_signal_noise_ratio(a, b, data_range=data_range)`: `f64::INFINITY` for identical inputs.
/// Over the whole slice; for the mean PSNR of a batch, call it per image.
pub fn psnr(a: &[f32], b: &[f32], data_range: f64) -> Result<f64, MetricError> {
    check_data_range("PSNR", data_range)?;
    let error = mse(a, b)?;
    if error == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (data_range * data_range / error).log10())
}

/// Standard deviation of SSIM's Gaussian window (Wang et al. 2004).
const SSIM_SIGMA: f64 = 1.5;
/// Window radius: scipy's `int(truncate·σ + 0.5)` with skimage's truncate = 3.5, so 11x11.
const SSIM_RADIUS: usize = 5;
const SSIM_K1: f64 = 0.01;
const SSIM_K2: f64 = 0.03;

/// The 11 taps of the normalised 1-D Gaussian, as scipy's `_gaussian_kernel1d(1.5, 0, 5)`.
fn gaussian_window() -> [f64; 2 * SSIM_RADIUS + 1] {
    let mut window = [0.0; 2 * SSIM_RADIUS + 1];
    for (i, w) in window.iter_mut().enumerate() {
        let x = i as f64 - SSIM_RADIUS as f64;
        *w = (-0.5 * x * x / (SSIM_SIGMA * SSIM_SIGMA)).exp();
    }
    let sum: f64 = window.iter().sum();
    window.map(|w| w / sum)
}

/// The separable Gaussian filter of `field` ([height, width]) at the positions whose whole
/// window lies inside the image: [height - 10, width - 10].
fn filter_valid(
    field: &[f64],
    width: usize,
    height: usize,
    window: &[f64; 2 * SSIM_RADIUS + 1],
) -> Vec<f64> {
    let (out_width, out_height) = (width - 2 * SSIM_RADIUS, height - 2 * SSIM_RADIUS);
    // horizontal: [height, out_width]
    let mut horizontal: Vec<f64> = Vec::with_capacity(height * out_width);
    for row in field.chunks_exact(width) {
        for x in 0..out_width {
            horizontal.push(window.iter().zip(&row[x..]).map(|(w, v)| w * v).sum());
        }
    }
    // vertical: [out_height, out_width]
    let mut out: Vec<f64> = Vec::with_capacity(out_height * out_width);
    for y in 0..out_height {
        for x in 0..out_width {
            out.push(
                window
                    .iter()
                    .enumerate()
                    .map(|(t, w)| w * horizontal[(y + t) * out_width + x])
                    .sum(),
            );
        }
    }
    out
}

/// Structural similarity (Wang et al. 2004) of two grayscale `width x height` images, row-major:
/// the mean over the image of
/// `(2·μa·μb + C1)(2·σab + C2) / ((μa² + μb² + C1)(σa² + σb² + C2))`,
/// C1 = (0.01·data_range)², C2 = (0.03·data_range)².
///
/// Follows `skimage.metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
/// use_sample_covariance=False, data_range=data_range)`: local means, variances and covariance
/// are Gaussian-weighted (σ = 1.5, normalised 11-tap window, i.e. scipy's truncate = 3.5) and
/// population-normalised (`σa² = E[a²] - E[a]²`), and the mean is taken over the positions at
/// least 5 pixels from every border, where the 11x11 window lies inside the image (skimage
/// filters with reflection and then crops those 5 pixels, which comes to the same). skimage
/// computes in the input's float type; this computes in f64. Both sides need at least 11 pixels.
/// 1 for identical images; lower (down to -1) as they differ.
pub fn ssim(
    a: &[f32],
    b: &[f32],
    width: usize,
    height: usize,
    data_range: f64,
) -> Result<f64, MetricError> {
    check_ssim_shape(width, height, data_range)?;
    let pixels = width * height;
    for (what, image) in [("first image", a), ("second image", b)] {
        if image.len() != pixels {
            return Err(MetricError::Length {
                what: format!("SSIM: {what} ({width}x{height})"),
                expected: pixels,
                got: image.len(),
            });
        }
    }
    check_pair("SSIM", a, b)?;
    Ok(ssim_unchecked(a, b, width, height, data_range))
}

fn check_ssim_shape(width: usize, height: usize, data_range: f64) -> Result<(), MetricError> {
    check_data_range("SSIM", data_range)?;
    let window = 2 * SSIM_RADIUS + 1;
    if width < window || height < window {
        return Err(MetricError::Invalid(format!(
            "SSIM: images of {width}x{height} are smaller than the {window}x{window} window"
        )));
    }
    width.checked_mul(height).map(|_| ()).ok_or_else(|| {
        MetricError::Invalid(format!("SSIM: {width}x{height} pixels overflow usize"))
    })
}

fn ssim_unchecked(a: &[f32], b: &[f32], width: usize, height: usize, data_range: f64) -> f64 {
    let window = gaussian_window();
    let filter = |field: Vec<f64>| filter_valid(&field, width, height, &window);
    let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    // Each: [height - 10, width - 10]
    let mean_a = filter(a.clone());
    let mean_b = filter(b.clone());
    let mean_aa = filter(a.iter().map(|v| v * v).collect());
    let mean_bb = filter(b.iter().map(|v| v * v).collect());
    let mean_ab = filter(a.iter().zip(&b).map(|(x, y)| x * y).collect());
    let c1 = (SSIM_K1 * data_range).powi(2);
    let c2 = (SSIM_K2 * data_range).powi(2);
    let total: f64 = (0..mean_a.len())
        .map(|i| {
            let (ma, mb) = (mean_a[i], mean_b[i]);
            let variance_a = mean_aa[i] - ma * ma;
            let variance_b = mean_bb[i] - mb * mb;
            let covariance = mean_ab[i] - ma * mb;
            ((2.0 * ma * mb + c1) * (2.0 * covariance + c2))
                / ((ma * ma + mb * mb + c1) * (variance_a + variance_b + c2))
        })
        .sum();
    total / mean_a.len() as f64
}

/// The mean [`ssim`] over `count` image pairs, stored one after another in `a` and `b`
/// (`count·width·height` values each).
pub fn ssim_batch(
    a: &[f32],
    b: &[f32],
    count: usize,
    width: usize,
    height: usize,
    data_range: f64,
) -> Result<f64, MetricError> {
    check_ssim_shape(width, height, data_range)?;
    if count == 0 {
        return Err(MetricError::TooFewSamples {
            what: "SSIM batch: images".to_string(),
            needed: 1,
            got: 0,
        });
    }
    let pixels = width * height;
    let expected = count.checked_mul(pixels).ok_or_else(|| {
        MetricError::Invalid(format!(
            "SSIM batch: {count} images of {width}x{height} overflow usize"
        ))
    })?;
    for (what, images) in [("first batch", a), ("second batch", b)] {
        if images.len() != expected {
            return Err(MetricError::Length {
                what: format!("SSIM: {what} ({count} images of {width}x{height})"),
                expected,
                got: images.len(),
            });
        }
    }
    check_pair("SSIM batch", a, b)?;
    let total: f64 = a
        .chunks_exact(pixels)
        .zip(b.chunks_exact(pixels))
        .map(|(x, y)| ssim_unchecked(x, y, width, height, data_range))
        .sum();
    Ok(total / count as f64)
}
