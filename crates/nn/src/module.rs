//! What a layer is to its callers: a function of a tensor. Layers whose behaviour depends on
//! training (batch norm, dropout) implement [`ModuleT`], which takes the mode explicitly; every
//! [`Module`] is a `ModuleT` that ignores it.

use kiln_tensor::{Activation, Tensor};

use crate::Result;

pub trait Module {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// The elementwise activation this layer is, if it is one (ReLU, leaky ReLU, tanh,
    /// sigmoid): a [`Sequential`](crate::layers::Sequential) hands it to the layer before it.
    fn activation(&self) -> Option<Activation> {
        None
    }

    /// `activation(self.forward(x))` in one op, for a layer that can apply an activation as
    /// it writes its output (the convolutions); `None` where it cannot, and the activation
    /// then runs as a layer of its own. Same values and gradients either way.
    fn forward_activated(&self, _x: &Tensor, _activation: Activation) -> Option<Result<Tensor>> {
        None
    }
}

pub trait ModuleT {
    /// `train` selects training behaviour: batch statistics and running-statistic updates in
    /// batch norm, dropping in dropout.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;

    /// See [`Module::activation`].
    fn activation(&self) -> Option<Activation> {
        None
    }

    /// See [`Module::forward_activated`]; `train` as for [`ModuleT::forward_t`].
    fn forward_t_activated(
        &self,
        _x: &Tensor,
        _train: bool,
        _activation: Activation,
    ) -> Option<Result<Tensor>> {
        None
    }
}

impl<M: Module + ?Sized> ModuleT for M {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.forward(x)
    }

    fn activation(&self) -> Option<Activation> {
        Module::activation(self)
    }

    fn forward_t_activated(
        &self,
        x: &Tensor,
        _train: bool,
        activation: Activation,
    ) -> Option<Result<Tensor>> {
        self.forward_activated(x, activation)
    }
}
