//! `kiln train` over MPI: `mpirun -np N kiln train MODEL` (or `srun`) trains one data-parallel
//! run whose ranks are the MPI job's processes (kiln-nn's `parallel` does the rest). MPI is
//! the `distributed` feature's: a kiln built without it refuses to run under a launcher with
//! more than one rank rather than train N separate copies.

use anyhow::{bail, Result};
use kiln_nn::parallel::DataParallel;

/// The number of ranks the launcher that started this process says the job has, if any
/// (Open MPI's `mpirun`, MPICH's and Intel MPI's (PMI), Slurm's `srun`).
pub fn launcher_world_size() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "SLURM_NTASKS",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// The data-parallel run `kiln train` joins: with `--distributed`, or under a launcher of more
/// than one rank; `None` otherwise.
pub fn join(asked: bool, sync_batch_norm: bool) -> Result<Option<DataParallel>> {
    let launched = launcher_world_size().is_some_and(|n| n > 1);
    if !asked && !launched {
        if sync_batch_norm {
            bail!("--sync-batch-norm is for data-parallel runs (mpirun -np N kiln train ..)");
        }
        return Ok(None);
    }
    connect(sync_batch_norm).map(Some)
}

#[cfg(not(feature = "distributed"))]
fn connect(_sync_batch_norm: bool) -> Result<DataParallel> {
    bail!(
        "this kiln was built without MPI, so it cannot train data-parallel: build it with \
         `cargo build --release --features distributed` (needs libopenmpi-dev and libclang-dev)"
    )
}

#[cfg(feature = "distributed")]
fn connect(sync_batch_norm: bool) -> Result<DataParallel> {
    let communicator = kiln_nn::parallel::Communicator::spawn(mpi_world::connect)?;
    Ok(DataParallel::new(communicator, sync_batch_norm))
}

#[cfg(feature = "distributed")]
mod mpi_world {
    use kiln_nn::parallel::{Collective, Values};
    use mpi::collective::SystemOperation;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// MPI's world communicator, on the thread that initialised MPI (funneled threading).
    struct World {
        world: SimpleCommunicator,
        // Dropped last: MPI_Finalize.
        _universe: Universe,
    }

    pub fn connect() -> Result<Box<dyn Collective>, String> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| "MPI was initialised twice".to_string())?;
        Ok(Box::new(World {
            world: universe.world(),
            _universe: universe,
        }))
    }

    impl Collective for World {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }

        fn world_size(&self) -> usize {
            self.world.size() as usize
        }

        // MPI's default error handler aborts the job on a failure, so these cannot fail here.
        fn sum(&mut self, values: &mut Values) -> Result<(), String> {
            match values {
                Values::F32(v) => {
                    let mine = v.clone();
                    self.world
                        .all_reduce_into(&mine[..], &mut v[..], SystemOperation::sum());
                }
                Values::F64(v) => {
                    let mine = v.clone();
                    self.world
                        .all_reduce_into(&mine[..], &mut v[..], SystemOperation::sum());
                }
            }
            Ok(())
        }

        fn gather(&mut self, value: u64) -> Result<Vec<u64>, String> {
            let mut all = vec![0u64; self.world_size()];
            self.world.all_gather_into(&value, &mut all[..]);
            Ok(all)
        }
    }
}
