//! The forward process: the linear β schedule and q(x_t | x_0) = N(√ᾱ_t·x_0, (1 - ᾱ_t)·I),
//! with ᾱ_t = Π_{s ≤ t} (1 - β_s). Everything here is computed once, in f64, on the host;
//! per-image coefficients become `[B, 1, 1, 1]` tensors that broadcast over the image.

use kiln_tensor::Tensor;

use crate::Result;

/// β_t, α_t = 1 - β_t and ᾱ_t for t = 0 .. T - 1 (index t is the paper's step t + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    /// β rising linearly from `beta_start` (t = 0) to `beta_end` (t = T - 1).
    pub fn linear(timesteps: usize, beta_start: f64, beta_end: f64) -> NoiseSchedule {
        let betas: Vec<f64> = (0..timesteps)
            .map(|t| match timesteps {
                1 => beta_start,
                _ => beta_start + (beta_end - beta_start) * t as f64 / (timesteps - 1) as f64,
            })
            .collect();
        let alpha_bars = betas
            .iter()
            .scan(1.0, |product, beta| {
                *product *= 1.0 - beta;
                Some(*product)
            })
            .collect();
        NoiseSchedule { betas, alpha_bars }
    }

    pub fn timesteps(&self) -> usize {
        self.betas.len()
    }

    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bars[t]
    }

    /// ᾱ before step t: 1 for t = 0 (x_0 itself).
    pub fn alpha_bar_before(&self, t: usize) -> f64 {
        t.checked_sub(1).map_or(1.0, |s| self.alpha_bars[s])
    }

    /// x_t = √ᾱ_t·x_0 + √(1 - ᾱ_t)·ε for `x0, noise [B, ..]`, one step `t[b]` per image: a
    /// draw from q(x_t | x_0) when ε ~ N(0, I).
    pub fn q_sample(&self, x0: &Tensor, noise: &Tensor, t: &[usize]) -> Result<Tensor> {
        let signal = per_image(t.iter().map(|&t| self.alpha_bar(t).sqrt()), x0)?;
        let spread = per_image(t.iter().map(|&t| (1.0 - self.alpha_bar(t)).sqrt()), x0)?;
        Ok(x0.mul(&signal)?.add(&noise.mul(&spread)?)?)
    }
}

/// One value per image of `like [B, ..]`, as a `[B, 1, .., 1]` tensor of its dtype and device.
pub(crate) fn per_image(values: impl Iterator<Item = f64>, like: &Tensor) -> Result<Tensor> {
    let values: Vec<f64> = values.collect();
    let mut shape = vec![1; like.rank().max(1)];
    shape[0] = values.len();
    Ok(Tensor::from_vec(values, shape, like.device())?.to_dtype(like.dtype())?)
}
