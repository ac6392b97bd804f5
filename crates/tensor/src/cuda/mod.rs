//! The CUDA backend: devices (a context and one stream each), device memory, kernels compiled
//! from `kernels/*.cu` by NVRTC (see `registry`), and `CudaStorage`, which implements the
//! backend trait with them. Not for host-side logic: shapes are checked by the tensor layer.
//!
//! libcuda and libnvrtc are loaded at run time (cudarc's dynamic loading), so kiln builds and
//! runs on machines with no CUDA; `device` probes for the libraries before touching the API
//! (cudarc panics on a missing library) and reports "no GPU" as an error value.

mod conv;
mod elementwise;
mod faults;
mod gemm;
mod gemm_tc;
mod index;
mod loss;
mod matmul;
#[cfg(feature = "nccl")]
pub mod nccl;
mod norm;
mod optim;
mod pool;
mod product;
mod reduce;
pub mod registry;
pub(crate) mod rng;
mod storage;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DriverError,
    LaunchConfig,
};

pub use storage::CudaStorage;

use crate::{DType, Device, Error, Layout, Result};

/// A CUDA device as kiln uses it: its primary context, the one stream all of kiln's work on it
/// is ordered on, and the kernel modules loaded so far.
pub struct CudaDevice {
    ordinal: usize,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    multiprocessors: u32,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
    faults: Mutex<faults::IndexFaults>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} (sm_{})", self.ordinal, self.arch)
    }
}

/// A compute capability, e.g. 9.0 for the H100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for Arch {
    /// `90` for 9.0, as in `sm_90`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.major, self.minor)
    }
}

/// What `kiln info` shows of a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub arch: Arch,
    pub total_memory: usize,
    pub multiprocessors: u32,
}

/// The CUDA driver's version and the devices it sees, or why there are none.
#[derive(Debug, Clone)]
pub struct CudaInfo {
    /// e.g. (13, 0).
    pub driver_version: (u32, u32),
    pub devices: Vec<DeviceInfo>,
}

/// A driver error for `op` as a kiln error.
pub(crate) fn driver_error(op: &'static str) -> impl Fn(DriverError) -> Error {
    move |e| {
        let name = e.error_name().map(|s| s.to_string_lossy().into_owned());
        let text = e.error_string().map(|s| s.to_string_lossy().into_owned());
        Error::Cuda {
            op,
            message: match (name, text) {
                (Ok(name), Ok(text)) => format!("{name}: {text}"),
                _ => format!("{:?}", e.0),
            },
        }
    }
}

/// An `UnsupportedDType` error for `op` unless `dtype` is a float (the kernels that compute
/// in a float math type have no integer instances).
pub(crate) fn float_only(op: &'static str, dtype: DType) -> Result<()> {
    if dtype.is_float() {
        Ok(())
    } else {
        Err(Error::UnsupportedDType { op, dtype })
    }
}

/// Both storages on one device, as every multi-input kernel needs.
pub(crate) fn same_device(op: &'static str, lhs: &CudaStorage, rhs: &CudaStorage) -> Result<()> {
    if lhs.device.ordinal() == rhs.device.ordinal() {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: Device::Cuda(lhs.device.ordinal()),
            rhs: Device::Cuda(rhs.device.ordinal()),
        })
    }
}

/// `other` of `first`'s dtype and on its device: operands of one kernel.
pub(crate) fn same_dtype_and_device(
    op: &'static str,
    first: &CudaStorage,
    other: &CudaStorage,
) -> Result<()> {
    if other.dtype != first.dtype {
        return Err(Error::DTypeMismatch {
            op,
            lhs: first.dtype,
            rhs: other.dtype,
        });
    }
    same_device(op, first, other)
}

/// The kernel-name suffix of float `dtype` (`f32`, ...), or [`float_only`]'s error.
pub(crate) fn float_kernel_suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    float_only(op, dtype)?;
    Ok(dtype.as_str())
}

