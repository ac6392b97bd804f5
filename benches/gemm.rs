//! GEMM throughput: `cargo bench --bench gemm`. Criterion reports FLOP/s as "elem/s" (one
//! element is one floating-point operation, 2·m·n·k per product). Each case runs on 1 thread
//! and on all threads; `benches/reference/torch_gemm.py` measures PyTorch on the same cases
//! and prints the side-by-side table from these results.
//! `peak/*` measures this CPU's FMA throughput with register-resident loops, the ceiling any
//! kernel can reach.
//! `cuda gemm` (when a CUDA device is present) prints one table for cuda:0: kiln's matmul at
//! each `MatmulPrecision` (and on bf16 tensors) against cuBLAS (SGEMM, TF32 and BF16 GemmEx)
//! on the same shapes, in TFLOP/s, the median of 10 timed batches after 3 warm-ups.

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use kiln_tensor::{DType, Device, Generator, MatmulPrecision, Tensor};

mod common;
mod shapes;

fn operand(rows: usize, cols: usize, transposed: bool, rng: &mut Generator) -> Tensor {
    let stored = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    let t = Tensor::rand(stored, DType::F32, Device::Cpu, rng).unwrap();
    if transposed {
        t.t().unwrap()
    } else {
        t
    }
}

fn gemm(c: &mut Criterion) {
    let mut rng = Generator::new(0);
    for (threads, pool) in common::thread_pools() {
        let mut group = common::group(c, &format!("gemm_{threads}t"));
        for case in shapes::cases() {
            let a = operand(case.m, case.k, case.transpose_a, &mut rng);
            let b = operand(case.k, case.n, case.transpose_b, &mut rng);
            group.throughput(Throughput::Elements((2 * case.m * case.n * case.k) as u64));
            group.bench_function(&case.name, |bencher| {
                pool.install(|| bencher.iter(|| a.matmul(&b).unwrap()))
            });
        }
        group.finish();
    }
}

/// FMA throughput of one core: 12 independent accumulator chains (more than latency x
/// pipes), no memory traffic.
fn peak(c: &mut Criterion) {
    const ITERATIONS: usize = 1 << 16;
    let mut group = common::group(c, "peak");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            group.throughput(Throughput::Elements((ITERATIONS * 12 * 8 * 2) as u64));
            group.bench_function("fma_avx2_1t", |b| {
                b.iter(|| unsafe { x86::fma_avx2(ITERATIONS) })
            });
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            group.throughput(Throughput::Elements((ITERATIONS * 12 * 16 * 2) as u64));
            group.bench_function("fma_avx512_1t", |b| {
                b.iter(|| unsafe { x86::fma_avx512(ITERATIONS) })
            });
        }
    }
    group.finish();
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma_avx2(iterations: usize) -> f32 {
        // Inputs through black_box, so the compiler cannot evaluate the loop ahead of time.
        let start = std::hint::black_box(0.5f32);
        let mut acc: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(start + i as f32));
        let (x, y) = (
            _mm256_set1_ps(std::hint::black_box(0.999)),
            _mm256_set1_ps(std::hint::black_box(1e-3)),
        );
        for _ in 0..std::hint::black_box(iterations) {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            acc.iter()
                .fold(_mm256_set1_ps(0.0), |s, &a| _mm256_add_ps(s, a)),
        );
        out[0]
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma_avx512(iterations: usize) -> f32 {
        let start = std::hint::black_box(0.5f32);
        let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(start + i as f32));
        let (x, y) = (
            _mm512_set1_ps(std::hint::black_box(0.999)),
            _mm512_set1_ps(std::hint::black_box(1e-3)),
        );
        for _ in 0..std::hint::black_box(iterations) {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        _mm512_reduce_add_ps(
            acc.iter()
                .fold(_mm512_set1_ps(0.0), |s, &a| _mm512_add_ps(s, a)),
        )
    }
}

