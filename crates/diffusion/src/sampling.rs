//! The reverse process: from x_T ~ N(0, I) back to an image, given a noise predictor
//! ε̂(x_t, t) — the trained U-Net, or in tests the exact predictor of a known distribution.
//! Both samplers predict x̂_0 = (x_t - √(1 - ᾱ_t)·ε̂) / √ᾱ_t at each step and clip it to the
//! data's [-1, 1], as Ho et al.'s and the usual implementations do.

use kiln_tensor::{Generator, Tensor};

use crate::{NoiseSchedule, Result};

/// ε̂ for a batch `x [N, ..]` at (0-based) step t.
pub type Denoiser<'a> = dyn FnMut(&Tensor, usize) -> Result<Tensor> + 'a;

/// x̂_0 from x_t and ε̂ (x_t = √ᾱ·x_0 + √(1 - ᾱ)·ε solved for x_0), clipped to [-1, 1].
fn predict_start(x: &Tensor, epsilon: &Tensor, alpha_bar: f64) -> Result<Tensor> {
    Ok(x.sub(&epsilon.mul_scalar((1.0 - alpha_bar).sqrt())?)?
        .mul_scalar(1.0 / alpha_bar.sqrt())?
        .clamp(-1.0, 1.0)?)
}

/// Standard normal noise shaped and typed like `x`.
fn noise_like(x: &Tensor, generator: &mut Generator) -> Result<Tensor> {
    Ok(Tensor::randn(
        x.dims(),
        0.0,
        1.0,
        x.dtype(),
        x.device(),
        generator,
    )?)
}

/// Ho et al.'s ancestral sampler from `x` = x_T: for t = T - 1 .. 0, draw x_{t-1} from
/// q(x_{t-1} | x_t, x̂_0), the forward process's posterior at the predicted x̂_0, with mean
/// β_t·√ᾱ_{t-1}/(1 - ᾱ_t)·x̂_0 + (1 - ᾱ_{t-1})·√α_t/(1 - ᾱ_t)·x_t and variance
/// β̃_t = β_t·(1 - ᾱ_{t-1})/(1 - ᾱ_t) (no noise at the last step). Noise from `generator`.
pub fn ancestral(
    schedule: &NoiseSchedule,
    mut x: Tensor,
    denoise: &mut Denoiser<'_>,
    generator: &mut Generator,
) -> Result<Tensor> {
    for t in (0..schedule.timesteps()).rev() {
        let (beta, alpha_bar) = (schedule.beta(t), schedule.alpha_bar(t));
        let before = schedule.alpha_bar_before(t);
        let start = predict_start(&x, &denoise(&x, t)?, alpha_bar)?;
        let mean = start
            .mul_scalar(beta * before.sqrt() / (1.0 - alpha_bar))?
            .add(&x.mul_scalar((1.0 - before) * (1.0 - beta).sqrt() / (1.0 - alpha_bar))?)?;
        x = match t {
            0 => mean,
            _ => {
                let spread = (beta * (1.0 - before) / (1.0 - alpha_bar)).sqrt();
                mean.add(&noise_like(&mean, generator)?.mul_scalar(spread)?)?
            }
        };
    }
    Ok(x)
}

/// Song et al.'s DDIM from `x` = x_T over `steps` timesteps τ_i = ⌊i·T/S⌋, i = S - 1 .. 0:
/// with x̂_0 and the ε̂ it implies (recomputed after clipping),
/// x_prev = √ᾱ_prev·x̂_0 + √(1 - ᾱ_prev - σ²)·ε̂ + σ·z, where
/// σ = η·√((1 - ᾱ_prev)/(1 - ᾱ_t))·√(1 - ᾱ_t/ᾱ_prev) and ᾱ_prev = 1 after τ_0. η = 0 is
/// deterministic; noise (η > 0) from `generator`. `steps` must be 1 ..= T.
pub fn ddim(
    schedule: &NoiseSchedule,
    mut x: Tensor,
    (steps, eta): (usize, f64),
    denoise: &mut Denoiser<'_>,
    generator: &mut Generator,
) -> Result<Tensor> {
    let timesteps = schedule.timesteps();
    let taus: Vec<usize> = (0..steps).map(|i| i * timesteps / steps).collect();
    for i in (0..steps).rev() {
        let t = taus[i];
        let alpha_bar = schedule.alpha_bar(t);
        let before = match i {
            0 => 1.0,
            _ => schedule.alpha_bar(taus[i - 1]),
        };
        let start = predict_start(&x, &denoise(&x, t)?, alpha_bar)?;
        let epsilon = x
            .sub(&start.mul_scalar(alpha_bar.sqrt())?)?
            .mul_scalar(1.0 / (1.0 - alpha_bar).sqrt())?;
        let sigma =
            eta * ((1.0 - before) / (1.0 - alpha_bar)).sqrt() * (1.0 - alpha_bar / before).sqrt();
        let direction = (1.0 - before - sigma * sigma).max(0.0).sqrt();
        x = start
            .mul_scalar(before.sqrt())?
            .add(&epsilon.mul_scalar(direction)?)?;
        if sigma > 0.0 {
            x = x.add(&noise_like(&x, generator)?.mul_scalar(sigma)?)?;
        }
    }
    Ok(x)
}
