//! Training-mode batch norm as one op (`Tensor::batch_norm_train`): the batch statistics, the
//! normalisation and the affine map in two kernels, and a fused two-pass backward; and
//! evaluation mode with given statistics (`Tensor::batch_norm_eval`, untracked) in the same
//! normalising kernel. Group norm (`Tensor::group_norm`) likewise: batch norm's statistics of
//! each (sample, group), then the normalisation and affine map in one kernel, and a fused
//! backward.

use crate::backend::Operand;
use crate::op::Op;
use crate::ops::matmul::activation_pre_grad;
use crate::storage::Storage;
use crate::{is_grad_enabled, Activation, Error, Result, Shape, Tensor};

const OP: &str = "batch_norm";

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

/// Checks that `x` is a float `[N, C, ..]` (rank ≥ 2) and returns C.
fn check_input(op: &'static str, x: &Tensor) -> Result<usize> {
    x.float_only(op)?;
    if x.rank() < 2 {
        return Err(Error::invalid(
            op,
            format!("expected input [N, C, ..], got {}", x.shape()),
        ));
    }
    Ok(x.dims()[1])
}

/// Checks that each given vector is `[C]`, of `x`'s dtype and on its device.
fn check_channel_vectors(
    op: &'static str,
    x: &Tensor,
    vectors: &[(&str, Option<&Tensor>)],
) -> Result<()> {
    let channels = x.dims()[1];
    for &(name, t) in vectors {
        let Some(t) = t else { continue };
        x.same_dtype(op, t)?;
        x.same_device(op, t)?;
        if t.dims() != [channels] {
            return Err(Error::invalid(
                op,
                format!(
                    "input {} has {channels} channels, so {name} should be [{channels}], got {}",
                    x.shape(),
                    t.shape()
                ),
            ));
        }
    }
    Ok(())
}

/// `(x - mean)·invstd·weight + bias` per channel in one kernel (`batch_norm_forward`); the
/// vectors are `[C]` and [`dense`].
fn normalise(
    x: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Storage> {
    let weight_storage = weight.map(|w| w.storage());
    let bias_storage = bias.map(|b| b.storage());
    x.storage().batch_norm_forward(
        x.layout(),
        &mean.storage(),
        &invstd.storage(),
        weight_storage.as_deref(),
        bias_storage.as_deref(),
    )
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
        self.batch_norm_train_act(weight, bias, eps, Activation::Identity)
    }

    /// [`Tensor::batch_norm_train`] with `activation` applied to its output, `(activation(y),
    /// mean, var)`: one op, whose CPU kernels (f32, f64) apply the activation in the
    /// normalising pass and take its gradient inside batch norm's two backward passes (ReLU
    /// and leaky ReLU; tanh and sigmoid as a pass of their own), where the composition wrote
    /// and read a tensor more each way. Same values and gradients as the composition, bit for
    /// bit; elsewhere (CUDA, the half types) it is the composition. A leaky ReLU's slope must
    /// be at least 0 (its gradient takes the mask from the output).
    pub fn batch_norm_train_act(
        &self,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
        activation: Activation,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        activation.check(OP)?;
        let channels = check_input(OP, self)?;
        if channels > 0 && self.elem_count() == 0 {
            return Err(Error::invalid(
                OP,
                format!("input {} has no values per channel", self.shape()),
            ));
        }
        check_channel_vectors(OP, self, &[("weight", weight), ("bias", bias)])?;
        let weight = weight.map(dense).transpose()?;
        let bias = bias.map(dense).transpose()?;
        let (mean, var, invstd) = statistics(self, eps)?; // [C] each
        let fused = match activation {
            Activation::Identity => None,
            _ => {
                let (w, b) = (
                    weight.as_ref().map(|w| w.storage()),
                    bias.as_ref().map(|b| b.storage()),
                );
                self.storage().batch_norm_act_forward(
                    self.layout(),
                    (&mean.storage(), &invstd.storage()),
                    (w.as_deref(), b.as_deref()),
                    activation,
                )?
            }
        };
        // Where the backend does not fuse the activation, batch norm then the activation's op.
        let (storage, applied) = match fused {
            Some(storage) => (storage, activation),
            None => (
                normalise(self, &mean, &invstd, weight.as_ref(), bias.as_ref())?,
                Activation::Identity,
            ),
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
            activation: applied,
        });
        let y = Tensor::from_storage(storage, self.shape().clone(), record); // [N, C, *]
        let y = match applied {
            Activation::Identity => y.activate(activation)?,
            _ => y,
        };
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
        check_input(OP, self)?;
        check_channel_vectors(
            OP,
            self,
            &[
                ("mean", Some(mean)),
                ("var", Some(var)),
                ("weight", weight),
                ("bias", bias),
            ],
        )?;
        let mean = dense(mean)?;
        let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [C]
        let weight = weight.map(dense).transpose()?;
        let bias = bias.map(dense).transpose()?;
        let storage = normalise(self, &mean, &invstd, weight.as_ref(), bias.as_ref())?;
        Ok(Tensor::from_storage(storage, self.shape().clone(), None))
    }
}

