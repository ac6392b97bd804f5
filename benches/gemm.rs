//! GEMM throughput: `cargo bench --bench gemm`. Criterion reports FLOP/s as "elem/s" (one
//! element is one floating-point operation, 2·m·n·k per product). Each case runs on 1 thread
//! and on all threads; `benches/reference/torch_gemm.py` measures PyTorch on the same cases
//! and prints the side-by-side table from these results.
//! `peak/*` measures this CPU's FMA throughput with register-resident loops, the ceiling any
//! kernel can reach.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_tensor::{DType, Device, Generator, Tensor};

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

criterion_group!(benches, gemm, peak);
criterion_main!(benches);