fn unavailable(op: &'static str, device: Device, reason: impl Into<String>) -> Error {
    Error::DeviceUnavailable {
        op,
        device,
        reason: reason.into(),
    }
}

/// Loads libcuda and initialises the driver once per process; the error says why CUDA cannot
/// be used (no library, no driver, no device).
fn driver() -> std::result::Result<(), String> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // Safety: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err("the CUDA driver library (libcuda) was not found".into());
        }
        cudarc::driver::result::init().map_err(|e| {
            let text = e
                .error_string()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|_| format!("{:?}", e.0));
            format!("the CUDA driver failed to start: {text}")
        })
    })
    .clone()
}

/// How many CUDA devices the driver sees, or why CUDA cannot be used.
pub fn device_count() -> std::result::Result<usize, String> {
    driver()?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| format!("cuDeviceGetCount failed: {e:?}"))?;
    Ok(count.max(0) as usize)
}

/// Whether `Device::Cuda(0)` can be used, and if not, why.
pub fn availability() -> std::result::Result<(), String> {
    match device_count()? {
        0 => Err("the CUDA driver sees no devices".into()),
        _ => Ok(()),
    }
}

/// For test suites, in every crate: `cuda:0` when it can be used; otherwise `None` after
/// printing why `test` skipped, or, when `KILN_REQUIRE_CUDA=1` (a run on a GPU machine, where a
/// skip would hide a broken device), a panic that fails the test.
pub fn test_device(test: &str) -> Option<Device> {
    match availability() {
        Ok(()) => Some(Device::Cuda(0)),
        Err(reason) => {
            if std::env::var("KILN_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("{test}: KILN_REQUIRE_CUDA=1 but CUDA is unavailable: {reason}");
            }
            eprintln!("{test}: skipped: no CUDA device ({reason})");
            None
        }
    }
}

