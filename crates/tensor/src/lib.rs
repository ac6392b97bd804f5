//! kiln-tensor: kiln's n-dimensional arrays, their CPU kernels and reverse-mode autograd.
//!
//! A [`Tensor`] is an immutable handle (an `Arc`) to storage plus a [`Layout`]; views share
//! storage. Ops on tracked tensors remember how they were made, and [`Tensor::backward`] on a
//! scalar returns the gradients of the leaves under it. Backward rules are written with
//! tensor ops, so [`Tensor::backward_with_graph`] gives gradients that can be differentiated
//! again. Errors are values ([`Error`]) naming the shapes, dtypes or devices at fault.
//!
//! ```
//! use kiln_tensor::{Device, Tensor, Var};
//! # fn main() -> kiln_tensor::Result<()> {
//! let x = Var::new(&Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3], Device::Cpu)?)?;
//! let y = x.powf(3.0)?.sum_all()?; // sum(x^3)
//! let grads = y.backward()?;
//! assert_eq!(grads.get(&x).unwrap().to_vec::<f64>()?, vec![3.0, 12.0, 27.0]); // 3x^2
//! # Ok(())
//! # }
//! ```

mod backend;
mod backprop;
pub mod cpu;
pub mod cuda;
mod device;
mod dtype;
mod error;
pub mod gradcheck;
pub mod info;
mod layout;
mod op;
mod ops;
pub mod rng;
mod shape;
mod storage;
mod tensor;

pub use backend::{BackendStorage, Operand};
pub use backprop::Gradients;
pub use device::Device;
pub use dtype::{DType, FloatDType, WithDType};
pub use error::{Error, Result};
pub use layout::Layout;
pub use op::{Activation, BinaryOp, CmpOp, ReduceOp, UnaryOp};
pub use ops::conv::{Conv2dGeometry, Conv2dOptions, ConvTranspose2dOptions, Pool2dOptions};
pub use ops::custom::CustomBackward;
pub use ops::matmul::{matmul_precision, set_matmul_precision, MatmulPrecision};
pub use ops::optim::{AdamStep, AdamUpdate};
pub use rng::Generator;
pub use shape::Shape;
pub use storage::{download, upload, Storage};
pub use tensor::{is_grad_enabled, no_grad, NoGradGuard, Tensor, TensorId, Var};

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