/// kiln against cuBLAS on cuda:0; skips with a message when there is no usable device.
fn cuda_gemm(_: &mut Criterion) {
    if let Err(reason) = kiln_tensor::cuda::availability() {
        println!("cuda gemm: skipped: {reason}");
        return;
    }
    if let Err(e) = cuda_table() {
        println!("cuda gemm: failed: {e}");
    }
    kiln_tensor::set_matmul_precision(MatmulPrecision::Fp32);
}

/// (m, k, n) of a row-major [m, k] x [k, n] product.
fn cuda_shapes() -> Vec<(usize, usize, usize)> {
    let mut shapes: Vec<_> = [512, 1024, 2048, 4096, 8192]
        .into_iter()
        .map(|s| (s, s, s))
        .collect();
    for batch in [64, 256] {
        for (k, n) in [
            (100, 256),
            (256, 512),
            (512, 1024),
            (1024, 784),
            (784, 1024),
        ] {
            shapes.push((batch, k, n));
        }
    }
    // The GAN's backward weight gradient: [1024, 64] x [64, 784].
    shapes.push((1024, 64, 784));
    shapes
}

const WARMUPS: usize = 3;
const SAMPLES: usize = 10;

/// Launches per timed batch: enough that a batch is well above launch and sync overhead,
/// one for the big squares (a 8192 product is 1.1 TFLOP).
fn batch_size(flops: f64) -> usize {
    (2e11 / flops).clamp(1.0, 50.0) as usize
}

/// Seconds per call of `op`: the median over `SAMPLES` batches of the batch mean, each batch
/// closed by `sync`, after `WARMUPS` calls (the first kiln call compiles its kernels).
fn median_seconds(
    batch: usize,
    op: &mut dyn FnMut() -> Result<(), String>,
    sync: &dyn Fn() -> Result<(), String>,
) -> Result<f64, String> {
    for _ in 0..WARMUPS {
        op()?;
    }
    sync()?;
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        for _ in 0..batch {
            op()?;
        }
        sync()?;
        samples.push(start.elapsed().as_secs_f64() / batch as f64);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[SAMPLES / 2])
}

