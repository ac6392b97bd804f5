//! The host side of kernels/norm.cu: batch norm's per-channel statistics (one launch, or a
//! split launch and a join when there are few channels), its forward (one launch) and its
//! backward (a per-channel reduce, or a split reduce and a join, then one elementwise launch).
//! CPU references: `cpu::norm`. Nothing here reads device memory back to the host.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::conv::checked_input;
use super::{
    driver_error, float_kernel_suffix, registry, same_dtype_and_device, CudaDevice, CudaStorage,
    StridedArg,
};
use crate::{DType, Error, Layout, Result, Shape};

/// Threads a block; norm.cu's block-wide merges assume a multiple of 32.
const BLOCK: u32 = 256;

/// Where each channel of `x [N, C, *]` lies: channel c's element j is at
/// `base + c·stride + strided_offset(reduced, j)`, j < count.
struct Channels {
    base: u64,
    stride: u64,
    reduced: StridedArg,
    channels: usize,
    count: usize,
}

impl Channels {
    fn new(op: &'static str, storage: &CudaStorage, layout: &Layout) -> Result<Channels> {
        if layout.dims().len() < 2 {
            return Err(Error::invalid(
                op,
                format!("expected input [N, C, ..], got {}", layout.shape()),
            ));
        }
        // Every element the layout reaches lies inside the buffer.
        StridedArg::for_storage(op, storage, layout)?;
        let reduced = layout.squeeze(1);
        Ok(Channels {
            base: layout.offset() as u64,
            stride: layout.strides()[1] as u64,
            reduced: StridedArg {
                offset: 0,
                ..StridedArg::new(op, &reduced)?
            },
            channels: layout.dims()[1],
            count: reduced.elem_count(),
        })
    }

    /// The innermost merged stride of the reduced elements (1: neighbours in memory).
    fn reduced_inner_stride(&self) -> u64 {
        match self.reduced.rank {
            0 => 1,
            rank => self.reduced.strides[rank as usize - 1],
        }
    }
}

/// How the per-channel kernels are laid out: `lanes` threads a channel, `splits` blocks
/// sharing each channel's elements (more than 1: partials and a join), and the grid.
struct Plan {
    lanes: u32,
    splits: u32,
    config: LaunchConfig,
}

impl Plan {
    /// A thread per channel when channels are neighbours in memory and their elements are not
    /// (BatchNorm1d's `[64, 6272]`: neighbouring threads read neighbouring channels), or when a
    /// channel has fewer than 32 values; else a warp per channel below 4096 values, a block
    /// above. If that leaves fewer than two blocks per SM, up to 64 blocks share a channel,
    /// each thread still taking 16 values or more.
    fn new(device: &Arc<CudaDevice>, c: &Channels) -> Plan {
        let columns = c.reduced_inner_stride() != 1 && c.stride == 1 && c.channels >= 32;
        let lanes: u32 = if c.count < 32 || columns {
            1
        } else if c.count < 4096 {
            32
        } else {
            BLOCK
        };
        let mut config = device.launch_config_for(c.channels * lanes as usize);
        // launch_config_for caps the grid at 8 blocks an SM.
        let two_per_sm = device.launch_config_for(usize::MAX).grid_dim.0 as usize / 4;
        let blocks = config.grid_dim.0 as usize;
        let splits = (two_per_sm / blocks)
            .min(c.count / (lanes as usize * 16))
            .clamp(1, 64);
        config.grid_dim.1 = splits as u32;
        Plan {
            lanes,
            splits: splits as u32,
            config,
        }
    }
}

/// Checks that `v` is a `[channels]` vector (its first `channels` elements) of `x`'s dtype and
/// device, as the kernels read it.
fn check_vector(
    op: &'static str,
    name: &str,
    v: &CudaStorage,
    x: &CudaStorage,
    channels: usize,
) -> Result<()> {
    same_dtype_and_device(op, x, v)?;
    if v.len < channels {
        return Err(Error::invalid(
            op,
            format!("{name} holds {} elements, expected [{channels}]", v.len),
        ));
    }
    Ok(())
}

