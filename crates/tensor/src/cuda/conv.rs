//! The host side of kernels/conv.cu: `im2col` and `col2im`, each one launch of a kernel picked
//! by dtype (CPU reference: `cpu::conv`). Not for the convolutions themselves, which
//! `ops/conv.rs` builds from these and the matrix product, nor for pooling (`cuda/pool.rs`).

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::{driver_error, float_only, registry, CudaStorage, StridedArg};
use crate::{Conv2dGeometry, Error, Layout, Result, Shape};

/// `Conv2dGeometry` as the kernels take it (`struct Geometry` in kernels/common.cuh, field
/// for field).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct GeometryArg {
    batch: u64,
    channels: u64,
    height: u64,
    width: u64,
    kernel_h: u64,
    kernel_w: u64,
    stride_h: u64,
    stride_w: u64,
    padding_h: u64,
    padding_w: u64,
    dilation_h: u64,
    dilation_w: u64,
    out_height: u64,
    out_width: u64,
}

// Safety: plain old data with the C layout the kernels declare.
unsafe impl DeviceRepr for GeometryArg {}

impl GeometryArg {
    /// The geometry, once the divisors the kernels use are known to be nonzero (the op layer
    /// rejects zero strides, dilations and kernels; a direct backend call might not).
    pub(super) fn new(op: &'static str, g: &Conv2dGeometry) -> Result<GeometryArg> {
        if g.stride.contains(&0) || g.dilation.contains(&0) || g.kernel.contains(&0) {
            return Err(Error::invalid(
                op,
                format!(
                    "kernel {:?}, stride {:?} and dilation {:?} must be positive",
                    g.kernel, g.stride, g.dilation
                ),
            ));
        }
        let u = |x: usize| x as u64;
        Ok(GeometryArg {
            batch: u(g.batch),
            channels: u(g.channels),
            height: u(g.height),
            width: u(g.width),
            kernel_h: u(g.kernel[0]),
            kernel_w: u(g.kernel[1]),
            stride_h: u(g.stride[0]),
            stride_w: u(g.stride[1]),
            padding_h: u(g.padding[0]),
            padding_w: u(g.padding[1]),
            dilation_h: u(g.dilation[0]),
            dilation_w: u(g.dilation[1]),
            out_height: u(g.out_height),
            out_width: u(g.out_width),
        })
    }
}

/// The layout argument for reading `storage` through `layout`, once the layout is known to
/// have `shape` and every element it reaches to lie inside the buffer, so that no kernel
/// reads out of bounds whatever a caller passes. Shared by the sibling modules of this file.
pub(super) fn checked_input(
    op: &'static str,
    storage: &CudaStorage,
    layout: &Layout,
    shape: &Shape,
) -> Result<StridedArg> {
    if layout.shape() != shape {
        return Err(Error::ShapeMismatch {
            op,
            expected: shape.clone(),
            got: layout.shape().clone(),
        });
    }
    StridedArg::for_storage(op, storage, layout)
}

/// One launch of `{kernel}_{dtype}` from `source` (conv.cu, pool.cu): each of their kernels
/// takes `(T* out, const T* input, Strided input_layout, A arg)`, with `arg` the window
/// geometry or the resize, and writes `out_len` elements of the input's dtype, one thread
/// each. `input` must have `expected_shape`.
pub(super) fn launch_image_kernel<A: DeviceRepr>(
    source: &'static registry::KernelSource,
    (op, kernel): (&'static str, &str),
    (input, layout): (&CudaStorage, &Layout),
    expected_shape: &Shape,
    arg: &A,
    out_len: usize,
) -> Result<CudaStorage> {
    let layout_arg = checked_input(op, input, layout, expected_shape)?;
    let device = input.device.clone();
    let mut out = device.alloc(input.dtype, out_len)?;
    if out_len == 0 {
        return Ok(out);
    }
    let function = device.function(source, &format!("{kernel}_{}", input.dtype.as_str()))?;
    let mut builder = device.stream().launch_builder(&function);
    builder
        .arg(&mut out.buffer)
        .arg(&input.buffer)
        .arg(&layout_arg)
        .arg(arg);
    // Safety: the callers name a kernel of `source` taking `(T* out, const T* input,
    // Strided layout, A arg)` with A the type they pass; `out` holds `out_len` elements, the
    // layout stays inside the input (checked above).
    unsafe { builder.launch(device.launch_config_for(out_len)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// `[N, C, H, W]` (any layout, any dtype) unfolded into contiguous columns
/// `[C·kh·kw, N·OH·OW]`. Reference: `cpu::conv::im2col`.
pub(super) fn im2col(s: &CudaStorage, layout: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> {
    let len = g.columns_shape().elem_count();
    let geometry = GeometryArg::new("im2col", g)?;
    launch_image_kernel(
        &registry::CONV,
        ("im2col", "im2col"),
        (s, layout),
        &g.image_shape(),
        &geometry,
        len,
    )
}

/// Columns `[C·kh·kw, N·OH·OW]` (any layout, float dtypes) folded into a contiguous
/// `[N, C, H, W]`, overlapping taps summed. Reference: `cpu::conv::col2im`.
pub(super) fn col2im(s: &CudaStorage, layout: &Layout, g: &Conv2dGeometry) -> Result<CudaStorage> {
    float_only("col2im", s.dtype)?;
    let len = g.image_shape().elem_count();
    let geometry = GeometryArg::new("col2im", g)?;
    launch_image_kernel(
        &registry::CONV,
        ("col2im", "col2im"),
        (s, layout),
        &g.columns_shape(),
        &geometry,
        len,
    )
}
