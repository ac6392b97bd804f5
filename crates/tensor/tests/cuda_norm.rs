//! CUDA parity of the fused batch norm (kernels/norm.cu through `Tensor::batch_norm_train`):
//! the statistics, the forward and the backward against the CPU (src/cpu/norm.rs, whose
//! statistics are exact two passes in f64), for the DCGAN shapes and odd ones, strided
//! inputs, every float dtype, constant channels and a large mean offset (where a one-pass
//! variance that is not Welford's would cancel). Skips without a GPU (see cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::{DType, Device, Result, Tensor, Var};

/// `[N, C, *]` shapes: the DCGAN generator's and discriminator's, BatchNorm1d's `[64, 6272]`
/// (many channels, few values each), and small odd ones.
const SHAPES: &[&[usize]] = &[
    &[2, 3],
    &[64, 6272],
    &[64, 128, 7, 7],
    &[64, 64, 14, 14],
    &[1, 1, 5],
    &[3, 5, 1, 7],
    &[2, 2, 4099],
];

/// How the input is laid out in memory.
#[derive(Debug, Clone, Copy)]
enum Memory {
    Contiguous,
    /// Channels innermost (NHWC memory for rank 4, a transposed matrix for rank 2).
    ChannelsLast,
}

/// The input values as stored, contiguous in `memory`'s order, and the permutation that
/// views them as `shape`. `kind` 0: noise around 0.5; 1: 1e4 + 1e-2·noise; 2: every value 3.25.
fn stored(
    shape: &[usize],
    memory: Memory,
    kind: u32,
    dtype: DType,
    device: Device,
) -> Result<(Tensor, Vec<usize>)> {
    let rank = shape.len();
    // The memory order: channels last moves dim 1 to the end, which for [N, C] would change
    // nothing, so there the matrix is stored transposed.
    let order: Vec<usize> = match memory {
        Memory::Contiguous => (0..rank).collect(),
        Memory::ChannelsLast if rank == 2 => vec![1, 0],
        Memory::ChannelsLast => (0..rank).filter(|&d| d != 1).chain([1]).collect(),
    };
    let dims: Vec<usize> = order.iter().map(|&d| shape[d]).collect();
    let values = match kind {
        0 => random(&dims, DType::F64, Device::Cpu, 21, 2.0).affine(1.0, 0.5)?,
        1 => random(&dims, DType::F64, Device::Cpu, 22, 1e-2).add_scalar(1e4)?,
        _ => Tensor::full(3.25, dims.as_slice(), DType::F64, Device::Cpu)?,
    };
    let mut inverse = vec![0; rank];
    for (i, &d) in order.iter().enumerate() {
        inverse[d] = i;
    }
    Ok((values.to_dtype(dtype)?.to_device(device)?, inverse))
}

/// The input of `shape` read from memory laid out as `memory` (a strided view when channels
/// last).
fn input(
    shape: &[usize],
    memory: Memory,
    kind: u32,
    dtype: DType,
    device: Device,
) -> Result<Tensor> {
    let (values, inverse) = stored(shape, memory, kind, dtype, device)?;
    values.permute(&inverse)
}

/// Tolerances (atol, rtol) for values of order 1 in `dtype`.
fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F64 => (1e-10, 1e-10),
        DType::F32 => (1e-4, 1e-5),
        DType::F16 => (2e-2, 1e-2),
        _ => (0.1, 3e-2),
    }
}

#[test]
fn batch_norm_forward_and_backward_match_the_cpu() {
    let Some(gpu) = cuda("batch_norm_forward_and_backward_match_the_cpu") else {
        return;
    };
    for &shape in SHAPES {
        for memory in [Memory::Contiguous, Memory::ChannelsLast] {
            for (dtype, _) in FLOAT_DTYPES {
                for affine in [0, 3, 1] {
                    let (atol, rtol) = tolerance(dtype);
                    let what = format!("{shape:?} {memory:?} {dtype} affine {affine}");
                    parity(&what, gpu, atol, rtol, |device| {
                        let x = input(shape, memory, 0, dtype, device)?;
                        let x = Var::new(&x.contiguous()?)?;
                        // The strided view of the same values, tracked back to x.
                        let viewed = match memory {
                            Memory::Contiguous => x.as_tensor().clone(),
                            Memory::ChannelsLast => x
                                .contiguous()?
                                .permute(&(0..shape.len()).collect::<Vec<_>>())?,
                        };
                        let c = shape[1];
                        let weight =
                            Var::new(&random(&[c], dtype, device, 23, 0.5).add_scalar(1.0)?)?;
                        let bias = Var::new(&random(&[c], dtype, device, 24, 0.5))?;
                        let w = (affine & 1 == 1).then_some(weight.as_tensor());
                        let b = (affine & 2 == 2).then_some(bias.as_tensor());
                        let (y, mean, var) = viewed.batch_norm_train(w, b, 1e-5)?;
                        let project = random(shape, dtype, device, 25, 1.0);
                        let grads = y.mul(&project)?.sum_all()?.backward()?;
                        let mut out = vec![y, mean, var, grads.get(&x).unwrap().clone()];
                        // Sums over a channel: relative to their size.
                        let count = (y_count(shape) as f64).sqrt();
                        for (leaf, present) in [(&weight, w.is_some()), (&bias, b.is_some())] {
                            if present {
                                out.push(grads.get(leaf).unwrap().mul_scalar(1.0 / count)?);
                            }
                        }
                        Ok(out)
                    });
                }
            }
        }
    }
}