/// Per channel of `x [N, C, *]` (any layout, float dtypes) the mean and biased variance,
/// contiguous `[C]` each. Reference: `cpu::norm::batch_norm_stats`.
pub(super) fn batch_norm_stats(
    x: &CudaStorage,
    layout: &Layout,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "batch_norm_stats";
    let suffix = float_kernel_suffix(OP, x.dtype)?;
    let c = Channels::new(OP, x, layout)?;
    let device = x.device.clone();
    let mut mean = device.alloc(x.dtype, c.channels)?;
    let mut var = device.alloc(x.dtype, c.channels)?;
    if c.channels == 0 {
        return Ok((mean, var));
    }
    if c.count == 0 {
        return Err(Error::invalid(
            OP,
            format!("input {} has no values per channel", layout.shape()),
        ));
    }
    let plan = Plan::new(&device, &c);
    // kernels/norm.cu accumulates in f64 for every dtype (see its header for why).
    let accumulator = DType::F64;
    // Triples (count, mean, M2) per channel and split; one placeholder element when unsplit.
    let partial_len = if plan.splits > 1 {
        c.channels * plan.splits as usize * 3
    } else {
        1
    };
    let mut partial = device.alloc(accumulator, partial_len)?;
    let (channels64, count64) = (c.channels as u64, c.count as u64);
    let function = device.function(&registry::NORM, &format!("batch_norm_stats_{suffix}"))?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut mean.buffer)
        .arg(&mut var.buffer)
        .arg(&mut partial.buffer)
        .arg(&x.buffer)
        .arg(&c.base)
        .arg(&c.stride)
        .arg(&c.reduced)
        .arg(&channels64)
        .arg(&count64)
        .arg(&plan.lanes);
    // Safety: the arguments match `batch_norm_stats_{dtype}(T* mean, T* var, A* partial,
    // const T* x, u64 base, u64 channel_stride, Strided reduced, u64 channels, u64 count,
    // u32 lanes)` in kernels/norm.cu; it reads only the elements of `layout` (inside `x`,
    // checked by Channels::new) and writes the C means and variances, or with grid.y =
    // splits the C·splits triples `partial` was allocated for.
    unsafe { launch.launch(plan.config) }.map_err(driver_error(OP))?;
    if plan.splits > 1 {
        let function =
            device.function(&registry::NORM, &format!("batch_norm_stats_join_{suffix}"))?;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(&mut mean.buffer)
            .arg(&mut var.buffer)
            .arg(&partial.buffer)
            .arg(&channels64)
            .arg(&plan.splits);
        // Safety: matches `batch_norm_stats_join_{dtype}(T* mean, T* var, const A* partial,
        // u64 channels, u32 splits)`; `partial` holds channels·splits triples, written above.
        unsafe { launch.launch(device.launch_config_for(c.channels)) }.map_err(driver_error(OP))?;
    }
    Ok((mean, var))
}

/// `x [N, C, *]` (any layout) as `(channels, inner)`, inner the product of dims after 1.
fn channel_shape(shape: &Shape) -> (usize, usize) {
    let dims = shape.dims();
    (dims[1], dims[2..].iter().product())
}

/// `((x - mean)·invstd)·weight + bias` per channel, contiguous. Reference:
/// `cpu::norm::batch_norm_forward`.
pub(super) fn batch_norm_forward(
    x: &CudaStorage,
    layout: &Layout,
    mean: &CudaStorage,
    invstd: &CudaStorage,
    weight: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
) -> Result<CudaStorage> {
    const OP: &str = "batch_norm";
    let suffix = float_kernel_suffix(OP, x.dtype)?;
    let c = Channels::new(OP, x, layout)?;
    let x_arg = StridedArg::new(OP, layout)?;
    let (channels, inner) = channel_shape(layout.shape());
    for (name, v) in [
        ("mean", Some(mean)),
        ("invstd", Some(invstd)),
        ("weight", weight),
        ("bias", bias),
    ] {
        if let Some(v) = v {
            check_vector(OP, name, v, x, c.channels)?;
        }
    }
    let n = layout.elem_count();
    let device = x.device.clone();
    let mut y = device.alloc(x.dtype, n)?;
    if n == 0 {
        return Ok(y);
    }
    // An absent weight or bias is never read; mean stands in as a valid pointer.
    let (has_weight, has_bias) = (weight.is_some() as u32, bias.is_some() as u32);
    let weight = weight.unwrap_or(mean);
    let bias = bias.unwrap_or(mean);
    let (channels64, inner64, n64) = (channels as u64, inner.max(1) as u64, n as u64);
    let function = device.function(&registry::NORM, &format!("batch_norm_forward_{suffix}"))?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut y.buffer)
        .arg(&x.buffer)
        .arg(&x_arg)
        .arg(&mean.buffer)
        .arg(&invstd.buffer)
        .arg(&weight.buffer)
        .arg(&bias.buffer)
        .arg(&has_weight)
        .arg(&has_bias)
        .arg(&channels64)
        .arg(&inner64)
        .arg(&n64);
    // Safety: the arguments match `batch_norm_forward_{dtype}(T* y, const T* x, Strided,
    // const T* mean, const T* invstd, const T* weight, const T* bias, u32 has_weight,
    // u32 has_bias, u64 channels, u64 inner, u64 n)` in kernels/norm.cu; `y` holds n
    // elements, x's layout stays inside its buffer and each [C] vector holds C elements
    // (checked above).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(OP))?;
    Ok(y)
}

