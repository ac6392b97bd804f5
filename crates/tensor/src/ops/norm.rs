//! Training-mode batch norm as one op (`Tensor::batch_norm_train`): the batch statistics, the
//! normalisation and the affine map in two kernels, and a fused two-pass backward. Not for
//! evaluation mode (a per-channel affine map with running statistics, which kiln-nn composes)
//! nor for layer or group norm.

use crate::op::Op;
use crate::{is_grad_enabled, Error, Result, Shape, Tensor};

/// The dims of `x [N, C, *]` that batch norm reduces over: all but 1.
fn reduced_dims(x: &Tensor) -> Vec<usize> {
    (0..x.rank()).filter(|&d| d != 1).collect()
}

/// `t [C]` as `[1, C, 1, ..]`, to broadcast over `x [N, C, *]`.
fn per_channel(t: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut dims = vec![1; x.rank()];
    dims[1] = x.dims()[1];
    t.reshape(dims)
}

/// `t` if its elements are the first `t.elem_count()` of its buffer in order, as the backends
/// read a `[C]` vector, otherwise a copy that is.
fn dense(t: &Tensor) -> Result<Tensor> {
    if t.layout().contiguous_range() == Some(0..t.elem_count()) {
        Ok(t.clone())
    } else {
        t.copy()
    }
}

