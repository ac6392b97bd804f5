//! The CUDA GEMMs (kernels/gemm.cu SIMT FP32, kernels/gemm_tc.cu TF32 and BF16 tensor cores)
//! against the CPU GEMM, through `matmul` and the fused `matmul_bias_act`: random shapes
//! (edges, primes, 1), transposed operands, batches (broadcast too), misaligned views, bias and
//! every activation. Tolerances per precision, relative to the sum of |products| of each
//! output element (so cancellation cannot hide an error):
//! - FP32: 1e-5·√k (f32 accumulation in another order);
//! - TF32: 2^-10 per product (inputs rounded to 10-bit mantissas) plus f32 accumulation;
//! - BF16: the kernel's inputs are the operands rounded to bf16, so the reference takes the
//!   same rounded inputs (`bf16_inputs`) and only the f32 accumulation order is left: FP32's
//!   1e-5·√k. (A bound of 2^-7 per product on the unrounded inputs, ~4 absolute at k = 2048,
//!   would pass a kernel that drops whole products.)
//!
//! Skipped without a GPU unless `KILN_REQUIRE_CUDA=1` (see cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::{
    set_matmul_precision, Activation, DType, Device, MatmulPrecision, Result, Tensor,
};

/// How an operand is presented to the product.
#[derive(Debug, Clone, Copy)]
enum View {
    RowMajor,
    /// Stored transposed, read through `.t()`.
    Transposed,
    /// One extra leading element, so the matrix starts at an odd offset (no 16-byte loads).
    Offset,
}

fn operand(rows: usize, cols: usize, batch: &[usize], view: View, seed: u64) -> Result<Tensor> {
    let dims = |r: usize, c: usize| [batch, &[r, c]].concat();
    Ok(match view {
        View::RowMajor => random(&dims(rows, cols), DType::F32, Device::Cpu, seed, 1.0),
        View::Transposed => random(&dims(cols, rows), DType::F32, Device::Cpu, seed, 1.0)
            .transpose(batch.len(), batch.len() + 1)?,
        View::Offset => {
            let n: usize = dims(rows, cols).iter().product();
            random(&[n + 1], DType::F32, Device::Cpu, seed, 1.0)
                .narrow(0, 1, n)?
                .reshape(dims(rows, cols))?
        }
    })
}

/// `sum_k |a_ik| |b_kj|` for each output element, the scale of its rounding error.
fn magnitude(a: &Tensor, b: &Tensor) -> Result<Vec<f64>> {
    let (a, b) = (
        a.to_dtype(DType::F64)?.abs()?,
        b.to_dtype(DType::F64)?.abs()?,
    );
    a.matmul(&b)?.to_vec::<f64>()
}

fn activation(index: usize) -> Activation {
    [
        Activation::Identity,
        Activation::Relu,
        Activation::LeakyRelu(0.2),
        Activation::Tanh,
        Activation::Sigmoid,
    ][index % 5]
}

/// What the tensor cores multiply at `precision`: the operand itself, or for BF16 the
/// operand rounded to bf16 (round to nearest even, as the cast the dispatch runs) and widened
/// back to f32 exactly.
fn bf16_inputs(t: &Tensor, precision: MatmulPrecision) -> Result<Tensor> {
    match precision {
        MatmulPrecision::Bf16 => t.to_dtype(DType::BF16)?.to_dtype(DType::F32),
        _ => Ok(t.clone()),
    }
}

/// One case on both devices: `activation(a @ b + bias)` at `precision`, compared elementwise.
#[allow(clippy::too_many_arguments)]
fn check(
    gpu: Device,
    precision: MatmulPrecision,
    (m, k, n): (usize, usize, usize),
    batch: &[usize],
    views: (View, View),
    bias: bool,
    act: Activation,
    seed: u64,
) -> Result<()> {
    let a = operand(m, k, batch, views.0, seed)?;
    let b = operand(k, n, batch, views.1, seed + 1)?;
    let c = random(&[n], DType::F32, Device::Cpu, seed + 2, 1.0);
    let bias_cpu = bias.then_some(&c);
    let (ra, rb) = (bf16_inputs(&a, precision)?, bf16_inputs(&b, precision)?);
    let expected = ra.matmul_bias_act(&rb, bias_cpu, act)?.to_vec::<f32>()?;
    let scale = magnitude(&ra, &rb)?;
    set_matmul_precision(precision);
    let (ga, gb, gc) = (a.to_device(gpu)?, b.to_device(gpu)?, c.to_device(gpu)?);
    let got = ga.matmul_bias_act(&gb, bias.then_some(&gc), act);
    set_matmul_precision(MatmulPrecision::Fp32);
    let got = got?.to_vec::<f32>()?;
    let per_product = match precision {
        MatmulPrecision::Fp32 | MatmulPrecision::Bf16 => 1e-5 * (k as f64).sqrt(),
        MatmulPrecision::Tf32 => 2f64.powi(-10) + 1e-5 * (k as f64).sqrt(),
    };
    assert_eq!(got.len(), expected.len());
    for (i, (x, y)) in expected.iter().zip(&got).enumerate() {
        // The activations are 1-Lipschitz, so the pre-activation's bound carries over.
        let bound = per_product * (scale[i % scale.len()] + 1.0) + 1e-6;
        assert!(
            (*x as f64 - *y as f64).abs() <= bound,
            "{precision:?} {m}x{k}x{n} batch {batch:?} {views:?} bias {bias} {act:?}: element {i}: cpu {x} vs cuda {y} (bound {bound})"
        );
    }
    Ok(())
}

const SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 37, 1),
    (5, 1, 3),
    (17, 9, 13),
    (63, 64, 65),
    (127, 129, 131),
    (128, 128, 32),
    (64, 784, 1024),
    (1024, 64, 784),
    (64, 2048, 64),
];

/// The precision setting is process-wide, so the tests that change it take turns.
static PRECISION: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sweep(test: &str, precision: MatmulPrecision) -> Result<()> {
    let Some(gpu) = cuda(test) else {
        return Ok(());
    };
    let _turn = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    let views = [View::RowMajor, View::Transposed, View::Offset];
    let mut seed = 0;
    for &(m, k, n) in &SHAPES {
        for &va in &views {
            for &vb in &views {
                seed += 3;
                let bias = seed % 2 == 0;
                check(
                    gpu,
                    precision,
                    (m, k, n),
                    &[],
                    (va, vb),
                    bias,
                    activation(seed as usize),
                    seed,
                )?;
            }
        }
    }
    // Batches, and a batch-broadcast right operand ([3, m, k] x [k, n]).
    for &(m, k, n) in &SHAPES[..7] {
        seed += 3;
        check(
            gpu,
            precision,
            (m, k, n),
            &[3],
            (View::RowMajor, View::Transposed),
            true,
            Activation::Relu,
            seed,
        )?;
        let a = operand(m, k, &[3], View::RowMajor, seed)?;
        let b = operand(k, n, &[], View::RowMajor, seed + 1)?;
        let expected = bf16_inputs(&a, precision)?.matmul(&bf16_inputs(&b, precision)?)?;
        set_matmul_precision(precision);
        let got = a.to_device(gpu)?.matmul(&b.to_device(gpu)?);
        set_matmul_precision(MatmulPrecision::Fp32);
        let tolerance = if precision == MatmulPrecision::Tf32 {
            5e-2
        } else {
            1e-4
        };
        assert_close(
            "broadcast batch",
            &expected,
            &got?,
            tolerance * (k as f64).sqrt(),
            0.0,
        );
    }
    Ok(())
}

#[test]
fn fp32_simt_gemm_matches_the_cpu() -> Result<()> {
    sweep("fp32_simt_gemm_matches_the_cpu", MatmulPrecision::Fp32)
}

#[test]
fn tf32_tensor_core_gemm_matches_the_cpu() -> Result<()> {
    sweep(
        "tf32_tensor_core_gemm_matches_the_cpu",
        MatmulPrecision::Tf32,
    )
}

#[test]
fn bf16_tensor_core_gemm_matches_the_cpu() -> Result<()> {
    sweep(
        "bf16_tensor_core_gemm_matches_the_cpu",
        MatmulPrecision::Bf16,
    )
}

/// bf16 tensors run on the BF16 tensor cores at any precision setting, with a bf16 output
/// rounded once. The reference is the same function in f32 on the bf16 values, rounded to
/// bf16 at the end: the CPU's bf16 `matmul_bias_act` rounds the product, the sum and the
/// activation each, and where the bias cancels most of the product (a small output from
/// operands of order 1) those roundings are far larger than the kernel's one.
#[test]
fn bf16_tensors_match_the_cpu() -> Result<()> {
    let Some(gpu) = cuda("bf16_tensors_match_the_cpu") else {
        return Ok(());
    };
    let _turn = PRECISION.lock().unwrap_or_else(|e| e.into_inner());
    for &(m, k, n) in &SHAPES {
        let a = random(&[m, k], DType::BF16, Device::Cpu, 1, 1.0);
        let b = random(&[n, k], DType::BF16, Device::Cpu, 2, 1.0).t()?;
        let bias = random(&[n], DType::BF16, Device::Cpu, 3, 1.0);
        let wide = |t: &Tensor| t.to_dtype(DType::F32);
        let expected = wide(&a)?
            .matmul_bias_act(&wide(&b)?, Some(&wide(&bias)?), Activation::Tanh)?
            .to_vec::<f32>()?;
        let scale = magnitude(&wide(&a)?, &wide(&b)?)?;
        let got = a.to_device(gpu)?.matmul_bias_act(
            &b.to_device(gpu)?,
            Some(&bias.to_device(gpu)?),
            Activation::Tanh,
        )?;
        assert_eq!(got.dtype(), DType::BF16);
        let got = got.to_dtype(DType::F32)?.to_vec::<f32>()?;
        for (i, (x, y)) in expected.iter().zip(&got).enumerate() {
            // One rounding to bf16 (half an ulp: 2^-8 relative) plus the f32 accumulation
            // order, as in `check`; tanh is 1-Lipschitz.
            let bound = 2f64.powi(-8) * x.abs() as f64
                + 1e-5 * (k as f64).sqrt() * (scale[i % scale.len()] + 1.0)
                + 1e-6;
            assert!(
                (*x as f64 - *y as f64).abs() <= bound,
                "bf16 {m}x{k}x{n}: element {i}: f32 reference {x} vs cuda {y} (bound {bound})"
            );
        }
    }
    Ok(())
}
