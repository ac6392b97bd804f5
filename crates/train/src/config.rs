//! One configuration path: a model's settings are its family's serde config; the command line
//! is one [`Overrides`] merged into it ([`Registry::new_trainer`]), and a resumed run checks the
//! same overrides against its checkpoint's config ([`Registry::resume`]). Defaults live in the
//! configs only.

use std::path::Path;

use kiln_nn::checkpoint::{Checkpoint, MODEL_KEY};
use kiln_tensor::Device;
use serde_json::Value;

use crate::error::{Result, TrainError};
use crate::trainer::{Family, Trainer};

/// Settings given on the command line, by configuration key (`lr`, `batch_size`,
/// `latent_dim`, ..), in the order given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides(Vec<(String, Value)>);

impl Overrides {
    pub fn new() -> Overrides {
        Overrides::default()
    }

    /// Adds `key = value` when `value` is given.
    pub fn set(&mut self, key: &str, value: Option<impl Into<Value>>) -> &mut Overrides {
        if let Some(value) = value {
            self.0.push((key.to_string(), value.into()));
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value))
    }
}

/// A setting's key as the command line spells it: `batch_size` → `--batch-size`.
pub fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// "0.001", "64", "16,32,64", "categorical": a value as it was typed.
fn typed(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) => items.iter().map(typed).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The model families kiln knows, found by model name or by a checkpoint's `kiln.model`.
#[derive(Clone, Copy)]
pub struct Registry {
    families: &'static [&'static dyn Family],
}

impl Registry {
    pub const fn new(families: &'static [&'static dyn Family]) -> Registry {
        Registry { families }
    }

    /// Every model name, family by family.
    pub fn models(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families
            .iter()
            .flat_map(|f| f.models().iter().copied())
    }

    /// The family of `model`, or the one-line reason there is none.
    pub fn family(&self, model: &str) -> Result<&'static dyn Family> {
        self.families
            .iter()
            .copied()
            .find(|f| f.models().contains(&model))
            .ok_or_else(|| {
                let known: Vec<_> = self.models().collect();
                TrainError::refused(format!(
                    "kiln knows no model `{model}` (it knows {})",
                    known.join(", ")
                ))
            })
    }

    /// `model`'s default configuration with `overrides` merged in. A key the configuration does
    /// not have, or a value it cannot take, is refused by its flag.
    pub fn configure(&self, model: &str, overrides: &Overrides) -> Result<Value> {
        let family = self.family(model)?;
        let mut config = family.default_config(model)?;
        let fields = config
            .as_object_mut()
            .expect("a model's configuration is a JSON object");
        for (key, value) in overrides.iter() {
            let (field, value) = family.setting(model, key, value)?;
            match fields.get_mut(&field) {
                Some(slot) => *slot = value,
                None => {
                    return Err(TrainError::refused(format!(
                        "{} is not a setting of {model}",
                        flag(key)
                    )))
                }
            }
        }
        Ok(config)
    }

    /// A fresh run of `model` with `overrides` over its defaults.
    pub fn new_trainer(
        &self,
        model: &str,
        overrides: &Overrides,
        device: Device,
    ) -> Result<Box<dyn Trainer>> {
        let config = self.configure(model, overrides)?;
        self.family(model)?.build(config, device)
    }

    /// The model `checkpoint` holds, by name, or the one-line reason it holds none kiln knows.
    pub fn model_of<'c>(&self, checkpoint: &'c Checkpoint, context: &str) -> Result<&'c str> {
        let name = checkpoint.meta(MODEL_KEY).ok_or_else(|| {
            TrainError::refused(format!(
                "{context}: not a kiln checkpoint (no `{MODEL_KEY}` metadata)"
            ))
        })?;
        if self.family(name).is_err() {
            return Err(TrainError::refused(format!(
                "{context}: holds a `{name}` model, which kiln does not know"
            )));
        }
        Ok(name)
    }

    /// The run `checkpoint` holds, on `device`.
    pub fn restore(
        &self,
        checkpoint: &Checkpoint,
        device: Device,
        context: &str,
    ) -> Result<Box<dyn Trainer>> {
        let model = self.model_of(checkpoint, context)?;
        self.family(model)?.restore(checkpoint, device, context)
    }

    /// The checkpoint file at `path` and the run it holds.
    pub fn load(&self, path: &Path, device: Device) -> Result<(Box<dyn Trainer>, Checkpoint)> {
        let checkpoint = Checkpoint::load(path)?;
        let trainer = self.restore(&checkpoint, device, &path.display().to_string())?;
        Ok((trainer, checkpoint))
    }

    /// Checks settings given with `--resume` against the checkpoint's run: each must be what
    /// the run already has (settings come from the checkpoint; giving one is only a check).
    pub fn check_resume(
        &self,
        trainer: &dyn Trainer,
        overrides: &Overrides,
        context: &str,
    ) -> Result<()> {
        let model = trainer.name();
        let family = self.family(model)?;
        let config = trainer.config_json()?;
        for (key, value) in overrides.iter() {
            let (field, wanted) = family.setting(model, key, value)?;
            let Some(has) = config.get(&field) else {
                return Err(TrainError::refused(format!(
                    "{} is not a setting of {model}",
                    flag(key)
                )));
            };
            if !same(has, &wanted) {
                return Err(TrainError::refused(format!(
                    "{} {}: settings come from the checkpoint when resuming, and {context} has {} {}; leave {} out",
                    flag(key),
                    typed(value),
                    field,
                    typed(has),
                    flag(key)
                )));
            }
        }
        Ok(())
    }
}

/// JSON values equal as settings: numbers by value (64 and 64.0 are one batch size).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// A family's configuration from the merged JSON of [`Registry::configure`]: a value of the
/// wrong type is refused in one line.
pub fn from_config<C: serde::de::DeserializeOwned>(model: &str, config: Value) -> Result<C> {
    serde_json::from_value(config).map_err(|e| TrainError::refused(format!("{model}: {e}")))
}

/// A family's default configuration as JSON.
pub fn to_config<C: serde::Serialize>(config: &C) -> Result<Value> {
    serde_json::to_value(config)
        .map_err(|e| TrainError::refused(format!("a configuration is not JSON: {e}")))
}
