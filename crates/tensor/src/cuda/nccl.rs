//! Sums over the GPUs of a data-parallel run with NCCL (the `nccl` feature; libnccl is loaded
//! at run time, like libcuda): one communicator per process and GPU, on kiln's stream of that
//! device, so a sum is queued behind the kernels that made its input and ahead of those that
//! read its result, with no host wait. The ranks agree on a communicator through its 128-byte
//! unique id, which rank 0 makes ([`unique_id`]) and the caller hands to the others (kiln
//! sends it over MPI).
//!
//! Not yet run on a GPU: scripts/gpu-check.sh's `nccl` stage runs its tests.

use std::sync::Mutex;

use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use crate::{DType, Device, Error, Result, Storage, Tensor};

fn nccl_error(op: &'static str) -> impl Fn(cudarc::nccl::result::NcclError) -> Error {
    move |e| Error::Cuda {
        op,
        message: format!("NCCL: {e:?}"),
    }
}

/// Why NCCL cannot be used here, or `Ok` when libnccl loads.
pub fn availability() -> std::result::Result<(), String> {
    // Safety: only tries to open the library.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        Ok(())
    } else {
        Err("libnccl.so (NCCL 2) is not on the library path".to_string())
    }
}

/// A new communicator id, made by rank 0 and given to every rank.
pub fn unique_id() -> Result<[u8; 128]> {
    availability().map_err(|message| Error::Cuda {
        op: "nccl",
        message,
    })?;
    let id = Id::new().map_err(nccl_error("nccl unique id"))?;
    Ok(id.internal().map(|c| c as u8))
}

/// One rank's NCCL communicator on one GPU.
pub struct Nccl {
    /// NCCL communicators are not thread-safe: one call at a time.
    comm: Mutex<Comm>,
    device: Device,
}

// Safety: the communicator is only used behind the mutex, one call at a time, and NCCL allows
// a communicator to be used from any thread.
unsafe impl Send for Nccl {}
unsafe impl Sync for Nccl {}

impl std::fmt::Debug for Nccl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nccl({})", self.device)
    }
}

impl Nccl {
    /// Rank `rank` of `world_size` on `device` (a CUDA device), in the communicator `id`
    /// names. Every rank must call this at the same time (NCCL's initialisation is collective).
    pub fn new(device: Device, rank: usize, world_size: usize, id: [u8; 128]) -> Result<Nccl> {
        let Device::Cuda(ordinal) = device else {
            return Err(Error::invalid(
                "nccl",
                format!("{device} is not a CUDA device"),
            ));
        };
        availability().map_err(|message| Error::Cuda {
            op: "nccl",
            message,
        })?;
        let gpu = super::device(ordinal)?;
        let id = Id::uninit(id.map(|b| b as ::core::ffi::c_char));
        let comm = Comm::from_rank(gpu.stream().clone(), rank, world_size, id)
            .map_err(nccl_error("nccl communicator"))?;
        Ok(Nccl {
            comm: Mutex::new(comm),
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// `x` (f32 or f64, on this communicator's device) summed over the ranks, as a new
    /// contiguous tensor of its shape; queued on the device's stream.
    pub fn sum(&self, x: &Tensor) -> Result<Tensor> {
        if x.device() != self.device {
            return Err(Error::DeviceMismatch {
                op: "nccl sum",
                lhs: x.device(),
                rhs: self.device,
            });
        }
        let mut copy = x.storage().copy_strided(x.layout())?;
        let Storage::Cuda(storage) = &mut copy else {
            return Err(Error::invalid("nccl sum", "expected CUDA storage"));
        };
        let comm = self.comm.lock().unwrap_or_else(|e| e.into_inner());
        let len = storage.len;
        let summed = match storage.dtype {
            // Safety: the buffer holds `len` elements of the dtype.
            DType::F32 => unsafe { storage.buffer.transmute_mut::<f32>(len) }
                .map(|mut view| comm.all_reduce_in_place(&mut view, &ReduceOp::Sum)),
            DType::F64 => unsafe { storage.buffer.transmute_mut::<f64>(len) }
                .map(|mut view| comm.all_reduce_in_place(&mut view, &ReduceOp::Sum)),
            dtype => {
                return Err(Error::UnsupportedDType {
                    op: "nccl sum",
                    dtype,
                })
            }
        };
        match summed {
            Some(result) => {
                result.map_err(nccl_error("nccl all-reduce"))?;
            }
            None => return Err(Error::invalid("nccl sum", "buffer shorter than its length")),
        }
        drop(comm);
        Ok(Tensor::from_storage(copy, x.shape().clone(), None))
    }
}
