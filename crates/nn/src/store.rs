//! Named parameters and buffers. A model's layers register their tensors in a [`ParamStore`]
//! under dotted names built from [`Path`]s (`main.0.weight`, `bn1.running_mean`), in the order
//! PyTorch registers them, so a kiln state dict and the equivalent PyTorch module's
//! `state_dict()` have the same keys and the weights map one to one.
//!
//! The store also owns the generator that initialises the weights, so one seed gives one model.

use std::sync::{Arc, Mutex, MutexGuard};

use kiln_tensor::{no_grad, DType, Device, Generator, Shape, Tensor, Var};

use crate::init::Init;
use crate::{NnError, Result};

/// What an entry is to the optimizer: parameters are trained, buffers (running statistics)
/// are state that forward passes update and checkpoints keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Parameter,
    Buffer,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub var: Var,
    pub kind: Kind,
}

struct Inner {
    entries: Vec<Entry>,
    generator: Generator,
}

/// A shared, ordered collection of named variables (a cheap handle: clones share it).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    dtype: DType,
}

impl ParamStore {
    /// An empty store whose parameters are created with `dtype` on `device`, initialised from
    /// the Philox stream of `seed`.
    pub fn new(device: Device, dtype: DType, seed: u64) -> ParamStore {
        ParamStore {
            inner: Arc::new(Mutex::new(Inner {
                entries: Vec::new(),
                generator: Generator::new(seed),
            })),
            device,
            dtype,
        }
    }

    /// The path with no prefix: names registered through it are used as they are.
    pub fn root(&self) -> Path {
        Path {
            store: self.clone(),
            prefix: String::new(),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every entry, in registration order.
    pub fn entries(&self) -> Vec<Entry> {
        self.lock().entries.clone()
    }

    /// The trainable parameters with their names, in registration order.
    pub fn parameters(&self) -> Vec<(String, Var)> {
        self.of_kind(Kind::Parameter)
    }

    /// The buffers (running statistics) with their names, in registration order.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.of_kind(Kind::Buffer)
    }

    fn of_kind(&self, kind: Kind) -> Vec<(String, Var)> {
        self.lock()
            .entries
            .iter()
            .filter(|entry| entry.kind == kind)
            .map(|entry| (entry.name.clone(), entry.var.clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock()
            .entries
            .iter()
            .find(|entry| entry.name == name)
            .map(|entry| entry.var.clone())
    }

    /// The number of trainable scalars.
    pub fn num_parameters(&self) -> usize {
        self.parameters()
            .iter()
            .map(|(_, var)| var.elem_count())
            .sum()
    }

    /// Parameters and buffers by name, in registration order: what PyTorch's `state_dict()`
    /// returns for the same module structure.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.lock()
            .entries
            .iter()
            .map(|entry| (entry.name.clone(), entry.var.as_tensor().detach()))
            .collect()
    }

    /// Overwrites every entry with the tensor of the same name in `state`. Every name must be
    /// present with the entry's shape and dtype, and `state` must hold nothing else; the first
    /// difference is the error (named after `context`, e.g. the checkpoint's path), and on an
    /// error nothing is changed.
    pub fn load_state_dict(&self, state: &[(String, Tensor)], context: &str) -> Result<()> {
        let inner = self.lock();
        let mut updates = Vec::with_capacity(inner.entries.len());
        for entry in &inner.entries {
            let Some((_, value)) = state.iter().find(|(name, _)| *name == entry.name) else {
                return Err(NnError::mismatch(
                    context,
                    format!(
                        "missing `{}` (expected {})",
                        entry.name,
                        describe(&entry.var)
                    ),
                ));
            };
            if value.shape() != entry.var.shape() || value.dtype() != entry.var.dtype() {
                return Err(NnError::mismatch(
                    context,
                    format!(
                        "`{}` is {} but the model expects {}",
                        entry.name,
                        describe(value),
                        describe(&entry.var)
                    ),
                ));
            }
            updates.push((&entry.var, value));
        }
        if let Some((name, _)) = state
            .iter()
            .find(|(name, _)| !inner.entries.iter().any(|entry| entry.name == *name))
        {
            return Err(NnError::mismatch(
                context,
                format!("unexpected `{name}`: the model has no entry of that name"),
            ));
        }
        // A checkpoint is read to the host: each value goes to its variable's device (as
        // PyTorch's load_state_dict copies across devices).
        for (var, value) in updates {
            var.set(&value.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Registers `var` under `name`.
    fn register(&self, name: String, var: Var, kind: Kind) -> Result<Var> {
        let mut inner = self.lock();
        if inner.entries.iter().any(|entry| entry.name == name) {
            return Err(NnError::DuplicateName(name));
        }
        inner.entries.push(Entry {
            name,
            var: var.clone(),
            kind,
        });
        Ok(var)
    }
}

/// `[64, 784] f32`.
fn describe(tensor: &Tensor) -> String {
    format!("{} {}", tensor.shape(), tensor.dtype())
}

/// A place in a store's name hierarchy: layers take a `Path` and register their tensors under
/// it, sub-modules under `path.sub(name)`.
#[derive(Clone)]
pub struct Path {
    store: ParamStore,
    prefix: String,
}

impl Path {
    /// The path one level down: `main` → `main.0`.
    pub fn sub(&self, name: impl std::fmt::Display) -> Path {
        Path {
            store: self.store.clone(),
            prefix: self.name(&name.to_string()),
        }
    }

    /// The full name of `leaf` under this path.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    pub fn device(&self) -> Device {
        self.store.device
    }

    pub fn dtype(&self) -> DType {
        self.store.dtype
    }

    /// A new trainable parameter `name` of `shape`, drawn from `init` with the store's
    /// generator.
    pub fn parameter(&self, name: &str, shape: impl Into<Shape>, init: Init) -> Result<Var> {
        let shape = shape.into();
        let values = {
            let mut inner = self.store.lock();
            init.sample(&shape, self.dtype(), self.device(), &mut inner.generator)?
        };
        self.store
            .register(self.name(name), Var::new(&values)?, Kind::Parameter)
    }

    /// A new buffer `name` holding `initial` (converted to the store's dtype and device).
    pub fn buffer(&self, name: &str, initial: &Tensor) -> Result<Var> {
        let values = no_grad(|| initial.to_dtype(self.dtype()))?;
        self.store
            .register(self.name(name), Var::new(&values)?, Kind::Buffer)
    }
}
