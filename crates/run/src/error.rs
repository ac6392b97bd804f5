//! kiln-run's error type. Every message is one line naming the file (or the call) and what was
//! wrong with it, e.g. `runs/gan/samples: cannot create directory: Permission denied (os error
//! 13)` or `runs/gan/metrics.jsonl: line 12: expected a JSON object, found [1, 2]`.

use std::path::Path;

/// Errors from the run folder, the metrics log, plots and the Ctrl-C handler.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The operating system refused to create, read or write something.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: std::io::Error,
    },
    /// A path that exists but is not what it is used as (a file where the run folder goes).
    #[error("{path}: {message}")]
    NotUsable { path: String, message: String },
    /// A line of a metrics file that is not a JSON object (other than a torn last line).
    #[error("{path}: line {line}: {message}")]
    Metrics {
        path: String,
        line: usize,
        message: String,
    },
    /// A value that cannot be written as JSON (a map with non-string keys, a failing
    /// `Serialize` impl), or a metrics record that is not a JSON object.
    #[error("{path}: cannot write {what} as JSON: {message}")]
    Json {
        path: String,
        what: &'static str,
        message: String,
    },
    /// A chart that cannot be drawn (too many panels), or drawing failed.
    #[error("{path}: cannot draw the plot: {message}")]
    Plot { path: String, message: String },
    /// The Ctrl-C handler could not be installed (another one already was, outside kiln-run).
    #[error("cannot install the Ctrl-C handler: {0}")]
    Interrupt(String),
}

impl RunError {
    pub(crate) fn io(path: &Path, action: &'static str, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.display().to_string(),
            action,
            source,
        }
    }

    pub(crate) fn json(path: &Path, what: &'static str, message: impl ToString) -> Self {
        RunError::Json {
            path: path.display().to_string(),
            what,
            message: message.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, RunError>;
