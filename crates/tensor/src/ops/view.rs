//! View ops: new layouts over the same storage (reshape of contiguous data, permute,
//! broadcast, narrow, squeeze/unsqueeze), plus `contiguous`/`copy`, and their backward rules.

use crate::op::Op;
use crate::{Device, Error, Result, Shape, Tensor};

impl Tensor {
    /// The same elements in `shape`. A view when the data is contiguous; otherwise the data
    /// is first copied into row-major order (like `torch.reshape`).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.checked_elem_count("reshape", 1)? != self.elem_count() {
            return Err(Error::invalid(
                "reshape",
                format!(
                    "cannot reshape {} ({} elements) into {shape} ({} elements)",
                    self.shape(),
                    self.elem_count(),
                    shape.elem_count()
                ),
            ));
        }
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let source = self.contiguous()?;
        let layout = source
            .layout()
            .reshape(&shape)
            .expect("contiguous with the same element count");
        let record = Tensor::record(&[&source], || Op::Reshape(source.clone()));
        Ok(source.view(layout, record))
    }

    /// Reorders dims: dim `i` of the result is dim `perm[i]` of `self`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        let layout = self.layout().permute(perm)?;
        let record = Tensor::record(&[self], || Op::Permute(self.clone(), perm.to_vec()));
        Ok(self.view(layout, record))
    }

    /// Swaps two dims.
    pub fn transpose(&self, dim0: usize, dim1: usize) -> Result<Tensor> {
        self.check_dim("transpose", dim0)?;
        self.check_dim("transpose", dim1)?;
        let mut perm: Vec<usize> = (0..self.rank()).collect();
        perm.swap(dim0, dim1);
        self.permute(&perm)
    }

    /// The transpose of the last two dims (a matrix, or each matrix of a batch).
    pub fn t(&self) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::invalid(
                "t",
                format!("needs at least 2 dims, got shape {}", self.shape()),
            ));
        }
        self.transpose(self.rank() - 2, self.rank() - 1)
    }

    /// A view repeating dims of size 1 and adding leading dims to reach `shape` (NumPy rules).
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape == *self.shape() {
            return Ok(self.clone());
        }
        let layout = self.layout().broadcast_as(&shape)?;
        let record = Tensor::record(&[self], || Op::Broadcast(self.clone()));
        Ok(self.view(layout, record))
    }

    /// Elements `start..start + len` along `dim`.
    pub fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Tensor> {
        let layout = self.layout().narrow(dim, start, len)?;
        let record = Tensor::record(&[self], || Op::Narrow(self.clone(), dim, start));
        Ok(self.view(layout, record))
    }

    /// Removes `dim`, which must have size 1 (a view, whatever the strides).
    pub fn squeeze(&self, dim: usize) -> Result<Tensor> {
        if self.shape().dim("squeeze", dim)? != 1 {
            return Err(Error::invalid(
                "squeeze",
                format!("dim {dim} of shape {} is not of size 1", self.shape()),
            ));
        }
        let record = Tensor::record(&[self], || Op::Reshape(self.clone()));
        Ok(self.view(self.layout().squeeze(dim), record))
    }

    /// Inserts a dim of size 1 at `dim` (0..=rank) (a view, whatever the strides).
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim,
                shape: self.shape().clone(),
            });
        }
        let record = Tensor::record(&[self], || Op::Reshape(self.clone()));
        Ok(self.view(self.layout().unsqueeze(dim), record))
    }

    /// This tensor if its data is already row-major, otherwise a row-major copy.
    pub fn contiguous(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            Ok(self.clone())
        } else {
            self.copy()
        }
    }

    /// A row-major copy in fresh storage.
    pub fn copy(&self) -> Result<Tensor> {
        let storage = self.storage().copy_strided(self.layout())?;
        let record = Tensor::record(&[self], || Op::Copy(self.clone()));
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }

    /// The same values on `device` (a contiguous copy; the tensor itself when it is already
    /// there). Differentiable: the gradient is moved back. Reading a CUDA tensor back waits for
    /// the work that makes it.
    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        let source = if self.is_contiguous() && self.layout().offset() == 0 {
            self.storage().to_device(device)?
        } else {
            self.storage()
                .copy_strided(self.layout())?
                .to_device(device)?
        };
        let record = Tensor::record(&[self], || Op::ToDevice(self.clone()));
        Ok(Tensor::from_storage(source, self.shape().clone(), record))
    }

    /// Sums a broadcast result back to `shape` (the gradient of `broadcast_as`).
    pub(crate) fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        let extra = self.rank() - shape.rank();
        let dims: Vec<usize> = (0..self.rank())
            .filter(|&d| d < extra || (shape.dims()[d - extra] == 1 && self.dims()[d] != 1))
            .collect();
        self.sum(&dims, true)?.reshape(shape)
    }
}

/// The gradient of `narrow(dim, start, len)`: `grad` put back in place, zeros around it.
pub(crate) fn narrow_backward(
    x: &Tensor,
    dim: usize,
    start: usize,
    grad: &Tensor,
) -> Result<Tensor> {
    let size = x.dims()[dim];
    let len = grad.dims()[dim];
    let zeros = |n: usize| {
        let mut dims = x.dims().to_vec();
        dims[dim] = n;
        Tensor::zeros(dims, grad.dtype(), grad.device())
    };
    let mut parts = Vec::with_capacity(3);
    if start > 0 {
        parts.push(zeros(start)?);
    }
    parts.push(grad.clone());
    if start + len < size {
        parts.push(zeros(size - start - len)?);
    }
    Tensor::cat(&parts.iter().collect::<Vec<_>>(), dim)
}

/// The permutation that undoes `perm`.
pub(crate) fn inverse_permutation(perm: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; perm.len()];
    for (i, &d) in perm.iter().enumerate() {
        inverse[d] = i;
    }
    inverse
}
