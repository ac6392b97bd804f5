//! kiln's error type: every fault a user can reach is a value naming what disagreed.
//! Not for internal invariants, which are `debug_assert!`s.

use crate::{DType, Device, Shape};

/// Errors from tensor operations. Messages name the operation and the shapes, dtypes or
/// devices involved, e.g. `matmul: inner dimensions differ: [64, 784] x [100, 256]`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("{op}: shapes {lhs} and {rhs} cannot be broadcast together")]
    Broadcast {
        op: &'static str,
        lhs: Shape,
        rhs: Shape,
    },
    #[error("{op}: expected shape {expected}, got {got}")]
    ShapeMismatch {
        op: &'static str,
        expected: Shape,
        got: Shape,
    },
    #[error("{op}: dtypes differ: {lhs} and {rhs}")]
    DTypeMismatch {
        op: &'static str,
        lhs: DType,
        rhs: DType,
    },
    #[error("{op}: tensors are on different devices: {lhs} and {rhs}")]
    DeviceMismatch {
        op: &'static str,
        lhs: Device,
        rhs: Device,
    },
    #[error("{op}: {dtype} tensors are not supported")]
    UnsupportedDType { op: &'static str, dtype: DType },
    #[error("{op}: dim {dim} is out of range for a tensor of shape {shape}")]
    DimOutOfRange {
        op: &'static str,
        dim: usize,
        shape: Shape,
    },
    #[error("{op}: index {index} is out of range for dim {dim} of size {size}")]
    IndexOutOfRange {
        op: &'static str,
        index: usize,
        dim: usize,
        size: usize,
    },
    #[error("{op}: the {device} backend is not available: {reason}")]
    DeviceUnavailable {
        op: &'static str,
        device: Device,
        reason: String,
    },
    /// The CUDA driver or compiler failed (an out-of-memory, a launch failure, a kernel that
    /// did not compile, with NVRTC's log).
    #[error("{op}: CUDA: {message}")]
    Cuda { op: &'static str, message: String },
    /// Anything else a caller got wrong, with a sentence saying what.
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
}

impl Error {
    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        Error::Invalid {
            op,
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
