//! Walks through a VAE's latent space: straight lines between two latents (interpolation) and
//! the grid over a 2-D latent plane that Kingma & Welling draw (the manifold), with the
//! standard normal quantile function that spaces the grid by prior probability.

use kiln_nn::NnError;
use kiln_tensor::{Device, Tensor};

use crate::Result;

/// Φ⁻¹(p), the standard normal quantile, for p in (0, 1): Acklam's rational approximations
/// (relative error below 1.2e-9) — a central one for 0.02425 ≤ p ≤ 0.97575, one in
/// √(-2 ln p) for each tail. ±∞ at 0 and 1, NaN outside [0, 1].
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    const LOW: f64 = 0.02425;
    if !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        let q = (-2.0 * q.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail(p)
    } else if p > 1.0 - LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The latents of a `size` x `size` grid over the 2-D latent plane, `[size², 2]` in row-major
/// grid order: column j has z₁ = Φ⁻¹((j + ½)/size), row i has z₂ = Φ⁻¹(1 - (i + ½)/size), so
/// z₂ grows upwards and each cell covers an equal share of the prior's probability.
pub fn manifold_latents(size: usize, device: Device) -> Result<Tensor> {
    if size == 0 {
        return Err(NnError::invalid(
            "manifold",
            "the grid needs at least 1 row",
        ));
    }
    let coordinate = |k: usize| normal_quantile((k as f64 + 0.5) / size as f64) as f32;
    let cells = size
        .checked_mul(size)
        .filter(|&cells| cells <= kiln_nn::limits::MAX_IMAGES)
        .ok_or_else(|| {
            let most = kiln_nn::limits::MAX_IMAGES;
            NnError::invalid(
                "manifold",
                format!("a {size} x {size} grid is more than {most} images"),
            )
        })?;
    let mut latents = Vec::with_capacity(cells * 2);
    for row in 0..size {
        for column in 0..size {
            latents.extend([coordinate(column), coordinate(size - 1 - row)]);
        }
    }
    Ok(Tensor::from_vec(latents, [size * size, 2], device)?)
}

/// `steps` evenly spaced points on the line from `from` to `to` (each `[L]`), ends included:
/// `[steps, L]` with row k = from + k/(steps - 1)·(to - from).
pub fn interpolate(from: &Tensor, to: &Tensor, steps: usize) -> Result<Tensor> {
    if steps < 2 || from.rank() != 1 || from.shape() != to.shape() {
        return Err(NnError::invalid(
            "interpolate",
            format!(
                "needs two latents [L] of one shape and at least 2 steps, got {} and {} with {steps}",
                from.shape(),
                to.shape()
            ),
        ));
    }
    let fractions: Vec<f64> = (0..steps).map(|k| k as f64 / (steps - 1) as f64).collect();
    let t = Tensor::from_vec(fractions, [steps, 1], from.device())?.to_dtype(from.dtype())?; // [steps, 1]
    let from = from.unsqueeze(0)?; // [1, L]
    let direction = to.unsqueeze(0)?.sub(&from)?; // [1, L]
    Ok(from.add(&t.mul(&direction)?)?) // [steps, L]
}
