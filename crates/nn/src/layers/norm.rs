//! Normalisation: batch norm (per channel, over the batch and any spatial dims), layer norm
//! (per sample, over its trailing dims) and group norm (per sample and group of channels), as
//! PyTorch defines them, with functional forms ([`batch_norm`], [`layer_norm`],
//! [`group_norm`]) beside the layers.

use kiln_tensor::{is_grad_enabled, no_grad, Activation, Tensor, Var};

use super::trailing;
use crate::{Init, Module, ModuleT, NnError, Path, Result};

/// A batch norm's running estimates of each channel's mean and unbiased variance, both `[C]`
/// (the buffers `running_mean` and `running_var`).
#[derive(Debug, Clone)]
pub struct RunningStats {
    pub mean: Var,
    pub var: Var,
}

/// PyTorch's `F.batch_norm` for `x [N, C, *]` → `[N, C, *]`:
/// `(x - mean) / √(var + eps) · weight + bias` per channel, with `weight` and `bias` `[C]`
/// (each optional).
///
/// With `training`, mean and var are the batch's, over every dim but 1 (the variance biased,
/// dividing by the count `n` per channel), and `running`, if given, is updated outside
/// autograd: `running = (1 - momentum)·running + momentum·batch`, where the batch variance is
/// the unbiased one (dividing by `n - 1`). Without `training`, the running statistics are
/// used, and must be given.
pub fn batch_norm(
    x: &Tensor,
    running: Option<&RunningStats>,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    let (affine, mode) = ((weight, bias), (training, momentum, eps));
    batch_norm_activated(x, running, affine, mode, Activation::Identity)
}

/// `activation(batch_norm(..))`: in training with the batch's statistics one op
/// (`Tensor::batch_norm_train_act`), otherwise batch norm then the activation's op.
fn batch_norm_activated(
    x: &Tensor,
    running: Option<&RunningStats>,
    (weight, bias): (Option<&Tensor>, Option<&Tensor>),
    (training, momentum, eps): (bool, f64, f64),
    activation: Activation,
) -> Result<Tensor> {
    const OP: &str = "batch_norm";
    if x.rank() < 2 {
        return Err(NnError::invalid(
            OP,
            format!("expected input [N, C, ..], got {}", x.shape()),
        ));
    }
    let channels = x.dims()[1];
    let per_channel = [
        ("weight", weight),
        ("bias", bias),
        ("running_mean", running.map(|r| r.mean.as_tensor())),
        ("running_var", running.map(|r| r.var.as_tensor())),
    ];
    for (name, tensor) in per_channel {
        if let Some(tensor) = tensor.filter(|t| t.dims() != [channels]) {
            return Err(NnError::invalid(
                OP,
                format!(
                    "input {} has {channels} channels, so {name} should be [{channels}], got {}",
                    x.shape(),
                    tensor.shape()
                ),
            ));
        }
    }
    // A [C] tensor as [1, C, 1, ..], to broadcast over the input.
    let mut channel_dims = vec![1; x.rank()];
    channel_dims[1] = channels;
    let broadcastable = |t: &Tensor| t.reshape(channel_dims.clone());

    if training {
        let count = x.elem_count() / channels.max(1);
        if count < 2 {
            return Err(NnError::invalid(
                OP,
                format!(
                    "expected more than 1 value per channel when training, got input {}",
                    x.shape()
                ),
            ));
        }
        let (y, batch_mean, batch_var, count) = match crate::parallel::synchronised_batch_norm() {
            Some(parallel) => {
                let (y, mean, var, count) = synchronised(x, weight, bias, eps, &parallel)?;
                (y.activate(activation)?, mean, var, count)
            }
            None => {
                // One fused op: the batch statistics, the normalisation, the affine map and
                // the activation.
                let (y, mean, var) = x.batch_norm_train_act(weight, bias, eps, activation)?;
                (y, mean, var, count) // [N, C, *], [C], [C]
            }
        };
        if let Some(running) = running {
            no_grad(|| -> Result<()> {
                let unbiased_var = batch_var.mul_scalar(count as f64 / (count - 1) as f64)?; // [C]
                let update = |stat: &Var, batch: &Tensor| -> Result<()> {
                    let blended = stat
                        .affine(1.0 - momentum, 0.0)?
                        .add(&batch.mul_scalar(momentum)?)?; // [C]
                    Ok(stat.set(&blended)?)
                };
                update(&running.mean, &batch_mean)?;
                update(&running.var, &unbiased_var)
            })?;
        }
        return Ok(y);
    }
    let Some(running) = running else {
        return Err(NnError::invalid(
            OP,
            "evaluation mode (training = false) needs running statistics",
        ));
    };
    // Evaluation: a per-channel affine map with the running statistics (constants to
    // autograd), one kernel when no graph is being recorded (sampling), else composed.
    let recorded = is_grad_enabled()
        && [Some(x), weight, bias]
            .into_iter()
            .flatten()
            .any(Tensor::is_tracked);
    if !recorded {
        let (mean, var) = (running.mean.detach(), running.var.detach()); // [C]
        let y = x.batch_norm_eval(&mean, &var, weight, bias, eps)?;
        return Ok(y.activate(activation)?);
    }
    let mean = broadcastable(&running.mean.detach())?; // [1, C, 1, ..]
    let var = broadcastable(&running.var.detach())?; // [1, C, 1, ..]
    let mut y = x.sub(&mean)?.div(&var.add_scalar(eps)?.sqrt()?)?; // [N, C, *]
    if let Some(weight) = weight {
        y = y.mul(&broadcastable(weight)?)?;
    }
    if let Some(bias) = bias {
        y = y.add(&broadcastable(bias)?)?;
    }
    Ok(y.activate(activation)?)
}

