//! The host side of kernels/optim.cu: the fused Adam/AdamW step of up to 32 parameters in one
//! launch (CPU reference: `cpu::optim`, whose step constants are computed here the same way).

use cudarc::driver::{DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

use super::conv::checked_input;
use super::{driver_error, float_only, registry, same_dtype_and_device, CudaStorage};
use crate::backend::BackendStorage;
use crate::{AdamStep, DType, Error, FloatDType, Layout, Result, Shape};

/// The step's scalars, each exactly the value of the CPU's `Constants` field (cpu/optim.rs)
/// held as f64 (an f32 converts exactly), as `struct AdamConstants` in kernels/optim.cu takes
/// them, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamConstants {
    decay_param: f64,
    decay_grad: f64,
    lerp_weight: f64,
    lerp_complement: f64,
    beta2: f64,
    one_minus_beta2: f64,
    negative_step_size: f64,
    bias_correction2_sqrt: f64,
    eps: f64,
    decay: u32,
    decoupled: u32,
    lerp_from_start: u32,
    padding: u32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for AdamConstants {}

impl AdamConstants {
    /// The CPU's `Constants::new::<T>`, line for line: `c(x)` is an f64 argument rounded to the
    /// math type, as the unfused ops took it; the bias correction's root is rounded to T.
    fn new<T: FloatDType>(step: &AdamStep) -> AdamConstants {
        let c = |x: f64| T::math_to_f64(T::math_from_f64(x));
        let (beta1, beta2) = step.betas;
        let weight = 1.0 - beta1;
        let bias_correction1 = 1.0 - beta1.powf(step.step);
        let bias_correction2 = 1.0 - beta2.powf(step.step);
        AdamConstants {
            decay_param: c(1.0 - step.lr * step.weight_decay),
            decay_grad: c(step.weight_decay),
            lerp_weight: c(weight),
            lerp_complement: c(1.0 - weight),
            beta2: c(beta2),
            one_minus_beta2: c(1.0 - beta2),
            negative_step_size: c(-(step.lr / bias_correction1)),
            bias_correction2_sqrt: T::math_to_f64(T::from_f64(bias_correction2.sqrt()).to_math()),
            eps: c(step.eps),
            decay: (step.weight_decay != 0.0) as u32,
            decoupled: step.decoupled as u32,
            lerp_from_start: (weight.abs() < 0.5) as u32,
            padding: 0,
        }
    }

    fn for_dtype(dtype: DType, step: &AdamStep) -> Result<AdamConstants> {
        Ok(match dtype {
            DType::F16 => AdamConstants::new::<f16>(step),
            DType::BF16 => AdamConstants::new::<bf16>(step),
            DType::F32 => AdamConstants::new::<f32>(step),
            DType::F64 => AdamConstants::new::<f64>(step),
            dtype => {
                return Err(Error::UnsupportedDType {
                    op: "adam_step",
                    dtype,
                })
            }
        })
    }
}

/// Parameters per multi-tensor launch and elements per block: kernels/optim.cu's
/// `KILN_ADAM_TENSORS` and `KILN_ADAM_CHUNK`.
const TABLE_TENSORS: usize = 32;
const CHUNK: usize = 4096;

/// One parameter's operands in an [`AdamTable`]: device addresses of contiguous data.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct AdamTensor {
    param_out: u64,
    exp_avg_out: u64,
    exp_avg_sq_out: u64,
    param: u64,
    grad: u64,
    exp_avg: u64,
    exp_avg_sq: u64,
    n: u64,
}

/// The device address of element `offset` of `storage`'s buffer.
fn address(storage: &CudaStorage, offset: usize) -> u64 {
    let (pointer, _record) = storage.buffer.device_ptr(storage.device.stream());
    pointer + (offset * storage.dtype.size_in_bytes()) as u64
}

/// Where a table kernel reads the operand `(storage, layout)` from, as one contiguous run:
/// in place from its offset when its layout is a contiguous range, else a contiguous copy,
/// pushed to `copies` (which must outlive the launches). Checks it is of `first`'s dtype and
/// device, has `shape` and stays inside its buffer.
fn operand_address(
    op: &'static str,
    first: &CudaStorage,
    (storage, layout): (&CudaStorage, &Layout),
    shape: &Shape,
    copies: &mut Vec<CudaStorage>,
) -> Result<u64> {
    same_dtype_and_device(op, first, storage)?;
    checked_input(op, storage, layout, shape)?;
    Ok(match layout.contiguous_range() {
        Some(range) => address(storage, range.start),
        None => {
            let copy = storage.copy_strided(layout)?;
            let at = address(&copy, 0);
            copies.push(copy);
            at
        }
    })
}