/// Gradients of `y = batch_norm_train(x, weight, bias)` for x and whichever of weight and bias
/// are present. In a plain backward, the fused two-pass kernel with the saved statistics.
/// When the backward itself is being recorded (`backward_with_graph`), the same formula in
/// tracked tensor ops, with the mean and invstd recomputed as functions of x, so that second
/// derivatives (a WGAN-GP penalty through batch norm) are exact:
/// `dx = invstd·(g - mean(g) - xhat·mean(g·xhat))`, `g = dy·weight`, means per channel.
///
/// With an `activation` fused into the op (`node` its output), the gradient goes through it
/// first ([`activation_pre_grad`]); on the CPU a (leaky) ReLU's inside the fused kernel's two
/// passes (`Storage::batch_norm_relu_backward`).
pub(crate) fn batch_norm_backward(
    x: &Tensor,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    (mean, invstd, eps): (&Tensor, &Tensor, f64),
    activation: Activation,
    (node, grad): (&Tensor, &Tensor),
) -> Result<Vec<(Tensor, Tensor)>> {
    let slope = match activation {
        Activation::Relu => Some(0.0),
        Activation::LeakyRelu(slope) => Some(slope),
        _ => None,
    };
    if let (Some(slope), false) = (slope, is_grad_enabled()) {
        let weight_storage = weight.map(|w| w.storage());
        let fused = grad.storage().batch_norm_relu_backward(
            grad.layout(),
            (
                Operand::new(&x.storage(), x.layout()),
                Operand::new(&node.storage(), node.layout()),
            ),
            (&mean.storage(), &invstd.storage()),
            weight_storage.as_deref(),
            slope,
        )?;
        if let Some(storages) = fused {
            let gradients = untracked_gradients(x, storages);
            return Ok(input_gradients(x, weight, bias, gradients));
        }
    }
    let grad = &activation_pre_grad(activation, node, grad, &|| {
        composed_batch_norm(x, (weight, bias), eps)
    })?;
    let (dx, dweight, dbias) = if is_grad_enabled() {
        let reduced = reduced_dims(x);
        let (xhat, invstd) = tracked_xhat(x, eps)?; // [N, C, *], [1, C, 1, ..]
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
        let weight_storage = weight.map(|w| w.storage());
        let storages = grad.storage().batch_norm_backward(
            grad.layout(),
            Operand::new(&x.storage(), x.layout()),
            &mean.storage(),
            &invstd.storage(),
            weight_storage.as_deref(),
        )?;
        untracked_gradients(x, storages)
    };
    Ok(input_gradients(x, weight, bias, (dx, dweight, dbias)))
}

