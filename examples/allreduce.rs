//! The all-reduce bandwidth MPI reaches between kiln's ranks (the `distributed` feature):
//! `mpirun -np 2 target/release/examples/allreduce`, after
//! `cargo build --release --features distributed --example allreduce`. Sums f32 buffers of
//! 4 KiB to 64 MiB over the ranks through kiln-nn's Communicator, as the gradient buckets
//! go, and prints each size's time and the bus bandwidth 2(n-1)/n · bytes / time (NCCL's
//! measure: what each rank's links carry in a ring all-reduce).

use std::time::Instant;

use kiln_nn::parallel::{Communicator, Values};

fn main() {
    let communicator = Communicator::spawn(mpi_world).expect("MPI");
    let ranks = communicator.world_size() as f64;
    if communicator.rank() == 0 {
        println!("ranks {ranks}\nbytes      time_us   bus_GB_per_s");
    }
    for shift in (12..=26).step_by(2) {
        let bytes = 1usize << shift;
        let values = vec![1.0f32; bytes / 4];
        let repeats = (1 << 28) / bytes + 3;
        communicator.sum(Values::F32(values.clone())).unwrap(); // warm-up
        let start = Instant::now();
        for _ in 0..repeats {
            communicator.sum(Values::F32(values.clone())).unwrap();
        }
        let seconds = start.elapsed().as_secs_f64() / repeats as f64;
        if communicator.rank() == 0 {
            let bus = 2.0 * (ranks - 1.0) / ranks * bytes as f64 / seconds / 1e9;
            println!("{bytes:<10} {:>8.1}   {bus:>6.2}", seconds * 1e6);
        }
    }
}

fn mpi_world() -> Result<Box<dyn kiln_nn::parallel::Collective>, String> {
    use kiln_nn::parallel::Collective;
    use mpi::collective::SystemOperation;
    use mpi::traits::*;

    struct World {
        world: mpi::topology::SimpleCommunicator,
        _universe: mpi::environment::Universe,
    }
    impl Collective for World {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world_size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum(&mut self, values: &mut Values) -> Result<(), String> {
            if let Values::F32(v) = values {
                let mine = v.clone();
                self.world
                    .all_reduce_into(&mine[..], &mut v[..], SystemOperation::sum());
            }
            Ok(())
        }
        fn gather(&mut self, _: u64) -> Result<Vec<u64>, String> {
            Err("not used".into())
        }
    }
    let universe = mpi::initialize().ok_or("MPI was initialised twice")?;
    Ok(Box::new(World {
        world: universe.world(),
        _universe: universe,
    }))
}