/// Training-mode batch norm of `x [N, C, *]` with the statistics of the whole batch over every
/// rank of `parallel` (PyTorch's `SyncBatchNorm`): the per-channel sums and the count, then the
/// sums of squared deviations from the whole batch's mean, are summed over the ranks, and
/// autograd carries the gradients back through the same sums. Returns the output, the batch
/// mean and biased variance `[C]`, and the whole batch's count per channel.
fn synchronised(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
    parallel: &crate::parallel::DataParallel,
) -> Result<(Tensor, Tensor, Tensor, usize)> {
    let channels = x.dims()[1];
    let mut channel_dims = vec![1; x.rank()];
    channel_dims[1] = channels;
    let dims: Vec<usize> = (0..x.rank()).filter(|&d| d != 1).collect();
    let local = x.elem_count() / channels;
    // [Σx per channel.., count], summed over the ranks; the count is a constant.
    let count = Tensor::from_vec(vec![local as f64], [1], x.device())?.to_dtype(x.dtype())?;
    let sums = parallel.sum(&Tensor::cat(&[&x.sum(&dims, false)?, &count], 0)?)?; // [C + 1]
    let total = no_grad(|| sums.narrow(0, channels, 1)?.to_f64())?;
    let mean = sums.narrow(0, 0, channels)?.mul_scalar(1.0 / total)?; // [C]
    let centred = x.sub(&mean.reshape(channel_dims.clone())?)?; // [N, C, *]
    let squares = parallel.sum(&centred.square()?.sum(&dims, false)?)?; // [C]
    let var = squares.mul_scalar(1.0 / total)?; // [C], biased
    let std = var.add_scalar(eps)?.sqrt()?; // [C]
    let mut y = centred.div(&std.reshape(channel_dims.clone())?)?;
    if let Some(weight) = weight {
        y = y.mul(&weight.reshape(channel_dims.clone())?)?;
    }
    if let Some(bias) = bias {
        y = y.add(&bias.reshape(channel_dims)?)?;
    }
    Ok((y, mean.detach(), var.detach(), total as usize))
}

/// How a batch norm layer is built and applied. The default is PyTorch's: eps 1e-5, momentum
/// 0.1, affine with weights 1 and biases 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// The weight of each new batch in the running statistics.
    pub momentum: f64,
    /// Whether the layer has a learned per-channel `weight` and `bias`.
    pub affine: bool,
    pub weight_init: Init,
    pub bias_init: Init,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
            weight_init: Init::Constant(1.0),
            bias_init: Init::Constant(0.0),
        }
    }
}

/// What the two batch norm layers share: their tensors and configuration.
#[derive(Debug, Clone)]
struct BatchNorm {
    weight: Option<Var>,
    bias: Option<Var>,
    running: RunningStats,
    config: BatchNormConfig,
}