fn cuda_table() -> Result<(), String> {
    let cuda = kiln_tensor::cuda::device(0).map_err(|e| e.to_string())?;
    let blas = CublasBench::new();
    if let Err(e) = &blas {
        println!("cuda gemm: cuBLAS unavailable ({e}); its column is left empty");
    }
    let blas = blas.ok();
    let kiln_sync = || cuda.synchronize().map_err(|e| e.to_string());
    let mut rng = Generator::new(0);
    println!(
        "cuda:0 ({cuda:?}): row-major [m,k]x[k,n], median of {SAMPLES} batches after {WARMUPS} warm-ups"
    );
    println!(
        "{:<16} {:<12} {:>12} {:>14} {:>11}",
        "m x k x n", "precision", "kiln TFLOP/s", "cuBLAS TFLOP/s", "kiln/cuBLAS"
    );
    for (m, k, n) in cuda_shapes() {
        let shape = format!("{m}x{k}x{n}");
        let flops = 2.0 * (m * k * n) as f64;
        let batch = batch_size(flops);
        let inputs = (|| -> kiln_tensor::Result<(Tensor, Tensor)> {
            let a = Tensor::rand([m, k], DType::F32, Device::Cpu, &mut rng)?;
            let b = Tensor::rand([k, n], DType::F32, Device::Cpu, &mut rng)?;
            Ok((a.to_device(Device::Cuda(0))?, b.to_device(Device::Cuda(0))?))
        })();
        let (a, b) = match inputs {
            Ok(inputs) => inputs,
            Err(e) => {
                println!("{shape:<16} inputs failed: {e}");
                continue;
            }
        };
        let mut blas_buffers = blas.as_ref().map(|blas| blas.buffers(m, k, n));
        // (label, kiln precision, kiln on bf16 tensors, cuBLAS kind)
        let rows = [
            ("fp32", MatmulPrecision::Fp32, false, BlasKind::Sgemm),
            ("tf32", MatmulPrecision::Tf32, false, BlasKind::Tf32),
            ("bf16", MatmulPrecision::Bf16, false, BlasKind::Bf16),
            ("bf16 tensors", MatmulPrecision::Bf16, true, BlasKind::Bf16),
        ];
        let mut blas_cache: Vec<(BlasKind, Result<f64, String>)> = Vec::new();
        for (label, precision, bf16_inputs, kind) in rows {
            kiln_tensor::set_matmul_precision(precision);
            let kiln = (|| -> Result<f64, String> {
                let (a, b) = if bf16_inputs {
                    let a = a.to_dtype(DType::BF16).map_err(|e| e.to_string())?;
                    let b = b.to_dtype(DType::BF16).map_err(|e| e.to_string())?;
                    (a, b)
                } else {
                    (a.clone(), b.clone())
                };
                let mut op = || a.matmul(&b).map(drop).map_err(|e| e.to_string());
                median_seconds(batch, &mut op, &kiln_sync)
            })();
            let cublas = match (&blas, &mut blas_buffers) {
                (Some(blas), Some(Ok(buffers))) => {
                    match blas_cache.iter().find(|(cached, _)| *cached == kind) {
                        Some((_, seconds)) => Some(seconds.clone()),
                        None => {
                            let seconds = blas.seconds(kind, buffers, batch);
                            blas_cache.push((kind, seconds.clone()));
                            Some(seconds)
                        }
                    }
                }
                (Some(_), Some(Err(e))) => Some(Err(e.clone())),
                _ => None,
            };
            let tflops = |seconds: f64| flops / seconds / 1e12;
            let kiln_text = match &kiln {
                Ok(seconds) => format!("{:.2}", tflops(*seconds)),
                Err(_) => "error".to_string(),
            };
            let blas_text = match &cublas {
                Some(Ok(seconds)) => format!("{:.2}", tflops(*seconds)),
                Some(Err(_)) => "error".to_string(),
                None => "-".to_string(),
            };
            let ratio = match (&kiln, &cublas) {
                (Ok(kiln), Some(Ok(blas))) => format!("{:.2}", blas / kiln),
                _ => "-".to_string(),
            };
            println!("{shape:<16} {label:<12} {kiln_text:>12} {blas_text:>14} {ratio:>11}");
            if let Err(e) = &kiln {
                println!("    kiln {label}: {e}");
            }
            if let Some(Err(e)) = &cublas {
                println!("    cuBLAS {label}: {e}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlasKind {
    /// cublasSgemm: f32 in, out and compute (no TF32: the handle keeps the default math mode).
    Sgemm,
    /// cublasGemmEx: f32 in and out, CUBLAS_COMPUTE_32F_FAST_TF32.
    Tf32,
    /// cublasGemmEx: CUDA_R_16BF in, f32 out, CUBLAS_COMPUTE_32F.
    Bf16,
}

/// cuBLAS on its own handle, on the default stream of the primary context of device 0 (the
/// context kiln also uses).
struct CublasBench {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
}

/// Row-major operands of one shape: A [m, k], B [k, n], C [m, n], in f32 and in bf16.
struct BlasBuffers {
    m: usize,
    k: usize,
    n: usize,
    a: CudaSlice<f32>,
    b: CudaSlice<f32>,
    a16: CudaSlice<u16>,
    b16: CudaSlice<u16>,
    c: CudaSlice<f32>,
}

/// bf16 bits of `x`, rounded to nearest even (inputs here are finite).
fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

impl CublasBench {
    fn new() -> Result<Self, String> {
        // cudarc panics on a call into a library it cannot load: check first.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err("libcublas not found".to_string());
        }
        let context = CudaContext::new(0).map_err(|e| format!("{e:?}"))?;
        let stream = context.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("{e:?}"))?;
        Ok(CublasBench { stream, blas })
    }

    fn buffers(&self, m: usize, k: usize, n: usize) -> Result<BlasBuffers, String> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    (state >> 40) as f32 / (1u64 << 24) as f32
                })
                .collect()
        };
        let (a, b) = (uniform(m * k), uniform(k * n));
        let to16 = |v: &[f32]| v.iter().map(|&x| bf16_bits(x)).collect::<Vec<u16>>();
        let err = |e: cudarc::driver::DriverError| format!("{e:?}");
        Ok(BlasBuffers {
            m,
            k,
            n,
            a16: self.stream.clone_htod(&to16(&a)).map_err(err)?,
            b16: self.stream.clone_htod(&to16(&b)).map_err(err)?,
            a: self.stream.clone_htod(&a).map_err(err)?,
            b: self.stream.clone_htod(&b).map_err(err)?,
            c: self.stream.alloc_zeros::<f32>(m * n).map_err(err)?,
        })
    }

    /// One product C = A B, row-major, as cuBLAS's column-major C^T = B^T A^T: the row-major
    /// [k, n] B is the column-major [n, k] B^T with leading dimension n, likewise A^T is
    /// [k, m] with ld k and C^T is [n, m] with ld n, so no operand is transposed (OP_N, OP_N)
    /// and cuBLAS's (m, n, k) is (n, m, k).
    fn launch(&self, kind: BlasKind, buffers: &mut BlasBuffers) -> Result<(), String> {
        use blas_sys::{
            cublasComputeType_t as Compute, cublasOperation_t as Op, cudaDataType as Ty,
        };
        let (m, k, n) = (buffers.m as i32, buffers.k as i32, buffers.n as i32);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let handle = *self.blas.handle();
        let (a32, _a32) = buffers.a.device_ptr(&self.stream);
        let (b32, _b32) = buffers.b.device_ptr(&self.stream);
        let (a16, _a16) = buffers.a16.device_ptr(&self.stream);
        let (b16, _b16) = buffers.b16.device_ptr(&self.stream);
        let (c, _c) = buffers.c.device_ptr_mut(&self.stream);
        let result = unsafe {
            match kind {
                BlasKind::Sgemm => blas::sgemm(
                    handle,
                    Op::CUBLAS_OP_N,
                    Op::CUBLAS_OP_N,
                    n,
                    m,
                    k,
                    &alpha,
                    b32 as *const f32,
                    n,
                    a32 as *const f32,
                    k,
                    &beta,
                    c as *mut f32,
                    n,
                ),
                BlasKind::Tf32 | BlasKind::Bf16 => {
                    let (a, b, ty, compute) = if kind == BlasKind::Tf32 {
                        let compute = Compute::CUBLAS_COMPUTE_32F_FAST_TF32;
                        (a32, b32, Ty::CUDA_R_32F, compute)
                    } else {
                        (a16, b16, Ty::CUDA_R_16BF, Compute::CUBLAS_COMPUTE_32F)
                    };
                    blas::gemm_ex(
                        handle,
                        Op::CUBLAS_OP_N,
                        Op::CUBLAS_OP_N,
                        n,
                        m,
                        k,
                        (&alpha) as *const f32 as *const _,
                        b as *const _,
                        ty,
                        n,
                        a as *const _,
                        ty,
                        k,
                        (&beta) as *const f32 as *const _,
                        c as *mut _,
                        Ty::CUDA_R_32F,
                        n,
                        compute,
                        blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
            }
        };
        result.map_err(|e| format!("{e:?}"))
    }

    fn seconds(
        &self,
        kind: BlasKind,
        buffers: &mut BlasBuffers,
        batch: usize,
    ) -> Result<f64, String> {
        let sync = || self.stream.synchronize().map_err(|e| format!("{e:?}"));
        let mut op = || self.launch(kind, buffers);
        median_seconds(batch, &mut op, &sync)
    }
}

criterion_group!(benches, gemm, peak, cuda_gemm);
criterion_main!(benches);
