//! A lookup table of learned vectors (PyTorch's `nn.Embedding`), e.g. class embeddings of a
//! conditional generator.

use kiln_tensor::{DType, Tensor, Var};

use crate::{Init, Module, NnError, Path, Result};

/// `indices [*] (u32) → [*, dim]`: row `indices[i]` of `weight [num_embeddings, dim]`, which
/// is registered as `weight` and drawn from N(0, 1) as in PyTorch. An index past the table is
/// an error.
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Var,
}

impl Embedding {
    pub fn new(path: &Path, num_embeddings: usize, embedding_dim: usize) -> Result<Embedding> {
        let init = Init::Normal {
            mean: 0.0,
            std: 1.0,
        };
        Ok(Embedding {
            weight: path.parameter("weight", [num_embeddings, embedding_dim], init)?,
        })
    }

    /// `[num_embeddings, dim]`.
    pub fn weight(&self) -> &Var {
        &self.weight
    }
}

impl Module for Embedding {
    fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        if indices.dtype() != DType::U32 {
            return Err(NnError::invalid(
                "Embedding",
                format!("indices must be u32, got {}", indices.dtype()),
            ));
        }
        let dim = self.weight.dims()[1];
        let flat = indices.reshape([indices.elem_count()])?; // [n]
        let rows = self.weight.index_select(0, &flat)?; // [n, dim]
        let out_dims = [indices.dims(), &[dim]].concat();
        Ok(rows.reshape(out_dims)?) // [*, dim]
    }
}