impl BatchNorm {
    /// Registers `weight` and `bias` (if affine), then the buffers `running_mean` (zeros) and
    /// `running_var` (ones), as PyTorch does, less `num_batches_tracked` (see [`BatchNorm1d`]).
    fn new(path: &Path, num_features: usize, config: BatchNormConfig) -> Result<BatchNorm> {
        let (weight, bias) = if config.affine {
            (
                Some(path.parameter("weight", [num_features], config.weight_init)?),
                Some(path.parameter("bias", [num_features], config.bias_init)?),
            )
        } else {
            (None, None)
        };
        let zeros = Tensor::zeros([num_features], path.dtype(), path.device())?;
        let ones = Tensor::ones([num_features], path.dtype(), path.device())?;
        let running = RunningStats {
            mean: path.buffer("running_mean", &zeros)?,
            var: path.buffer("running_var", &ones)?,
        };
        Ok(BatchNorm {
            weight,
            bias,
            running,
            config,
        })
    }

    fn num_features(&self) -> usize {
        self.running.mean.dims()[0]
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_activated(x, train, Activation::Identity)
    }
}

impl BatchNorm {
    /// `activation(self.forward_t(x, train))`, in one op where it can be
    /// ([`batch_norm_activated`]).
    fn forward_activated(&self, x: &Tensor, train: bool, activation: Activation) -> Result<Tensor> {
        batch_norm_activated(
            x,
            Some(&self.running),
            (self.weight.as_deref(), self.bias.as_deref()),
            (train, self.config.momentum, self.config.eps),
            activation,
        )
    }
}

/// Batch norm over `[N, C]` or `[N, C, L]` → same shape (PyTorch's `nn.BatchNorm1d`): each
/// channel normalised with the batch's statistics in training (which also updates the running
/// ones) and with the running statistics in evaluation, then scaled and shifted. See
/// [`batch_norm`].
///
/// State-dict keys, in order: `weight`, `bias` (if affine), `running_mean`, `running_var`.
/// PyTorch's third buffer, `num_batches_tracked`, is not registered: kiln does not use it
/// (PyTorch reads it only when `momentum=None`), and PyTorch's batch norm fills it in when it
/// loads a state dict that lacks it and carries no version metadata, as one read with
/// `safetensors.torch.load_file` does, even with `strict=True`
/// (`_NormBase._load_from_state_dict`).
#[derive(Debug, Clone)]
pub struct BatchNorm1d(BatchNorm);

impl BatchNorm1d {
    pub fn new(path: &Path, num_features: usize) -> Result<BatchNorm1d> {
        BatchNorm1d::with_config(path, num_features, BatchNormConfig::default())
    }

    pub fn with_config(
        path: &Path,
        num_features: usize,
        config: BatchNormConfig,
    ) -> Result<BatchNorm1d> {
        Ok(BatchNorm1d(BatchNorm::new(path, num_features, config)?))
    }

    /// `[C]`, if affine.
    pub fn weight(&self) -> Option<&Var> {
        self.0.weight.as_ref()
    }

    /// `[C]`, if affine.
    pub fn bias(&self) -> Option<&Var> {
        self.0.bias.as_ref()
    }

    pub fn running_stats(&self) -> &RunningStats {
        &self.0.running
    }

    pub fn config(&self) -> &BatchNormConfig {
        &self.0.config
    }
}

impl BatchNorm1d {
    /// An error unless `x` is `[N, C]` or `[N, C, L]` for this layer's C.
    fn check(&self, x: &Tensor) -> Result<()> {
        let channels = self.0.num_features();
        if !matches!(x.rank(), 2 | 3) || x.dims()[1] != channels {
            return Err(NnError::invalid(
                "BatchNorm1d",
                format!(
                    "expected input [N, {channels}] or [N, {channels}, L], got {}",
                    x.shape()
                ),
            ));
        }
        Ok(())
    }
}

impl ModuleT for BatchNorm1d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check(x)?;
        self.0.forward_t(x, train)
    }

    /// The activation after it in the same op (see [`Tensor::batch_norm_train_act`]).
    fn forward_t_activated(
        &self,
        x: &Tensor,
        train: bool,
        activation: Activation,
    ) -> Option<Result<Tensor>> {
        Some(
            self.check(x)
                .and_then(|()| self.0.forward_activated(x, train, activation)),
        )
    }
}

