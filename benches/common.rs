//! Set-up shared by the benches: the thread counts each case runs on, and criterion's timing.

use std::time::Duration;

use criterion::{measurement::WallTime, BenchmarkGroup, Criterion};

/// 1 thread, then every logical CPU: each paired with a rayon pool of that size.
#[allow(dead_code)] // the train_step bench runs on all threads only
pub fn thread_pools() -> Vec<(usize, rayon::ThreadPool)> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    [1, all]
        .into_iter()
        .map(|threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("a rayon pool");
            (threads, pool)
        })
        .collect()
}

/// A benchmark group with short, fixed timing, so a full run of many cases takes minutes.
/// Also sets the allocator up as the `kiln` binary does (`tune_allocator`), so the figures are
/// the ones a training run sees.
pub fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    kiln_tensor::cpu::tune_allocator();
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(20);
    group
}
