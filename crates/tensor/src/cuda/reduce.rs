//! Reductions (sum, max over any set of dims) and softmax along one dim on CUDA, with the
//! kernels of kernels/reduce.cu; the CPU references are in src/cpu/reduce.rs. Not for the
//! reductions inside other ops (conv, optimisers), which keep their own.

use std::sync::Arc;

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{
    check_inside, driver_error, float_kernel_suffix, registry, CudaDevice, CudaStorage, StridedArg,
};
use crate::{DType, Layout, ReduceOp, Result};

/// Threads a block; kernels/reduce.cu's block-wide combine assumes exactly this many.
const BLOCK: u32 = 256;

/// How a reduction kernel's groups are laid out: `lanes` threads share one output (1, a warp,
/// or a block), `splits` blocks share each output's elements (more than 1: partials, then a
/// join), and the grid.
struct Plan {
    lanes: u32,
    splits: u32,
    config: LaunchConfig,
}

/// The innermost (merged) stride of a kernel layout: 1 when neighbouring elements are
/// neighbours in memory.
fn inner_stride(arg: &StridedArg) -> u64 {
    match arg.rank {
        0 => 1,
        rank => arg.strides[rank as usize - 1],
    }
}

impl Plan {
    /// `outputs` reductions of `count` elements each. A warp or block per output when its
    /// elements are contiguous (coalesced reads along the reduction); a thread per output when
    /// the outputs are contiguous and the reduced elements are not (a bias gradient's sum over
    /// the batch: neighbouring threads read neighbouring columns); and when that leaves the GPU
    /// idle (few outputs), `splits` blocks per output, each thread still taking 32 or more.
    fn new(
        device: &Arc<CudaDevice>,
        outputs: usize,
        count: usize,
        kept: &StridedArg,
        reduced: &StridedArg,
        may_split: bool,
    ) -> Plan {
        let columns = inner_stride(reduced) != 1 && inner_stride(kept) == 1 && outputs >= 32;
        let lanes: u32 = if count < 32 || columns {
            1
        } else if count < 4096 {
            32
        } else {
            BLOCK
        };
        let mut config = device.launch_config_for(outputs * lanes as usize);
        let full = device.launch_config_for(usize::MAX).grid_dim.0 as usize;
        let blocks = config.grid_dim.0 as usize;
        let splits = if may_split && blocks < full {
            (full / blocks)
                .min(count / (lanes as usize * 32))
                .clamp(1, 1024)
        } else {
            1
        };
        config.grid_dim.1 = splits as u32;
        Plan {
            lanes,
            splits: splits as u32,
            config,
        }
    }
}

/// `layout` without the dims in `dims` (sorted), keeping the other dims' strides and the
/// offset.
fn without_dims(layout: &Layout, dims: &[usize]) -> Layout {
    dims.iter()
        .rev()
        .fold(layout.clone(), |layout, &d| layout.squeeze(d))
}

/// Sum or max over `dims` (sorted, distinct), keepdim: the output has the input's shape with
/// those dims 1, contiguous. CPU reference: `cpu::reduce::reduce` (f64 sums, NaN-winning max;
/// an empty reduction is 0 or -inf).
pub(super) fn reduce(
    s: &CudaStorage,
    layout: &Layout,
    op: ReduceOp,
    dims: &[usize],
) -> Result<CudaStorage> {
    let suffix = float_kernel_suffix("reduce", s.dtype)?;
    check_inside("reduce", s, layout)?;
    let (name, partial_dtype) = match op {
        ReduceOp::Sum => ("sum", DType::F64),
        ReduceOp::Max if s.dtype == DType::F64 => ("max", DType::F64),
        ReduceOp::Max => ("max", DType::F32),
    };
    let kept_dims: Vec<usize> = (0..layout.dims().len())
        .filter(|d| !dims.contains(d))
        .collect();
    // Output o (row-major over the kept dims, which is the keepdim output's order) starts at
    // strided_offset(kept, o); its elements are strided_offset(reduced, j) further on.
    let kept_layout = without_dims(layout, dims);
    let reduced_layout = without_dims(layout, &kept_dims);
    let (outputs, count) = (kept_layout.elem_count(), reduced_layout.elem_count());
    let device = s.device.clone();
    let mut out = device.alloc(s.dtype, outputs)?;
    if outputs == 0 {
        return Ok(out);
    }
    let kept = StridedArg::new("reduce", &kept_layout)?;
    let reduced = StridedArg {
        offset: 0,
        ..StridedArg::new("reduce", &reduced_layout)?
    };
    let plan = Plan::new(&device, outputs, count, &kept, &reduced, true);
    if plan.splits == 1 {
        launch_reduce(
            &format!("{name}_{suffix}"),
            &mut out,
            s,
            (&kept, &reduced),
            outputs,
            count,
            &plan,
        )?;
        return Ok(out);
    }
    // Pass 1: partial[o * splits + s], in the accumulator type (grid.y = splits).
    let mut partial = device.alloc(partial_dtype, outputs * plan.splits as usize)?;
    launch_reduce(
        &format!("{name}_split_{suffix}"),
        &mut partial,
        s,
        (&kept, &reduced),
        outputs,
        count,
        &plan,
    )?;
    // Pass 2: each output's partials are one contiguous run of `splits`.
    let partials = Layout::contiguous([outputs, plan.splits as usize]);
    let join_kept = StridedArg::new("reduce", &partials.squeeze(1))?;
    let join_reduced = StridedArg::new("reduce", &partials.squeeze(0))?;
    let splits = plan.splits as usize;
    let join = Plan::new(&device, outputs, splits, &join_kept, &join_reduced, false);
    launch_reduce(
        &format!("{name}_join_{suffix}"),
        &mut out,
        &partial,
        (&join_kept, &join_reduced),
        outputs,
        splits,
        &join,
    )?;
    Ok(out)
}

