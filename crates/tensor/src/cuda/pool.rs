//! The host side of kernels/pool.cu: max and average pooling and nearest upsampling, forward
//! and backward, each one launch of a kernel picked by dtype (CPU reference: `cpu::pool`). No
//! launch reads anything back: the backwards are gathers, with no atomics and no index checks
//! on the host (an index the forward could not have made simply matches no window).

use cudarc::driver::{DeviceRepr, PushKernelArg};

use super::conv::{checked_input, launch_image_kernel, GeometryArg};
use super::{driver_error, float_only, registry, CudaStorage};
use crate::ops::conv::check_resize;
use crate::{Conv2dGeometry, DType, Error, Layout, Result, Shape};

/// The sizes of a nearest resize as the kernels take them (`struct Resize` in
/// kernels/pool.cu, field for field).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ResizeArg {
    batch: u64,
    channels: u64,
    height: u64,
    width: u64,
    out_height: u64,
    out_width: u64,
}

// Safety: plain old data with the C layout the kernels declare.
unsafe impl DeviceRepr for ResizeArg {}

impl ResizeArg {
    /// The resize of `[N, C, H, W]` images to `[out_height, out_width]`.
    fn new(
        [batch, channels, height, width]: [usize; 4],
        [out_height, out_width]: [usize; 2],
    ) -> ResizeArg {
        let u = |x: usize| x as u64;
        ResizeArg {
            batch: u(batch),
            channels: u(channels),
            height: u(height),
            width: u(width),
            out_height: u(out_height),
            out_width: u(out_width),
        }
    }
}

/// The shape of a pooling output, `[N, C, OH, OW]`.
fn pooled_shape(g: &Conv2dGeometry) -> Shape {
    Shape::from([g.batch, g.channels, g.out_height, g.out_width])
}

/// Max pooling of `[N, C, H, W]` (any layout, float dtypes): contiguous values and `u32`
/// indices, both `[N, C, OH, OW]`. Reference: `cpu::pool::max_pool2d`.
pub(super) fn max_pool2d(
    s: &CudaStorage,
    layout: &Layout,
    g: &Conv2dGeometry,
) -> Result<(CudaStorage, CudaStorage)> {
    const OP: &str = "max_pool2d";
    float_only(OP, s.dtype)?;
    let layout_arg = checked_input(OP, s, layout, &g.image_shape())?;
    let geometry = GeometryArg::new(OP, g)?;
    let len = pooled_shape(g).elem_count();
    let device = s.device.clone();
    let mut values = device.alloc(s.dtype, len)?;
    let mut indices = device.alloc(DType::U32, len)?;
    if len == 0 {
        return Ok((values, indices));
    }
    let function = device.function(&registry::POOL, &format!("max_pool2d_{}", s.dtype.as_str()))?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut values.buffer)
        .arg(&mut indices.buffer)
        .arg(&s.buffer)
        .arg(&layout_arg)
        .arg(&geometry);
    // Safety: the arguments match `max_pool2d_{dtype}(T* values, u32* indices, const T* image,
    // Strided image_layout, Geometry g)` in kernels/pool.cu; both outputs hold `len` elements
    // and the layout stays inside the input (checked above).
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error(OP))?;
    Ok((values, indices))
}

/// The gradient of max pooling: grad and `u32` indices `[N, C, OH, OW]` (any layouts, float
/// grads) to a contiguous `[N, C, H, W]`. Reference: `cpu::pool::max_pool2d_backward`.
pub(super) fn max_pool2d_backward(
    grad: &CudaStorage,
    layout: &Layout,
    indices: &CudaStorage,
    indices_layout: &Layout,
    g: &Conv2dGeometry,
) -> Result<CudaStorage> {
    const OP: &str = "max_pool2d_backward";
    float_only(OP, grad.dtype)?;
    if indices.dtype != DType::U32 {
        return Err(Error::invalid(
            OP,
            format!("indices must be u32, got {}", indices.dtype),
        ));
    }
    let grad_arg = checked_input(OP, grad, layout, &pooled_shape(g))?;
    let indices_arg = checked_input(OP, indices, indices_layout, &pooled_shape(g))?;
    let geometry = GeometryArg::new(OP, g)?;
    let len = g.image_shape().elem_count();
    let device = grad.device.clone();
    let mut out = device.alloc(grad.dtype, len)?;
    if len == 0 {
        return Ok(out);
    }
    let function = device.function(
        &registry::POOL,
        &format!("max_pool2d_backward_{}", grad.dtype.as_str()),
    )?;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&grad.buffer)
        .arg(&grad_arg)
        .arg(&indices.buffer)
        .arg(&indices_arg)
        .arg(&geometry);
    // Safety: the arguments match `max_pool2d_backward_{dtype}(T* grad_input, const T* grad,
    // Strided grad_layout, const u32* indices, Strided indices_layout, Geometry g)` in
    // kernels/pool.cu; `out` holds `len` elements, both layouts stay inside their buffers.
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error(OP))?;
    Ok(out)
}

