//! Loss functions with PyTorch's definitions (`torch.nn.functional`), each elementwise or
//! per-sample loss reduced by a [`Reduction`]. Not for weighted or label-smoothed variants.
//! Inputs and targets must have the same shape (PyTorch broadcasts some with a warning; here a
//! mismatch is an error naming both shapes).

use kiln_tensor::{DType, Tensor};

use crate::{NnError, Result};

/// How per-element (or per-sample) losses become the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Their mean, a scalar (PyTorch's default).
    #[default]
    Mean,
    /// Their sum, a scalar.
    Sum,
    /// The losses themselves, one per element (per sample for `cross_entropy`).
    None,
}

impl Reduction {
    fn apply(self, losses: Tensor) -> Result<Tensor> {
        Ok(match self {
            Reduction::Mean => losses.mean_all()?,
            Reduction::Sum => losses.sum_all()?,
            Reduction::None => losses,
        })
    }
}

fn same_shape(op: &'static str, names: [&str; 2], a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(NnError::invalid(
            op,
            format!(
                "{} {} and {} {} differ in shape",
                names[0],
                a.shape(),
                names[1],
                b.shape()
            ),
        ));
    }
    Ok(())
}

/// max(log x, -100), computed so that where the floor holds the gradient is zero, not NaN
/// (at x = 0, log's gradient 1/x would be infinite). NaN (from x < 0) passes through.
fn log_at_least_minus_100(x: &Tensor) -> Result<Tensor> {
    let floor = x.scalar_like(-100.0)?;
    let below = x.detach().log()?.lt(&floor)?; // u8, false for NaN
                                               // Where the floor holds, take the log of 1 instead, so its gradient is finite (and unused).
    let safe = Tensor::where_cond(&below, &x.scalar_like(1.0)?, x)?;
    Ok(Tensor::where_cond(&below, &floor, &safe.log()?)?)
}

/// `-(y·log p + (1 - y)·log(1 - p))` per element, each log clamped at ≥ -100 as PyTorch does
/// so p = 0 or 1 gives a finite loss (PyTorch's `F.binary_cross_entropy`).
///
/// The gradient with respect to p is PyTorch's, `(p - y) / max(p·(1 - p), 1e-12)`: autograd's
/// `(p - y) / (p·(1 - p))` where `p·(1 - p)` ≥ 1e-12, and the clamped denominator where it is
/// smaller — without the clamp a saturated f32 sigmoid (a logit near -90, whose probability is
/// a subnormal) would give an infinite gradient. There the loss keeps its value and takes that
/// gradient (first order only: its second derivative there is 0).
///
/// Where it differs from PyTorch: `probabilities` should lie in [0, 1], which PyTorch checks
/// (raising) and kiln does not (values outside give NaN; the check would read the values
/// back). PyTorch's kernels take the second log as `log1p(-p)`, here `log(1 - p)`, which
/// differs by the rounding of 1 - p, at most about an ulp of 1 in absolute terms. For
/// saturated probabilities prefer [`binary_cross_entropy_with_logits`].
pub fn binary_cross_entropy(
    probabilities: &Tensor,
    targets: &Tensor,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "binary_cross_entropy";
    same_shape(OP, ["probabilities", "targets"], probabilities, targets)?;
    let p = probabilities;
    let log_p = log_at_least_minus_100(p)?;
    let log_one_minus_p = log_at_least_minus_100(&p.affine(-1.0, 1.0)?)?;
    let losses = targets
        .mul(&log_p)?
        .add(&targets.affine(-1.0, 1.0)?.mul(&log_one_minus_p)?)?
        .neg()?;
    if !p.is_tracked() {
        return reduction.apply(losses);
    }
    // Where p·(1 - p) < 1e-12: the loss's value, with gradient (p - y) / 1e-12 through the
    // term (p - p̄)·g, which is 0 in value.
    let (fixed_p, fixed_y) = (p.detach(), targets.detach());
    let spread = fixed_p.mul(&fixed_p.affine(-1.0, 1.0)?)?;
    let saturated = spread.lt(&spread.scalar_like(BCE_EPSILON)?)?;
    let clamped_gradient = fixed_p.sub(&fixed_y)?.affine(1.0 / BCE_EPSILON, 0.0)?;
    let straight = losses
        .detach()
        .add(&p.sub(&fixed_p)?.mul(&clamped_gradient)?)?;
    reduction.apply(Tensor::where_cond(&saturated, &straight, &losses)?)
}

