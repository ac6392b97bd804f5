//! What a layer is to its callers: a function of a tensor. Layers whose behaviour depends on
//! training (batch norm, dropout) implement [`ModuleT`], which takes the mode explicitly; every
//! [`Module`] is a `ModuleT` that ignores it.

use kiln_tensor::Tensor;

use crate::Result;

pub trait Module {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

pub trait ModuleT {
    /// `train` selects training behaviour: batch statistics and running-statistic updates in
    /// batch norm, dropping in dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
}

impl<M: Module + ?Sized> ModuleT for M {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(x)
    }
}
