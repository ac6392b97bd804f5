//! Checkpoints: named tensors and string metadata in one safetensors file, written so that a
//! crash mid-save leaves the previous file intact. A checkpoint holds what resuming training
//! needs (model parameters and buffers, optimizer state, the step, random generators) under
//! prefixes the caller picks; a model's weights under the empty prefix are what PyTorch's
//! `load_state_dict` reads. Not a model format: the architecture is the code's.
//!
//! Metadata keys (the safetensors `__metadata__`, all values strings): `step` (decimal u64),
//! `generator.<name>.seed` and `generator.<name>.offset` (decimal u64), and whatever the caller
//! sets with [`Checkpoint::set_meta`]; kiln's trainers name their model under [`MODEL_KEY`]
//! and store its configuration as JSON under [`CONFIG_KEY`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use kiln_tensor::{no_grad, DType, Device, Generator, Tensor, WithDType};
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors, View};

use crate::optim::Optimizer;
use crate::{NnError, ParamStore, Result};

/// The metadata key naming the model a checkpoint holds (`gan`, `vae`, `classifier`, ...).
pub const MODEL_KEY: &str = "kiln.model";
/// The metadata key of the model's configuration, as JSON.
pub const CONFIG_KEY: &str = "kiln.config";
/// The metadata key of the file's checksum ([`Checkpoint::save`] writes it,
/// [`Checkpoint::load`] checks it): FNV-1a (64-bit) over every tensor's name, dtype, shape and
/// little-endian bytes, in name order, then every other metadata entry's key and value, in key
/// order, as 16 hex digits. A file whose checksum covers its tensors alone (kiln's first
/// checksummed files) still loads.
pub const CHECKSUM_KEY: &str = "kiln.checksum";

/// Ordered named tensors plus string metadata: the contents of one safetensors file.
#[derive(Clone, Default)]
pub struct Checkpoint {
    tensors: Vec<(String, Tensor)>,
    metadata: BTreeMap<String, String>,
    /// The file it was loaded from, which errors name.
    source: Option<PathBuf>,
}

impl Checkpoint {
    /// An empty checkpoint.
    pub fn new() -> Checkpoint {
        Checkpoint::default()
    }

    // ---- tensors ----

    /// Adds a copy of `tensor` under `name`, replacing (in place) an entry of the same name.
    /// A copy, not a view: a parameter updated after this does not change the checkpoint.
    pub fn insert(&mut self, name: impl Into<String>, tensor: &Tensor) -> Result<()> {
        let name = name.into();
        let tensor = no_grad(|| tensor.copy())?;
        match self
            .tensors
            .iter_mut()
            .find(|(existing, _)| *existing == name)
        {
            Some((_, slot)) => *slot = tensor,
            None => self.tensors.push((name, tensor)),
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors
            .iter()
            .find(|(existing, _)| existing == name)
            .map(|(_, tensor)| tensor)
    }

    /// The entry `name`, or an error naming the checkpoint and the entry.
    pub fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.get(name)
            .ok_or_else(|| NnError::mismatch(self.context(), format!("no entry `{name}`")))
    }

