//! Elementwise and reduction throughput: `cargo bench --bench elementwise`. Criterion reports
//! bytes moved per second (reads + writes of f32 data): add and mul move 12 bytes an element,
//! leaky_relu 8, sum 4. Each runs on 1 and 16M elements, on 1 thread and on all threads.
//!
//! With a GPU, add and leaky_relu on 16M f32 elements on cuda:0 follow as a table: GB/s, and
//! that as a fraction of the device's copy bandwidth, measured as the driver's device-to-device
//! copy (`cuMemcpyDtoDAsync`) of the same 64 MiB, the most an elementwise kernel can move; kiln's
//! own copy kernel is listed too. Without a GPU, it says it skipped them.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_tensor::{DType, Device, Generator, Result, Tensor};

mod common;

fn elementwise(c: &mut Criterion) {
    let mut rng = Generator::new(0);
    for (threads, pool) in common::thread_pools() {
        let mut group = common::group(c, &format!("elementwise_{threads}t"));
        for (label, len) in [("1M", 1 << 20), ("16M", 1 << 24)] {
            let x = Tensor::rand([len], DType::F32, Device::Cpu, &mut rng).unwrap();
            let y = Tensor::rand([len], DType::F32, Device::Cpu, &mut rng).unwrap();
            // Inputs in [-4, 4): where activations and logits live.
            let z = x.affine(8.0, -4.0).unwrap();
            let cases: [(&str, u64, &(dyn Fn() -> Tensor + Sync)); 9] = [
                ("add", 12, &|| x.add(&y).unwrap()),
                ("mul", 12, &|| x.mul(&y).unwrap()),
                ("leaky_relu", 8, &|| x.leaky_relu(0.2).unwrap()),
                ("sum", 4, &|| x.sum_all().unwrap()),
                ("exp", 8, &|| z.exp().unwrap()),
                ("log", 8, &|| x.log().unwrap()),
                ("tanh", 8, &|| z.tanh().unwrap()),
                ("sigmoid", 8, &|| z.sigmoid().unwrap()),
                ("softplus", 8, &|| z.softplus().unwrap()),
            ];
            for (name, bytes, op) in cases {
                group.throughput(Throughput::Bytes(bytes * len as u64));
                group.bench_function(format!("{name}_{label}"), |b| pool.install(|| b.iter(op)));
            }
        }
        group.finish();
    }
}

/// The CUDA cases, timed by a plain loop rather than criterion: launches return before the
/// kernel has run, so a sample is a batch of launches closed by a synchronize.
fn cuda_elementwise(_: &mut Criterion) {
    if let Err(reason) = kiln_tensor::cuda::availability() {
        println!("cuda elementwise: skipped: {reason}");
        return;
    }
    if let Err(e) = cuda_table() {
        println!("cuda elementwise: failed: {e}");
    }
}

fn cuda_table() -> Result<()> {
    const LEN: usize = 1 << 24;
    let cuda = kiln_tensor::cuda::device(0)?;
    let mut rng = Generator::new(0);
    let x = Tensor::rand([LEN], DType::F32, Device::Cpu, &mut rng)?.to_device(Device::Cuda(0))?;
    let y = Tensor::rand([LEN], DType::F32, Device::Cpu, &mut rng)?.to_device(Device::Cuda(0))?;
    // Seconds per op: the median over samples of a batch's mean, after a warm-up that also
    // compiles (or loads) the kernels and fills the memory pool.
    type Op<'a> = &'a dyn Fn() -> Result<Tensor>;
    let seconds = |op: Op| -> Result<f64> {
        const BATCH: usize = 20;
        const SAMPLES: usize = 15;
        for _ in 0..3 {
            op()?;
        }
        cuda.synchronize()?;
        let mut samples = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            for _ in 0..BATCH {
                op()?;
            }
            cuda.synchronize()?;
            samples.push(start.elapsed().as_secs_f64() / BATCH as f64);
        }
        samples.sort_by(f64::total_cmp);
        Ok(samples[SAMPLES / 2])
    };
    // (name, bytes read + written per element, op)
    let cases: [(&str, f64, Op); 3] = [
        ("kiln copy", 8.0, &|| x.copy()),
        ("add", 12.0, &|| x.add(&y)),
        ("leaky_relu", 8.0, &|| x.leaky_relu(0.2)),
    ];
    let driver_copy = driver_copy_seconds(LEN * 4).map_err(|e| kiln_tensor::Error::Cuda {
        op: "bench",
        message: format!("{e:?}"),
    })?;
    let copy_bandwidth = 8.0 * LEN as f64 / driver_copy / 1e9;
    println!("cuda:0 ({cuda:?}), f32, 16M elements: median of 15 batches of 20");
    println!("{:<18} {:>10} {:>10} {:>8}", "op", "us", "GB/s", "of copy");
    println!(
        "{:<18} {:>10.1} {copy_bandwidth:>10.1} {:>7.0}%",
        "driver memcpy",
        driver_copy * 1e6,
        100.0
    );
    for (name, bytes, op) in cases {
        let time = seconds(op)?;
        let bandwidth = bytes * LEN as f64 / time / 1e9;
        println!(
            "{name:<18} {:>10.1} {bandwidth:>10.1} {:>7.0}%",
            time * 1e6,
            100.0 * bandwidth / copy_bandwidth
        );
    }
    Ok(())
}

/// Seconds per driver device-to-device copy of `bytes` (the median of 15 batches of 20, after a
/// warm-up), on the primary context kiln also uses.
fn driver_copy_seconds(bytes: usize) -> std::result::Result<f64, cudarc::driver::DriverError> {
    let context = cudarc::driver::CudaContext::new(0)?;
    let stream = context.default_stream();
    let source = stream.alloc_zeros::<u8>(bytes)?;
    let mut target = stream.alloc_zeros::<u8>(bytes)?;
    for _ in 0..3 {
        stream.memcpy_dtod(&source, &mut target)?;
    }
    stream.synchronize()?;
    let mut samples = Vec::new();
    for _ in 0..15 {
        let start = Instant::now();
        for _ in 0..20 {
            stream.memcpy_dtod(&source, &mut target)?;
        }
        stream.synchronize()?;
        samples.push(start.elapsed().as_secs_f64() / 20.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[7])
}

criterion_group!(benches, elementwise, cuda_elementwise);
criterion_main!(benches);