/// PyTorch's floor on p·(1 - p) in the gradient of `binary_cross_entropy`.
const BCE_EPSILON: f64 = 1e-12;

/// `binary_cross_entropy(sigmoid(x), y)` computed stably as `softplus(x) - x·y` per element
/// (PyTorch's `F.binary_cross_entropy_with_logits` without weights): finite for any finite
/// logit, with gradient `sigmoid(x) - y`. One fused kernel per element
/// (`Tensor::bce_with_logits`), then the reduction.
pub fn binary_cross_entropy_with_logits(
    logits: &Tensor,
    targets: &Tensor,
    reduction: Reduction,
) -> Result<Tensor> {
    const OP: &str = "binary_cross_entropy_with_logits";
    same_shape(OP, ["logits", "targets"], logits, targets)?;
    reduction.apply(logits.bce_with_logits(targets)?)
}

/// `(x - y)²` per element (PyTorch's `F.mse_loss`).
pub fn mse_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("mse_loss", ["input", "target"], input, target)?;
    reduction.apply(input.sub(target)?.square()?)
}

/// `|x - y|` per element (PyTorch's `F.l1_loss`; gradient 0 where x = y).
pub fn l1_loss(input: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("l1_loss", ["input", "target"], input, target)?;
    reduction.apply(input.sub(target)?.abs()?)
}

/// `-log_softmax(logits)[i, targets[i]]` per sample for `logits [N, C]` and class indices
/// `targets [N]` (u32, each < C) (PyTorch's `F.cross_entropy` without weights, ignored
/// indices or label smoothing). `Reduction::None` gives `[N]`; `Mean` divides by N.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, reduction: Reduction) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    if logits.rank() != 2 {
        return Err(NnError::invalid(
            OP,
            format!("expected logits [N, C], got {}", logits.shape()),
        ));
    }
    let n = logits.dims()[0];
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        return Err(NnError::invalid(
            OP,
            format!(
                "logits {} need u32 targets [{n}], got {} {}",
                logits.shape(),
                targets.shape(),
                targets.dtype()
            ),
        ));
    }
    let log_probabilities = logits.log_softmax(1)?; // [N, C]
    let picked = log_probabilities
        .gather(1, &targets.reshape([n, 1])?)? // [N, 1]
        .reshape([n])?; // [N]
    reduction.apply(picked.neg()?)
}

/// The KL divergence KL(N(mu, e^logvar) ‖ N(0, 1)) per element,
/// `-0.5·(1 + logvar - mu² - e^logvar)`, for a VAE's diagonal Gaussian posterior.
///
/// The PyTorch VAE example (and Kingma & Welling) sums it over latent dims and batch
/// (`Reduction::Sum`), beside a reconstruction loss also summed; dividing both by the batch
/// size gives the per-sample ELBO terms. `Reduction::Mean` instead divides by every element,
/// latent dims included, which weights the KL term differently.
pub fn gaussian_kl(mu: &Tensor, logvar: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("gaussian_kl", ["mu", "logvar"], mu, logvar)?;
    let losses = mu
        .square()?
        .add(&logvar.exp()?)?
        .sub(&logvar.add_scalar(1.0)?)?
        .mul_scalar(0.5)?; // 0.5·(mu² + e^logvar - 1 - logvar)
    reduction.apply(losses)
}
