//! CUDA tensors as a user meets them: construction and readback of every dtype, moves between
//! devices (strided views, autograd through them), the errors for mixed devices and missing
//! devices, `Var::set` on the device, and a few steps of gradient descent on a small network
//! tracking the CPU's losses. Expected values come from the CPU backend. Skipped without a GPU
//! unless `KILN_REQUIRE_CUDA=1` (see cuda_common).

mod cuda_common;

use cuda_common::*;
use kiln_tensor::{DType, Device, Error, Generator, Result, Tensor, Var};

#[test]
fn every_dtype_goes_to_the_device_and_back() -> Result<()> {
    let Some(gpu) = cuda("every_dtype_goes_to_the_device_and_back") else {
        return Ok(());
    };
    let u8s: Vec<u8> = (0..=255).collect();
    assert_eq!(
        Tensor::from_vec(u8s.clone(), [256], gpu)?.to_vec::<u8>()?,
        u8s
    );
    let u32s: Vec<u32> = vec![0, 1, u32::MAX, 123_456_789];
    assert_eq!(
        Tensor::from_vec(u32s.clone(), [2, 2], gpu)?.to_vec::<u32>()?,
        u32s
    );
    let f64s = vec![0.5f64, -0.0, f64::INFINITY, f64::MIN_POSITIVE, 1e300];
    let back = Tensor::from_vec(f64s.clone(), [5], gpu)?.to_vec::<f64>()?;
    assert_eq!(
        back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        f64s.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    for (dtype, _) in FLOAT_DTYPES {
        let cpu = random(&[3, 7], dtype, Device::Cpu, 1, 2.0);
        let there = cpu.to_device(gpu)?;
        assert_eq!(there.device(), gpu);
        assert_close(
            &format!("{dtype} round trip"),
            &cpu,
            &there.to_device(Device::Cpu)?,
            0.0,
            0.0,
        );
    }
    // Empty tensors and scalars.
    assert_eq!(
        Tensor::zeros([0, 3], DType::F32, gpu)?.to_vec::<f32>()?,
        Vec::<f32>::new()
    );
    assert_eq!(Tensor::scalar(2.5f32, gpu)?.to_scalar::<f32>()?, 2.5);
    Ok(())
}

#[test]
fn full_and_arange_match_the_cpu() -> Result<()> {
    let Some(gpu) = cuda("full_and_arange_match_the_cpu") else {
        return Ok(());
    };
    for dtype in [
        DType::U8,
        DType::U32,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
    ] {
        for value in [0.0, 1.0, -1.5, 300.7, 1e-3] {
            parity(&format!("full({value}) {dtype}"), gpu, 0.0, 0.0, |d| {
                Ok(vec![Tensor::full(value, [5, 3], dtype, d)?])
            });
        }
        parity(&format!("arange {dtype}"), gpu, 0.0, 0.0, |d| {
            Ok(vec![Tensor::arange(17, dtype, d)?])
        });
    }
    Ok(())
}

#[test]
fn strided_views_move_as_their_elements() -> Result<()> {
    let Some(gpu) = cuda("strided_views_move_as_their_elements") else {
        return Ok(());
    };
    let cpu = random(&[4, 5, 6], DType::F32, Device::Cpu, 2, 1.0);
    let views = |t: &Tensor| -> Result<Vec<Tensor>> {
        Ok(vec![
            t.permute(&[2, 0, 1])?,
            t.narrow(1, 1, 3)?,
            t.narrow(0, 2, 2)?.transpose(1, 2)?,
            t.narrow(2, 0, 1)?.broadcast_as([4, 5, 3])?,
        ])
    };
    // CPU views moved to the device, and device views read back, both equal the CPU views.
    let on_gpu = cpu.to_device(gpu)?;
    for ((c, moved), gpu_view) in views(&cpu)?.iter().zip(views(&cpu)?).zip(views(&on_gpu)?) {
        let moved = moved.to_device(gpu)?;
        assert!(moved.is_contiguous());
        assert_close("view moved", c, &moved, 0.0, 0.0);
        assert_close("view read back", c, &gpu_view, 0.0, 0.0);
    }
    Ok(())
}

#[test]
fn gradients_flow_through_moves() -> Result<()> {
    let Some(gpu) = cuda("gradients_flow_through_moves") else {
        return Ok(());
    };
    // x on the CPU, the work on the GPU, the loss back on the CPU: d/dx sum(tanh(x)^2).
    let x = Var::new(&random(&[3, 4], DType::F32, Device::Cpu, 3, 1.5))?;
    let loss = x
        .to_device(gpu)?
        .tanh()?
        .square()?
        .sum_all()?
        .to_device(Device::Cpu)?;
    let grads = loss.backward()?;
    let grad = grads.get(&x).expect("x has a gradient");
    assert_eq!(grad.device(), Device::Cpu);
    let expected = {
        let t = x.tanh()?;
        t.mul_scalar(2.0)?.mul(&t.square()?.affine(-1.0, 1.0)?)?
    };
    assert_close("gradient through to_device", &expected, grad, 1e-6, 1e-5);
    Ok(())
}

#[test]
fn mixed_and_missing_devices_are_errors() -> Result<()> {
    let Some(gpu) = cuda("mixed_and_missing_devices_are_errors") else {
        return Ok(());
    };
    let a = Tensor::ones([2], DType::F32, gpu)?;
    let b = Tensor::ones([2], DType::F32, Device::Cpu)?;
    assert!(matches!(a.add(&b), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(
        b.matmul(&a.reshape([2, 1])?),
        Err(Error::DeviceMismatch { .. })
    ));
    let count = kiln_tensor::cuda::device_count().expect("a GPU is there");
    let err = Tensor::zeros([1], DType::F32, Device::Cuda(count)).unwrap_err();
    assert!(
        matches!(err, Error::DeviceUnavailable { device: Device::Cuda(c), .. } if c == count),
        "{err}"
    );
    Ok(())
}

#[test]
fn vars_update_in_place_on_the_device() -> Result<()> {
    let Some(gpu) = cuda("vars_update_in_place_on_the_device") else {
        return Ok(());
    };
    let v = Var::new(&Tensor::zeros([2, 3], DType::F32, gpu)?)?;
    let view = v.transpose(0, 1)?;
    v.set(&Tensor::arange(6, DType::F32, gpu)?.reshape([2, 3])?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(view.to_vec::<f32>()?, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    // Setting from a view of itself.
    v.set(&v.affine(2.0, 1.0)?)?;
    assert_eq!(v.to_vec::<f32>()?, vec![1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
    Ok(())
}

/// Twenty steps of plain gradient descent on a 2-layer MLP regression: the losses on CUDA
/// track the CPU's (same initial weights from the same Philox stream on both devices).
#[test]
fn a_small_network_trains_alike_on_both_devices() -> Result<()> {
    let Some(gpu) = cuda("a_small_network_trains_alike_on_both_devices") else {
        return Ok(());
    };
    let losses = |device: Device| -> Result<Vec<f64>> {
        let mut generator = Generator::new(11);
        let x = Tensor::randn([64, 10], 0.0, 1.0, DType::F32, device, &mut generator)?;
        let target = x.narrow(1, 0, 1)?.mul(&x.narrow(1, 1, 1)?)?.tanh()?; // [64, 1]
        let w1 = Var::new(&Tensor::randn(
            [10, 32],
            0.0,
            0.3,
            DType::F32,
            device,
            &mut generator,
        )?)?;
        let w2 = Var::new(&Tensor::randn(
            [32, 1],
            0.0,
            0.3,
            DType::F32,
            device,
            &mut generator,
        )?)?;
        let mut out = Vec::new();
        for _ in 0..20 {
            let hidden = x.matmul(&w1)?.leaky_relu(0.2)?; // [64, 32]
            let loss = hidden.matmul(&w2)?.sub(&target)?.square()?.mean_all()?;
            let grads = loss.backward()?;
            for w in [&w1, &w2] {
                let g = grads.get(w).expect("a gradient");
                w.set(&w.sub(&g.mul_scalar(0.1)?)?)?;
            }
            out.push(loss.to_f64()?);
        }
        Ok(out)
    };
    let (cpu, cuda) = (losses(Device::Cpu)?, losses(gpu)?);
    assert!(cpu[19] < cpu[0] * 0.9, "the CPU run learns: {cpu:?}");
    for (step, (a, b)) in cpu.iter().zip(&cuda).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1e-3),
            "step {step}: cpu {a} vs cuda {b}"
        );
    }
    Ok(())
}