    /// Every entry: in insertion order for a checkpoint built in memory, in file order (by
    /// dtype, then name, as safetensors writes them) for one loaded from disk.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// The name of the first float tensor holding a NaN or an infinity, if any: a checkpoint
    /// of a run that diverged in its weights (or its optimizer's moments), which must neither
    /// be saved over a good one nor resumed. Reads every float tensor back to the host.
    pub fn first_non_finite(&self) -> Result<Option<&str>> {
        for (name, tensor) in &self.tensors {
            if !tensor.dtype().is_float() {
                continue;
            }
            let values = tensor.to_dtype(kiln_tensor::DType::F64)?.to_vec::<f64>()?;
            if values.iter().any(|v| !v.is_finite()) {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The entries under `prefix.`, with the prefix taken off; every entry for an empty
    /// prefix.
    pub fn entries_under(&self, prefix: &str) -> Vec<(String, Tensor)> {
        self.tensors
            .iter()
            .filter_map(|(name, tensor)| {
                let name = if prefix.is_empty() {
                    name.as_str()
                } else {
                    name.strip_prefix(prefix)?.strip_prefix('.')?
                };
                Some((name.to_string(), tensor.clone()))
            })
            .collect()
    }

    // ---- models and optimizers ----

    /// Adds every parameter and buffer of `store` as `prefix.name` (bare `name` for an empty
    /// prefix, which is what PyTorch's `load_state_dict` wants).
    pub fn insert_store(&mut self, prefix: &str, store: &ParamStore) -> Result<()> {
        for (name, tensor) in store.state_dict() {
            self.insert(prefixed(prefix, &name), &tensor)?;
        }
        Ok(())
    }

    /// Loads `store` from the entries under `prefix` (all entries for an empty prefix): each
    /// of its names must be there with its shape and dtype, and nothing else may be; the error
    /// names this checkpoint's file, the entry and both shapes and dtypes, and on an error the
    /// store is unchanged.
    pub fn load_store(&self, prefix: &str, store: &ParamStore) -> Result<()> {
        store.load_state_dict(&self.entries_under(prefix), &self.context_under(prefix))
    }

    /// Adds `optimizer`'s state as `prefix.<kind>.<parameter>`.
    pub fn insert_optimizer(&mut self, prefix: &str, optimizer: &dyn Optimizer) -> Result<()> {
        for (name, tensor) in optimizer.state_dict() {
            self.insert(prefixed(prefix, &name), &tensor)?;
        }
        Ok(())
    }

    /// Replaces `optimizer`'s state with the entries under `prefix` (see
    /// [`Optimizer::load_state_dict`]); errors name this checkpoint's file.
    pub fn load_optimizer(&self, prefix: &str, optimizer: &mut dyn Optimizer) -> Result<()> {
        optimizer.load_state_dict(&self.entries_under(prefix), &self.context_under(prefix))
    }

    // ---- metadata ----

    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Sets metadata `key` to `value` (replacing what was there).
    pub fn set_meta(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Names the model this checkpoint holds ([`MODEL_KEY`]) and records its configuration as
    /// JSON ([`CONFIG_KEY`]).
    pub fn set_model<C: serde::Serialize>(&mut self, name: &str, config: &C) -> Result<()> {
        let json = serde_json::to_string(config)
            .map_err(|e| NnError::invalid("checkpoint", format!("config: {e}")))?;
        self.set_meta(MODEL_KEY, name);
        self.set_meta(CONFIG_KEY, json);
        Ok(())
    }

    /// The name of the model this checkpoint holds, or the error that it is not a kiln `what`
    /// checkpoint (no [`MODEL_KEY`]); `context` (usually the file) heads the message.
    pub fn model_name(&self, context: &str, what: &str) -> Result<&str> {
        self.meta(MODEL_KEY).ok_or_else(|| {
            NnError::mismatch(
                context,
                format!("not a kiln {what} checkpoint (no `{MODEL_KEY}` metadata)"),
            )
        })
    }

    /// The model's configuration recorded by [`Checkpoint::set_model`].
    pub fn model_config<C: serde::de::DeserializeOwned>(&self, context: &str) -> Result<C> {
        let json = self
            .meta(CONFIG_KEY)
            .ok_or_else(|| NnError::mismatch(context, format!("no `{CONFIG_KEY}` metadata")))?;
        serde_json::from_str(json)
            .map_err(|e| NnError::mismatch(context, format!("unreadable configuration: {e}")))
    }

    /// Records the training step (metadata `step`).
    pub fn set_step(&mut self, step: u64) {
        self.set_meta("step", step.to_string());
    }

    /// The training step recorded with [`Checkpoint::set_step`].
    pub fn step(&self) -> Result<u64> {
        self.meta_u64("step")
    }

    /// Records `generator`'s seed and offset under `name` (metadata `generator.<name>.seed`,
    /// `generator.<name>.offset`), so that a resumed run draws what the original would have.
    pub fn insert_generator(&mut self, name: &str, generator: &Generator) {
        self.set_meta(
            format!("generator.{name}.seed"),
            generator.seed().to_string(),
        );
        self.set_meta(
            format!("generator.{name}.offset"),
            generator.offset().to_string(),
        );
    }

    /// The generator recorded under `name`, at the offset it had.
    pub fn generator(&self, name: &str) -> Result<Generator> {
        let seed = self.meta_u64(&format!("generator.{name}.seed"))?;
        let offset = self.meta_u64(&format!("generator.{name}.offset"))?;
        let mut generator = Generator::new(seed);
        generator.set_offset(offset);
        Ok(generator)
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        let value = self
            .meta(key)
            .ok_or_else(|| NnError::mismatch(self.context(), format!("no metadata `{key}`")))?;
        value.parse().map_err(|_| {
            NnError::mismatch(
                self.context(),
                format!("metadata `{key}` is `{value}`, not a whole number in 0..2^64"),
            )
        })
    }

    // ---- files ----

    /// Writes the checkpoint to `path` atomically: to a temporary file beside it, flushed to
    /// disk, renamed over `path`, and the directory flushed, so that a crash leaves either the
    /// previous file or the new one, whole.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        kiln_fs::write_file_atomically(path, |out| out.write_all(&bytes)).map_err(|source| {
            NnError::Io {
                path: path.to_path_buf(),
                action: "write",
                source,
            }
        })
    }

    /// Reads a checkpoint written by [`Checkpoint::save`] (or any safetensors file whose
    /// dtypes kiln has). Errors name `path` and what was wrong: a missing or unreadable file,
    /// one that is not safetensors or is truncated ([`NnError::Format`]), an entry of a dtype
    /// kiln does not have ([`NnError::UnsupportedDType`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| NnError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        })?;
        Checkpoint::from_bytes(&bytes, path)
    }

