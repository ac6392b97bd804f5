//! A tensor's elements on whichever device holds them. The tensor layer talks only to this
//! enum, which makes storage on a device (from host data, filled, or drawn from the Philox
//! stream) and forwards each primitive to the backend of its device: the one place in the
//! crate that names both backends.

use std::sync::Arc;

use crate::backend::{BackendStorage, Operand};
use crate::cpu::CpuStorage;
use crate::cuda::{CudaDevice, CudaStorage};
use crate::rng::Distribution;
use crate::{
    AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Error, Layout, ReduceOp, Result,
    UnaryOp,
};

#[derive(Debug)]
pub enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// A draw from the Philox stream, for [`Storage::random`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Draw {
    /// Uniform in [0, 1).
    Uniform,
    Normal {
        mean: f64,
        std: f64,
    },
}

impl Draw {
    pub(crate) fn distribution(self) -> Distribution {
        match self {
            Draw::Uniform => Distribution::Uniform,
            Draw::Normal { .. } => Distribution::Normal,
        }
    }
}

/// The elements a layout selects, on the host: a CPU tensor's storage as it is (the layout
/// still to apply), or a GPU tensor's selection copied over, compact from element 0.
pub(crate) enum HostElements<'a> {
    InPlace(&'a CpuStorage),
    Compact(CpuStorage),
}

/// The CUDA device behind `device`, set up on first use; `DeviceUnavailable` (naming `op`
/// and why: no driver, no such device) when it cannot be used. `None` for the CPU.
fn cuda_device(op: &'static str, device: Device) -> Result<Option<Arc<CudaDevice>>> {
    match device {
        Device::Cpu => Ok(None),
        Device::Cuda(ordinal) => crate::cuda::device(ordinal).map(Some).map_err(|e| match e {
            Error::DeviceUnavailable { device, reason, .. } => {
                Error::DeviceUnavailable { op, device, reason }
            }
            other => other,
        }),
    }
}

/// The error for operands on different backends, which the tensor layer rules out first.
fn mixed(op: &'static str, lhs: &Storage, rhs: &Storage) -> crate::Error {
    crate::Error::DeviceMismatch {
        op,
        lhs: lhs.device(),
        rhs: rhs.device(),
    }
}

/// `s` as CPU storage, or the error for operands on different backends.
fn as_cpu<'a>(op: &'static str, first: &Storage, s: &'a Storage) -> Result<&'a CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        other => Err(mixed(op, first, other)),
    }
}

/// `s` as CUDA storage, or the error for operands on different backends.
fn as_cuda<'a>(op: &'static str, first: &Storage, s: &'a Storage) -> Result<&'a CudaStorage> {
    match s {
        Storage::Cuda(s) => Ok(s),
        other => Err(mixed(op, first, other)),
    }
}