/// The driver version and every device's name, compute capability and memory.
pub fn info() -> std::result::Result<CudaInfo, String> {
    let count = device_count()?;
    let mut version = 0;
    // Safety: the driver library is loaded (device_count succeeded).
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|e| format!("cuDriverGetVersion failed: {e:?}"))?;
    let devices = (0..count)
        .map(|ordinal| {
            let device = device(ordinal).map_err(|e| e.to_string())?;
            Ok(DeviceInfo {
                ordinal,
                name: device
                    .context
                    .name()
                    .map_err(|e| format!("cuda:{ordinal}: {e:?}"))?,
                arch: device.arch,
                total_memory: device
                    .context
                    .total_mem()
                    .map_err(|e| format!("cuda:{ordinal}: {e:?}"))?,
                multiprocessors: device.multiprocessors,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(CudaInfo {
        driver_version: (version as u32 / 1000, (version as u32 % 1000) / 10),
        devices,
    })
}

/// How many times this thread has waited for a GPU (a readback or a `synchronize`): what a
/// test counts to show that a training step never waits.
pub fn host_waits() -> u64 {
    HOST_WAITS.with(|waits| waits.get())
}

thread_local! {
    static HOST_WAITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one wait of this thread for the GPU (see [`host_waits`]).
pub(crate) fn count_host_wait() {
    HOST_WAITS.with(|waits| waits.set(waits.get() + 1));
}

/// The device `cuda:ordinal`, set up on first use and shared after.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let which = Device::Cuda(ordinal);
    let count = device_count().map_err(|reason| unavailable("cuda", which, reason))?;
    if ordinal >= count {
        return Err(unavailable(
            "cuda",
            which,
            format!(
                "the CUDA driver sees {count} device(s), so the last is cuda:{}",
                { count.saturating_sub(1) }
            ),
        ));
    }
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(device) = devices.get(&ordinal) {
        return Ok(device.clone());
    }
    let device = Arc::new(CudaDevice::new(ordinal)?);
    devices.insert(ordinal, device.clone());
    Ok(device)
}

impl CudaDevice {
    fn new(ordinal: usize) -> Result<CudaDevice> {
        let err = driver_error("cuda device setup");
        let context = CudaContext::new(ordinal).map_err(&err)?;
        // One stream orders all of kiln's work on a device, so cudarc's per-buffer events
        // (which order buffers shared between streams) would be pure overhead.
        // Safety: no buffer exists on this context yet.
        unsafe { context.disable_event_tracking() };
        let stream = context.new_stream().map_err(&err)?;
        let (major, minor) = context.compute_capability().map_err(&err)?;
        let multiprocessors = context
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(&err)?;
        if context.has_async_alloc() {
            keep_freed_memory(&context).map_err(&err)?;
        }
        let faults = faults::IndexFaults::new(&stream)?;
        Ok(CudaDevice {
            faults: Mutex::new(faults),
            ordinal,
            context,
            stream,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
            },
            multiprocessors: multiprocessors as u32,
            modules: Mutex::default(),
            functions: Mutex::default(),
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for all work queued on the device; then reports an index out of range that a
    /// kernel found since the last readback (see `faults`).
    pub fn synchronize(&self) -> Result<()> {
        count_host_wait();
        self.stream
            .synchronize()
            .map_err(driver_error("synchronize"))?;
        self.take_index_fault()
    }

    /// Starts a launch whose kernel checks indices of `op` against `size` (see `faults`).
    pub(crate) fn checked_launch(
        &self,
        op: &'static str,
        dim: usize,
        size: usize,
    ) -> faults::CheckedLaunch<'_> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults::IndexFaults::begin(faults, op, dim, size)
    }

    /// The error of the first bad index a kernel found since the last readback, if any.
    pub(crate) fn take_index_fault(&self) -> Result<()> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.take(&self.stream)
    }

    /// `len` elements of `dtype`, uninitialised; every kernel writes all of its output.
    pub(crate) fn alloc(self: &Arc<Self>, dtype: DType, len: usize) -> Result<CudaStorage> {
        let bytes = len
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(|| Error::invalid("cuda alloc", format!("{len} elements overflow")))?;
        // Safety: the buffer is only read after a kernel or copy has written it. One byte at
        // least, so that an empty tensor still has a valid pointer to pass.
        let buffer: CudaSlice<u8> =
            unsafe { self.stream.alloc(bytes.max(1)) }.map_err(driver_error("cuda alloc"))?;
        Ok(CudaStorage::new(buffer, dtype, len, self.clone()))
    }

    /// A kernel of `source`, compiling (or reading from the disk cache) and loading the module
    /// on first use.
    pub(crate) fn function(
        &self,
        source: &'static registry::KernelSource,
        name: &str,
    ) -> Result<CudaFunction> {
        let key = (source.name, name.to_string());
        if let Some(function) = self
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(function.clone());
        }
        let module = self.module(source)?;
        let function = module.load_function(name).map_err(|e| Error::Cuda {
            op: "kernel lookup",
            message: format!("{}.cu has no kernel {name}: {e:?}", source.name),
        })?;
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, function.clone());
        Ok(function)
    }

    fn module(&self, source: &'static registry::KernelSource) -> Result<Arc<CudaModule>> {
        let mut modules = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = modules.get(source.name) {
            return Ok(module.clone());
        }
        let cubin = registry::cubin(source, self.arch)?;
        let module = self
            .context
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(driver_error("kernel load"))?;
        modules.insert(source.name, module.clone());
        Ok(module)
    }

    /// A 1-D launch over `n` elements for a grid-stride kernel: 256 threads a block, and no more
    /// blocks than make a few waves (more only add scheduling).
    pub(crate) fn launch_config_for(&self, n: usize) -> LaunchConfig {
        const THREADS: u32 = 256;
        let wanted = n.div_ceil(THREADS as usize).max(1);
        let cap = (self.multiprocessors.max(1) * 8) as usize;
        LaunchConfig {
            grid_dim: (wanted.min(cap) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Makes the device's default memory pool keep freed blocks instead of returning them to the
/// driver at each synchronisation, so stream-ordered allocation (`cuMemAllocAsync`) becomes a
/// caching allocator: a training step reuses the previous step's buffers.
fn keep_freed_memory(context: &Arc<CudaContext>) -> std::result::Result<(), DriverError> {
    let mut pool = std::ptr::null_mut();
    // Safety: plain driver calls on a live device; `threshold` outlives the call.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device()).result()?;
        let mut threshold = u64::MAX;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
    }
}

/// The most dims a kernel's layout argument holds, after merging.
pub(crate) const MAX_RANK: usize = 8;

/// A tensor layout as kernels take it (`struct Strided` in kernels/common.cuh, field for
/// field): passed by value, so a launch needs no extra copy.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StridedArg {
    rank: u32,
    contiguous: u32,
    offset: u64,
    dims: [u64; MAX_RANK],
    strides: [u64; MAX_RANK],
}

// Safety: plain old data with the C layout the kernels declare.
unsafe impl DeviceRepr for StridedArg {}

impl StridedArg {
    /// `layout` with size-1 dims dropped and dims that step contiguously into each other
    /// merged, so index arithmetic in the kernel does as few divisions as the layout allows.
    /// The row-major order of elements is unchanged.
    pub(crate) fn new(op: &'static str, layout: &Layout) -> Result<StridedArg> {
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(layout.dims().len());
        for (&dim, &stride) in layout.dims().iter().zip(layout.strides()) {
            if dim == 1 {
                continue;
            }
            match merged.last_mut() {
                Some((outer_dim, outer_stride)) if *outer_stride == stride * dim => {
                    *outer_dim *= dim;
                    *outer_stride = stride;
                }
                _ => merged.push((dim, stride)),
            }
        }
        if merged.len() > MAX_RANK {
            return Err(Error::invalid(
                op,
                format!(
                    "CUDA kernels take layouts of at most {MAX_RANK} non-mergeable dims, got {} ({:?} with strides {:?})",
                    merged.len(),
                    layout.dims(),
                    layout.strides()
                ),
            ));
        }
        let mut arg = StridedArg {
            rank: merged.len() as u32,
            contiguous: (merged.len() <= 1 && merged.first().is_none_or(|&(_, s)| s == 1)) as u32,
            offset: layout.offset() as u64,
            dims: [1; MAX_RANK],
            strides: [0; MAX_RANK],
        };
        for (d, (dim, stride)) in merged.into_iter().enumerate() {
            arg.dims[d] = dim as u64;
            arg.strides[d] = stride as u64;
        }
        Ok(arg)
    }

    /// As [`StridedArg::new`], after checking that every element `layout` reaches lies inside
    /// `storage` ([`check_inside`]), so that no kernel can read past a buffer whatever layout
    /// it is handed.
    pub(crate) fn for_storage(
        op: &'static str,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> Result<StridedArg> {
        check_inside(op, storage, layout)?;
        StridedArg::new(op, layout)
    }
}

/// Checks that every element `layout` reaches lies inside `storage`: every kernel argument
/// built from a caller's layout passes through here (or [`StridedArg::for_storage`]) before a
/// launch, so a bad layout is an error, never a read past a device buffer.
pub(crate) fn check_inside(op: &'static str, storage: &CudaStorage, layout: &Layout) -> Result<()> {
    if layout.elem_count() == 0 {
        return Ok(());
    }
    let last = layout
        .dims()
        .iter()
        .zip(layout.strides())
        .fold(layout.offset(), |end, (&dim, &stride)| {
            end.saturating_add((dim - 1).saturating_mul(stride))
        });
    if last >= storage.len {
        return Err(Error::invalid(
            op,
            format!(
                "layout {:?} with strides {:?} from offset {} reaches element {last} of a buffer of {} {} elements",
                layout.dims(),
                layout.strides(),
                layout.offset(),
                storage.len,
                storage.dtype
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ReduceOp;

    #[test]
    fn merging_keeps_row_major_order() -> Result<()> {
        // A contiguous [2, 3, 4] merges into one run of 24.
        let arg = StridedArg::new("t", &Layout::contiguous([2, 3, 4]))?;
        assert_eq!((arg.rank, arg.contiguous), (1, 1));
        assert_eq!((arg.dims[0], arg.strides[0]), (24, 1));
        // Its transpose of the last two dims cannot merge: dims [2, 4, 3] strides [12, 1, 4],
        // but the leading dim merges with nothing either.
        let t = Layout::contiguous([2, 3, 4]).permute(&[0, 2, 1])?;
        let arg = StridedArg::new("t", &t)?;
        assert_eq!(arg.rank, 3);
        assert_eq!(arg.contiguous, 0);
        assert_eq!(&arg.dims[..3], &[2, 4, 3]);
        assert_eq!(&arg.strides[..3], &[12, 1, 4]);
        // A broadcast row (stride 0) of [3, 4]: dims [3, 4] strides [0, 1].
        let b = Layout::contiguous([4]).broadcast_as(&[3, 4].into())?;
        let arg = StridedArg::new("t", &b)?;
        assert_eq!((arg.rank, arg.contiguous), (2, 0));
        assert_eq!(&arg.strides[..2], &[0, 1]);
        // Size-1 dims vanish; a narrowed view keeps its offset.
        let n = Layout::contiguous([1, 5, 1]).narrow(1, 2, 3)?;
        let arg = StridedArg::new("t", &n)?;
        assert_eq!((arg.rank, arg.contiguous, arg.offset), (1, 1, 2));
        Ok(())
    }

    #[test]
    fn layouts_past_their_buffer_are_errors() -> Result<()> {
        let Some(Device::Cuda(ordinal)) = test_device("layouts_past_their_buffer_are_errors")
        else {
            return Ok(());
        };
        let device = device(ordinal)?;
        // 6 elements, read as [2, 4]: the last element would be element 7.
        let data = device.alloc(DType::F32, 6)?;
        let past = Layout::contiguous([2, 4]);
        let index = device.alloc(DType::U32, 2)?;
        let index_layout = Layout::contiguous([2]);
        let three_indices = Layout::contiguous([3]);
        let inside = Layout::contiguous([2, 3]);
        let errors = [
            reduce::reduce(&data, &past, ReduceOp::Sum, &[1]).err(),
            reduce::softmax(&data, &past, 1, false).err(),
            index::cat(&[(&data, &past)], 0).err(),
            index::index_select(&data, &past, &index, &index_layout, 0).err(),
            index::index_select(&data, &inside, &index, &three_indices, 0).err(),
            index::index_add(&data, &inside, &index, &index_layout, &data, &past, 0).err(),
        ];
        for (case, error) in errors.into_iter().enumerate() {
            let message = error.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                message.contains("of a buffer of"),
                "case {case}: expected a bounds error, got {message:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn element_offsets_match_the_layout() -> Result<()> {
        // The kernel's strided_offset, written out in Rust, against Layout's own walk.
        fn offset(arg: &StridedArg, mut i: u64) -> u64 {
            if arg.contiguous == 1 {
                return arg.offset + i;
            }
            let mut offset = arg.offset;
            for d in (0..arg.rank as usize).rev() {
                offset += (i % arg.dims[d]) * arg.strides[d];
                i /= arg.dims[d];
            }
            offset
        }
        let layout = Layout::contiguous([3, 1, 4, 5])
            .permute(&[2, 1, 0, 3])?
            .narrow(0, 1, 2)?;
        let arg = StridedArg::new("t", &layout)?;
        let expected = crate::cpu::map1(&(0..60u32).collect::<Vec<_>>(), &layout, |x| x as u64);
        let got: Vec<u64> = (0..layout.elem_count() as u64)
            .map(|i| offset(&arg, i))
            .collect();
        assert_eq!(got, expected);
        Ok(())
    }
}