    /// The safetensors file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let raw = self
            .tensors
            .iter()
            .map(|(name, tensor)| Ok((name.as_str(), RawTensor::from_tensor(tensor)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut metadata: HashMap<String, String> = self
            .metadata
            .iter()
            .filter(|(key, _)| key.as_str() != CHECKSUM_KEY)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let entries = raw.iter().map(|(name, tensor)| {
            (
                *name,
                tensor.dtype,
                tensor.shape.as_slice(),
                &tensor.data[..],
            )
        });
        let sum = checksum(entries, &metadata);
        metadata.insert(CHECKSUM_KEY.to_string(), sum);
        safetensors::serialize(
            raw.iter().map(|(name, tensor)| (*name, tensor)),
            Some(metadata),
        )
        .map_err(|err| {
            NnError::invalid(
                "Checkpoint",
                format!("{}: cannot encode as safetensors: {err}", self.context()),
            )
        })
    }

    /// Parses a safetensors file's bytes; errors name `source` as the file.
    pub fn from_bytes(bytes: &[u8], source: impl AsRef<Path>) -> Result<Checkpoint> {
        let source = source.as_ref();
        let (header_len, header) =
            SafeTensors::read_metadata(bytes).map_err(|err| NnError::Format {
                path: source.to_path_buf(),
                message: describe_format_error(&err, bytes),
            })?;
        // read_metadata checked that the header's offsets tile exactly the bytes after it.
        let data = &bytes[8 + header_len..];
        // The checksum belongs to the file, checked here; a checkpoint saved again gets its own.
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .iter()
            .flatten()
            .filter(|(key, _)| key.as_str() != CHECKSUM_KEY)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        if let Some(saved) = header.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
            let names = header.offset_keys();
            let entries = || {
                names.iter().filter_map(|name| {
                    let info = header.info(name)?;
                    let (start, end) = info.data_offsets;
                    Some((
                        name.as_str(),
                        info.dtype,
                        info.shape.as_slice(),
                        &data[start..end],
                    ))
                })
            };
            let found = checksum(entries(), &metadata);
            // A tensors-only checksum is the older form; a file of the current form whose
            // metadata was altered matches neither.
            if &found != saved && &checksum(entries(), &BTreeMap::new()) != saved {
                return Err(NnError::Format {
                    path: source.to_path_buf(),
                    message: format!(
                        "the checksum of its tensors and metadata is {found}, not the {saved} they were saved with: the file is corrupt or was altered"
                    ),
                });
            }
        }
        let mut tensors = Vec::new();
        for name in header.offset_keys() {
            let Some(info) = header.info(&name) else {
                continue;
            };
            let (start, end) = info.data_offsets;
            let tensor = tensor_from_le_bytes(info.dtype, &info.shape, &data[start..end])
                .ok_or_else(|| NnError::UnsupportedDType {
                    path: source.to_path_buf(),
                    name: name.clone(),
                    dtype: info.dtype.to_string(),
                })??;
            tensors.push((name, tensor));
        }
        Ok(Checkpoint {
            tensors,
            metadata,
            source: Some(source.to_path_buf()),
        })
    }

    /// What errors call this checkpoint: its file, if it was loaded from one.
    fn context(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => "checkpoint (in memory)".to_string(),
        }
    }

    fn context_under(&self, prefix: &str) -> String {
        if prefix.is_empty() {
            self.context()
        } else {
            format!("{} (entries under `{prefix}.`)", self.context())
        }
    }
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("source", &self.source)
            .field("tensors", &self.tensors)
            .field("metadata", &self.metadata)
            .finish()
    }
}

