//! `CudaStorage`: a tensor's elements in device memory, and the backend trait implemented over
//! the kernels of the sibling modules (one module per kernel file, each function's CPU
//! reference named in its docs).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::{
    conv, driver_error, elementwise, index, loss, matmul, norm, optim, pool, reduce, CudaDevice,
};
use crate::backend::{BackendStorage, Operand};
use crate::{
    Activation, AdamStep, BinaryOp, CmpOp, Conv2dGeometry, DType, Device, Layout, ReduceOp, Result,
    UnaryOp, WithDType,
};

/// `len` elements of `dtype` in one device buffer (untyped: kernels know the element type from
/// their name), ordered on the device's stream.
pub struct CudaStorage {
    pub(crate) buffer: CudaSlice<u8>,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
    pub(crate) device: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaStorage({:?}, {} x {})",
            self.device, self.len, self.dtype
        )
    }
}

/// The bytes of a slice of plain numbers.
fn as_bytes<T: WithDType>(data: &[T]) -> &[u8] {
    // Safety: every WithDType is a plain number type without padding or invalid bit patterns.
    unsafe { std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data)) }
}

impl CudaStorage {
    pub(crate) fn new(
        buffer: CudaSlice<u8>,
        dtype: DType,
        len: usize,
        device: Arc<CudaDevice>,
    ) -> CudaStorage {
        CudaStorage {
            buffer,
            dtype,
            len,
            device,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn cuda_device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// A device copy of host elements (queued on the stream; the host data is copied out before
    /// this returns).
    pub fn from_host<T: WithDType>(device: &Arc<CudaDevice>, data: &[T]) -> Result<CudaStorage> {
        let mut storage = device.alloc(T::DTYPE, data.len())?;
        if !data.is_empty() {
            let bytes = as_bytes(data);
            let mut target = storage.buffer.slice_mut(..bytes.len());
            device
                .stream()
                .memcpy_htod(bytes, &mut target)
                .map_err(driver_error("to_device"))?;
        }
        Ok(storage)
    }

    /// The elements copied back to the host as `T`, which must be the storage's dtype (waits
    /// for the work that makes them). An index out of range found by a kernel since the last
    /// readback is reported now.
    pub fn to_host<T: WithDType>(&self) -> Result<Vec<T>> {
        if T::DTYPE != self.dtype {
            return Err(crate::Error::DTypeMismatch {
                op: "to_host",
                lhs: self.dtype,
                rhs: T::DTYPE,
            });
        }
        let mut data = vec![T::default(); self.len];
        if self.len > 0 {
            // Safety: as `as_bytes`; the buffer holds `len` elements of T.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(
                    data.as_mut_ptr() as *mut u8,
                    self.len * std::mem::size_of::<T>(),
                )
            };
            let source = self.buffer.slice(..bytes.len());
            let stream = self.device.stream();
            stream
                .memcpy_dtoh(&source, bytes)
                .map_err(driver_error("to_device"))?;
            super::count_host_wait();
            stream.synchronize().map_err(driver_error("to_device"))?;
        }
        self.device.take_index_fault()?;
        Ok(data)
    }

    /// Every element `value` rounded to `dtype` (as the host's fill rounds it).
    pub fn full(
        device: &Arc<CudaDevice>,
        value: f64,
        len: usize,
        dtype: DType,
    ) -> Result<CudaStorage> {
        elementwise::fill(device, value, len, dtype)
    }

    /// A device copy of these elements (the same values in a new buffer).
    pub fn try_clone(&self) -> Result<CudaStorage> {
        elementwise::copy_strided(self, &Layout::contiguous([self.len]))
    }
}

impl BackendStorage for CudaStorage {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device(&self) -> Device {
        Device::Cuda(self.device.ordinal())
    }

    fn copy_strided(&self, layout: &Layout) -> Result<Self> {
        elementwise::copy_strided(self, layout)
    }

    fn to_dtype(&self, layout: &Layout, dtype: DType) -> Result<Self> {
        elementwise::to_dtype(self, layout, dtype)
    }

    fn unary(&self, layout: &Layout, op: UnaryOp) -> Result<Self> {
        elementwise::unary(self, layout, op)
    }

    fn binary(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        op: BinaryOp,
    ) -> Result<Self> {
        elementwise::binary(self, layout, rhs, rhs_layout, op)
    }

    fn compare(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        op: CmpOp,
    ) -> Result<Self> {
        elementwise::compare(self, layout, rhs, rhs_layout, op)
    }

