//! `Tensor`: a cheap, immutable handle to storage plus a layout, which remembers the op that
//! made it when autograd is tracking. Also the no-grad scope and `Var`, the one kind of
//! tensor whose storage may change in place (what optimizers update).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::cpu::CpuStorage;
use crate::op::Op;
use crate::rng::Generator;
use crate::storage::{Draw, HostElements, Storage};
use crate::{DType, Device, Error, Layout, Result, Shape, WithDType};

/// A process-unique tensor identity, the key of a `Gradients` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// An n-dimensional array. Cloning is an `Arc` clone; views share storage.
#[derive(Clone)]
pub struct Tensor(Arc<TensorInner>);

pub(crate) struct TensorInner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    /// The op that made this tensor, kept only when an input was tracked and grad was enabled.
    op: Option<Op>,
    /// A leaf whose gradient `backward` reports: a `Var`, or a tensor from `track()`.
    requires_grad: bool,
}

impl Drop for TensorInner {
    /// Frees the history under this tensor with a loop instead of recursion: a graph
    /// thousands of ops deep (a sampling loop run with grad on) would otherwise overflow the
    /// stack as each record dropped the next. Inputs that other handles still hold are left
    /// alone.
    fn drop(&mut self) {
        let mut pending: Vec<Op> = self.op.take().into_iter().collect();
        while let Some(op) = pending.pop() {
            let inputs: Vec<Tensor> = op.inputs().into_iter().cloned().collect();
            drop(op);
            for input in inputs {
                if let Ok(mut last_handle) = Arc::try_unwrap(input.0) {
                    pending.extend(last_handle.op.take());
                }
            }
        }
    }
}

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Whether ops on this thread record themselves for autograd.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(Cell::get)
}

/// Turns op recording off on this thread until dropped (then restores what was there).
pub struct NoGradGuard {
    previous: bool,
}

impl NoGradGuard {
    pub fn new() -> Self {
        NoGradGuard {
            previous: GRAD_ENABLED.with(|g| g.replace(false)),
        }
    }
}

impl Default for NoGradGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.previous));
    }
}

/// Runs `f` with op recording off: what it computes has no history (like `torch.no_grad()`).
pub fn no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _guard = NoGradGuard::new();
    f()
}

impl Tensor {
    fn from_parts(storage: Arc<RwLock<Storage>>, layout: Layout, op: Option<Op>) -> Tensor {
        let (dtype, device) = {
            let s = storage.read().unwrap_or_else(|e| e.into_inner());
            (s.dtype(), s.device())
        };
        Tensor(Arc::new(TensorInner {
            id: TensorId::new(),
            storage,
            layout,
            dtype,
            device,
            op,
            requires_grad: false,
        }))
    }

    /// A new tensor over fresh contiguous `storage` of `shape`.
    pub(crate) fn from_storage(storage: Storage, shape: Shape, op: Option<Op>) -> Tensor {
        Tensor::from_parts(
            Arc::new(RwLock::new(storage)),
            Layout::contiguous(shape),
            op,
        )
    }

    /// A view: the same storage under `layout`.
    pub(crate) fn view(&self, layout: Layout, op: Option<Op>) -> Tensor {
        Tensor::from_parts(self.0.storage.clone(), layout, op)
    }

    /// The op record for a result of `inputs`, made only if autograd should track it.
    pub(crate) fn record(inputs: &[&Tensor], make: impl FnOnce() -> Op) -> Option<Op> {
        (is_grad_enabled() && inputs.iter().any(|t| t.is_tracked())).then(make)
    }

    pub(crate) fn storage(&self) -> RwLockReadGuard<'_, Storage> {
        // A poisoned lock means a panic elsewhere mid-write; the data is still the data.
        self.0.storage.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The storage, locked for writing: what an in-place update writes through. Every handle
    /// on the storage (views included) sees what is written.
    pub(crate) fn storage_mut(&self) -> RwLockWriteGuard<'_, Storage> {
        self.0.storage.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the tensor is its whole storage, in row-major order from its start.
    pub(crate) fn covers_storage(&self) -> bool {
        self.layout()
            .contiguous_range()
            .is_some_and(|range| range.start == 0 && self.storage().len() == range.end)
    }

    /// Whether this is the only handle on the tensor and on its storage, which it covers
    /// ([`Tensor::covers_storage`]): values nothing else can see, free to change in place.
    pub(crate) fn is_sole_owner(&self) -> bool {
        Arc::strong_count(&self.0) == 1
            && Arc::strong_count(&self.0.storage) == 1
            && self.covers_storage()
    }

    /// Whether `self` and `other` are views of one storage.
    pub(crate) fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    pub(crate) fn op(&self) -> Option<&Op> {
        self.0.op.as_ref()
    }

    // ---- constructors ----

