//! Index checks without a host synchronisation: the kernels that read indices (select and
//! add_at in kernels/index.cu) record the first index out of range in a device-side fault
//! record instead of the host reading every index back before the launch, and the error is
//! reported at the device's next readback (`CudaStorage::to_cpu`, `CudaDevice::synchronize`),
//! as `Error::IndexOutOfRange` naming the op, the index, the dim and its size: the same error
//! the CPU gives at the call, one readback later. Until then a bad index reads as zero and adds
//! nowhere, so no kernel touches memory outside its buffers.

use std::sync::{Arc, MutexGuard};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};

use super::driver_error;
use crate::{Error, Result};

/// The device's fault record, `[owner, key]` (kernels/index.cu `record_index_fault`): `owner`
/// is the sequence number of the first launch that found a bad index (0: none), `key` the
/// smallest `position << 32 | index` that launch found (u64::MAX: none).
pub(crate) struct IndexFaults {
    record: CudaSlice<u64>,
    address: u64,
    /// The sequence number the next checked launch gets (from 1).
    next: u64,
    /// The checked launches since the last readback, oldest first.
    pending: Vec<Check>,
}

/// What a checked launch needs to name its error.
struct Check {
    sequence: u64,
    op: &'static str,
    dim: usize,
    size: usize,
}

/// A checked launch being made: holds the device's fault state locked until the launch is
/// queued, so that a readback on another thread cannot fall between the two.
pub(crate) struct CheckedLaunch<'a> {
    _faults: MutexGuard<'a, IndexFaults>,
    /// The launch's sequence number, for the kernel's `sequence` argument.
    pub sequence: u64,
    /// The record's device address, for the kernel's `fault` argument.
    pub record: u64,
}

const CLEAR: [u64; 2] = [0, u64::MAX];

impl IndexFaults {
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<IndexFaults> {
        let record = stream
            .clone_htod(&CLEAR[..])
            .map_err(driver_error("cuda device setup"))?;
        let address = record.device_ptr(stream).0;
        Ok(IndexFaults {
            record,
            address,
            next: 1,
            pending: Vec::new(),
        })
    }

    /// Registers a launch that checks indices of `op` against `size`, the extent of `dim`.
    pub(crate) fn begin<'a>(
        mut faults: MutexGuard<'a, IndexFaults>,
        op: &'static str,
        dim: usize,
        size: usize,
    ) -> CheckedLaunch<'a> {
        let sequence = faults.next;
        faults.next += 1;
        faults.pending.push(Check {
            sequence,
            op,
            dim,
            size,
        });
        let record = faults.address;
        CheckedLaunch {
            _faults: faults,
            sequence,
            record,
        }
    }

    /// The error of the first bad index since the last call, if any, clearing the record.
    /// Reads the record back (a synchronisation) only when a checked launch was made since.
    pub(crate) fn take(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        const OP: &str = "index check";
        if self.pending.is_empty() {
            return Ok(());
        }
        let [owner, key] = match stream.clone_dtoh(&self.record) {
            Ok(values) => {
                super::count_host_wait();
                stream.synchronize().map_err(driver_error(OP))?;
                [values[0], values[1]]
            }
            Err(e) => return Err(driver_error(OP)(e)),
        };
        let pending = std::mem::take(&mut self.pending);
        if owner == 0 {
            return Ok(());
        }
        stream
            .memcpy_htod(&CLEAR[..], &mut self.record)
            .map_err(driver_error(OP))?;
        match pending.iter().find(|check| check.sequence == owner) {
            Some(check) => Err(Error::IndexOutOfRange {
                op: check.op,
                index: (key & u64::from(u32::MAX)) as usize,
                dim: check.dim,
                size: check.size,
            }),
            None => Err(Error::Cuda {
                op: OP,
                message: format!("a bad index was recorded by unknown launch {owner}"),
            }),
        }
    }
}
