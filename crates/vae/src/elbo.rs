//! The pieces of the evidence lower bound that do not depend on the networks: the KL term in
//! closed form, the reparameterised sample, the log-densities an importance-weighted estimate
//! needs, and a stable log-mean-exp. Per image: every function returns one value per row.

use kiln_nn::loss::{gaussian_kl, Reduction};
use kiln_tensor::Tensor;

use crate::Result;

/// The two terms of one image's negative ELBO, `[B]` nats each:
/// -ELBO = E_q[-log p(x|z)] + KL(q(z|x) ‖ p(z)).
#[derive(Debug, Clone)]
pub struct ElboTerms {
    /// -log p(x|z) at the reparameterised sample.
    pub reconstruction: Tensor,
    /// KL(N(μ, diag σ²) ‖ N(0, I)) in closed form.
    pub kl: Tensor,
}

/// KL(N(μ, diag e^logvar) ‖ N(0, I)) of each row of `mu`, `logvar [B, L]`:
/// ½·Σ_j (μ_j² + e^logvar_j - 1 - logvar_j), `[B]`.
pub fn gaussian_kl_per_image(mu: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    Ok(gaussian_kl(mu, logvar, Reduction::None)?.sum(&[1], false)?)
}

/// z = μ + e^(logvar/2)·ε: a sample of q(z|x) that is a differentiable function of μ and
/// logvar for noise `epsilon ~ N(0, I)` of their shape (or broadcastable to it).
pub(crate) fn reparameterize(mu: &Tensor, logvar: &Tensor, epsilon: &Tensor) -> Result<Tensor> {
    Ok(mu.add(&logvar.mul_scalar(0.5)?.exp()?.mul(epsilon)?)?)
}

/// log p(z) - log q(z|x) summed over the last dim, for z = μ + σ·ε: the ½ln 2π terms cancel,
/// leaving -½·Σ (z² - ε² - logvar). `z`, `epsilon` `[.., L]` and `logvar` broadcastable.
pub(crate) fn log_prior_over_posterior(
    z: &Tensor,
    epsilon: &Tensor,
    logvar: &Tensor,
) -> Result<Tensor> {
    let last = z.rank() - 1;
    Ok(z.square()?
        .sub(&epsilon.square()?)?
        .sub(logvar)?
        .sum(&[last], false)?
        .mul_scalar(-0.5)?)
}

/// log((1/k)·Σ e^v) of `values`, computed around their maximum so that large negative
/// log-weights (hundreds of nats) do not underflow. -∞ for an empty slice or all -∞; NaN if
/// any value is NaN.
pub fn log_mean_exp(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = values.iter().map(|v| (v - max).exp()).sum();
    max + (sum / values.len() as f64).ln()
}