/// `(xhat, invstd)` of `x [N, C, *]` in tracked ops, the batch statistics functions of `x`:
/// `xhat = (x - mean)·invstd` `[N, C, *]`, `invstd` `[1, C, 1, ..]`.
fn tracked_xhat(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let reduced = reduced_dims(x);
    let centered = x.sub(&x.mean(&reduced, true)?)?; // [N, C, *]
    let var = centered.square()?.mean(&reduced, true)?; // [1, C, 1, ..]
    let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [1, C, 1, ..]
    Ok((centered.mul(&invstd)?, invstd))
}

/// Training-mode batch norm of `x [N, C, *]` composed from tracked ops, the statistics
/// functions of `x`: the pre-activation a fused activation's second derivative needs.
fn composed_batch_norm(
    x: &Tensor,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    eps: f64,
) -> Result<Tensor> {
    let mut y = tracked_xhat(x, eps)?.0; // [N, C, *]
    if let Some(weight) = weight {
        y = y.mul(&per_channel(weight, x)?)?;
    }
    if let Some(bias) = bias {
        y = y.add(&per_channel(bias, x)?)?;
    }
    Ok(y)
}

/// Batch norm's statistics of `x [N, C, *]` per channel, `(mean, var, invstd)`, `[C]` each
/// and untracked, `invstd = 1/√(var + eps)` (group norm's are those of its grouped view).
fn statistics(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (mean, var) = x.storage().batch_norm_stats(x.layout())?;
    let shape = Shape::from([x.dims()[1]]);
    let mean = Tensor::from_storage(mean, shape.clone(), None);
    let var = Tensor::from_storage(var, shape, None);
    let invstd = var.add_scalar(eps)?.powf(-0.5)?;
    Ok((mean, var, invstd))
}

/// A backend's `(dx, dweight, dbias)` of a normalisation of `x [N, C, *]` as tensors.
fn untracked_gradients(
    x: &Tensor,
    (dx, dweight, dbias): (Storage, Storage, Storage),
) -> (Tensor, Tensor, Tensor) {
    let channels = Shape::from([x.dims()[1]]);
    (
        Tensor::from_storage(dx, x.shape().clone(), None),
        Tensor::from_storage(dweight, channels.clone(), None),
        Tensor::from_storage(dbias, channels, None),
    )
}

/// `(input, its gradient)` for x and whichever of weight and bias are present.
fn input_gradients(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    (dx, dweight, dbias): (Tensor, Tensor, Tensor),
) -> Vec<(Tensor, Tensor)> {
    let mut grads = vec![(x.clone(), dx)];
    if let Some(weight) = weight {
        grads.push((weight.clone(), dweight));
    }
    if let Some(bias) = bias {
        grads.push((bias.clone(), dbias));
    }
    grads
}