/// Forwards a primitive with storage operands to their backend. All operands are on one
/// device: the tensor layer checks that first.
macro_rules! forward {
    ($name:ident($($arg:ident: $ty:ty),*) with $($other:ident: $other_layout:ident),*) => {
        pub(crate) fn $name(&self, layout: &Layout, $($other: Operand<'_, Storage>,)* $($arg: $ty),*) -> Result<Storage> {
            $(let Operand { storage: $other, layout: $other_layout } = $other;)*
            match (self, $($other),*) {
                (Storage::Cpu(s), $(Storage::Cpu($other)),*) => {
                    s.$name(layout, $(Operand::new($other, $other_layout),)* $($arg),*).map(Storage::Cpu)
                }
                (Storage::Cuda(s), $(Storage::Cuda($other)),*) => {
                    s.$name(layout, $(Operand::new($other, $other_layout),)* $($arg),*).map(Storage::Cuda)
                }
                #[allow(unreachable_patterns)]
                (_, $($other),*) => {
                    let others: &[&Storage] = &[$($other),*];
                    Err(mixed(stringify!($name), self, others.first().copied().unwrap_or(self)))
                }
            }
        }
    };
}

/// `storage`'s CPU storage, if it is on the CPU.
fn cpu(storage: &Storage) -> Option<&CpuStorage> {
    match storage {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

/// An optional operand's CPU storage: `Some(None)` when it is absent, `None` when it is not on
/// the CPU.
fn optional_cpu(storage: Option<&Storage>) -> Option<Option<&CpuStorage>> {
    storage.map_or(Some(None), |s| cpu(s).map(Some))
}

impl Storage {
    /// Checks that `device` can hold tensors (a GPU: driver, device), naming `op` if not.
    pub(crate) fn check_device(op: &'static str, device: Device) -> Result<()> {
        cuda_device(op, device).map(drop)
    }

    /// `host` on `device` (uploaded to a GPU).
    pub(crate) fn from_host(op: &'static str, host: CpuStorage, device: Device) -> Result<Storage> {
        Ok(match cuda_device(op, device)? {
            None => Storage::Cpu(host),
            Some(cuda) => Storage::Cuda(upload(&cuda, &host)?),
        })
    }

    /// `len` elements `value` (rounded to `dtype`) on `device`.
    pub(crate) fn full(
        op: &'static str,
        value: f64,
        len: usize,
        dtype: DType,
        device: Device,
    ) -> Result<Storage> {
        Ok(match cuda_device(op, device)? {
            None => Storage::Cpu(CpuStorage::full(value, len, dtype)),
            Some(cuda) => Storage::Cuda(CudaStorage::full(&cuda, value, len, dtype)?),
        })
    }

    /// `len` samples of `draw` (a float `dtype`, which the caller has checked; f16/bf16 are
    /// drawn as f32 and rounded) from
    /// the Philox stream `seed` starting at word `offset`, on `device`: the same numbers on
    /// every device (crate::rng on the host, kernels/rng.cu on a GPU).
    pub(crate) fn random(
        op: &'static str,
        draw: Draw,
        len: usize,
        dtype: DType,
        (seed, offset): (u64, u64),
        device: Device,
    ) -> Result<Storage> {
        if let Some(cuda) = cuda_device(op, device)? {
            let storage = match draw {
                Draw::Uniform => crate::cuda::rng::uniform(&cuda, dtype, len, seed, offset)?,
                Draw::Normal { mean, std } => {
                    crate::cuda::rng::normal(&cuda, dtype, len, mean, std, seed, offset)?
                }
            };
            return Ok(Storage::Cuda(storage));
        }
        use crate::rng::{fill_normal_f32, fill_normal_f64, fill_uniform_f32, fill_uniform_f64};
        let host = if dtype == DType::F64 {
            let mut out = vec![0.0; len];
            match draw {
                Draw::Uniform => fill_uniform_f64(seed, offset, &mut out),
                Draw::Normal { mean, std } => fill_normal_f64(seed, offset, mean, std, &mut out),
            }
            CpuStorage::from_vec(out)
        } else {
            let mut out = vec![0.0; len];
            match draw {
                Draw::Uniform => fill_uniform_f32(seed, offset, &mut out),
                Draw::Normal { mean, std } => {
                    fill_normal_f32(seed, offset, mean as f32, std as f32, &mut out)
                }
            }
            let f32s = CpuStorage::from_vec(out);
            match dtype {
                DType::F32 => f32s,
                _ => f32s.to_dtype(&Layout::contiguous([len]), dtype)?,
            }
        };
        Ok(Storage::Cpu(host))
    }

    /// The elements `layout` selects, on the host. From a GPU only those elements cross the
    /// bus.
    pub(crate) fn host_elements(&self, layout: &Layout) -> Result<HostElements<'_>> {
        Ok(match self {
            Storage::Cpu(cpu) => HostElements::InPlace(cpu),
            Storage::Cuda(cuda) if layout.is_contiguous() && layout.offset() == 0 => {
                HostElements::Compact(download(cuda)?)
            }
            Storage::Cuda(cuda) => HostElements::Compact(download(&cuda.copy_strided(layout)?)?),
        })
    }

    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(s) => s.dtype(),
            Storage::Cuda(s) => s.dtype(),
        }
    }

    /// The number of elements held.
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(s) => s.len(),
            Storage::Cuda(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(s) => s.device(),
            Storage::Cuda(s) => s.device(),
        }
    }

    forward!(copy_strided() with);
    forward!(to_dtype(dtype: DType) with);
    forward!(unary(op: UnaryOp) with);
    forward!(binary(op: BinaryOp) with rhs: rhs_layout);
    forward!(unary_gradient(op: UnaryOp) with x: x_layout);
    forward!(compare(op: CmpOp) with rhs: rhs_layout);
    forward!(where_cond() with on_true: true_layout, on_false: false_layout);
    forward!(reduce(op: ReduceOp, dims: &[usize]) with);
    forward!(softmax(dim: usize, log: bool) with);
    forward!(matmul() with rhs: rhs_layout);
    forward!(index_select(dim: usize) with index: index_layout);
    forward!(index_add(dim: usize) with index: index_layout, source: source_layout);
    forward!(gather(dim: usize) with index: index_layout);
    forward!(scatter_add(dim: usize) with index: index_layout, source: source_layout);
    forward!(conv2d(g: &Conv2dGeometry) with weight: weight_layout);
    forward!(conv2d_input_grad(g: &Conv2dGeometry) with weight: weight_layout);
    forward!(conv2d_weight_grad(g: &Conv2dGeometry) with grad: grad_layout);
    forward!(im2col(g: &Conv2dGeometry) with);
    forward!(col2im(g: &Conv2dGeometry) with);
    forward!(max_pool2d_backward(g: &Conv2dGeometry) with indices: indices_layout);
    forward!(bce_with_logits() with targets: targets_layout);
    forward!(bce_with_logits_backward() with targets: targets_layout, grad: grad_layout);

    /// See [`BackendStorage::batch_norm_stats`].
    pub(crate) fn batch_norm_stats(&self, layout: &Layout) -> Result<(Storage, Storage)> {
        Ok(match self {
            Storage::Cpu(s) => {
                let (mean, var) = s.batch_norm_stats(layout)?;
                (Storage::Cpu(mean), Storage::Cpu(var))
            }
            Storage::Cuda(s) => {
                let (mean, var) = s.batch_norm_stats(layout)?;
                (Storage::Cuda(mean), Storage::Cuda(var))
            }
        })
    }

    /// See [`BackendStorage::batch_norm_forward`].
    pub(crate) fn batch_norm_forward(
        &self,
        layout: &Layout,
        mean: &Storage,
        invstd: &Storage,
        weight: Option<&Storage>,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let cpu = |s| as_cpu("batch_norm", self, s);
        let cuda = |s| as_cuda("batch_norm", self, s);
        match self {
            Storage::Cpu(x) => x
                .batch_norm_forward(
                    layout,
                    cpu(mean)?,
                    cpu(invstd)?,
                    weight.map(cpu).transpose()?,
                    bias.map(cpu).transpose()?,
                )
                .map(Storage::Cpu),
            Storage::Cuda(x) => x
                .batch_norm_forward(
                    layout,
                    cuda(mean)?,
                    cuda(invstd)?,
                    weight.map(cuda).transpose()?,
                    bias.map(cuda).transpose()?,
                )
                .map(Storage::Cuda),
        }
    }

    /// See [`BackendStorage::batch_norm_backward`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn batch_norm_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: x,
            layout: x_layout,
        }: Operand<'_, Storage>,
        mean: &Storage,
        invstd: &Storage,
        weight: Option<&Storage>,
    ) -> Result<(Storage, Storage, Storage)> {
        let cpu = |s| as_cpu("batch_norm_backward", self, s);
        let cuda = |s| as_cuda("batch_norm_backward", self, s);
        Ok(match self {
            Storage::Cpu(g) => {
                let (dx, dw, db) = g.batch_norm_backward(
                    layout,
                    Operand::new(cpu(x)?, x_layout),
                    cpu(mean)?,
                    cpu(invstd)?,
                    weight.map(cpu).transpose()?,
                )?;
                (Storage::Cpu(dx), Storage::Cpu(dw), Storage::Cpu(db))
            }
            Storage::Cuda(g) => {
                let (dx, dw, db) = g.batch_norm_backward(
                    layout,
                    Operand::new(cuda(x)?, x_layout),
                    cuda(mean)?,
                    cuda(invstd)?,
                    weight.map(cuda).transpose()?,
                )?;
                (Storage::Cuda(dx), Storage::Cuda(dw), Storage::Cuda(db))
            }
        })
    }

    /// See [`BackendStorage::group_norm_forward`].
    pub(crate) fn group_norm_forward(
        &self,
        layout: &Layout,
        groups: usize,
        (mean, invstd): (&Storage, &Storage),
        weight: Option<&Storage>,
        bias: Option<&Storage>,
    ) -> Result<Storage> {
        let cpu = |s| as_cpu("group_norm", self, s);
        let cuda = |s| as_cuda("group_norm", self, s);
        Ok(match self {
            Storage::Cpu(x) => Storage::Cpu(x.group_norm_forward(
                layout,
                groups,
                (cpu(mean)?, cpu(invstd)?),
                weight.map(cpu).transpose()?,
                bias.map(cpu).transpose()?,
            )?),
            Storage::Cuda(x) => Storage::Cuda(x.group_norm_forward(
                layout,
                groups,
                (cuda(mean)?, cuda(invstd)?),
                weight.map(cuda).transpose()?,
                bias.map(cuda).transpose()?,
            )?),
        })
    }

    /// See [`BackendStorage::group_norm_backward`].
    pub(crate) fn group_norm_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: x,
            layout: x_layout,
        }: Operand<'_, Storage>,
        groups: usize,
        (mean, invstd): (&Storage, &Storage),
        weight: Option<&Storage>,
    ) -> Result<(Storage, Storage, Storage)> {
        let cpu = |s| as_cpu("group_norm_backward", self, s);
        let cuda = |s| as_cuda("group_norm_backward", self, s);
        Ok(match self {
            Storage::Cpu(g) => {
                let (dx, dw, db) = g.group_norm_backward(
                    layout,
                    Operand::new(cpu(x)?, x_layout),
                    groups,
                    (cpu(mean)?, cpu(invstd)?),
                    weight.map(cpu).transpose()?,
                )?;
                (Storage::Cpu(dx), Storage::Cpu(dw), Storage::Cpu(db))
            }
            Storage::Cuda(g) => {
                let (dx, dw, db) = g.group_norm_backward(
                    layout,
                    Operand::new(cuda(x)?, x_layout),
                    groups,
                    (cuda(mean)?, cuda(invstd)?),
                    weight.map(cuda).transpose()?,
                )?;
                (Storage::Cuda(dx), Storage::Cuda(dw), Storage::Cuda(db))
            }
        })
    }

    forward!(avg_pool2d(g: &Conv2dGeometry) with);
    forward!(avg_pool2d_backward(g: &Conv2dGeometry) with);
    forward!(upsample_nearest2d(out_height: usize, out_width: usize) with);
    forward!(upsample_nearest2d_backward(height: usize, width: usize) with);

    /// See [`BackendStorage::max_pool2d`]: `(values, indices)`.
    pub(crate) fn max_pool2d(
        &self,
        layout: &Layout,
        g: &Conv2dGeometry,
    ) -> Result<(Storage, Storage)> {
        Ok(match self {
            Storage::Cpu(s) => {
                let (values, indices) = s.max_pool2d(layout, g)?;
                (Storage::Cpu(values), Storage::Cpu(indices))
            }
            Storage::Cuda(s) => {
                let (values, indices) = s.max_pool2d(layout, g)?;
                (Storage::Cuda(values), Storage::Cuda(indices))
            }
        })
    }

    /// [`BackendStorage::adam_step`] in place, on the CPU (`CpuStorage::adam_step_in_place`):
    /// `self` is the parameter; the parameter and moments are whole contiguous storages.
    pub(crate) fn adam_step_in_place(
        &mut self,
        grad: Operand<'_, Storage>,
        exp_avg: &mut Storage,
        exp_avg_sq: &mut Storage,
        step: &AdamStep,
    ) -> Result<()> {
        match (self, grad.storage, exp_avg, exp_avg_sq) {
            (Storage::Cpu(p), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
                p.adam_step_in_place(Operand::new(g, grad.layout), m, v, step)
            }
            (p, ..) => Err(Error::Invalid {
                op: "adam_step",
                message: format!(
                    "an in-place update on {}, which runs on the CPU only",
                    p.device()
                ),
            }),
        }
    }

    /// See [`BackendStorage::adam_step_many`]; every storage on one device.
    pub(crate) fn adam_step_many(
        entries: &[[Operand<'_, Storage>; 4]],
        step: &AdamStep,
    ) -> Result<Vec<(Storage, Storage, Storage)>> {
        let Some(&[first, ..]) = entries.first() else {
            return Ok(Vec::new());
        };
        let first = first.storage;
        // Each entry's storages as one backend's, or the first that is elsewhere.
        fn typed<'a, S>(
            first: &Storage,
            entries: &[[Operand<'a, Storage>; 4]],
            unwrap: impl Fn(&'a Storage) -> Option<&'a S>,
        ) -> Result<Vec<[Operand<'a, S>; 4]>> {
            let storages = entries.iter().flatten();
            if let Some(other) = storages
                .clone()
                .find(|x| x.storage.device() != first.device())
            {
                return Err(mixed("adam_step", first, other.storage));
            }
            let typed: Vec<Operand<S>> = storages
                .filter_map(|x| unwrap(x.storage).map(|s| Operand::new(s, x.layout)))
                .collect();
            Ok(typed
                .chunks_exact(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect())
        }
        Ok(match first {
            Storage::Cpu(_) => {
                let entries = typed(first, entries, |s| match s {
                    Storage::Cpu(s) => Some(s),
                    Storage::Cuda(_) => None,
                })?;
                CpuStorage::adam_step_many(&entries, step)?
                    .into_iter()
                    .map(|(p, m, v)| (Storage::Cpu(p), Storage::Cpu(m), Storage::Cpu(v)))
                    .collect()
            }
            Storage::Cuda(_) => {
                let entries = typed(first, entries, |s| match s {
                    Storage::Cuda(s) => Some(s),
                    Storage::Cpu(_) => None,
                })?;
                CudaStorage::adam_step_many(&entries, step)?
                    .into_iter()
                    .map(|(p, m, v)| (Storage::Cuda(p), Storage::Cuda(m), Storage::Cuda(v)))
                    .collect()
            }
        })
    }

    /// See [`BackendStorage::sum_of_squares_many`]; every storage on one device.
    pub(crate) fn sum_of_squares_many(tensors: &[Operand<'_, Storage>]) -> Result<Storage> {
        let Some(first) = tensors.first().map(|x| x.storage) else {
            return Err(crate::Error::invalid("sum_of_squares", "no tensors"));
        };
        if let Some(other) = tensors
            .iter()
            .find(|x| x.storage.device() != first.device())
        {
            return Err(mixed("sum_of_squares", first, other.storage));
        }
        Ok(match first {
            Storage::Cpu(_) => {
                let tensors: Vec<_> = tensors
                    .iter()
                    .filter_map(|x| match x.storage {
                        Storage::Cpu(s) => Some(Operand::new(s, x.layout)),
                        Storage::Cuda(_) => None,
                    })
                    .collect();
                Storage::Cpu(CpuStorage::sum_of_squares_many(&tensors)?)
            }
            Storage::Cuda(_) => {
                let tensors: Vec<_> = tensors
                    .iter()
                    .filter_map(|x| match x.storage {
                        Storage::Cuda(s) => Some(Operand::new(s, x.layout)),
                        Storage::Cpu(_) => None,
                    })
                    .collect();
                Storage::Cuda(CudaStorage::sum_of_squares_many(&tensors)?)
            }
        })
    }

    /// See [`BackendStorage::matmul_bias_act`].
    pub(crate) fn matmul_bias_act(
        &self,
        layout: &Layout,
        rhs: Operand<'_, Storage>,
        bias: Option<Operand<'_, Storage>>,
        activation: crate::Activation,
    ) -> Result<Storage> {
        let rhs_layout = rhs.layout;
        match (self, rhs.storage, bias.map(|c| (c.storage, c.layout))) {
            (Storage::Cpu(a), Storage::Cpu(b), None) => a
                .matmul_bias_act(layout, Operand::new(b, rhs_layout), None, activation)
                .map(Storage::Cpu),
            (Storage::Cpu(a), Storage::Cpu(b), Some((Storage::Cpu(c), c_layout))) => {
                let (b, c) = (Operand::new(b, rhs_layout), Operand::new(c, c_layout));
                a.matmul_bias_act(layout, b, Some(c), activation)
                    .map(Storage::Cpu)
            }
            (Storage::Cuda(a), Storage::Cuda(b), None) => a
                .matmul_bias_act(layout, Operand::new(b, rhs_layout), None, activation)
                .map(Storage::Cuda),
            (Storage::Cuda(a), Storage::Cuda(b), Some((Storage::Cuda(c), c_layout))) => {
                let (b, c) = (Operand::new(b, rhs_layout), Operand::new(c, c_layout));
                a.matmul_bias_act(layout, b, Some(c), activation)
                    .map(Storage::Cuda)
            }
            (a, b, _) => Err(mixed("matmul_bias_act", a, b)),
        }
    }

    /// `activation(conv + bias)` in one pass where the backend fuses it (the CPU, f32:
    /// `CpuStorage::conv_bias_act`); `None` where the caller should compose the ops.
    pub(crate) fn conv_bias_act(
        &self,
        layout: &Layout,
        weight: Operand<'_, Storage>,
        bias: Option<Operand<'_, Storage>>,
        geometry: (&Conv2dGeometry, bool),
        activation: crate::Activation,
    ) -> Result<Option<Storage>> {
        let (Storage::Cpu(x), Storage::Cpu(w)) = (self, weight.storage) else {
            return Ok(None);
        };
        let bias = match bias {
            None => None,
            Some(Operand {
                storage: Storage::Cpu(b),
                layout,
            }) => Some(Operand::new(b, layout)),
            Some(_) => return Ok(None),
        };
        let weight = Operand::new(w, weight.layout);
        let out = x.conv_bias_act(layout, weight, bias, geometry, activation)?;
        Ok(out.map(Storage::Cpu))
    }

    /// `activation(batch_norm_forward(..))` in one pass where the backend fuses it (the
    /// CPU, f32 and f64: `CpuStorage::batch_norm_act_forward`); `None` where the caller
    /// should compose the ops.
    pub(crate) fn batch_norm_act_forward(
        &self,
        layout: &Layout,
        (mean, invstd): (&Storage, &Storage),
        (weight, bias): (Option<&Storage>, Option<&Storage>),
        activation: crate::Activation,
    ) -> Result<Option<Storage>> {
        let (Some(x), Some(mean), Some(invstd)) = (cpu(self), cpu(mean), cpu(invstd)) else {
            return Ok(None);
        };
        let (Some(weight), Some(bias)) = (optional_cpu(weight), optional_cpu(bias)) else {
            return Ok(None);
        };
        let out = x.batch_norm_act_forward(layout, (mean, invstd), (weight, bias), activation)?;
        Ok(out.map(Storage::Cpu))
    }

    /// Batch norm's backward through the leaky ReLU after it (ReLU's at slope 0), whose
    /// output is `y` and `self` the gradient of, in the backend's two passes where it fuses
    /// them (the CPU, f32 and f64: `CpuStorage::batch_norm_relu_backward`); `None` where the
    /// caller should compose the activation's gradient and [`Storage::batch_norm_backward`].
    pub(crate) fn batch_norm_relu_backward(
        &self,
        layout: &Layout,
        (x, y): (Operand<'_, Storage>, Operand<'_, Storage>),
        (mean, invstd): (&Storage, &Storage),
        weight: Option<&Storage>,
        slope: f64,
    ) -> Result<Option<(Storage, Storage, Storage)>> {
        let operands = (cpu(self), cpu(x.storage), cpu(y.storage));
        let (Some(grad), Some(xs), Some(ys)) = operands else {
            return Ok(None);
        };
        let (Some(mean), Some(invstd), Some(weight)) =
            (cpu(mean), cpu(invstd), optional_cpu(weight))
        else {
            return Ok(None);
        };
        let (x, y) = (Operand::new(xs, x.layout), Operand::new(ys, y.layout));
        let out = grad.batch_norm_relu_backward(layout, (x, y), (mean, invstd), weight, slope)?;
        Ok(out.map(|(dx, dw, db)| (Storage::Cpu(dx), Storage::Cpu(dw), Storage::Cpu(db))))
    }

    pub(crate) fn cat(parts: &[Operand<'_, Storage>], dim: usize) -> Result<Storage> {
        match parts.first().map(|first| first.storage) {
            Some(Storage::Cuda(_)) => {
                let cuda_parts = parts
                    .iter()
                    .map(|x| match x.storage {
                        Storage::Cuda(s) => Ok(Operand::new(s, x.layout)),
                        other => Err(mixed("cat", parts[0].storage, other)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                CudaStorage::cat(&cuda_parts, dim).map(Storage::Cuda)
            }
            _ => {
                let cpu_parts = parts
                    .iter()
                    .map(|x| match x.storage {
                        Storage::Cpu(s) => Ok(Operand::new(s, x.layout)),
                        other => Err(mixed("cat", parts[0].storage, other)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                CpuStorage::cat(&cpu_parts, dim).map(Storage::Cpu)
            }
        }
    }

    /// These elements moved to `device` (all of the buffer, whatever the layout).
    pub(crate) fn to_device(&self, device: Device) -> Result<Storage> {
        match (self, device) {
            (Storage::Cpu(s), Device::Cpu) => Ok(Storage::Cpu(s.clone())),
            (Storage::Cpu(s), Device::Cuda(ordinal)) => {
                upload(&crate::cuda::device(ordinal)?, s).map(Storage::Cuda)
            }
            (Storage::Cuda(s), Device::Cpu) => download(s).map(Storage::Cpu),
            (Storage::Cuda(s), Device::Cuda(ordinal)) if s.cuda_device().ordinal() == ordinal => {
                s.try_clone().map(Storage::Cuda)
            }
            (Storage::Cuda(s), Device::Cuda(ordinal)) => {
                // Between devices through the host: simple, and not on any hot path.
                let host = download(s)?;
                upload(&crate::cuda::device(ordinal)?, &host).map(Storage::Cuda)
            }
        }
    }
}

/// `host`'s elements copied to a GPU: the one place the host buffer meets the CUDA backend.
pub fn upload(device: &Arc<CudaDevice>, host: &CpuStorage) -> Result<CudaStorage> {
    match host {
        CpuStorage::U8(v) => CudaStorage::from_host(device, v),
        CpuStorage::U32(v) => CudaStorage::from_host(device, v),
        CpuStorage::F16(v) => CudaStorage::from_host(device, v),
        CpuStorage::BF16(v) => CudaStorage::from_host(device, v),
        CpuStorage::F32(v) => CudaStorage::from_host(device, v),
        CpuStorage::F64(v) => CudaStorage::from_host(device, v),
    }
}

/// A GPU buffer's elements copied back into a host buffer of its dtype.
pub fn download(cuda: &CudaStorage) -> Result<CpuStorage> {
    Ok(match cuda.dtype() {
        DType::U8 => CpuStorage::U8(cuda.to_host()?),
        DType::U32 => CpuStorage::U32(cuda.to_host()?),
        DType::F16 => CpuStorage::F16(cuda.to_host()?),
        DType::BF16 => CpuStorage::BF16(cuda.to_host()?),
        DType::F32 => CpuStorage::F32(cuda.to_host()?),
        DType::F64 => CpuStorage::F64(cuda.to_host()?),
    })
}
