//! The host side of kernels/elementwise.cu: fill, strided copy, dtype conversion, unary and
//! binary float ops, comparisons and `where_cond`, each a launch of one generated kernel picked
//! by op and dtype. Not for reductions, indexing or anything that moves elements between
//! positions other than through a layout (see the sibling modules).
//!
//! Every function checks what the CPU backend checks (same errors, same op names), and also
//! that each input layout stays inside its buffer, so that no kernel can read out of bounds.

use std::sync::Arc;

use cudarc::driver::PushKernelArg;
use half::{bf16, f16};

use super::{driver_error, float_only, registry, same_device, CudaDevice, CudaStorage, StridedArg};
use crate::{BinaryOp, CmpOp, DType, Error, Layout, Result, UnaryOp, WithDType};

/// Inputs of an elementwise op read one element each per output element, so they share the
/// output's shape (broadcasting happens in the layouts, before the backend).
fn same_shape(op: &'static str, lhs: &Layout, rhs: &Layout) -> Result<()> {
    if lhs.shape() == rhs.shape() {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            expected: lhs.shape().clone(),
            got: rhs.shape().clone(),
        })
    }
}

/// `len` copies of `value` rounded to `dtype`. The rounding is done once, on the host, by
/// `WithDType::from_f64`, the very function `CpuStorage::full` uses; the kernel (`fill_<dtype>`)
/// only stores the resulting bits.
pub(super) fn fill(
    device: &Arc<CudaDevice>,
    value: f64,
    len: usize,
    dtype: DType,
) -> Result<CudaStorage> {
    let bits: u64 = match dtype {
        // Spelled as the trait's: half's own inherent `from_f64` would be taken otherwise.
        DType::U8 => u64::from(<u8 as WithDType>::from_f64(value)),
        DType::U32 => u64::from(<u32 as WithDType>::from_f64(value)),
        DType::F16 => u64::from(<f16 as WithDType>::from_f64(value).to_bits()),
        DType::BF16 => u64::from(<bf16 as WithDType>::from_f64(value).to_bits()),
        DType::F32 => u64::from(<f32 as WithDType>::from_f64(value).to_bits()),
        DType::F64 => <f64 as WithDType>::from_f64(value).to_bits(),
    };
    let mut out = device.alloc(dtype, len)?;
    if len == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::ELEMENTWISE, &format!("fill_{dtype}"))?;
    let n = len as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&mut out.buffer).arg(&bits).arg(&n);
    // Safety: the arguments match `fill_<dtype>(T* out, u64 bits, u64 n)` and `out` holds `n`
    // elements of T.
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error("fill"))?;
    Ok(out)
}

/// The elements `layout` selects, row-major in a new buffer (`copy_<dtype>`; CPU reference
/// `CpuStorage::copy_strided`).
pub(super) fn copy_strided(s: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    map_one(
        "copy_strided",
        s,
        layout,
        s.dtype,
        &format!("copy_{}", s.dtype),
        None,
    )
}

/// The elements `layout` selects converted to `dtype` as `to.from_f64(from.to_f64())`
/// (`convert_<from>_<to>`; CPU reference `CpuStorage::to_dtype`).
pub(super) fn to_dtype(s: &CudaStorage, layout: &Layout, dtype: DType) -> Result<CudaStorage> {
    let name = format!("convert_{}_{dtype}", s.dtype);
    map_one("to_dtype", s, layout, dtype, &name, None)
}

