//! Layers: PyTorch's `torch.nn` building blocks written with kiln-tensor ops, so autograd (and
//! higher-order gradients) run through them unchanged. Each layer registers its tensors under
//! the [`Path`](crate::Path) it is built from, with PyTorch's names in PyTorch's order, so a
//! model's state dict has the keys of the equivalent PyTorch module's `state_dict()`.
//!
//! Parameterless layers (activations, reshapes, pooling, dropout) take no path, but a
//! [`Sequential`] still numbers them as PyTorch does: the second layer of a `main` sequence is
//! `main.1` whether or not it has weights, so build layer `i` from `main.sub(i)`.

mod activation;
mod conv;
mod dropout;
mod embedding;
mod linear;
mod norm;
mod pool;
mod reshape;
mod sequential;

pub use activation::{LeakyReLU, ReLU, SiLU, Sigmoid, Tanh};
pub use conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::{Linear, LinearConfig};
pub use norm::{
    batch_norm, group_norm, layer_norm, BatchNorm1d, BatchNorm2d, BatchNormConfig, GroupNorm,
    LayerNorm, LayerNormConfig, RunningStats,
};
pub use pool::{AvgPool2d, MaxPool2d, UpsampleNearest2d};
pub use reshape::{Flatten, Unflatten};
pub use sequential::Sequential;

/// `[.., 4, 5]`: the shape a layer expects, with `..` for any leading dims.
fn trailing(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[.., {}]", dims.join(", "))
}
