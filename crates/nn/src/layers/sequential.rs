//! A chain of layers applied in order (PyTorch's `nn.Sequential`).

use kiln_tensor::Tensor;

use crate::{ModuleT, Result};

/// Applies its layers in the order they were added, passing the training flag to each; the
/// output shape is the last layer's. It names nothing itself: to get PyTorch's keys
/// (`main.0.weight`, `main.2.weight`), build layer `i` from `path.sub("main").sub(i)`, counting
/// parameterless layers too.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn ModuleT + Send + Sync>>,
}

impl Sequential {
    pub fn new() -> Sequential {
        Sequential::default()
    }

    /// This sequence with `layer` appended. (A builder, as candle's `seq().add(..)`, not
    /// `std::ops::Add`.)
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl ModuleT + Send + Sync + 'static) -> Sequential {
        self.layers.push(Box::new(layer));
        self
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl std::fmt::Debug for Sequential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sequential({} layers)", self.layers.len())
    }
}

impl ModuleT for Sequential {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward_t(&y, train)?;
        }
        Ok(y)
    }
}