/// `(dx, dweight, dbias)` of the training-mode batch norm: a per-channel reduce of `Σ dy` and
/// `Σ dy·xhat` (split and joined for few channels), then dx elementwise. Reference:
/// `cpu::norm::batch_norm_backward`.
pub(super) fn batch_norm_backward(
    (grad, grad_layout): (&CudaStorage, &Layout),
    (x, layout): (&CudaStorage, &Layout),
    mean: &CudaStorage,
    invstd: &CudaStorage,
    weight: Option<&CudaStorage>,
) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    const OP: &str = "batch_norm_backward";
    let suffix = float_kernel_suffix(OP, x.dtype)?;
    let xc = Channels::new(OP, x, layout)?;
    let grad_arg = checked_input(OP, grad, grad_layout, layout.shape())?;
    let gc = Channels::new(OP, grad, grad_layout)?;
    check_vector(OP, "grad", grad, x, 0)?;
    for (name, v) in [
        ("mean", Some(mean)),
        ("invstd", Some(invstd)),
        ("weight", weight),
    ] {
        if let Some(v) = v {
            check_vector(OP, name, v, x, xc.channels)?;
        }
    }
    let x_arg = StridedArg::new(OP, layout)?;
    let (channels, inner) = channel_shape(layout.shape());
    let n = layout.elem_count();
    let device = x.device.clone();
    let mut dx = device.alloc(x.dtype, n)?;
    let mut grad_weight = device.alloc(x.dtype, channels)?;
    let mut grad_bias = device.alloc(x.dtype, channels)?;
    if channels == 0 {
        return Ok((dx, grad_weight, grad_bias));
    }
    if xc.count == 0 {
        return Err(Error::invalid(
            OP,
            format!("input {} has no values per channel", layout.shape()),
        ));
    }
    // Plan by x's layout (the gradient usually shares it).
    let plan = Plan::new(&device, &xc);
    let mut sums = device.alloc(DType::F64, 2 * channels)?;
    let mut partial = device.alloc(
        DType::F64,
        if plan.splits > 1 {
            2 * channels * plan.splits as usize
        } else {
            1
        },
    )?;
    let (channels64, count64) = (channels as u64, xc.count as u64);
    let function = device.function(
        &registry::NORM,
        &format!("batch_norm_backward_reduce_{suffix}"),
    )?;
    {
        let target = if plan.splits > 1 {
            &mut partial
        } else {
            &mut sums
        };
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(&mut grad_weight.buffer)
            .arg(&mut grad_bias.buffer)
            .arg(&mut target.buffer)
            .arg(&grad.buffer)
            .arg(&gc.base)
            .arg(&gc.stride)
            .arg(&gc.reduced)
            .arg(&x.buffer)
            .arg(&xc.base)
            .arg(&xc.stride)
            .arg(&xc.reduced)
            .arg(&mean.buffer)
            .arg(&invstd.buffer)
            .arg(&channels64)
            .arg(&count64)
            .arg(&plan.lanes);
        // Safety: the arguments match `batch_norm_backward_reduce_{dtype}(T* grad_weight,
        // T* grad_bias, double* sums, const T* dy, u64, u64, Strided, const T* x, u64, u64,
        // Strided, const T* mean, const T* invstd, u64 channels, u64 count, u32 lanes)` in
        // kernels/norm.cu; both layouts stay inside their buffers (Channels::new), and it
        // writes C sums pairs and gradients, or with grid.y = splits the C·splits pairs
        // `partial` holds.
        unsafe { launch.launch(plan.config) }.map_err(driver_error(OP))?;
    }
    if plan.splits > 1 {
        let function = device.function(
            &registry::NORM,
            &format!("batch_norm_backward_join_{suffix}"),
        )?;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(&mut grad_weight.buffer)
            .arg(&mut grad_bias.buffer)
            .arg(&mut sums.buffer)
            .arg(&partial.buffer)
            .arg(&channels64)
            .arg(&plan.splits);
        // Safety: matches `batch_norm_backward_join_{dtype}(T*, T*, double* sums,
        // const double* partial, u64 channels, u32 splits)`; `partial` holds C·splits pairs.
        unsafe { launch.launch(device.launch_config_for(channels)) }.map_err(driver_error(OP))?;
    }
    let has_weight = weight.is_some() as u32;
    let weight = weight.unwrap_or(mean);
    let (inner64, n64, count) = (inner.max(1) as u64, n as u64, xc.count as f64);
    let function = device.function(&registry::NORM, &format!("batch_norm_backward_dx_{suffix}"))?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut dx.buffer)
        .arg(&grad.buffer)
        .arg(&grad_arg)
        .arg(&x.buffer)
        .arg(&x_arg)
        .arg(&mean.buffer)
        .arg(&invstd.buffer)
        .arg(&weight.buffer)
        .arg(&has_weight)
        .arg(&sums.buffer)
        .arg(&channels64)
        .arg(&inner64)
        .arg(&count)
        .arg(&n64);
    // Safety: matches `batch_norm_backward_dx_{dtype}(T* dx, const T* dy, Strided, const T* x,
    // Strided, const T* mean, const T* invstd, const T* weight, u32 has_weight,
    // const double* sums, u64 channels, u64 inner, double count, u64 n)`; dx holds n
    // elements, `sums` 2·C written above, each [C] vector C elements (checked above).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(OP))?;
    Ok((dx, grad_weight, grad_bias))
}