/// Values per channel of `[N, C, *]`.
fn y_count(shape: &[usize]) -> usize {
    shape.iter().product::<usize>() / shape[1]
}

#[test]
fn batch_norm_is_really_strided_on_cuda() {
    // Without a weight, bias or backward: the statistics and forward kernels alone on
    // channels-last views.
    let Some(gpu) = cuda("batch_norm_is_really_strided_on_cuda") else {
        return;
    };
    for &shape in &[&[64usize, 128, 7, 7][..], &[64, 6272], &[3, 5, 1, 7]] {
        for (dtype, _) in FLOAT_DTYPES {
            let (atol, rtol) = tolerance(dtype);
            parity(
                &format!("{shape:?} {dtype} channels last"),
                gpu,
                atol,
                rtol,
                |device| {
                    let x = input(shape, Memory::ChannelsLast, 0, dtype, device)?;
                    assert!(!x.is_contiguous());
                    let (y, mean, var) = x.batch_norm_train(None, None, 1e-5)?;
                    Ok(vec![y, mean, var])
                },
            );
        }
    }
}

#[test]
fn batch_norm_statistics_survive_a_large_offset_and_constant_channels() {
    let Some(gpu) = cuda("batch_norm_statistics_survive_a_large_offset_and_constant_channels")
    else {
        return;
    };
    for &shape in &[
        &[64usize, 128, 7, 7][..],
        &[64, 6272],
        &[64, 64, 14, 14],
        &[1, 1, 5],
    ] {
        for dtype in [DType::F32, DType::F64] {
            // Mean and variance as the CPU's exact two passes give them (rounded to T); y
            // to the resolution the 1e4-offset inputs have (ulp(1e4) / sd = 0.1 in f32).
            let (atol, rtol) = if dtype == DType::F32 {
                (1e-12, 1e-5)
            } else {
                (1e-12, 1e-9)
            };
            parity(
                &format!("{shape:?} {dtype} offset 1e4"),
                gpu,
                atol,
                rtol,
                |device| {
                    let x = input(shape, Memory::Contiguous, 1, dtype, device)?;
                    let (_, mean, var) = x.batch_norm_train(None, None, 1e-5)?;
                    Ok(vec![mean, var])
                },
            );
            parity(
                &format!("{shape:?} {dtype} constant"),
                gpu,
                0.0,
                0.0,
                |device| {
                    let x = input(shape, Memory::ChannelsLast, 2, dtype, device)?;
                    let (y, mean, var) = x.batch_norm_train(None, None, 1e-5)?;
                    Ok(vec![y, mean, var])
                },
            );
        }
    }
}

#[test]
fn batch_norm_second_derivatives_match_the_cpu() {
    // A gradient penalty through batch norm (the recorded backward, tensor ops on CUDA).
    let Some(gpu) = cuda("batch_norm_second_derivatives_match_the_cpu") else {
        return;
    };
    parity("penalty through batch norm", gpu, 1e-4, 1e-4, |device| {
        let x = Var::new(&random(&[8, 5], DType::F32, device, 31, 1.0))?;
        let w = Var::new(&random(&[5, 6], DType::F32, device, 32, 1.0))?;
        let gamma = Var::new(&random(&[6], DType::F32, device, 33, 0.3).add_scalar(1.0)?)?;
        let hidden = x.matmul(&w)?; // [8, 6]
        let (normed, _, _) = hidden.batch_norm_train(Some(&gamma), None, 1e-5)?;
        let scores = normed.tanh()?.sum_all()?;
        let input_grad = scores.backward_with_graph()?.get(&x).unwrap().clone(); // [8, 5]
        let penalty = input_grad.square()?.sum_all()?;
        let grads = penalty.backward()?;
        Ok(vec![
            input_grad.detach(),
            grads.get(&w).unwrap().clone(),
            grads.get(&gamma).unwrap().clone(),
        ])
    });
}

#[test]
fn evaluation_batch_norm_matches_the_cpu() {
    let Some(gpu) = cuda("evaluation batch norm parity") else {
        return;
    };
    for &shape in SHAPES {
        for (dtype, _) in FLOAT_DTYPES {
            let channels = shape[1];
            let run = |device: Device| -> Result<Tensor> {
                let x = input(shape, Memory::ChannelsLast, 0, dtype, device)?;
                let mean = random(&[channels], dtype, device, 11, 1.0);
                let var = random(&[channels], dtype, device, 12, 0.5).abs()?;
                let weight = random(&[channels], dtype, device, 13, 1.0);
                let bias = random(&[channels], dtype, device, 14, 1.0);
                x.batch_norm_eval(&mean, &var, Some(&weight), Some(&bias), 1e-5)
            };
            let (atol, rtol) = tolerance(dtype);
            let (cpu, cuda_y) = (run(Device::Cpu).expect("cpu"), run(gpu).expect("cuda"));
            assert_close(
                &format!("eval {dtype} {shape:?}"),
                &cpu,
                &cuda_y,
                atol,
                rtol,
            );
        }
    }
}
