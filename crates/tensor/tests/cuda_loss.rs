//! CUDA parity of the fused binary cross-entropy with logits (kernels/loss.cu through
//! `Tensor::bce_with_logits`) against the CPU (src/cpu/loss.rs) and against the unfused
//! composite on the GPU itself, which it equals bit for bit (same formula, same roundings,
//! same device math). Extreme logits (±100, ±1e4, ±inf, NaN, signed zeros), targets in
//! [0, 1], strided operands, every float dtype, sizes past a grid wave. Skips without a GPU.

mod cuda_common;

use cuda_common::*;
use kiln_tensor::{DType, Device, Result, Tensor, Var};

/// `n` logits whose first ones are the edge cases, then noise of scale 8, and targets in
/// [0, 1] with exact 0s and 1s among them.
fn operands(n: usize, dtype: DType, device: Device) -> Result<(Tensor, Tensor)> {
    let special = [
        0.0,
        -0.0,
        1e-8,
        100.0,
        -100.0,
        1e4,
        -1e4,
        88.0,
        -88.0,
        17.0,
        -17.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let noise = random(&[n], DType::F64, Device::Cpu, 41, 8.0).to_vec::<f64>()?;
    let logits: Vec<f64> = (0..n)
        .map(|i| special.get(i).copied().unwrap_or(noise[i]))
        .collect();
    let unit = random(&[n], DType::F64, Device::Cpu, 42, 0.5)
        .add_scalar(0.5)?
        .to_vec::<f64>()?;
    let targets: Vec<f64> = unit
        .iter()
        .enumerate()
        .map(|(i, &t)| match i % 7 {
            0 => 0.0,
            1 => 1.0,
            _ => t,
        })
        .collect();
    let x = Tensor::from_vec(logits, [n], Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?;
    let y = Tensor::from_vec(targets, [n], Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?;
    Ok((x, y))
}

const SIZES: [usize; 5] = [1, 14, 97, 4099, OVER_A_WAVE];

#[test]
fn bce_with_logits_matches_the_cpu() {
    let Some(gpu) = cuda("bce_with_logits_matches_the_cpu") else {
        return;
    };
    for n in SIZES {
        for (dtype, tolerance) in FLOAT_DTYPES {
            // expf/log1pf differ from the CPU's by an ulp or so; the loss rounds twice.
            let tolerance = tolerance * 4.0;
            parity(
                &format!("bce [{n}] {dtype}"),
                gpu,
                tolerance,
                tolerance,
                |device| {
                    let (x, y) = operands(n, dtype, device)?;
                    let (x, y) = (Var::new(&x)?, Var::new(&y)?);
                    let losses = x.bce_with_logits(&y)?;
                    let project = random(&[n], dtype, device, 43, 1.0);
                    let grads = losses.mul(&project)?.sum_all()?.backward()?;
                    Ok(vec![
                        losses,
                        grads.get(&x).unwrap().clone(),
                        grads.get(&y).unwrap().clone(),
                    ])
                },
            );
        }
    }
}

#[test]
fn bce_with_logits_is_the_composite_bit_for_bit_on_cuda() {
    let Some(gpu) = cuda("bce_with_logits_is_the_composite_bit_for_bit_on_cuda") else {
        return;
    };
    for n in [97, OVER_A_WAVE] {
        for (dtype, _) in FLOAT_DTYPES {
            let (x, y) = operands(n, dtype, gpu).unwrap();
            let fused = x.bce_with_logits(&y).unwrap();
            let composite = x.softplus().unwrap().sub(&x.mul(&y).unwrap()).unwrap();
            assert_close(&format!("[{n}] {dtype}"), &composite, &fused, 0.0, 0.0);
        }
    }
}

#[test]
fn bce_with_logits_reads_strided_operands() {
    let Some(gpu) = cuda("bce_with_logits_reads_strided_operands") else {
        return;
    };
    for (dtype, tolerance) in FLOAT_DTYPES {
        let tolerance = tolerance * 4.0;
        parity(
            &format!("strided {dtype}"),
            gpu,
            tolerance,
            tolerance,
            |device| {
                let (x, y) = operands(35 * 17, dtype, device)?;
                let x = Var::new(&x.reshape([35, 17])?)?;
                let xt = x.t()?; // [17, 35], strided
                let yt = y.reshape([17, 35])?; // contiguous
                let losses = xt.bce_with_logits(&yt)?;
                // A broadcast gradient (stride 0) reaches the fused backward.
                let grads = losses.sum_all()?.backward()?;
                Ok(vec![losses, grads.get(&x).unwrap().clone()])
            },
        );
    }
}

#[test]
fn bce_with_logits_second_derivatives_match_the_cpu() {
    let Some(gpu) = cuda("bce_with_logits_second_derivatives_match_the_cpu") else {
        return;
    };
    parity("penalty through bce", gpu, 1e-5, 1e-5, |device| {
        let x = Var::new(&random(&[6, 3], DType::F32, device, 44, 1.0))?;
        let w = Var::new(&random(&[3, 1], DType::F32, device, 45, 1.0))?;
        let y = random(&[6, 1], DType::F32, device, 46, 0.5).add_scalar(0.5)?;
        let loss = x.matmul(&w)?.bce_with_logits(&y)?.mean_all()?;
        let input_grad = loss.backward_with_graph()?.get(&x).unwrap().clone();
        let grads = input_grad.square()?.sum_all()?.backward()?;
        Ok(vec![input_grad.detach(), grads.get(&w).unwrap().clone()])
    });
}
