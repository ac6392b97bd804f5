//! Elementwise activations as modules, for [`Sequential`](super::Sequential) models; outside one,
//! call the tensor methods (`x.relu()`) directly. Each keeps its input's shape.

use kiln_tensor::{Activation, Tensor};

use crate::{Module, Result};

/// max(x, 0) (PyTorch's `nn.ReLU`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReLU;

impl Module for ReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
    }

    fn activation(&self) -> Option<Activation> {
        Some(Activation::Relu)
    }
}

/// x for x > 0, `negative_slope`·x otherwise (PyTorch's `nn.LeakyReLU`; default slope 0.01).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeakyReLU {
    pub negative_slope: f64,
}

impl LeakyReLU {
    pub fn new(negative_slope: f64) -> Self {
        LeakyReLU { negative_slope }
    }
}

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU::new(0.01)
    }
}

impl Module for LeakyReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.leaky_relu(self.negative_slope)?)
    }

    /// Fused only with a slope of at least 0 (the fused backward takes the mask from the
    /// output); any other slope runs as a layer of its own.
    fn activation(&self) -> Option<Activation> {
        (self.negative_slope >= 0.0).then_some(Activation::LeakyRelu(self.negative_slope))
    }
}

/// tanh(x) (PyTorch's `nn.Tanh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tanh;

impl Module for Tanh {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.tanh()?)
    }

    fn activation(&self) -> Option<Activation> {
        Some(Activation::Tanh)
    }
}

/// 1 / (1 + e^-x) (PyTorch's `nn.Sigmoid`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sigmoid;

impl Module for Sigmoid {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.sigmoid()?)
    }

    fn activation(&self) -> Option<Activation> {
        Some(Activation::Sigmoid)
    }
}

/// x·sigmoid(x) (PyTorch's `nn.SiLU`, also called swish).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SiLU;

impl Module for SiLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.silu()?)
    }
}