/// `prefix.name`, or `name` for an empty prefix.
fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// One line on why bytes are not a safetensors file, with the sizes involved.
fn describe_format_error(err: &SafeTensorError, bytes: &[u8]) -> String {
    let declared = bytes
        .get(..8)
        .and_then(|prefix| prefix.try_into().ok())
        .map(u64::from_le_bytes);
    match (err, declared) {
        (SafeTensorError::HeaderTooSmall, _) => format!(
            "the file is {} bytes, too short to hold the 8-byte header size",
            bytes.len()
        ),
        (SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength, Some(n)) => {
            format!(
                "the header size field says {n} bytes but {} bytes follow it (truncated, or \
                 not a safetensors file)",
                bytes.len() - 8
            )
        }
        (SafeTensorError::MetadataIncompleteBuffer, _) => format!(
            "the tensor data the header describes does not end where the file does ({} bytes; \
             truncated, or bytes appended)",
            bytes.len()
        ),
        _ => err.to_string(),
    }
}

/// A tensor's safetensors dtype, shape and little-endian bytes.
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    fn from_tensor(tensor: &Tensor) -> Result<RawTensor> {
        let (dtype, data) = match tensor.dtype() {
            DType::U8 => (Dtype::U8, tensor.to_vec::<u8>()?),
            DType::U32 => (Dtype::U32, le_bytes(tensor, u32::to_le_bytes)?),
            DType::F16 => (Dtype::F16, le_bytes(tensor, f16::to_le_bytes)?),
            DType::BF16 => (Dtype::BF16, le_bytes(tensor, bf16::to_le_bytes)?),
            DType::F32 => (Dtype::F32, le_bytes(tensor, f32::to_le_bytes)?),
            DType::F64 => (Dtype::F64, le_bytes(tensor, f64::to_le_bytes)?),
        };
        Ok(RawTensor {
            dtype,
            shape: tensor.dims().to_vec(),
            data,
        })
    }
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The tensor's elements (row-major) as little-endian bytes.
fn le_bytes<T: WithDType, const N: usize>(
    tensor: &Tensor,
    to_bytes: fn(T) -> [u8; N],
) -> Result<Vec<u8>> {
    Ok(tensor
        .to_vec::<T>()?
        .into_iter()
        .flat_map(to_bytes)
        .collect())
}

/// A kiln tensor from a safetensors entry, or None for a dtype kiln does not have. `data`
/// holds exactly the shape's elements (safetensors checked it).
fn tensor_from_le_bytes(dtype: Dtype, shape: &[usize], data: &[u8]) -> Option<Result<Tensor>> {
    fn build<T: WithDType, const N: usize>(
        shape: &[usize],
        data: &[u8],
        from_bytes: fn([u8; N]) -> T,
    ) -> Result<Tensor> {
        let values: Vec<T> = data
            .chunks_exact(N)
            .map(|chunk| {
                let mut bytes = [0; N];
                bytes.copy_from_slice(chunk);
                from_bytes(bytes)
            })
            .collect();
        Ok(Tensor::from_vec(values, shape, Device::Cpu)?)
    }
    Some(match dtype {
        Dtype::U8 => build(shape, data, u8::from_le_bytes),
        Dtype::U32 => build(shape, data, u32::from_le_bytes),
        Dtype::F16 => build(shape, data, f16::from_le_bytes),
        Dtype::BF16 => build(shape, data, bf16::from_le_bytes),
        Dtype::F32 => build(shape, data, f32::from_le_bytes),
        Dtype::F64 => build(shape, data, f64::from_le_bytes),
        _ => return None,
    })
}

/// [`CHECKSUM_KEY`]'s value for `entries` (name, dtype, shape, bytes), taken in name order,
/// and then `metadata`'s entries (without the checksum), in key order; with no metadata, the
/// older form, of the tensors alone.
fn checksum<'a>(
    entries: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut entries: Vec<_> = entries.collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ byte as u64).wrapping_mul(PRIME);
        }
    };
    for (name, dtype, shape, data) in entries {
        feed(name.as_bytes());
        feed(dtype.to_string().as_bytes());
        for &dim in shape {
            feed(&(dim as u64).to_le_bytes());
        }
        feed(&(data.len() as u64).to_le_bytes());
        feed(data);
    }
    let mut metadata: Vec<_> = metadata.into_iter().collect();
    metadata.sort();
    for (key, value) in metadata {
        for text in [key, value] {
            feed(&(text.len() as u64).to_le_bytes());
            feed(text.as_bytes());
        }
    }
    format!("{hash:016x}")
}
