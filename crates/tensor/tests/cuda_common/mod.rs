//! The CUDA test harness shared by the `cuda_*` test files: each test asks [`cuda`] for the
//! device, which is `None` (and the test prints that it skipped, and passes) on a machine with
//! no usable GPU, unless `KILN_REQUIRE_CUDA=1`, which turns a missing GPU into a failure.
//! Parity helpers run one computation on the CPU and on CUDA and compare the results.

#![allow(dead_code)]

use std::sync::Arc;

use kiln_tensor::cpu::CpuStorage;
use kiln_tensor::cuda::CudaDevice;
use kiln_tensor::{BackendStorage, Conv2dGeometry, DType, Device, Layout, Result, Tensor};

/// `cuda:0` when it can be used; otherwise `None` after printing why `test` skipped, or a
/// panic when `KILN_REQUIRE_CUDA=1`.
pub fn cuda(test: &str) -> Option<Device> {
    kiln_tensor::cuda::test_device(test)
}

/// The elements of any tensor as f64 (read back to the host).
pub fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.to_vec::<f64>())
        .expect("readback")
}

/// Asserts two tensors have one shape and dtype and elements within `atol + rtol * |cpu|`
/// (NaN matches NaN, infinities match exactly).
pub fn assert_close(what: &str, cpu: &Tensor, gpu: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(cpu.shape(), gpu.shape(), "{what}: shapes");
    assert_eq!(cpu.dtype(), gpu.dtype(), "{what}: dtypes");
    let (a, b) = (values(cpu), values(gpu));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let ok = (x.is_nan() && y.is_nan())
            || x == y
            || (x.is_finite() && y.is_finite() && (x - y).abs() <= atol + rtol * x.abs());
        assert!(
            ok,
            "{what}: element {i}: cpu {x} vs cuda {y} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Runs `f` on the CPU and on `gpu` and compares every output pair with [`assert_close`].
pub fn parity(
    what: &str,
    gpu: Device,
    atol: f64,
    rtol: f64,
    f: impl Fn(Device) -> Result<Vec<Tensor>>,
) {
    let cpu_out = f(Device::Cpu).unwrap_or_else(|e| panic!("{what} on cpu: {e}"));
    let gpu_out = f(gpu).unwrap_or_else(|e| panic!("{what} on {gpu}: {e}"));
    assert_eq!(cpu_out.len(), gpu_out.len());
    for (k, (c, g)) in cpu_out.iter().zip(&gpu_out).enumerate() {
        assert_eq!(g.device(), gpu, "{what}: output {k} is on {}", g.device());
        assert_close(&format!("{what} (output {k})"), c, g, atol, rtol);
    }
}

/// Deterministic pseudo-random values in [-scale, scale) (a small LCG, so the harness needs no
/// generator of its own), as a tensor of `dtype` on `device`.
pub fn random(shape: &[usize], dtype: DType, device: Device, seed: u64, scale: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(data, shape.to_vec(), device)
        .and_then(|t| t.to_dtype(dtype))
        .expect("random tensor")
}

/// The float dtypes every CUDA kernel takes, with an absolute/relative tolerance suited to
/// one rounding of each (f32 math for the half types, as on the CPU).
pub const FLOAT_DTYPES: [(DType, f64); 4] = [
    (DType::F32, 1e-6),
    (DType::F64, 1e-12),
    (DType::F16, 1e-3),
    (DType::BF16, 8e-3),
];

/// Every dtype kiln has.
pub const ALL_DTYPES: [DType; 6] = [
    DType::U8,
    DType::U32,
    DType::F16,
    DType::BF16,
    DType::F32,
    DType::F64,
];

/// More elements than one wave of blocks on any current GPU (an H100 runs 132 SMs x 8 blocks
/// x 256 threads = 270336 threads at once, see `launch_config_for`), and odd.
pub const OVER_A_WAVE: usize = (1 << 20) + 3;

/// The float dtypes, for tests that loop over dtypes alone.
pub const FLOATS: [DType; 4] = [DType::F16, DType::BF16, DType::F32, DType::F64];

/// The device `cuda:0` itself, for tests that call the backend directly.
pub fn cuda_device() -> Arc<CudaDevice> {
    kiln_tensor::cuda::device(0).expect("cuda:0")
}

/// A window geometry with the output grid PyTorch's formula gives (as ops/conv.rs computes it).
pub fn geometry(
    [batch, channels, height, width]: [usize; 4],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Conv2dGeometry {
    let out = |axis: usize, size: usize| {
        (size + 2 * padding[axis] - (dilation[axis] * (kernel[axis] - 1) + 1)) / stride[axis] + 1
    };
    Conv2dGeometry {
        batch,
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
        dilation,
        out_height: out(0, height),
        out_width: out(1, width),
    }
}

/// Host storage of `dtype` holding `values` (integers for u8/u32, rounded for the halves).
pub fn host_storage(values: &[f64], dtype: DType) -> CpuStorage {
    CpuStorage::F64(values.to_vec())
        .to_dtype(&Layout::contiguous([values.len()]), dtype)
        .expect("to_dtype")
}
