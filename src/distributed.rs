//! `kiln train` over MPI: `mpirun -np N kiln train MODEL` (or `srun`) trains one data-parallel
//! run whose ranks are the MPI job's processes (kiln-nn's `parallel` does the rest). MPI is
//! the `distributed` feature's: a kiln built without it refuses to run under a launcher with
//! more than one rank rather than train N separate copies.

use anyhow::{bail, Result};
use kiln_nn::parallel::DataParallel;
use kiln_tensor::Device;

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

/// This process's rank among those of the job on its machine, as the launcher says.
fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// The device a rank trains on: `cuda` (or `auto` finding a GPU) means a GPU per rank on each
/// machine, `cuda:(local rank mod GPUs)`; an explicit `cuda:N` or `cpu` stays as it is.
pub fn rank_device(asked: &str, device: Device) -> Device {
    let per_rank = matches!(asked, "cuda" | "auto") && matches!(device, Device::Cuda(_));
    match (per_rank, kiln_tensor::cuda::device_count()) {
        (true, Ok(count)) if count > 0 => Device::Cuda(local_rank().unwrap_or(0) % count),
        _ => device,
    }
}

/// The data-parallel run `kiln train` joins: with `--distributed`, or under a launcher of more
/// than one rank; `None` otherwise. On a GPU its gradients are summed with NCCL where libnccl
/// is found (else through the host, with a line saying so).
pub fn join(asked: bool, sync_batch_norm: bool, device: Device) -> Result<Option<DataParallel>> {
    let launched = launcher_world_size().is_some_and(|n| n > 1);
    if !asked && !launched {
        if sync_batch_norm {
            bail!("--sync-batch-norm is for data-parallel runs (mpirun -np N kiln train ..)");
        }
        return Ok(None);
    }
    connect(sync_batch_norm, device).map(Some)
}

#[cfg(not(feature = "distributed"))]
fn connect(_sync_batch_norm: bool, _device: Device) -> Result<DataParallel> {
    bail!(
        "this kiln was built without MPI, so it cannot train data-parallel: build it with \
         `cargo build --release --features distributed` (needs libopenmpi-dev and libclang-dev)"
    )
}

#[cfg(feature = "distributed")]
fn connect(sync_batch_norm: bool, device: Device) -> Result<DataParallel> {
    let communicator = kiln_nn::parallel::Communicator::spawn(mpi_world::connect)?;
    let parallel = DataParallel::new(communicator.clone(), sync_batch_norm);
    if !matches!(device, Device::Cuda(_)) {
        return Ok(parallel);
    }
    // Every rank on a GPU must take the same path: NCCL only if all of them can load it.
    let here = kiln_tensor::cuda::nccl::availability();
    let all_can = !communicator.gather(u64::from(here.is_err()))?.contains(&1);
    if !all_can {
        if communicator.rank() == 0 {
            eprintln!(
                "NCCL is not available on every rank ({}): gradients are summed through the host",
                here.err().unwrap_or_else(|| "another rank lacks it".into())
            );
        }
        return Ok(parallel);
    }
    let nccl = nccl::connect(&communicator, device)?;
    Ok(parallel.with_device_sum(std::sync::Arc::new(nccl)))
}

/// NCCL between the ranks' GPUs, bootstrapped over MPI.
#[cfg(feature = "distributed")]
mod nccl {
    use kiln_nn::parallel::{Communicator, DeviceSum};
    use kiln_tensor::cuda::nccl::{unique_id, Nccl};
    use kiln_tensor::{Device, Tensor};

    /// kiln-tensor's NCCL communicator as kiln-nn's device sum.
    pub struct Gpus(Nccl);

    impl DeviceSum for Gpus {
        fn device(&self) -> Device {
            self.0.device()
        }

        fn sum(&self, x: &Tensor) -> kiln_tensor::Result<Tensor> {
            self.0.sum(x)
        }
    }

    /// Rank 0 makes the communicator's id and sends it to the others (16 words gathered over
    /// MPI, rank 0's kept); then every rank joins on its GPU.
    pub fn connect(communicator: &Communicator, device: Device) -> anyhow::Result<Gpus> {
        let id = match communicator.rank() {
            0 => unique_id()?,
            _ => [0; 128],
        };
        let mut shared = [0u8; 128];
        for (word, chunk) in shared.chunks_mut(8).zip(id.chunks(8)) {
            let mine = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let first = communicator.gather(mine)?[0];
            word.copy_from_slice(&first.to_le_bytes());
        }
        let rank = communicator.rank();
        let world = communicator.world_size();
        Ok(Gpus(Nccl::new(device, rank, world, shared)?))
    }
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
