//! Elementwise and reduction throughput: `cargo bench --bench elementwise`. Criterion reports
//! bytes moved per second (reads + writes of f32 data): add and mul move 12 bytes an element,
//! leaky_relu 8, sum 4. Each runs on 1 and 16M elements, on 1 thread and on all threads.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kiln_tensor::{DType, Device, Generator, Tensor};

mod common;

fn elementwise(c: &mut Criterion) {
    let mut rng = Generator::new(0);
    for (threads, pool) in common::thread_pools() {
        let mut group = common::group(c, &format!("elementwise_{threads}t"));
        for (label, len) in [("1M", 1 << 20), ("16M", 1 << 24)] {
            let x = Tensor::rand([len], DType::F32, Device::Cpu, &mut rng).unwrap();
            let y = Tensor::rand([len], DType::F32, Device::Cpu, &mut rng).unwrap();
            let cases: [(&str, u64, &(dyn Fn() -> Tensor + Sync)); 4] = [
                ("add", 12, &|| x.add(&y).unwrap()),
                ("mul", 12, &|| x.mul(&y).unwrap()),
                ("leaky_relu", 8, &|| x.leaky_relu(0.2).unwrap()),
                ("sum", 4, &|| x.sum_all().unwrap()),
            ];
            for (name, bytes, op) in cases {
                group.throughput(Throughput::Bytes(bytes * len as u64));
                group.bench_function(format!("{name}_{label}"), |b| pool.install(|| b.iter(op)));
            }
        }
        group.finish();
    }
}

criterion_group!(benches, elementwise);
criterion_main!(benches);
