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
    /// Each layer in turn; a layer followed by an activation layer runs the two as one op
    /// where it can ([`ModuleT::forward_t_activated`]: a convolution adds its bias and applies
    /// the activation to each image as it writes it), with the same values and gradients.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            let activation = layers.peek().and_then(|next| next.activation());
            let fused = activation.and_then(|a| layer.forward_t_activated(&y, train, a));
            y = match fused {
                Some(fused) => {
                    layers.next(); // the activation, applied
                    fused?
                }
                None => layer.forward_t(&y, train)?,
            };
        }
        Ok(y)
    }
}
