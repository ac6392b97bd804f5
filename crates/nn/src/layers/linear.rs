//! The fully connected layer, y = x·Wᵀ + b over the last dim (PyTorch's `nn.Linear`).

use kiln_tensor::{Activation, Tensor, Var};

use super::trailing;
use crate::init::fans;
use crate::{Init, Module, NnError, Path, Result};

/// How a [`Linear`] layer's tensors are made. The default is PyTorch's: a bias, weights drawn
/// from [`Init::PYTORCH_WEIGHT`] and biases from [`Init::pytorch_bias`] of the fan-in, both
/// U(-1/√in, 1/√in).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearConfig {
    pub bias: bool,
    pub weight_init: Init,
    /// `None`: PyTorch's default, U(-1/√fan_in, 1/√fan_in) with the weight's fan-in.
    pub bias_init: Option<Init>,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            bias: true,
            weight_init: Init::PYTORCH_WEIGHT,
            bias_init: None,
        }
    }
}

impl LinearConfig {
    /// DCGAN's initialisation: weights N(0, 0.02²), zero biases.
    pub fn dcgan() -> Self {
        LinearConfig {
            bias: true,
            weight_init: Init::DCGAN,
            bias_init: Some(Init::Constant(0.0)),
        }
    }
}

/// `x [.., in] → x·Wᵀ + b [.., out]` with `weight [out, in]` and `bias [out]`, registered as
/// `weight` then `bias`. A 1-D input `[in]` gives `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// A layer with PyTorch's default initialisation.
    pub fn new(path: &Path, in_features: usize, out_features: usize) -> Result<Linear> {
        Linear::with_config(path, in_features, out_features, LinearConfig::default())
    }

    pub fn with_config(
        path: &Path,
        in_features: usize,
        out_features: usize,
        config: LinearConfig,
    ) -> Result<Linear> {
        let weight_shape = [out_features, in_features].into();
        let (fan_in, _) = fans(&weight_shape);
        let weight = path.parameter("weight", weight_shape, config.weight_init)?;
        let bias = if config.bias {
            let init = config
                .bias_init
                .unwrap_or_else(|| Init::pytorch_bias(fan_in));
            Some(path.parameter("bias", [out_features], init)?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// `[out, in]`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (out_features, in_features) = (self.weight.dims()[0], self.weight.dims()[1]);
        if x.dims().last() != Some(&in_features) {
            return Err(NnError::invalid(
                "Linear",
                format!(
                    "expected input {}, got {}",
                    trailing(&[in_features]),
                    x.shape()
                ),
            ));
        }
        let leading = &x.dims()[..x.rank() - 1];
        let rows = leading.iter().product::<usize>();
        let out_dims = [leading, &[out_features]].concat();
        // One matrix product for all leading dims, the bias added as it is stored (one kernel
        // launch on CUDA).
        let x = x.reshape([rows, in_features])?; // [rows, in]
        let bias = self.bias.as_ref().map(|b| b.as_tensor());
        let y = x.matmul_bias_act(&self.weight.t()?, bias, Activation::Identity)?; // [rows, out]
        Ok(y.reshape(out_dims)?) // [.., out]
    }
}