    fn where_cond(
        &self,
        layout: &Layout,
        Operand {
            storage: on_true,
            layout: true_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: on_false,
            layout: false_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        elementwise::where_cond(self, layout, on_true, true_layout, on_false, false_layout)
    }

    fn reduce(&self, layout: &Layout, op: ReduceOp, dims: &[usize]) -> Result<Self> {
        reduce::reduce(self, layout, op, dims)
    }

    fn softmax(&self, layout: &Layout, dim: usize, log: bool) -> Result<Self> {
        reduce::softmax(self, layout, dim, log)
    }

    fn matmul(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        matmul::matmul(self, layout, rhs, rhs_layout)
    }

    fn matmul_bias_act(
        &self,
        layout: &Layout,
        Operand {
            storage: rhs,
            layout: rhs_layout,
        }: Operand<'_, Self>,
        bias: Option<Operand<'_, Self>>,
        activation: Activation,
    ) -> Result<Self> {
        let bias = bias.map(|b| (b.storage, b.layout));
        matmul::matmul_bias_act(self, layout, rhs, rhs_layout, bias, activation)
    }

    fn im2col(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        conv::im2col(self, layout, g)
    }

    fn col2im(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        conv::col2im(self, layout, g)
    }

    fn cat(parts: &[Operand<'_, Self>], dim: usize) -> Result<Self> {
        index::cat(&pairs(parts), dim)
    }

    fn index_select(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        index::index_select(self, layout, index, index_layout, dim)
    }

    fn index_add(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: source,
            layout: source_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        index::index_add(
            self,
            layout,
            index,
            index_layout,
            source,
            source_layout,
            dim,
        )
    }

    fn gather(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        index::gather(self, layout, index, index_layout, dim)
    }

    fn scatter_add(
        &self,
        layout: &Layout,
        Operand {
            storage: index,
            layout: index_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: source,
            layout: source_layout,
        }: Operand<'_, Self>,
        dim: usize,
    ) -> Result<Self> {
        index::scatter_add(
            self,
            layout,
            index,
            index_layout,
            source,
            source_layout,
            dim,
        )
    }

    fn adam_step(
        &self,
        layout: &Layout,
        Operand {
            storage: grad,
            layout: grad_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: exp_avg,
            layout: exp_avg_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: exp_avg_sq,
            layout: exp_avg_sq_layout,
        }: Operand<'_, Self>,
        step: &AdamStep,
    ) -> Result<(Self, Self, Self)> {
        let entry = [
            (self, layout),
            (grad, grad_layout),
            (exp_avg, exp_avg_layout),
            (exp_avg_sq, exp_avg_sq_layout),
        ];
        let mut updated = optim::adam_step_many(&[entry], step)?;
        Ok(updated.remove(0))
    }

    fn adam_step_many(
        entries: &[[Operand<'_, Self>; 4]],
        step: &AdamStep,
    ) -> Result<Vec<(Self, Self, Self)>> {
        let entries: Vec<[(&Self, &Layout); 4]> = entries
            .iter()
            .map(|entry| (*entry).map(|x| (x.storage, x.layout)))
            .collect();
        optim::adam_step_many(&entries, step)
    }

    fn sum_of_squares_many(tensors: &[Operand<'_, Self>]) -> Result<Self> {
        optim::sum_of_squares_many(&pairs(tensors))
    }

    fn max_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<(Self, Self)> {
        pool::max_pool2d(self, layout, g)
    }

    fn max_pool2d_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: indices,
            layout: indices_layout,
        }: Operand<'_, Self>,
        g: &Conv2dGeometry,
    ) -> Result<Self> {
        pool::max_pool2d_backward(self, layout, indices, indices_layout, g)
    }

    fn avg_pool2d(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        pool::avg_pool2d(self, layout, g)
    }

    fn avg_pool2d_backward(&self, layout: &Layout, g: &Conv2dGeometry) -> Result<Self> {
        pool::avg_pool2d_backward(self, layout, g)
    }

    fn upsample_nearest2d(
        &self,
        layout: &Layout,
        out_height: usize,
        out_width: usize,
    ) -> Result<Self> {
        pool::upsample_nearest2d(self, layout, out_height, out_width)
    }

    fn upsample_nearest2d_backward(
        &self,
        layout: &Layout,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        pool::upsample_nearest2d_backward(self, layout, height, width)
    }

    fn batch_norm_stats(&self, layout: &Layout) -> Result<(Self, Self)> {
        norm::batch_norm_stats(self, layout)
    }

    fn batch_norm_forward(
        &self,
        layout: &Layout,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
        bias: Option<&Self>,
    ) -> Result<Self> {
        norm::batch_norm_forward(self, layout, mean, invstd, weight, bias)
    }

    fn batch_norm_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: x,
            layout: x_layout,
        }: Operand<'_, Self>,
        mean: &Self,
        invstd: &Self,
        weight: Option<&Self>,
    ) -> Result<(Self, Self, Self)> {
        norm::batch_norm_backward((self, layout), (x, x_layout), mean, invstd, weight)
    }

    fn bce_with_logits(
        &self,
        layout: &Layout,
        Operand {
            storage: targets,
            layout: targets_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        loss::bce_with_logits((self, layout), (targets, targets_layout))
    }

    fn bce_with_logits_backward(
        &self,
        layout: &Layout,
        Operand {
            storage: targets,
            layout: targets_layout,
        }: Operand<'_, Self>,
        Operand {
            storage: grad,
            layout: grad_layout,
        }: Operand<'_, Self>,
    ) -> Result<Self> {
        loss::bce_with_logits_backward(
            (self, layout),
            (targets, targets_layout),
            (grad, grad_layout),
        )
    }
}

/// Operands as the (storage, layout) pairs the kernel modules take.
fn pairs<'a>(operands: &[Operand<'a, CudaStorage>]) -> Vec<(&'a CudaStorage, &'a Layout)> {
    operands.iter().map(|x| (x.storage, x.layout)).collect()
}
