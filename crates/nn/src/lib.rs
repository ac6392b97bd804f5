//! kiln-nn: the layer library on top of kiln-tensor: named parameters ([`ParamStore`]),
//! layers, losses, initialisation, optimizers and safetensors checkpoints. Parameter names
//! follow PyTorch's `state_dict()` keys, so weights move between the two one to one.

pub mod checkpoint;
mod error;
pub mod init;
pub mod layers;
pub mod loss;
mod module;
pub mod optim;
pub mod schedule;
mod store;

pub use error::{NnError, Result};
pub use init::{Fan, Init, Nonlinearity};
pub use module::{Module, ModuleT};
pub use store::{Entry, Kind, ParamStore, Path};