/// Batch norm over `[N, C, H, W]` → same shape (PyTorch's `nn.BatchNorm2d`), as
/// [`BatchNorm1d`] with statistics over N, H and W. State-dict keys, in order: `weight`,
/// `bias` (if affine), `running_mean`, `running_var` (no `num_batches_tracked`, see
/// [`BatchNorm1d`]).
#[derive(Debug, Clone)]
pub struct BatchNorm2d(BatchNorm);

impl BatchNorm2d {
    pub fn new(path: &Path, num_features: usize) -> Result<BatchNorm2d> {
        BatchNorm2d::with_config(path, num_features, BatchNormConfig::default())
    }

    pub fn with_config(
        path: &Path,
        num_features: usize,
        config: BatchNormConfig,
    ) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d(BatchNorm::new(path, num_features, config)?))
    }

    /// `[C]`, if affine.
    pub fn weight(&self) -> Option<&Var> {
        self.0.weight.as_ref()
    }

    /// `[C]`, if affine.
    pub fn bias(&self) -> Option<&Var> {
        self.0.bias.as_ref()
    }

    pub fn running_stats(&self) -> &RunningStats {
        &self.0.running
    }

    pub fn config(&self) -> &BatchNormConfig {
        &self.0.config
    }
}

impl BatchNorm2d {
    /// An error unless `x` is `[N, C, H, W]` for this layer's C.
    fn check(&self, x: &Tensor) -> Result<()> {
        let channels = self.0.num_features();
        if x.rank() != 4 || x.dims()[1] != channels {
            return Err(NnError::invalid(
                "BatchNorm2d",
                format!("expected input [N, {channels}, H, W], got {}", x.shape()),
            ));
        }
        Ok(())
    }
}

impl ModuleT for BatchNorm2d {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.check(x)?;
        self.0.forward_t(x, train)
    }

    /// The activation after it in the same op (see [`Tensor::batch_norm_train_act`]).
    fn forward_t_activated(
        &self,
        x: &Tensor,
        train: bool,
        activation: Activation,
    ) -> Option<Result<Tensor>> {
        Some(
            self.check(x)
                .and_then(|()| self.0.forward_activated(x, train, activation)),
        )
    }
}

/// PyTorch's `F.layer_norm`: `x [.., *normalized_shape]` → same shape, each sample normalised
/// over its trailing `normalized_shape` dims, `(x - mean) / √(var + eps) · weight + bias`, the
/// variance biased; `weight` and `bias` (each optional) have shape `normalized_shape`.
pub fn layer_norm(
    x: &Tensor,
    normalized_shape: &[usize],
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let (rank, k) = (x.rank(), normalized_shape.len());
    if k == 0 {
        return Err(NnError::invalid(OP, "normalized_shape must not be empty"));
    }
    if rank < k || x.dims()[rank - k..] != *normalized_shape {
        return Err(NnError::invalid(
            OP,
            format!(
                "expected input {}, got {}",
                trailing(normalized_shape),
                x.shape()
            ),
        ));
    }
    for (name, tensor) in [("weight", weight), ("bias", bias)] {
        if let Some(tensor) = tensor.filter(|t| t.dims() != normalized_shape) {
            return Err(NnError::invalid(
                OP,
                format!(
                    "{name} should be {normalized_shape:?} (normalized_shape), got {}",
                    tensor.shape()
                ),
            ));
        }
    }
    let normalized_dims: Vec<usize> = (rank - k..rank).collect();
    let mean = x.mean(&normalized_dims, true)?; // [.., 1, .., 1]
    let centered = x.sub(&mean)?; // [.., *normalized_shape]
    let var = centered.square()?.mean(&normalized_dims, true)?; // [.., 1, .., 1]
    let mut y = centered.div(&var.add_scalar(eps)?.sqrt()?)?; // [.., *normalized_shape]
                                                              // weight and bias broadcast over the leading dims.
    if let Some(weight) = weight {
        y = y.mul(weight)?;
    }
    if let Some(bias) = bias {
        y = y.add(bias)?;
    }
    Ok(y)
}

