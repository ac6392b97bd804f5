//! Reductions (sum, mean, max over chosen dims) and softmax/log-softmax, with backward rules.

use crate::op::{CmpOp, Op, ReduceOp};
use crate::{Error, Result, Tensor};

impl Tensor {
    /// Sorted, distinct, in-range reduction dims.
    fn reduction_dims(&self, op: &'static str, dims: &[usize]) -> Result<Vec<usize>> {
        let mut sorted = dims.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != dims.len() {
            return Err(Error::invalid(op, format!("dims {dims:?} repeat a dim")));
        }
        for &dim in &sorted {
            self.check_dim(op, dim)?;
        }
        Ok(sorted)
    }

    fn reduce(
        &self,
        op: ReduceOp,
        name: &'static str,
        dims: &[usize],
        keepdim: bool,
    ) -> Result<Tensor> {
        self.float_only(name)?;
        let dims = self.reduction_dims(name, dims)?;
        if op == ReduceOp::Max && dims.iter().any(|&d| self.dims()[d] == 0) {
            return Err(Error::invalid(
                name,
                format!("cannot take the max over an empty dim of {}", self.shape()),
            ));
        }
        let storage = self.storage().reduce(self.layout(), op, &dims)?;
        let mut kept = self.dims().to_vec();
        for &d in &dims {
            kept[d] = 1;
        }
        let record = Tensor::record(&[self], || Op::Reduce(self.clone(), op, dims.clone()));
        let reduced = Tensor::from_storage(storage, kept.into(), record);
        if keepdim {
            return Ok(reduced);
        }
        let squeezed: Vec<usize> = (0..self.rank())
            .filter(|d| !dims.contains(d))
            .map(|d| self.dims()[d])
            .collect();
        reduced.reshape(squeezed)
    }

    /// Sum over `dims`; with `keepdim` they stay as dims of size 1.
    pub fn sum(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Sum, "sum", dims, keepdim)
    }

    /// Mean over `dims`.
    pub fn mean(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        let count: usize = self
            .reduction_dims("mean", dims)?
            .iter()
            .map(|&d| self.dims()[d])
            .product();
        self.sum(dims, keepdim)?.mul_scalar(1.0 / count as f64)
    }

    /// Max over `dims`. Its gradient is shared evenly among tied maxima (like `torch.amax`).
    pub fn max(&self, dims: &[usize], keepdim: bool) -> Result<Tensor> {
        self.reduce(ReduceOp::Max, "max", dims, keepdim)
    }

    fn all_dims(&self) -> Vec<usize> {
        (0..self.rank()).collect()
    }

    /// Sum of every element, as a rank-0 tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.sum(&self.all_dims(), false)
    }

    pub fn mean_all(&self) -> Result<Tensor> {
        self.mean(&self.all_dims(), false)
    }

    pub fn max_all(&self) -> Result<Tensor> {
        self.max(&self.all_dims(), false)
    }

    fn softmax_op(&self, dim: usize, log: bool) -> Result<Tensor> {
        let name = if log { "log_softmax" } else { "softmax" };
        self.float_only(name)?;
        self.check_dim(name, dim)?;
        let storage = self.storage().softmax(self.layout(), dim, log)?;
        let record = Tensor::record(&[self], || {
            if log {
                Op::LogSoftmax(self.clone(), dim)
            } else {
                Op::Softmax(self.clone(), dim)
            }
        });
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }

    /// e^x / sum(e^x) along `dim`, computed with the max subtracted so it cannot overflow.
    pub fn softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_op(dim, false)
    }

    /// x - log(sum(e^x)) along `dim`, stable for large |x|.
    pub fn log_softmax(&self, dim: usize) -> Result<Tensor> {
        self.softmax_op(dim, true)
    }
}

/// The gradient of a keepdim reduction `y` of `x` over `dims`.
pub(crate) fn reduce_backward(
    x: &Tensor,
    op: ReduceOp,
    dims: &[usize],
    y: &Tensor,
    grad: &Tensor,
) -> Result<Tensor> {
    let grad = grad.broadcast_as(x.shape())?;
    match op {
        ReduceOp::Sum => Ok(grad),
        ReduceOp::Max => {
            // 1 where x attains the max; ties split the gradient evenly.
            let is_max = x
                .detach()
                .compare(&y.detach().broadcast_as(x.shape())?, CmpOp::Eq)?
                .to_dtype(x.dtype())?;
            let ties = is_max.sum(dims, true)?;
            grad.mul(&is_max.div(&ties)?)
        }
    }
}

/// The gradient of softmax (`log == false`) or log-softmax along `dim`, given the output `y`.
pub(crate) fn softmax_backward(y: &Tensor, dim: usize, log: bool, grad: &Tensor) -> Result<Tensor> {
    if log {
        // dx = g - softmax(x) * sum(g)
        grad.sub(&y.exp()?.mul(&grad.sum(&[dim], true)?)?)
    } else {
        // dx = y * (g - sum(g * y))
        y.mul(&grad.sub(&grad.mul(y)?.sum(&[dim], true)?)?)
    }
}
