//! Joining and indexing: cat/stack, index_select/index_add, gather/scatter_add, with backward
//! rules. Index tensors are `u32`; an index past the end of its dim is an error.

use crate::backend::Operand;
use crate::op::Op;
use crate::storage::Storage;
use crate::{DType, Error, Result, Tensor};

impl Tensor {
    /// Joins `tensors` along `dim`; all other dims must agree.
    pub fn cat(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("cat", "needs at least one tensor"))?;
        first.check_dim("cat", dim)?;
        for t in &tensors[1..] {
            first.same_dtype("cat", t)?;
            let agrees = t.rank() == first.rank()
                && (0..first.rank()).all(|d| d == dim || t.dims()[d] == first.dims()[d]);
            if !agrees {
                return Err(Error::invalid(
                    "cat",
                    format!(
                        "shapes {} and {} differ outside dim {dim}",
                        first.shape(),
                        t.shape()
                    ),
                ));
            }
        }
        let guards: Vec<_> = tensors.iter().map(|t| t.storage()).collect();
        let parts: Vec<Operand<Storage>> = guards
            .iter()
            .zip(tensors)
            .map(|(guard, t)| Operand::new(&**guard, t.layout()))
            .collect();
        let storage = Storage::cat(&parts, dim)?;
        let mut dims = first.dims().to_vec();
        dims[dim] = tensors.iter().map(|t| t.dims()[dim]).sum();
        let record = Tensor::record(tensors, || {
            Op::Cat(tensors.iter().map(|&t| t.clone()).collect(), dim)
        });
        Ok(Tensor::from_storage(storage, dims.into(), record))
    }

    /// Stacks same-shaped tensors along a new dim `dim`.
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let first = *tensors
            .first()
            .ok_or_else(|| Error::invalid("stack", "needs at least one tensor"))?;
        if let Some(other) = tensors.iter().find(|t| t.shape() != first.shape()) {
            return Err(Error::invalid(
                "stack",
                format!("shapes differ: {} and {}", first.shape(), other.shape()),
            ));
        }
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&expanded.iter().collect::<Vec<_>>(), dim)
    }

    fn check_index(&self, op: &'static str, index: &Tensor) -> Result<()> {
        if index.dtype() != DType::U32 {
            return Err(Error::invalid(
                op,
                format!("indices must be u32, got {}", index.dtype()),
            ));
        }
        self.same_device(op, index)
    }

    /// The slices `index[j]` along `dim`: the result has `index.len()` in place of dim `dim`.
    pub fn index_select(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        self.check_index("index_select", index)?;
        self.check_dim("index_select", dim)?;
        if index.rank() != 1 {
            return Err(Error::invalid(
                "index_select",
                format!("index must be 1-D, got shape {}", index.shape()),
            ));
        }
        let storage = self.storage().index_select(
            self.layout(),
            Operand::new(&index.storage(), index.layout()),
            dim,
        )?;
        let mut dims = self.dims().to_vec();
        dims[dim] = index.elem_count();
        let record = Tensor::record(&[self], || {
            Op::IndexSelect(self.clone(), index.clone(), dim)
        });
        Ok(Tensor::from_storage(storage, dims.into(), record))
    }

    /// `self` with slice `j` of `source` added to slice `index[j]` along `dim` (repeated
    /// indices accumulate), like `torch.index_add`.
    pub fn index_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        self.check_index("index_add", index)?;
        self.same_dtype("index_add", source)?;
        self.check_dim("index_add", dim)?;
        let mut expected = self.dims().to_vec();
        expected[dim] = index.elem_count();
        if index.rank() != 1 || source.dims() != expected.as_slice() {
            return Err(Error::invalid(
                "index_add",
                format!(
                    "index {} and source {} do not fit {} along dim {dim}: expected a 1-D index and source {:?}",
                    index.shape(),
                    source.shape(),
                    self.shape(),
                    expected
                ),
            ));
        }
        let storage = self.storage().index_add(
            self.layout(),
            Operand::new(&index.storage(), index.layout()),
            Operand::new(&source.storage(), source.layout()),
            dim,
        )?;
        let record = Tensor::record(&[self, source], || {
            Op::IndexAdd(self.clone(), index.clone(), source.clone(), dim)
        });
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }

    /// Checks an index of the same rank as `self`, no larger outside `dim` (gather/scatter).
    fn check_gather_index(&self, op: &'static str, dim: usize, index: &Tensor) -> Result<()> {
        self.check_index(op, index)?;
        self.check_dim(op, dim)?;
        let fits = index.rank() == self.rank()
            && (0..self.rank()).all(|d| d == dim || index.dims()[d] <= self.dims()[d]);
        if !fits {
            return Err(Error::invalid(
                op,
                format!(
                    "index of shape {} does not fit input {} (same rank, no larger outside dim {dim})",
                    index.shape(),
                    self.shape()
                ),
            ));
        }
        Ok(())
    }

    /// `out[i][j] = self[i][index[i][j]]` for `dim == 1` (and so on for any dim), like
    /// `torch.gather`. The result has the index's shape.
    pub fn gather(&self, dim: usize, index: &Tensor) -> Result<Tensor> {
        self.check_gather_index("gather", dim, index)?;
        let storage = self.storage().gather(
            self.layout(),
            Operand::new(&index.storage(), index.layout()),
            dim,
        )?;
        let record = Tensor::record(&[self], || Op::Gather(self.clone(), index.clone(), dim));
        Ok(Tensor::from_storage(storage, index.shape().clone(), record))
    }

    /// `self` with `source[i][j]` added at `[i][index[i][j]]` for `dim == 1`, like
    /// `torch.scatter_add`; `source` has the index's shape.
    pub fn scatter_add(&self, dim: usize, index: &Tensor, source: &Tensor) -> Result<Tensor> {
        self.check_gather_index("scatter_add", dim, index)?;
        self.same_dtype("scatter_add", source)?;
        if source.shape() != index.shape() {
            return Err(Error::ShapeMismatch {
                op: "scatter_add",
                expected: index.shape().clone(),
                got: source.shape().clone(),
            });
        }
        let storage = self.storage().scatter_add(
            self.layout(),
            Operand::new(&index.storage(), index.layout()),
            Operand::new(&source.storage(), source.layout()),
            dim,
        )?;
        let record = Tensor::record(&[self, source], || {
            Op::ScatterAdd(self.clone(), index.clone(), source.clone(), dim)
        });
        Ok(Tensor::from_storage(storage, self.shape().clone(), record))
    }
}

/// Gradients of `cat(parts, dim)`: the matching slice of `grad` for each part.
pub(crate) fn cat_backward(parts: &[Tensor], dim: usize, grad: &Tensor) -> Result<Vec<Tensor>> {
    let mut start = 0;
    parts
        .iter()
        .map(|part| {
            let len = part.dims()[dim];
            start += len;
            grad.narrow(dim, start - len, len)
        })
        .collect()
}