impl Tensor {
    /// PyTorch's `F.group_norm` of `x [N, C, *]` (rank ≥ 2): each sample's channels split into
    /// `groups` groups of `C / groups`, each normalised over its channels and positions with
    /// its mean and biased variance, `(x - mean)·invstd`, `invstd = 1/√(var + eps)`; then
    /// `weight` and `bias` (`[C]`, each optional) scale and shift per channel. The statistics
    /// are batch norm's kernel on `[1, N·groups, C/groups·*]` (two passes in f64 on the
    /// CPU); the normalisation and the affine map run in one pass, and the backward in two
    /// (`BackendStorage::group_norm_forward`, `group_norm_backward`). Gradients flow to x
    /// through the statistics too, exactly to any order (`backward_with_graph`).
    pub fn group_norm(
        &self,
        groups: usize,
        weight: Option<&Tensor>,
        bias: Option<&Tensor>,
        eps: f64,
    ) -> Result<Tensor> {
        const OP: &str = "group_norm";
        let channels = check_input(OP, self)?;
        if groups == 0 || channels % groups != 0 {
            return Err(Error::invalid(
                OP,
                format!("{channels} channels do not split into {groups} groups"),
            ));
        }
        check_channel_vectors(OP, self, &[("weight", weight), ("bias", bias)])?;
        if self.elem_count() == 0 {
            // No values to normalise: the affine map alone, on an empty tensor.
            let mut y = self.clone();
            if let Some(weight) = weight {
                y = y.mul(&per_channel(weight, self)?)?;
            }
            if let Some(bias) = bias {
                y = y.add(&per_channel(bias, self)?)?;
            }
            return Ok(y);
        }
        let weight = weight.map(dense).transpose()?;
        let bias = bias.map(dense).transpose()?;
        let samples = self.dims()[0] * groups;
        let grouped = self.reshape([1, samples, self.elem_count() / samples])?;
        let (mean, _, invstd) = statistics(&grouped, eps)?; // [N·G] each
        let storage = {
            let (weight, bias) = (weight.as_ref(), bias.as_ref());
            let weight_storage = weight.map(|w| w.storage());
            let bias_storage = bias.map(|b| b.storage());
            self.storage().group_norm_forward(
                self.layout(),
                groups,
                (&mean.storage(), &invstd.storage()),
                weight_storage.as_deref(),
                bias_storage.as_deref(),
            )?
        };
        let inputs: Vec<&Tensor> = [self]
            .into_iter()
            .chain(weight.as_ref())
            .chain(bias.as_ref())
            .collect();
        let record = Tensor::record(&inputs, || Op::GroupNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            mean: mean.clone(),
            invstd: invstd.clone(),
            groups,
            eps,
        });
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }
}

/// Gradients of `y = x.group_norm(groups, weight, bias, eps)` for x and whichever of weight
/// and bias are present: in a plain backward the backend's fused kernel with the saved
/// statistics; when the backward is recorded, the same formula in tracked tensor ops with the
/// statistics recomputed from x, as [`batch_norm_backward`] does.
pub(crate) fn group_norm_backward(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    (groups, mean, invstd, eps): (usize, &Tensor, &Tensor, f64),
    grad: &Tensor,
) -> Result<Vec<(Tensor, Tensor)>> {
    let dims = x.dims();
    let (dx, dweight, dbias) = if is_grad_enabled() {
        let grouped = [dims[0], groups, x.elem_count() / (dims[0] * groups)];
        let xg = x.reshape(grouped)?; // [N, G, M]
        let mean = xg.mean(&[2], true)?; // [N, G, 1]
        let centered = xg.sub(&mean)?;
        let var = centered.square()?.mean(&[2], true)?;
        let invstd = var.add_scalar(eps)?.powf(-0.5)?; // [N, G, 1]
        let xhat = centered.mul(&invstd)?; // [N, G, M]
        let g = match weight {
            Some(w) => grad.mul(&per_channel(w, x)?)?,
            None => grad.clone(),
        }
        .reshape(grouped)?; // [N, G, M]
        let mean_g = g.mean(&[2], true)?;
        let mean_g_xhat = g.mul(&xhat)?.mean(&[2], true)?;
        let dx = g
            .sub(&mean_g)?
            .sub(&xhat.mul(&mean_g_xhat)?)?
            .mul(&invstd)?
            .reshape(dims)?; // [N, C, *]
        let reduced = reduced_dims(x);
        let dweight = grad.mul(&xhat.reshape(dims)?)?.sum(&reduced, false)?; // [C]
        let dbias = grad.sum(&reduced, false)?; // [C]
        (dx, dweight, dbias)
    } else {
        let weight_storage = weight.map(|w| w.storage());
        let storages = grad.storage().group_norm_backward(
            grad.layout(),
            Operand::new(&x.storage(), x.layout()),
            groups,
            (&mean.storage(), &invstd.storage()),
            weight_storage.as_deref(),
        )?;
        untracked_gradients(x, storages)
    };
    Ok(input_gradients(x, weight, bias, (dx, dweight, dbias)))
}
