//! kiln-nn: the layer library on top of kiln-tensor: named parameters ([`ParamStore`]),
//! layers, losses, initialisation, optimizers and safetensors checkpoints. Parameter names
//! follow PyTorch's `state_dict()` keys, so weights move between the two one to one.

pub mod checkpoint;
mod error;
pub mod init;
pub mod layers;
pub mod limits;
pub mod loss;
pub mod metrics;
mod module;
pub mod optim;
pub mod parallel;
pub mod schedule;
mod store;

pub use error::{NnError, Result};
pub use init::{Fan, Init, Nonlinearity};
pub use module::{Module, ModuleT};
pub use store::{Entry, Kind, ParamStore, Path};

/// The number of images in `images`, which must be `[N, *image]` (`image` = [C, H, W]) with
/// N ≥ 1; otherwise an error of `op` naming the shape expected and the one given.
pub fn image_count(
    op: &'static str,
    images: &kiln_tensor::Tensor,
    image: [usize; 3],
) -> Result<usize> {
    match images.dims() {
        [n, rest @ ..] if *n > 0 && rest == image => Ok(*n),
        _ => Err(NnError::invalid(
            op,
            format!(
                "expected images [N, {}, {}, {}], got {}",
                image[0],
                image[1],
                image[2],
                images.shape()
            ),
        )),
    }
}
