//! Weight initialisation: the distributions PyTorch's `torch.nn.init` draws from, with the same
//! fan and gain conventions, so a model ported from PyTorch starts from the same distributions.

use kiln_tensor::{no_grad, DType, Device, Generator, Shape, Tensor};

use crate::Result;

/// Which fan scales a Kaiming initialisation: `In` keeps forward activations' variance,
/// `Out` keeps backward gradients'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fan {
    In,
    Out,
}

/// The nonlinearity a layer feeds, for the recommended gain (`torch.nn.init.calculate_gain`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nonlinearity {
    Linear,
    Sigmoid,
    Tanh,
    Relu,
    LeakyRelu(f64),
}

impl Nonlinearity {
    pub fn gain(self) -> f64 {
        match self {
            Nonlinearity::Linear | Nonlinearity::Sigmoid => 1.0,
            Nonlinearity::Tanh => 5.0 / 3.0,
            Nonlinearity::Relu => 2f64.sqrt(),
            Nonlinearity::LeakyRelu(slope) => (2.0 / (1.0 + slope * slope)).sqrt(),
        }
    }
}

/// A distribution to draw a new tensor from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Constant(f64),
    Uniform {
        low: f64,
        high: f64,
    },
    Normal {
        mean: f64,
        std: f64,
    },
    /// U(-b, b) with b = gain·√(6 / (fan_in + fan_out)).
    XavierUniform {
        gain: f64,
    },
    /// N(0, σ²) with σ = gain·√(2 / (fan_in + fan_out)).
    XavierNormal {
        gain: f64,
    },
    /// U(-b, b) with b = gain·√(3 / fan).
    KaimingUniform {
        fan: Fan,
        gain: f64,
    },
    /// N(0, σ²) with σ = gain / √fan.
    KaimingNormal {
        fan: Fan,
        gain: f64,
    },
}

impl Init {
    /// PyTorch's default for the weights of `Linear`, `Conv2d` and `ConvTranspose2d`:
    /// `kaiming_uniform_(a=√5)`, which is U(-1/√fan_in, 1/√fan_in).
    pub const PYTORCH_WEIGHT: Init = Init::KaimingUniform {
        fan: Fan::In,
        // Nonlinearity::LeakyRelu(√5).gain() = √(2 / 6).
        gain: 0.577_350_269_189_625_8,
    };

    /// DCGAN's initialisation: N(0, 0.02²).
    pub const DCGAN: Init = Init::Normal {
        mean: 0.0,
        std: 0.02,
    };

    /// PyTorch's default for biases: U(-1/√fan_in, 1/√fan_in), where `fan_in` is the fan-in of
    /// the layer's weight (not of the bias).
    pub fn pytorch_bias(fan_in: usize) -> Init {
        let bound = if fan_in == 0 {
            0.0
        } else {
            1.0 / (fan_in as f64).sqrt()
        };
        Init::Uniform {
            low: -bound,
            high: bound,
        }
    }

    /// A tensor of `shape` drawn from this distribution.
    pub fn sample(
        &self,
        shape: &Shape,
        dtype: DType,
        device: Device,
        generator: &mut Generator,
    ) -> Result<Tensor> {
        let uniform = |generator: &mut Generator, low: f64, high: f64| -> Result<Tensor> {
            let unit = Tensor::rand(shape.clone(), dtype, device, generator)?;
            Ok(no_grad(|| unit.affine(high - low, low))?)
        };
        let normal = |generator: &mut Generator, mean: f64, std: f64| -> Result<Tensor> {
            Ok(Tensor::randn(
                shape.clone(),
                mean,
                std,
                dtype,
                device,
                generator,
            )?)
        };
        let (fan_in, fan_out) = fans(shape);
        match *self {
            Init::Constant(value) => Ok(Tensor::full(value, shape.clone(), dtype, device)?),
            Init::Uniform { low, high } => uniform(generator, low, high),
            Init::Normal { mean, std } => normal(generator, mean, std),
            Init::XavierUniform { gain } => {
                let bound = gain * (6.0 / (fan_in + fan_out) as f64).sqrt();
                uniform(generator, -bound, bound)
            }
            Init::XavierNormal { gain } => {
                let std = gain * (2.0 / (fan_in + fan_out) as f64).sqrt();
                normal(generator, 0.0, std)
            }
            Init::KaimingUniform { fan, gain } => {
                let bound = gain * (3.0 / pick(fan, fan_in, fan_out) as f64).sqrt();
                uniform(generator, -bound, bound)
            }
            Init::KaimingNormal { fan, gain } => {
                let std = gain / (pick(fan, fan_in, fan_out) as f64).sqrt();
                normal(generator, 0.0, std)
            }
        }
    }
}

fn pick(fan: Fan, fan_in: usize, fan_out: usize) -> usize {
    match fan {
        Fan::In => fan_in,
        Fan::Out => fan_out,
    }
}

/// PyTorch's `_calculate_fan_in_and_fan_out`: dim 1 times the receptive field is the fan-in,
/// dim 0 times it the fan-out (so for a `ConvTranspose2d` weight `[in, out, kh, kw]` the
/// "fan-in" is `out·kh·kw`, as in PyTorch). A 1-D shape has fan-in = fan-out = its length.
pub fn fans(shape: &Shape) -> (usize, usize) {
    let dims = shape.dims();
    match dims.len() {
        0 => (1, 1),
        1 => (dims[0], dims[0]),
        _ => {
            let receptive: usize = dims[2..].iter().product();
            (dims[1] * receptive, dims[0] * receptive)
        }
    }
}
