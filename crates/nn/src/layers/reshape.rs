//! Reshaping modules (PyTorch's `nn.Flatten` and `nn.Unflatten`), for the seams of
//! [`Sequential`](super::Sequential) models between convolutional and dense parts. Dims may be
//! negative, counting from the end as in PyTorch.

use kiln_tensor::Tensor;

use crate::{Module, NnError, Result};

/// `dim` as an index into `rank` dims (negative counts from the end), or `None` if outside.
fn resolve(dim: isize, rank: usize) -> Option<usize> {
    let resolved = if dim < 0 {
        rank.checked_sub(dim.unsigned_abs())?
    } else {
        dim as usize
    };
    (resolved < rank).then_some(resolved)
}

/// Merges dims `start_dim..=end_dim` into one: `[N, C, H, W] → [N, C·H·W]` with the default
/// (`start_dim` 1, `end_dim` -1, PyTorch's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flatten {
    pub start_dim: isize,
    pub end_dim: isize,
}

impl Flatten {
    pub fn new(start_dim: isize, end_dim: isize) -> Flatten {
        Flatten { start_dim, end_dim }
    }
}

impl Default for Flatten {
    fn default() -> Self {
        Flatten::new(1, -1)
    }
}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let range = resolve(self.start_dim, x.rank()).zip(resolve(self.end_dim, x.rank()));
        let Some((start, end)) = range.filter(|(start, end)| start <= end) else {
            return Err(NnError::invalid(
                "Flatten",
                format!(
                    "cannot flatten dims {} to {} of {}",
                    self.start_dim,
                    self.end_dim,
                    x.shape()
                ),
            ));
        };
        let dims = x.dims();
        let merged: usize = dims[start..=end].iter().product();
        let out_dims = [&dims[..start], &[merged], &dims[end + 1..]].concat();
        Ok(x.reshape(out_dims)?)
    }
}

/// Splits dim `dim` into `sizes`, whose product must be its size: `[N, 128·7·7] → [N, 128, 7,
/// 7]` with `Unflatten::new(1, vec![128, 7, 7])`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unflatten {
    pub dim: isize,
    pub sizes: Vec<usize>,
}

impl Unflatten {
    pub fn new(dim: isize, sizes: Vec<usize>) -> Unflatten {
        Unflatten { dim, sizes }
    }
}

impl Module for Unflatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dim = resolve(self.dim, x.rank())
            .filter(|&dim| x.dims()[dim] == self.sizes.iter().product::<usize>());
        let Some(dim) = dim else {
            return Err(NnError::invalid(
                "Unflatten",
                format!(
                    "cannot split dim {} of {} into {:?}",
                    self.dim,
                    x.shape(),
                    self.sizes
                ),
            ));
        };
        let dims = x.dims();
        let out_dims = [&dims[..dim], &self.sizes, &dims[dim + 1..]].concat();
        Ok(x.reshape(out_dims)?)
    }
}
