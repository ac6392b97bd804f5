//! Concatenation and indexing on CUDA (cat, index_select/index_add, gather/scatter_add), with
//! the kernels of kernels/index.cu; the CPU references are in src/cpu/index.rs. Shapes are
//! checked by the tensor layer; index values are checked here, against the data.

use cudarc::driver::PushKernelArg;

use super::{check_inside, driver_error, float_kernel_suffix, registry, CudaStorage, StridedArg};
use crate::{DType, Error, Layout, Result};

/// Joins `parts` along `dim` into a contiguous result: one strided copy per part into its slab
/// of the output. CPU reference: `cpu::index::cat`.
pub(super) fn cat(parts: &[(&CudaStorage, &Layout)], dim: usize) -> Result<CudaStorage> {
    let (first, first_layout) = parts
        .first()
        .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
    if let Some((other, _)) = parts.iter().find(|(part, _)| part.dtype != first.dtype) {
        return Err(Error::DTypeMismatch {
            op: "cat",
            lhs: first.dtype,
            rhs: other.dtype,
        });
    }
    let mut out_dims = first_layout.dims().to_vec();
    out_dims[dim] = parts.iter().map(|(_, layout)| layout.dims()[dim]).sum();
    let out_layout = Layout::contiguous(out_dims);
    let device = first.device.clone();
    let mut out = device.alloc(first.dtype, out_layout.elem_count())?;
    let function = device.function(&registry::INDEX, &format!("copy_{}", first.dtype.as_str()))?;
    let mut start = 0;
    for (part, layout) in parts {
        let len = layout.dims()[dim];
        let n = layout.elem_count();
        if n > 0 {
            let source = StridedArg::for_storage("cat", part, layout)?;
            let target = StridedArg::new("cat", &out_layout.narrow(dim, start, len)?)?;
            let n64 = n as u64;
            let mut launch = device.stream().launch_builder(&function);
            launch
                .arg(&mut out.buffer)
                .arg(&part.buffer)
                .arg(&source)
                .arg(&target)
                .arg(&n64);
            // Safety: the arguments match copy_T in kernels/index.cu; both layouts have the
            // part's shape, one over the part's storage and one inside the output.
            unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error("cat"))?;
        }
        start += len;
    }
    Ok(out)
}

/// Checks what can be checked without reading the indices: that `index` is u32 (the CPU's
/// error), that its positions fit the 32 bits the fault record keeps of them, and that its
/// layout stays inside its buffer. The values are checked by the kernels that read them (see
/// `faults`).
fn check_index_tensor(index: &CudaStorage, index_layout: &Layout, op: &'static str) -> Result<()> {
    if index.dtype != DType::U32 {
        return Err(Error::invalid(
            op,
            format!("indices must be u32, got {}", index.dtype),
        ));
    }
    if index_layout.elem_count() > u32::MAX as usize {
        return Err(Error::invalid(
            op,
            format!(
                "{} indices are more than the 2^32 - 1 a CUDA index op takes",
                index_layout.elem_count()
            ),
        ));
    }
    check_inside(op, index, index_layout)
}

/// Checks the values of `index` against `size` (the extent of `dim`) when no kernel that
/// reads them will run (an empty output): an index out of range is reported at the next
/// readback, as from the kernels that check as they read.
fn check_unread_indices(
    index: &CudaStorage,
    index_layout: &Layout,
    op: &'static str,
    dim: usize,
    size: usize,
) -> Result<()> {
    let n = index_layout.elem_count();
    if n == 0 {
        return Ok(());
    }
    let device = index.device.clone();
    let layout = StridedArg::new(op, index_layout)?;
    let (n64, size64) = (n as u64, size as u64);
    let function = device.function(&registry::INDEX, "check_indices")?;
    let check = device.checked_launch(op, dim, size);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&index.buffer)
        .arg(&layout)
        .arg(&n64)
        .arg(&size64)
        .arg(&check.sequence)
        .arg(&check.record);
    // Safety: the arguments match check_indices in kernels/index.cu; it reads the elements of
    // `index_layout` and writes only the device's two-word fault record.
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(op))?;
    Ok(())
}