/// How a [`LayerNorm`] is built. The default is PyTorch's: eps 1e-5, a weight (ones) and a
/// bias (zeros).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerNormConfig {
    pub eps: f64,
    /// Whether the layer has a learned `weight` (and, with `bias`, a learned `bias`).
    pub elementwise_affine: bool,
    /// Whether an affine layer also has a `bias` (PyTorch's `bias=True`).
    pub bias: bool,
}

impl Default for LayerNormConfig {
    fn default() -> Self {
        LayerNormConfig {
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
        }
    }
}

/// Layer norm over the trailing `normalized_shape` dims (PyTorch's `nn.LayerNorm`):
/// `x [.., *normalized_shape]` → same shape; see [`layer_norm`]. Registers `weight` (ones)
/// then `bias` (zeros), both of shape `normalized_shape`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    normalized_shape: Vec<usize>,
    weight: Option<Var>,
    bias: Option<Var>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(path: &Path, normalized_shape: &[usize]) -> Result<LayerNorm> {
        LayerNorm::with_config(path, normalized_shape, LayerNormConfig::default())
    }

    pub fn with_config(
        path: &Path,
        normalized_shape: &[usize],
        config: LayerNormConfig,
    ) -> Result<LayerNorm> {
        if normalized_shape.is_empty() {
            return Err(NnError::invalid(
                "LayerNorm",
                "normalized_shape must not be empty",
            ));
        }
        let (weight, bias) = if config.elementwise_affine {
            let weight = path.parameter("weight", normalized_shape, Init::Constant(1.0))?;
            let bias = if config.bias {
                Some(path.parameter("bias", normalized_shape, Init::Constant(0.0))?)
            } else {
                None
            };
            (Some(weight), bias)
        } else {
            (None, None)
        };
        Ok(LayerNorm {
            normalized_shape: normalized_shape.to_vec(),
            weight,
            bias,
            eps: config.eps,
        })
    }

    pub fn normalized_shape(&self) -> &[usize] {
        &self.normalized_shape
    }

    pub fn weight(&self) -> Option<&Var> {
        self.weight.as_ref()
    }

    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        layer_norm(
            x,
            &self.normalized_shape,
            self.weight.as_deref(),
            self.bias.as_deref(),
            self.eps,
        )
    }
}

/// PyTorch's `F.group_norm`: `x [N, C, *]` → same shape, the C channels split into
/// `num_groups` groups of C / num_groups channels and each sample's group normalised over its
/// channels and positions together, `(x - mean) / √(var + eps)` with the variance biased, then
/// scaled by `weight [C]` and shifted by `bias [C]` per channel (each optional). One group is
/// layer norm over (C, *); C groups is instance norm. kiln-tensor's fused op
/// (`Tensor::group_norm`): one pass for the normalisation and affine map, two for the backward.
pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    Ok(x.group_norm(num_groups, weight, bias, eps)?)
}

/// Group norm over `[N, C, *]` (PyTorch's `nn.GroupNorm`, eps 1e-5, affine): see
/// [`group_norm`]. Registers `weight` (ones) then `bias` (zeros), both `[C]`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    num_groups: usize,
    num_channels: usize,
    weight: Var,
    bias: Var,
    eps: f64,
}

impl GroupNorm {
    pub fn new(path: &Path, num_groups: usize, num_channels: usize) -> Result<GroupNorm> {
        if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
            return Err(NnError::invalid(
                "GroupNorm",
                format!("{num_channels} channels do not split into {num_groups} groups"),
            ));
        }
        Ok(GroupNorm {
            num_groups,
            num_channels,
            weight: path.parameter("weight", [num_channels], Init::Constant(1.0))?,
            bias: path.parameter("bias", [num_channels], Init::Constant(0.0))?,
            eps: 1e-5,
        })
    }

    pub fn num_groups(&self) -> usize {
        self.num_groups
    }

    pub fn num_channels(&self) -> usize {
        self.num_channels
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() < 2 || x.dims()[1] != self.num_channels {
            return Err(NnError::invalid(
                "GroupNorm",
                format!(
                    "expected input [N, {}, *], got {}",
                    self.num_channels,
                    x.shape()
                ),
            ));
        }
        group_norm(
            x,
            self.num_groups,
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
        )
    }
}