/// Average pooling of `[N, C, H, W]` (any layout, float dtypes) to a contiguous
/// `[N, C, OH, OW]`. Reference: `cpu::pool::avg_pool2d`.
pub(super) fn avg_pool2d(
    s: &CudaStorage,
    layout: &Layout,
    g: &Conv2dGeometry,
) -> Result<CudaStorage> {
    const OP: &str = "avg_pool2d";
    float_only(OP, s.dtype)?;
    let geometry = GeometryArg::new(OP, g)?;
    let len = pooled_shape(g).elem_count();
    launch_image_kernel(
        &registry::POOL,
        (OP, OP),
        (s, layout),
        &g.image_shape(),
        &geometry,
        len,
    )
}

/// The gradient of average pooling: grad `[N, C, OH, OW]` (any layout, float dtypes) to a
/// contiguous `[N, C, H, W]`. Reference: `cpu::pool::avg_pool2d_backward`.
pub(super) fn avg_pool2d_backward(
    grad: &CudaStorage,
    layout: &Layout,
    g: &Conv2dGeometry,
) -> Result<CudaStorage> {
    const OP: &str = "avg_pool2d_backward";
    float_only(OP, grad.dtype)?;
    let geometry = GeometryArg::new(OP, g)?;
    let len = g.image_shape().elem_count();
    launch_image_kernel(
        &registry::POOL,
        (OP, OP),
        (grad, layout),
        &pooled_shape(g),
        &geometry,
        len,
    )
}

/// Nearest resize of `[N, C, H, W]` (any layout, any dtype) to a contiguous
/// `[N, C, out_height, out_width]`. Reference: `cpu::pool::upsample_nearest2d`.
pub(super) fn upsample_nearest2d(
    s: &CudaStorage,
    layout: &Layout,
    out_height: usize,
    out_width: usize,
) -> Result<CudaStorage> {
    const OP: &str = "upsample_nearest2d";
    let [batch, channels, height, width] = layout.image_dims(OP)?;
    check_resize(
        OP,
        [batch, channels, height, width],
        [out_height, out_width],
    )?;
    let resize = ResizeArg::new([batch, channels, height, width], [out_height, out_width]);
    let len = batch * channels * out_height * out_width;
    launch_image_kernel(
        &registry::POOL,
        (OP, OP),
        (s, layout),
        layout.shape(),
        &resize,
        len,
    )
}

/// The gradient of a nearest resize: grad `[N, C, OH, OW]` (any layout, float dtypes) to a
/// contiguous `[N, C, height, width]`. Reference: `cpu::pool::upsample_nearest2d_backward`.
pub(super) fn upsample_nearest2d_backward(
    grad: &CudaStorage,
    layout: &Layout,
    height: usize,
    width: usize,
) -> Result<CudaStorage> {
    const OP: &str = "upsample_nearest2d_backward";
    float_only(OP, grad.dtype)?;
    let [batch, channels, out_height, out_width] = layout.image_dims(OP)?;
    check_resize(
        OP,
        [batch, channels, height, width],
        [out_height, out_width],
    )?;
    let resize = ResizeArg::new([batch, channels, height, width], [out_height, out_width]);
    let len = batch * channels * height * width;
    launch_image_kernel(
        &registry::POOL,
        (OP, OP),
        (grad, layout),
        layout.shape(),
        &resize,
        len,
    )
}
