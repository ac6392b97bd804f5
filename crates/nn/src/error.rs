//! kiln-nn's error type: tensor errors pass through; checkpoints and state add their own.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, NnError>;

#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A file that is not a well-formed safetensors file.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format { path: PathBuf, message: String },
    /// A checkpoint entry whose element type kiln has no dtype for.
    #[error("{path}: `{name}` has dtype {dtype}, which kiln cannot hold (it has u8, u32, f16, bf16, f32 and f64)")]
    UnsupportedDType {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// State (a checkpoint, a state dict) that does not fit what it is loaded into.
    #[error("{context}: {message}")]
    Mismatch { context: String, message: String },
    /// A name registered twice in one parameter store.
    #[error("parameter name `{0}` is registered twice")]
    DuplicateName(String),
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    /// The ranks of a data-parallel run could not exchange values, or disagree.
    #[error("data-parallel run: {0}")]
    Collective(String),
}

impl NnError {
    pub fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        NnError::Invalid {
            op,
            message: message.into(),
        }
    }

    pub fn mismatch(context: impl Into<String>, message: impl Into<String>) -> Self {
        NnError::Mismatch {
            context: context.into(),
            message: message.into(),
        }
    }
}