/// One launch of a reduce.cu kernel `name(out, input, kept, reduced, outputs, count, lanes)`
/// (the one-pass, split and join kernels all take these), reading `input` through the kept and
/// reduced layouts and writing `target` (`outputs` elements, or `outputs * splits` partials for
/// a split kernel, whose grid.y is the split count).
fn launch_reduce(
    name: &str,
    target: &mut CudaStorage,
    input: &CudaStorage,
    (kept, reduced): (&StridedArg, &StridedArg),
    outputs: usize,
    count: usize,
    plan: &Plan,
) -> Result<()> {
    let device = input.device.clone();
    let function = device.function(&registry::REDUCE, name)?;
    let (outputs, count) = (outputs as u64, count as u64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut target.buffer)
        .arg(&input.buffer)
        .arg(kept)
        .arg(reduced)
        .arg(&outputs)
        .arg(&count)
        .arg(&plan.lanes);
    // Safety: the arguments match the kernel's signature in kernels/reduce.cu; it reads only
    // the elements the two layouts reach (inside `input`: `reduce` checks its caller's layout
    // with `check_inside`, and the join's partials are its own) and writes
    // the outputs (or partials) `target` was allocated for.
    unsafe { launch.launch(plan.config) }.map_err(driver_error("reduce"))?;
    Ok(())
}

/// Softmax (or log-softmax) along `dim`, max-subtracted; the output is contiguous in the
/// input's dim order. CPU reference: `cpu::reduce::softmax`.
pub(super) fn softmax(
    s: &CudaStorage,
    layout: &Layout,
    dim: usize,
    log: bool,
) -> Result<CudaStorage> {
    let op = if log { "log_softmax" } else { "softmax" };
    let suffix = float_kernel_suffix("softmax", s.dtype)?;
    check_inside(op, s, layout)?;
    let device = s.device.clone();
    let mut out = device.alloc(s.dtype, layout.elem_count())?;
    if layout.elem_count() == 0 {
        return Ok(out);
    }
    // Row r starts at strided_offset(rows, r) and steps by the dim's stride, in the input and
    // in the contiguous output alike.
    let row_len = layout.dims()[dim];
    let rows_layout = layout.squeeze(dim);
    let out_layout = Layout::contiguous(layout.shape().clone());
    let rows = StridedArg::new(op, &rows_layout)?;
    let out_rows = StridedArg::new(op, &out_layout.squeeze(dim))?;
    let in_stride = layout.strides()[dim] as u64;
    let out_stride = out_layout.strides()[dim] as u64;
    let row_count = rows_layout.elem_count();
    // A warp a row, a block for long rows.
    let lanes: u32 = if row_len <= 1024 { 32 } else { BLOCK };
    let (row_count64, row_len64) = (row_count as u64, row_len as u64);
    let function = device.function(&registry::REDUCE, &format!("{op}_{suffix}"))?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&s.buffer)
        .arg(&rows)
        .arg(&in_stride)
        .arg(&out_rows)
        .arg(&out_stride)
        .arg(&row_count64)
        .arg(&row_len64)
        .arg(&lanes);
    // Safety: the arguments match `{op}_{suffix}` in kernels/reduce.cu; it reads the elements
    // of `layout` and writes each of the output's elements once.
    unsafe { launch.launch(device.launch_config_for(row_count * lanes as usize)) }
        .map_err(driver_error(op))?;
    Ok(out)
}