/// `struct AdamTable` of kernels/optim.cu, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct AdamTable {
    tensors: [AdamTensor; TABLE_TENSORS],
    first_block: [u32; TABLE_TENSORS + 1],
    count: u32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for AdamTable {}

/// The new `(parameter, exp_avg, exp_avg_sq)` of many parameters, each contiguous: every entry's operands made contiguous (a copy only for
/// strided views), then one launch of `adam_step_many_{dtype}` per 32 parameters, one block
/// per 4096 elements. Bit for bit the CPU's `cpu::optim::adam_step` of each entry.
pub(super) fn adam_step_many(
    entries: &[[(&CudaStorage, &Layout); 4]],
    step: &AdamStep,
) -> Result<Vec<(CudaStorage, CudaStorage, CudaStorage)>> {
    const OP: &str = "adam_step";
    let Some([(first, _), ..]) = entries.first() else {
        return Ok(Vec::new());
    };
    let (dtype, device) = (first.dtype, first.device.clone());
    let constants = AdamConstants::for_dtype(dtype, step)?;
    let stream = device.stream();
    let mut copies = Vec::new();
    let mut inputs = Vec::with_capacity(entries.len());
    for entry in entries {
        let shape = entry[0].1.shape();
        let mut operands = [0u64; 4];
        for (address, &operand) in operands.iter_mut().zip(entry) {
            *address = operand_address(OP, first, operand, shape, &mut copies)?;
        }
        inputs.push(operands);
    }
    let function = device.function(
        &registry::OPTIM,
        &format!("adam_step_many_{}", dtype.as_str()),
    )?;
    let mut outputs = Vec::with_capacity(entries.len());
    for (entries, inputs) in entries
        .chunks(TABLE_TENSORS)
        .zip(inputs.chunks(TABLE_TENSORS))
    {
        let mut table = AdamTable {
            tensors: [AdamTensor::default(); TABLE_TENSORS],
            first_block: [0; TABLE_TENSORS + 1],
            count: 0,
        };
        let mut blocks = 0usize;
        for (entry, operands) in entries.iter().zip(inputs) {
            let n = entry[0].1.elem_count();
            let out = [
                device.alloc(dtype, n)?,
                device.alloc(dtype, n)?,
                device.alloc(dtype, n)?,
            ];
            // Empty parameters get no blocks (and no table slot).
            if n > 0 {
                let [param, grad, exp_avg, exp_avg_sq] = *operands;
                let slot = table.count as usize;
                table.tensors[slot] = AdamTensor {
                    param_out: address(&out[0], 0),
                    exp_avg_out: address(&out[1], 0),
                    exp_avg_sq_out: address(&out[2], 0),
                    param,
                    grad,
                    exp_avg,
                    exp_avg_sq,
                    n: n as u64,
                };
                table.first_block[slot] = blocks as u32;
                blocks += n.div_ceil(CHUNK);
                table.count += 1;
            }
            let [p, m, v] = out;
            outputs.push((p, m, v));
        }
        if table.count == 0 {
            continue;
        }
        let grid = u32::try_from(blocks).map_err(|_| {
            Error::invalid(
                OP,
                format!("{blocks} blocks of {CHUNK} elements are too many"),
            )
        })?;
        table.first_block[table.count as usize] = grid;
        let mut builder = stream.launch_builder(&function);
        builder.arg(&table).arg(&constants);
        let config = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // Safety: the arguments match `adam_step_many_{dtype}(const AdamTable, AdamConstants)`
        // in kernels/optim.cu; every address in the table points at `n` contiguous elements of
        // `dtype` inside a live buffer (inputs checked above, outputs allocated with n), and
        // all of those buffers outlive the launch on the device's one stream.
        unsafe { builder.launch(config) }.map_err(driver_error(OP))?;
    }
    Ok(outputs)
}

