//! kiln-data's error type. Every message is one line that names the file (or the call) and the
//! fault, e.g. `data/mnist/t10k-images-idx3-ubyte.gz: header says [10000, 28, 28] u8 (7840000
//! bytes of payload) but the file holds 940800 bytes (1200 of the 10000 entries)`.

/// What went wrong in an IDX file. Kept apart from the path so tests can match on the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdxFault {
    #[error("the file is {len} bytes, too short for an IDX header ({needed} bytes)")]
    HeaderTruncated { len: u64, needed: u64 },
    #[error(
        "not an IDX file: it starts with {:02x} {:02x} {:02x} {:02x}, but an IDX magic number \
         starts with two zero bytes",
        .magic[0], .magic[1], .magic[2], .magic[3]
    )]
    BadMagic { magic: [u8; 4] },
    #[error(
        "unknown IDX element type 0x{code:02x} (expected 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, \
         0x0d f32 or 0x0e f64)"
    )]
    UnknownType { code: u8 },
    #[error("the header gives rank {rank}; kiln reads IDX files of rank 1 to 8")]
    BadRank { rank: u8 },
    #[error("the header gives dimensions {dims:?}: dimension {dim} is zero")]
    ZeroDimension { dims: Vec<u32>, dim: usize },
    #[error(
        "the header gives dimensions {dims:?} of {element}: {}",
        match .bytes {
            Some(bytes) => format!(
                "{bytes} bytes, more than the {} bytes kiln reads from one IDX file",
                crate::idx::MAX_PAYLOAD_BYTES
            ),
            None => "the size overflows 64 bits".to_string(),
        }
    )]
    TooLarge {
        dims: Vec<u32>,
        element: &'static str,
        bytes: Option<u64>,
    },
    #[error(
        "header says {dims:?} {element} ({bytes} bytes of payload) but a {file_len}-byte gzip \
         file can hold at most {max_bytes} bytes"
    )]
    CannotHold {
        dims: Vec<u32>,
        element: &'static str,
        bytes: u64,
        file_len: u64,
        max_bytes: u64,
    },
    #[error(
        "header says {dims:?} {element} ({expected} bytes of payload) but the file holds \
         {found} bytes ({} of the {} entries)",
        .found / (.expected / u64::from(.dims[0])),
        .dims[0]
    )]
    Truncated {
        dims: Vec<u32>,
        element: &'static str,
        expected: u64,
        found: u64,
    },
    #[error(
        "header says {dims:?} {element} ({expected} bytes of payload) but {}",
        match .found {
            Some(found) => format!("the file holds {found} bytes"),
            None => "the data goes on past them".to_string(),
        }
    )]
    TooLong {
        dims: Vec<u32>,
        element: &'static str,
        expected: u64,
        found: Option<u64>,
    },
    #[error("corrupt or truncated gzip after {decoded} decompressed bytes: {message}")]
    Gzip { decoded: u64, message: String },
}

/// Errors from reading, validating, batching and writing data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A malformed IDX file (or in-memory IDX bytes, named by the caller).
    #[error("{path}: {fault}")]
    Idx { path: String, fault: IdxFault },
    /// The operating system refused a read or a write.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
    /// A well-formed file whose contents do not fit what it is used for (a label of 12, image
    /// and label counts that differ, images that are not 28x28).
    #[error("{path}: {message}")]
    Content { path: String, message: String },
    /// No directory that was searched holds the dataset.
    #[error("{dataset} {split} set not found: looked in {}; {hint}", .looked_in.join(", "))]
    NotFound {
        dataset: &'static str,
        split: &'static str,
        looked_in: Vec<String>,
        hint: &'static str,
    },
    /// A caller's argument is out of range (a batch size of 0, a tensor of the wrong shape).
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
    #[error(transparent)]
    Tensor(#[from] kiln_tensor::Error),
}

impl DataError {
    pub(crate) fn idx(path: &str, fault: IdxFault) -> Self {
        DataError::Idx {
            path: path.to_string(),
            fault,
        }
    }

    pub(crate) fn io(path: &std::path::Path, action: &'static str, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.display().to_string(),
            action,
            source,
        }
    }

    pub(crate) fn invalid(op: &'static str, message: impl Into<String>) -> Self {
        DataError::Invalid {
            op,
            message: message.into(),
        }
    }

    /// The IDX fault, if this is one (what tests match on).
    pub fn idx_fault(&self) -> Option<&IdxFault> {
        match self {
            DataError::Idx { fault, .. } => Some(fault),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