    /// A tensor of `shape` holding `data` in row-major order.
    pub fn from_vec<T: WithDType>(
        data: Vec<T>,
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Storage::check_device("from_vec", device)?;
        if data.len() != shape.checked_elem_count("from_vec", 1)? {
            return Err(Error::invalid(
                "from_vec",
                format!(
                    "{} values cannot fill shape {shape} ({} elements)",
                    data.len(),
                    shape.elem_count()
                ),
            ));
        }
        let storage = Storage::from_host("from_vec", CpuStorage::from_vec(data), device)?;
        Ok(Tensor::from_storage(storage, shape, None))
    }

    pub fn from_slice<T: WithDType>(
        data: &[T],
        shape: impl Into<Shape>,
        device: Device,
    ) -> Result<Tensor> {
        Tensor::from_vec(data.to_vec(), shape, device)
    }

    /// A rank-0 tensor.
    pub fn scalar<T: WithDType>(value: T, device: Device) -> Result<Tensor> {
        Tensor::from_vec(vec![value], Shape::scalar(), device)
    }

    /// Every element `value` (rounded to `dtype`).
    pub fn full(
        value: f64,
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Storage::check_device("full", device)?;
        let len = shape.checked_elem_count("full", dtype.size_in_bytes())?;
        let storage = Storage::full("full", value, len, dtype, device)?;
        Ok(Tensor::from_storage(storage, shape, None))
    }

    pub fn zeros(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(0.0, shape, dtype, device)
    }

    pub fn ones(shape: impl Into<Shape>, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::full(1.0, shape, dtype, device)
    }

    pub fn zeros_like(&self) -> Result<Tensor> {
        Tensor::zeros(self.shape(), self.dtype(), self.device())
    }

    pub fn ones_like(&self) -> Result<Tensor> {
        Tensor::ones(self.shape(), self.dtype(), self.device())
    }

    /// A rank-0 tensor of `value` with this tensor's dtype and device (for scalar operands).
    pub fn scalar_like(&self, value: f64) -> Result<Tensor> {
        Tensor::full(value, Shape::scalar(), self.dtype(), self.device())
    }

    /// 0, 1, ..., n - 1.
    pub fn arange(n: usize, dtype: DType, device: Device) -> Result<Tensor> {
        Tensor::from_vec((0..n).map(|i| i as f64).collect(), [n], device)?.to_dtype(dtype)
    }

    /// Uniform samples in [0, 1) from `generator`'s Philox stream (f16/bf16 are drawn as f32
    /// and rounded).
    pub fn rand(
        shape: impl Into<Shape>,
        dtype: DType,
        device: Device,
        generator: &mut Generator,
    ) -> Result<Tensor> {
        Tensor::random(
            "rand",
            Draw::Uniform,
            shape.into(),
            dtype,
            device,
            generator,
        )
    }

    /// Normal samples with `mean` and `std` from `generator`'s Philox stream.
    pub fn randn(
        shape: impl Into<Shape>,
        mean: f64,
        std: f64,
        dtype: DType,
        device: Device,
        generator: &mut Generator,
    ) -> Result<Tensor> {
        let draw = Draw::Normal { mean, std };
        Tensor::random("randn", draw, shape.into(), dtype, device, generator)
    }

    /// `shape` filled by `draw` from `generator`'s stream, which moves past the words used.
    fn random(
        op: &'static str,
        draw: Draw,
        shape: Shape,
        dtype: DType,
        device: Device,
        generator: &mut Generator,
    ) -> Result<Tensor> {
        Storage::check_device(op, device)?;
        let n = shape.checked_elem_count(op, 8)?;
        if !dtype.is_float() {
            return Err(Error::UnsupportedDType { op, dtype });
        }
        let offset = generator.advance_for(draw.distribution(), dtype, n);
        let storage = Storage::random(op, draw, n, dtype, (generator.seed(), offset), device)?;
        Ok(Tensor::from_storage(storage, shape, None))
    }

    // ---- accessors ----