/// `struct SquaresTable` of kernels/optim.cu, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct SquaresTable {
    data: [u64; TABLE_TENSORS],
    n: [u64; TABLE_TENSORS],
    first_block: [u32; TABLE_TENSORS + 1],
    count: u32,
}

// Safety: plain old data with the C layout the kernel declares.
unsafe impl DeviceRepr for SquaresTable {}

/// The sum of the squares of each tensor's elements, `[k]` f32 (f64 for f64 tensors): per 32
/// tensors, `sum_squares_partial_{dtype}` (a block per 4096 elements) and
/// `sum_squares_finish_{f32|f64}` (a block per tensor). CPU reference: the default
/// `BackendStorage::sum_of_squares_many`.
pub(super) fn sum_of_squares_many(tensors: &[(&CudaStorage, &Layout)]) -> Result<CudaStorage> {
    const OP: &str = "sum_of_squares";
    let Some(&(first, _)) = tensors.first() else {
        return Err(Error::invalid(OP, "no tensors"));
    };
    let (dtype, device) = (first.dtype, first.device.clone());
    float_only(OP, dtype)?;
    let out_dtype = if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut copies = Vec::new();
    let inputs = tensors
        .iter()
        .map(|&(storage, layout)| {
            operand_address(OP, first, (storage, layout), layout.shape(), &mut copies)
        })
        .collect::<Result<Vec<u64>>>()?;
    let stream = device.stream();
    let mut out = device.alloc(out_dtype, tensors.len())?;
    let partial = device.function(
        &registry::OPTIM,
        &format!("sum_squares_partial_{}", dtype.as_str()),
    )?;
    let finish = device.function(
        &registry::OPTIM,
        &format!("sum_squares_finish_{}", out_dtype.as_str()),
    )?;
    for (chunk, (tensors, inputs)) in tensors
        .chunks(TABLE_TENSORS)
        .zip(inputs.chunks(TABLE_TENSORS))
        .enumerate()
    {
        let mut table = SquaresTable {
            data: [0; TABLE_TENSORS],
            n: [0; TABLE_TENSORS],
            first_block: [0; TABLE_TENSORS + 1],
            count: tensors.len() as u32,
        };
        let mut blocks = 0usize;
        for (slot, (&(_, layout), &input)) in tensors.iter().zip(inputs).enumerate() {
            let n = layout.elem_count();
            table.data[slot] = input;
            table.n[slot] = n as u64;
            table.first_block[slot] = blocks as u32;
            blocks += n.div_ceil(CHUNK);
        }
        let grid = u32::try_from(blocks).map_err(|_| {
            Error::invalid(
                OP,
                format!("{blocks} blocks of {CHUNK} elements are too many"),
            )
        })?;
        table.first_block[tensors.len()] = grid;
        // One f64 partial per block (at least one, for a valid pointer).
        // Safety: written by the partial kernel before the finish kernel reads it.
        let mut partials =
            unsafe { stream.alloc::<f64>(blocks.max(1)) }.map_err(driver_error(OP))?;
        let block = (256, 1, 1);
        if grid > 0 {
            let mut builder = stream.launch_builder(&partial);
            builder.arg(&table).arg(&mut partials);
            let config = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: block,
                shared_mem_bytes: 0,
            };
            // Safety: the arguments match `sum_squares_partial_{dtype}(const SquaresTable,
            // double*)` in kernels/optim.cu; every address points at `n` contiguous elements
            // of `dtype` inside a live buffer, and `partials` holds one f64 per block.
            unsafe { builder.launch(config) }.map_err(driver_error(OP))?;
        }
        let first_out = chunk * TABLE_TENSORS;
        let mut out_view = out
            .buffer
            .slice_mut(first_out * out_dtype.size_in_bytes()..);
        let mut builder = stream.launch_builder(&finish);
        builder.arg(&table).arg(&partials).arg(&mut out_view);
        let config = LaunchConfig {
            grid_dim: (table.count, 1, 1),
            block_dim: block,
            shared_mem_bytes: 0,
        };
        // Safety: the arguments match `sum_squares_finish_{f32|f64}(const SquaresTable,
        // const double*, O*)`; block t reads partials first_block[t]..first_block[t + 1] (all
        // written above, or none) and writes out[first_out + t], inside `out`.
        unsafe { builder.launch(config) }.map_err(driver_error(OP))?;
    }
    Ok(out)
}