/// A view of `layout` with dims `dims` (no larger than `layout`'s outside `dim`) whose element
/// at a position is the element of `layout` at that position with 0 along `dim` (stride 0
/// there): kernels add `index * stride of dim` to it. Needs `layout.dims()[dim] >= 1`.
fn positions(layout: &Layout, dim: usize, dims: &[usize]) -> Result<Layout> {
    let mut view = layout.narrow(dim, 0, 1)?;
    for (d, &size) in dims.iter().enumerate() {
        if d != dim {
            view = view.narrow(d, 0, size)?;
        }
    }
    view.broadcast_as(&dims.into())
}

/// out[i] = data[positions(i) + index[(i / inner) % index_len] * stride of dim], `n` elements:
/// index_select and gather (kernels/index.cu select_T).
#[allow(clippy::too_many_arguments)]
fn select(
    op: &'static str,
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    dim: usize,
    out_dims: &[usize],
    inner: usize,
    index_len: usize,
) -> Result<CudaStorage> {
    check_index_tensor(index, index_layout, op)?;
    check_inside(op, s, layout)?;
    let n: usize = out_dims.iter().product();
    let device = s.device.clone();
    let mut out = device.alloc(s.dtype, n)?;
    let size = layout.dims()[dim];
    if n == 0 || size == 0 {
        // Nothing to read (and along an empty dim every index is out of range, reported at
        // the next readback): a bad index reads as zero.
        check_unread_indices(index, index_layout, op, dim, size)?;
        if n > 0 {
            device
                .stream()
                .memset_zeros(&mut out.buffer)
                .map_err(driver_error(op))?;
        }
        return Ok(out);
    }
    let positions = StridedArg::new(op, &positions(layout, dim, out_dims)?)?;
    let index_arg = StridedArg::new(op, index_layout)?;
    let dim_stride = layout.strides()[dim] as u64;
    let (inner64, index_len64, size64, n64) =
        (inner as u64, index_len as u64, size as u64, n as u64);
    let function = device.function(&registry::INDEX, &format!("select_{}", s.dtype.as_str()))?;
    let check = device.checked_launch(op, dim, size);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&s.buffer)
        .arg(&positions)
        .arg(&dim_stride)
        .arg(&index.buffer)
        .arg(&index_arg)
        .arg(&inner64)
        .arg(&index_len64)
        .arg(&size64)
        .arg(&check.sequence)
        .arg(&check.record)
        .arg(&n64);
    // Safety: the arguments match select_T in kernels/index.cu; the kernel reads only indices
    // below the extent of `dim` (recording any other), so every read is an element of
    // `layout`.
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// Slices `index[j]` of `dim`: the output has the index's length in place of `dim`. CPU
/// reference: `cpu::index::index_select`.
pub(super) fn index_select(
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let index_len = index_layout.elem_count();
    let mut out_dims = layout.dims().to_vec();
    out_dims[dim] = index_len;
    let inner = layout.dims()[dim + 1..].iter().product();
    select(
        "index_select",
        s,
        layout,
        index,
        index_layout,
        dim,
        &out_dims,
        inner,
        index_len,
    )
}

/// out[..i..] = data[..index[..i..]..] along `dim`, with the index's shape. CPU reference:
/// `cpu::index::gather`.
pub(super) fn gather(
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let n = index_layout.elem_count();
    select(
        "gather",
        s,
        layout,
        index,
        index_layout,
        dim,
        index_layout.dims(),
        1,
        n,
    )
}

