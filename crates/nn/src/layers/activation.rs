//! Elementwise activations as modules, for [`Sequential`](super::Sequential) models; outside one,
//! call the tensor methods (`x.relu()`) directly. Each keeps its input's shape.

use kiln_tensor::Tensor;

use crate::{Module, Result};

/// max(x, 0) (PyTorch's `nn.ReLU`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReLU;

impl Module for ReLU {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.relu()?)
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
}

/// tanh(x) (PyTorch's `nn.Tanh`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tanh;

impl Module for Tanh {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.tanh()?)
    }
}

/// 1 / (1 + e^-x) (PyTorch's `nn.Sigmoid`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sigmoid;

impl Module for Sigmoid {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.sigmoid()?)
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