/// The kernel name and the two parameters (as f64; the kernel rounds them to the math type as
/// `FloatDType::math_from_f64` does) of a unary op.
fn unary_kernel(op: UnaryOp) -> (&'static str, f64, f64) {
    match op {
        UnaryOp::Neg => ("neg", 0.0, 0.0),
        UnaryOp::Exp => ("exp", 0.0, 0.0),
        UnaryOp::Log => ("log", 0.0, 0.0),
        UnaryOp::Sqrt => ("sqrt", 0.0, 0.0),
        UnaryOp::Abs => ("abs", 0.0, 0.0),
        UnaryOp::Sign => ("sign", 0.0, 0.0),
        UnaryOp::Relu => ("relu", 0.0, 0.0),
        UnaryOp::LeakyRelu(slope) => ("leaky_relu", slope, 0.0),
        UnaryOp::LeakyReluDerivative(slope) => ("leaky_relu_derivative", 1.0 - slope, slope),
        UnaryOp::Sigmoid => ("sigmoid", 0.0, 0.0),
        UnaryOp::Tanh => ("tanh", 0.0, 0.0),
        UnaryOp::Softplus => ("softplus", 0.0, 0.0),
        UnaryOp::Silu => ("silu", 0.0, 0.0),
        UnaryOp::SiluDerivative => ("silu_derivative", 0.0, 0.0),
        UnaryOp::Powf(exponent) => ("powf", exponent, 0.0),
        UnaryOp::Clamp(min, max) => ("clamp", min, max),
        UnaryOp::Affine(mul, add) => ("affine", mul, add),
    }
}

/// `op` applied to each element in the dtype's math type (`unary_<op>_<dtype>`; CPU reference
/// `cpu::elementwise::unary`).
pub(super) fn unary(s: &CudaStorage, layout: &Layout, op: UnaryOp) -> Result<CudaStorage> {
    float_only("unary op", s.dtype)?;
    let (name, parameter0, parameter1) = unary_kernel(op);
    let name = format!("unary_{name}_{}", s.dtype);
    map_one(
        "unary op",
        s,
        layout,
        s.dtype,
        &name,
        Some((parameter0, parameter1)),
    )
}

/// The one launch under copy, conversion and unary ops: `out[i] = f(input[layout(i)])` with
/// `out` of `dtype`, and for unary ops the two trailing f64 parameters.
fn map_one(
    op: &'static str,
    s: &CudaStorage,
    layout: &Layout,
    dtype: DType,
    kernel: &str,
    parameters: Option<(f64, f64)>,
) -> Result<CudaStorage> {
    let layout_arg = StridedArg::for_storage(op, s, layout)?;
    let device = s.device.clone();
    let len = layout.elem_count();
    let mut out = device.alloc(dtype, len)?;
    if len == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::ELEMENTWISE, kernel)?;
    let n = len as u64;
    let (parameter0, parameter1) = parameters.unwrap_or_default();
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&s.buffer)
        .arg(&layout_arg)
        .arg(&n);
    if parameters.is_some() {
        launch.arg(&parameter0).arg(&parameter1);
    }
    // Safety: the arguments match `(To* out, const From* input, Strided layout, u64 n)`, plus
    // `double parameter0, double parameter1` for the unary kernels; `out` holds `n` elements
    // and `input_layout` checked that the layout stays inside `input`.
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// `lhs op rhs` elementwise in the math type, correctly rounded as on the CPU
/// (`binary_<op>_<dtype>`; CPU reference `cpu::elementwise::binary`).
pub(super) fn binary(
    s: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
    op: BinaryOp,
) -> Result<CudaStorage> {
    const OP: &str = "binary op";
    float_only(OP, s.dtype)?;
    let name = match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
    };
    map_two(
        OP,
        (s, layout),
        (rhs, rhs_layout),
        s.dtype,
        &format!("binary_{name}_{}", s.dtype),
    )
}

/// A `u8` mask, 1 where `lhs op rhs` (`compare_<op>_<dtype>`; CPU reference
/// `cpu::elementwise::compare`).
pub(super) fn compare(
    s: &CudaStorage,
    layout: &Layout,
    rhs: &CudaStorage,
    rhs_layout: &Layout,
    op: CmpOp,
) -> Result<CudaStorage> {
    let name = match op {
        CmpOp::Eq => "eq",
        CmpOp::Ne => "ne",
        CmpOp::Lt => "lt",
        CmpOp::Le => "le",
        CmpOp::Gt => "gt",
        CmpOp::Ge => "ge",
    };
    let kernel = format!("compare_{name}_{}", s.dtype);
    map_two(
        "compare",
        (s, layout),
        (rhs, rhs_layout),
        DType::U8,
        &kernel,
    )
}