/// A contiguous copy of `data` with each element of `source` added at
/// `positions(i) + index[(i / inner) % index_len] * stride of dim`: index_add and scatter_add.
/// The sums are made in the math type (f32 for the half types, in a scratch buffer rounded to
/// the dtype at the end), as on the CPU, but by atomics in no fixed order.
#[allow(clippy::too_many_arguments)]
fn add_at(
    op: &'static str,
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    source: &CudaStorage,
    source_layout: &Layout,
    dim: usize,
    inner: usize,
    index_len: usize,
) -> Result<CudaStorage> {
    check_index_tensor(index, index_layout, op)?;
    check_inside(op, s, layout)?;
    check_inside(op, source, source_layout)?;
    let size = layout.dims()[dim];
    let suffix = float_kernel_suffix(op, s.dtype)?;
    if source.dtype != s.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: s.dtype,
            rhs: source.dtype,
        });
    }
    let device = s.device.clone();
    let n = layout.elem_count();
    let mut out = device.alloc(s.dtype, n)?;
    if n == 0 || source_layout.elem_count() == 0 {
        check_unread_indices(index, index_layout, op, dim, size)?;
    }
    if n == 0 {
        return Ok(out);
    }
    let accumulate = |acc: &mut CudaStorage| -> Result<()> {
        let n64 = n as u64;
        let data = StridedArg::new(op, layout)?;
        let function = device.function(&registry::INDEX, &format!("to_accumulator_{suffix}"))?;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(&mut acc.buffer)
            .arg(&s.buffer)
            .arg(&data)
            .arg(&n64);
        // Safety: the arguments match to_accumulator_T in kernels/index.cu; it writes
        // acc[0..n] from the elements of `layout`.
        unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(op))?;
        let count = source_layout.elem_count();
        if count == 0 {
            return Ok(());
        }
        let contiguous = Layout::contiguous(layout.shape().clone());
        let targets = StridedArg::new(op, &positions(&contiguous, dim, source_layout.dims())?)?;
        let source_arg = StridedArg::new(op, source_layout)?;
        let index_arg = StridedArg::new(op, index_layout)?;
        let dim_stride = contiguous.strides()[dim] as u64;
        let (inner64, index_len64, size64, count64) =
            (inner as u64, index_len as u64, size as u64, count as u64);
        let function = device.function(&registry::INDEX, &format!("add_at_{suffix}"))?;
        let check = device.checked_launch(op, dim, size);
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(&mut acc.buffer)
            .arg(&source.buffer)
            .arg(&source_arg)
            .arg(&targets)
            .arg(&dim_stride)
            .arg(&index.buffer)
            .arg(&index_arg)
            .arg(&inner64)
            .arg(&index_len64)
            .arg(&size64)
            .arg(&check.sequence)
            .arg(&check.record)
            .arg(&count64);
        // Safety: the arguments match add_at_T in kernels/index.cu; the kernel adds only at
        // indices below the extent of `dim` (recording any other), so every target is inside
        // acc[0..n].
        unsafe { launch.launch(device.launch_config_for(count)) }.map_err(driver_error(op))?;
        Ok(())
    };
    if matches!(s.dtype, DType::F32 | DType::F64) {
        accumulate(&mut out)?;
        return Ok(out);
    }
    let mut acc = device.alloc(DType::F32, n)?;
    accumulate(&mut acc)?;
    let n64 = n as u64;
    let function = device.function(&registry::INDEX, &format!("from_accumulator_{suffix}"))?;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&mut out.buffer).arg(&acc.buffer).arg(&n64);
    // Safety: the arguments match from_accumulator_T in kernels/index.cu (n elements each).
    unsafe { launch.launch(device.launch_config_for(n)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// `data` with slice j of `source` added to slice `index[j]` of `dim`. CPU reference:
/// `cpu::index::index_add`.
pub(super) fn index_add(
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    source: &CudaStorage,
    source_layout: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let inner = source_layout.dims()[dim + 1..].iter().product();
    let index_len = index_layout.elem_count();
    add_at(
        "index_add",
        s,
        layout,
        index,
        index_layout,
        source,
        source_layout,
        dim,
        inner,
        index_len,
    )
}

/// `data` with source[..i..] added at [..index[..i..]..] along `dim`. CPU reference:
/// `cpu::index::scatter_add`.
pub(super) fn scatter_add(
    s: &CudaStorage,
    layout: &Layout,
    index: &CudaStorage,
    index_layout: &Layout,
    source: &CudaStorage,
    source_layout: &Layout,
    dim: usize,
) -> Result<CudaStorage> {
    let count = source_layout.elem_count();
    add_at(
        "scatter_add",
        s,
        layout,
        index,
        index_layout,
        source,
        source_layout,
        dim,
        1,
        count,
    )
}