    pub fn id(&self) -> TensorId {
        self.0.id
    }

    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }

    pub fn shape(&self) -> &Shape {
        self.0.layout.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.0.layout.dims()
    }

    pub fn rank(&self) -> usize {
        self.dims().len()
    }

    pub fn elem_count(&self) -> usize {
        self.0.layout.elem_count()
    }

    pub fn dtype(&self) -> DType {
        self.0.dtype
    }

    pub fn device(&self) -> Device {
        self.0.device
    }

    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }

    /// Whether autograd follows this tensor: a leaf that requires grad, or the result of an
    /// op on such tensors made while grad was enabled.
    pub fn is_tracked(&self) -> bool {
        self.0.requires_grad || self.0.op.is_some()
    }

    /// A leaf whose gradient `backward` reports.
    pub fn requires_grad(&self) -> bool {
        self.0.requires_grad
    }

    /// Whether two tensors read the same storage (one is a view of the other, or both are).
    pub fn shares_storage_with(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    // ---- readback ----

    /// The elements in row-major order; `T` must be the tensor's dtype.
    pub fn to_vec<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::DTypeMismatch {
                op: "to_vec",
                lhs: self.dtype(),
                rhs: T::DTYPE,
            });
        }
        let storage = self.storage();
        let expect = "dtype checked against the storage above";
        Ok(match storage.host_elements(self.layout())? {
            HostElements::Compact(host) => {
                host.as_slice::<T>().expect(expect)[..self.elem_count()].to_vec()
            }
            HostElements::InPlace(cpu) => {
                let data = cpu.as_slice::<T>().expect(expect);
                match self.layout().contiguous_range() {
                    Some(range) => data[range].to_vec(),
                    None => crate::cpu::map1(data, self.layout(), |x| x),
                }
            }
        })
    }

    /// The value of a one-element tensor.
    pub fn to_scalar<T: WithDType>(&self) -> Result<T> {
        if self.elem_count() != 1 {
            return Err(Error::invalid(
                "to_scalar",
                format!("needs a single element, got shape {}", self.shape()),
            ));
        }
        Ok(self.to_vec::<T>()?[0])
    }

    /// The value of a one-element tensor of any dtype, as f64 (a loss to log, say).
    pub fn to_f64(&self) -> Result<f64> {
        self.to_dtype(DType::F64)?.to_scalar::<f64>()
    }

    // ---- history ----

    /// The same values with no history: gradients do not flow through it.
    pub fn detach(&self) -> Tensor {
        self.view(self.layout().clone(), None)
    }

    /// A new leaf over the same values whose gradient `backward` will report (like
    /// `x.detach().requires_grad_()` in PyTorch). WGAN-GP uses it on the interpolated images.
    pub fn track(&self) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op: "track",
                dtype: self.dtype(),
            });
        }
        let mut inner = Tensor::from_parts(self.0.storage.clone(), self.layout().clone(), None);
        Arc::get_mut(&mut inner.0)
            .expect("a tensor just made has one handle")
            .requires_grad = true;
        Ok(inner)
    }

    // ---- checks shared by the ops ----

    pub(crate) fn same_device(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.device() != other.device() {
            return Err(Error::DeviceMismatch {
                op,
                lhs: self.device(),
                rhs: other.device(),
            });
        }
        Ok(())
    }

    pub(crate) fn same_dtype(&self, op: &'static str, other: &Tensor) -> Result<()> {
        if self.dtype() != other.dtype() {
            return Err(Error::DTypeMismatch {
                op,
                lhs: self.dtype(),
                rhs: other.dtype(),
            });
        }
        self.same_device(op, other)
    }

    pub(crate) fn float_only(&self, op: &'static str) -> Result<()> {
        if !self.dtype().is_float() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: self.dtype(),
            });
        }
        Ok(())
    }

    pub(crate) fn check_dim(&self, op: &'static str, dim: usize) -> Result<()> {
        self.shape().dim(op, dim).map(|_| ())
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{}; {}, {}{}]",
            self.shape(),
            self.dtype(),
            self.device(),
            if self.is_tracked() { ", tracked" } else { "" }
        )
    }
}

/// A trainable parameter: a contiguous tensor that requires grad and whose storage an
/// optimizer updates in place with `set`. Every handle to it (and every view of it) sees the
/// new values; results computed before the update keep the values they were computed from.
#[derive(Clone, Debug)]
pub struct Var(Tensor);

impl Var {
    /// A variable holding a contiguous copy of `initial`'s values.
    pub fn new(initial: &Tensor) -> Result<Var> {
        initial.float_only("Var::new")?;
        let values = no_grad(|| initial.copy())?;
        Ok(Var(values.track()?))
    }

    pub fn as_tensor(&self) -> &Tensor {
        &self.0
    }

    /// Overwrites the values in place with `values` (same shape and dtype).
    pub fn set(&self, values: &Tensor) -> Result<()> {
        if values.shape() != self.0.shape() {
            return Err(Error::ShapeMismatch {
                op: "Var::set",
                expected: self.0.shape().clone(),
                got: values.shape().clone(),
            });
        }
        self.0.same_dtype("Var::set", values)?;
        // Copy first: `values` may be a view of this very variable, and holding its read lock
        // while taking the write lock would deadlock.
        let fresh = values.storage().copy_strided(values.layout())?;
        *self.0.storage_mut() = fresh;
        Ok(())
    }

    /// [`Var::set`] from a tensor given up: when nothing else holds its storage and it covers
    /// that storage exactly in row-major order (an optimizer's freshly computed update), the
    /// storage itself moves into the variable, with no copy; otherwise as `set`. The copy was
    /// 4% of an MLP GAN training step on the CPU (every parameter, every step).
    pub fn set_owned(&self, values: Tensor) -> Result<()> {
        if !values.is_sole_owner()
            || values.shape() != self.0.shape()
            || values.dtype() != self.0.dtype()
        {
            return self.set(&values);
        }
        // Neither lock can be held elsewhere: `values` is the only handle on its storage, and
        // it is not this variable's (its storage is its own).
        let mut source = values.storage_mut();
        let mut target = self.0.storage_mut();
        std::mem::swap(&mut *source, &mut *target);
        Ok(())
    }
}

impl std::ops::Deref for Var {
    type Target = Tensor;

    fn deref(&self) -> &Tensor {
        &self.0
    }
}