/// The one launch under binary ops and comparisons: `out[i] = f(lhs[lhs_layout(i)],
/// rhs[rhs_layout(i)])` for two inputs of one dtype, with `out` of `dtype`.
fn map_two(
    op: &'static str,
    (lhs, lhs_layout): (&CudaStorage, &Layout),
    (rhs, rhs_layout): (&CudaStorage, &Layout),
    dtype: DType,
    kernel: &str,
) -> Result<CudaStorage> {
    if lhs.dtype != rhs.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: lhs.dtype,
            rhs: rhs.dtype,
        });
    }
    same_device(op, lhs, rhs)?;
    same_shape(op, lhs_layout, rhs_layout)?;
    let lhs_arg = StridedArg::for_storage(op, lhs, lhs_layout)?;
    let rhs_arg = StridedArg::for_storage(op, rhs, rhs_layout)?;
    let device = lhs.device.clone();
    let len = lhs_layout.elem_count();
    let mut out = device.alloc(dtype, len)?;
    if len == 0 {
        return Ok(out);
    }
    let function = device.function(&registry::ELEMENTWISE, kernel)?;
    let n = len as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&lhs.buffer)
        .arg(&lhs_arg)
        .arg(&rhs.buffer)
        .arg(&rhs_arg)
        .arg(&n);
    // Safety: the arguments match `(U* out, const T* lhs, Strided lhs_layout, const T* rhs,
    // Strided rhs_layout, u64 n)`; `out` holds `n` elements and both layouts were checked to
    // stay inside their buffers.
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error(op))?;
    Ok(out)
}

/// `on_true` where `condition` is nonzero, else `on_false` (`where_<condition>_<value>`; CPU
/// reference `CpuStorage::where_cond`). The condition may be of any dtype; a float condition
/// counts -0 as zero and NaN as nonzero, as `WithDType::is_nonzero`.
pub(super) fn where_cond(
    condition: &CudaStorage,
    layout: &Layout,
    on_true: &CudaStorage,
    true_layout: &Layout,
    on_false: &CudaStorage,
    false_layout: &Layout,
) -> Result<CudaStorage> {
    const OP: &str = "where_cond";
    if on_true.dtype != on_false.dtype {
        return Err(Error::DTypeMismatch {
            op: OP,
            lhs: on_true.dtype,
            rhs: on_false.dtype,
        });
    }
    same_device(OP, condition, on_true)?;
    same_device(OP, condition, on_false)?;
    same_shape(OP, layout, true_layout)?;
    same_shape(OP, layout, false_layout)?;
    let condition_arg = StridedArg::for_storage(OP, condition, layout)?;
    let true_arg = StridedArg::for_storage(OP, on_true, true_layout)?;
    let false_arg = StridedArg::for_storage(OP, on_false, false_layout)?;
    let device = condition.device.clone();
    let len = layout.elem_count();
    let mut out = device.alloc(on_true.dtype, len)?;
    if len == 0 {
        return Ok(out);
    }
    let kernel = format!("where_{}_{}", condition.dtype, on_true.dtype);
    let function = device.function(&registry::ELEMENTWISE, &kernel)?;
    let n = len as u64;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(&mut out.buffer)
        .arg(&condition.buffer)
        .arg(&condition_arg)
        .arg(&on_true.buffer)
        .arg(&true_arg)
        .arg(&on_false.buffer)
        .arg(&false_arg)
        .arg(&n);
    // Safety: the arguments match `where_<C>_<T>(T* out, const C* condition, Strided, const T*
    // on_true, Strided, const T* on_false, Strided, u64 n)`; `out` holds `n` elements and all
    // three layouts were checked to stay inside their buffers.
    unsafe { launch.launch(device.launch_config_for(len)) }.map_err(driver_error(OP))?;
    Ok(out)
}