impl Tensor {
    /// PyTorch's training-mode batch norm of `x [N, C, *]` (rank ≥ 2): `(y, mean, var)` with
    /// `y = (x - mean)·invstd·weight + bias` per channel, `invstd = 1/√(var + eps)`, where
    /// `mean` and the biased `var` (`[C]` each, untracked) are the batch's, over every dim but 1.
    /// `weight` and `bias` (`[C]`, each optional) scale and shift. Gradients flow to x through
    /// the statistics too, exactly to any order (`backward_with_graph`).
    pub fn batch_norm_train(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        const OP: &str = "batch_norm";
        self.float_only(OP)?;
        if self.rank() < 2 {
            return Err(Error::invalid(
                OP,
                format!("expected input [N, C, ..], got {}", self.shape()),
            ));
        }
        let channels = self.dims()[1];
        if channels > 0 && self.elem_count() == 0 {
            return Err(Error::invalid(
                OP,
                format!("input {} has no values per channel", self.shape()),
            ));
        }
        for (name, t) in [("weight", weight), ("bias", bias)] {
            let Some(t) = t else { continue };
            self.same_dtype(OP, t)?;
            self.same_device(OP, t)?;
            if t.dims() != [channels] {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "input {} has {channels} channels, so {name} should be [{channels}], got {}",
                        self.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        let weight = weight.map(dense).transpose()?;
        let bias = bias.map(dense).transpose()?;
        let (mean, var) = {
            let (mean, var) = self.storage().batch_norm_stats(self.layout())?;
            let shape = Shape::from([channels]);
            (
                Tensor::from_storage(mean, shape.clone(), None), // [C]
                Tensor::from_storage(var, shape, None),          // [C]
            )
        };
        let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [C]
        let storage = {
            let (weight, bias) = (weight.as_ref(), bias.as_ref());
            let weight_storage = weight.map(|w| w.storage());
            let bias_storage = bias.map(|b| b.storage());
            self.storage().batch_norm_forward(
                self.layout(),
                &mean.storage(),
                &invstd.storage(),
                weight_storage.as_deref(),
                bias_storage.as_deref(),
            )?
        };
        let inputs: Vec<&Tensor> = [self]
            .into_iter()
            .chain(weight.as_ref())
            .chain(bias.as_ref())
            .collect();
        let record = Tensor::record(&inputs, || Op::BatchNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            mean: mean.clone(),
            invstd: invstd.clone(),
            eps,
        });
        let y = Tensor::from_storage(storage, self.shape().clone(), record); // [N, C, *]
        Ok((y, mean, var))
    }
}

impl Tensor {
    /// Evaluation-mode batch norm of `x [N, C, *]` with given statistics `mean` and `var`
    /// (`[C]`, e.g. the running ones): `(x - mean)·invstd·weight + bias`, `invstd =
    /// 1/√(var + eps)`, in one kernel (`batch_norm_forward`). Untracked: for a graph through
    /// evaluation mode compose the ops (kiln-nn's `batch_norm` does when one is recorded).
    pub fn batch_norm_eval(
        &self,
        mean: &Tensor,
        var: &Tensor,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "batch_norm";
        self.float_only(OP)?;
        if self.rank() < 2 {
            return Err(Error::invalid(
                OP,
                format!("expected input [N, C, ..], got {}", self.shape()),
            ));
        }
        let channels = self.dims()[1];
        let named = [
            ("mean", Some(mean)),
            ("var", Some(var)),
            ("weight", weight),
            ("bias", bias),
        ];
        for (name, t) in named {
            let Some(t) = t else { continue };
            self.same_dtype(OP, t)?;
            self.same_device(OP, t)?;
            if t.dims() != [channels] {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "input {} has {channels} channels, so {name} should be [{channels}], got {}",
                        self.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        let mean = dense(mean)?;
        let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [C]
        let weight = weight.map(dense).transpose()?;
        let bias = bias.map(dense).transpose()?;
        let weight_storage = weight.as_ref().map(|w| w.storage());
        let bias_storage = bias.as_ref().map(|b| b.storage());
        let storage = self.storage().batch_norm_forward(
            self.layout(),
            &mean.storage(),
            &invstd.storage(),
            weight_storage.as_deref(),
            bias_storage.as_deref(),
        )?;
        Ok(Tensor::from_storage(storage, self.shape().clone(), None))
    }
}

/// Gradients of `y = batch_norm_train(x, weight, bias)` for x and whichever of weight and bias
/// are present. In a plain backward, the fused two-pass kernel with the saved statistics.
/// When the backward itself is being recorded (`backward_with_graph`), the same formula in
/// tracked tensor ops, with the mean and invstd recomputed as functions of x, so that second
/// derivatives (a WGAN-GP penalty through batch norm) are exact:
/// `dx = invstd·(g - mean(g) - xhat·mean(g·xhat))`, `g = dy·weight`, means per channel.
pub(crate) fn batch_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    (mean, invstd, eps): (&Tensor, &Tensor, f64),
    grad: &Tensor,
) -> Result<Vec<(Tensor, Tensor)>> {
    let (dx, dweight, dbias) = if is_grad_enabled() {
        let reduced = reduced_dims(x);
        let mean = x.mean(&reduced, true)?; // [1, C, 1, ..]
        let centered = x.sub(&mean)?; // [N, C, *]
        let var = centered.square()?.mean(&reduced, true)?; // [1, C, 1, ..]
        let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [1, C, 1, ..]
        let xhat = centered.mul(&invstd)?; // [N, C, *]
        let g = match weight {
            Some(w) => grad.mul(&per_channel(w, x)?)?,
            None => grad.clone(),
        }; // [N, C, *]
        let mean_g = g.mean(&reduced, true)?; // [1, C, 1, ..]
        let mean_g_xhat = g.mul(&xhat)?.mean(&reduced, true)?; // [1, C, 1, ..]
        let dx = g
            .sub(&mean_g)?
            .sub(&xhat.mul(&mean_g_xhat)?)?
            .mul(&invstd)?; // [N, C, *]
        let dweight = grad.mul(&xhat)?.sum(&reduced, false)?; // [C]
        let dbias = grad.sum(&reduced, false)?; // [C]
        (dx, dweight, dbias)
    } else {
        let channels = Shape::from([x.dims()[1]]);
        let (dx, dweight, dbias) = {
            let weight_storage = weight.map(|w| w.storage());
            grad.storage().batch_norm_backward(
                grad.layout(),
                &x.storage(),
                x.layout(),
                &mean.storage(),
                &invstd.storage(),
                weight_storage.as_deref(),
            )?
        };
        (
            Tensor::from_storage(dx, x.shape().clone(), None),
            Tensor::from_storage(dweight, channels.clone(), None),
            Tensor::from_storage(dbias, channels, None),
        )
    };
    let mut grads = vec![(x.clone(), dx)];
    if let Some(weight) = weight {
        grads.push((weight.clone(), dweight));
    }
    if let Some(bias) = bias {
        grads.push((bias.clone(), dbias));
    }
    Ok(grads)
}
