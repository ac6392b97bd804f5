//! Dropout with its own seeded generator, so a training run's masks are reproducible and a
//! checkpoint can resume the stream where it stopped.

use std::sync::{Mutex, MutexGuard};

use kiln_tensor::{DType, Generator, Tensor};

use crate::{ModuleT, NnError, Result};

/// In training, each element of `x` (any shape) is zeroed with probability `p` and the kept
/// ones are scaled by 1/(1 - p), so the expected value is unchanged (PyTorch's `nn.Dropout`);
/// in evaluation, the identity. The keep-mask is `u ≥ p` for uniforms `u` drawn from the
/// layer's Philox generator (in f64 for f64 inputs, else in f32), so a seed fixes the masks,
/// though not PyTorch's (its generator differs).
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    generator: Mutex<Generator>,
}

impl Dropout {
    /// `p` must be in [0, 1], as in PyTorch. `seed` starts the layer's generator.
    pub fn new(p: f64, seed: u64) -> Result<Dropout> {
        if !(0.0..=1.0).contains(&p) {
            return Err(NnError::invalid(
                "Dropout",
                format!("the drop probability must be in [0, 1], got {p}"),
            ));
        }
        Ok(Dropout {
            p,
            generator: Mutex::new(Generator::new(seed)),
        })
    }

    pub fn p(&self) -> f64 {
        self.p
    }

    fn lock(&self) -> MutexGuard<'_, Generator> {
        // A poisoned lock means a panic mid-draw; the generator's state is still valid.
        self.generator.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seed of the mask stream.
    pub fn seed(&self) -> u64 {
        self.lock().seed()
    }

    /// Where in the stream the next mask starts (what a checkpoint saves).
    pub fn offset(&self) -> u64 {
        self.lock().offset()
    }

    /// Moves the stream to `offset` (what restoring a checkpoint does).
    pub fn set_offset(&self, offset: u64) {
        self.lock().set_offset(offset);
    }

    /// A copy of the generator: its seed and offset.
    pub fn generator(&self) -> Generator {
        self.lock().clone()
    }

    /// Replaces the generator, seed and offset both (e.g. with one saved from another run).
    pub fn set_generator(&self, generator: Generator) {
        *self.lock() = generator;
    }
}

impl ModuleT for Dropout {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if !train || self.p == 0.0 {
            return Ok(x.clone());
        }
        if self.p == 1.0 {
            // Everything dropped; multiplying (rather than making zeros) keeps the graph, and
            // NaNs, as PyTorch does.
            return Ok(x.mul_scalar(0.0)?);
        }
        let draw_dtype = if x.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let uniforms = Tensor::rand(x.shape(), draw_dtype, x.device(), &mut self.lock())?;
        let scale = uniforms
            .ge(&uniforms.scalar_like(self.p)?)? // u8 keep-mask, same shape as x
            .to_dtype(x.dtype())?
            .mul_scalar(1.0 / (1.0 - self.p))?; // 1/(1-p) where kept, 0 where dropped
        Ok(x.mul(&scale)?)
    }
}
